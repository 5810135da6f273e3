#!/usr/bin/env python
"""Routes that improve (issue #21), on a ring of 6 nodes in network namespaces (root).

    sudo python bench/bench_routes.py [--returns 5] [--window 30] [--loss 10,30,50] [--json out.json]

A DATA flow with end-to-end ACKs from n0 to n2 at 50 packets/s; short path n0-n1-n2, detour
n0-n5-n4-n3-n2 (see :mod:`x0tta6bl4.mesh.netns_routes`).

* relay returns: the relay n1 is killed (SIGKILL) and started again; measured: kill -> traffic on the
  detour, process start -> ``ready``, ``ready`` -> first DATA over the relay again (target < 2 s), and the
  round-trip delivery while moving back (target 1.0);
* lossy relay: nftables drops PCT % of what n1 receives and sends for the issue's 30 s window; measured:
  round-trip delivery of the DATA sent in the window (target >= 0.95), switches of the delivered path
  (target <= 1), when the relay was left; then the loss is removed and the time until the first DATA goes
  over the relay again is measured (target < 2 s: the relay's links are re-admitted after a clean streak
  of HELLOs, sent four times as often while a lossy link recovers; see ``mesh/neighbours.py``).

The integration test ``tests/integration/mesh/test_mesh_netns_routes.py`` runs the same trials with
12 s windows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "libs"))

from x0tta6bl4.mesh.netns import NetnsMesh, netns_available
from x0tta6bl4.mesh.netns_routes import RingRoutes
from x0tta6bl4.mesh.topology import ring


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--returns", type=int, default=5, help="relay kill/return trials (default 5)")
    ap.add_argument("--window", type=float, default=30.0, help="loss window in seconds (default 30, the issue's)")
    ap.add_argument("--loss", default="10,30,50", help="loss percentages at the relay (default 10,30,50)")
    ap.add_argument("--rate", type=float, default=50.0, help="DATA packets per second (default 50)")
    ap.add_argument("--json", default="", help="write the results to this file")
    a = ap.parse_args()
    try:
        losses = [int(x) for x in a.loss.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--loss must be comma-separated integers, got {a.loss!r}")
    if any(not 0 < p < 100 for p in losses) or a.window <= 0 or a.returns < 0 or a.rate <= 0:
        ap.error("--loss values must be 1..99, --window and --rate > 0, --returns >= 0")
    ok, why = netns_available()
    if not ok:
        print(f"bench_routes: network namespaces unavailable: {why}", file=sys.stderr)
        return 2

    result: dict = {"hello_interval_s": 0.2, "rate": a.rate, "window_s": a.window, "returns": [], "loss": []}
    t_start = time.monotonic()
    with NetnsMesh(ring(6), telemetry_interval=1.0) as m:
        m.start(traffic={"n0": "n2"}, rate=a.rate)
        rr = RingRoutes(m)
        rr.on_path(rr.short, timeout=30)
        for i in range(a.returns):
            t = rr.relay_return()
            result["returns"].append(t.row())
            print(f"return {i + 1}: {t.row()}", flush=True)
        for pct in losses:
            t = rr.lossy_relay(pct, a.window, back_timeout=10.0)
            row = t.row()
            try:
                rr.on_path(rr.short, count=10, timeout=60)
            except TimeoutError:
                rr.restore()
            result["loss"].append(row)
            print(f"loss {pct} %: {row}", flush=True)
        result["looped_or_ttl_drops"] = rr.loops(fresh=True)
    backs = [r["back_s"] for r in result["returns"]]
    result["summary"] = {
        "returns_back_within_2s": f"{sum(1 for b in backs if b < 2.0)}/{len(backs)}",
        "return_back_s_p50": round(statistics.median(backs), 3) if backs else None,
        "return_back_s_max": max(backs, default=None),
        "return_delivery_min": min((r["delivery"] for r in result["returns"]), default=None),
        "loss": {r["loss_pct"]: {"delivery": r["delivery"], "switches": r["switches"],
                                 "back_on_relay_after_loss_removed_s": r["back_s"]} for r in result["loss"]},
        "total_s": round(time.monotonic() - t_start, 1),
    }
    print(json.dumps(result["summary"], indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
