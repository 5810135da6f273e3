"""Analyzer + digital twin benchmark (runnable as a script, < 2 min on 2 cores).

    .venv/bin/python bench/bench_analysis.py [--quick]

Prints (1) twin scale timings, (2) the evaluation table shipped with the
weights (held-out split, seed 0, written by ``python -m x0tta6bl4.analysis.train``)
and (3) a fresh evaluation on a second, never-seen held-out seed for
GraphSAGE, the tree baseline (refitted on a reduced training split) and the
rules.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path


def timed(fn, repeats=3):
    ts, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), out


def twin_timings() -> None:
    from x0tta6bl4.twin import MeshDigitalTwin

    print("== twin scale timings (best of 3) ==")
    big = MeshDigitalTwin("bench-10k")
    t_build, g = timed(lambda: big.create_test_topology(10_000, 5.0, 0), 1)
    print(f"create_test_topology(10000, deg 5): {t_build * 1000:8.1f} ms  ({g.number_of_edges()} links)")
    t_first, _ = timed(lambda: big.simulate_node_failure(0), 1)
    t_fail, r = timed(lambda: big.simulate_node_failure(1234))
    print(f"simulate_node_failure 10k (first call, builds arrays): {t_first * 1000:8.1f} ms")
    print(f"simulate_node_failure 10k: {t_fail * 1000:8.1f} ms  connectivity_maintained="
          f"{r.connectivity_maintained:.6f} mttr={r.mttr_seconds:.2f}s  [target < 1000 ms]")
    t_nb, _ = timed(lambda: MeshDigitalTwin("nb").from_neighbours({v: list(g[v]) for v in g}), 1)
    print(f"from_neighbours 10k: {t_nb * 1000:8.1f} ms")
    k = MeshDigitalTwin("bench-1k")
    g1 = k.create_test_topology(1000, 5.0, 1)     # seed 1: the hub's failure cascades (several rounds)
    hub = max(g1.degree, key=lambda kv: kv[1])[0]
    k.predict_cascade_failure(0)
    for thr in (0.5, 0.8, 0.9):
        t_c, c = timed(functools.partial(k.predict_cascade_failure, hub, threshold=thr))
        print(f"predict_cascade_failure 1k hub, threshold={thr}: {t_c * 1000:8.1f} ms  "
              f"({len(c)} predicted failures)  [target < 1000 ms]")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the tree baseline refit")
    ap.add_argument("--scenarios", type=int, default=40)
    args = ap.parse_args()
    t_start = time.perf_counter()
    twin_timings()

    from x0tta6bl4.analysis import load_detector
    from x0tta6bl4.analysis.evaluate import evaluate, format_table
    from x0tta6bl4.analysis.model import WEIGHTS_DIR

    rep_path = Path(WEIGHTS_DIR) / "report.json"
    if rep_path.exists():
        shipped = json.loads(rep_path.read_text())
        print(f"\n== shipped evaluation (held-out seed {shipped['held_out']['seed']}, "
              f"{shipped['held_out']['scenarios']} scenarios, {shipped['held_out']['windows']} windows) ==")
        print(format_table(shipped))
        print("calibration:", json.dumps(shipped.get("calibration", {})))
        print("targets:", json.dumps(shipped.get("targets", {})))

    det = load_detector()
    tree = False
    if not args.quick:
        from x0tta6bl4.analysis.baselines import TreeBaseline
        from x0tta6bl4.analysis.dataset import generate_split

        tree = TreeBaseline(seed=1, max_iter=60).fit(generate_split("train", 0, 100))
    rep = evaluate(det, seed=1, num_scenarios=args.scenarios, tree=tree)
    print(f"\n== fresh held-out evaluation (seed 1, {args.scenarios} scenarios, "
          f"{rep['held_out']['windows']} windows; tree refit on 100 train scenarios) ==")
    print(format_table(rep))
    print(f"\ntotal bench time {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
