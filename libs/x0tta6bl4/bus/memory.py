"""An in-memory bus for handler tests, in the spirit of FastStream's ``TestNatsBroker``.

Publish a message to a service's handlers and assert what they published, audited, stored and
dead-lettered, in milliseconds and without nats-server::

    app = build(settings)                       # the service's own composition root
    bus = TestBus(app)
    await bus.publish(subjects.MAPEK_ANOMALY, anomaly)
    [plan] = bus.messages(subjects.MAPEK_PLAN)
    assert bus.audited("decision")

Messages go through the real codec both ways (an invalid message is dead-lettered as on NATS); ids
are derived from the cause as the runtime does; a redelivered event id is skipped once handled; a
handler that raises :class:`~x0tta6bl4.bus.ports.Reject` dead-letters its message. Key-value buckets
are :class:`MemoryKV` with JetStream's revision and compare-and-set semantics, and the service's
``mirror()`` views follow them. Requests (``ctx.request``) are answered by responders the test
registers (the other party, e.g. a mesh agent); with none, the request times out as on NATS.

Only handler unit tests use this: integration and end-to-end tests run the real broker.
"""
from __future__ import annotations

import asyncio
import fnmatch
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from google.protobuf.message import Message

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import InvalidMessage, decode, encode
from x0tta6bl4.bus.ports import CasConflict, Entry, KeyNotFound, NoResponders, Reject, Reply
from x0tta6bl4.ids import SCHEMA_VERSION, derive_id

if TYPE_CHECKING:
    from x0tta6bl4.bus.app import Service


