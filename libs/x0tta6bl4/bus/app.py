"""A service is a set of typed subscribers on durable pull consumers.

    app = Service("analyzer", settings)

    @app.subscriber("analyzer", events_pb2.TelemetryWindow)
    async def on_window(window, ctx):
        for anomaly in detect(window):            # the domain
            await ctx.publish(subjects.MAPEK_ANOMALY, anomaly)

    app.run()

For every message the runtime: extracts the W3C trace context from the headers
and opens a span; decodes and validates the protobuf (invalid -> dead letter +
audit event, never retried); skips an event this consumer already handled
(redelivery); runs the handler; acks. A handler that raises is retried with
back-off and dead-lettered after ``max_deliver`` deliveries. ``Reject`` parks a
message at once. Outgoing events get deterministic ids derived from the input
event, so a handler re-run after a crash publishes nothing twice.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import nats
from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram

from x0tta6bl4.audit.chain import AuditChain, MLDSASigner
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import InvalidMessage, decode, new_meta
from x0tta6bl4.bus.connection import connect, consumer_config, ensure_topology, missing_topology
from x0tta6bl4.bus.health import HealthServer
from x0tta6bl4.bus.kv import NatsKV
from x0tta6bl4.bus.ports import KeyNotFound, Reject, Reply
from x0tta6bl4.bus.publisher import Publisher, derive_id
from x0tta6bl4.config import CommonSettings, ConfigError, load_settings
from x0tta6bl4.pqc.keystore import write_secret_file
from x0tta6bl4.telemetry.tracing import (
    CYCLE_ATTR,
    current_trace_id,
    extract_context,
    setup_tracing,
    shutdown_tracing,
    tracer,
)
from x0tta6bl4.v1 import events_pb2

log = logging.getLogger("x0tta6bl4.service")
M = TypeVar("M", bound=Message)
ReadinessCheck = Callable[[], tuple[bool, dict[str, Any]]]
"""A /ready condition: () -> (ok, details shown in /ready's JSON)."""

HANDLED = Counter("x0_messages_handled_total", "messages handled", ["service", "consumer", "outcome"])
LATENCY = Histogram("x0_handler_seconds", "handler latency", ["service", "consumer"],
                    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))


@dataclass
class Context:
    """The NATS runtime's handler context (see :class:`x0tta6bl4.bus.ports.Context`)."""
    service: Service
    subject: str
    event_id: str
    cycle_id: str
    headers: dict[str, str]
    deliveries: int
    _n: int = 0

    async def publish(self, subject: str, msg: Message, key: str = "", *, cycle_id: str | None = None) -> None:
        """Publish an event caused by the current one (same cycle, same trace, derived id)."""
        self._n += 1
        eid = derive_id(self.event_id, subject, key or str(self._n)) if self.event_id else None
        await self.service.publisher.publish(subject, msg, cycle_id=self.cycle_id if cycle_id is None else cycle_id,
                                             event_id=eid)

    async def audit(self, event_type: str, subject_id: str = "", details: dict[str, Any] | None = None,
                    *, cycle_id: str | None = None) -> None:
        await self.service.audit(event_type, subject_id, details,
                                 cycle_id=self.cycle_id if cycle_id is None else cycle_id)

    async def kv(self, bucket: str) -> NatsKV:
        return await self.service.kv(bucket)

    async def request(self, subject: str, data: bytes, timeout: float) -> Reply:
        reply = await self.service.nc.request(subject, data, timeout=timeout)
        return Reply(reply.data, dict(reply.headers or {}))


@dataclass
class Subscription(Generic[M]):
    durable: str
    msg_type: type[M]
    handler: Callable[[M, Context], Awaitable[None]]
    concurrency: int = 1
    idempotent_skip: bool = True
    bound: bool = False


def _load_audit_signer(data_dir: pathlib.Path, service: str) -> MLDSASigner:
    """The service's audit signing key, persisted (0600, written atomically). Replicas sharing the
    data dir agree on one key: the first to create the file wins, the others load it."""
    path = data_dir / "keys" / f"audit-{service}.seed"
    if not path.exists():
        with contextlib.suppress(FileExistsError):   # another replica created it first
            write_secret_file(path, MLDSASigner().seed_bytes_unsafe(), create_only=True)
    return MLDSASigner.from_seed(path.read_bytes())


