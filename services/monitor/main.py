"""Monitor service: composition root. The stage's logic is :mod:`x0tta6bl4.stages.monitor`; the adapters
(Prometheus gauges, kernel collector, core NATS answers) are :mod:`x0tta6bl4.monitoring.wiring`."""
from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Literal

from prometheus_client import Counter
from pydantic import Field

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import Service, run_service
from x0tta6bl4.config import CommonSettings, ConfigError
from x0tta6bl4.monitoring import prometheus as prom
from x0tta6bl4.monitoring import wiring
from x0tta6bl4.stages import monitor as stage
from x0tta6bl4.telemetry.tracing import tracer
from x0tta6bl4.v1 import events_pb2, mesh_pb2


class MonitorSettings(CommonSettings):
    stale_after_s: float = Field(2.0, gt=0, le=3600, description="no telemetry for this long -> unreachable")
    window_s: float = Field(0.0, ge=0, le=3600, description="periodic telemetry windows (0 = only on change)")
    silence_hold_s: float = Field(1.0, ge=0, le=60, description="a stale node no neighbour reported lost is marked "
                                  "unreachable this long after it went stale, unless many went silent at once")
    mass_silence_min: int = Field(8, ge=2, le=1_000_000,
                                  description="this many nodes silent at once (and mass_silence_share of them) is "
                                              "a failed reporting path, not failed nodes: none is marked")
    mass_silence_share: float = Field(0.1, gt=0, le=1, description="see mass_silence_min")
    monitor_collector: Literal["auto", "ebpf", "proc", "off"] = Field(
        "auto", description="kernel telemetry: eBPF when possible (auto), forced, /proc + psutil, or none")
    collect_interval_s: float = Field(1.0, ge=0.05, le=60, description="kernel collector interval")
    monitor_hosts: str = Field("", description="mesh host processes to monitor: PID=node,node;PID=node")
    discover_hosts: bool = Field(True, description="find local mesh host processes of this broker")
    security_hold_s: float = Field(30.0, gt=0, le=86400,
                                   description="a security event keeps its node a warning this long")
    watch_paths: str = Field("", description="extra sensitive path prefixes to watch, comma-separated")
    report_max_future_s: float = Field(30.0, gt=0, le=86400, description="refuse reports stamped further ahead")
    report_max_age_s: float = Field(300.0, gt=0, le=86400, description="refuse reports older than this")
    own_report_fresh_s: float = Field(0.5, ge=0, le=60, description=(
        "a node that reported itself this recently is not declared down on its neighbours' reports"))
    telemetry_concurrency: int = Field(1, ge=1, le=64, description=(
        "reports handled at once; 1: a fetched batch in one go, its acks and writes sent in one socket write "
        "(measured about twice the reports per CPU second of 8)"))
    max_lag_s: float = Field(5.0, gt=0, le=3600, description=(
        "/ready is false while the monitor is further behind its telemetry than this"))
    monitor_partition: int = Field(0, ge=0, le=15, description=(
        "this replica's telemetry partition, below X0TTA6BL4_MONITOR_PARTITIONS (replicas of one partition "
        "share its durable consumer)"))


REFUSED = Counter("x0_monitor_refused_total", "node reports refused, by reason", ["reason"])


def check_partition(settings: MonitorSettings) -> None:
    """ConfigError unless the replica's partition is one of X0TTA6BL4_MONITOR_PARTITIONS."""
    if settings.monitor_partition >= settings.monitor_partitions:
        raise ConfigError(f"X0TTA6BL4_MONITOR_PARTITION={settings.monitor_partition}: must be below "
                          f"X0TTA6BL4_MONITOR_PARTITIONS={settings.monitor_partitions} (partitions are numbered "
                          f"from 0)")


def dependencies(settings: MonitorSettings, clock_ns: Callable[[], int] = time.time_ns) -> stage.MonitorDeps:
    check_partition(settings)
    return stage.MonitorDeps(partitions=settings.monitor_partitions, partition=settings.monitor_partition,
                             thresholds=settings.threshold_table(), stale_after_s=settings.stale_after_s,
                             window_s=settings.window_s, instance=settings.instance, clock_ns=clock_ns,
                             span=lambda name, **kw: tracer().start_as_current_span(name, **kw),
                             max_future_s=settings.report_max_future_s, max_age_s=settings.report_max_age_s,
                             own_report_fresh_s=settings.own_report_fresh_s,
                             silence_hold_s=settings.silence_hold_s, mass_silence_min=settings.mass_silence_min,
                             mass_silence_share=settings.mass_silence_share,
                             count_refusal=lambda kind: REFUSED.labels(kind).inc())


def build(settings: MonitorSettings, deps: stage.MonitorDeps | None = None) -> Service:
    check_partition(settings)
    deps = dependencies(settings) if deps is None else deps
    deps.partitions, deps.partition = settings.monitor_partitions, settings.monitor_partition
    telemetry = subjects.monitor_telemetry_consumer(deps.partition, deps.partitions)
    app = Service("monitor", settings)
    registry, flush = wiring.default_registry(), wiring.FlushOnScrape()
    if registry is not None:
        registry.register(flush)     # before the gauges: a scrape sets the per-node gauges, then reads them
    metrics = prom.build_registry(registry)
    if registry is None:
        metrics.registry.register(flush)   # a private registry (a second monitor in one process)
    deps.gauges = flush.gauges = wiring.PromGauges(metrics, deps.thresholds)
    wiring.attach_lag(app, deps, settings.max_lag_s, telemetry)
    wiring.attach_partition_check(app, deps)
    wiring.attach_kernel_feed(app, settings, deps, metrics)
    app.mirror(stage.TELEMETRY_BUCKET, on_change=partial(stage.apply_telemetry, deps))
    app.mirror(stage.HEALTH_BUCKET, on_change=partial(stage.apply_health, deps))
    wiring.attach_report_writer(app, deps)
    # state, not a command (see stage.on_telemetry): no idempotency record, and no span per report (a cycle a
    # report starts still continues the report's trace); by default one at a time (telemetry_concurrency);
    # partitioned: this replica's partition's consumer (monitor-telemetry-p<i>)
    app.subscribe(telemetry, events_pb2.NodeTelemetry, partial(stage.on_telemetry, deps=deps),
                  concurrency=settings.telemetry_concurrency, idempotent_skip=False, traced=False)
    app.subscribe("monitor-events", mesh_pb2.MeshEvent, partial(stage.on_event, deps=deps), concurrency=4)

    async def staleness() -> None:
        await stage.staleness(app.context(), deps)

    async def periodic_windows() -> None:
        await stage.periodic_windows(app.context(), deps)

    app.background(staleness)
    app.background(periodic_windows)
    wiring.attach_rpc(app, deps)
    return app


def main() -> None:
    run_service("monitor", MonitorSettings, build)


if __name__ == "__main__":
    main()
