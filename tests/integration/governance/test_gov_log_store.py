"""GovStore on a real nats-server: the signed log in the GOV stream, foreign messages quarantined (never
applied, never wedging the writer), the chain continuing from the last valid record, /ready honesty of the
writer, and the legacy (unsigned) log refused unless adopted."""
from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from testkit import eventually

from services.governance.store import ADOPT_SETTING, MAX_BATCH, REACTION_LAG, GovStore
from x0tta6bl4.bus import subjects
from x0tta6bl4.config import ConfigError
from x0tta6bl4.governance import Action, ActionKind, CloseReason, GovernanceEngine, ProposalState, Tally, fold
from x0tta6bl4.governance import events as gev
from x0tta6bl4.governance.eventlog import Applied, LogReplay, encode_legacy, seal
from x0tta6bl4.stages.governance import Outcome
from x0tta6bl4.trust import Signer, TrustBundle
from x0tta6bl4.v1 import govlog_pb2

GOV = Signer.generate("governance")
PLANNER = Signer.generate("planner")
TRUST = TrustBundle("x0tta6bl4.mesh", (GOV.trusted(), PLANNER.trusted()))


def engine() -> GovernanceEngine:
    return GovernanceEngine(lambda voter, payload, sig: False, time.time)


def register(name: str, balance: float = 100.0):
    return lambda eng: Outcome(None, eng.register_voter(name, balance))


class Stores:
    """Every GovStore a test starts (stopped at teardown), with the quarantine reports they made."""

    def __init__(self, nc):
        self.nc = nc
        self.started: list[GovStore] = []
        self.reports: list[tuple[int, str, str]] = []

    async def start(self, **kw) -> GovStore:
        async def report(seq: int, subject: str, reason: str) -> None:
            self.reports.append((seq, subject, reason))
        store = GovStore(engine, kw.pop("signer", GOV), TRUST, on_quarantine=report, **kw)
        self.started.append(store)
        await store.start(self.nc)
        return store


@pytest.fixture
async def stores(nc):
    s = Stores(nc)
    yield s
    for store in s.started:
        await store.stop()


async def raw(nc, data: bytes, kind: str = "voter_registered") -> int:
    """Publish straight on gov.events.* as a holder of a bus credential would (no signing key)."""
    return (await nc.jetstream().publish(subjects.gov_event(kind), data)).seq


async def stream_messages(nc) -> list[tuple[int, bytes]]:
    js = nc.jetstream()
    last = (await js.stream_info(subjects.STREAM_GOV)).state.last_seq
    return [(seq, (await js.get_msg(subjects.STREAM_GOV, seq)).data) for seq in range(1, last + 1)]


async def test_an_empty_log_starts_with_a_signed_record_and_replays(stores, nc):
    store = await stores.start()
    assert store.replay.head.seq == 1 and store.last_seq == 1       # the first record: signed, no events
    await store.execute(register("a"))
    await store.execute(register("b", 50))
    again = await stores.start()
    assert again.engine.get_balance("b") == 50 and again.replay.head == store.replay.head
    assert not again.quarantined and not stores.reports


async def test_foreign_messages_are_quarantined_and_the_writer_goes_on(stores, nc):
    store = await stores.start()
    await store.execute(register("a"))
    head_before = store.replay.head
    forged_v1 = await raw(nc, encode_legacy([gev.VoterRegistered("evil", 1e6, 1.0)], []))
    garbage = await raw(nc, b"\x00\xffnot json", "mixed")
    rogue = Signer("governance", Signer.generate("x")._key)            # right name, key nobody trusts
    forged_v2 = await raw(nc, seal(head_before, [gev.VoterRegistered("evil2", 1e6, 1.0)], [], rogue)[0])
    # the writer's next append expected the old last sequence: it reads the foreign messages and goes on
    await asyncio.wait_for(store.execute(register("b")), 10)
    await asyncio.wait_for(store.execute(register("c")), 10)
    assert set(store.engine.state.voters) == {"a", "b", "c"}
    assert set(store.quarantined) == {forged_v1, garbage, forged_v2}
    assert {seq for seq, _, _ in stores.reports} == {forged_v1, garbage, forged_v2}   # reported once each
    why = {seq: reason for seq, _, reason in stores.reports}
    assert "legacy (v1) format after the log was signed" in why[forged_v1]
    assert "not a log record" in why[garbage]
    assert "is not in the trust bundle" in why[forged_v2]
    assert {subj for _, subj, _ in stores.reports} == {"gov.events.voter_registered", "gov.events.mixed"}
    ok, details = store.readiness()
    assert ok and details["quarantined"] == 3 and details["writer"] == "ok"

    # the genuine record after the forgeries links to the last genuine one
    msgs = await stream_messages(nc)
    genuine = [govlog_pb2.GovLogRecord.FromString(d) for seq, d in msgs if seq not in store.quarantined]
    assert [r.seq for r in genuine] == [1, 2, 3, 4] and {r.version for r in genuine} == {3}
    assert all(b.prev == a.hash for a, b in itertools.pairwise(genuine))

    # a restart replays the same state and quarantines the same messages (reported again by the new process)
    stores.reports.clear()
    again = await stores.start()
    assert set(again.engine.state.voters) == {"a", "b", "c"} and set(again.quarantined) == set(store.quarantined)
    assert again.replay.head == store.replay.head
    await again.execute(register("d"))


async def test_catch_up_quarantines_without_a_conflict(stores, nc):
    store = await stores.start()
    seq = await raw(nc, b"{}")
    store.request_catch_up()
    await store.execute(register("a"))                 # catch-up runs before the batch: no conflict
    assert store.quarantined.keys() == {seq} and store.conflicts == 0


