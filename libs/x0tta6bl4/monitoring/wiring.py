"""The monitor service's adapters around its stage (:mod:`x0tta6bl4.stages.monitor`): Prometheus gauges,
the kernel collector feed, and the core NATS request/reply answers (``monitor.rpc.Info``, ``.Cycle``).

No decisions here: what to publish and what to answer is the stage's.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from x0tta6bl4.bus import subjects
from x0tta6bl4.config import ConfigError
from x0tta6bl4.mapek.health import classify_node, node_metrics
from x0tta6bl4.monitoring import prometheus as prom
from x0tta6bl4.monitoring.feed import KernelFeed, parse_host_map
from x0tta6bl4.monitoring.thresholds import Health, Thresholds, evaluate_node
from x0tta6bl4.stages import monitor as stage
from x0tta6bl4.v1 import common_pb2, events_pb2

if TYPE_CHECKING:
    from x0tta6bl4.bus.app import Service

log = logging.getLogger("x0tta6bl4.monitor")

HEALTH_LEVEL: dict[int, Health] = {common_pb2.HEALTH_HEALTHY: Health.HEALTHY, common_pb2.HEALTH_WARNING: Health.WARNING,
                common_pb2.HEALTH_CRITICAL: Health.CRITICAL}


def default_registry() -> Any:
    """prometheus_client's default registry (what /metrics serves), once per process (None after: a
    private registry, e.g. for a second service built in a test process)."""
    from prometheus_client import REGISTRY
    return None if "x0_mesh_health" in getattr(REGISTRY, "_names_to_collectors", {}) else REGISTRY


@dataclass
class PromGauges:
    """The stage's :class:`~x0tta6bl4.stages.monitor.Gauges` on Prometheus metrics (values: -1..2).

    A report only replaces the node's newest telemetry here (a dict write); :meth:`flush` sets the per-node
    gauges from them when /metrics is read (:class:`FlushOnScrape`), not once per message: the gauges cost
    about 250 us of CPU per node (measured under load), paid once per scrape for the nodes reported since."""

    metrics: prom.MonitorMetrics
    thresholds: Thresholds
    dirty: dict[str, events_pb2.NodeTelemetry] = field(default_factory=dict)

    def node(self, t: events_pb2.NodeTelemetry) -> None:
        self.dirty[t.node_id] = t

    def flush(self) -> int:
        """Set the gauges of the nodes reported since the last flush; returns how many."""
        dirty, self.dirty = self.dirty, {}
        for node, t in list(dirty.items()):     # /metrics may call this from its own thread
            with contextlib.suppress(ValueError):  # NaN cannot arrive (the codec rejects it); never fail a gauge
                m = node_metrics(t)
                prom.update(self.metrics, node, m, evaluate_node(node, m, self.thresholds))
            self.node_health(node, classify_node(t, self.thresholds)[0])   # with kernel and security signals
        return len(dirty)

    def node_health(self, node: str, health: int) -> None:
        self.metrics.node_health.labels(node).set(int(HEALTH_LEVEL.get(health, Health.UNKNOWN)))

    def mesh_health(self, health: int) -> None:
        self.metrics.mesh_health.set(int(HEALTH_LEVEL.get(health, Health.UNKNOWN)))


def attach_kernel_feed(app: Service, settings: Any, deps: stage.MonitorDeps, metrics: prom.MonitorMetrics
                       ) -> KernelFeed:
    """The kernel collector of the mesh host processes: its signals go into the nodes' telemetry
    (``deps.kernel_for``), its security events to :func:`stage.on_security`, its snapshots to /metrics.
    ConfigError on a bad ``monitor_hosts``."""
    try:
        hosts = parse_host_map(settings.monitor_hosts)
    except ValueError as e:
        raise ConfigError(f"X0TTA6BL4_MONITOR_HOSTS={settings.monitor_hosts!r}: {e}") from None
    feed = KernelFeed(settings.nats_url, prefer=settings.monitor_collector, interval_s=settings.collect_interval_s,
                      configured=hosts, discover=settings.discover_hosts, security_hold_s=settings.security_hold_s,
                      extra_watch_prefixes=tuple(p.strip() for p in settings.watch_paths.split(",") if p.strip()),
                      on_security=lambda sig: stage.on_security(sig, app.context(), deps),
                      on_snapshot=lambda snap, node_of_pid: prom.update_snapshot(metrics, snap, node_of_pid))
    deps.kernel_for, deps.collector_info = feed.kernel_for, feed.as_dict

    async def kernel_collector() -> None:
        if feed.state == "starting":
            await feed.start()
        async with asyncio.TaskGroup() as tg:  # one failing loop restarts both (no duplicates)
            tg.create_task(feed.run_collect())
            tg.create_task(feed.run_events())

    app.background(kernel_collector)
    app.on_shutdown(feed.close)
    return feed


def attach_rpc(app: Service, deps: stage.MonitorDeps) -> None:
    """Answer ``monitor.rpc.Info`` (every replica) and ``monitor.rpc.Cycle`` (one replica: queue group)
    over core NATS request/reply, with the stage's answers as JSON."""

    async def subscribe() -> None:
        nc = app.nc
        assert nc is not None

        async def answer_info(msg: Any) -> None:
            await nc.publish(msg.reply, json.dumps(stage.info(deps)).encode())

        async def answer_cycle(msg: Any) -> None:   # request: empty, or JSON {"trigger": node, "reasons": [...]}
            try:
                req = json.loads(msg.data) if msg.data else {}
                trigger = str(req.get("trigger", ""))
                reasons = [str(r)[:200] for r in req.get("reasons", [])][:8]
            except (ValueError, AttributeError, TypeError):
                body: dict[str, Any] = {"error": 'expected an empty request or JSON {"trigger": NODE, "reasons": '
                                                 '[TEXT, ...]}'}
            else:
                body = await stage.request_cycle(app.context(), deps, trigger, reasons)
            await nc.publish(msg.reply, json.dumps(body).encode())

        await nc.subscribe(subjects.MONITOR_INFO, cb=answer_info)
        await nc.subscribe(subjects.MONITOR_CYCLE, queue="monitor", cb=answer_cycle)

    app.on_startup(subscribe)


