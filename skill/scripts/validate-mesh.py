#!/usr/bin/env python3
"""validate-mesh.py: the spec's Monitor and Verify steps against the live stack.

    validate-mesh.py --metrics            every node's telemetry vs the spec's threshold table (green/yellow/red)
    validate-mesh.py --verify             post-repair: surviving nodes healthy, latest verification recovered,
                                          the repaired failure not predicted to cascade
    validate-mesh.py --metrics --json     machine-readable

Telemetry comes from the stack's NATS key-value bucket ``telemetry`` (latest NodeTelemetry per node, written
by the monitor); health is ``x0tta6bl4.mapek.health.classify_node`` (the monitor's own rule). The verification
is the latest ``mapek.verified`` message in stream MAPEK.

NATS: --nats, $X0TTA6BL4_NATS_URL, the running stack's var/stack.json, or nats://127.0.0.1:4222; as the
operator identity: $X0TTA6BL4_NATS_NKEY_FILE + $X0TTA6BL4_NATS_CA_FILE, else the stack's
secrets/creds/operator.nk and secrets/ca/ca.pem (runtime/locate.py).
Exit codes: --metrics 0 all green, 1 some yellow, 2 some red; --verify 0 verified, 1 not; 3 no data / no broker.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "libs"))

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.connection import connect_once
from x0tta6bl4.bus.permissions import OPERATOR
from x0tta6bl4.bus.reader import mesh_telemetry
from x0tta6bl4.mapek.health import SPEC_THRESHOLDS, classify_node, classify_value
from x0tta6bl4.runtime import locate
from x0tta6bl4.v1 import common_pb2, events_pb2

COLOUR = {common_pb2.HEALTH_HEALTHY: ("green", "\033[32m"), common_pb2.HEALTH_WARNING: ("yellow", "\033[33m"),
          common_pb2.HEALTH_CRITICAL: ("red", "\033[31m")}
RESET = "\033[0m"
LABEL = {"p99_latency_ms": "p99 latency (ms)", "loss_pct": "packet loss (%)", "cpu_pct": "CPU usage (%)",
         "mem_pct": "memory usage (%)"}
MTTR_S = (180.0, 300.0)    # spec: MTTR < 3 min normal, 3-5 min warning, > 5 min critical


def nats_url(explicit: str | None) -> str:
    return locate.nats_url(explicit)


async def connect(url: str):
    return await connect_once(url, "validate-mesh", creds=locate.credentials(OPERATOR))


async def telemetry(nc) -> dict[str, events_pb2.NodeTelemetry]:
    return await mesh_telemetry(nc.jetstream())

async def latest_verification(nc):
    """The newest mapek.verified message in stream MAPEK (None when there is none)."""
    from nats.js.errors import NotFoundError
    js = nc.jetstream()
    try:
        msg = await js.get_last_msg(subjects.STREAM_MAPEK, subjects.MAPEK_VERIFIED)
    except NotFoundError:
        return None
    except Exception:  # noqa: BLE001 - no stream yet
        return None
    return events_pb2.Verification.FromString(msg.data)


def name(h: int) -> str:
    return COLOUR[h][0]


def paint(h: int, text: str, tty: bool) -> str:
    return f"{COLOUR[h][1]}{text}{RESET}" if tty else text


def metrics_report(nodes: dict[str, events_pb2.NodeTelemetry]) -> dict:
    rows = []
    for node in sorted(nodes, key=lambda n: (len(n), n)):
        t = nodes[node]
        h, reasons = classify_node(t)
        per = {m: name(classify_value(getattr(t, m), *SPEC_THRESHOLDS[m])) for m in SPEC_THRESHOLDS}
        rows.append({"node": node, "health": name(h), "reachable": t.reachable,
                     **{m: round(getattr(t, m), 3) for m in SPEC_THRESHOLDS}, "levels": per,
                     "peers": t.peer_count, "routes": t.route_count, "reasons": reasons})
    worst = max((["green", "yellow", "red"].index(r["health"]) for r in rows), default=0)
    return {"mesh": ["green", "yellow", "red"][worst], "nodes": rows, "thresholds": {
        m: {"normal": f"< {w:g}", "warning": f"{w:g}-{c:g}", "critical": f"> {c:g}"}
        for m, (w, c) in SPEC_THRESHOLDS.items()}}


def print_metrics(rep: dict, tty: bool) -> None:
    print("| Metric | Normal | Warning | Critical |")
    print("|--------|--------|---------|----------|")
    for m, th in rep["thresholds"].items():
        print(f"| {LABEL[m]} | {th['normal']} | {th['warning']} | {th['critical']} |")
    print(f"| MTTR (s) | < {MTTR_S[0]:g} | {MTTR_S[0]:g}-{MTTR_S[1]:g} | > {MTTR_S[1]:g} |")
    print()
    lv = {"green": common_pb2.HEALTH_HEALTHY, "yellow": common_pb2.HEALTH_WARNING, "red": common_pb2.HEALTH_CRITICAL}
    print(f"{'node':8} {'health':8} {'p99 ms':>9} {'loss %':>8} {'cpu %':>7} {'mem %':>7} {'peers':>5}  reasons")
    for r in rep["nodes"]:
        cells = [paint(lv[r['levels'][m]], f"{r[m]:>{w}.{p}f}", tty)
                 for m, w, p in (("p99_latency_ms", 9, 1), ("loss_pct", 8, 2), ("cpu_pct", 7, 1), ("mem_pct", 7, 1))]
        health = paint(lv[r["health"]], f"{r['health']:8}", tty)
        print(f"{r['node']:8} {health} {' '.join(cells)} {r['peers']:>5}  {'; '.join(r['reasons'])}")
    print(f"\nmesh: {paint(lv[rep['mesh']], rep['mesh'], tty)} ({len(rep['nodes'])} nodes)")


def verify_report(nodes: dict[str, events_pb2.NodeTelemetry], v) -> dict:
    """Post-repair checks: every surviving (reachable) node healthy, the latest verification recovered with
    MTTR in the spec's normal range, and the failure that was repaired (the nodes that are down, and the
    node the repair routed around or isolated) not predicted by the twin to cascade (more than 2 nodes
    is the spec's manual-review line)."""
    checks: list[dict] = []
    survivors = {n: t for n, t in nodes.items() if t.reachable}
    down = sorted(n for n, t in nodes.items() if not t.reachable)
    bad = [f"{n}: {'; '.join(classify_node(t)[1])}" for n, t in sorted(survivors.items())
           if classify_node(t)[0] != common_pb2.HEALTH_HEALTHY]
    checks.append({"check": "surviving nodes healthy", "ok": bool(survivors) and not bad,
                   "detail": f"{len(survivors)} reachable, {len(down)} down ({', '.join(down) or 'none'})"
                             + (f"; not healthy: {', '.join(bad)}" if bad else "")})
    if v is None:
        checks.append({"check": "latest verification recovered", "ok": False, "detail": "no mapek.verified yet"})
    else:
        checks.append({"check": "latest verification recovered", "ok": bool(v.recovered),
                       "detail": f"incident {v.incident_id} {v.fault_type}: "
                                 + "; ".join(list(v.checks_passed) + [f"FAILED {c}" for c in v.checks_failed])})
        mttr_s = v.mttr_ms / 1000.0
        checks.append({"check": "MTTR < 3 min", "ok": mttr_s < MTTR_S[0], "detail": f"{mttr_s:.2f} s"})
    removed = set(down)
    if v is not None and v.action.kind in (events_pb2.ACTION_KIND_REROUTE, events_pb2.ACTION_KIND_ISOLATE) \
            and v.action.target_node in nodes:
        removed.add(v.action.target_node)
    if removed and set(nodes) - removed:
        from x0tta6bl4.twin.twin import MeshDigitalTwin
        twin = MeshDigitalTwin("validate-mesh")
        # the topology as reported: the survivors' neighbour lists and the down nodes' last known ones
        twin.from_neighbours({n: list(t.neighbours) for n, t in nodes.items()})
        cascade = [str(x) for x in twin.predict_cascade_after(sorted(removed), 0.5)]
        checks.append({"check": "no cascading failure predicted", "ok": len(cascade) <= 2,
                       "detail": f"twin, without {', '.join(sorted(removed))}: cascade candidates "
                                 f"{', '.join(cascade) or 'none'}"})
    return {"verified": all(c["ok"] for c in checks), "checks": checks,
            "verification": None if v is None else {"recovered": v.recovered, "mttr_ms": v.mttr_ms,
                                                    "incident_id": v.incident_id, "fault_type": v.fault_type,
                                                    "action_id": v.action_id}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="x0tta6bl4 mesh validation (spec thresholds, post-repair checks)")
    ap.add_argument("--metrics", action="store_true", help="telemetry vs the threshold table")
    ap.add_argument("--verify", action="store_true", help="post-repair verification")
    ap.add_argument("--nats", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if not (a.metrics or a.verify):
        ap.error("give --metrics and/or --verify")
    url = nats_url(a.nats)

    async def load():
        nc = await connect(url)
        try:
            return await telemetry(nc), (await latest_verification(nc) if a.verify else None)
        finally:
            await nc.close()
    try:
        nodes, v = asyncio.run(load())
    except Exception as e:  # noqa: BLE001 - one line
        print(f"error: cannot read telemetry from NATS at {url}: {type(e).__name__}: {e} (is the stack up? make up)",
              file=sys.stderr)
        return 3
    if not nodes:
        print("error: no telemetry yet: is a mesh connected? (meshctl demo, or python -m x0tta6bl4.mesh.host)",
              file=sys.stderr)
        return 3
    out: dict = {"nats": url, "ts": time.time()}
    code = 0
    tty = sys.stdout.isatty() and not a.json
    if a.metrics:
        rep = metrics_report(nodes)
        out["metrics"] = rep
        code = max(code, ["green", "yellow", "red"].index(rep["mesh"]))
        if not a.json:
            print_metrics(rep, tty)
    if a.verify:
        rep = verify_report(nodes, v)
        out["verify"] = rep
        code = max(code, 0 if rep["verified"] else 1)
        if not a.json:
            print()
            for c in rep["checks"]:
                mark = paint(common_pb2.HEALTH_HEALTHY if c["ok"] else common_pb2.HEALTH_CRITICAL,
                             "✓" if c["ok"] else "✗", tty)
                print(f"{mark} {c['check']}: {c['detail']}")
            print("verified" if rep["verified"] else "NOT verified")
    if a.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    return code


if __name__ == "__main__":
    sys.exit(main())
