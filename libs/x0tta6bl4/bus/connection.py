"""Connecting to NATS and declaring the streams, buckets and consumers of subjects.py."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from x0tta6bl4.bus import subjects

log = logging.getLogger("x0tta6bl4.bus")

RETRYABLE = (OSError, asyncio.TimeoutError, nats.errors.Error, nats.js.errors.Error)


async def connect(url: str, name: str, connect_timeout_s: float = 60.0) -> NATS:
    """Connect with back-off, then keep reconnecting for ever through broker restarts."""

    async def _disconnected() -> None:
        log.warning("%s: disconnected from NATS, reconnecting", name)

    async def _reconnected() -> None:
        log.info("%s: reconnected to NATS", name)

    async def _error(e: Exception) -> None:
        log.debug("%s: NATS error: %s", name, e)

    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(RETRYABLE),
        wait=wait_exponential(multiplier=0.05, max=2.0),
        stop=stop_after_delay(connect_timeout_s),
        reraise=True,
    ):
        with attempt:
            return await nats.connect(
                servers=[u.strip() for u in url.split(",")],
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                connect_timeout=2,
                allow_reconnect=True,
                disconnected_cb=_disconnected,
                reconnected_cb=_reconnected,
                error_cb=_error,
            )
    raise RuntimeError("unreachable")


async def connect_once(url: str, name: str, timeout_s: float = 10.0, connect_timeout_s: float = 2.0) -> NATS:
    """One bounded, quiet connection attempt for clients (CLI, MCP, scripts, edge sync): raises when no
    broker answers instead of retrying for ever; nats-py's per-attempt tracebacks are silenced."""
    async def _quiet(_e: Exception) -> None:
        return None
    return await asyncio.wait_for(
        nats.connect(servers=[u.strip() for u in url.split(",")], name=name, connect_timeout=connect_timeout_s,
                     allow_reconnect=False, max_reconnect_attempts=1, error_cb=_quiet), timeout_s)


def stream_config(s: subjects.Stream, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=s.name,
        subjects=list(s.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=s.max_age_s or None,
        max_bytes=s.max_bytes,
        duplicate_window=s.duplicate_window_s,
        num_replicas=replicas,
        deny_delete=s.deny_delete,
        discard=DiscardPolicy.NEW if s.discard_new else DiscardPolicy.OLD,
        allow_direct=True,
    )


async def ensure_topology(js: JetStreamContext, replicas: int = 1) -> None:
    """Create or update every stream and bucket (idempotent, safe from many replicas)."""
    for s in subjects.STREAMS:
        cfg = stream_config(s, replicas)
        try:
            await js.add_stream(cfg)
        except BadRequestError:
            await js.update_stream(cfg)
    for b in subjects.BUCKETS:
        try:
            await js.key_value(b.name)
        except (NotFoundError, nats.js.errors.BucketNotFoundError):
            with contextlib.suppress(BadRequestError):   # created concurrently by another replica
                await js.create_key_value(KeyValueConfig(bucket=b.name, history=b.history,
                                                         ttl=b.ttl_s or None, replicas=replicas))


def consumer_config(c: subjects.Consumer, max_deliver: int, ack_wait_s: float) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=c.durable,
        filter_subject=c.subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=max_deliver,
        ack_wait=ack_wait_s,
        max_ack_pending=1024,
    )