def attach_report_writer(app: Service, deps: stage.MonitorDeps) -> None:
    """Nodes' reports go into the ``telemetry`` bucket as plain publishes on its subject (JetStream stores
    them; no reply awaited per message - the measured cost of an acknowledged put per report)."""
    prefix = f"$KV.{stage.TELEMETRY_BUCKET}."

    async def write(key: str, data: bytes) -> None:
        await app.nc.publish(prefix + key, data)

    async def connected() -> None:       # on the broker only (the in-memory bus keeps ordinary puts)
        deps.write_report = write
    app.on_startup(connected)


class FlushOnScrape:
    """A Prometheus collector with no metrics of its own: registered before the monitor's gauges, it sets
    the per-node gauges (:meth:`PromGauges.flush`) just before a scrape reads them."""

    def __init__(self) -> None:
        self.gauges: PromGauges | None = None

    def collect(self) -> list[Any]:
        if self.gauges is not None:
            self.gauges.flush()
        return []


LAG_EVERY_S = 0.25


def attach_lag(app: Service, deps: stage.MonitorDeps, max_lag_s: float, durable: str = "monitor-telemetry") -> None:
    """How far behind the telemetry consumer is (:class:`x0tta6bl4.mapek.liveness.Lag`): every
    ``LAG_EVERY_S`` the consumer's pending messages (``durable``'s consumer info, ``monitor-telemetry`` or the
    replica's partition's ``monitor-telemetry-p<i>``: not delivered yet plus delivered and not acknowledged)
    go into the stage's horizon (no node's silence is judged before the first estimate: a restarted replica's
    mirror replays reports older than its consumer's backlog); ``x0_monitor_lag_seconds`` and
    ``x0_monitor_pending`` on /metrics; /ready is false (``telemetry_lag``) while the lag is over
    ``max_lag_s``."""
    from prometheus_client import Gauge

    registry = default_registry_for("x0_monitor_lag_seconds")
    lag_g = Gauge("x0_monitor_lag_seconds", "how far behind its telemetry the monitor has read", registry=registry)
    pending_g = Gauge("x0_monitor_pending", "telemetry messages waiting for the monitor's consumer",
                      registry=registry)
    c = subjects.consumer(durable)

    async def on_broker() -> None:     # the in-memory bus has no lag to estimate: it judges by the clock
        deps.judge_after_first_lag = True
    app.on_startup(on_broker)

    async def pending() -> int | None:
        try:
            info = await app.nc.jetstream().consumer_info(c.stream, c.durable, timeout=1.0)
        except Exception:  # noqa: BLE001 - unknown: judged by the handled reports alone
            return None
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def follow() -> None:
        while True:
            await asyncio.sleep(LAG_EVERY_S)
            n = await pending()
            deps.lag.estimate(deps.clock_ns(), n)
            lag_g.set(deps.lag.lag_s)
            pending_g.set(-1 if n is None else n)

    def ready() -> tuple[bool, dict[str, Any]]:
        details: dict[str, Any] = {"lag_s": round(deps.lag.lag_s, 3), "pending": deps.lag.pending,
                                   "max_lag_s": max_lag_s}
        if deps.lag.lag_s > max_lag_s:
            details["reason"] = (f"the monitor is {deps.lag.lag_s:.1f} s behind its telemetry "
                                 f"(at most {max_lag_s:g} s)")
            return False, details
        return True, details

    app.background(follow)
    app.readiness_check("telemetry_lag", ready)


