"""Monitor: merge node telemetry with kernel telemetry (eBPF, else /proc + psutil), apply the
threshold table, publish health changes per node and for the mesh, start a MAPE-K cycle on a change.

Kernel signals of the mesh host processes go into ``NodeTelemetry.kernel`` of their nodes; security
events of those processes become audit events and health reasons at once. Metrics are served in
Prometheus text format on the health port (/metrics); ``meshctl monitor info`` asks ``monitor.rpc.Info``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import time
import uuid
from typing import Literal

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import Field

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import Context, Service, run_service
from x0tta6bl4.config import CommonSettings, ConfigError
from x0tta6bl4.mapek import health as health_table
from x0tta6bl4.mapek import monitor as monitoring
from x0tta6bl4.mapek.state import MeshView
from x0tta6bl4.monitoring import prometheus as prom
from x0tta6bl4.monitoring.feed import (
    INFO_SUBJECT,
    KernelFeed,
    SecuritySignal,
    load_thresholds,
    parse_host_map,
)
from x0tta6bl4.monitoring.thresholds import (
    Health,
    ThresholdConfigError,
    Thresholds,
    evaluate_node,
)
from x0tta6bl4.telemetry.tracing import tracer
from x0tta6bl4.v1 import common_pb2, events_pb2, mesh_pb2


class MonitorSettings(CommonSettings):
    stale_after_s: float = Field(2.0, gt=0, le=3600, description="no telemetry for this long -> unreachable")
    window_s: float = Field(0.0, ge=0, le=3600, description="periodic telemetry windows (0 = only on change)")
    monitor_collector: Literal["auto", "ebpf", "proc", "off"] = Field(
        "auto", description="kernel telemetry: eBPF when possible (auto), forced, /proc + psutil, or none")
    collect_interval_s: float = Field(1.0, ge=0.05, le=60, description="kernel collector interval")
    monitor_hosts: str = Field("", description="mesh host processes to monitor: PID=node,node;PID=node")
    discover_hosts: bool = Field(True, description="find local mesh host processes of this broker")
    security_hold_s: float = Field(30.0, gt=0, le=86400,
                                   description="a security event keeps its node a warning this long")
    watch_paths: str = Field("", description="extra sensitive path prefixes to watch, comma-separated")
    thresholds_file: pathlib.Path | None = Field(None, description="TOML/YAML/JSON threshold table")
    thresholds: str | None = Field(None, description='inline JSON, e.g. {"cpu_percent": {"warning": 60}}')


log = logging.getLogger("x0tta6bl4.monitor")
HEALTH_LEVEL = {common_pb2.HEALTH_HEALTHY: Health.HEALTHY, common_pb2.HEALTH_WARNING: Health.WARNING,
                common_pb2.HEALTH_CRITICAL: Health.CRITICAL}


def configure(settings: MonitorSettings) -> tuple[Thresholds, dict[int, tuple[str, ...]]]:
    """Thresholds and configured hosts, or ConfigError with one line."""
    try:
        th = load_thresholds(settings.thresholds_file, settings.thresholds)
        hosts = parse_host_map(settings.monitor_hosts)
    except ThresholdConfigError as e:
        raise ConfigError(str(e)) from None
    except ValueError as e:
        raise ConfigError(f"X0TTA6BL4_MONITOR_HOSTS={settings.monitor_hosts!r}: {e}") from None
    return th, hosts


def build(settings: MonitorSettings) -> Service:
    thresholds, configured_hosts = configure(settings)
    health_table.set_thresholds(thresholds)
    app = Service("monitor", settings)
    metrics = prom.build_registry(prom_registry())
    view = MeshView()
    health: dict[str, int] = {}
    losses = monitoring.LossReports()
    seen_ns: dict[str, int] = {}

    def apply_telemetry(key: str, value: bytes | None) -> None:
        if value is None:
            view.remove(key)
            return
        t = events_pb2.NodeTelemetry.FromString(value)
        view.update(t)
        seen_ns[t.node_id] = max(seen_ns.get(t.node_id, 0), t.meta.ts_unix_ns if t.reachable else 0)

    def apply_health(key: str, value: bytes | None) -> None:
        kind, _, rest = key.partition(".")
        if kind == "node":
            health[rest] = int(value) if value else common_pb2.HEALTH_HEALTHY
            metrics.node_health.labels(rest).set(int(HEALTH_LEVEL.get(health[rest], Health.UNKNOWN)))
        elif kind == "mesh":
            metrics.mesh_health.set(int(HEALTH_LEVEL.get(int(value or 0), Health.UNKNOWN)))
        elif kind == "lost" and value:
            lost, _, reporter = rest.partition(".")
            losses.report(lost, reporter, int(value))
        elif kind == "lost":
            lost, _, _ = rest.partition(".")
            losses.clear(lost)

    app.mirror("telemetry", on_change=apply_telemetry)
    app.mirror("health", on_change=apply_health)

    async def transition(node: str, new: int, key: str = "") -> int | None:
        """Compare-and-set the node's health; returns the previous value if this replica changed it."""
        kv = await app.kv("health")
        key = key or f"node.{subjects.token(node)}"
        for _ in range(10):
            try:
                entry = await kv.get(key)
                prev, rev = int(entry.value), entry.revision
            except KeyNotFoundError:
                prev, rev = common_pb2.HEALTH_HEALTHY, 0
            if prev == new:
                return None
            try:
                if rev:
                    await kv.update(key, str(new).encode(), last=rev)
                else:
                    await kv.create(key, str(new).encode())
                if node:
                    health[node] = new
                return prev
            except KeyWrongLastSequenceError:
                continue
        return None

    async def store(t: events_pb2.NodeTelemetry) -> None:
        view.update(t)
        observe(t)
        await (await app.kv("telemetry")).put(subjects.token(t.node_id), t.SerializeToString())

    async def evaluate(t: events_pb2.NodeTelemetry, ctx_publish, cause_id: str) -> None:
        a = monitoring.assess(t, health.get(t.node_id, common_pb2.HEALTH_HEALTHY))
        if not a.changed:
            return
        prev = await transition(t.node_id, a.current)
        if prev is None:
            return  # another replica already recorded this change
        a.previous = prev
        cycle_id = ""
        if a.starts_cycle:
            first = losses.first_report_ns(t.node_id) or t.meta.ts_unix_ns
            w = monitoring.window(view, cause_id, t.node_id, a.reasons, first)
            cycle_id = w.meta.cycle_id
            await ctx_publish(subjects.MAPEK_TELEMETRY, w)
        await ctx_publish(subjects.MAPEK_HEALTH, monitoring.health_change(a, cycle_id))
        await app.audit("health.changed", t.node_id, {
            "from": common_pb2.Health.Name(a.previous), "to": common_pb2.Health.Name(a.current),
            "reasons": "; ".join(a.reasons), "cycle": cycle_id}, cycle_id=cycle_id)
        await mesh_transition(ctx_publish, cycle_id)
        if a.current == common_pb2.HEALTH_HEALTHY and t.reachable:
            kv = await app.kv("health")
            for reporter in list(losses.reporters.get(t.node_id, {})):
                await kv.delete(f"lost.{subjects.token(t.node_id)}.{subjects.token(reporter)}")
            losses.clear(t.node_id)

    def observe(t: events_pb2.NodeTelemetry) -> None:
        """Per-node gauges for /metrics."""
        try:
            m = health_table.node_metrics(t)
            prom.update(metrics, t.node_id, m, evaluate_node(t.node_id, m, thresholds))
        except ValueError:
            pass  # NaN cannot arrive (the codec rejects it); never fail a handler over a gauge
        h, _ = health_table.classify_node(t)
        metrics.node_health.labels(t.node_id).set(int(HEALTH_LEVEL[h]))

    async def mesh_transition(ctx_publish, cycle_id: str = "") -> None:
        """The mesh's health (worst node) changed? Publish HealthChange with node_id ""."""
        current, reasons = health_table.mesh_health(health)
        prev = await transition("", current, key="mesh")
        if prev is None:
            return
        metrics.mesh_health.set(int(HEALTH_LEVEL[current]))
        a = monitoring.Assessment("", prev, current, reasons)
        await ctx_publish(subjects.MAPEK_HEALTH, monitoring.health_change(a, cycle_id))
        await app.audit("health.mesh_changed", "mesh", {
            "from": common_pb2.Health.Name(a.previous), "to": common_pb2.Health.Name(current),
            "reasons": "; ".join(reasons)}, cycle_id=cycle_id)

    def publisher_for(ctx: Context | None):
        if ctx is not None:
            async def pub(subject, msg):
                if msg.meta.cycle_id:
                    await app.publisher.publish(subject, msg, event_id=msg.meta.event_id)
                else:
                    await ctx.publish(subject, msg)
            return pub
        return lambda subject, msg: app.publisher.publish(subject, msg)

    # Telemetry is state, not a command: handling a redelivered report again is harmless (the newest
    # report wins), so it skips the per-event idempotency record and runs wide.
    @app.subscriber("monitor-telemetry", events_pb2.NodeTelemetry, concurrency=8, idempotent_skip=False)
    async def on_telemetry(t: events_pb2.NodeTelemetry, ctx: Context) -> None:
        if t.meta.ts_unix_ns < seen_ns.get(t.node_id, 0):
            return  # older than what we have (out of order); keep the newest
        t.reachable = True
        t.kernel.update(feed.kernel_for(t.node_id))
        await store(t)
        await evaluate(t, publisher_for(ctx), ctx.event_id)

    @app.subscriber("monitor-events", mesh_pb2.MeshEvent, concurrency=4)
    async def on_event(ev: mesh_pb2.MeshEvent, ctx: Context) -> None:
        if ev.kind == "neighbour_lost" and ev.peer:
            kv = await app.kv("health")
            await kv.put(f"lost.{subjects.token(ev.peer)}.{subjects.token(ev.node_id)}",
                         str(ev.meta.ts_unix_ns).encode())
            losses.report(ev.peer, ev.node_id, ev.meta.ts_unix_ns)
            if losses.declared_down(ev.peer, view) and view.nodes.get(ev.peer, None) is not None \
                    and view.nodes[ev.peer].reachable:
                t = monitoring.mark_unreachable(view, ev.peer, time.time_ns())
                await store(t)
                await evaluate(t, publisher_for(ctx), ctx.event_id)
        elif ev.kind.startswith("security.") and ev.peer in view.nodes:
            t = events_pb2.NodeTelemetry()
            t.CopyFrom(view.nodes[ev.peer])
            t.failed_auth += 1
            await store(t)
            await evaluate(t, publisher_for(ctx), ctx.event_id)
        await ctx.audit(f"mesh.{ev.kind}", ev.node_id, {"peer": ev.peer, **dict(ev.details)})

    @app.background
    async def staleness() -> None:
        """Nodes that stopped reporting are unreachable (the fallback when no neighbour reports them)."""
        while True:
            await asyncio.sleep(min(0.25, settings.stale_after_s / 4))
            now = time.time_ns()
            for node, t in list(view.nodes.items()):
                if t.reachable and now - t.meta.ts_unix_ns > settings.stale_after_s * 1e9:
                    with tracer().start_as_current_span("monitor.stale", attributes={"x0.node": node}):
                        u = monitoring.mark_unreachable(view, node, now)
                        await store(u)
                        await evaluate(u, publisher_for(None), f"stale:{node}:{t.meta.event_id}")

    @app.background
    async def periodic_windows() -> None:
        if not settings.window_s:
            return
        while True:
            await asyncio.sleep(settings.window_s)
            idx = int(time.time() // settings.window_s)
            if view.nodes:
                with tracer().start_as_current_span("monitor.window"):
                    w = monitoring.window(view, f"window:{idx}")
                    await app.publisher.publish(subjects.MAPEK_TELEMETRY, w, event_id=w.meta.event_id)

    # ---- kernel telemetry -----------------------------------------------------
    async def on_security(sig: SecuritySignal) -> None:
        """A monitored process touched a sensitive path or tried to change privileges: audit it at once,
        then re-evaluate its nodes (the kernel map now holds the count, so they become a warning)."""
        await app.audit(f"security.{sig.kind}", ",".join(sig.nodes), sig.details())
        for node in sig.nodes:
            if node not in view.nodes:
                continue
            t = events_pb2.NodeTelemetry()
            t.CopyFrom(view.nodes[node])
            t.kernel.update(feed.kernel_for(node))
            await store(t)
            await evaluate(t, publisher_for(None), f"kernel:{sig.kind}:{node}:{sig.event.pid}:{sig.event.ts_ns}")

    feed = KernelFeed(settings.nats_url, prefer=settings.monitor_collector, interval_s=settings.collect_interval_s,
                      configured=configured_hosts, discover=settings.discover_hosts,
                      security_hold_s=settings.security_hold_s,
                      extra_watch_prefixes=tuple(p.strip() for p in settings.watch_paths.split(",") if p.strip()),
                      on_security=on_security,
                      on_snapshot=lambda snap, node_of_pid: prom.update_snapshot(metrics, snap, node_of_pid))
    app.feed = feed  # type: ignore[attr-defined]

    @app.background
    async def kernel_collector() -> None:
        if feed.state == "starting":
            await feed.start()
        async with asyncio.TaskGroup() as tg:  # one failing loop restarts both (no duplicates)
            tg.create_task(feed.run_collect())
            tg.create_task(feed.run_events())

    @app.on_startup
    async def info_rpc() -> None:
        async def answer(msg) -> None:
            body = {"service": "monitor", "instance": settings.instance, **feed.as_dict(),
                    "thresholds": thresholds.as_dict(), "nodes": len(view.nodes)}
            await app.nc.publish(msg.reply, json.dumps(body).encode())
        await app.nc.subscribe(INFO_SUBJECT, cb=answer)

        async def run_cycle(msg) -> None:
            """`meshctl cycle run`: start a MAPE-K cycle now over the latest telemetry of every node."""
            with tracer().start_as_current_span("monitor.cycle_request"):
                w = monitoring.window(view, f"operator:{uuid.uuid4().hex}", reasons=["operator request"],
                                      first_symptom_ns=time.time_ns())
                await app.publisher.publish(subjects.MAPEK_TELEMETRY, w, event_id=w.meta.event_id)
                await app.audit("cycle.requested", w.meta.cycle_id, {"nodes": len(w.nodes)}, cycle_id=w.meta.cycle_id)
            await app.nc.publish(msg.reply, json.dumps({"cycle_id": w.meta.cycle_id, "nodes": len(w.nodes)}).encode())
        await app.nc.subscribe(subjects.MONITOR_RPC.format(method="Cycle"), queue="monitor", cb=run_cycle)

    @app.on_shutdown
    async def close_collector() -> None:
        await feed.close()

    return app


def prom_registry():
    """prometheus_client's default registry (what /metrics serves), once per process."""
    from prometheus_client import REGISTRY
    return None if "x0_mesh_health" in getattr(REGISTRY, "_names_to_collectors", {}) else REGISTRY


def main() -> None:
    run_service("monitor", MonitorSettings, build)


if __name__ == "__main__":
    main()
