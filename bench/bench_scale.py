#!/usr/bin/env python3
"""The control plane at mesh scale (issue #20): N synthetic nodes at 1 Hz against a real secured stack.

For each N (default 1,000 and 10,000):

- a generator process publishes a real ``NodeTelemetry`` per node per second on ``mesh.telemetry.<node>``
  under a mesh host's own bus identity (TLS, nkeys, permissions: exactly these nodes), each node with its
  grid neighbours and links (the size of a real node's report), like node agents do (no PubAck);
- the stack runs monitor, analyzer and planner (real processes); after ``--duration`` seconds of load one
  node stops reporting; kill to plan is from its last report to the first ``mapek.plan`` naming it as
  root cause (the liveness timeout is part of it, shown apart: ``X0TTA6BL4_STALE_AFTER_S`` = 2 s, plus the
  1 s ``X0TTA6BL4_SILENCE_HOLD_S`` of a node no neighbour reports lost, as a generated node is);
- every second: the monitor consumer's backlog (pending messages and their age in seconds at the
  publish rate), what was delivered and acknowledged; at the end, telemetry dropped unread (published,
  never delivered, no longer pending), healthy nodes declared critical (false deaths), windows' sizes;
- CPU per process (each service, nats-server, the generator) and memory (RSS) per service, per node;
- in the same run, beside them: raw nats-py consumption of the same telemetry (a core subscription that
  decodes every message and does nothing else), its rate and CPU: the ceiling a Python consumer has here.

Then monitor replicas 1 / 2 / 4 (``--replicas``): monitors only, the generator at the largest N (or
``--replica-nodes``), telemetry partitioned by node across them (X0TTA6BL4_MONITOR_PARTITIONS = the number
of replicas, replica i on partition i: its own durable consumer ``monitor-telemetry-p<i>``; ``--shared``:
all on the one shared consumer instead), and the messages per second each replica handles (acknowledged on
its partition's consumer) and all together, beside the raw nats-py baseline measured in the same run.

Figures on a busy machine are indicative only. ``--quick``: N = 1,000, 8 s, replicas 1, 2 and 4.

    python bench/bench_scale.py [--nodes 1000,10000] [--duration 20] [--replicas 1,2,4] [--replica-nodes N]
                                [--shared] [--quick] [--json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil

HERE = pathlib.Path(__file__).resolve().parent
STALE_AFTER_S = 2.0
SILENCE_HOLD_S = 1.0     # a silent node no neighbour reported lost is marked this long after its staleness
LIVENESS_S = STALE_AFTER_S + SILENCE_HOLD_S


# ---- child processes ----------------------------------------------------------------------------------
def grid(n: int, width: int = 100) -> dict[str, list[str]]:
    width = min(width, n)
    out = {}
    for i in range(n):
        x = i % width
        out[f"n{i}"] = [f"n{j}" for j in (i - 1 if x else -1, i + 1 if x < width - 1 else -1, i - width, i + width)
                        if 0 <= j < n]
    return out


async def generate(a: argparse.Namespace) -> None:
    """Child: publish every node's report once per second until SIGTERM; when ``a.kill_file`` appears,
    stop node ``a.kill`` and write the time of its last report next to it. Prints the count published."""
    import random

    import nats

    from x0tta6bl4.bus import subjects
    from x0tta6bl4.bus.connection import NatsCredentials
    from x0tta6bl4.bus.publisher import Publisher
    from x0tta6bl4.ids import new_meta
    from x0tta6bl4.v1 import events_pb2
    creds = NatsCredentials.in_secrets(pathlib.Path(a.secrets), a.identity)
    nc = await nats.connect(servers=a.url.split(","), name=a.identity, pending_size=64 * 1024 * 1024,
                            **(creds.options() if creds else {}))
    pub = Publisher(nc, a.identity)
    rng = random.Random(1)
    mesh = grid(a.nodes)
    templates = {}
    for node, nb in mesh.items():
        t = events_pb2.NodeTelemetry(node_id=node, reachable=True, neighbours=nb, cpu_pct=rng.uniform(1, 30),
                                     mem_pct=rng.uniform(10, 50), p99_latency_ms=rng.uniform(1, 10))
        for p in nb:
            t.links.add(peer=p, loss_rate=0.0, latency_ms=rng.uniform(0.1, 2))
        templates[node] = t
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    kill_file = pathlib.Path(a.kill_file)
    killed, last_of_killed, published, started = False, 0, 0, time.monotonic()
    longest = 0.0          # the longest round: about the longest gap between two reports of a node
    nodes = list(mesh)
    slices = 20
    while not stop.is_set():
        round_start = time.monotonic()
        if not killed and kill_file.exists():
            killed = True
            pathlib.Path(str(kill_file) + ".done").write_text(str(last_of_killed))
        for k in range(slices):
            for node in nodes[k::slices]:
                if killed and node == a.kill:
                    continue
                t = templates[node]
                t.meta.CopyFrom(new_meta(node))
                await pub.emit(subjects.telemetry(node), t)
                published += 1
                if node == a.kill:
                    last_of_killed = t.meta.ts_unix_ns
            await asyncio.sleep(max(0.0, round_start + (k + 1) / slices - time.monotonic()))
        longest = max(longest, time.monotonic() - round_start)
    await nc.flush()
    await nc.close()
    print(json.dumps({"published": published, "seconds": time.monotonic() - started, "longest_round_s": longest}),
          flush=True)


async def raw(a: argparse.Namespace) -> None:
    """Child: the raw baseline - a core subscription on every node's telemetry that decodes each message
    and does nothing else. Prints messages received and the time it was subscribed."""
    import nats

    from x0tta6bl4.bus.connection import NatsCredentials
    from x0tta6bl4.v1 import events_pb2
    creds = NatsCredentials.in_secrets(pathlib.Path(a.secrets), a.identity)
    nc = await nats.connect(servers=a.url.split(","), name="raw-baseline", **(creds.options() if creds else {}))
    got = 0

    async def on(msg: Any) -> None:
        nonlocal got
        events_pb2.NodeTelemetry.FromString(msg.data)
        got += 1
    await nc.subscribe("mesh.telemetry.>", cb=on, pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    started = time.monotonic()
    await stop.wait()
    print(json.dumps({"received": got, "seconds": time.monotonic() - started}), flush=True)
    await nc.close()


def handler_cost(n: int) -> dict[str, float]:
    """CPU per report in the monitor's own handlers, in this process on the in-memory bus (the service's
    composition root, no broker: decoding, the NATS client and TLS are not in it): two rounds of n nodes."""
    import tempfile as tf
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))     # services/ (the monitor's composition root)

    from services.monitor.main import MonitorSettings, build, dependencies
    from x0tta6bl4.bus import subjects
    from x0tta6bl4.bus.memory import TestBus
    from x0tta6bl4.ids import new_meta
    from x0tta6bl4.v1 import events_pb2

    with tf.TemporaryDirectory() as d:
        s = MonitorSettings(data_dir=d, monitor_collector="off", discover_hosts=False)
        deps = dependencies(s)
        bus = TestBus(build(s, deps))
        mesh = grid(n)

        async def rounds() -> float:
            t0 = time.process_time()
            for _ in range(2):
                for node, nb in mesh.items():
                    t = events_pb2.NodeTelemetry(meta=new_meta(node), node_id=node, reachable=True, neighbours=nb,
                                                 cpu_pct=10)
                    for p in nb:
                        t.links.add(peer=p, latency_ms=1.0)
                    await bus.publish(subjects.telemetry(node), t)
            return time.process_time() - t0
        cpu = asyncio.run(rounds())
    per = cpu / (2 * n)
    return {"cpu_per_report_us": round(per * 1e6, 1), "reports_per_cpu_s": round(1 / per)}


# ---- the measuring process ------------------------------------------------------------------------------
def spawn(mode: str, **kw: Any) -> subprocess.Popen:
    args = [sys.executable, str(HERE / "bench_scale.py"), mode]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def finish(p: subprocess.Popen) -> dict:
    p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


class CPU:
    """CPU seconds of a set of processes between start() and stop(); RSS at stop()."""

    def __init__(self, pids: dict[str, int]):
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.t0: dict[str, float] = {}
        self.wall = 0.0

    def _cpu(self, p: psutil.Process) -> float:
        try:
            total = sum(p.cpu_times()[:2])
            for c in p.children(recursive=True):
                total += sum(c.cpu_times()[:2])
            return total
        except psutil.Error:
            return 0.0

    def start(self) -> None:
        self.t0 = {n: self._cpu(p) for n, p in self.procs.items()}
        self.wall = time.monotonic()

    def stop(self) -> dict[str, dict[str, float]]:
        wall = time.monotonic() - self.wall
        out = {}
        for n, p in self.procs.items():
            try:
                rss = p.memory_info().rss / 2**20
            except psutil.Error:
                rss = 0.0
            out[n] = {"cpu_pct": round(100 * (self._cpu(p) - self.t0[n]) / wall, 1), "rss_mb": round(rss, 1)}
        return out


async def consumer_state(js: Any, durable: str = "monitor-telemetry") -> dict[str, int]:
    ci = await js.consumer_info("MESH", durable)
    return {"pending": int(ci.num_pending or 0), "ack_pending": int(ci.num_ack_pending or 0),
            "delivered": int(ci.delivered.consumer_seq or 0),
            "handled": int(ci.delivered.consumer_seq or 0) - int(ci.num_ack_pending or 0)}


def stack_for(tmp: pathlib.Path, services: tuple[str, ...], replicas: int = 1, partitions: int = 1) -> Any:
    from x0tta6bl4.runtime.stack import Stack
    return Stack(tmp, services, replicas=replicas, secure=True, monitor_partitions=partitions,
                 env={"X0TTA6BL4_MONITOR_COLLECTOR": "off", "X0TTA6BL4_DISCOVER_HOSTS": "false",
                      "X0TTA6BL4_STALE_AFTER_S": str(STALE_AFTER_S),
                      "X0TTA6BL4_SILENCE_HOLD_S": str(SILENCE_HOLD_S)})


async def run_scale(n: int, duration: float, tmp: pathlib.Path) -> dict[str, Any]:
    from x0tta6bl4.bus import subjects
    from x0tta6bl4.bus.permissions import MESH_HOST_PREFIX, OPERATOR
    from x0tta6bl4.v1 import common_pb2, events_pb2

    stack = stack_for(tmp, ("monitor", "analyzer", "planner"))
    stack.start(120)
    gen = rawp = None
    try:
        mesh = grid(n)
        stack.add_mesh_host("gen", list(mesh))
        nc = await stack.connect()
        js = nc.jetstream()
        plans: list[tuple[float, events_pb2.Plan]] = []
        criticals: list[tuple[float, str]] = []
        windows: list[int] = []

        async def on_plan(msg: Any) -> None:
            plans.append((time.time(), events_pb2.Plan.FromString(msg.data)))

        async def on_health(msg: Any) -> None:
            ch = events_pb2.HealthChange.FromString(msg.data)
            if ch.node_id and ch.current == common_pb2.HEALTH_CRITICAL:
                criticals.append((time.time(), ch.node_id))

        async def on_window(msg: Any) -> None:
            windows.append(len(msg.data))
        await nc.subscribe(subjects.MAPEK_PLAN, cb=on_plan)
        await nc.subscribe(subjects.MAPEK_HEALTH, cb=on_health)
        await nc.subscribe(subjects.MAPEK_TELEMETRY, cb=on_window)
        victim = f"n{n // 2 + 50 if n > 100 else n // 2}"
        kill_file = tmp / "kill"
        secrets = stack.secrets.root
        rawp = spawn("raw", url=stack.url, secrets=secrets, identity=OPERATOR)
        gen = spawn("generate", url=stack.url, secrets=secrets, identity=MESH_HOST_PREFIX + "gen", nodes=n,
                    kill=victim, kill_file=kill_file)
        pids = {sp.name + (f"-{sp.index}" if sp.index else ""): sp.proc.pid for sp in stack.procs}
        pids |= {"nats-server": stack.nats.pid, "generator": gen.pid, "raw-baseline": rawp.pid}
        await asyncio.sleep(3)                       # the first rounds: every node known
        cpu = CPU(pids)
        cpu.start()
        samples = []
        first = await consumer_state(js)
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration:
            await asyncio.sleep(1)
            s = await consumer_state(js)
            s["t"] = round(time.monotonic() - t0, 1)
            samples.append(s)
        usage = cpu.stop()
        handled_rate = (samples[-1]["handled"] - first["handled"]) / (time.monotonic() - t0)
        kill_file.write_text("")
        done = pathlib.Path(str(kill_file) + ".done")
        deadline = time.monotonic() + 5
        while not done.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        last_report = int(done.read_text()) / 1e9 if done.exists() else time.time()
        deadline = time.monotonic() + 30
        plan_at = None
        while time.monotonic() < deadline and plan_at is None:
            plan_at = next((t for t, p in plans if p.root_cause == victim), None)
            await asyncio.sleep(0.05)
        after = await consumer_state(js)
        false_deaths = sorted({node for _, node in criticals if node != victim})
        raw_out = finish(rawp)
        gen_out = finish(gen)
        gen = rawp = None
        final = await consumer_state(js)
        await nc.close()
        published = gen_out.get("published", 0)
        rate = published / max(gen_out.get("seconds", 1.0), 1e-9)    # what the generator achieved
        backlog_s = [round(s["pending"] / max(rate, 1.0), 2) for s in samples]
        return {
            "nodes": n, "duration_s": duration, "published": published, "offered_per_s": round(rate),
            "monitor_handled_per_s": round(handled_rate),
            "raw_received_per_s": round(raw_out.get("received", 0) / max(raw_out.get("seconds", 1), 1e-9)),
            "backlog_msgs": [s["pending"] for s in samples], "backlog_s": backlog_s,
            "backlog_growing": len(backlog_s) > 2 and backlog_s[-1] > backlog_s[len(backlog_s) // 2] + 0.5,
            "dropped_unread": max(0, published - final["delivered"] - final["pending"]),
            "kill_to_plan_s": None if plan_at is None else round(plan_at - last_report, 2),
            "beyond_liveness_s": None if plan_at is None else round(plan_at - last_report - LIVENESS_S, 2),
            "false_criticals": false_deaths, "windows": len(windows),
            "generator_longest_round_s": round(gen_out.get("longest_round_s", 0.0), 2),
            "window_max_bytes": max(windows, default=0), "pending_after_kill": after["pending"],
            "cpu": usage, "cpu_per_node_monitor_pct": round(usage.get("monitor", {}).get("cpu_pct", 0) / n, 4),
            "monitor_cpu_per_report_us": round(usage.get("monitor", {}).get("cpu_pct", 0) / 100
                                               / max(handled_rate, 1e-9) * 1e6),
        }
    finally:
        for p in (gen, rawp):
            if p is not None:
                finish(p)
        stack.stop()


async def run_replicas(k: int, n: int, duration: float, tmp: pathlib.Path, partitioned: bool = True
                       ) -> dict[str, Any]:
    """``k`` monitor replicas under the generator's ``n`` nodes: partitioned (replica i pulls partition i's
    durable consumer ``monitor-telemetry-p<i>``, X0TTA6BL4_MONITOR_PARTITIONS=k) or all on the shared
    ``monitor-telemetry``; what each replica handled per second, its CPU, and beside them in the same run
    the raw nats-py baseline (one core subscription decoding every report)."""
    from x0tta6bl4.bus import subjects
    from x0tta6bl4.bus.permissions import MESH_HOST_PREFIX, OPERATOR
    parts = k if partitioned else 1
    stack = stack_for(tmp, ("monitor",), replicas=k, partitions=parts)
    stack.start(120)
    gen = rawp = None
    try:
        stack.add_mesh_host("gen", list(grid(n)))
        nc = await stack.connect()
        js = nc.jetstream()
        durables = [subjects.monitor_telemetry_consumer(i, parts) for i in range(parts)]
        rawp = spawn("raw", url=stack.url, secrets=stack.secrets.root, identity=OPERATOR)
        gen = spawn("generate", url=stack.url, secrets=stack.secrets.root, identity=MESH_HOST_PREFIX + "gen",
                    nodes=n, kill="", kill_file=tmp / "never")
        await asyncio.sleep(3)
        cpu = CPU({f"monitor-{sp.index}": sp.proc.pid for sp in stack.procs})
        cpu.start()
        first, t0 = [await consumer_state(js, d) for d in durables], time.monotonic()
        await asyncio.sleep(duration)
        last, wall = [await consumer_state(js, d) for d in durables], time.monotonic() - t0
        usage = cpu.stop()
        gen_out = finish(gen)
        raw_out = finish(rawp)
        gen = rawp = None
        await nc.close()
        per_consumer = [round((b["handled"] - a["handled"]) / wall) for a, b in zip(first, last, strict=True)]
        return {"replicas": k, "partitions": parts, "nodes": n, "handled_per_s": sum(per_consumer),
                "handled_per_s_per_partition": per_consumer,
                "offered_per_s": round(gen_out.get("published", 0) / max(gen_out.get("seconds", 1.0), 1e-9)),
                "raw_received_per_s": round(raw_out.get("received", 0) / max(raw_out.get("seconds", 1), 1e-9)),
                "pending_end": sum(s["pending"] for s in last), "cpu": usage,
                # a replica's CPU over what it handled: what a report costs it (its share plus the whole mesh's
                # telemetry bucket mirror), so what one replica could handle on a core of its own
                "cpu_us_per_report": [round(u["cpu_pct"] / 100 / max(x, 1e-9) * 1e6) for u, x in
                                      zip(usage.values(), per_consumer if partitioned else
                                          [sum(per_consumer) / k] * k, strict=True)]}
    finally:
        for p in (gen, rawp):
            if p is not None:
                finish(p)
        stack.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="bench", choices=["bench", "generate", "raw"])
    p.add_argument("--nodes", default="1000,10000")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--replicas", default="1,2,4")
    p.add_argument("--replica-nodes", type=int, default=0,
                   help="nodes offered to the replica runs (default: the largest --nodes)")
    p.add_argument("--shared", action="store_true",
                   help="replicas on the one shared durable consumer (before partitioning), not partitioned")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    # children
    p.add_argument("--url", default="")
    p.add_argument("--secrets", default="")
    p.add_argument("--identity", default="")
    p.add_argument("--kill", default="")
    p.add_argument("--kill-file", default="")
    a = p.parse_args()
    if a.mode == "generate":
        a.nodes = int(a.nodes)
        asyncio.run(generate(a))
        return 0
    if a.mode == "raw":
        asyncio.run(raw(a))
        return 0
    try:
        sizes = [int(x) for x in a.nodes.split(",")]
        replicas = [int(x) for x in a.replicas.split(",") if x]
    except ValueError:
        print(f"--nodes {a.nodes!r} / --replicas {a.replicas!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    if a.quick:
        sizes, replicas, a.duration = [1000], [1, 2, 4], 8.0
    if a.replica_nodes < 0 or any(k < 1 or k > 16 for k in replicas):
        print(f"--replica-nodes {a.replica_nodes} / --replicas {a.replicas!r}: expected nodes >= 0 and replicas "
              "from 1 to 16", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"note": "figures measured on a busy shared machine are indicative only",
                               "scale": [], "replicas": []}
    results["handlers"] = handler_cost(max(sizes))
    if not a.json:
        h = results["handlers"]
        print(f"monitor handlers in process (in-memory bus, {max(sizes)} nodes x 2): {h['cpu_per_report_us']} us "
              f"CPU per report, {h['reports_per_cpu_s']} reports per CPU second (incl. building the reports)",
              flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
        for n in sizes:
            r = asyncio.run(run_scale(n, a.duration, pathlib.Path(d) / f"scale-{n}"))
            results["scale"].append(r)
            if not a.json:
                print(f"{n:>6} nodes: monitor handled {r['monitor_handled_per_s']}/s (raw nats-py "
                      f"{r['raw_received_per_s']}/s, offered {r['offered_per_s']}/s of {n}/s); backlog p50 "
                      f"{statistics.median(r['backlog_s']) if r['backlog_s'] else 0} s, last "
                      f"{r['backlog_s'][-1] if r['backlog_s'] else 0} s, growing: {r['backlog_growing']}; "
                      f"dropped unread {r['dropped_unread']}; kill to plan {r['kill_to_plan_s']} s "
                      f"({r['beyond_liveness_s']} s beyond the {LIVENESS_S:g} s liveness timeout: "
                      f"{STALE_AFTER_S:g} s stale + {SILENCE_HOLD_S:g} s hold); "
                      f"criticals other than the stopped node {len(r['false_criticals'])} (the generator's longest "
                      f"round {r['generator_longest_round_s']} s: above {STALE_AFTER_S:g} s its nodes were really "
                      f"silent that long); largest window {r['window_max_bytes']} B; "
                      f"monitor {r['monitor_cpu_per_report_us']} us CPU per report handled",
                      flush=True)
                for name, u in sorted(r["cpu"].items()):
                    print(f"        {name:<14} {u['cpu_pct']:6.1f} % of a core  {u['rss_mb']:7.1f} MB", flush=True)
        big = a.replica_nodes or max(sizes)
        for k in replicas:
            r = asyncio.run(run_replicas(k, big, a.duration, pathlib.Path(d) / f"replicas-{k}", not a.shared))
            results["replicas"].append(r)
            if not a.json:
                per = ", ".join(f"{u['cpu_pct']:.0f} %" for u in r["cpu"].values())
                layout = (f"{r['partitions']} partition(s), per replica "
                          f"{', '.join(f'{x}/s' for x in r['handled_per_s_per_partition'])}"
                          if not a.shared else "one shared consumer")
                print(f"{k} monitor replica(s), {big} nodes, {layout}: {r['handled_per_s']}/s handled together "
                      f"of {r['offered_per_s']}/s offered (raw nats-py baseline in the same run "
                      f"{r['raw_received_per_s']}/s; pending at the end {r['pending_end']}); CPU per replica "
                      f"{per}, per report handled {', '.join(f'{x} us' for x in r['cpu_us_per_report'])}",
                      flush=True)
    if a.json:
        print(json.dumps(results, indent=2))
    else:
        print("(on a busy machine: indicative only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
