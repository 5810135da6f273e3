"""The governance log's v3 records (x0tta6bl4.v1.GovLogRecord protobuf) written by the real governance process on
a real nats-server, over a GOV stream an earlier version wrote (v2 JSON records signed with the deployment's
governance log key): the log goes on where the v2 chain ended, every message governance appends parses as a
GovLogRecord (and its body as a GovLogBody of typed events) with the X0-Type header, a restart replays the mixed
log to the same state, and the whole stream verifies outside the service (LogReplay with the trust bundle)."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import grpc
import pytest
from testkit import scaled

from tests.integration.governance.conftest import gov_channel
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.connection import NatsCredentials, connect_once
from x0tta6bl4.governance import events as gev
from x0tta6bl4.governance.eventlog import GENESIS, Applied, LogReplay, seal
from x0tta6bl4.pqc import MLDSA65PrivateKey
from x0tta6bl4.runtime.locate import admin_metadata
from x0tta6bl4.runtime.stack import Stack
from x0tta6bl4.trust import Signer
from x0tta6bl4.v1 import governance_pb2 as g
from x0tta6bl4.v1 import governance_pb2_grpc as gg
from x0tta6bl4.v1 import govlog_pb2


def bus(stack: Stack, work):
    async def go():
        creds = NatsCredentials.in_secrets(stack.secrets.root, "governance")
        nc = await connect_once(stack.url, "test-govlog-v3", creds=creds)
        try:
            return await work(nc)
        finally:
            await nc.close()
    return asyncio.run(go())


def publish(stack: Stack, messages: list[tuple[str, bytes]]) -> None:
    async def work(nc):
        for kind, data in messages:
            await nc.jetstream().publish(subjects.gov_event(kind), data)
    bus(stack, work)


def stream(stack: Stack) -> list[tuple[int, str, dict, bytes]]:
    """(stream seq, subject, headers, data) of every GOV message."""
    async def work(nc):
        js = nc.jetstream()
        last = (await js.stream_info(subjects.STREAM_GOV)).state.last_seq
        out = []
        for seq in range(1, last + 1):
            m = await js.get_msg(subjects.STREAM_GOV, seq)
            out.append((seq, m.subject, dict(m.headers or {}), m.data))
        return out
    return bus(stack, work)


def ready_check(stack: Stack) -> dict:
    sp = next(p for p in stack.procs if p.name == "governance")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sp.health_port}/ready", timeout=2) as r:
            return json.loads(r.read())["checks"]["governance_log"]
    except urllib.error.HTTPError as e:
        return json.loads(e.read())["checks"]["governance_log"]


class Client:
    def __init__(self, stack: Stack):
        self.channel = gov_channel(stack, stack.grpc_addr("governance"))
        grpc.channel_ready_future(self.channel).result(timeout=scaled(20))
        self.stub = gg.GovernanceStub(self.channel)
        self.admin = admin_metadata(directory=stack.data_dir)

    def register(self, voter: str, balance: float) -> None:
        key = MLDSA65PrivateKey.generate().public_key().public_bytes()
        self.stub.RegisterVoter(g.RegisterVoterRequest(voter=voter, balance=balance, public_key=key),
                                metadata=self.admin)

    def balance(self, voter: str) -> float:
        return self.stub.GetBalance(g.GetBalanceRequest(voter=voter)).balance

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path / "govlog-v3", services=())
    s.start_nats()
    s.start_service("keyvault")          # governance's SVID issuer
    s.wait_ready(60)
    yield s
    s.stop()


def start_governance(stack: Stack) -> Client:
    stack.start_service("governance")
    stack.wait_ready(scaled(60))
    return Client(stack)


def test_a_v2_log_goes_on_in_v3_and_a_restart_replays_it(stack):
    # the log as the previous version left it: v2 records, signed with the deployment's governance log key
    key = Signer.load("governance", stack.secrets.signing_file("governance"))
    now = time.time()
    head, old = GENESIS, []
    for kind, events in (("log", []), ("voter_registered", [gev.VoterRegistered("alice", 100.0, now)]),
                         ("voter_registered", [gev.VoterRegistered("bob", 40.0, now)])):
        data, rec = seal(head, events, [], key, version=2)
        head = rec.head
        old.append((kind, data))
    publish(stack, old)

    gov = start_governance(stack)
    assert gov.balance("alice") == 100.0 and gov.balance("bob") == 40.0
    gov.register("carol", 25.0)
    assert gov.balance("carol") == 25.0

    msgs = stream(stack)
    assert [d[:1] for _, _, _, d in msgs[:3]] == [b"{"] * 3           # the v2 records, untouched
    new = msgs[3:]
    assert new, "governance appended nothing"
    records = [govlog_pb2.GovLogRecord.FromString(d) for _, _, _, d in new]
    assert all(r.version == 3 and r.SerializeToString() == d for r, (_, _, _, d) in zip(records, new, strict=True))
    assert all(h.get("X0-Type") == "x0tta6bl4.v1.GovLogRecord" for _, _, h, _ in new)
    assert [r.seq for r in records] == list(range(4, 4 + len(records)))
    assert records[0].prev == head.hash                                # links to the last v2 record
    bodies = [govlog_pb2.GovLogBody.FromString(r.body) for r in records]
    registered = [(subj, e.voter_registered) for (_, subj, _, _), b in zip(new, bodies, strict=True)
                  for e in b.events if e.WhichOneof("event") == "voter_registered"]
    assert [(s, v.voter_id, v.balance, len(v.public_key)) for s, v in registered] == [
        ("gov.events.voter_registered", "carol", 25.0, 1952)]

    # the whole stream verifies outside the service with the trust bundle alone
    replay = LogReplay(stack.secrets.trust())
    verdicts = [v for seq, _, _, data in msgs for v in replay.feed(seq, data)]
    assert all(isinstance(v, Applied) for v in verdicts) and replay.head.seq == len(msgs)

    # a restart replays the mixed log: same state, nothing quarantined, and the chain goes on
    gov.close()
    for sp in [p for p in stack.procs if p.name == "governance"]:
        stack.stop_service(sp)
    gov = start_governance(stack)
    check = ready_check(stack)
    assert check["quarantined"] == 0 and check["records"] == len(msgs), check
    assert (gov.balance("alice"), gov.balance("bob"), gov.balance("carol")) == (100.0, 40.0, 25.0)
    gov.register("dave", 9.0)
    after = stream(stack)
    last = govlog_pb2.GovLogRecord.FromString(after[-1][3])
    assert last.version == 3 and last.seq == len(after) and last.prev == replay.head.hash
    gov.close()
