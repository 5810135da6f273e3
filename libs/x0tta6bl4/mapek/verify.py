"""Verify: is the mesh back to normal after an action? (no I/O)

Checks, per action:
- every surviving node is reachable and none is CRITICAL by the spec's threshold
  table (the node that was routed around/isolated excepted); nodes in the
  warning band are reported, not failed — end-to-end latency over a long path
  can sit there before and after a fault, and the repair cannot change that;
- nodes that were told to avoid the target no longer list it as a neighbour
  in use (reroute/isolate);
- the action's own steps all succeeded.
MTTR is measured from the fault's first symptom to the moment these checks pass.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from x0tta6bl4.ids import new_meta
from x0tta6bl4.v1 import common_pb2, events_pb2

K = events_pb2


@dataclass
class Outcome:
    recovered: bool
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def traffic_baseline(nodes: list[events_pb2.NodeTelemetry]) -> dict[str, tuple[float, float]]:
    """(DATA sent, DATA acknowledged) per node when the action starts."""
    return {t.node_id: (t.counters.get("sent", 0.0), t.counters.get("acked", 0.0)) for t in nodes}


def check(action: events_pb2.ActionSpec, nodes: list[events_pb2.NodeTelemetry],
          classify: Callable[[events_pb2.NodeTelemetry], tuple[int, list[str]]],
          steps_ok: bool = True, baseline: dict[str, tuple[float, float]] | None = None) -> Outcome:
    """``baseline`` (from :func:`traffic_baseline`) adds the data-plane check: every node that sent
    DATA since the action started must have had some of it acknowledged end to end since then —
    quiet telemetry alone (no samples, no loss yet) is not evidence that traffic flows again."""
    out = Outcome(recovered=True)
    target = action.target_node
    removed = action.kind in (K.ACTION_KIND_REROUTE, K.ACTION_KIND_ISOLATE)
    if not steps_ok:
        out.failed.append("action steps failed")
    survivors = [t for t in nodes if not (removed and t.node_id == target)]
    if not survivors:
        out.failed.append("no telemetry from any surviving node")
    warnings = []
    for t in survivors:
        health, reasons = classify(t)
        if not t.reachable:
            out.failed.append(f"{t.node_id} unreachable")
        elif health == common_pb2.HEALTH_CRITICAL:
            out.failed.append(f"{t.node_id} critical: " + "; ".join(reasons))
        elif health == common_pb2.HEALTH_WARNING:
            warnings.append(f"{t.node_id} warning: " + "; ".join(reasons))
    if survivors and not any(f.startswith(tuple(t.node_id + " " for t in survivors)) for f in out.failed):
        band = f" ({len(warnings)} in the warning band: {'; '.join(warnings)[:300]})" if warnings else ""
        out.passed.append(f"{len(survivors)} surviving nodes reachable, none critical{band}")
    if baseline:
        stalled = []
        for t in survivors:
            before = baseline.get(t.node_id)
            if before is None:
                continue
            sent0, acked0 = before
            if t.counters.get("sent", 0.0) > sent0 and t.counters.get("acked", 0.0) <= acked0:
                stalled.append(t.node_id)
        if stalled:
            out.failed.append("no DATA acknowledged since the action at " + ", ".join(stalled))
        elif any(t.counters.get("sent", 0.0) > baseline.get(t.node_id, (0.0, 0.0))[0] for t in survivors):
            out.passed.append("DATA flows again end to end")
    if action.kind == K.ACTION_KIND_RESTART:
        if any(t.node_id == target and t.reachable for t in nodes):
            out.passed.append(f"{target} rejoined")
        else:
            out.failed.append(f"{target} has not rejoined")
    out.recovered = not out.failed
    return out


def verification(req: events_pb2.ActionRequest, outcome: Outcome, mttr_ms: float) -> events_pb2.Verification:
    return events_pb2.Verification(
        meta=new_meta("executor", req.meta.cycle_id),
        action_id=req.action_id,
        recovered=outcome.recovered,
        mttr_ms=mttr_ms,
        checks_failed=outcome.failed,
        checks_passed=outcome.passed,
        incident_id=req.incident_id,
        fault_type=req.fault_type,
        action=req.action,
    )
