"""Durable governance state: the GOV JetStream stream is the event log.

One log message = one *record* of the signed, hash-chained log
(:mod:`x0tta6bl4.governance.eventlog`, which documents the exact encoding): the
domain events of a group of commands run back to back (group commit), plus
service records (links from a proposal to the Plan that caused it), signed by
the governance log key (``signing_key_file``, role ``govlog``) and linked to
the record before it. It goes to ``gov.events.<kind>`` (``kind`` = the events'
kind when they all share one, ``mixed`` otherwise, ``log`` for a record without
events), in the v3 format (a ``x0tta6bl4.v1.GovLogRecord`` protobuf, header
``X0-Type``); a log written by an earlier version (v2 JSON records) goes on
with v3 records. Every append carries ``Nats-Expected-Last-Sequence`` = the
last stream sequence this replica has read, so two replicas can never append
on top of different histories: on "wrong last sequence" the replica rebuilds its engine
from the stream and re-runs the commands. A retried publish (timeout) reuses its
``Nats-Msg-Id`` and is de-duplicated.

Replay (start, rebuild) and catch-up verify every message with the trust bundle
(``trust_file``): a message that does not decode, is altered, is not signed by a
trusted governance log key or is not the next link of the chain is
*quarantined*: not applied, counted (``x0_gov_events_quarantined_total``),
reported once per stream sequence to ``on_quarantine`` (the stage audits
``gov.event.quarantined``), shown in /ready. Its stream sequence still counts as
read, so the next append expects it (a foreign message never wedges the
writer), and the chain goes on from the last valid record. At start an empty log
gets a first signed record (so an unsigned message can never pass for the
legacy log, see the migration note in the eventlog module); a log holding only
unsigned legacy (v1) records is refused unless ``adopt_legacy`` (the setting
``X0TTA6BL4_ADOPT_LEGACY_LOG``).

The writer reports its health (:meth:`GovStore.readiness`): not ready when its
task is gone or a batch has been in progress for ``stall_s`` (broker away, log
unreadable), ready again when it makes progress.

Commands run one batch at a time in a single writer task; callers get their
result only after the commit is stored (an acknowledged vote is durable).
Reads go through the same queue, so they never see uncommitted state.

The post-commit reactions (audit events, watch events, action requests) run in
commit order in a second task, so the writer can append the next batch while
the previous commits are being audited. The reactor collects the commits stored
within ``REACTION_LINGER_S`` of the first one (or until it has ``MAX_BATCH`` of
them) and reacts to them in one round, their events in log order, so one
grouped audit event per kind covers them, as within one commit: each ML-DSA
audit signature (~2.5 ms of CPU) then covers many votes under load. At most
``REACTION_LAG`` stored commits wait for their reactions (the writer waits
otherwise), and the writer drains the reactor before it stops: a stored commit
is not left unaudited on shutdown.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import APIError
from prometheus_client import Counter

from x0tta6bl4.bus.subjects import GOV_EVENTS_ALL, HEADER_TYPE, STREAM_GOV, gov_event
from x0tta6bl4.config import ConfigError
from x0tta6bl4.governance import EventStreamError, GovernanceEngine, GovernanceError, fold
from x0tta6bl4.governance.eventlog import (
    OWNERS,
    ROLE,
    Applied,
    LegacySeal,
    LogReplay,
    LogSigner,
    LogVerifier,
    Quarantined,
    seal,
)
from x0tta6bl4.stages.governance import Command, Outcome, Reaction, apply_links

__all__ = ["Command", "Conflict", "GovStore", "Outcome", "Unavailable"]

log = logging.getLogger("x0tta6bl4.governance.store")

WRONG_LAST_SEQUENCE = 10071
MAX_BATCH = 64
REACTION_LAG = 32       # stored commits that may wait for their reactions (audit, watch)
REACTION_LINGER_S = 0.02   # how long the reactor gathers commits before one round of audit
STALL_S = 10.0          # a batch in progress this long: the writer is stuck (/ready false)
ADOPT_SETTING = "X0TTA6BL4_ADOPT_LEGACY_LOG"
GOV_LOG_TYPE = "x0tta6bl4.v1.GovLogRecord"   # the X0-Type header of the records this writer appends (v3)

QUARANTINED = Counter("x0_gov_events_quarantined_total",
                      "governance log messages quarantined (not applied): undecodable, altered, not signed by a "
                      "trusted governance log key, or out of chain")

QuarantineReport = Callable[[int, str, str], Awaitable[None]]
"""``report(stream_seq, subject, reason)``: a quarantined log message, reported once per stream sequence."""


LEADERLESS = (TimeoutError, nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError,
              nats.errors.TimeoutError, nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError)
"""What reading the stream raises while its (or its consumer's) leader is elected or the broker is away."""


class Unavailable(Exception):
    """The log could not be written (broker away, persistent conflicts)."""


class Conflict(Exception):
    """Another writer appended first (optimistic concurrency)."""


@dataclass
class _Job:
    fn: Command
    fut: asyncio.Future


def kind_of(events: Sequence) -> str:
    kinds = {e.TYPE.split(".", 1)[-1] for e in events}
    if not kinds:
        return "log"
    return kinds.pop() if len(kinds) == 1 else "mixed"


class GovStore:
    """The engine, its log position, and the single writer that commits to the log
    (the :class:`x0tta6bl4.stages.governance.GovernanceStore` of the service)."""

    def __init__(self, make_engine: Callable[[], GovernanceEngine], signer: LogSigner, trust: LogVerifier,
                 on_commit: Reaction | None = None, on_quarantine: QuarantineReport | None = None, *,
                 adopt_legacy: bool = False, timeout_s: float = 5.0, retry_for_s: float = 30.0,
                 stall_s: float = STALL_S):
        self._js: JetStreamContext | None = None
        self.make_engine = make_engine
        self.signer = signer                   # signs the records this writer appends (role govlog)
        self.trust = trust                     # verifies every record read (the trust bundle)
        self.on_commit = on_commit
        self.on_quarantine = on_quarantine
        self.adopt_legacy = adopt_legacy
        self.timeout_s = timeout_s
        self.retry_for_s = retry_for_s
        self.stall_s = stall_s
        self.engine = make_engine()
        self.replay = LogReplay(trust)         # the chain head: the next record is sealed after it
        self.links: dict[str, dict] = {}       # proposal id -> plan link
        self.by_action: dict[str, str] = {}    # expected action id -> proposal id
        self.last_seq = 0                      # the last stream sequence read (valid or quarantined)
        self.quarantined: dict[int, str] = {}  # stream sequence -> why it was not applied
        self._unreported: list[tuple[int, str, str]] = []
        self._busy_since: float | None = None  # monotonic time the batch in progress was taken
        probe = b"x0tta6bl4 governance log key check"
        try:   # a writer whose records its own replay would quarantine must not start
            trust.verify(ROLE, signer.key_id, probe, signer.sign(ROLE, probe), owners=OWNERS)
        except Exception as e:  # noqa: BLE001 - the verifier's reason (TrustError) goes into the message
            raise ConfigError(f"X0TTA6BL4_SIGNING_KEY_FILE: key {signer.key_id} cannot sign the governance log "
                              f"(X0TTA6BL4_TRUST_FILE does not trust it for {ROLE}: {e})") from None
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.commits = 0
        self.conflicts = 0
        self.catchup_requested = False
        self._reactions: asyncio.Queue[tuple[list, list]] = asyncio.Queue()   # stored commits to react to
        self._reacted = asyncio.Event()
        self._stopping = False
        self._writer: asyncio.Task | None = None

    # ---- life cycle ----------------------------------------------------------------
    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise Unavailable("governance store is not connected (call start() first)")
        return self._js

    def connect(self, nc: NATS) -> None:
        self._js = nc.jetstream(timeout=self.timeout_s)

    async def start(self, nc: NATS) -> int:
        """Connect, replay the whole log and start the writer; returns the number of events replayed.
        ConfigError: the log holds only unsigned legacy records and ``adopt_legacy`` is off."""
        self.connect(nc)
        n = await self.load()
        await self._ensure_signed()
        log.info("governance: replayed %d events (log at record %d, stream seq %d, %d quarantined): %d voters, "
                 "%d proposals", n, self.replay.head.seq, self.last_seq, len(self.quarantined),
                 len(self.engine.state.voters), len(self.engine.state.proposals))
        self._writer = asyncio.create_task(self.run(), name="gov-writer")
        return n

    async def _ensure_signed(self) -> None:
        """Give a log without a signed record its first one: empty (a new log), or sealing the legacy
        records when the operator adopts them."""
        for _attempt in range(8):
            if self.replay.head.seq:
                return
            legacy: LegacySeal | None = None
            if self.replay.legacy:
                old = self.replay.legacy
                if not self.adopt_legacy:
                    raise ConfigError(
                        f"governance log: stream {STREAM_GOV} holds {len(old)} unsigned records (stream seq "
                        f"{old[0].stream_seq}..{old[-1].stream_seq}) written before the log was signed; they "
                        f"cannot be verified. Start once with {ADOPT_SETTING}=true to accept them (the first "
                        f"signed record seals them), or archive the stream and start with an empty log")
                adopted, legacy = self.replay.adopt_legacy()
                self._apply(adopted, self.engine)
                log.warning("governance: adopting %d unsigned legacy records (%s=true)", len(adopted),
                            ADOPT_SETTING)
            try:
                self.last_seq = await self._append([], [], legacy)
                return
            except Conflict:
                await self.load()   # another replica (or a foreign message) went first: read it and decide again
        raise Unavailable("governance log: cannot write its first signed record (the stream keeps moving)")

    async def stop(self) -> None:
        """Stop the writer (stored commits get their reactions first)."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None

    def request_catch_up(self) -> None:
        """Apply what other replicas appended before the next batch of commands."""
        self.catchup_requested = True

    # ---- reading the log ---------------------------------------------------------
    async def _read_from(self, start_seq: int) -> list[tuple[int, str, bytes]]:
        """(stream sequence, subject, data) of every message from ``start_seq`` on (nothing decoded yet).

        In a cluster the stream or the reading consumer may have no leader for a moment (a server was killed, an
        election runs): the broker answers 503 or not at all. Reading resumes from the next sequence with a new
        consumer until ``retry_for_s`` has passed, then raises :class:`Unavailable`; it never returns a log cut
        short by a stalled consumer (which would replay a partial ledger)."""
        out: list[tuple[int, str, bytes]] = []
        next_seq = start_seq
        empty_rounds = 0
        delay = 0.1
        deadline = time.monotonic() + self.retry_for_s
        while True:
            if out:   # resume after what was read (also after a failure part-way)
                next_seq = max(next_seq, out[-1][0] + 1)
            try:
                info = await self.js.stream_info(STREAM_GOV)
                last = info.state.last_seq
                if last < next_seq:
                    return out
                got = await self._read_range(next_seq, last, out)
            except LEADERLESS as e:
                if time.monotonic() >= deadline:
                    raise Unavailable(f"governance log: stream {STREAM_GOV} cannot be read from seq {next_seq} "
                                      f"for {self.retry_for_s:.0f} s ({type(e).__name__}: no leader or no "
                                      f"broker)") from None
                log.warning("governance: reading %s from seq %d: %s; retrying in %.1f s", STREAM_GOV, next_seq,
                            type(e).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if out:
                next_seq = max(next_seq, out[-1][0] + 1)
            if next_seq > last:
                return out
            if got:
                empty_rounds = 0
                continue
            # a fresh consumer from next_seq delivered nothing below `last`: removed (limits, deletes) or a
            # consumer that stalled; a second fresh consumer tells them apart
            empty_rounds += 1
            if empty_rounds >= 2:
                return out

    async def _read_range(self, start_seq: int, last: int, out: list[tuple[int, str, bytes]]) -> int:
        """Append messages start_seq..last to ``out`` with an ephemeral consumer; returns how many it read
        before the stream ran out or a fetch timed out."""
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq,
                             ack_policy=AckPolicy.NONE, inactive_threshold=30.0)
        sub = await self.js.pull_subscribe(GOV_EVENTS_ALL, stream=STREAM_GOV, config=cfg)
        n = 0
        try:
            seq = start_seq - 1
            while seq < last:
                try:
                    msgs = await sub.fetch(256, timeout=2.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    break
                for m in msgs:
                    seq = m.metadata.sequence.stream
                    out.append((seq, m.subject, m.data))
                    n += 1
        finally:
            with contextlib.suppress(Exception):   # the ephemeral consumer goes away on its own
                await sub.unsubscribe()
        return n

    def _apply_links(self, links: list[dict]) -> None:
        apply_links(links, self.links, self.by_action)

    def _apply(self, verdicts: Sequence[Applied | Quarantined], engine: GovernanceEngine,
               subjects: dict[int, str] | None = None) -> list:
        """Fold what replay accepted into ``engine``; note what it quarantined. Returns the events applied."""
        applied: list = []
        for v in verdicts:
            if isinstance(v, Quarantined):
                self._quarantine(v.stream_seq, (subjects or {}).get(v.stream_seq, ""), v.reason)
                continue
            try:
                fold(v.events, engine.state)
            except EventStreamError as e:   # valid, but does not fit the state (an adopted legacy record)
                self._quarantine(v.stream_seq, (subjects or {}).get(v.stream_seq, ""), f"does not apply: {e}")
                continue
            self._apply_links(list(v.links))
            applied.extend(v.events)
        return applied

    def _quarantine(self, stream_seq: int, subject: str, reason: str) -> None:
        if stream_seq in self.quarantined:
            return
        self.quarantined[stream_seq] = reason
        QUARANTINED.inc()
        log.warning("governance: log message %d on %s quarantined: %s", stream_seq, subject or "?", reason)
        self._unreported.append((stream_seq, subject, reason))

    async def _report_quarantined(self) -> None:
        reports, self._unreported = self._unreported, []
        if self.on_quarantine is None:
            return
        for stream_seq, subject, reason in reports:
            try:
                await self.on_quarantine(stream_seq, subject, reason)
            except Exception:
                log.exception("governance: cannot report quarantined log message %d", stream_seq)

    async def _feed(self, replay: LogReplay, engine: GovernanceEngine, start_seq: int) -> tuple[list, int]:
        """Read from ``start_seq``, verify with ``replay``, apply to ``engine``: (events applied, last seq)."""
        applied: list = []
        last = start_seq - 1
        for seq, subject, data in await self._read_from(start_seq):
            applied += self._apply(replay.feed(seq, data), engine, {seq: subject})
            last = seq
        return applied, last

    async def load(self) -> int:
        """Rebuild the engine from the whole log, verifying every record; returns the number of events."""
        engine = self.make_engine()
        replay = LogReplay(self.trust)
        self.links.clear()
        self.by_action.clear()
        try:
            applied, last = await self._feed(replay, engine, 1)
        finally:
            await self._report_quarantined()
        self.engine = engine
        self.replay = replay
        self.last_seq = last
        return len(applied)

    async def catch_up(self) -> list:
        """Apply records other replicas appended since ours (no-op when we are at the head)."""
        info = await self.js.stream_info(STREAM_GOV)
        if info.state.last_seq <= self.last_seq:
            return []
        try:
            applied, last = await self._feed(self.replay, self.engine, self.last_seq + 1)
        finally:
            await self._report_quarantined()
        self.last_seq = max(self.last_seq, last)
        return applied

    # ---- appending -----------------------------------------------------------------
    async def _append(self, events: list, links: list[dict], legacy: LegacySeal | None = None) -> int:
        """Store the next record (signed, after the chain head); returns its stream sequence."""
        data, record = seal(self.replay.head, events, links, self.signer, legacy)
        headers = {"Nats-Expected-Last-Sequence": str(self.last_seq), "Nats-Msg-Id": uuid.uuid4().hex,
                   HEADER_TYPE: GOV_LOG_TYPE}
        subject = gov_event(kind_of(events))
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.05
        while True:
            try:
                ack = await self.js.publish(subject, data, timeout=self.timeout_s, headers=headers)
                self.replay.advance(record)
                return ack.seq
            except APIError as e:
                if e.err_code == WRONG_LAST_SEQUENCE:
                    raise Conflict(str(e)) from None
                raise Unavailable(f"governance log rejected the commit: {e}") from None
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as e:
                if time.monotonic() > deadline:
                    raise Unavailable(f"governance log unreachable: {type(e).__name__}: {e}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # ---- the writer --------------------------------------------------------------------
    async def execute(self, fn: Command) -> Any:
        """Run a command in the writer; returns its reply once its events are stored.
        ``Outcome.value`` may be a callable(engine), evaluated after the commit."""
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(fn, fut))
        return await fut

    async def read(self, fn: Callable[[GovernanceEngine], Any]) -> Any:
        """A query serialised with the commands (sees committed state only)."""
        return await self.execute(lambda eng: Outcome(fn(eng)))

    async def _react(self) -> None:
        """Run ``on_commit`` for each stored commit, in commit order."""
        reaction = self.on_commit
        if reaction is None:
            return
        while True:
            rounds = [await self._reactions.get()]
            deadline = time.monotonic() + REACTION_LINGER_S
            while len(rounds) < MAX_BATCH:
                if self._reactions.empty():
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stopping:
                        break
                    await asyncio.sleep(min(left, 0.005))
                    continue
                rounds.append(self._reactions.get_nowait())
            events = [e for evs, _ in rounds for e in evs]
            links = [lk for _, lks in rounds for lk in lks]
            try:
                await reaction(events, links)
            except Exception:
                log.exception("governance: post-commit reaction failed")
            finally:
                for _ in rounds:
                    self._reactions.task_done()
                self._reacted.set()

    async def drain_reactions(self, timeout_s: float = 5.0) -> None:
        """Wait until every stored commit's reactions have run (or the timeout)."""
        try:
            await asyncio.wait_for(self._reactions.join(), timeout_s)
        except TimeoutError:
            log.warning("governance: %d commits still unaudited after %.1f s", self._reactions.qsize(), timeout_s)

    async def run(self) -> None:
        reactor = asyncio.create_task(self._react(), name="gov-reactions") if self.on_commit else None
        try:
            await self._run_writer()
        finally:
            if reactor is not None:
                self._stopping = True
                if not reactor.done():
                    await self.drain_reactions(3.0)
                reactor.cancel()
                await asyncio.gather(reactor, return_exceptions=True)

    async def _run_writer(self) -> None:
        while True:
            batch = [await self.queue.get()]
            self._busy_since = time.monotonic()
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                if self.catchup_requested:
                    self.catchup_requested = False
                    try:
                        await self.catch_up()
                    except Exception as e:  # noqa: BLE001 - retried on the next batch
                        log.warning("governance: catch-up failed: %s", e)
                await self._run_batch(batch)
            except asyncio.CancelledError:
                for job in batch:
                    if not job.fut.done():
                        job.fut.set_exception(Unavailable("governance service is stopping"))
                raise
            except Exception as e:
                log.exception("governance writer failed a batch")
                await self._rebuild_quietly()   # the engine may hold events that were not stored
                for job in batch:
                    if not job.fut.done():
                        job.fut.set_exception(Unavailable(f"internal error: {type(e).__name__}: {e}"))
            finally:
                self._busy_since = None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ok, details) for /ready: not ok while the writer is not running or a batch has been in progress
        for ``stall_s``; the details count the quarantined log messages."""
        details: dict[str, Any] = {"quarantined": len(self.quarantined), "records": self.replay.head.seq,
                                   "stream_seq": self.last_seq, "queued": self.queue.qsize()}
        w = self._writer
        state = "ok"
        if w is None:
            state = "not started"
        elif w.done():
            exc = None if w.cancelled() else w.exception()
            state = f"stopped ({type(exc).__name__}: {exc})" if exc else "stopped"
        elif self._busy_since is not None and time.monotonic() - self._busy_since > self.stall_s:
            state = f"stuck: no progress for {time.monotonic() - self._busy_since:.1f} s"
        if state == "ok":
            return True, {**details, "writer": state}
        return False, {**details, "writer": state, "reason": f"governance log writer {state}"}

    async def _run_batch(self, batch: list[_Job]) -> None:
        for _attempt in range(8):
            results: list[tuple[bool, Any]] = []
            events: list = []
            links: list[dict] = []
            for job in batch:
                try:
                    out = job.fn(self.engine)
                    results.append((True, out))
                    events.extend(out.events)
                    links.extend(out.links)
                except GovernanceError as e:
                    results.append((False, e))
            if events:
                try:
                    self.last_seq = await self._append(events, links)
                except Conflict:
                    self.conflicts += 1
                    log.info("governance log moved under us (another replica); rebuilding and retrying")
                    await self._rebuild()
                    continue
                except Unavailable as e:
                    await self._rebuild_quietly()
                    for job in batch:
                        job.fut.set_exception(e)
                    return
                self._apply_links(links)
                self.commits += 1
            for job, (ok, value) in zip(batch, results, strict=True):
                if job.fut.done():
                    continue
                if not ok:
                    job.fut.set_exception(value)
                    continue
                reply = value.value
                try:
                    job.fut.set_result(reply(self.engine) if callable(reply) else reply)
                except GovernanceError as e:
                    job.fut.set_exception(e)
            if events and self.on_commit is not None:
                self._reactions.put_nowait((events, links))   # queued before any await: never lost
                while self._reactions.qsize() > REACTION_LAG:   # backpressure: bounded audit lag
                    self._reacted.clear()
                    await self._reacted.wait()
            return
        for job in batch:
            job.fut.set_exception(Unavailable("governance log: too many concurrent writers, retry"))

    async def _rebuild(self) -> None:
        await self.load()

    async def _rebuild_quietly(self) -> None:
        """The engine holds events that were not stored: throw it away (retry until the log answers)."""
        delay = 0.1
        while True:
            try:
                await self.load()
                return
            except Exception as e:  # noqa: BLE001 - broker away: retried with back-off
                log.warning("governance: cannot reload the log yet (%s); retrying", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
