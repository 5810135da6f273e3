"""meshctl status / simulate: the spec's "mesh status" and "simulate failure" against the live system."""
from __future__ import annotations

import pathlib
import time

import typer
from rich.table import Table

from x0tta6bl4.bus.reader import mesh_telemetry
from x0tta6bl4.cli.common import DEFAULT_DATA_DIR, connect, console, fail, nats_url, run
from x0tta6bl4.mapek.health import classify_node
from x0tta6bl4.v1 import common_pb2, events_pb2

NatsOpt = typer.Option(None, "--nats", help="NATS URL (default: the running stack's)")
DataOpt = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="stack data directory")
simulate_app = typer.Typer(help="What-if questions to the digital twin, on the live topology.", no_args_is_help=True)

COLOR: dict[int, str] = {common_pb2.HEALTH_HEALTHY: "green", common_pb2.HEALTH_WARNING: "yellow",
                         common_pb2.HEALTH_CRITICAL: "red"}


async def live_telemetry(url: str) -> dict[str, events_pb2.NodeTelemetry]:
    nc = await connect(url)
    try:
        return await mesh_telemetry(nc.jetstream())
    finally:
        await nc.close()

def status(nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Mesh status: every node's health by the spec's thresholds, peers, routes and key metrics."""
    nodes = run(live_telemetry(nats_url(nats, data_dir)))
    if not nodes:
        fail("no telemetry yet: is a mesh connected to the stack? (meshctl demo, or python -m x0tta6bl4.mesh.host)")
    table = Table("node", "health", "p99 ms", "loss %", "cpu %", "mem %", "peers", "routes", "age s", "reasons",
                  title="mesh status")
    worst: int = common_pb2.HEALTH_HEALTHY
    now = time.time_ns()
    for node in sorted(nodes, key=lambda n: (len(n), n)):
        t = nodes[node]
        h, reasons = classify_node(t)
        worst = max(worst, h)
        name = common_pb2.Health.Name(h).removeprefix("HEALTH_").lower()
        table.add_row(node, f"[{COLOR[h]}]{name}[/]", f"{t.p99_latency_ms:.1f}", f"{t.loss_pct:.2f}",
                      f"{t.cpu_pct:.1f}", f"{t.mem_pct:.1f}", str(t.peer_count), str(t.route_count),
                      f"{(now - t.meta.ts_unix_ns) / 1e9:.1f}", "; ".join(reasons))
    console.print(table)
    name = common_pb2.Health.Name(worst).removeprefix("HEALTH_").lower()
    console.print(f"mesh: [{COLOR[worst]}]{name}[/] ({len(nodes)} nodes)")


@simulate_app.command("failure")
def simulate_failure(node: str, duration_s: float = typer.Option(60.0, "--duration", min=0.1),
                     cascade_threshold: float = typer.Option(0.5, "--threshold", min=0.01, max=1.0),
                     nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Ask the twin what happens if NODE fails: connectivity kept, estimated MTTR, predicted cascade."""
    nodes = run(live_telemetry(nats_url(nats, data_dir)))
    if node not in nodes:
        fail(f"unknown node {node!r}; known: {', '.join(sorted(nodes)) or 'none (no telemetry yet)'}")
    from x0tta6bl4.twin.twin import MeshDigitalTwin  # networkx, numpy: only for this command
    twin = MeshDigitalTwin("meshctl")
    twin.from_neighbours({n: list(t.neighbours) for n, t in nodes.items()})
    r = twin.simulate_node_failure(node, duration_s)
    cascade = twin.predict_cascade_failure(node, cascade_threshold)
    table = Table("question", "answer", title=f"digital twin: {node} fails for {duration_s:g} s")
    table.add_row("connectivity maintained", f"{r.connectivity_maintained:.3f}")
    table.add_row("partitioned", str(r.partitioned))
    table.add_row("isolated neighbours", ", ".join(map(str, r.isolated_neighbours)) or "none")
    table.add_row("estimated detection / repair / MTTR",
                  f"{r.detection_s:.2f} s / {r.repair_s:.2f} s / {r.mttr_seconds:.2f} s"
                  + ("" if r.mttr_model_calibrated else " (uncalibrated model)"))
    table.add_row(f"cascade (threshold {cascade_threshold})", ", ".join(map(str, cascade)) or "none")
    console.print(table)
    if len(cascade) > 2:
        console.print("[yellow]WARNING: cascade risk, manual review required[/]")
