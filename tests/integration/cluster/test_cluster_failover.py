"""A three-server JetStream cluster under the whole stack (issue #20): every stream and bucket replicated three
ways, the services given every server's URL. Real nats-servers (TLS, nkeys, routes over mutual TLS), the six real
service processes, a real mesh host, votes over real mutual-TLS gRPC.

While a node failure is being healed the leader of the MAPEK stream is killed with SIGKILL; while votes are cast
the leader of the GOV stream is. The repair completes and is verified, every acknowledged vote is counted (also
after governance replays its log), the audit trail has no gap and keeps every event seen before the kills, the
services stay ready, and each killed server rejoins and catches up (its streams at the same last sequence as the
others')."""
from __future__ import annotations

import secrets
import threading
import time
import uuid

import grpc
import nats
import pytest
from testkit import eventually, eventually_sync, mesh_ready, scaled, start_mesh

from x0tta6bl4.audit.chain import parse_event, trusted_keys, verify_chains
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.governance import vote_signing_payload
from x0tta6bl4.pqc import MLDSA65PrivateKey
from x0tta6bl4.rpc import svid as svids
from x0tta6bl4.runtime.locate import admin_metadata
from x0tta6bl4.runtime.stack import NatsCluster, NatsServer, Stack
from x0tta6bl4.v1 import events_pb2, mesh_pb2
from x0tta6bl4.v1 import governance_pb2 as g
from x0tta6bl4.v1 import governance_pb2_grpc as gg

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
TD = "x0tta6bl4.mesh"
VOTERS = 100         # one vote each, about every 0.15 s while votes are being cast


async def leader_of(stack: Stack, stream: str) -> NatsServer:
    """The nats-server leading ``stream`` now (asked of the cluster; retried while it elects one)."""
    assert isinstance(stack.nats, NatsCluster)
    cluster = stack.nats

    async def ask() -> NatsServer | None:
        nc = await stack.connect(max_reconnect_attempts=2)
        try:
            info = await nc.jetstream(timeout=2).stream_info(stream)
        finally:
            await nc.close()
        return cluster.by_name(info.cluster.leader) if info.cluster and info.cluster.leader else None
    return await eventually(ask, 20, 0.2, what=f"a leader of the {stream} stream")


def caught_up(cluster: NatsCluster, streams: tuple[str, ...]) -> bool:
    """Every server healthy (its JetStream current with the cluster) and holding each stream at the same last
    sequence as the others."""
    if not all(s.healthz() for s in cluster.servers):
        return False
    seqs: dict[str, set[int]] = {name: set() for name in streams}
    for s in cluster.servers:
        try:
            jsz = s.monitor("jsz?streams=true&accounts=true")
        except OSError:
            return False
        found = {st["name"]: st["state"]["last_seq"] for acc in jsz.get("account_details", [])
                 for st in acc.get("stream_detail", []) if st["name"] in streams}
        if set(found) != set(streams):
            return False
        for name, seq in found.items():
            seqs[name].add(seq)
    return all(len(v) == 1 for v in seqs.values())


