"""Event ids and message metadata: pure helpers (no I/O, no broker).

Stage logic derives the ids of the events it emits from the ids of their causes, so a handler that runs
again after a crash emits the same ids and JetStream's de-duplication drops the copies.
"""
from __future__ import annotations

import hashlib
import time
import uuid

from x0tta6bl4.v1 import common_pb2

SCHEMA_VERSION = 1


def derive_id(*parts: str) -> str:
    """A deterministic event id from its causes (same input -> same id -> de-duplicated)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def new_id() -> str:
    """A fresh random event id."""
    return uuid.uuid4().hex


def new_meta(producer: str, cycle_id: str = "", event_id: str = "") -> common_pb2.Meta:
    """The ``meta`` of a new event: its id (random unless given), cycle, producer and time."""
    return common_pb2.Meta(
        event_id=event_id or new_id(),
        cycle_id=cycle_id,
        producer=producer,
        ts_unix_ns=time.time_ns(),
        schema_version=SCHEMA_VERSION,
    )