async def test_a_forged_passed_proposal_never_enters_the_state(stores, nc):
    store = await stores.start()
    await store.execute(register("a"))
    created = gev.ProposalCreated(
        proposal_id="p-evil", title="isolate n3", description="", action=Action(ActionKind.ISOLATE, {}, "n3"),
        proposer="planner", duration_s=60, quorum=0.1,
        threshold=0.5, execution_window_s=600, at=time.time())
    closed = gev.ProposalClosed("p-evil", ProposalState.PASSED, CloseReason.QUORUM_AND_THRESHOLD_MET,
                                Tally(1, 0, 0, 1, 1, 1), True, time.time())
    link = {"proposal_id": "p-evil", "action_id": "act-evil", "plan": "", "plan_id": "x", "traceparent": ""}
    await raw(nc, encode_legacy([created, closed], [link]), "mixed")
    # signed by a key the bundle trusts - but the planner's, which may approve, not write the log
    await raw(nc, seal(store.replay.head, [created, closed], [link], PLANNER)[0], "mixed")
    await store.execute(register("b"))
    again = await stores.start()
    for s in (store, again):
        assert "p-evil" not in s.engine.state.proposals and "p-evil" not in s.links
        assert "act-evil" not in s.by_action
    assert len(again.quarantined) == 2


async def test_the_writer_is_not_ready_while_stuck_and_ready_again(stores, nc):
    release = asyncio.Event()

    async def slow_reaction(events, links) -> None:    # e.g. the audit trail not answering
        await release.wait()

    store = await stores.start(on_commit=slow_reaction, stall_s=0.3)
    assert store.readiness()[0]

    async def write_many() -> None:   # one commit each: the reactor takes up to MAX_BATCH, then they pile up
        for i in range(MAX_BATCH + REACTION_LAG + 20):
            await store.execute(register(f"v{i}"))
    writes = asyncio.create_task(write_many())

    def stuck():
        ok, details = store.readiness()
        assert not ok and details["writer"].startswith("stuck"), details
        return True
    await eventually(stuck, 10, what="the writer reported stuck while its reactions do not drain")
    release.set()
    await asyncio.wait_for(writes, 10)
    await eventually(lambda: store.readiness()[0], 10, what="ready again once the writer makes progress")
    store._writer.cancel()
    await asyncio.gather(store._writer, return_exceptions=True)
    ok, details = store.readiness()
    assert not ok and details["writer"] == "stopped"


# ---- migration ---------------------------------------------------------------------------------------
async def test_a_legacy_log_is_refused_unless_adopted(stores, nc):
    old = [encode_legacy([gev.VoterRegistered("a", 100.0, 1.0)], []),
           encode_legacy([gev.VoterRegistered("b", 40.0, 2.0)], [{"proposal_id": "p", "action_id": "x"}])]
    for data in old:
        await raw(nc, data)
    with pytest.raises(ConfigError, match=f"2 unsigned records .*{ADOPT_SETTING}=true"):
        await stores.start()
    adopted = await stores.start(adopt_legacy=True)
    assert adopted.engine.get_balance("b") == 40 and adopted.by_action == {"x": "p"}
    assert adopted.replay.head.seq == 1 and adopted.last_seq == 3
    await adopted.execute(register("c"))
    # sealed once: a later start needs no setting, and the sealed prefix replays
    again = await stores.start()
    assert set(again.engine.state.voters) == {"a", "b", "c"} and not again.quarantined
    # the same bytes verify outside the service too
    replay = LogReplay(TRUST)
    verdicts = [v for seq, data in await stream_messages(nc) for v in replay.feed(seq, data)]
    assert all(isinstance(v, Applied) for v in verdicts)
    assert set(fold(e for v in verdicts for e in v.events).voters) == {"a", "b", "c"}


async def test_a_key_the_bundle_does_not_trust_for_the_log_does_not_start(stores):
    with pytest.raises(ConfigError, match=r"cannot sign the governance log.*belongs to planner"):
        GovStore(engine, Signer("governance", PLANNER._key), TrustBundle("x", (PLANNER.trusted(),)), None)


async def test_a_replay_rides_out_a_leaderless_moment_without_losing_or_repeating_records(stores, nc, monkeypatch):
    """A 503 (the stream's or consumer's leader is being elected) part-way through a replay: reading resumes
    after the last record read; the replayed ledger is the whole one, each record once."""
    from nats.js.errors import ServiceUnavailableError
    first = await stores.start()
    for i in range(5):
        await first.execute(register(f"v{i}", 10.0 + i))
    real = GovStore._read_range
    failures = {"left": 2}

    async def flaky(self, start_seq, last, out):
        if failures["left"]:
            failures["left"] -= 1
            if start_seq == 1:   # the first attempt dies after two records
                await real(self, start_seq, last, out)
                del out[2:]
            raise ServiceUnavailableError
        return await real(self, start_seq, last, out)

    monkeypatch.setattr(GovStore, "_read_range", flaky)
    again = await stores.start()
    assert failures["left"] == 0
    assert again.replay.head == first.replay.head and again.last_seq == first.last_seq
    assert {v: again.engine.get_balance(v) for v in (f"v{i}" for i in range(5))} == {
        f"v{i}": 10.0 + i for i in range(5)}
    assert not again.quarantined and not stores.reports   # no record read twice (it would be out of chain)


async def test_a_replay_that_never_gets_a_leader_fails_with_a_clear_error(stores, nc, monkeypatch):
    from nats.js.errors import ServiceUnavailableError

    from services.governance.store import Unavailable
    await stores.start()

    async def down(self, start_seq, last, out):
        raise ServiceUnavailableError

    monkeypatch.setattr(GovStore, "_read_range", down)
    with pytest.raises(Unavailable, match="cannot be read from seq 1 for 1 s"):
        await stores.start(retry_for_s=1.0)