class MemoryKV:
    """A key-value bucket in memory with JetStream's semantics (revisions are one sequence per bucket)."""

    def __init__(self, name: str):
        self.name = name
        self._data: dict[str, Entry] = {}
        self._seq = itertools.count(1)
        self.listeners: list[Callable[[str, bytes | None], None]] = []
        self.writes = 0

    def _set(self, key: str, value: bytes | None) -> int:
        if not isinstance(key, str) or not key or any(c in key for c in " *>"):
            raise ValueError(f"{self.name}: invalid key {key!r}")
        rev = next(self._seq)
        self.writes += 1
        if value is None:
            self._data.pop(key, None)
        else:
            self._data[key] = Entry(key, bytes(value), rev)
        for fn in list(self.listeners):
            fn(key, value)
        return rev

    async def get(self, key: str) -> Entry:
        try:
            return self._data[key]
        except KeyError:
            raise KeyNotFound(f"{self.name}/{key}") from None

    async def put(self, key: str, value: bytes) -> int:
        return self._set(key, value)

    async def create(self, key: str, value: bytes) -> int:
        if key in self._data:
            raise CasConflict(f"{self.name}/{key} exists")
        return self._set(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        cur = self._data.get(key)
        if cur is None or cur.revision != last:
            raise CasConflict(f"{self.name}/{key} changed since revision {last}")
        return self._set(key, value)

    async def delete(self, key: str, last: int | None = None) -> None:
        cur = self._data.get(key)
        if last is not None and (cur is None or cur.revision != last):
            raise CasConflict(f"{self.name}/{key} changed since revision {last}")
        self._set(key, None)

    async def keys(self) -> list[str]:
        return sorted(self._data)

    # test conveniences (not part of the port)
    def value(self, key: str) -> bytes | None:
        e = self._data.get(key)
        return e.value if e else None

    def snapshot(self) -> dict[str, bytes]:
        return {k: e.value for k, e in self._data.items()}


@dataclass(frozen=True)
class Published:
    subject: str
    msg: Message
    event_id: str
    cycle_id: str


@dataclass(frozen=True)
class Audited:
    service: str
    event_type: str
    subject_id: str
    details: Mapping[str, Any]
    cycle_id: str


@dataclass(frozen=True)
class DeadLettered:
    subject: str
    consumer: str
    reason: str


Responder = Callable[[str, bytes], Awaitable[Reply | bytes]]


def _matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` one token, ``>`` the rest."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


@dataclass
class MemoryContext:
    """The handler :class:`~x0tta6bl4.bus.ports.Context` of the in-memory bus."""
    bus: TestBus
    subject: str = ""
    event_id: str = ""
    cycle_id: str = ""
    deliveries: int = 1
    headers: dict[str, str] = field(default_factory=dict)
    _n: int = 0

    async def publish(self, subject: str, msg: Message, key: str = "", *, cycle_id: str | None = None) -> None:
        self._n += 1
        eid = derive_id(self.event_id, subject, key or str(self._n)) if self.event_id else ""
        await self.bus.emit(subject, msg, cycle_id=self.cycle_id if cycle_id is None else cycle_id, event_id=eid)

    async def audit(self, event_type: str, subject_id: str = "", details: dict[str, Any] | None = None,
                    *, cycle_id: str | None = None) -> None:
        self.bus.audits.append(Audited(self.bus.service, event_type, subject_id, dict(details or {}),
                                       self.cycle_id if cycle_id is None else cycle_id))

    async def kv(self, bucket: str) -> MemoryKV:
        return self.bus.kv(bucket)

    async def request(self, subject: str, data: bytes, timeout: float) -> Reply:
        return await self.bus.request(subject, data, timeout)


class TestBus:
    """Run a :class:`~x0tta6bl4.bus.app.Service`'s handlers (or bare handler functions) in memory."""

    __test__ = False   # not a pytest test class

    def __init__(self, app: Service | None = None, *, service: str | None = None, route: bool = False):
        self.app = app
        self.service = service or (app.name if app is not None else "test")
        self.route = route              # deliver what the handlers publish to this app's handlers too
        self.published: list[Published] = []
        self.audits: list[Audited] = []
        self.dead_letters: list[DeadLettered] = []
        self.buckets: dict[str, MemoryKV] = {}
        self.processed: set[str] = set()
        self.responders: list[tuple[str, Responder]] = []
        self.requests: list[tuple[str, bytes]] = []
        self._queue: list[tuple[str, bytes, str]] = []
        if app is not None:
            for bucket, mirrors in app.mirrors.items():
                for view, dec, on_change in mirrors:
                    self._follow(bucket, view, dec, on_change)

    # ---- buckets ------------------------------------------------------------------------------
    def kv(self, bucket: str) -> MemoryKV:
        if bucket not in self.buckets:
            if bucket not in {b.name for b in subjects.BUCKETS}:
                raise KeyError(f"no key-value bucket named {bucket!r} in bus.subjects.BUCKETS")
            self.buckets[bucket] = MemoryKV(bucket)
        return self.buckets[bucket]

    def _follow(self, bucket: str, view: dict, dec: Callable[[bytes], Any],
                on_change: Callable[[str, Any], None] | None) -> None:
        def apply(key: str, value: bytes | None) -> None:
            decoded = dec(value) if value is not None else None
            if decoded is None:
                view.pop(key, None)
            else:
                view[key] = decoded
            if on_change is not None:
                on_change(key, decoded)
        self.kv(bucket).listeners.append(apply)

    # ---- requests -----------------------------------------------------------------------------
    def responder(self, pattern: str) -> Callable[[Responder], Responder]:
        """Register the other party of ``ctx.request`` for subjects matching ``pattern`` (NATS wildcards)."""
        def deco(fn: Responder) -> Responder:
            self.responders.append((pattern, fn))
            return fn
        return deco

    async def request(self, subject: str, data: bytes, timeout: float) -> Reply:
        self.requests.append((subject, data))
        for pattern, fn in self.responders:
            if _matches(pattern, subject):
                out = await asyncio.wait_for(fn(subject, data), timeout)
                return out if isinstance(out, Reply) else Reply(out, {})
        raise NoResponders(f"no responders on {subject}")

    # ---- contexts and publishing ----------------------------------------------------------------
    def context(self, subject: str = "", event_id: str = "", cycle_id: str = "", deliveries: int = 1) -> MemoryContext:
        return MemoryContext(self, subject, event_id, cycle_id, deliveries)

    async def emit(self, subject: str, msg: Message, *, cycle_id: str = "", event_id: str = "") -> Published:
        """Record a publish (as a stage's ctx.publish does): fill in meta, validate, store."""
        if "meta" in msg.DESCRIPTOR.fields_by_name:
            m = cast(Any, msg).meta
            m.event_id = m.event_id or event_id or uuid.uuid4().hex
            m.cycle_id = m.cycle_id or cycle_id
            m.producer = m.producer or self.service
            m.ts_unix_ns = m.ts_unix_ns or time.time_ns()
            m.schema_version = m.schema_version or SCHEMA_VERSION
            eid, cid = m.event_id, m.cycle_id
        else:
            eid, cid = event_id or uuid.uuid4().hex, cycle_id
        data = encode(msg)                      # invalid outgoing events fail here, as on NATS
        p = Published(subject, type(msg).FromString(data), eid, cid)
        self.published.append(p)
        if self.route:
            self._queue.append((subject, data, eid))
        return p

    async def publish(self, subject: str, msg: Message | bytes, *, msg_type: type[Message] | None = None,
                      deliveries: int = 1) -> list[Published]:
        """Deliver a message to every handler of the app subscribed to ``subject`` (its durable consumers
        in the subject table); returns what the handlers published meanwhile."""
        if self.app is None:
            raise RuntimeError("TestBus.publish needs the service: TestBus(app)")
        data = msg if isinstance(msg, bytes) else encode(msg)
        before = len(self.published)
        await self._dispatch(subject, data, msg_type, deliveries)
        while self._queue:
            s, d, _ = self._queue.pop(0)
            await self._dispatch(s, d, None, 1)
        return self.published[before:]

    async def _dispatch(self, subject: str, data: bytes, msg_type: type[Message] | None, deliveries: int) -> None:
        assert self.app is not None
        for sub in self.app.subscriptions:
            c = subjects.consumer(sub.durable)
            if not _matches(c.subject, subject):
                continue
            await self._run(sub.durable, sub.msg_type if msg_type is None else msg_type, sub.handler,
                            subject, data, deliveries, sub.idempotent_skip)

    async def deliver(self, handler: Callable[..., Awaitable[None]], msg: Message, *, subject: str = "",
                      consumer: str = "test", deliveries: int = 1, **kwargs: Any) -> list[Published]:
        """Run one handler function on one message (``kwargs`` are its dependencies)."""
        before = len(self.published)

        async def call(m: Message, ctx: MemoryContext) -> None:
            await handler(m, ctx, **kwargs)
        await self._run(consumer, type(msg), call, subject, encode(msg), deliveries, True)
        return self.published[before:]

    async def _run(self, consumer: str, msg_type: type[Message], handler: Callable[..., Awaitable[None]],
                   subject: str, data: bytes, deliveries: int, idempotent_skip: bool) -> None:
        try:
            msg = decode(msg_type, data)
        except InvalidMessage as e:
            self.dead_letters.append(DeadLettered(subject, consumer, str(e)))
            return
        meta = getattr(msg, "meta", None)
        event_id = meta.event_id if meta is not None else ""
        key = f"{consumer}.{event_id}"
        if idempotent_skip and event_id and key in self.processed:
            return
        ctx = self.context(subject, event_id, meta.cycle_id if meta is not None else "", deliveries)
        try:
            await handler(msg, ctx)
        except Reject as e:
            self.dead_letters.append(DeadLettered(subject, consumer, f"rejected by {self.service}: {e}"))
            return
        if idempotent_skip and event_id:
            self.processed.add(key)

    # ---- assertions -----------------------------------------------------------------------------
    def messages(self, subject_pattern: str) -> list[Message]:
        """What was published on subjects matching the pattern (NATS wildcards, or shell-style globs)."""
        return [p.msg for p in self.published
                if _matches(subject_pattern, p.subject) or fnmatch.fnmatchcase(p.subject, subject_pattern)]

    def audited(self, event_type: str) -> list[Audited]:
        return [a for a in self.audits if a.event_type == event_type]