class Service:
    def __init__(self, name: str, settings: CommonSettings):
        self.name = name
        self.settings = settings
        self.subscriptions: list[Subscription] = []
        self._startup: list[Callable[[], Awaitable[None]]] = []
        self._shutdown: list[Callable[[], Awaitable[None]]] = []
        self._background: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task] = []
        self._kv: dict[str, NatsKV] = {}
        self.mirrors: dict[str, list[tuple[dict, Callable[[bytes], Any], Callable[[str, Any], None] | None]]] = {}
        self._audit_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self.readiness_checks: dict[str, ReadinessCheck] = {}   # extra /ready conditions (readiness_check)
        # set by start(); a service is used only between start() and stop()
        self.nc: NATS = None  # type: ignore[assignment]
        self.publisher: Publisher = None  # type: ignore[assignment]
        self.chain: AuditChain = None  # type: ignore[assignment]
        self.health: HealthServer | None = None
        self.started_at = time.time()

    # ---- registration -------------------------------------------------------
    def subscriber(self, durable: str, msg_type: type[M], concurrency: int = 1, idempotent_skip: bool = True):
        subjects.consumer(durable)  # fail fast on a name not in the table

        def deco(fn: Callable[[M, Context], Awaitable[None]]):
            self.subscriptions.append(Subscription(durable, msg_type, fn, concurrency, idempotent_skip))
            return fn
        return deco

    def subscribe(self, durable: str, msg_type: type[M], handler: Callable[[M, Context], Awaitable[None]],
                  concurrency: int = 1, idempotent_skip: bool = True) -> None:
        """Register ``handler`` (usually a stage function with its dependencies bound) on a durable consumer."""
        self.subscriber(durable, msg_type, concurrency, idempotent_skip)(handler)

    def on_startup(self, fn):
        self._startup.append(fn)
        return fn

    def on_shutdown(self, fn):
        self._shutdown.append(fn)
        return fn

    def background(self, fn):
        """A coroutine run for the life of the service (loops until cancelled)."""
        self._background.append(fn)
        return fn

    def mirror(self, bucket: str, decode: Callable[[bytes], Any] = lambda b: b,
               on_change: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
        """A dict kept equal to a key-value bucket by a watcher (a cache shared state is read from;
        the bucket stays the source of truth, so replicas see the same data)."""
        view: dict[str, Any] = {}
        self.mirrors.setdefault(bucket, []).append((view, decode, on_change))

        async def watch() -> None:
            kv = await self.raw_kv(bucket)
            watcher = await kv.watchall()
            async for entry in watcher:
                if entry is None:
                    continue
                if entry.operation is None and entry.value is not None:
                    value = decode(entry.value)
                    view[entry.key] = value
                else:
                    value = None
                    view.pop(entry.key, None)
                if on_change is not None:
                    on_change(entry.key, value)
        watch.__name__ = f"mirror_{bucket}"
        self._background.append(watch)
        return view

    # ---- helpers for handlers ----------------------------------------------
    async def kv(self, bucket: str) -> NatsKV:
        """A bucket behind the key-value port (:mod:`x0tta6bl4.bus.ports`)."""
        if bucket not in self._kv:
            js = self.nc.jetstream()
            self._kv[bucket] = NatsKV(await js.key_value(bucket), bucket, js)
        return self._kv[bucket]

    async def raw_kv(self, bucket: str) -> KeyValue:
        """nats-py's bucket object (watchers); handlers use :meth:`kv`."""
        return (await self.kv(bucket)).raw

    def context(self, cycle_id: str = "") -> Context:
        """A context for work not caused by a message (background loops): fresh event ids."""
        return Context(self, "", "", cycle_id, {}, 0)

    async def audit(self, event_type: str, subject_id: str = "", details: dict[str, Any] | None = None,
                    cycle_id: str = "") -> None:
        async with self._audit_lock:
            ev = self.chain.next(event_type, subject_id, details, cycle_id=cycle_id, trace_id=current_trace_id())
            try:
                await self.publisher.publish(subjects.audit(self.name, event_type), ev)
            except Exception:
                # keep the chain consistent: the event is re-sent, never skipped
                self.chain.seq -= 1
                self.chain.last_hash = ev.prev_hash
                raise

    async def publish(self, subject: str, msg: Message, cycle_id: str | None = None, event_id: str | None = None):
        await self.publisher.publish(subject, msg, cycle_id=cycle_id, event_id=event_id)

    def readiness_check(self, name: str, check: ReadinessCheck) -> None:
        """Add a condition to /ready: ``check()`` -> (ok, details). /ready is false while any check is not ok
        and shows each check's ``{"ok": ..., **details}`` under ``checks.<name>`` (a check that raises is
        not ok)."""
        self.readiness_checks[name] = check

    def readiness(self) -> dict[str, dict[str, Any]]:
        """Every readiness check's result (see :meth:`readiness_check`)."""
        out: dict[str, dict[str, Any]] = {}
        for name, check in self.readiness_checks.items():
            try:
                ok, details = check()
            except Exception as e:  # noqa: BLE001 - a failing check means "not ready", with the reason
                ok, details = False, {"error": f"{type(e).__name__}: {e}"}
            out[name] = {"ok": bool(ok), **details}
        return out

    @property
    def ready(self) -> bool:
        return bool(self.nc and self.nc.is_connected and all(s.bound for s in self.subscriptions)
                    and all(c["ok"] for c in self.readiness().values()))

    # ---- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        setup_tracing(self.name, s.data_dir, s.otlp_endpoint)
        if s.health_port:
            self.health = HealthServer(self, s.health_port)
            await self.health.start()
        creds = s.nats_credentials()
        self.nc = await connect(s.nats_url, f"{self.name}@{s.instance}", creds=creds)
        self.publisher = Publisher(self.nc, self.name)
        if creds is None:   # an open broker (development): declare what is missing ourselves
            await ensure_topology(self.nc.jetstream(), s.stream_replicas, s.max_deliver, s.ack_wait_s)
        else:               # a secured bus: the provisioner declared it; wait for it, never create it
            await self._wait_topology()
        signer = _load_audit_signer(pathlib.Path(s.data_dir), self.name)
        self.chain = AuditChain(self.name, signer)
        kv = await self.raw_kv("audit_keys")
        with contextlib.suppress(KeyWrongLastSequenceError):   # pinned already (a restart, a replica)
            await kv.create(f"{self.name}.{signer.key_id}", signer.public_bytes())
        for fn in self._startup:
            await fn()
        await self.audit("service.started", self.name, {"instance": s.instance, "pid": os.getpid()})
        for sub in self.subscriptions:
            self._tasks.append(asyncio.create_task(self._consume(sub), name=f"consume-{sub.durable}"))
        for fn in self._background:
            self._tasks.append(asyncio.create_task(self._guard(fn), name=f"bg-{fn.__name__}"))
        log.info("%s started (instance %s, %d consumers)", self.name, s.instance, len(self.subscriptions))

    async def _wait_topology(self) -> None:
        js = self.nc.jetstream()
        streams = {subjects.consumer(sub.durable).stream for sub in self.subscriptions}
        buckets = {"processed", "audit_keys", *self.mirrors}
        while True:
            missing = await missing_topology(js, sorted(streams), sorted(buckets))
            if not missing:
                return
            log.warning("%s: waiting for the provisioner to declare %s", self.name, ", ".join(missing))
            await asyncio.sleep(1.0)

    async def _guard(self, fn) -> None:
        while not self._stopping.is_set():
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: background task %s failed; restarting in 1 s", self.name, fn.__name__)
                await asyncio.sleep(1)

    async def stop(self) -> None:
        self._stopping.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fn in self._shutdown:
            try:
                await fn()
            except Exception:
                log.exception("shutdown hook failed")
        if self.nc and self.nc.is_connected:
            # best effort on the way out: the broker may be gone already
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.audit("service.stopped", self.name, {"instance": self.settings.instance}), 2)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.flush(), 2)
        if self.nc:
            await self.nc.close()
        if self.health:
            await self.health.stop()
        shutdown_tracing()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        await self._stopping.wait()
        await self.stop()

    def run(self) -> None:
        logging.basicConfig(level=self.settings.log_level, stream=sys.stderr,
                            format=f"%(asctime)s {self.name} %(levelname)s %(message)s")
        asyncio.run(self.serve())

    # ---- the consumer loop --------------------------------------------------
    async def _consume(self, sub: Subscription) -> None:
        c = subjects.consumer(sub.durable)
        js = self.nc.jetstream()
        cfg = consumer_config(c, self.settings.max_deliver, self.settings.ack_wait_s)
        psub = None
        while psub is None:
            try:
                psub = await js.pull_subscribe(c.subject, durable=c.durable, stream=c.stream, config=cfg)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - broker or stream not there yet: retried
                log.warning("%s: cannot bind consumer %s yet (%s); retrying", self.name, c.durable, e)
                await asyncio.sleep(0.5)
        sub.bound = True
        sem = asyncio.Semaphore(sub.concurrency)
        pending: set[asyncio.Task] = set()
        while not self._stopping.is_set():
            try:
                msgs = await psub.fetch(self.settings.fetch_batch, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any fetch failure is retried
                log.warning("%s: fetch on %s failed (%s); retrying", self.name, c.durable, e)
                await asyncio.sleep(0.25)
                continue
            if sub.concurrency == 1:
                for m in msgs:
                    await self._handle(sub, m)
            else:
                for m in msgs:
                    await sem.acquire()
                    t = asyncio.create_task(self._handle(sub, m))
                    pending.add(t)
                    t.add_done_callback(pending.discard)
                    t.add_done_callback(lambda _: sem.release())

    async def _handle(self, sub: Subscription, m: Msg) -> None:
        headers = dict(m.headers or {})
        deliveries = m.metadata.num_delivered if m.metadata else 1
        started = time.perf_counter()
        with tracer().start_as_current_span(
            f"{self.name}.{sub.durable}", context=extract_context(headers), kind=SpanKind.CONSUMER,
            attributes={"messaging.destination": m.subject, "messaging.consumer": sub.durable,
                        "x0.deliveries": deliveries}) as span:
            try:
                msg = decode(sub.msg_type, m.data)
            except InvalidMessage as e:
                await self._dead_letter(sub, m, str(e), deliveries)
                HANDLED.labels(self.name, sub.durable, "invalid").inc()
                span.set_status(Status(StatusCode.ERROR, str(e)))
                return
            meta = getattr(msg, "meta", None)
            event_id = meta.event_id if meta is not None else headers.get("Nats-Msg-Id", "")
            cycle_id = meta.cycle_id if meta is not None else ""
            if cycle_id:
                span.set_attribute(CYCLE_ATTR, cycle_id)
            pkey = f"{sub.durable}.{event_id}"
            processed = await self.kv("processed")
            if sub.idempotent_skip and event_id:
                try:
                    await processed.get(pkey)
                    await m.ack()  # already handled: a redelivery
                    HANDLED.labels(self.name, sub.durable, "duplicate").inc()
                    span.set_attribute("x0.duplicate", True)
                    return
                except KeyNotFound:
                    pass
            ctx = Context(self, m.subject, event_id, cycle_id, headers, deliveries)
            try:
                await sub.handler(msg, ctx)
            except Reject as e:
                await self._dead_letter(sub, m, f"rejected by {self.name}: {e}", deliveries)
                HANDLED.labels(self.name, sub.durable, "rejected").inc()
                span.set_status(Status(StatusCode.ERROR, str(e)))
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a failing handler is retried, then dead-lettered
                span.record_exception(e)
                span.set_status(Status(StatusCode.ERROR, str(e)))
                if deliveries >= self.settings.max_deliver:
                    await self._dead_letter(sub, m, f"handler failed {deliveries} times: {type(e).__name__}: {e}",
                                            deliveries)
                    HANDLED.labels(self.name, sub.durable, "dead").inc()
                else:
                    log.warning("%s: handler %s failed (delivery %d/%d): %s", self.name, sub.durable,
                                deliveries, self.settings.max_deliver, e)
                    await m.nak(delay=min(0.1 * 2 ** deliveries, 5.0))
                    HANDLED.labels(self.name, sub.durable, "retry").inc()
                return
            if sub.idempotent_skip and event_id:
                await processed.put(pkey, b"1")
            await m.ack()
            HANDLED.labels(self.name, sub.durable, "ok").inc()
            LATENCY.labels(self.name, sub.durable).observe(time.perf_counter() - started)

    async def _dead_letter(self, sub: Subscription, m: Msg, reason: str, deliveries: int) -> None:
        log.error("%s: dead-lettering message on %s: %s", self.name, m.subject, reason)
        dl = events_pb2.DeadLetter(
            meta=new_meta(self.name),
            original_subject=m.subject,
            consumer=sub.durable,
            reason=reason,
            data=m.data,
            deliveries=deliveries,
            stream_sequence=m.metadata.sequence.stream if m.metadata else 0,
        )
        for k, v in (m.headers or {}).items():
            dl.headers[k] = v
        seq = dl.stream_sequence
        await self.publisher.publish(subjects.dead_letter(sub.durable), dl,
                                     event_id=derive_id("dlq", sub.durable, str(seq), m.subject))
        await self.audit("message.dead_lettered", m.subject,
                         {"consumer": sub.durable, "reason": reason, "stream_seq": seq})
        await m.term()


def run_service(name: str, settings_cls: type[CommonSettings], build: Callable[[Any], Service]) -> None:
    """A service's main(): settings -> build -> run. A bad setting (found by build, or at start by a
    startup hook raising ConfigError) stops it with one line naming the setting and exit code 2 (never a
    traceback)."""
    try:
        settings = load_settings(settings_cls)
        app = build(settings)
        app.run()
    except ConfigError as e:
        print(f"{name}: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
