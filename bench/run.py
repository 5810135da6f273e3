"""make bench: every benchmark, each printing figures as ratios to a raw baseline measured in the same run.

    python bench/run.py [--full] [--only bus,pqc,...]
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
BENCHES = {
    "bus": ["bench_bus.py", "--quick"],
    "pqc": ["bench_pqc.py"],
    "keyvault": ["bench_keyvault.py", "--rounds", "1"],
    "governance": ["bench_governance.py", "--votes", "1500"],
    "mesh": ["bench_mesh.py", "--quick"],
    "meshsec": ["bench_meshsec.py", "--quick"],
    "monitor": ["bench_monitor.py", "--duration", "4"],
    "analysis": ["bench_analysis.py", "--quick"],
    "meshctl": ["bench_meshctl.py"],
    "scale": ["bench_scale.py", "--quick"],
}
FULL = {"bus": ["bench_bus.py"], "keyvault": ["bench_keyvault.py"], "governance": ["bench_governance.py"],
        "mesh": ["bench_mesh.py"], "monitor": ["bench_monitor.py"], "analysis": ["bench_analysis.py"],
        "scale": ["bench_scale.py"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--full", action="store_true", help="the full-size runs (slower)")
    p.add_argument("--only", default="", help="comma-separated subset: " + ",".join(BENCHES))
    a = p.parse_args()
    chosen = [b for b in BENCHES if not a.only or b in a.only.split(",")]
    failed = []
    for name in chosen:
        args = (FULL.get(name) if a.full else None) or BENCHES[name]
        print(f"\n===== {name}: python bench/{' '.join(args)}", flush=True)
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]], cwd=HERE.parent)
        print(f"===== {name}: {'ok' if r.returncode == 0 else f'FAILED ({r.returncode})'} "
              f"in {time.monotonic() - t0:.0f} s", flush=True)
        if r.returncode:
            failed.append(name)
    if failed:
        print("benchmarks that failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