class Voting:
    """Registered voters each casting one YES vote (1 token) on one proposal, from a thread, retrying a vote with the
    same vote id and nonce until governance acknowledges it: ``acked`` are the votes governance answered."""

    def __init__(self, stack: Stack):
        self.stack = stack
        svid = svids.mint(stack.secrets.root, "operator", "cluster-test", ttl_s=900)
        self.channel = svids.secure_channel(stack.grpc_addr("governance"), svid, "governance", TD)
        grpc.channel_ready_future(self.channel).result(timeout=scaled(20))
        self.stub = gg.GovernanceStub(self.channel)
        admin = admin_metadata(directory=stack.data_dir)
        self.voters = []
        for _ in range(VOTERS):
            name, key = f"spiffe://{TD}/voter/{uuid.uuid4().hex[:8]}", MLDSA65PrivateKey.generate()
            self.stub.RegisterVoter(g.RegisterVoterRequest(voter=name, balance=10.0,
                                                           public_key=key.public_key().public_bytes()),
                                    metadata=admin)
            self.voters.append((name, key))
        self.proposal = self.stub.CreateProposal(g.CreateProposalRequest(
            title="reroute around n1", action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_REROUTE,
                                                                    target_node="n1"),
            proposer="cluster-test", duration_s=600, quorum=0.9, threshold=0.5), metadata=admin).id
        self.acked: list[str] = []
        self.errors: list[str] = []
        self.active = threading.Event()     # votes are cast while set (around each kill)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="votes", daemon=True)

    def _run(self) -> None:
        for name, key in self.voters:
            while not self.active.wait(0.1):
                if self.stop.is_set():
                    return
            nonce = secrets.token_bytes(16)
            vote_id = uuid.uuid4().hex
            req = g.CastVoteRequest(proposal_id=self.proposal, voter=name, choice=g.VOTE_CHOICE_YES, tokens=1.0,
                                    nonce=nonce, vote_id=vote_id,
                                    signature=key.sign(vote_signing_payload(self.proposal, name, "YES", 1.0, nonce)))
            while not self.stop.is_set():
                try:
                    self.stub.CastVote(req, timeout=10)
                    self.acked.append(vote_id)
                    break
                except grpc.RpcError as e:      # the GOV stream electing a leader: the same vote again
                    self.errors.append(f"{e.code().name}: {e.details()}")
                    self.stop.wait(0.2)
            if self.stop.wait(0.15):            # a steady trickle of votes
                return


def tally(stack: Stack, proposal: str) -> float:
    """The YES tally of a proposal, asked of governance over a fresh channel."""
    channel = svids.secure_channel(stack.grpc_addr("governance"),
                                   svids.mint(stack.secrets.root, "operator", "cluster-test"), "governance", TD)
    try:
        grpc.channel_ready_future(channel).result(timeout=scaled(20))
        return gg.GovernanceStub(channel).GetProposal(g.GetProposalRequest(id=proposal)).tally.yes
    finally:
        channel.close()


async def stored(js, subject: str) -> list:
    """Every message on ``subject``; a JetStream request unanswered while a stream elects its leader is "not
    yet" (AssertionError) for ``eventually``."""
    try:
        return await read_all(js, subject)
    except (nats.errors.TimeoutError, nats.js.errors.Error) as e:
        raise AssertionError(f"reading {subject}: {type(e).__name__}: {e}") from None


async def audit_trail(js) -> list[events_pb2.AuditEvent]:
    return [parse_event(m.data) for m in await stored(js, "audit.>")]


