#!/usr/bin/env python3
"""Monitor cost and event-delay benchmark (runs in < 60 s, needs root for eBPF).

1. Spawns N (default 50) light "node" processes (sleep 20 ms + a syscall, in
   a loop) and monitors exactly those pids with the /proc+psutil collector and
   then the eBPF collector, in the same run:
     * CPU of this process (all threads, getrusage) while calling collect()
       every --interval seconds for --duration seconds -> % of one core,
       total and per monitored node;
     * CPU per collect() call (back-to-back loop);
     * eBPF only: CPU spent inside the BPF programs in the kernel
       (kernel.bpf_stats_enabled, temporarily) -> % of one core; this cost is
       paid by the traced tasks system-wide, not by the monitor process.
2. eBPF event delay: kernel timestamp (bpf_ktime_get_ns, CLOCK_MONOTONIC) of
   (a) opens of a watched key file and (b) UDP packets dropped by an nftables
   rule in a private network namespace (fallback: UDP to a closed loopback
   port, reason NO_SOCKET), to the moment the collector hands the decoded
   event to its on_event callback (the future bus hop starts there).

3. Event to bus: a real nats-server and the real monitor service (eBPF
   collector) watching a process configured as a mesh host; that process
   opens /etc/shadow (a forbidden file open) on request and records
   CLOCK_MONOTONIC just before the open(); the delay is to the moment the
   monitor's ``audit.monitor.security.sensitive_open`` event arrives at a NATS
   subscriber here (kernel -> ring buffer -> monitor -> signed audit event -> bus).

Targets: < 1 % of one core for 50 nodes, < 100 ms event delay (also to the bus).

    sudo .venv/bin/python bench/bench_monitor.py [--nodes 50] [--duration 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from x0tta6bl4.bus import subjects
from x0tta6bl4.monitoring import bpf_loader
from x0tta6bl4.monitoring.collectors import EbpfCollector, EbpfUnavailable, KernelEvent, ProcCollector

NODE_CODE = textwrap.dedent("""
    import os, sys, time
    while True:
        time.sleep(0.02)
        os.getppid()
""")


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return r.ru_utime + r.ru_stime


def spawn_nodes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", NODE_CODE], stdin=subprocess.DEVNULL) for _ in range(n)]


def measure_collector(c, duration: float, interval: float, loops: int) -> dict:
    c.collect()  # baseline
    # steady state: one collect() per interval, like the service
    t0, c0 = time.monotonic(), cpu_s()
    n = 0
    nxt = t0
    while True:
        nxt += interval
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        snap = c.collect()
        n += 1
        if time.monotonic() - t0 >= duration:
            break
    wall, cpu = time.monotonic() - t0, cpu_s() - c0
    # per-call cost, back to back
    c1, p1 = cpu_s(), time.perf_counter()
    for _ in range(loops):
        c.collect()
    per_call_cpu = (cpu_s() - c1) / loops
    per_call_wall = (time.perf_counter() - p1) / loops
    return {
        "collects": n,
        "wall_s": round(wall, 2),
        "cpu_percent_of_core": round(100 * cpu / wall, 3),
        "collect_cpu_ms": round(per_call_cpu * 1e3, 3),
        "collect_wall_ms": round(per_call_wall * 1e3, 3),
        "processes_in_snapshot": len(snap.processes),
    }


class BpfStats:
    """kernel.bpf_stats_enabled on for the measurement window, restored after."""

    PATH = "/proc/sys/kernel/bpf_stats_enabled"

    def __init__(self) -> None:
        self.old: str | None = None

    def __enter__(self) -> BpfStats:
        try:
            self.old = Path(self.PATH).read_text().strip()
            Path(self.PATH).write_text("1")
        except OSError:
            self.old = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.old is not None:
            Path(self.PATH).write_text(self.old)

    @staticmethod
    def per_prog(ids: set[int]) -> dict[str, tuple[int, int]]:
        """program name -> (run_time_ns, run_cnt)."""
        return {str(p.get("name")): (int(p.get("run_time_ns", 0)), int(p.get("run_cnt", 0)))
                for p in bpf_loader.attached_bpf_programs() if int(p["id"]) in ids}

    @staticmethod
    def run_time_ns(per: dict[str, tuple[int, int]]) -> tuple[int, int]:
        return sum(v[0] for v in per.values()), sum(v[1] for v in per.values())


def pct(vals: list[float], q: float) -> float:
    if not vals:
        return float("nan")
    s = sorted(vals)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def delay_stats(delays_ms: list[float]) -> dict:
    if not delays_ms:
        return {"n": 0}
    return {"n": len(delays_ms), "p50_ms": round(statistics.median(delays_ms), 3),
            "p99_ms": round(pct(delays_ms, 0.99), 3), "max_ms": round(max(delays_ms), 3)}


def open_delay(c: EbpfCollector, got: list[KernelEvent], n: int) -> dict:
    keys = Path(tempfile.mkdtemp(prefix="x0kb", dir="/tmp"))
    f = keys / "node.key"
    f.write_text("k")
    c.set_watch_prefixes([*c.watch_prefixes, f"{keys}/"])
    got.clear()
    for _ in range(n):
        with open(f):
            pass
        time.sleep(0.01)
    end = time.monotonic() + 2
    while time.monotonic() < end and len([e for e in got if e.path == str(f)]) < n:
        time.sleep(0.01)
    d = [e.delay_ms for e in got if e.kind == "sensitive_open" and e.path == str(f)]
    f.unlink()
    keys.rmdir()
    return delay_stats(d)


def drop_delay(c: EbpfCollector, got: list[KernelEvent], n: int) -> dict:
    have_nft = shutil.which("nft") and shutil.which("ip")
    ns = f"x0bench{os.getpid()}"
    port = 45998
    reason = "NETFILTER_DROP"
    try:
        if have_nft:
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            rules = (f"table inet x0bench {{\n chain input {{\n type filter hook input priority 0;\n"
                     f" udp dport {port} drop\n }}\n}}\n")
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True)
            sender = ["ip", "netns", "exec", ns, sys.executable, "-c"]
        else:
            reason = "NO_SOCKET"
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            sender = [sys.executable, "-c"]
        got.clear()
        code = textwrap.dedent(f"""
            import socket, time
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range({n}):
                s.sendto(b'x', ('127.0.0.1', {port}))
                time.sleep(0.01)
        """)
        subprocess.run([*sender, code], check=True, timeout=30)
        end = time.monotonic() + 2
        while time.monotonic() < end and len([e for e in got if e.drop_reason == reason]) < n:
            time.sleep(0.01)
        d = [e.delay_ms for e in got if e.kind == "packet_drop" and e.drop_reason == reason]
        return {"reason": reason, **delay_stats(d)}
    finally:
        if have_nft:
            subprocess.run(["ip", "netns", "del", ns], check=False)


OPENER_CODE = textwrap.dedent("""
    import sys, time
    for line in sys.stdin:
        t = time.monotonic_ns()
        try:
            open("/etc/shadow", "rb").close()
        except OSError:
            pass
        print(t, flush=True)
