"""Namespace-mode mesh host: node agents in network namespaces, bridged to NATS.

    python -m x0tta6bl4.mesh.netns_host --nats nats://127.0.0.1:4222 --topology grid:9 \
        --traffic n0:n8 --rate 20

Design (root required).  Every node runs ``python -m x0tta6bl4.mesh.node`` in
its own network namespace (:class:`~x0tta6bl4.mesh.netns.NetnsMesh`: veth
links, nothing added to the root namespace).  A process inside a namespace
cannot reach ``127.0.0.1`` of the root namespace where NATS listens, so the
agents never talk to NATS: *this* process, in the root namespace, is their
supervisor and their bridge.

* agent -> bus: each node prints JSON lines on stdout (``telemetry``,
  ``event``); the bridge turns them into ``NodeTelemetry`` on
  ``mesh.telemetry.<node>`` and ``MeshEvent`` on ``mesh.event.<node>`` - the
  same protobufs, subjects and conversion (:func:`x0tta6bl4.mesh.host.to_proto`)
  as the loopback host, so the monitor cannot tell the two modes apart.
* bus -> agent: the bridge answers ``mesh.cmd.<node>`` (core NATS
  request/reply, reply ``MeshEvent`` ``command.ok`` / ``command.failed``) and
  applies each command with the *real* tool where one exists:

  ==========================  ==================================================
  MeshCommand                 namespace mode
  ==========================  ==================================================
  FAULT type=kill             SIGKILL of the node process (state lost)
  FAULT type=revive / RESTART node process started again (fresh state)
  FAULT type=pause / resume   SIGSTOP / SIGCONT of the node process
  FAULT type=block peer=P     ``ip link set down`` of the veth pair node-P
  FAULT type=unblock peer=P   ``ip link set up`` of that pair
  FAULT type=loss pct=X       nftables ``udp dport numgen random mod 100 < X drop``
                              on the node's input (``direction=out|both``: output
                              or both; ``pct=0`` removes it)
  FAULT type=latency ms=X     agent-level via a stdin command (no tc netem here)
  HEAL                        all of the above undone for the node, restarted if dead
  AVOID/UNAVOID/FLUSH_ROUTES  stdin JSON command to the agent
  SHUTDOWN                    stdin ``shutdown``: the agent exits cleanly
  ==========================  ==================================================

A killed node publishes nothing (as in loopback mode): the monitor sees it go
stale and its neighbours report ``neighbour_lost``.  SIGTERM tears everything
down, namespaces included.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import InvalidMessage, decode, new_meta
from x0tta6bl4.bus.connection import connect
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.mesh.host import to_proto
from x0tta6bl4.mesh.netns import NetnsMesh, netns_available
from x0tta6bl4.mesh.topology import Topology, parse_spec
from x0tta6bl4.v1 import mesh_pb2

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger("x0tta6bl4.mesh.netns_host")
C = mesh_pb2.MeshCommand
EVENT_KINDS = ("neighbour_lost", "route_broken", "route_repaired")


class NetnsHost:
    """A :class:`NetnsMesh` whose nodes are reachable on the orchestrator's bus."""

    def __init__(self, nats_url: str, topology: Topology, *, traffic: dict[str, str] | None = None,
                 rate: float = 20.0, hello_interval: float = 0.2, miss_count: int = 3,
                 telemetry_interval: float = 0.5, port: int = 7000, prefix: str | None = None):
        self.nats_url = nats_url
        self.topology = topology
        self.traffic = dict(traffic or {})
        self.rate = rate
        self.mesh = NetnsMesh(topology, port=port, hello_interval=hello_interval, miss_count=miss_count,
                              telemetry_interval=telemetry_interval, prefix=prefix, on_record=self._on_record,
                              log_data=True, max_records=2000)
        self.nc: Client | None = None
        self.publisher: Publisher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue(maxsize=10_000)
        self._pump: asyncio.Task | None = None
        self._subs: list = []
        self._outcomes: dict[str, tuple[float, float]] = {}
        self._latency: dict[str, deque[tuple[float, float]]] = {n: deque(maxlen=5000) for n in topology.nodes}
        self.latency_window_s = 1.0
        self.dropped = 0

    # ---- lifecycle ------------------------------------------------------------
    async def start(self) -> NetnsHost:
        self._loop = asyncio.get_running_loop()
        nc = self.nc = await connect(self.nats_url, "mesh-netns-host")
        self.publisher = Publisher(nc, "mesh-agent", retry_for_s=5.0)
        self._pump = asyncio.create_task(self._pump_loop())
        await asyncio.to_thread(self.mesh.build)
        for n in self.topology.nodes:
            self._subs.append(await nc.subscribe(subjects.mesh_cmd(n), cb=self._on_command))
        await asyncio.to_thread(self.mesh.start, self.traffic, self.rate)
        return self

    async def stop(self) -> None:
        await asyncio.to_thread(self.mesh.close)
        if self._pump:
            self._pump.cancel()
        if self.nc:
            await self.nc.close()

    # ---- agent -> bus -----------------------------------------------------------
    def _on_record(self, node: str, rec: dict) -> None:
        """Reader thread: hand a node's JSON line to the event loop; keep DATA latency samples."""
        kind = rec.get("type")
        if kind == "ack" and "rtt_ms" in rec:  # round trip measured by the source agent
            self._latency[node].append((rec["_rx"], float(rec["rtt_ms"])))
            return
        if kind == "delivered" and "ts" in rec:  # one way: origin's CLOCK_MONOTONIC stamp -> line read here
            self._latency[node].append((rec["_rx"], (time.monotonic_ns() - int(rec["ts"])) / 1e6))
            return
        if kind not in ("telemetry", "event") or self._loop is None:
            return

        def put() -> None:
            try:
                self._queue.put_nowait((node, rec))
            except asyncio.QueueFull:
                self.dropped += 1
        self._loop.call_soon_threadsafe(put)

    def _loss(self, d: dict) -> float:
        """Loss over the last report interval (acked vs timed-out DATA), else the agent's own figure."""
        c = d.get("counters") or {}
        acked, lost = float(c.get("acked", 0)), float(c.get("ack_timeouts", 0))
        pa, pl = self._outcomes.get(d["node_id"], (0.0, 0.0))
        self._outcomes[d["node_id"]] = (acked, lost)
        da, dl = acked - pa, lost - pl
        if da >= 0 and dl >= 0 and da + dl > 0:
            return 100.0 * dl / (da + dl)
        return float(d.get("loss_pct", 0.0))

    def _p99_ms(self, node: str) -> float:
        """p99 of DATA round-trip (acks) and one-way (deliveries) latency over the last second, as the loopback host."""
        cutoff = time.monotonic() - self.latency_window_s
        xs = sorted(ms for rx, ms in list(self._latency[node]) if rx >= cutoff)
        return xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else 0.0

    async def _pump_loop(self) -> None:
        assert self.publisher is not None, "started by start()"
        while True:
            node, rec = await self._queue.get()
            try:
                if rec["type"] == "telemetry" and not rec.get("final"):
                    t = to_proto(rec, 1, self._loss(rec), self._p99_ms(node))
                    await self.publisher.publish(subjects.telemetry(node), t)
                elif rec["type"] == "event" and (rec.get("kind") in EVENT_KINDS
                                                 or str(rec.get("kind", "")).startswith("security")):
                    ev = mesh_pb2.MeshEvent(meta=new_meta("mesh-agent"), node_id=node, kind=rec["kind"],
                                            peer=rec.get("peer") or "", details=rec.get("details") or {})
                    ev.meta.ts_unix_ns = int(rec.get("ts_ns") or ev.meta.ts_unix_ns)
                    await self.publisher.publish(subjects.mesh_event(node), ev)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - one bad line or a broker hiccup must not stop the bridge
                log.warning("%s: %s of %s not sent: %s", node, rec.get("type"), node, e)

    # ---- bus -> agent -----------------------------------------------------------
    async def _on_command(self, msg) -> None:
        node = msg.subject.rsplit(".", 1)[-1]
        ok, detail = True, "ok"
        try:
            cmd = decode(mesh_pb2.MeshCommand, msg.data)
            detail = await self.apply(node, cmd.kind, cmd.peer, dict(cmd.params))
        except (InvalidMessage, KeyError, ValueError, RuntimeError, OSError) as e:
            ok, detail = False, str(e)
        except Exception as e:  # noqa: BLE001 - e.g. a failing ip/nft call: report it
            ok, detail = False, f"{type(e).__name__}: {getattr(e, 'stderr', '') or e}"
        reply = mesh_pb2.MeshEvent(meta=new_meta("mesh-agent"), node_id=node,
                                   kind="command.ok" if ok else "command.failed",
                                   details={"detail": detail, "mode": "netns"})
        if msg.reply and self.nc is not None:   # commands arrive only through self.nc
            await self.nc.publish(msg.reply, reply.SerializeToString())

    def _stdin(self, node: str, cmd: dict[str, Any]) -> None:
        if not self.mesh.alive(node):
            raise RuntimeError(f"node {node} is not running (killed?)")
        self.mesh.command(node, cmd)

    async def apply(self, node: str, kind: int, peer: str = "", params: dict | None = None) -> str:
        params = params or {}
        m = self.mesh
        if node not in m.nodes:
            raise KeyError(f"node {node!r} is not hosted here")
        run = asyncio.to_thread
        if kind == C.KIND_AVOID_NODE:
            self._stdin(node, {"kind": "avoid", "peer": peer})
        elif kind == C.KIND_UNAVOID_NODE:
            self._stdin(node, {"kind": "unavoid", "peer": peer})
        elif kind == C.KIND_FLUSH_ROUTES:
            self._stdin(node, {"kind": "flush_routes"})
        elif kind == C.KIND_SHUTDOWN:
            self._stdin(node, {"kind": "shutdown"})
        elif kind == C.KIND_RESTART:
            await run(m.kill, node)
            await run(m.start_node, node)
            return "node process restarted"
        elif kind == C.KIND_HEAL:
            await run(m.heal_node, node)
            return "nftables rules removed, links up, SIGCONT, agent impairments cleared, process alive"
        elif kind == C.KIND_RELOAD_KEYS:
            return "agent uses the structural verifier: no keys to reload"
        elif kind == C.KIND_FAULT:
            return await self._fault(node, params)
        elif kind == C.KIND_SET_LINK:         # an operator's topology_update (x0tta6bl4.execution.changes)
            if frozenset((node, peer)) not in m.links:
                raise ValueError(f"{peer!r} is not a neighbour of {node} (no such link in the topology)")
            state = str(params.get("state", ""))
            if state not in ("down", "up"):
                raise ValueError(f"link state must be down or up, got {state!r}")
            self._stdin(node, {"kind": "set_link", "peer": peer, "params": {"state": state}})
            return f"link {node}-{peer} {state} (sent to the node process)"
        elif kind == C.KIND_SET_CONFIG:       # an operator's config_change: checked here, applied by the agent
            from x0tta6bl4.execution import changes
            if params.get(changes.RESTORE) != changes.PREVIOUS and not changes.config_values(
                    {k: v for k, v in params.items() if k != "generation"}):
                raise ValueError("set config: no parameter (hello_interval, miss_count)")
            self._stdin(node, {"kind": "set_config", "params": {k: v for k, v in params.items()
                                                                if k != "generation"}})
            return "config sent to the node process"
        else:
            raise ValueError(f"unknown command kind {kind}")
        return "ok"

    async def _fault(self, node: str, params: dict) -> str:
        m = self.mesh
        run = asyncio.to_thread
        t = params.get("type")
        if t == "kill":
            await run(m.kill, node)
            return "SIGKILL sent to the node process"
        if t == "revive":
            return "node process restarted" if await run(m.revive, node) else "node was running"
        if t == "pause":
            m.pause(node)
            return "SIGSTOP sent"
        if t == "resume":
            m.resume(node)
            return "SIGCONT sent"
        if t in ("block", "unblock"):
            p = str(params.get("peer", ""))
            if frozenset((node, p)) not in m.links:
                raise ValueError(f"no link {node}-{p}")
            await run(lambda: m.set_link(node, p, up=(t == "unblock")))
            return f"ip link set {'up' if t == 'unblock' else 'down'}: veth {node}-{p}"
        if t == "loss":
            pct = float(params["pct"])
            if not 0 <= pct <= 100:
                raise ValueError("loss percentage must be 0..100")
            direction = str(params.get("direction", "in"))
            await run(m.loss, node, pct, direction)
            hooks = {"in": "input", "out": "output", "both": "input and output"}[direction]
            return f"nftables: drop {int(pct)}% of udp/{m.port} {hooks}" if pct > 0 else "nftables rule removed"
        if t == "latency":
            ms = float(params["ms"])
            if ms < 0:
                raise ValueError("latency must be >= 0")
            self._stdin(node, {"kind": "fault", "params": {"type": "latency", "ms": ms}})
            return f"agent-level latency {ms:g} ms (tc netem unavailable)"
        raise ValueError(f"unknown fault {t!r}")


