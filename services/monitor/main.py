"""Monitor: merge node telemetry, apply the spec's thresholds, start a MAPE-K cycle on a change."""
from __future__ import annotations

import asyncio
import sys
import time

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import Field

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import Context, Service
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.config import CommonSettings, ConfigError, load_settings
from x0tta6bl4.mapek import monitor as monitoring
from x0tta6bl4.mapek.state import MeshView
from x0tta6bl4.telemetry.tracing import tracer
from x0tta6bl4.v1 import common_pb2, events_pb2, mesh_pb2


class MonitorSettings(CommonSettings):
    stale_after_s: float = Field(2.0, gt=0, le=3600, description="no telemetry for this long -> unreachable")
    window_s: float = Field(0.0, ge=0, le=3600, description="periodic telemetry windows (0 = only on change)")


def build(settings: MonitorSettings) -> Service:
    app = Service("monitor", settings)
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
        elif kind == "lost" and value:
            lost, _, reporter = rest.partition(".")
            losses.report(lost, reporter, int(value))
        elif kind == "lost":
            lost, _, _ = rest.partition(".")
            losses.clear(lost)

    app.mirror("telemetry", on_change=apply_telemetry)
    app.mirror("health", on_change=apply_health)

    async def transition(node: str, new: int) -> int | None:
        """Compare-and-set the node's health; returns the previous value if this replica changed it."""
        kv = await app.kv("health")
        key = f"node.{subjects.token(node)}"
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
                health[node] = new
                return prev
            except KeyWrongLastSequenceError:
                continue
        return None

    async def store(t: events_pb2.NodeTelemetry) -> None:
        view.update(t)
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
        if a.current == common_pb2.HEALTH_HEALTHY and t.reachable:
            kv = await app.kv("health")
            for reporter in list(losses.reporters.get(t.node_id, {})):
                await kv.delete(f"lost.{subjects.token(t.node_id)}.{subjects.token(reporter)}")
            losses.clear(t.node_id)

    def publisher_for(ctx: Context | None):
        if ctx is not None:
            async def pub(subject, msg):
                if msg.meta.cycle_id:
                    await app.publisher.publish(subject, msg, event_id=msg.meta.event_id)
                else:
                    await ctx.publish(subject, msg)
            return pub
        return lambda subject, msg: app.publisher.publish(subject, msg)

    @app.subscriber("monitor-telemetry", events_pb2.NodeTelemetry, concurrency=4)
    async def on_telemetry(t: events_pb2.NodeTelemetry, ctx: Context) -> None:
        if t.meta.ts_unix_ns < seen_ns.get(t.node_id, 0):
            return  # older than what we have (out of order); keep the newest
        t.reachable = True
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

    return app


def main() -> None:
    try:
        settings = load_settings(MonitorSettings)
    except ConfigError as e:
        print(f"monitor: config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    build(settings).run()


if __name__ == "__main__":
    main()