def default_registry_for(name: str) -> Any:
    """prometheus_client's default registry unless ``name`` is registered there already (a second monitor
    built in one test process): None then (a metric nobody scrapes)."""
    from prometheus_client import REGISTRY, CollectorRegistry
    taken = name in getattr(REGISTRY, "_names_to_collectors", {})
    return CollectorRegistry() if taken else REGISTRY


PARTITION_CHECK_S = 2.0
_PARTITIONS = re.compile(r"partition\((\d+),")


def _stored(transform: tuple[str, str] | None) -> str:
    if transform is None:
        return "as published (one partition)"
    m = _PARTITIONS.search(transform[1])
    return f"in {m.group(1)} partitions" if m else f"as {transform[1]}"


def partition_mismatch(got: tuple[str, str] | None, partitions: int) -> str:
    """"" when the MESH stream's subject transform ``got`` is the one for ``partitions``, else why not."""
    expected = subjects.telemetry_transform(partitions)
    if got == expected:
        return ""
    return (f"the MESH stream stores telemetry {_stored(got)}, this monitor expects it {_stored(expected)} "
            f"(X0TTA6BL4_MONITOR_PARTITIONS={partitions}): provision with the same setting as the monitors")


def attach_partition_check(app: Service, deps: stage.MonitorDeps) -> None:
    """The MESH stream must store telemetry for this replica's partition count (X0TTA6BL4_MONITOR_PARTITIONS,
    the provisioner's and the monitor's): otherwise its consumer gets none of its nodes' reports. Checked every
    ``PARTITION_CHECK_S``; while they differ /ready is false (``telemetry_partitions``, with the reason), the
    error is logged once and the replica judges no node's silence (``deps.judging``); once they match again a
    node's silence counts from then (``deps.judged_since_ns``). A check that cannot run (the broker away)
    changes nothing."""
    state = {"mismatch": ""}

    async def check() -> None:
        while True:
            try:
                info = await asyncio.wait_for(app.nc.jetstream().stream_info(subjects.STREAM_MESH), 2.0)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - unknown now: the last verdict stands
                info = None
            if info is not None:
                tr = info.config.subject_transform
                why = partition_mismatch((tr.src, tr.dest) if tr is not None and tr.src else None, deps.partitions)
                if why and why != state["mismatch"]:
                    log.error("monitor: %s; no node's silence is judged meanwhile", why)
                elif not why and state["mismatch"]:
                    log.info("monitor: the MESH stream's telemetry partitions match again")
                    deps.judged_since_ns = deps.clock_ns()     # its nodes' reports are only starting to come
                state["mismatch"], deps.judging = why, not why
            await asyncio.sleep(PARTITION_CHECK_S)

    def ready() -> tuple[bool, dict[str, Any]]:
        details: dict[str, Any] = {"partitions": deps.partitions, "partition": deps.partition}
        if state["mismatch"]:
            return False, {**details, "reason": state["mismatch"]}
        return True, details

    app.background(check)
    app.readiness_check("telemetry_partitions", ready)
