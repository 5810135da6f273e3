"""meshctl cycle list: the cycles that acted are listed by default; observe-only ones (path_degraded every
second on a busy mesh) and those that found nothing only with --all, so a real repair does not scroll out."""
from __future__ import annotations

from types import SimpleNamespace

from x0tta6bl4.bus import subjects
from x0tta6bl4.cli.observe import acted, cycles_to_show, summarize
from x0tta6bl4.ids import new_meta
from x0tta6bl4.v1 import events_pb2

K = events_pb2


def cycle(cid: str, ts: int, *steps: str, decision: int = K.DECISION_KIND_OBSERVE) -> tuple[str, list]:
    """The stored events of one cycle: (message with its subject, decoded event) pairs."""
    out = []
    for i, step in enumerate(("window", *steps)):
        meta = new_meta("x", cid)
        meta.ts_unix_ns = ts + i
        ev = {"window": K.TelemetryWindow(meta=meta),
              "anomaly": K.Anomaly(meta=meta, fault_type="path_degraded", root_cause="n4", confidence=0.5),
              "plan": K.Plan(meta=meta, decision=decision),
              "action": K.ActionRequest(meta=meta),
              "result": K.ActionResult(meta=meta, success=True),
              "verified": K.Verification(meta=meta, recovered=True, mttr_ms=1400),
              "escalation": K.Escalation(meta=meta, reason="rolled_back")}[step]
        subject = {"window": subjects.MAPEK_TELEMETRY, "anomaly": subjects.MAPEK_ANOMALY,
                   "plan": subjects.MAPEK_PLAN, "action": subjects.MAPEK_ACTION, "result": subjects.MAPEK_RESULT,
                   "verified": subjects.MAPEK_VERIFIED, "escalation": subjects.MAPEK_ESCALATION}[step]
        out.append((SimpleNamespace(subject=subject, headers={}), ev))
    return cid, out


def test_the_repair_stays_in_view_behind_a_flood_of_observations():
    cycles = dict([cycle("repair", 100, "anomaly", "plan", "action", "result", "verified",
                         decision=K.DECISION_KIND_AUTO_EXECUTE)]
                  + [cycle(f"obs{i}", 200 + 10 * i, "anomaly", "plan") for i in range(40)]    # observe-only
                  + [cycle(f"quiet{i}", 700 + 10 * i) for i in range(5)]                      # found nothing
                  + [cycle("vote", 900, "anomaly", "plan", decision=K.DECISION_KIND_STANDARD_VOTE)]
                  + [cycle("harm", 950, "anomaly", "plan", "action", "result", "verified", "escalation",
                           decision=K.DECISION_KIND_AUTO_EXECUTE)])
    shown, hidden = cycles_to_show(cycles, all_=False, last=20)
    assert [c for c, _ in shown] == ["repair", "vote", "harm"] and hidden == 45
    everything, hidden_all = cycles_to_show(cycles, all_=True, last=20)
    assert len(everything) == 20 and everything[-1][0] == "harm" and hidden_all == 28
    assert "repair" not in [c for c, _ in everything]     # what the old default did: it scrolled out
    newest, _ = cycles_to_show(cycles, all_=False, last=2)
    assert [c for c, _ in newest] == ["vote", "harm"]


def test_what_counts_as_acting():
    assert not acted(cycle("o", 1, "anomaly", "plan")[1])
    assert not acted(cycle("q", 1)[1])
    assert acted(cycle("v", 1, "anomaly", "plan", decision=K.DECISION_KIND_EMERGENCY_VOTE)[1])
    assert acted(cycle("a", 1, "anomaly", "plan", "action", decision=K.DECISION_KIND_AUTO_EXECUTE)[1])
    assert "ESCALATED (rolled_back)" in summarize(cycle("e", 1, "escalation")[1])
