"""Record labelled telemetry from real meshes under injected faults (the analyzer's live data set).

    sudo .venv/bin/python tools/record_live_faults.py --all [--out datasets/live-faults]
    .venv/bin/python tools/record_live_faults.py --mode loopback --topology grid:16 --seed 3 \
        --split train --name lo-grid16 [--faults kill,slow,loss,flap] [--per-fault 2]

What runs is what the stack runs: the mesh host (``x0tta6bl4.mesh.host``, every node an agent on
127.0.0.1 in one process, or ``x0tta6bl4.mesh.netns_host``, every node a process in its own network
namespace with veth links; root) bridged to a private nats-server, with DATA flows between nodes
far apart. The recorder subscribes to what the monitor subscribes to (``mesh.telemetry.*``,
``mesh.event.*``), rebuilds the monitor's view with the monitor's own rules
(:mod:`x0tta6bl4.mapek.monitor`: a node is down when enough neighbours report it lost and its own
report is older than 0.5 s, or when it is silent for 2 s; a newer report of the node withdraws the
loss reports; security evidence counts against the peer) and every ``--step`` seconds stores the
view as one ``TelemetryWindow`` -- the analyzer's input.

Episodes: after a clean baseline a fault is injected on one node (the *victim*, the node at
fault), held for ``--hold`` seconds, then healed; the next episode starts once every node reports
again. Faults, with the real tool that makes them:

==========  ================================================================================
kill        the node crashes: SIGKILL of its process (namespaces) / agent killed (loopback)
slow        every datagram the node sends is delayed by 50-250 ms (agent-level: tc netem is
            not available on this kernel)
loss        10-50 % of what the node receives is dropped: nftables ``numgen random`` in its
            namespace / agent-level drop on loopback
flap        all the node's links go down and come back every 1-2 s (``ip link set down/up`` of
            its veth pairs / agent-level block)
congestion  (namespaces only) the node's links are shaped by ``tc tbf`` to 200-400 kbit/s with a
            queue of 80-200 ms and a cross-traffic process in its namespace sends 1.5x that rate
            to its neighbours: its HELLOs and the DATA it relays wait in a full queue or are dropped
==========  ================================================================================

Writes ``NAME.json`` + ``NAME.pb.gz`` (:mod:`x0tta6bl4.analysis.livedata`) and adds the session to
``manifest.json``. ``--all`` records the whole plan (:data:`PLAN`, ~35 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "libs"))

from x0tta6bl4.analysis.livedata import FAULTS, Episode, Session, write_session  # noqa: E402
from x0tta6bl4.bus import subjects  # noqa: E402
from x0tta6bl4.bus.codec import new_meta  # noqa: E402
from x0tta6bl4.ids import derive_id  # noqa: E402
from x0tta6bl4.mapek import monitor as assessing  # noqa: E402
from x0tta6bl4.mapek.state import MeshView  # noqa: E402
from x0tta6bl4.mesh.topology import Topology, parse_spec  # noqa: E402
from x0tta6bl4.v1 import events_pb2, mesh_pb2  # noqa: E402

log = logging.getLogger("record-live-faults")
C = mesh_pb2.MeshCommand
NS = 1_000_000_000

PLAN: list[dict[str, Any]] = [
    # training: ring, grid and scale-free meshes
    {"name": "nn-ring6", "split": "train", "mode": "netns", "topology": "ring:6", "seed": 1, "flows": ["n0:n3"],
     "per_fault": 3},
    {"name": "nn-grid9", "split": "train", "mode": "netns", "topology": "grid:9", "seed": 2, "flows": ["n0:n8"],
     "per_fault": 3},
    {"name": "lo-grid16", "split": "train", "mode": "loopback", "topology": "grid:16", "seed": 3,
     "flows": ["n0:n15", "n3:n12"], "per_fault": 3},
    {"name": "lo-ba14", "split": "train", "mode": "loopback", "topology": "ba:14", "seed": 4, "flows": None,
     "per_fault": 3},
    # validation (temperature scaling, model selection): another ring size
    {"name": "nn-ring8", "split": "val", "mode": "netns", "topology": "ring:8", "seed": 5, "flows": ["n0:n4"],
     "per_fault": 2},
    # held out: random geometric meshes, a topology family no training session ran
    {"name": "nn-rgg10", "split": "test", "mode": "netns", "topology": "rgg:10", "seed": 7, "flows": None,
     "per_fault": 3},
    {"name": "lo-rgg20", "split": "test", "mode": "loopback", "topology": "rgg:20", "seed": 8, "flows": None,
     "per_fault": 3},
]
NETNS_FAULTS = ("kill", "slow", "loss", "flap", "congestion")
LOOPBACK_FAULTS = ("kill", "slow", "loss", "flap")


# ------------------------------------------------------------------------------- monitor's view
def compact(t: events_pb2.NodeTelemetry) -> None:
    """Drop what no detector reads (counters, routes, refused packets, kernel signals, the report's
    random id) and round measurements to 4 significant digits: keeps the recording a few MB."""
    for f in ("counters", "routes", "rejected_packets", "kernel", "avoided"):
        t.ClearField(f)
    ts = t.meta.ts_unix_ns
    t.ClearField("meta")
    t.meta.ts_unix_ns = ts
    for f in ("p99_latency_ms", "loss_pct", "throughput_bps", "cpu_pct", "mem_pct"):
        setattr(t, f, float(f"{getattr(t, f):.4g}"))
    for q in t.links:
        for f in ("rssi_dbm", "snr_db", "loss_rate", "latency_ms", "link_age_s"):
            setattr(q, f, float(f"{getattr(q, f):.4g}"))


@dataclass
class MonitorView:
    """The monitor's merge of node reports and events (stages/monitor.py), with its pure functions."""
    own_report_fresh_s: float = 0.5
    stale_after_s: float = 2.0
    view: MeshView = field(default_factory=MeshView)
    losses: assessing.LossReports = field(default_factory=assessing.LossReports)
    seen_ns: dict[str, int] = field(default_factory=dict)

    def telemetry(self, t: events_pb2.NodeTelemetry) -> None:
        if t.meta.ts_unix_ns < self.seen_ns.get(t.node_id, 0):
            return
        self.seen_ns[t.node_id] = t.meta.ts_unix_ns
        compact(t)
        t.reachable = True
        self.view.update(t)
        reporters = self.losses.reporters.get(t.node_id, {})
        for r in [r for r, at in reporters.items() if at < t.meta.ts_unix_ns]:
            del reporters[r]
        if not reporters:
            self.losses.clear(t.node_id)

    def event(self, ev: mesh_pb2.MeshEvent) -> None:
        now = time.time_ns()
        if ev.kind == "neighbour_lost" and ev.peer:
            self.losses.report(ev.peer, ev.node_id, min(ev.meta.ts_unix_ns, now))
            self.declare(ev.peer, now)
        elif ev.kind.startswith("security") and ev.peer in self.view.nodes:
            t = events_pb2.NodeTelemetry()
            t.CopyFrom(self.view.nodes[ev.peer])
            t.failed_auth += 1
            self.view.update(t)

    def declare(self, node: str, now: int) -> None:
        peer = self.view.nodes.get(node)
        if peer is None or not peer.reachable or not self.losses.declared_down(node, self.view):
            return
        if (now - self.seen_ns.get(node, 0)) / NS < self.own_report_fresh_s:
            return
        assessing.mark_unreachable(self.view, node, now)

    def tick(self) -> None:
        now = time.time_ns()
        for node in [n for n in self.losses.reporters if n in self.view.nodes]:
            self.declare(node, now)
        for node, t in list(self.view.nodes.items()):
            if t.reachable and now - t.meta.ts_unix_ns > self.stale_after_s * NS:
                assessing.mark_unreachable(self.view, node, now)

    def window(self, key: str) -> events_pb2.TelemetryWindow:
        nodes = []
        for t in self.view.snapshot():
            c = events_pb2.NodeTelemetry()
            c.CopyFrom(t)
            nodes.append(c)
        return events_pb2.TelemetryWindow(meta=new_meta("recorder", event_id=derive_id("window", key)),
                                          nodes=nodes)

    def all_reporting(self, nodes: list[str]) -> bool:
        return all(n in self.view.nodes and self.view.nodes[n].reachable for n in nodes)


