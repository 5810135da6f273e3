#!/usr/bin/env python
"""Mesh data-plane benchmark: 50 nodes on loopback (one process, real UDP).

    python bench/bench_mesh.py [--quick] [--nodes 50] [--trials 20] [--json out.json]

For a grid (5x10) and a random geometric graph it measures:
  * convergence: time until every node has discovered all its neighbours, and
    first-packet route discovery latency for random pairs;
  * for >= 20 trials: kill a relay on the active path of a 100 pkt/s DATA flow;
    detection time (upstream neighbour_lost - kill), time until DATA flows again
    (first delivery of a packet *sent after* the kill), delivery ratio in the
    2 s after the kill; the node is then revived and the mesh re-converges;
  * control overhead: HELLO/RREQ/RREP/RERR bytes per node per second (idle and
    during the trials);
  * fuzz: 10k random/mutated datagrams through the decoder and into a live agent.
Targets: detection <= 3 HELLO intervals (600 ms), repair < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "libs"))

from x0tta6bl4.mesh.agent import MeshAgent, percentile
from x0tta6bl4.mesh.core import CoreConfig
from x0tta6bl4.mesh.packets import (
    DATA,
    HELLO,
    RERR,
    RREP,
    RREQ,
    HelloBody,
    HelloNeighbour,
    Packet,
    PacketError,
    RerrBody,
    RrepBody,
    decode,
    encode,
)
from x0tta6bl4.mesh.runtime import MeshRuntime
from x0tta6bl4.mesh.topology import Topology, grid, random_geometric
from x0tta6bl4.mesh.trials import kill_on_active_path

HELLO_S = 0.2


def pstats(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "p50": round(percentile(xs, 50), 1),
        "p99": round(percentile(xs, 99), 1),
        "max": round(max(xs), 1),
        "mean": round(statistics.fmean(xs), 1),
    }


def control_bytes(rt: MeshRuntime) -> float:
    return sum(a.counters["control_tx_bytes"] for a in rt.agents.values())


async def bench_topology(topo: Topology, trials: int, rate: float, seed: int) -> dict:
    rng = random.Random(seed)
    events: list[dict] = []
    cfg = CoreConfig(hello_interval=HELLO_S, miss_count=3)
    rt = MeshRuntime(topo, config=cfg, seed=seed, event_sink=events.append)
    t0 = time.monotonic()
    await rt.start()
    conv = await rt.wait_converged(timeout=30)
    res: dict = {"topology": topo.name, "nodes": len(topo.nodes), "links": len(topo.links), "diameter": topo.diameter()}
    res["neighbour_convergence_s"] = round(conv, 3)

    # first-packet route discovery latency
    disc = []
    for _ in range(10):
        a, b = rng.sample(topo.nodes, 2)
        t = time.monotonic_ns()
        rt.send(a, b, b"d", ack=True)
        for _ in range(200):
            await asyncio.sleep(0.005)
            if any(ts >= t for _, o, _, ts in rt.agents[b].deliveries if o == a):
                disc.append((time.monotonic_ns() - t) / 1e6)
                break
    res["route_discovery_ms"] = pstats(disc)
    res["full_convergence_s"] = round(time.monotonic() - t0, 3)

    # idle control overhead
    await asyncio.sleep(0.5)
    b0, ts0 = control_bytes(rt), time.monotonic()
    await asyncio.sleep(2.0)
    idle_bytes_s = (control_bytes(rt) - b0) / (time.monotonic() - ts0)
    res["control_idle_bytes_per_node_s"] = round(idle_bytes_s / len(topo.nodes), 1)

    detect, repair, repair_after_detect, ratio = [], [], [], []
    failures = 0
    b1, ts1 = control_bytes(rt), time.monotonic()
    g = topo.graph()
    for _trial in range(trials):
        t = await kill_on_active_path(rt, topo, rng, events, rate)
        if t is None or t.repair_ms is None:
            failures += 1
        if t is None:
            continue
        if t.detect_ms is not None:
            detect.append(t.detect_ms)
        if t.repair_ms is not None:
            repair.append(t.repair_ms)
            if t.detect_ms is not None:
                repair_after_detect.append((t.first_after_ns - t.detected_ns) / 1e6)
        pct = t.delivery_pct(2_000_000_000)
        if pct is not None:
            ratio.append(pct)
    dt = time.monotonic() - ts1
    res["trials"] = trials
    res["trial_failures"] = failures
    res["detection_ms"] = pstats(detect)
    res["repair_ms"] = pstats(repair)
    res["repair_after_detection_ms"] = pstats(repair_after_detect)
    res["delivery_ratio_2s_after_kill_pct"] = pstats(ratio)
    res["control_trials_bytes_per_node_s"] = round((control_bytes(rt) - b1) / dt / len(topo.nodes), 1)
    tel = rt.telemetry()
    res["cpu_pct_process"] = tel[topo.nodes[0]]["cpu_pct"]
    res["rss_mb"] = round(tel[topo.nodes[0]]["rss_bytes"] / 2**20, 1)
    await rt.stop()
    del g
    return res


def fuzz_decoder(n: int, seed: int = 7) -> dict:
    rng = random.Random(seed)
    base = [
        encode(Packet(DATA, "n1", "n1", "n2", body=b"payload" * 3)),
        encode(Packet(RREQ, "n1", "n1", "n49", packet_id=9)),
        encode(Packet(RREP, "n3", "n1", "n49", body=RrepBody(3000))),
        encode(Packet(RERR, "n3", "n3", body=RerrBody((("n9", 4),)))),
        encode(Packet(HELLO, "n3", "n3", body=HelloBody(0, (HelloNeighbour("n1", 10, 5, 6),)))),
    ]
    crashes = rejected = accepted = 0
    samples = []
    for i in range(n):
        if i % 2:
            d = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
        else:
            w = bytearray(rng.choice(base))
            for _ in range(rng.randrange(1, 5)):
                op = rng.randrange(3)
                if op == 0:
                    w[rng.randrange(len(w))] = rng.getrandbits(8)
                elif op == 1:
                    del w[rng.randrange(len(w)) :]
                else:
                    w.insert(rng.randrange(len(w) + 1), rng.getrandbits(8))
                if not w:
                    break
            d = bytes(w)
        samples.append(d)
        try:
            decode(d)
            accepted += 1
        except PacketError:
            rejected += 1
        except Exception:  # noqa: BLE001 - counting exactly these: the decoder must raise PacketError only
            crashes += 1
    return {"packets": n, "rejected": rejected, "accepted": accepted, "crashes": crashes, "_samples": samples}


async def fuzz_agent(samples: list[bytes]) -> dict:
    evil = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    evil.bind(("127.0.0.1", 0))
    evil.setblocking(False)
    a = MeshAgent("n0", peers={"n1": evil.getsockname()[:2], "n3": evil.getsockname()[:2]})
    await a.start()
    for i, d in enumerate(samples):
        try:
            evil.sendto(d, a.address)
        except BlockingIOError:
            await asyncio.sleep(0.001)
        if i % 50 == 0:
            await asyncio.sleep(0.002)  # pace: keep within the receive buffer
    await asyncio.sleep(0.3)
    c = a.counters
    out = {
        "datagrams_sent": len(samples),
        "received": c["rx_packets"],
        "malformed_dropped": c["dropped.malformed"],
        "spoofed_dropped": c["dropped.spoofed_sender"],
        "internal_errors": c["dropped.internal_error"] + c["internal_errors"],
        "agent_alive": a.running,
    }
    await a.shutdown()
    evil.close()
    return out


async def main_async(args) -> dict:
    n = args.nodes
    topos = [grid(n), random_geometric(n, seed=args.seed)]
    report = {"config": {"nodes": n, "trials": args.trials, "rate_pps": args.rate, "hello_s": HELLO_S, "miss": 3,
                         "quick": args.quick}}  # fmt: skip
    t0 = time.monotonic()
    fz = fuzz_decoder(10_000)
    samples = fz.pop("_samples")
    report["fuzz_decoder"] = fz
    report["fuzz_agent"] = await fuzz_agent(samples)
    for topo in topos:
        report[topo.name] = await bench_topology(topo, args.trials, args.rate, args.seed)
        print(f"  {topo.name} done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    report["wall_s"] = round(time.monotonic() - t0, 1)
    return report


def render(r: dict) -> str:
    cfg = r["config"]
    lines = [f"mesh bench  ({cfg['nodes']} nodes, {cfg['trials']} trials/topology, wall {r['wall_s']} s)"]
    fz, fa = r["fuzz_decoder"], r["fuzz_agent"]
    lines.append(f"fuzz decoder: {fz['packets']} packets, {fz['rejected']} rejected, {fz['accepted']} accepted, "
                 f"{fz['crashes']} crashes")  # fmt: skip
    lines.append(f"fuzz agent:   {fa['received']} datagrams received, {fa['malformed_dropped']} malformed dropped, "
                 f"internal errors {fa['internal_errors']}, alive={fa['agent_alive']}")  # fmt: skip
    for v in r.values():
        if not isinstance(v, dict) or "topology" not in v:
            continue
        lines.append(f"\n[{v['topology']}] {v['nodes']} nodes, {v['links']} links, diameter {v['diameter']}")
        lines.append(f"  neighbour convergence             {v['neighbour_convergence_s']} s")
        lines.append(f"  route discovery (ms)              {v['route_discovery_ms']}")
        for key in ("detection_ms", "repair_ms", "repair_after_detection_ms", "delivery_ratio_2s_after_kill_pct"):
            lines.append(f"  {key:<34}{v[key]}")
        lines.append(f"  trial failures                    {v['trial_failures']} / {v['trials']}")
        lines.append(f"  control overhead                  idle {v['control_idle_bytes_per_node_s']} B/node/s, "
                     f"during trials {v['control_trials_bytes_per_node_s']} B/node/s")  # fmt: skip
        ok_d = v["detection_ms"].get("p99", 1e9) <= 3 * HELLO_S * 1000
        ok_r = v["repair_ms"].get("p99", 1e9) < 1000
        lines.append(f"  targets: detection p99 <= 600 ms: {'PASS' if ok_d else 'FAIL'};"
                     f" repair p99 < 1000 ms: {'PASS' if ok_r else 'FAIL'}")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 trials per topology (< 60 s)")
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--rate", type=float, default=100.0, help="DATA packets/s of the measured flow")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=str, default="")
    args = ap.parse_args()
    if args.trials is None:
        args.trials = 6 if args.quick else 20
    report = asyncio.run(main_async(args))
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    fz, fa = report["fuzz_decoder"], report["fuzz_agent"]
    return 0 if fz["crashes"] == 0 and fa["internal_errors"] == 0 and fa["agent_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
