"""meshctl start-up (issue #18: `meshctl --help` and `meshctl status` in under 0.5 s).

    .venv/bin/python bench/bench_meshctl.py [--runs 7]

Times whole processes (wall: best and median of --runs; CPU: the process's user + system time, best of the
runs), against ``python -c pass`` measured in the same run (the
interpreter's own start-up: the ratio is what meshctl adds). ``status`` is timed against no broker (a free port):
start-up, imports, argument parsing and the one-line "cannot reach NATS" error, without the network round trip.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import resource
import socket
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET_S = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(argv: list[str], runs: int) -> tuple[float, float, float]:
    """(best wall s, median wall s, best CPU s of the process): CPU time is what a busy machine distorts least."""
    ts, cpu = [], []
    env = dict(os.environ, COLUMNS="100")
    for _ in range(runs):
        c0, t0 = cpu_children(), time.perf_counter()
        subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        ts.append(time.perf_counter() - t0)
        cpu.append(cpu_children() - c0)
    return min(ts), statistics.median(ts), min(cpu)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=7)
    a = p.parse_args()
    py = sys.executable
    meshctl = [py, "-m", "x0tta6bl4.cli.main"]
    cases = {
        "python -c pass (baseline)": [py, "-c", "pass"],
        "meshctl --help": [*meshctl, "--help"],
        "meshctl status (no broker)": [*meshctl, "status", "--nats", f"nats://127.0.0.1:{free_port()}"],
        "meshctl gov --help": [*meshctl, "gov", "--help"],
    }
    rows = {name: timed(argv, a.runs) for name, argv in cases.items()}
    base = rows["python -c pass (baseline)"][0]
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs "
          "(wall times on a busy machine are indicative only; CPU time is less distorted)")
    print(f"{'case':30} {'best s':>8} {'median s':>9} {'CPU s':>7} {'best / python':>14}  target (wall)")
    for name, (best, med, cpu) in rows.items():
        target = "" if name.startswith("python") else ("< 0.5 s ok" if best < TARGET_S else "< 0.5 s MISSED")
        print(f"{name:30} {best:8.3f} {med:9.3f} {cpu:7.3f} {best / base:14.1f}  {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