async def _main(args: argparse.Namespace) -> int:
    ok, why = netns_available()
    if not ok:
        print(f"mesh netns host: network namespaces unavailable: {why}", file=sys.stderr)
        return 2
    topo = parse_spec(args.topology, seed=args.seed)
    traffic = {}
    for spec in args.traffic:
        src, _, dst = spec.partition(":")
        traffic[src] = dst
    host = NetnsHost(args.nats, topo, traffic=traffic, rate=args.rate, hello_interval=args.hello_interval,
                     miss_count=args.miss_count, telemetry_interval=args.telemetry_interval, prefix=args.prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await host.start()
        print(json.dumps({"ready": True, "mode": "netns", "nodes": topo.nodes,
                          "links": sorted(sorted(link) for link in topo.links),
                          "namespaces": {n: node.ns for n, node in host.mesh.nodes.items()}}), flush=True)
        await stop.wait()
    finally:
        await host.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nats", required=True)
    p.add_argument("--topology", default="grid:9", help="grid:N, line:N, ring:N, rgg:N, ba:N or a YAML/TOML file")
    p.add_argument("--traffic", action="append", default=[], help="SRC:DST DATA flow (one per source)")
    p.add_argument("--rate", type=float, default=20.0, help="packets per second per flow")
    p.add_argument("--hello-interval", type=float, default=0.2)
    p.add_argument("--miss-count", type=int, default=3)
    p.add_argument("--telemetry-interval", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefix", default=None, help="namespace name prefix (default: random x6m......)")
    p.add_argument("--data-dir", default=None, help="accepted for symmetry with mesh.host (unused)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mesh-netns-host %(levelname)s %(message)s")
    try:
        return asyncio.run(_main(args))
    except (ValueError, OSError) as e:
        print(f"mesh netns host: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