# ----------------------------------------------------------------------------------- congestion
BLASTER = r"""
import socket, sys, time
rate, targets = float(sys.argv[1]), sys.argv[2:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"\0" * 1000
gap = 1000 * 8 / rate
nxt = time.monotonic()
while True:
    for ip in targets:
        try:
            s.sendto(payload, (ip, 9))
        except OSError:
            pass
    nxt += gap
    time.sleep(max(0.0, nxt - time.monotonic()))
"""


class Congestion:
    """tc tbf on every veth of a namespaced node + a cross-traffic sender in its namespace."""

    def __init__(self, mesh: Any, node: str, rate_kbit: int, queue_ms: int, overload: float = 1.5):
        self.mesh, self.node = mesh, node
        self.ns = mesh.nodes[node].ns
        self.ifaces, self.targets = [], []
        for pair, (ifname, a, ip_a, _b, ip_b) in mesh.links.items():
            if node in pair:
                self.ifaces.append(ifname)
                self.targets.append(ip_b if node == a else ip_a)
        self.rate_kbit, self.queue_ms, self.overload = rate_kbit, queue_ms, overload
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        for ifname in self.ifaces:
            subprocess.run(["ip", "netns", "exec", self.ns, "tc", "qdisc", "replace", "dev", ifname, "root", "tbf",
                            "rate", f"{self.rate_kbit}kbit", "burst", "4kb", "latency", f"{self.queue_ms}ms"],
                           check=True, capture_output=True, timeout=20)
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", BLASTER,
                                      str(self.rate_kbit * 1000 * self.overload), *self.targets],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for ifname in self.ifaces:
            subprocess.run(["ip", "netns", "exec", self.ns, "tc", "qdisc", "del", "dev", ifname, "root"],
                           check=False, capture_output=True, timeout=20)


