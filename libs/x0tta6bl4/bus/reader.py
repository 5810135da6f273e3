"""Reading what is stored in a stream (for meshctl, tests and verification)."""
from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


async def read_all(js: JetStreamContext, subject: str, stream: str | None = None,
                   last: int | None = None, batch: int = 256) -> list[Msg]:
    """Every stored message on ``subject`` (or only the ``last`` N), oldest first."""
    cfg = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                         inactive_threshold=30.0, filter_subject=subject)
    psub = await js.pull_subscribe(subject, stream=stream, config=cfg)
    try:
        info = await psub.consumer_info()
        pending = info.num_pending or 0
        if last is not None and pending > last:
            await psub.unsubscribe()
            stream_name = stream or await js.find_stream_name_by_subject(subject)
            sinfo = await js.stream_info(stream_name)
            # start near the end: approximate by skipping by stream sequence
            start = max(sinfo.state.first_seq, sinfo.state.last_seq - last * 4)
            cfg = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                 opt_start_seq=start, inactive_threshold=30.0, filter_subject=subject)
            psub = await js.pull_subscribe(subject, stream=stream_name, config=cfg)
            pending = (await psub.consumer_info()).num_pending or 0
        out: list[Msg] = []
        while len(out) < pending:
            try:
                out.extend(await psub.fetch(min(batch, pending - len(out)), timeout=2.0))
            except (TimeoutError, nats.errors.TimeoutError):
                break
        return out[-last:] if last else out
    finally:
        with contextlib.suppress(Exception):   # an ephemeral consumer the server drops anyway
            await psub.unsubscribe()


async def follow(js: JetStreamContext, subject: str, new_only: bool = False) -> AsyncIterator[Msg]:
    """Messages on ``subject`` as they are stored (an ordered consumer)."""
    policy = DeliverPolicy.NEW if new_only else DeliverPolicy.ALL
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=policy)
    try:
        async for msg in sub.messages:
            yield msg
    finally:
        await sub.unsubscribe()


async def subscribe_since(js: JetStreamContext, subject: str, stream: str, since: dt.datetime,
                          cb: Callable[[Msg], Awaitable[None]] | None = None) -> JetStreamContext.PushSubscription:
    """An ordered consumer of ``subject`` from the time ``since`` on that survives the loss of its consumer.

    nats-py re-creates a lost ordered consumer (a server restart drops it; two missed heartbeats tell) from
    the next stream sequence, with the creation request it kept: that request would still carry the start
    time beside the new start sequence, which the server refuses, so the subscription went silent forever
    after the first restart (the analyzer's window history then waited ``history_wait_s`` on every window).
    Once the consumer exists its start time has done its work: it is dropped from the kept request."""
    cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since)
    sub = await js.subscribe(subject, stream=stream, cb=cb, ordered_consumer=True, config=cfg)
    cfg.opt_start_time = None     # the object nats-py keeps for re-creation (it does not copy the config)
    return sub


async def kv_snapshot(js: JetStreamContext, bucket: str, timeout: float = 10.0) -> dict[str, bytes]:
    """Every current key and value of a key-value bucket (empty when the bucket is missing or empty).
    Read with one watch (not nats-py's ``keys()``, whose end marker can come before the keys)."""
    from x0tta6bl4.bus.kvwatch import BucketNotFound, watch_bucket
    try:
        watcher, initial = await watch_bucket(js, bucket, timeout=timeout)
    except BucketNotFound:
        return {}
    await watcher.stop()
    out: dict[str, bytes] = {}
    for e in initial:
        if e.operation in ("DEL", "PURGE"):
            out.pop(e.key, None)
        else:
            out[e.key] = e.value or b""
    return out


async def mesh_telemetry(js: JetStreamContext):
    """The latest NodeTelemetry of every node, from the monitor's `telemetry` bucket, by node id."""
    from x0tta6bl4.v1 import events_pb2
    nodes = (events_pb2.NodeTelemetry.FromString(v) for v in (await kv_snapshot(js, "telemetry")).values() if v)
    return {t.node_id: t for t in nodes}
