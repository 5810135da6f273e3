"""The monitor service's adapters around its stage (:mod:`x0tta6bl4.stages.monitor`): Prometheus gauges,
the kernel collector feed, and the core NATS request/reply answers (``monitor.rpc.Info``, ``.Cycle``).

No decisions here: what to publish and what to answer is the stage's.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from x0tta6bl4.bus import subjects
from x0tta6bl4.config import ConfigError
from x0tta6bl4.mapek.health import node_metrics
from x0tta6bl4.monitoring import prometheus as prom
from x0tta6bl4.monitoring.feed import KernelFeed, parse_host_map
from x0tta6bl4.monitoring.thresholds import Health, Thresholds, evaluate_node
from x0tta6bl4.stages import monitor as stage
from x0tta6bl4.v1 import common_pb2, events_pb2

if TYPE_CHECKING:
    from x0tta6bl4.bus.app import Service

HEALTH_LEVEL: dict[int, Health] = {common_pb2.HEALTH_HEALTHY: Health.HEALTHY, common_pb2.HEALTH_WARNING: Health.WARNING,
                common_pb2.HEALTH_CRITICAL: Health.CRITICAL}


def default_registry() -> Any:
    """prometheus_client's default registry (what /metrics serves), once per process (None after: a
    private registry, e.g. for a second service built in a test process)."""
    from prometheus_client import REGISTRY
    return None if "x0_mesh_health" in getattr(REGISTRY, "_names_to_collectors", {}) else REGISTRY


@dataclass
class PromGauges:
    """The stage's :class:`~x0tta6bl4.stages.monitor.Gauges` on Prometheus metrics (values: -1..2)."""

    metrics: prom.MonitorMetrics
    thresholds: Thresholds

    def node(self, t: events_pb2.NodeTelemetry, health: int) -> None:
        with contextlib.suppress(ValueError):  # NaN cannot arrive (the codec rejects it); never fail over a gauge
            m = node_metrics(t)
            prom.update(self.metrics, t.node_id, m, evaluate_node(t.node_id, m, self.thresholds))
        self.node_health(t.node_id, health)

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
