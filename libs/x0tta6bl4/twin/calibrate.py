"""Calibrate the twin's MTTR model on the real data plane.

    python -m x0tta6bl4.twin.calibrate [--trials 12] [--out twin/mttr_calibration.json]

Runs the real mesh (``x0tta6bl4.mesh.runtime.MeshRuntime``: one UDP agent per
node on loopback, HELLO 0.2 s, 3 misses) on a grid and a random geometric
topology. Each trial starts a 100 pkt/s DATA flow between two nodes at least
3 hops apart, kills a relay on the active path, and measures

* detection: kill -> the upstream neighbour's ``neighbour_lost`` event;
* repair: detection -> first DATA packet sent after the kill delivered
  (route error, rediscovery, traffic flowing again).

The predictor is the twin's own ``detour_hops`` for the killed node (what
``MeshDigitalTwin.simulate_node_failure`` feeds the model), so the fitted
model answers exactly the question the twin asks. Trials are split into a
fit half and a held-out half (alternating); the held-out error is reported
beside the in-sample RMSE. The result is written as the twin's default
parameters (``twin/mttr_calibration.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

from .mttr import CALIBRATION_PATH, MttrModel

HELLO_S = 0.2
MISS = 3


async def measure_topology(topo, trials: int, seed: int, rate: float = 100.0) -> list[dict]:
    from x0tta6bl4.mesh.core import CoreConfig
    from x0tta6bl4.mesh.runtime import MeshRuntime
    from x0tta6bl4.mesh.trials import kill_on_active_path

    from .twin import MeshDigitalTwin

    rng = random.Random(seed)
    events: list[dict] = []
    rt = MeshRuntime(topo, config=CoreConfig(hello_interval=HELLO_S, miss_count=MISS), seed=seed,
                     event_sink=events.append)
    twin = MeshDigitalTwin(f"calib-{topo.name}")
    twin.from_neighbours({n: list(topo.neighbours(n)) for n in topo.nodes})
    await rt.start()
    out: list[dict] = []
    try:
        await rt.wait_converged(timeout=30)
        for _ in range(trials):
            t = await kill_on_active_path(rt, topo, rng, events, rate)
            if t is None or t.detected_ns is None or t.first_after_ns is None:
                continue
            new_path = t.path_after
            out.append({
                "topology": topo.name, "victim": t.victim, "src": t.src, "dst": t.dst,
                "hops": twin.simulate_node_failure(t.victim).detour_hops,
                "path_hops": len(t.path) - 1, "new_path_hops": max(len(new_path) - 1, 0),
                "victim_hops_from_src": t.path.index(t.victim),
                "detect_s": (t.detected_ns - t.t_kill_ns) / 1e9,
                "repair_s": max(t.first_after_ns - t.detected_ns, 0) / 1e9,
            })
    finally:
        await rt.stop()
    return out


def fit_and_validate(rows: list[dict]) -> tuple[MttrModel, dict]:
    """Fit on even-indexed trials, report error on the odd (held-out) ones; the shipped
    model is then refitted on all trials (its in-sample RMSE is reported too)."""
    fit_rows, held = rows[0::2], rows[1::2]
    m_fit = MttrModel.calibrate(fit_rows, miss_count=MISS)

    def errs(m: MttrModel, rs: list[dict]) -> dict:
        e = [abs(m.mttr_s(r["hops"]) - (r["detect_s"] + r["repair_s"])) for r in rs]
        rel = [abs(m.mttr_s(r["hops"]) - (r["detect_s"] + r["repair_s"])) / (r["detect_s"] + r["repair_s"])
               for r in rs]
        return {"n": len(rs), "mae_s": round(statistics.fmean(e), 4), "max_abs_s": round(max(e), 4),
                "mean_rel_pct": round(100 * statistics.fmean(rel), 1)}

    model = MttrModel.calibrate(rows, miss_count=MISS)
    measured = [r["detect_s"] + r["repair_s"] for r in rows]
    report = {
        "held_out_mttr_error": errs(m_fit, held) if held else {},
        "in_sample_mttr_error": errs(model, rows),
        "fit_rmse_s": {k: round(v, 4) for k, v in model.fit_rmse_s.items()},
        "measured": {
            "trials": len(rows),
            "detect_s_mean": round(statistics.fmean(r["detect_s"] for r in rows), 4),
            "repair_s_mean": round(statistics.fmean(r["repair_s"] for r in rows), 4),
            "mttr_s_mean": round(statistics.fmean(measured), 4),
            "mttr_s_max": round(max(measured), 4),
            "hops_range": [min(r["hops"] for r in rows), max(r["hops"] for r in rows)],
        },
    }
    return model, report


async def run(trials: int, seed: int) -> list[dict]:
    from x0tta6bl4.mesh.topology import grid, random_geometric

    rows = []
    for topo in (grid(rows=5, cols=6), random_geometric(30, seed=seed)):
        rows += await measure_topology(topo, trials, seed)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=12, help="kills per topology")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(CALIBRATION_PATH))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = asyncio.run(run(args.trials, args.seed))
    if len(rows) < 4:
        print(f"only {len(rows)} usable trials; not writing a calibration")
        return 1
    model, report = fit_and_validate(rows)
    blob = {
        "model": model.to_dict(),
        "data_plane": {"hello_interval_s": HELLO_S, "miss_count": MISS, "flow_pkt_s": 100,
                       "topologies": sorted({r["topology"] for r in rows})},
        "predictor": "twin detour_hops of the killed node",
        "report": report,
        "seed": args.seed,
        "runtime_s": round(time.perf_counter() - t0, 1),
        "trials": rows,
    }
    Path(args.out).write_text(json.dumps(blob, indent=1) + "\n")
    m = model
    print(f"calibrated on {len(rows)} kills: detect = {m.miss_count} x {m.hello_interval_s:.3f} s + "
          f"{m.detect_per_hop_s:.4f} s/hop; repair = {m.repair_base_s:.3f} s + {m.repair_per_hop_s:.4f} s/hop")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
