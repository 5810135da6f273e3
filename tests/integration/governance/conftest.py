"""Real parts for the governance service tests: nats-server + keyvault (governance's SVID issuer) + the
governance process + a mutual-TLS gRPC channel as an operator (an SVID from the stack's CA)."""
from __future__ import annotations

import asyncio
import secrets
import uuid

import grpc
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import decode, encode
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.governance import vote_signing_payload
from x0tta6bl4.pqc import MLDSA65PrivateKey
from x0tta6bl4.rpc import svid as svids
from x0tta6bl4.runtime.locate import admin_metadata
from x0tta6bl4.runtime.stack import Stack, free_port
from x0tta6bl4.v1 import events_pb2
from x0tta6bl4.v1 import governance_pb2 as g
from x0tta6bl4.v1 import governance_pb2_grpc as gg

TD = "x0tta6bl4.mesh"


def svid_for(stack: Stack, kind: str = "operator", name: str = "tester", ttl_s: float = 900) -> svids.Svid:
    """An SVID of ``spiffe://<td>/<kind>/<name>`` minted with the stack's CA key."""
    assert stack.secrets is not None
    return svids.mint(stack.secrets.root, kind, name, ttl_s=ttl_s)


def gov_channel(stack: Stack, addr: str, svid: svids.Svid | None = None) -> grpc.Channel:
    """A mutual-TLS channel to governance at ``addr`` presenting ``svid`` (default: an operator's)."""
    return svids.secure_channel(addr, svid or svid_for(stack), "governance", TD)


CHOICE = {"YES": g.VOTE_CHOICE_YES, "NO": g.VOTE_CHOICE_NO, "ABSTAIN": g.VOTE_CHOICE_ABSTAIN}


class Gov:
    def __init__(self, stack: Stack, port: int):
        self.stack = stack
        self.port = port
        self.addr = f"127.0.0.1:{port}"
        self.connect()

    def connect(self) -> None:
        self.channel = gov_channel(self.stack, self.addr)
        grpc.channel_ready_future(self.channel).result(timeout=20)
        self.stub = gg.GovernanceStub(self.channel)
        self.admin = admin_metadata(directory=self.stack.data_dir)   # the ledger admin token
        assert self.admin, "the governance service did not write its admin token"

    def restart(self, kill: bool = True) -> None:
        self.channel.close()
        for sp in list(self.stack.procs):
            if sp.name == "governance":
                self.stack.stop_service(sp, kill=kill)
        self.stack.start_service("governance")
        self.stack.wait_ready(60)
        self.connect()

    # ---- helpers --------------------------------------------------------------------------
    def voter(self, balance: float = 100.0, name: str | None = None) -> tuple[str, MLDSA65PrivateKey]:
        name = name or f"spiffe://x0tta6bl4.mesh/voter/{uuid.uuid4().hex[:8]}"
        key = MLDSA65PrivateKey.generate()
        self.stub.RegisterVoter(g.RegisterVoterRequest(voter=name, balance=balance,
                                                       public_key=key.public_key().public_bytes()),
                                metadata=self.admin)
        return name, key

    def proposal(self, title: str = "reroute around n1", duration_s: float = 60.0, quorum: float = 0.5,
                 threshold: float = 0.5, proposer: str = "alice", **kw) -> g.Proposal:
        return self.stub.CreateProposal(g.CreateProposalRequest(
            title=title, action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_REROUTE, target_node="n1"),
            proposer=proposer, duration_s=duration_s, quorum=quorum, threshold=threshold, **kw),
            metadata=self.admin)

    def vote_request(self, pid: str, voter: str, key, choice: str = "YES", tokens: float = 100.0,
                     vote_id: str = "", nonce: bytes | None = None, sign_tokens: float | None = None):
        nonce = nonce or secrets.token_bytes(16)
        sig = key.sign(vote_signing_payload(pid, voter, choice, tokens if sign_tokens is None else sign_tokens,
                                            nonce))
        return g.CastVoteRequest(proposal_id=pid, voter=voter, choice=CHOICE[choice], tokens=tokens, nonce=nonce,
                                 signature=sig, vote_id=vote_id)

    def vote(self, *a, **kw) -> g.CastVoteResponse:
        return self.stub.CastVote(self.vote_request(*a, **kw))

    @staticmethod
    def error(call, *a, **kw) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as ei:
            call(*a, **kw)
        return ei.value.code(), ei.value.details()

    # ---- the bus ---------------------------------------------------------------------------
    def publish(self, subject: str, msg, traceparent: str = "") -> None:
        """Publish as the service that owns ``subject`` on the bus (plans: the planner, results: the executor)."""
        async def go():
            nc = await self.stack.connect({subjects.MAPEK_PLAN: "planner", subjects.MAPEK_RESULT: "executor"}
                                          .get(subject, "operator"))
            try:
                pub = Publisher(nc, "test")
                if not traceparent:
                    await pub.publish(subject, msg)
                    return
                pub.prepare(msg)
                headers = pub.headers_for(msg, msg.meta.event_id)
                headers["traceparent"] = traceparent
                await nc.jetstream().publish(subject, encode(msg), headers=headers)
            finally:
                await nc.close()
        asyncio.run(go())

    def read_stream(self, stream: str, subject: str, cls=None, timeout: float = 2.0) -> list:
        """Every message on ``subject`` in ``stream`` (decoded as ``cls`` when given)."""
        async def go():
            nc = await self.stack.connect()     # the operator reads every stream
            js = nc.jetstream()
            out = []
            try:
                info = await js.stream_info(stream)
                if not info.state.messages:
                    return out
                sub = await js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=10))
                while True:
                    try:
                        msgs = await sub.fetch(256, timeout=timeout)
                    except (TimeoutError, nats.errors.TimeoutError):
                        break
                    for m in msgs:
                        out.append((m, decode(cls, m.data) if cls else m.data))
                    if msgs and msgs[-1].metadata.num_pending == 0:
                        break
            finally:
                await nc.close()
            return out
        return asyncio.run(go())