async def test_killing_a_stream_leader_during_a_repair_and_votes_loses_nothing(stack_factory):
    stack = stack_factory(nats_servers=3, ready_s=120)
    cluster = stack.nats
    assert isinstance(cluster, NatsCluster) and len(cluster.servers) == 3
    assert len(stack.url.split(",")) == 3, "every service is given every server"
    nc = await stack.connect()
    js = nc.jetstream(timeout=5)
    for s in subjects.STREAMS:
        assert (await js.stream_info(s.name)).config.num_replicas == 3, s.name
    for b in subjects.BUCKETS:
        assert (await js.stream_info(f"KV_{b.name}")).config.num_replicas == 3, b.name

    voting = Voting(stack)
    voting.thread.start()
    mesh = start_mesh(stack)
    try:
        t_ready = time.monotonic()

        async def reported_a_while() -> bool:     # the executor needs telemetry from before the incident
            return await mesh_ready(js, 9, min_acked=60) and time.monotonic() - t_ready >= 2.5
        await eventually(reported_a_while, 40, 0.2, what="the mesh reports and its flow is acknowledged")
        before = {ev.hash for ev in await audit_trail(js)}

        # a node dies, and while its failure is healed the MAPEK stream's leader is killed with SIGKILL
        victim = await leader_of(stack, "MAPEK")
        voting.active.set()
        cmd = mesh_pb2.MeshCommand(meta=new_meta("test"), node_id="n4", kind=mesh_pb2.MeshCommand.KIND_FAULT,
                                   params={"type": "kill"})
        reply = mesh_pb2.MeshEvent.FromString((await nc.request(subjects.mesh_cmd("n4"), cmd.SerializeToString(),
                                                                timeout=5)).data)
        assert reply.kind == "command.ok"

        async def anomaly_for_n4() -> bool:
            return any(events_pb2.Anomaly.FromString(m.data).root_cause == "n4"
                       for m in await stored(js, subjects.MAPEK_ANOMALY))
        await eventually(anomaly_for_n4, 20, 0.1, what="an anomaly for n4 (the repair under way)")
        victim.stop(kill=True)
        t_kill_ns = time.time_ns()
        acked_at_kill = len(voting.acked)
        eventually_sync(lambda: len(voting.acked) >= acked_at_kill + 3, 30, 0.1,
                        what="votes acknowledged with the MAPEK leader's server down")
        voting.active.clear()

        async def verified():
            for m in await stored(js, subjects.MAPEK_VERIFIED):
                v = events_pb2.Verification.FromString(m.data)
                if v.action.target_node == "n4":
                    return v, m.metadata.timestamp.timestamp()
        v, stored_at = await eventually(verified, 90, 0.2, what="a Verification for n4 with a server down")
        print(f"\nMAPEK leader killed -> Verification for n4 stored: {stored_at - t_kill_ns / 1e9:.1f} s "
              f"(recovered={v.recovered})")     # a figure for docs/scale.md, not a target
        # the repair completes across the kill: its plan executed, every step acknowledged by the mesh over the
        # bus, and verified. The verdict is the executor's measurement of the mesh's data plane: a reroute's
        # transient judged harmful is a verdict too (it happens on one server as well: docs/benchmarks.md), a
        # step the bus did not deliver is not
        results = [events_pb2.ActionResult.FromString(m.data) for m in await stored(js, subjects.MAPEK_RESULT)]
        (result,) = [r for r in results if r.meta.cycle_id == v.meta.cycle_id]
        steps = [(s.name, s.ok, s.detail) for s in result.steps]
        assert result.success and steps and all(ok for _, ok, _ in steps), (result.error, steps)
        assert v.recovered or all(c.startswith(("n0 ", "flow ")) for c in v.checks_failed), list(v.checks_failed)

        victim.start(scaled(30))           # the server rejoins with its store and catches up
        eventually_sync(lambda: caught_up(cluster, ("MAPEK", "AUDIT", "GOV")), 40, 0.25,
                        what="the restarted server catches up")

        # while votes are cast the GOV stream's leader is killed with SIGKILL
        gov_leader = await leader_of(stack, "GOV")
        acked_before = len(voting.acked)
        voting.active.set()
        eventually_sync(lambda: len(voting.acked) >= acked_before + 2, 30, 0.1, what="votes being cast")
        acked_at_kill = len(voting.acked)
        gov_leader.stop(kill=True)
        eventually_sync(lambda: len(voting.acked) >= acked_at_kill + 5, 30, 0.1,
                        what="votes acknowledged after the GOV leader's server was killed")
        gov_leader.start(scaled(30))
        eventually_sync(lambda: len(voting.acked) >= acked_at_kill + 8, 30, 0.1,
                        what="votes acknowledged after that server came back")
    finally:
        voting.stop.set()
        voting.thread.join(15)
        mesh.terminate()
        mesh.wait(10)

    # every acknowledged vote is counted, also by a governance that replays its log from the stream
    acked = list(voting.acked)
    assert len(set(acked)) == len(acked) >= 16
    assert tally(stack, voting.proposal) == float(len(acked))
    voting.channel.close()
    for sp in [p for p in stack.procs if p.name == "governance"]:
        stack.stop_service(sp, kill=True)
    stack.start_service("governance")
    stack.wait_ready(scaled(60))
    assert tally(stack, voting.proposal) == float(len(acked)), "governance replays its log from the replicated stream"

    # the audit trail: every chain verifies with no gap, and every event seen before the kills is still there
    await nc.close()
    nc = await stack.connect()        # a fresh client (the test's own was idle while this thread blocked)
    js = nc.jetstream(timeout=5)
    trail = await eventually(lambda: audit_trail(js), 20, 0.2, what="the audit trail read")
    report = verify_chains(trail, trusted_keys(stack.secrets.trust()))
    assert report.ok and report.events == len(trail), report.problems[:10]
    assert before <= {ev.hash for ev in trail}
    await nc.close()
    eventually_sync(lambda: caught_up(cluster, ("MAPEK", "AUDIT", "GOV", "MESH")), 40, 0.25,
                    what="every server holds the same streams")
    assert all(sp.ready() for sp in stack.procs), [sp.name for sp in stack.procs if not sp.ready()]
