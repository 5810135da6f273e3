"""The key-value port (:class:`x0tta6bl4.bus.ports.KV`) on a JetStream key-value bucket."""
from __future__ import annotations

import asyncio

import nats
from nats.js.errors import BadRequestError, BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from x0tta6bl4.bus.ports import CasConflict, Entry, KeyNotFound, Unavailable
from x0tta6bl4.bus.reader import kv_snapshot

_AWAY = (asyncio.TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError,
         nats.errors.ConnectionClosedError, BucketNotFoundError)


class NatsKV:
    """One JetStream bucket behind the port: nats-py's exceptions become the port's."""

    def __init__(self, kv: KeyValue, name: str, js=None):
        self.raw = kv
        self.name = name
        self._js = js

    async def get(self, key: str) -> Entry:
        try:
            entry = await self.raw.get(key)
        except KeyNotFoundError:
            raise KeyNotFound(f"{self.name}/{key}") from None
        except _AWAY as e:
            raise Unavailable(f"{self.name}/{key}: {type(e).__name__}: {e}") from None
        if entry.value is None:
            raise KeyNotFound(f"{self.name}/{key}")
        return Entry(key, entry.value, entry.revision or 0)

    async def put(self, key: str, value: bytes) -> int:
        return await self.raw.put(key, value)

    async def create(self, key: str, value: bytes) -> int:
        try:
            return await self.raw.create(key, value)
        except KeyWrongLastSequenceError:
            raise CasConflict(f"{self.name}/{key} exists") from None

    async def update(self, key: str, value: bytes, last: int) -> int:
        try:
            return await self.raw.update(key, value, last=last)
        except (KeyWrongLastSequenceError, BadRequestError):
            raise CasConflict(f"{self.name}/{key} changed since revision {last}") from None

    async def delete(self, key: str, last: int | None = None) -> None:
        try:
            await self.raw.delete(key, last=last)
        except (KeyWrongLastSequenceError, BadRequestError):
            raise CasConflict(f"{self.name}/{key} changed since revision {last}") from None

    async def keys(self) -> list[str]:
        """Every key with a value now (a complete snapshot: see :mod:`x0tta6bl4.bus.kvwatch`)."""
        if self._js is None:
            raise Unavailable(f"{self.name}: keys() needs the JetStream context")
        return sorted(await kv_snapshot(self._js, self.name))
