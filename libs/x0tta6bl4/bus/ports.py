"""What a stage handler may ask of the bus, with no broker behind it (no nats import here).

A handler is a plain function ``async def on_x(message, ctx, deps)``. ``ctx`` is a :class:`Context`:
publish an event caused by the current one, write an audit event, reach a key-value bucket, send a
request and wait for the reply. Two implementations exist: the NATS runtime
(:mod:`x0tta6bl4.bus.app`, :mod:`x0tta6bl4.bus.kv`) and the in-memory bus for tests
(:mod:`x0tta6bl4.bus.memory`).

Key-value writes that must not lose a concurrent update go through :func:`cas_update`: read the
entry, compute the new value from it, write it only if nobody wrote in between, try again if they did.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.message import Message


class KVError(Exception):
    """A key-value operation failed."""


class KeyNotFound(KVError, KeyError):
    """The key has no value (never written, deleted or expired)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "key not found"


class CasConflict(KVError):
    """A compare-and-set write lost: the key changed (or was created) since it was read."""


class Unavailable(KVError):
    """The bucket cannot be reached now (broker away, bucket missing); worth a retry later."""


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    revision: int


class KV(Protocol):
    """A key-value bucket (JetStream KV semantics: revisions, create-only and compare-and-set writes)."""

    name: str

    async def get(self, key: str) -> Entry:
        """The entry, or :class:`KeyNotFound`."""
        ...

    async def put(self, key: str, value: bytes) -> int:
        """Write unconditionally; returns the new revision."""
        ...

    async def create(self, key: str, value: bytes) -> int:
        """Write only if the key has no value; :class:`CasConflict` otherwise."""
        ...

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Write only if the key's revision is still ``last``; :class:`CasConflict` otherwise."""
        ...

    async def delete(self, key: str, last: int | None = None) -> None:
        """Delete (only at revision ``last`` when given: :class:`CasConflict` otherwise)."""
        ...

    async def keys(self) -> list[str]:
        """Every key that has a value now."""
        ...


class NoResponders(asyncio.TimeoutError):
    """Nobody answers requests on that subject now (its responder is away: restarting, or reconnecting to
    another server). Seen as a timeout by callers that do not tell the two apart."""


@dataclass(frozen=True)
class Reply:
    """The answer to a request: its payload and headers (``X0-Error`` names a failure)."""
    data: bytes
    headers: Mapping[str, str]

    @property
    def error(self) -> str | None:
        return self.headers.get("X0-Error")


class Context(Protocol):
    """What a handler gets with each message (or, for a background task, with no message)."""

    subject: str
    event_id: str
    cycle_id: str
    deliveries: int

    @property
    def headers(self) -> Mapping[str, str]:
        """The message's headers (W3C trace context, ...); empty for background work."""
        ...

    async def publish(self, subject: str, msg: Message, key: str = "", *, cycle_id: str | None = None) -> None:
        """Publish an event caused by the current one (same cycle, id derived from the cause and ``key``)."""
        ...

    async def audit(self, event_type: str, subject_id: str = "", details: dict[str, Any] | None = None,
                    *, cycle_id: str | None = None) -> None:
        """Append a signed, chained audit event."""
        ...

    async def kv(self, bucket: str) -> KV:
        ...

    async def request(self, subject: str, data: bytes, timeout: float) -> Reply:
        """Core request/reply; ``asyncio.TimeoutError`` when nobody answers in time."""
        ...


class Reject(Exception):
    """Raised by a handler for a message that can never succeed: dead-letter it now."""


# ---- compare-and-set ----------------------------------------------------------------------------------
class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()
"""Returned by a :func:`cas_update` function: delete the key (at the revision read)."""

CAS_TRIES = 10


@dataclass(frozen=True)
class CasResult:
    written: bool                 # False: the function chose to leave the key as it was
    value: bytes | None           # what the key holds after the call (None: no value)
    revision: int                 # the revision after the call (0: no value)
    tries: int


async def cas_update(kv: KV, key: str, change: Callable[[Entry | None], bytes | _Delete | None],
                     *, tries: int = CAS_TRIES, backoff_s: float = 0.002) -> CasResult:
    """Read ``key``, compute its new value with ``change(entry_or_None)`` and write it only if the key did
    not change in between; on a lost race read again and recompute, up to ``tries`` times.

    ``change`` returns the new bytes, :data:`DELETE`, or ``None`` to leave the key as it is (then nothing
    is written and ``written`` is False). It must be a pure function of the entry: it may run several times.
    Raises :class:`CasConflict` when every try lost (heavy contention), never loses an update silently.
    """
    for attempt in range(1, tries + 1):
        try:
            entry: Entry | None = await kv.get(key)
        except KeyNotFound:
            entry = None
        new = change(entry)
        if new is None:
            return CasResult(False, entry.value if entry else None, entry.revision if entry else 0, attempt)
        try:
            if isinstance(new, _Delete):
                if entry is None:
                    return CasResult(False, None, 0, attempt)
                await kv.delete(key, last=entry.revision)
                return CasResult(True, None, 0, attempt)
            if entry is None:
                rev = await kv.create(key, new)
            else:
                rev = await kv.update(key, new, last=entry.revision)
            return CasResult(True, new, rev, attempt)
        except CasConflict:
            if attempt < tries and backoff_s:
                await asyncio.sleep(backoff_s * attempt)
    raise CasConflict(f"{getattr(kv, 'name', 'bucket')}/{key}: compare-and-set lost {tries} times in a row")


Handler = Callable[..., Awaitable[None]]