# ------------------------------------------------------------------------------------- session
def far_flows(topo: Topology, rng: random.Random, count: int = 2) -> list[tuple[str, str]]:
    """Flows between nodes far apart (the diameter's ends first)."""
    import networkx as nx
    g = nx.Graph()
    g.add_nodes_from(topo.nodes)
    g.add_edges_from(tuple(link) for link in topo.links)
    dist = dict(nx.all_pairs_shortest_path_length(g))
    pairs = sorted(((dist[a][b], a, b) for a in topo.nodes for b in topo.nodes if a < b and b in dist[a]),
                   reverse=True)
    out: list[tuple[str, str]] = []
    used: set[str] = set()
    for _, a, b in pairs:
        if a not in used and b not in used:
            out.append((a, b))
            used |= {a, b}
        if len(out) == count:
            break
    return out


class Recording:
    def __init__(self, spec: dict[str, Any], out: pathlib.Path, hold_s: float, pre_s: float, step_s: float,
                 per_fault: int, faults: list[str] | None):
        self.spec, self.out = spec, out
        self.hold_s, self.pre_s, self.step_s, self.per_fault = hold_s, pre_s, step_s, per_fault
        self.mode = spec["mode"]
        self.topo = parse_spec(spec["topology"], seed=spec["seed"])
        self.rng = random.Random(spec["seed"])
        self.faults = faults or list(NETNS_FAULTS if self.mode == "netns" else LOOPBACK_FAULTS)
        if self.mode != "netns" and "congestion" in self.faults:
            raise SystemExit("congestion needs namespaces (tc tbf on veth links): use --mode netns")
        flows = spec.get("flows")
        self.flows = [tuple(f.split(":")) for f in flows] if flows else far_flows(self.topo, self.rng)
        self.monitor = MonitorView()
        self.windows: list[events_pb2.TelemetryWindow] = []
        self.host: Any = None
        self._flappers: list[asyncio.Task] = []

    # -- snapshots
    async def snapshots(self) -> None:
        while True:
            await asyncio.sleep(self.step_s)
            self.monitor.tick()
            self.windows.append(self.monitor.window(f"{self.spec['name']}:{len(self.windows)}"))

    async def on_msg(self, msg) -> None:
        try:
            if msg.subject.startswith("mesh.telemetry."):
                t = events_pb2.NodeTelemetry()
                t.ParseFromString(msg.data)
                self.monitor.telemetry(t)
            elif msg.subject.startswith("mesh.event."):
                ev = mesh_pb2.MeshEvent()
                ev.ParseFromString(msg.data)
                self.monitor.event(ev)
        except Exception as e:  # noqa: BLE001 - a bad message must not stop the recording
            log.warning("skipped a message on %s: %s", msg.subject, e)

    # -- faults
    async def cmd(self, node: str, kind: int, **params: Any) -> str:
        """A MeshCommand applied by the host (what ``mesh.cmd.<node>`` does), e.g. FAULT type=loss pct=20."""
        return await self.host.apply(node, kind, "", {k: str(v) for k, v in params.items()})

    async def inject(self, fault: str, victim: str) -> tuple[dict, Any]:
        r = self.rng
        if fault == "kill":
            await self.cmd(victim, C.KIND_FAULT, type="kill")
            return {}, None
        if fault == "slow":
            ms = r.choice([50, 80, 120, 180, 250])
            await self.cmd(victim, C.KIND_FAULT, type="latency", ms=ms)
            return {"ms": ms}, None
        if fault == "loss":
            pct = r.choice([10, 15, 20, 30, 50])
            await self.cmd(victim, C.KIND_FAULT, type="loss", pct=pct)
            return {"pct": pct}, None
        if fault == "flap":
            period = r.choice([1.0, 1.5, 2.0])
            peers = self.topo.neighbours(victim)

            async def flap() -> None:
                down = True
                while True:
                    for p in peers:
                        await self.cmd(victim, C.KIND_FAULT, type="block" if down else "unblock", peer=p)
                        if self.mode == "loopback":   # the agent-level block is one-sided: cut both ends
                            await self.cmd(p, C.KIND_FAULT, type="block" if down else "unblock", peer=victim)
                    down = not down
                    await asyncio.sleep(period)
            task = asyncio.create_task(flap())
            return {"period_s": period}, task
        if fault == "congestion":
            rate = r.choice([200, 300, 400])
            queue = r.choice([80, 120, 200])
            c = Congestion(self.host.mesh, victim, rate, queue)
            await asyncio.to_thread(c.start)
            return {"rate_kbit": rate, "queue_ms": queue, "overload": c.overload}, c
        raise ValueError(f"unknown fault {fault!r}")

    async def heal(self, fault: str, victim: str, handle: Any) -> None:
        if isinstance(handle, asyncio.Task):
            handle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handle
        if isinstance(handle, Congestion):
            await asyncio.to_thread(handle.stop)
        if fault == "flap" and self.mode == "loopback":
            for p in self.topo.neighbours(victim):
                await self.cmd(p, C.KIND_FAULT, type="unblock", peer=victim)
        await self.cmd(victim, C.KIND_HEAL)      # impairments cleared, a killed node started again

    async def wait_all_reporting(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.monitor.all_reporting(self.topo.nodes):
                return True
            await asyncio.sleep(0.1)
        return False

    def victims(self) -> list[tuple[str, str]]:
        """(fault, victim) pairs: each fault ``per_fault`` times, victims drawn from the non-endpoint nodes
        (relays of the flows first), shuffled."""
        ends = {n for f in self.flows for n in f}
        cand = [n for n in self.topo.nodes if n not in ends and self.topo.neighbours(n)]
        order: list[tuple[str, str]] = []
        for fault in self.faults:
            picks = self.rng.sample(cand, min(self.per_fault, len(cand)))
            order += [(fault, v) for v in picks]
        self.rng.shuffle(order)
        return order

    # -- run
    async def run(self) -> Session:
        from x0tta6bl4.bus.connection import connect, ensure_topology
        from x0tta6bl4.runtime.stack import NatsServer
        store = pathlib.Path(tempfile.mkdtemp(prefix="x6rec-"))
        for k in [k for k in os.environ if k.startswith("X0TTA6BL4_NATS_")]:
            os.environ.pop(k)          # a private, open broker: no stack credentials
        server = NatsServer(store).start()
        nc = None
        snap_task = None
        try:
            nc = await connect(server.url, "recorder")
            await ensure_topology(nc.jetstream())
            await nc.subscribe(subjects.MESH_TELEMETRY_ALL, cb=self.on_msg)
            await nc.subscribe(subjects.MESH_EVENT_ALL, cb=self.on_msg)
            if self.mode == "netns":
                from x0tta6bl4.mesh.netns_host import NetnsHost
                self.host = NetnsHost(server.url, self.topo, traffic=dict(self.flows), rate=20.0,
                                      telemetry_interval=0.5)
                await self.host.start()
            else:
                from x0tta6bl4.mesh.host import MeshHost
                self.host = MeshHost(server.url, self.topo, telemetry_interval=0.25, seed=self.spec["seed"])
                await self.host.start()
                for a, b in self.flows:
                    self.host.traffic(a, b, 20.0)
            if not await self.wait_all_reporting(60):
                raise RuntimeError("the mesh did not come up: not every node reports")
            await asyncio.sleep(3.0)         # routes found, flows acked
            snap_task = asyncio.create_task(self.snapshots())
            episodes: list[Episode] = []
            plan = self.victims()
            for i, (fault, victim) in enumerate(plan):
                await asyncio.sleep(self.pre_s)
                on = len(self.windows)
                params, handle = await self.inject(fault, victim)
                log.info("%s: episode %d/%d %s on %s %s", self.spec["name"], i + 1, len(plan), fault, victim, params)
                print(json.dumps({"session": self.spec["name"], "episode": i + 1, "of": len(plan), "fault": fault,
                                  "victim": victim, "params": params}), flush=True)
                await asyncio.sleep(self.hold_s)
                off = len(self.windows)
                await self.heal(fault, victim, handle)
                episodes.append(Episode(fault, victim, on, off, params))
                if not await self.wait_all_reporting(30):
                    log.warning("after healing %s on %s not every node reports", fault, victim)
            await asyncio.sleep(self.pre_s)
            meta = {"mode": self.mode, "topology": self.spec["topology"], "seed": self.spec["seed"],
                    "nodes": list(self.topo.nodes), "links": sorted(sorted(link) for link in self.topo.links),
                    "flows": [list(f) for f in self.flows], "step_s": self.step_s, "hold_s": self.hold_s,
                    "recorded_unix": int(time.time()),
                    "telemetry_interval_s": 0.5 if self.mode == "netns" else 0.25}
            return Session(self.spec["name"], self.spec["split"], meta, list(self.windows), episodes)
        finally:
            if snap_task is not None:
                snap_task.cancel()
            if self.host is not None:
                with contextlib.suppress(Exception):
                    await self.host.stop()
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
            server.stop()
            shutil.rmtree(store, ignore_errors=True)


def add_to_manifest(out: pathlib.Path, s: Session) -> None:
    mp = out / "manifest.json"
    manifest = json.loads(mp.read_text()) if mp.exists() else {"sessions": []}
    manifest["sessions"] = [e for e in manifest["sessions"] if e["name"] != s.name]
    manifest["sessions"].append({"name": s.name, "split": s.split, "mode": s.meta["mode"],
                                 "topology": s.meta["topology"], "episodes": len(s.episodes),
                                 "snapshots": len(s.windows)})
    manifest["sessions"].sort(key=lambda e: (("train", "val", "test").index(e["split"]), e["name"]))
    manifest["faults"] = FAULTS
    mp.write_text(json.dumps(manifest, indent=1) + "\n")


def record(spec: dict[str, Any], args: argparse.Namespace) -> Session:
    rec = Recording(spec, args.out, args.hold, args.pre, args.step, spec.get("per_fault", args.per_fault),
                    args.faults.split(",") if args.faults else None)
    t0 = time.monotonic()
    s = asyncio.run(rec.run())
    _jp, pp = write_session(args.out, s)
    add_to_manifest(args.out, s)
    print(json.dumps({"session": s.name, "split": s.split, "snapshots": len(s.windows),
                      "episodes": len(s.episodes), "bytes": pp.stat().st_size,
                      "seconds": round(time.monotonic() - t0, 1)}), flush=True)
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "datasets" / "live-faults")
    ap.add_argument("--all", action="store_true", help="record every session of the plan")
    ap.add_argument("--only", default="", help="with --all: only these sessions (comma-separated names)")
    ap.add_argument("--name", default="", help="session name (one session)")
    ap.add_argument("--split", choices=["train", "val", "test"], default="train")
    ap.add_argument("--mode", choices=["loopback", "netns"], default="loopback")
    ap.add_argument("--topology", default="grid:9")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flows", default="", help="SRC:DST[,SRC:DST] (default: two flows between far nodes)")
    ap.add_argument("--faults", default="", help=f"comma-separated, of {', '.join(FAULTS)} (default: all the mode has)")
    ap.add_argument("--per-fault", type=int, default=2, help="episodes per fault (different victims)")
    ap.add_argument("--hold", type=float, default=12.0, help="seconds a fault is held")
    ap.add_argument("--pre", type=float, default=12.0, help="seconds of clean telemetry before each fault")
    ap.add_argument("--step", type=float, default=0.5, help="seconds between snapshots")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.faults:
        bad = [f for f in args.faults.split(",") if f not in FAULTS]
        if bad:
            ap.error(f"unknown fault(s) {bad}: use {', '.join(FAULTS)}")
    specs = PLAN if args.all else [{"name": args.name or f"{args.mode}-{args.topology.replace(':', '')}-{args.seed}",
                                    "split": args.split, "mode": args.mode, "topology": args.topology,
                                    "seed": args.seed, "flows": args.flows.split(",") if args.flows else None}]
    if args.only:
        specs = [s for s in specs if s["name"] in args.only.split(",")]
    if any(s["mode"] == "netns" for s in specs) and os.geteuid() != 0:
        print("record-live-faults: namespace sessions need root (ip netns, nft, tc)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    for spec in specs:
        record(spec, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