@pytest.fixture(scope="module")
def gov(tmp_path_factory):
    port = free_port()
    stack = Stack(tmp_path_factory.mktemp("gov"), services=("keyvault",),     # governance's SVID issuer
                  env={"X0TTA6BL4_TICK_INTERVAL_S": "0.1", "X0TTA6BL4_ACK_WAIT_S": "5",
                       "X0TTA6BL4_STANDARD_QUORUM": "0.05", "X0TTA6BL4_EMERGENCY_QUORUM": "0.05"})
    try:
        stack.start(60)
        stack.env["X0TTA6BL4_GRPC_PORT"] = str(port)      # governance keeps its port across restarts
        stack.start_service("governance")
        stack.wait_ready(60)
        yield Gov(stack, port)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def kv_gov_stack(tmp_path_factory):
    """keyvault + governance on a secured stack, low quorums (one per test module)."""
    st = Stack(tmp_path_factory.mktemp("gov-kv"), services=("keyvault", "governance"),
               env={"X0TTA6BL4_STANDARD_QUORUM": "0.05", "X0TTA6BL4_EMERGENCY_QUORUM": "0.05"})
    st.start(90)
    try:
        yield st
    finally:
        st.stop()


@pytest.fixture(scope="module")
def kv_gov_stubs(kv_gov_stack):
    """(GovernanceStub, KeyvaultStub) over mutual TLS, as the operator."""
    from x0tta6bl4.rpc import svid as svids
    from x0tta6bl4.v1 import governance_pb2_grpc, keyvault_pb2_grpc
    st = kv_gov_stack
    gch = gov_channel(st, st.grpc_addr("governance"))
    kch = svids.secure_channel(st.grpc_addr("keyvault"), svid_for(st), "keyvault", "x0tta6bl4.mesh")
    grpc.channel_ready_future(gch).result(timeout=20)
    grpc.channel_ready_future(kch).result(timeout=20)
    yield governance_pb2_grpc.GovernanceStub(gch), keyvault_pb2_grpc.KeyvaultStub(kch)
    gch.close()
    kch.close()

