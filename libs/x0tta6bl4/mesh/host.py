"""A mesh host: runs node agents and connects them to the orchestrator's bus.

    python -m x0tta6bl4.mesh.host --nats nats://127.0.0.1:4222 --topology grid:9 \
        --traffic n0:n8 --rate 20

Each agent's telemetry goes to ``mesh.telemetry.<node>`` and its control and
security events to ``mesh.event.<node>`` (protobuf, with W3C trace context);
commands arrive on ``mesh.cmd.<node>`` (core NATS request/reply) and are
answered with a MeshEvent ``command.ok`` / ``command.failed``. The host is the
node's supervisor: it still answers for a killed agent (so RESTART can revive it).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Iterable
from typing import Any

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import InvalidMessage, decode, new_meta
from x0tta6bl4.bus.connection import connect
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.mesh.core import CoreConfig
from x0tta6bl4.mesh.runtime import MeshRuntime
from x0tta6bl4.mesh.topology import Topology, parse_spec
from x0tta6bl4.telemetry.tracing import setup_tracing, tracer
from x0tta6bl4.v1 import events_pb2, mesh_pb2

log = logging.getLogger("x0tta6bl4.mesh.host")
C = mesh_pb2.MeshCommand


def to_proto(d: dict[str, Any], share: int, loss_pct: float, p99_ms: float) -> events_pb2.NodeTelemetry:
    """Agent telemetry dict -> NodeTelemetry. CPU and memory are the process's, shared by ``share`` agents."""
    t = events_pb2.NodeTelemetry(
        meta=new_meta("mesh-agent"), node_id=d["node_id"], p99_latency_ms=p99_ms,
        loss_pct=loss_pct, throughput_bps=float(d["throughput_bps"]), peer_count=int(d["peer_count"]),
        route_count=int(d["route_count"]), cpu_pct=float(d["cpu_pct"]) / max(1, share),
        mem_pct=float(d["mem_pct"]) / max(1, share), failed_auth=int(d["failed_auth"]),
        reachable=bool(d.get("reachable", True)), neighbours=list(d.get("neighbours", [])))
    for q in d.get("links") or []:
        t.links.add(peer=q["peer"], rssi_dbm=float(q.get("rssi_dbm", 0)), snr_db=float(q.get("snr_db", 0)),
                    loss_rate=float(q.get("loss_rate", 0)), latency_ms=float(q.get("latency_ms", 0)),
                    link_age_s=float(q.get("link_age_s", 0)))
    for k, v in (d.get("counters") or {}).items():
        t.counters[k] = float(v)
    for r in d.get("routes") or []:
        if r.get("valid", True):
            t.routes[r["dest"]] = r["next_hop"]
    t.avoided.extend(d.get("avoided") or [])
    return t


