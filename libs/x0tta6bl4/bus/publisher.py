"""Publishing protobuf events to JetStream: idempotent, traced, retried."""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from typing import Any, cast

import nats
from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.js.api import PubAck
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import SCHEMA_VERSION, encode
from x0tta6bl4.ids import derive_id  # noqa: F401 - re-exported
from x0tta6bl4.telemetry.tracing import inject_headers

log = logging.getLogger("x0tta6bl4.bus")

MSG_ID, TYPE, CYCLE = subjects.HEADER_MSG_ID, subjects.HEADER_TYPE, subjects.HEADER_CYCLE

RETRYABLE = (asyncio.TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError,
             nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
             nats.errors.OutboundBufferLimitError, nats.js.errors.NoStreamResponseError,
             nats.js.errors.ServiceUnavailableError, nats.errors.StaleConnectionError)


class Publisher:
    """Publish events with Nats-Msg-Id de-duplication and W3C trace context headers.

    A publish that fails because the broker is away is retried with exponential
    back-off for up to ``retry_for_s``; a successful return means JetStream
    stored the message (it sent a PubAck).
    """

    def __init__(self, nc: NATS, producer: str, timeout_s: float = 5.0, retry_for_s: float = 60.0):
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout_s)
        self.producer = producer
        self.timeout_s = timeout_s
        self.retry_for_s = retry_for_s

    def prepare(self, msg: Message, cycle_id: str | None = None, event_id: str | None = None) -> Message:
        if "meta" in msg.DESCRIPTOR.fields_by_name:
            m = cast(Any, msg).meta
            if event_id and not m.event_id:
                m.event_id = event_id
            if not m.event_id:
                m.event_id = uuid.uuid4().hex
            if cycle_id and not m.cycle_id:
                m.cycle_id = cycle_id
            if not m.producer:
                m.producer = self.producer
            if not m.ts_unix_ns:
                m.ts_unix_ns = time.time_ns()
            if not m.schema_version:
                m.schema_version = SCHEMA_VERSION
        return msg

    def headers_for(self, msg: Message, msg_id: str) -> dict[str, str]:
        headers = inject_headers({MSG_ID: msg_id, TYPE: msg.DESCRIPTOR.full_name})
        meta = cast(Any, msg).meta if "meta" in msg.DESCRIPTOR.fields_by_name else None
        if meta is not None and meta.cycle_id:
            headers[CYCLE] = meta.cycle_id
        return headers

    async def emit(self, subject: str, msg: Message) -> None:
        """Fire-and-forget publish for periodic state (telemetry), where the next report supersedes a
        lost one: no PubAck round trip, no span; a fresh sampled W3C trace context so a cycle that this
        report starts is still one trace from here on."""
        self.prepare(msg)
        data = encode(msg)
        headers = {MSG_ID: cast(Any, msg).meta.event_id, TYPE: msg.DESCRIPTOR.full_name,
                   "traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"}
        await self.nc.publish(subject, data, headers=headers)

    async def publish(self, subject: str, msg: Message, *, cycle_id: str | None = None,
                      event_id: str | None = None) -> PubAck:
        self.prepare(msg, cycle_id, event_id)
        data = encode(msg)
        has_meta = "meta" in msg.DESCRIPTOR.fields_by_name
        msg_id = cast(Any, msg).meta.event_id if has_meta else (event_id or uuid.uuid4().hex)
        headers = self.headers_for(msg, msg_id)
        try:  # the fast path; the retry machinery only when the broker is away
            return await self.js.publish(subject, data, timeout=self.timeout_s, headers=headers)
        except RETRYABLE as e:
            log.debug("publish to %s failed (%s); retrying with back-off", subject, type(e).__name__)
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(RETRYABLE),
            wait=wait_exponential(multiplier=0.05, max=2.0),
            stop=stop_after_delay(self.retry_for_s),
            reraise=True,
        ):
            with attempt:
                return await self.js.publish(subject, data, timeout=self.timeout_s, headers=headers)
        raise RuntimeError("unreachable")