""")


def bus_delay(n: int) -> dict:
    """Forbidden file open by a monitored process -> the monitor's audit event on the bus."""
    import asyncio

    from x0tta6bl4.runtime.stack import Stack

    opener = subprocess.Popen([sys.executable, "-c", OPENER_CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    tmp = Path(tempfile.mkdtemp(prefix="x0-bench-monitor-"))
    stack = Stack(tmp, ("monitor",), env={"X0TTA6BL4_MONITOR_COLLECTOR": "ebpf",
                                          "X0TTA6BL4_MONITOR_HOSTS": f"{opener.pid}=bench-node",
                                          "X0TTA6BL4_DISCOVER_HOSTS": "false", "X0TTA6BL4_LOG_LEVEL": "WARNING"})

    async def run() -> dict:
        nc = await stack.connect(name="bench-monitor")   # the operator: audit trail, monitor.rpc.Info
        got: asyncio.Queue = asyncio.Queue()

        async def cb(m) -> None:
            got.put_nowait(time.monotonic_ns())
        await nc.subscribe("audit.monitor.security.sensitive_open", cb=cb)
        try:
            end = time.monotonic() + 30  # the monitor loads its BPF programs in the background
            while True:
                r = json.loads((await nc.request(subjects.MONITOR_INFO, b"", timeout=2)).data)
                if r["state"] != "starting":
                    break
                if time.monotonic() > end:
                    return {"n": 0, "error": "monitor collector did not start"}
                await asyncio.sleep(0.2)
            if r["collector"] != "ebpf":
                return {"n": 0, "error": f"monitor runs collector {r['collector']}: {r.get('reason')}"}
            delays = []
            for _ in range(n):
                opener.stdin.write("x\n")
                opener.stdin.flush()
                t_open = int(await asyncio.to_thread(opener.stdout.readline))
                try:
                    t_bus = await asyncio.wait_for(got.get(), 2)
                except TimeoutError:
                    continue
                delays.append((t_bus - t_open) / 1e6)
                await asyncio.sleep(0.05)
            return delay_stats(delays)
        finally:
            await nc.close()

    try:
        stack.start()
        return asyncio.run(run())
    finally:
        stack.stop()
        opener.kill()
        opener.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of steady state per collector")
    ap.add_argument("--interval", type=float, default=1.0, help="collect() period in seconds")
    ap.add_argument("--loops", type=int, default=30, help="back-to-back collect() calls for per-call cost")
    ap.add_argument("--events", type=int, default=30, help="events per delay measurement")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    t_start = time.monotonic()
    res: dict = {"nodes": a.nodes, "interval_s": a.interval, "cpus": os.cpu_count(),
                 "loadavg_1m": os.getloadavg()[0]}
    nodes = spawn_nodes(a.nodes)
    pids = [p.pid for p in nodes]
    try:
        time.sleep(0.5)
        with ProcCollector(pids, track_children=True) as pc:
            res["proc"] = measure_collector(pc, a.duration, a.interval, a.loops)
        try:
            got: list[KernelEvent] = []
            lock = threading.Lock()

            def on_event(e: KernelEvent) -> None:
                with lock:
                    got.append(e)

            with BpfStats() as bs, EbpfCollector(pids, on_event=on_event) as ec:
                ids = ec.bpf_prog_ids()
                p0 = bs.per_prog(ids)
                k0, n0, w0 = *bs.run_time_ns(p0), time.monotonic()
                e0 = len(got)
                res["ebpf"] = measure_collector(ec, a.duration, a.interval, a.loops)
                res["ebpf"]["events_during_window"] = len(got) - e0
                p1 = bs.per_prog(ids)
                k1, n1, w1 = *bs.run_time_ns(p1), time.monotonic()
                if bs.old is not None:
                    res["ebpf"]["kernel_bpf_cpu_percent_of_core"] = round(100 * (k1 - k0) / 1e9 / (w1 - w0), 3)
                    res["ebpf"]["kernel_bpf_runs_per_s"] = round((n1 - n0) / (w1 - w0))
                    res["ebpf"]["kernel_bpf_ns_per_run"] = round((k1 - k0) / max(n1 - n0, 1), 1)
                    top = sorted(((p1[k][0] - p0.get(k, (0, 0))[0], p1[k][1] - p0.get(k, (0, 0))[1], k)
                                  for k in p1), reverse=True)[:4]
                    res["ebpf"]["kernel_bpf_top"] = {
                        k: {"runs_per_s": round(n / (w1 - w0)), "ns_per_run": round(t / max(n, 1), 1)}
                        for t, n, k in top}
                res["delay_sensitive_open"] = open_delay(ec, got, a.events)
                res["delay_packet_drop"] = drop_delay(ec, got, a.events)
            res["delay_sensitive_open_to_bus"] = bus_delay(min(a.events, 20))
        except EbpfUnavailable as exc:
            res["ebpf"] = {"unavailable": str(exc)}
    finally:
        for p in nodes:
            p.kill()
        for p in nodes:
            p.wait()
    for k in ("proc", "ebpf"):
        r = res.get(k, {})
        if "cpu_percent_of_core" in r:
            r["cpu_percent_of_core_per_node"] = round(r["cpu_percent_of_core"] / a.nodes, 4)
    res["runtime_s"] = round(time.monotonic() - t_start, 1)

    verdict = {}
    for k in ("proc", "ebpf"):
        if "cpu_percent_of_core" in res.get(k, {}):
            verdict[f"{k}_cpu_lt_1pct"] = res[k]["cpu_percent_of_core"] < 1.0
    for k in ("delay_sensitive_open", "delay_packet_drop", "delay_sensitive_open_to_bus"):
        if res.get(k, {}).get("n"):
            want = min(a.events, 20) if k.endswith("_to_bus") else a.events
            verdict[f"{k}_p99_lt_100ms"] = res[k]["p99_ms"] < 100 and res[k]["n"] >= want
    res["targets_met"] = verdict

    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"monitor bench: {a.nodes} nodes, collect every {a.interval}s for {a.duration}s, "
              f"{res['cpus']} CPUs, load avg {res['loadavg_1m']:.2f}")
        for k in ("proc", "ebpf"):
            r = res.get(k, {})
            if "unavailable" in r:
                print(f"  {k:5s} unavailable: {r['unavailable']}")
                continue
            line = (f"  {k:5s} monitor CPU {r['cpu_percent_of_core']:.3f}% of a core "
                    f"({r['cpu_percent_of_core_per_node']:.4f}%/node), collect() {r['collect_cpu_ms']:.2f} ms CPU "
                    f"/ {r['collect_wall_ms']:.2f} ms wall, {r['processes_in_snapshot']} pids")
            print(line)
            if "events_during_window" in r:
                print(f"        {r['events_during_window']} kernel events decoded during the window (host background)")
            if "kernel_bpf_cpu_percent_of_core" in r:
                print(f"        in-kernel BPF {r['kernel_bpf_cpu_percent_of_core']:.3f}% of a core "
                      f"({r['kernel_bpf_runs_per_s']} runs/s, {r['kernel_bpf_ns_per_run']} ns/run, system-wide)")
                print("        top: " + "; ".join(f"{k} {v['runs_per_s']}/s {v['ns_per_run']} ns"
                                                  for k, v in r.get("kernel_bpf_top", {}).items()))
        for k in ("delay_sensitive_open", "delay_packet_drop", "delay_sensitive_open_to_bus"):
            r = res.get(k)
            if r:
                extra = f" reason={r['reason']}" if "reason" in r else ""
                if r.get("n"):
                    print(f"  event delay {k[6:]}{extra}: n={r['n']} p50 {r['p50_ms']} ms, "
                          f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms")
                else:
                    print(f"  event delay {k[6:]}{extra}: no events seen {r.get('error', '')}")
        print("  targets: " + ", ".join(f"{k}={'OK' if v else 'MISSED'}" for k, v in verdict.items()))
        print(f"  runtime {res['runtime_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