class MeshHost:
    """Node agents of one topology (or a subset) bridged to NATS."""

    def __init__(self, nats_url: str, topology: Topology, nodes: Iterable[str] | None = None,
                 config: CoreConfig | None = None, telemetry_interval: float = 0.25, seed: int = 0,
                 ack_timeout: float = 0.5, latency_window_s: float = 1.0):
        self.nats_url = nats_url
        self.topology = topology
        self.latency_window_ns = int(latency_window_s * 1e9)
        self.runtime = MeshRuntime(topology, config=config, seed=seed, telemetry_sink=self._on_telemetry,
                                   event_sink=self._on_event, telemetry_interval=telemetry_interval,
                                   ack_timeout=ack_timeout)
        self.nodes = list(nodes or topology.nodes)
        self._last_outcomes: dict[str, tuple[float, float]] = {}
        self.nc = None
        self.name = "mesh-host"
        self.started_at = time.time()
        self.publisher: Publisher | None = None
        self._subs = []
        self._traffic: list[asyncio.Task] = []

    @property
    def ready(self) -> bool:
        """Readiness for /ready: connected to the broker and every hosted agent running."""
        return bool(self.nc and self.nc.is_connected and self.runtime.started
                    and all(self.runtime.agents[n].running or self.runtime.agents[n].killed for n in self.nodes))

    # ---- lifecycle ------------------------------------------------------------
    async def start(self) -> "MeshHost":
        self.nc = await connect(self.nats_url, "mesh-host")
        self.publisher = Publisher(self.nc, "mesh-agent")
        for n in self.nodes:
            self._subs.append(await self.nc.subscribe(subjects.mesh_cmd(n), cb=self._on_command))
        await self.runtime.start()
        return self

    async def stop(self) -> None:
        for t in self._traffic:
            t.cancel()
        await self.runtime.stop()
        if self.nc:
            await self.nc.close()

    def traffic(self, src: str, dst: str, rate: float) -> None:
        async def loop():
            while True:
                a = self.runtime.agents[src]
                if a.running:
                    try:
                        a.send(dst, b"x" * 64, ack=True)
                    except ValueError:
                        pass
                await asyncio.sleep(1 / rate)
        self._traffic.append(asyncio.create_task(loop()))

    # ---- agent -> bus ---------------------------------------------------------
    def _loss(self, d: dict) -> float:
        """Loss over the last report interval (acked vs timed-out DATA), else the link loss."""
        c = d.get("counters") or {}
        acked, lost = float(c.get("acked", 0)), float(c.get("ack_timeouts", 0))
        pa, pl = self._last_outcomes.get(d["node_id"], (0.0, 0.0))
        self._last_outcomes[d["node_id"]] = (acked, lost)
        da, dl = acked - pa, lost - pl
        if da + dl > 0:
            return 100.0 * dl / (da + dl)
        links = d.get("links") or []
        return 100.0 * sum(float(q.get("loss_rate", 0)) for q in links) / len(links) if links else 0.0

    def _p99_ms(self, node: str) -> float:
        """p99 of DATA round-trip (acks) and one-way (deliveries) latency over the recent window."""
        agent = self.runtime.agents[node]
        now = agent.clock()
        cutoff = now - self.latency_window_ns
        samples = [t_rx - ts for (t_rx, _, _, ts) in reversed(agent.acks) if t_rx >= cutoff]
        samples += [t_rx - ts for (t_rx, _, _, ts) in reversed(agent.deliveries) if t_rx >= cutoff]
        if not samples:
            return 0.0
        samples.sort()
        return samples[min(len(samples) - 1, int(0.99 * len(samples)))] / 1e6

    async def _on_telemetry(self, d: dict) -> None:
        with tracer().start_as_current_span("agent.telemetry", attributes={"x0.node": d["node_id"]}):
            try:
                t = to_proto(d, len(self.runtime.agents), self._loss(d), self._p99_ms(d["node_id"]))
                await self.publisher.publish(subjects.telemetry(t.node_id), t)
            except (InvalidMessage, KeyError, TypeError, ValueError) as e:
                log.warning("telemetry of %s not sent: %s", d.get("node_id"), e)

    async def _on_event(self, rec: dict) -> None:
        if rec["kind"] not in ("neighbour_lost", "route_broken", "route_repaired") and \
                not rec["kind"].startswith("security"):
            return
        with tracer().start_as_current_span(f"agent.{rec['kind']}", attributes={"x0.node": rec["node_id"]}):
            ev = mesh_pb2.MeshEvent(meta=new_meta("mesh-agent"), node_id=rec["node_id"], kind=rec["kind"],
                                    peer=rec.get("peer") or "", details=rec.get("details") or {})
            ev.meta.ts_unix_ns = rec.get("ts_ns") or ev.meta.ts_unix_ns
            await self.publisher.publish(subjects.mesh_event(ev.node_id), ev)

    # ---- bus -> agent ---------------------------------------------------------
    async def _on_command(self, msg) -> None:
        node = msg.subject.rsplit(".", 1)[-1]
        ok, detail = True, "ok"
        try:
            cmd = decode(mesh_pb2.MeshCommand, msg.data)
            detail = await self.apply(node, cmd.kind, cmd.peer, dict(cmd.params))
        except (InvalidMessage, KeyError, ValueError) as e:
            ok, detail = False, str(e)
        reply = mesh_pb2.MeshEvent(meta=new_meta("mesh-agent"), node_id=node,
                                   kind="command.ok" if ok else "command.failed", details={"detail": detail})
        if msg.reply:
            await self.nc.publish(msg.reply, reply.SerializeToString())

    async def apply(self, node: str, kind: int, peer: str = "", params: dict | None = None) -> str:
        params = params or {}
        agent = self.runtime.agents.get(node)
        if agent is None:
            raise KeyError(f"node {node!r} is not hosted here")
        if kind == C.KIND_AVOID_NODE:
            agent.avoid(peer)
        elif kind == C.KIND_UNAVOID_NODE:
            agent.unavoid(peer)
        elif kind == C.KIND_FLUSH_ROUTES:
            agent.flush_routes()
        elif kind == C.KIND_SHUTDOWN:
            await agent.shutdown()
        elif kind == C.KIND_RESTART:
            if agent.running:
                agent.kill()
            await agent.revive()
            return "agent restarted"
        elif kind == C.KIND_FAULT:
            t = params.get("type")
            if t == "kill":
                agent.kill()
            elif t == "revive":
                await agent.revive()
            else:
                agent.apply_fault(params)
            return f"fault {t} applied"
        elif kind == C.KIND_HEAL:
            agent.impair.clear()
        elif kind == C.KIND_RELOAD_KEYS:
            return "agent uses the structural verifier: no keys to reload"
        else:
            raise ValueError(f"unknown command kind {kind}")
        return "ok"


async def _main(args: argparse.Namespace) -> int:
    setup_tracing("mesh-agent", args.data_dir, None)
    topo = parse_spec(args.topology, seed=args.seed)
    host = await MeshHost(args.nats, topo, telemetry_interval=args.telemetry_interval, seed=args.seed).start()
    health = None
    if args.health_port:
        from x0tta6bl4.bus.health import HealthServer
        health = HealthServer(host, args.health_port)
        await health.start()
    for spec in args.traffic:
        src, _, dst = spec.partition(":")
        host.traffic(src, dst, args.rate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"ready": True, "nodes": topo.nodes,
                      "links": sorted(sorted(link) for link in topo.links)}), flush=True)
    await stop.wait()
    await host.stop()
    if health:
        await health.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nats", required=True)
    p.add_argument("--topology", default="grid:9", help="grid:N, line:N, ring:N, rgg:N, ba:N or a YAML/TOML file")
    p.add_argument("--traffic", action="append", default=[], help="SRC:DST DATA flow (repeatable)")
    p.add_argument("--rate", type=float, default=20.0, help="packets per second per flow")
    p.add_argument("--telemetry-interval", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--health-port", type=int, default=0, help="serve /health and /ready here (8080 in containers)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mesh-host %(levelname)s %(message)s")
    try:
        return asyncio.run(_main(args))
    except (ValueError, OSError) as e:
        print(f"mesh host: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
