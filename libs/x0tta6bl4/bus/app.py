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
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import nats
from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from opentelemetry import context as otel_context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram

from x0tta6bl4.audit.chain import AuditChain, ServiceAuditSigner
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import InvalidMessage, decode, new_meta
from x0tta6bl4.bus.connection import connect, consumer_config, ensure_topology, install_event_loop, missing_topology
from x0tta6bl4.bus.health import HealthServer
from x0tta6bl4.bus.kv import NatsKV
from x0tta6bl4.bus.ports import KeyNotFound, NoResponders, Reject, Reply
from x0tta6bl4.bus.publisher import Publisher, derive_id
from x0tta6bl4.config import CommonSettings, ConfigError, load_settings
from x0tta6bl4.telemetry.tracing import (
    CYCLE_ATTR,
    current_trace_id,
    extract_context,
    setup_tracing,
    shutdown_tracing,
    tracer,
)
from x0tta6bl4.trust import ROLE_AUDIT, TrustError
from x0tta6bl4.v1 import events_pb2

log = logging.getLogger("x0tta6bl4.service")
M = TypeVar("M", bound=Message)
ReadinessCheck = Callable[[], tuple[bool, dict[str, Any]]]
"""A /ready condition: () -> (ok, details shown in /ready's JSON)."""
FETCH_FAILURES_NOT_READY = 3     # consecutive failed fetches: the consumer is not doing its job; re-bind it
TOPOLOGY_CHECK_S = 2.0           # how often a service checks that the streams and buckets it needs exist

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
        self.service.needs_subject(subject)
        await self.service.publisher.publish(subject, msg, cycle_id=self.cycle_id if cycle_id is None else cycle_id,
                                             event_id=eid)

    async def audit(self, event_type: str, subject_id: str = "", details: dict[str, Any] | None = None,
                    *, cycle_id: str | None = None) -> None:
        await self.service.audit(event_type, subject_id, details,
                                 cycle_id=self.cycle_id if cycle_id is None else cycle_id)

    async def kv(self, bucket: str) -> NatsKV:
        return await self.service.kv(bucket)

    async def request(self, subject: str, data: bytes, timeout: float) -> Reply:
        try:
            reply = await self.service.nc.request(subject, data, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise NoResponders(f"no responders on {subject}") from None
        return Reply(reply.data, dict(reply.headers or {}))


@dataclass
class Subscription(Generic[M]):
    durable: str
    msg_type: type[M]
    handler: Callable[[M, Context], Awaitable[None]]
    concurrency: int = 1
    idempotent_skip: bool = True
    traced: bool = True        # a span per message (False: only the sender's trace context, for publishes)
    bound: bool = False
    failures: int = 0          # consecutive failed fetches (or bind attempts)
    last_error: str = ""

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready while bound and fetching; not after FETCH_FAILURES_NOT_READY failures in a row."""
        if not self.bound:
            return False, {"reason": f"consumer {self.durable} not bound"
                                     + (f": {self.last_error}" if self.last_error else "")}
        if self.failures >= FETCH_FAILURES_NOT_READY:
            return False, {"reason": f"{self.failures} fetches on consumer {self.durable} failed in a row: "
                                     f"{self.last_error}"}
        return True, {}


@contextlib.contextmanager
def _sender_context(headers: dict[str, str]) -> Iterator[Span]:
    """No span of our own, only the sender's trace context (so what the handler publishes joins its trace)."""
    token = otel_context.attach(extract_context(headers))
    try:
        yield INVALID_SPAN
    finally:
        otel_context.detach(token)


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@functools.lru_cache(maxsize=4096)
def _stream_of(subject: str) -> str | None:
    """The stream storing ``subject`` (None: core NATS)."""
    for st in subjects.STREAMS:
        for pattern in st.subjects:
            p, t = pattern.split("."), subject.split(".")
            if (p[-1] == ">" and len(t) >= len(p) and all(a in ("*", b) for a, b in zip(p[:-1], t, strict=False))) \
                    or (len(p) == len(t) and all(a in ("*", b) for a, b in zip(p, t, strict=True))):
                return st.name
    return None


class Service:
    def __init__(self, name: str, settings: CommonSettings):
        self.name = name
        self.settings = settings
        self.subscriptions: list[Subscription] = []
        self._startup: list[Callable[[], Awaitable[None]]] = []
        self._shutdown: list[Callable[[], Awaitable[None]]] = []
        self._background: list[Callable[[], Awaitable[None]]] = []
        self._reconnect_events: set[asyncio.Event] = set()   # set on every reconnection (mirrors re-watch)
        self._tasks: list[asyncio.Task] = []
        self._kv: dict[str, NatsKV] = {}
        self.mirrors: dict[str, list[tuple[dict, Callable[[bytes], Any], Callable[[str, Any], None] | None]]] = {}
        self._audit_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self.readiness_checks: dict[str, ReadinessCheck] = {}   # extra /ready conditions (readiness_check)
        self.needed_streams: set[str] = {subjects.STREAM_AUDIT, subjects.STREAM_DLQ}   # grows with what it uses
        self.needed_buckets: set[str] = set()
        self._missing: list[str] = []            # what the last topology check did not find
        self._secured = False                    # connected with credentials: the provisioner declares topology
        # set by start(); a service is used only between start() and stop()
        self.nc: NATS = None  # type: ignore[assignment]
        self.publisher: Publisher = None  # type: ignore[assignment]
        self.chain: AuditChain = None  # type: ignore[assignment]
        self.health: HealthServer | None = None
        self.started_at = time.time()

    # ---- registration -------------------------------------------------------
    def subscriber(self, durable: str, msg_type: type[M], concurrency: int = 1, idempotent_skip: bool = True,
                   traced: bool = True):
        subjects.consumer(durable)  # fail fast on a name not in the table

        def deco(fn: Callable[[M, Context], Awaitable[None]]):
            self.subscriptions.append(Subscription(durable, msg_type, fn, concurrency, idempotent_skip, traced))
            return fn
        return deco

    def subscribe(self, durable: str, msg_type: type[M], handler: Callable[[M, Context], Awaitable[None]],
                  concurrency: int = 1, idempotent_skip: bool = True, traced: bool = True) -> None:
        """Register ``handler`` (usually a stage function with its dependencies bound) on a durable consumer.
        ``traced=False``: no span per message (high-rate state such as telemetry); what the handler publishes
        still continues the sender's trace."""
        self.subscriber(durable, msg_type, concurrency, idempotent_skip, traced)(handler)

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
        the bucket stays the source of truth, so replicas see the same data).

        The watcher's ordered consumer lives on one server: a broker restart (or the loss of the server in a
        cluster) drops it, and nats-py would notice only after two missed heartbeats (10 s) - ten seconds in
        which the planner judged harm, and the executor verified repairs, on a frozen view. So every
        reconnection starts a new watch at once: it replays each key's latest value, and keys deleted
        meanwhile leave the view."""
        view: dict[str, Any] = {}
        self.mirrors.setdefault(bucket, []).append((view, decode, on_change))

        async def watch() -> None:
            while not self._stopping.is_set():
                reconnected = asyncio.Event()
                self._reconnect_events.add(reconnected)
                try:
                    watcher = await (await self.raw_kv(bucket)).watchall()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - the broker is away or JetStream is not ready yet
                    self._reconnect_events.discard(reconnected)
                    log.warning("%s: cannot watch bucket %s (%s); trying again in 1 s", self.name, bucket,
                                _describe(e))
                    await asyncio.sleep(1.0)
                    continue
                try:
                    await _follow_bucket(watcher, view, decode, on_change, reconnected)
                finally:
                    self._reconnect_events.discard(reconnected)
                    with contextlib.suppress(Exception):
                        await watcher.stop()
                log.info("%s: reconnected: watching bucket %s afresh", self.name, bucket)
        watch.__name__ = f"mirror_{bucket}"
        self._background.append(watch)
        return view

    async def _reconnected(self) -> None:
        for ev in list(self._reconnect_events):
            ev.set()

    # ---- helpers for handlers ----------------------------------------------
    async def kv(self, bucket: str) -> NatsKV:
        """A bucket behind the key-value port (:mod:`x0tta6bl4.bus.ports`)."""
        if bucket not in self._kv:
            self.needed_buckets.add(bucket)
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
        self.needs_subject(subject)
        await self.publisher.publish(subject, msg, cycle_id=cycle_id, event_id=event_id)

    def needs_subject(self, subject: str) -> None:
        """This service publishes on ``subject``: the stream storing it must exist for it to be ready."""
        stream = _stream_of(subject)
        if stream is not None:
            self.needed_streams.add(stream)

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
    def audit_signer(self) -> ServiceAuditSigner:
        """The key this service signs its audit chain with: its signing key (X0TTA6BL4_SIGNING_KEY_FILE),
        which the trust bundle (X0TTA6BL4_TRUST_FILE, when set) must list for this service with the audit
        role - otherwise nobody could verify the trail, so the service does not start (ConfigError)."""
        s = self.settings
        signer = s.signer(self.name)
        if s.trust_file is not None:
            bundle = s.trust_bundle()
            try:
                key = bundle.find(signer.key_id)
            except TrustError:
                raise ConfigError(f"X0TTA6BL4_SIGNING_KEY_FILE: key {signer.key_id} of {self.name} is not in the "
                                  f"trust bundle {str(s.trust_file)!r}: its audit trail would not verify") from None
            if key.owner != self.name or ROLE_AUDIT not in key.roles:
                raise ConfigError(f"X0TTA6BL4_SIGNING_KEY_FILE: the trust bundle lists key {signer.key_id} for "
                                  f"{key.owner} with roles {list(key.roles)}, not for {self.name} with role "
                                  f"{ROLE_AUDIT!r}")
        return ServiceAuditSigner(signer)

    async def start(self) -> None:
        s = self.settings
        audit_signer = self.audit_signer()     # before anything starts: no key, no service
        setup_tracing(self.name, s.data_dir, s.otlp_endpoint)
        if s.health_port:
            self.health = HealthServer(self, s.health_port)
            await self.health.start()
        creds = s.nats_credentials()
        self._secured = creds is not None
        self.nc = await connect(s.nats_url, f"{self.name}@{s.instance}", creds=creds,
                                on_reconnected=self._reconnected)
        self.publisher = Publisher(self.nc, self.name)
        if creds is None:   # an open broker (development): declare what is missing ourselves
            await ensure_topology(self.nc.jetstream(), s.stream_replicas, s.max_deliver, s.ack_wait_s,
                                  s.monitor_partitions)
        else:               # a secured bus: the provisioner declared it; wait for it, never create it
            await self._wait_topology()
        self.chain = AuditChain(self.name, audit_signer)
        self._add_builtin_checks()
        for fn in self._startup:
            await fn()
        await self.audit("service.started", self.name, {"instance": s.instance, "pid": os.getpid()})
        for sub in self.subscriptions:
            self._tasks.append(asyncio.create_task(self._consume(sub), name=f"consume-{sub.durable}"))
        for fn in self._background:
            self._tasks.append(asyncio.create_task(self._guard(fn), name=f"bg-{fn.__name__}"))
        self._tasks.append(asyncio.create_task(self._watch_topology(), name="topology-check"))
        log.info("%s started (instance %s, %d consumers)", self.name, s.instance, len(self.subscriptions))

    def needed_topology(self) -> tuple[list[str], list[str]]:
        """The streams and buckets this service cannot do its job without: those of its consumers, AUDIT and
        DLQ, those it published to or opened so far, its mirrors, ``processed`` for its idempotent consumers."""
        streams = self.needed_streams | {subjects.consumer(sub.durable).stream for sub in self.subscriptions}
        buckets = self.needed_buckets | set(self.mirrors)
        if any(sub.idempotent_skip for sub in self.subscriptions):
            buckets.add("processed")
        return sorted(streams), sorted(buckets)

    async def _wait_topology(self) -> None:
        js = self.nc.jetstream()
        while True:
            try:
                missing = await missing_topology(js, *self.needed_topology())
            except Exception as e:  # noqa: BLE001 - no answer (a permission it lacks, a busy broker): retried
                missing = [f"(cannot check: {_describe(e)})"]
            if not missing:
                return
            log.warning("%s: waiting for the provisioner to declare %s", self.name, ", ".join(missing))
            await asyncio.sleep(1.0)

    def _add_builtin_checks(self) -> None:
        """/ready: connected, every consumer bound and fetching, every stream and bucket it needs there."""
        def bus() -> tuple[bool, dict[str, Any]]:
            ok = bool(self.nc and self.nc.is_connected)
            return ok, {} if ok else {"reason": "not connected to NATS"}

        def topology() -> tuple[bool, dict[str, Any]]:
            missing = list(self._missing)
            return not missing, {"reason": "missing: " + ", ".join(missing)} if missing else {}

        self.readiness_check("nats", bus)
        self.readiness_check("topology", topology)
        for sub in self.subscriptions:
            self.readiness_check(f"consumer:{sub.durable}", sub.readiness)

    async def check_topology(self) -> list[str]:
        """Check now that what :meth:`needed_topology` names exists; /ready is false while anything is missing.
        Returns what is missing ("stream MAPEK", "bucket processed")."""
        streams, buckets = self.needed_topology()
        missing = await missing_topology(self.nc.jetstream(), streams, buckets)
        self._missing = [m if m.startswith("bucket ") else f"stream {m}" for m in missing]
        return self._missing

    async def _watch_topology(self) -> None:
        was: list[str] = []
        while not self._stopping.is_set():
            await asyncio.sleep(TOPOLOGY_CHECK_S)
            if not self.nc.is_connected:
                continue
            try:
                missing = await self.check_topology()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a check that cannot run now (broker busy): next round
                log.debug("%s: topology check failed: %s", self.name, e)
                continue
            if missing != was:
                if missing:
                    log.error("%s: not ready, missing %s", self.name, ", ".join(missing))
                else:
                    log.info("%s: every stream and bucket it needs is back", self.name)
                was = missing

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
        """Bind the durable consumer, fetch and handle; re-bind when fetching keeps failing (its stream or
        consumer was deleted and maybe declared again). /ready reflects each state (Subscription.readiness)."""
        c = subjects.consumer(sub.durable)
        cfg = consumer_config(c, self.settings.max_deliver, self.settings.ack_wait_s)
        while not self._stopping.is_set():
            psub = await self._bind(sub, c, cfg)
            await self._fetch_loop(sub, c, psub)
            sub.bound = False
            with contextlib.suppress(Exception):   # the subscription of a consumer that may be gone
                await psub.unsubscribe()

    async def _bind(self, sub: Subscription, c: subjects.Consumer, cfg):
        """Bind to the durable consumer; on an open broker create it if missing, on a secured bus never (the
        provisioner declares consumers; trying would be a permission violation): wait until it is there."""
        while True:
            js = self.nc.jetstream()
            try:
                if self._secured:
                    await js.consumer_info(c.stream, c.durable)      # NotFoundError: not declared (again) yet
                    psub = await js.pull_subscribe_bind(durable=c.durable, stream=c.stream, name=c.durable)
                else:
                    psub = await js.pull_subscribe(c.subject, durable=c.durable, stream=c.stream, config=cfg)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - broker, stream or consumer not there (yet): retried
                sub.last_error = _describe(e)
                log.warning("%s: cannot bind consumer %s (%s); retrying", self.name, c.durable, sub.last_error)
                await asyncio.sleep(0.5)
                continue
            sub.bound, sub.failures, sub.last_error = True, 0, ""
            return psub

    async def _fetch_loop(self, sub: Subscription, c: subjects.Consumer, psub) -> None:
        sem = asyncio.Semaphore(sub.concurrency)
        pending: set[asyncio.Task] = set()
        while not self._stopping.is_set():
            try:
                msgs = await psub.fetch(self.settings.fetch_batch, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - counted; the consumer is re-bound after a few in a row
                sub.failures += 1
                sub.last_error = _describe(e)
                log.warning("%s: fetch on %s failed (%s, %d in a row)", self.name, c.durable, sub.last_error,
                            sub.failures)
                if sub.failures >= FETCH_FAILURES_NOT_READY:
                    return
                await asyncio.sleep(0.25)
                continue
            sub.failures = 0
            if sub.concurrency == 1:
                for m in msgs:
                    await self._handle_safely(sub, m)
            else:
                for m in msgs:
                    await sem.acquire()
                    t = asyncio.create_task(self._handle_safely(sub, m))
                    pending.add(t)
                    t.add_done_callback(pending.discard)
                    t.add_done_callback(lambda _: sem.release())

    async def _handle_safely(self, sub: Subscription, m: Msg) -> None:
        """A failure around the handler (the ``processed`` bucket, a dead letter, the ack) leaves the message
        unacknowledged, so it is redelivered; it never ends the consumer loop."""
        try:
            await self._handle(sub, m)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - redelivered after ack_wait; the loop goes on
            log.error("%s: handling a message on %s failed: %s", self.name, m.subject, _describe(e))

    async def _handle(self, sub: Subscription, m: Msg) -> None:
        headers = dict(m.headers or {})
        deliveries = m.metadata.num_delivered if m.metadata else 1
        started = time.perf_counter()
        scope = tracer().start_as_current_span(
            f"{self.name}.{sub.durable}", context=extract_context(headers), kind=SpanKind.CONSUMER,
            attributes={"messaging.destination": m.subject, "messaging.consumer": sub.durable,
                        "x0.deliveries": deliveries}) if sub.traced else _sender_context(headers)
        with scope as span:
            try:
                msg = decode(sub.msg_type, m.data, headers.get(subjects.HEADER_TYPE))
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


async def _follow_bucket(watcher: Any, view: dict[str, Any], decode: Callable[[bytes], Any],
                         on_change: Callable[[str, Any], None] | None, reconnected: asyncio.Event) -> None:
    """Apply a bucket watcher's entries to ``view`` until ``reconnected`` is set. The watch starts with every
    key's latest value, then an end marker (None): keys of the view not among them were deleted meanwhile."""
    initial: set[str] | None = set()
    waiter = asyncio.ensure_future(reconnected.wait())
    try:
        while True:
            nxt = asyncio.ensure_future(watcher.updates(timeout=None))
            done, _ = await asyncio.wait({nxt, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                return
            entry = nxt.result()
            if entry is None or not hasattr(entry, "key"):    # the end of the initial values
                if initial is not None:
                    for key in [k for k in view if k not in initial]:
                        view.pop(key, None)
                        if on_change is not None:
                            on_change(key, None)
                    initial = None
                continue
            if initial is not None:
                initial.add(entry.key)
            if entry.operation is None and entry.value is not None:
                value = decode(entry.value)
                view[entry.key] = value
            else:
                value = None
                view.pop(entry.key, None)
            if on_change is not None:
                on_change(entry.key, value)
    finally:
        waiter.cancel()


def run_service(name: str, settings_cls: type[CommonSettings], build: Callable[[Any], Service]) -> None:
    """A service's main(): settings -> build -> run. A bad setting (found by build, or at start by a
    startup hook raising ConfigError) stops it with one line naming the setting and exit code 2 (never a
    traceback). Its event loop: uvloop when installed (X0TTA6BL4_EVENT_LOOP=asyncio for the standard one)."""
    try:
        install_event_loop()
        settings = load_settings(settings_cls)
        app = build(settings)
        app.run()
    except ConfigError as e:
        print(f"{name}: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
