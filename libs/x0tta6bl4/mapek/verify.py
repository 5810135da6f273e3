"""Verify: is the mesh back to normal after an action, and did the action do harm? (no I/O)

"Recovered" is measured, never assumed. After an action the mesh is recovered when, held for
``hold_s`` after the action:

- every flow that delivered before the incident delivers end to end at least ``min_delivery`` (95 %)
  of its delivery before the incident (DATA acknowledged per DATA sent, from the source's per-flow
  counters in ``NodeTelemetry.flows``: a source that sends less on a busy CPU is not a loss). The bar
  comes from a window that ends ``gap_s`` before the incident's first symptom (:class:`History` keeps
  every node's reports), never from the degraded state at action time. A flow that starts or ends at
  a node the action takes out of routing is reported, not counted (no route can reach it);
- every node that was reachable before the incident reports, reachable (the nodes the action takes
  out excepted, the node it brings back included) and none is CRITICAL by the threshold table in two
  reports in a row on metrics it was not critical on before the incident (:func:`critical_verdict`: one
  report over the line - a 0.5 s latency percentile on a busy machine - or a node as critical before
  the incident is reported, not failed); nodes in the warning band are reported, not failed (end-to-end
  latency over a long path can sit there before and after a fault, and the repair cannot change that);
- the mesh's connectivity (share of node pairs that reach each other over the reported neighbour
  links) is at least what the digital twin predicts for the action on the pre-incident topology;
- the action's steps all succeeded;
- for an operator's ``topology_update`` or ``config_change``: the nodes' telemetry shows the change in force
  (:func:`x0tta6bl4.execution.changes.check`: the link's ends list each other or not, every live node
  reports the parameter's new value).

Otherwise the verification fails and says why (``checks_failed``), one line per reason.

Harm (:func:`harm`): a flow that delivers clearly worse after the action than just before it (more
than ``margin``, 20 points, below), or connectivity below both the twin's prediction and what it was
just before the action. The executor then rolls the action back and escalates. Routing around a node
that was down already cannot do harm (there is nothing to undo that would help): not judged.

Counting: a window's delivery is ``acked / sent`` between two reports of the source, with one packet
of slack (the echo of the last packet sent may be in flight when the report is taken); a window counts
only with at least :data:`MIN_PACKETS` sent in it.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from x0tta6bl4.execution import changes
from x0tta6bl4.ids import new_meta
from x0tta6bl4.twin.twin import MeshDigitalTwin
from x0tta6bl4.v1 import common_pb2, events_pb2

K = events_pb2
MIN_PACKETS = 20                 # a delivery ratio over fewer packets says too little (1 packet = 5 %)
SPIKE_GAP_S = 2.0               # a report this close before a critical one that was not critical: a spike
HARM_MARGIN = 0.2                # a flow is harmed when it delivers this much (share) less than before the action
REMOVES = (K.ACTION_KIND_REROUTE, K.ACTION_KIND_ISOLATE)
BRINGS_BACK = (K.ACTION_KIND_RESTART, K.ACTION_KIND_REINSTATE)
REVERSIBLE = (K.ACTION_KIND_REROUTE, K.ACTION_KIND_ISOLATE, K.ACTION_KIND_REINSTATE, K.ACTION_KIND_TOPOLOGY_UPDATE,
              K.ACTION_KIND_CONFIG_CHANGE)
# operator changes whose effect the nodes' telemetry shows (x0tta6bl4.execution.changes.check)
CHANGES = {K.ACTION_KIND_TOPOLOGY_UPDATE: changes.TOPOLOGY_UPDATE, K.ACTION_KIND_CONFIG_CHANGE: changes.CONFIG_CHANGE}
Flow = tuple[str, str]


def action_name(kind: int) -> str:
    return K.ActionKind.Name(kind).removeprefix("ACTION_KIND_").lower()


# ---- the reports over time ----------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """What verification needs of one report of one node."""
    ts_ns: int
    reachable: bool
    neighbours: tuple[str, ...]
    flows: Mapping[str, tuple[int, int]]      # dest -> (sent, acked), cumulative
    health: events_pb2.NodeTelemetry | None = None   # the fields health is judged on (see :func:`health_view`)

    @classmethod
    def of(cls, t: events_pb2.NodeTelemetry) -> Sample:
        return cls(t.meta.ts_unix_ns, t.reachable, tuple(t.neighbours),
                   {f.dest: (f.sent, f.acked) for f in t.flows}, health_view(t))


def health_view(t: events_pb2.NodeTelemetry) -> events_pb2.NodeTelemetry:
    """The part of a report the threshold table judges (metrics, failed authentication, security signals), kept
    for every report of the history without its links, routes and counters."""
    v = events_pb2.NodeTelemetry(node_id=t.node_id, reachable=t.reachable, p99_latency_ms=t.p99_latency_ms,
                                 loss_pct=t.loss_pct, cpu_pct=t.cpu_pct, mem_pct=t.mem_pct,
                                 failed_auth=t.failed_auth)
    for k, x in t.kernel.items():
        if k.startswith("security."):
            v.kernel[k] = x
    return v


class History:
    """Every node's reports of the last ``retention_s`` (the executor feeds it from the telemetry mirror),
    so the delivery before an incident is known when the incident is repaired."""

    def __init__(self, retention_s: float = 120.0) -> None:
        self.retention_ns = int(retention_s * 1e9)
        self.samples: dict[str, list[Sample]] = {}

    def record(self, t: events_pb2.NodeTelemetry) -> None:
        if not t.node_id or not t.meta.ts_unix_ns:
            return
        s = Sample.of(t)
        rows = self.samples.setdefault(t.node_id, [])
        if rows and s.ts_ns < rows[-1].ts_ns:
            return                                  # older than what we have: out of order
        if rows and s.ts_ns == rows[-1].ts_ns:
            rows[-1] = s
        else:
            rows.append(s)
        cut = s.ts_ns - self.retention_ns
        if rows[0].ts_ns < cut:
            keep = bisect.bisect_left([r.ts_ns for r in rows], cut)
            del rows[:max(0, keep - 1)]             # keep one report older than the cut (a window's start)

    def on_change(self, key: str, value: events_pb2.NodeTelemetry | None) -> None:
        """The telemetry mirror's change callback."""
        if value is not None:
            self.record(value)

    def start_ns(self) -> int:
        """When the oldest report kept was taken (0: none)."""
        return min((rows[0].ts_ns for rows in self.samples.values() if rows), default=0)

    def at(self, node: str, ts_ns: int) -> Sample | None:
        """The node's latest report at or before ``ts_ns``."""
        rows = self.samples.get(node) or []
        i = bisect.bisect_right([r.ts_ns for r in rows], ts_ns)
        return rows[i - 1] if i else None

    def since(self, node: str, ts_ns: int) -> list[Sample]:
        rows = self.samples.get(node) or []
        return rows[bisect.bisect_left([r.ts_ns for r in rows], ts_ns):]

    def window(self, node: str, start_ns: int, end_ns: int) -> tuple[Sample, Sample] | None:
        """The reports that bound ``[start_ns, end_ns]`` as closely as the history allows (the latest at or
        before each end; the first inside the window when none is older)."""
        b = self.at(node, end_ns)
        if b is None:
            return None
        a = self.at(node, start_ns)
        if a is None:
            inside = self.since(node, start_ns)
            a = inside[0] if inside else None
        if a is None or a.ts_ns >= b.ts_ns:
            return None
        return a, b


@dataclass(frozen=True)
class Delivery:
    sent: int
    acked: int
    seconds: float

    @property
    def ratio(self) -> float:
        # at most 1: acks that arrive in the window for DATA sent before it (a source slowed down by a busy
        # CPU sends less) are not a delivery above 100 % - a bar of 95 % of 138 % can never be met
        return min(1.0, self.acked / self.sent) if self.sent else 0.0

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds > 0 else 0.0

    def at_least(self, share: float) -> bool:
        """``acked / sent >= share``, with one packet of slack for an echo still in flight."""
        return min(self.sent, self.acked + 1) >= share * self.sent

    def text(self) -> str:
        return f"{100 * self.ratio:.0f} % ({self.acked}/{self.sent} in {self.seconds:.1f} s, {self.rate:.1f}/s)"


def delivery(a: Sample, b: Sample, dest: str) -> Delivery:
    """DATA sent to ``dest`` and acknowledged between two reports of its source."""
    s0, k0 = a.flows.get(dest, (0, 0))
    s1, k1 = b.flows.get(dest, (0, 0))
    if s1 < s0 or k1 < k0:          # the agent restarted in between: its counters began again at 0
        s0 = k0 = 0
    return Delivery(s1 - s0, k1 - k0, (b.ts_ns - a.ts_ns) / 1e9)


# ---- before the incident ------------------------------------------------------------------------
@dataclass
class Baseline:
    """The mesh before the incident: who was reachable, the topology and each flow's delivery."""
    start_ns: int
    end_ns: int
    nodes: dict[str, Sample] = field(default_factory=dict)        # every node's last report by end_ns
    flows: dict[Flow, Delivery] = field(default_factory=dict)     # flows that delivered in the window
    missing: str = ""                                             # why there is no baseline

    @property
    def reachable(self) -> set[str]:
        return {n for n, s in self.nodes.items() if s.reachable}

    def adjacency(self) -> dict[str, list[str]]:
        return {n: list(s.neighbours) for n, s in self.nodes.items() if s.reachable}


def baseline(history: History, incident_ns: int, window_s: float = 5.0, gap_s: float = 1.0,
             stale_s: float = 10.0) -> Baseline:
    """The window of ``window_s`` that ends ``gap_s`` before ``incident_ns`` (the first symptom: the fault
    itself came a little earlier, a HELLO dead interval or so). A node whose last report in it is older
    than ``stale_s`` had gone already and is not expected back."""
    end = incident_ns - int(gap_s * 1e9)
    start = end - int(window_s * 1e9)
    out = Baseline(start, end)
    for node in history.samples:
        last = history.at(node, end)
        if last is not None and end - last.ts_ns <= stale_s * 1e9:
            out.nodes[node] = last
        kept = out.nodes.get(node)
        if kept is None:
            continue
        win = history.window(node, start, end)
        for dest, (sent, acked) in kept.flows.items():
            # a flow that started just before the incident has too few packets in the window to measure: it
            # still counts, held to delivering as well as a flow can (see before_ratio)
            d = delivery(win[0], win[1], dest) if win is not None else Delivery(sent, acked, 0.0)
            if d.acked > 0:
                out.flows[(node, dest)] = d
    if not out.nodes:
        since = history.start_ns()
        out.missing = ("no telemetry recorded before the incident" +
                       (f" (the executor's history starts {(since - end) / 1e9:.1f} s after the window)"
                        if since else ""))
    return out


# ---- the expected effect ------------------------------------------------------------------------
def connectivity(adjacency: Mapping[str, Iterable[str]], nodes: Iterable[str], removed: Iterable[str] = ()) -> float:
    """The twin's pair connectivity of ``nodes`` over the links in ``adjacency`` (symmetric: a link either end
    reports), with ``removed`` taken out (x0tta6bl4.twin)."""
    keep = set(nodes)
    if len(keep) < 2:
        return 1.0
    twin = MeshDigitalTwin("verify")
    twin.from_neighbours({n: [p for p in adjacency.get(n, ()) if p in keep] for n in keep})
    gone = sorted(n for n in set(removed) if n in keep)
    if len(keep) - len(gone) < 2:
        return 1.0
    return twin.connectivity_after_failure(gone)


def expected_effect(action: events_pb2.ActionSpec, base: Baseline, min_delivery: float = 0.95,
                    summary: str = "") -> events_pb2.ExpectedEffect:
    """What ``action`` should leave: the nodes it takes out or brings back, the twin's connectivity on the
    pre-incident topology, the delivery bar (the spec's own, when stricter, is kept)."""
    target = action.target_node
    removed = [target] if action.kind in REMOVES and target else []
    rejoins = [target] if action.kind in BRINGS_BACK and target and target != "*" else []
    stated = action.expected if action.HasField("expected") else None
    nodes = (base.reachable | set(rejoins))
    adjacency = base.adjacency()
    return events_pb2.ExpectedEffect(
        summary=summary or (stated.summary if stated else ""),
        removed=removed, rejoins=rejoins,
        connectivity=connectivity(adjacency, nodes, removed) if nodes else 1.0,
        min_delivery=min(1.0, max(min_delivery, stated.min_delivery if stated else 0.0)),
        reversible=action.kind in REVERSIBLE)


# ---- the checks ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    recovered: bool
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    final: bool = False          # not recovered, and waiting cannot change that (nothing to measure against)


def held_window(history: History, node: str, since_ns: int, hold_s: float,
                dest: str = "") -> tuple[Sample, Sample] | None:
    """The latest window of at least ``hold_s`` that starts at or after ``since_ns`` (and, for a flow to
    ``dest``, holds at least MIN_PACKETS sent): from the newest report back."""
    rows = history.since(node, since_ns)
    if len(rows) < 2:
        return None
    end = rows[-1]
    for a in reversed(rows[:-1]):
        if (end.ts_ns - a.ts_ns) >= hold_s * 1e9 and (not dest or delivery(a, end, dest).sent >= MIN_PACKETS):
            return a, end
    return None


def before_ratio(before: Delivery) -> float:
    """The delivery a flow had before the incident; one with too few packets then to measure is held to 1
    (the strictest bar: a ratio is never above 1)."""
    return before.ratio if before.sent >= MIN_PACKETS else 1.0


def check_flows(base: Baseline, effect: events_pb2.ExpectedEffect, history: History, acted_ns: int,
                hold_s: float, out: Outcome) -> None:
    removed = set(effect.removed)
    ok = 0
    for (src, dst), before in sorted(base.flows.items()):
        name = f"flow {src}->{dst}"
        if src in removed or dst in removed:
            out.passed.append(f"{name} ends at {src if src in removed else dst}, which the action takes out: "
                              "not counted")
            continue
        win = held_window(history, src, acted_ns, hold_s, dst)
        if win is None:
            got = history.since(src, acted_ns)
            span = (got[-1].ts_ns - got[0].ts_ns) / 1e9 if len(got) > 1 else 0.0
            out.failed.append(f"{name}: not yet held {hold_s:g} s with {MIN_PACKETS}+ packets since the action "
                              f"({span:.1f} s of reports)")
            continue
        after = delivery(win[0], win[1], dst)
        if after.at_least(effect.min_delivery * before_ratio(before)):
            ok += 1
        elif before.sent >= MIN_PACKETS:
            out.failed.append(f"{name} delivers {after.text()}, below {100 * effect.min_delivery:.0f} % of its "
                              f"{100 * before.ratio:.0f} % ({before.rate:.1f}/s) before the incident")
        else:
            out.failed.append(f"{name} delivers {after.text()}, below {100 * effect.min_delivery:.0f} % (it had "
                              f"sent {before.sent} packet(s) in the window before the incident: too few to measure, "
                              "held to 100 %)")
    if ok:
        out.passed.append(f"{ok} flow(s) deliver at least {100 * effect.min_delivery:.0f} % of their rate before "
                          f"the incident, held {hold_s:g} s")


def _critical_metrics(view: events_pb2.NodeTelemetry,
                      classify: Callable[[events_pb2.NodeTelemetry], tuple[int, list[str]]]) -> set[str]:
    health, reasons = classify(view)
    if health != common_pb2.HEALTH_CRITICAL:
        return set()
    return {r.split("=", 1)[0] for r in reasons if "(critical)" in r} or {"critical"}


def critical_verdict(history: History, base: Baseline, node: str, latest: events_pb2.NodeTelemetry,
                     classify: Callable[[events_pb2.NodeTelemetry], tuple[int, list[str]]]) -> str:
    """Why a node CRITICAL in ``latest`` is not failed ("": it is): it was critical in this report only (the one
    before it was not: a 0.5 s latency percentile on a busy machine crosses the line and comes back), or it was
    critical on the same metrics before the incident already (the repair cannot be asked to fix that)."""
    now = _critical_metrics(health_view(latest), classify)
    rows = [r for r in history.since(node, 0) if r.health is not None and r.ts_ns < latest.meta.ts_unix_ns]
    if rows and latest.meta.ts_unix_ns - rows[-1].ts_ns <= SPIKE_GAP_S * 1e9 \
            and not _critical_metrics(rows[-1].health, classify):   # type: ignore[arg-type]
        return "critical in one report only"
    before: set[str] = set()
    for r in history.since(node, base.start_ns):
        if r.ts_ns > base.end_ns:
            break
        if r.health is not None:
            before |= _critical_metrics(r.health, classify)
    if now and now <= before:
        return f"critical before the incident too ({', '.join(sorted(now))})"
    return ""


def check(action: events_pb2.ActionSpec, nodes: list[events_pb2.NodeTelemetry],
          classify: Callable[[events_pb2.NodeTelemetry], tuple[int, list[str]]],
          steps_ok: bool, base: Baseline, effect: events_pb2.ExpectedEffect, history: History,
          acted_ns: int, hold_s: float = 1.0) -> Outcome:
    """The checks of the module doc on the latest telemetry ``nodes`` (one report per node)."""
    out = Outcome(recovered=True)
    if not steps_ok:
        out.failed.append("action steps failed")
    if base.missing:
        out.failed.append(f"cannot verify: {base.missing}")
        out.recovered, out.final = False, True
        return out
    now = {t.node_id: t for t in nodes}
    removed = set(effect.removed)
    expected = (base.reachable - removed) | set(effect.rejoins)
    warnings: list[str] = []
    failed_before = len(out.failed)
    for n in sorted(expected):
        t = now.get(n)
        if t is None:
            out.failed.append(f"{n} reports nothing (it was reachable before the incident)")
        elif not t.reachable:
            out.failed.append(f"{n} unreachable" + (" (has not rejoined)" if n in effect.rejoins
                                                    else " (it was reachable before the incident)"))
        else:
            health, reasons = classify(t)
            excused = critical_verdict(history, base, n, t, classify) if health == common_pb2.HEALTH_CRITICAL else ""
            if excused:
                warnings.append(f"{n} {excused}: " + "; ".join(reasons))
            elif health == common_pb2.HEALTH_CRITICAL:
                out.failed.append(f"{n} critical: " + "; ".join(reasons))
            elif health == common_pb2.HEALTH_WARNING:
                warnings.append(f"{n} warning: " + "; ".join(reasons))
    if expected and len(out.failed) == failed_before:
        band = f" ({len(warnings)} in the warning band: {'; '.join(warnings)[:300]})" if warnings else ""
        out.passed.append(f"{len(expected)} nodes reachable as before the incident, none critical{band}")
    for n in effect.rejoins:
        if n in now and now[n].reachable:
            out.passed.append(f"{n} rejoined")
    actual = connectivity({n: list(t.neighbours) for n, t in now.items() if t.reachable}, expected)
    if actual + 1e-9 < effect.connectivity:
        out.failed.append(f"connectivity {actual:.2f} below the {effect.connectivity:.2f} the twin predicts for "
                          f"{action_name(action.kind)} {action.target_node}".rstrip())
    else:
        out.passed.append(f"connectivity {actual:.2f} as the twin predicts ({effect.connectivity:.2f})")
    if action.kind in CHANGES:
        try:
            ok, bad = changes.check(CHANGES[action.kind], action.params, nodes)
        except changes.ChangeError as e:
            ok, bad = [], [str(e)]
        out.passed.extend(ok)
        out.failed.extend(bad)
    if base.flows:
        check_flows(base, effect, history, acted_ns, hold_s, out)
    else:
        out.passed.append("no flow delivered before the incident: delivery not measured")
    out.recovered = not out.failed
    return out


# ---- harm ---------------------------------------------------------------------------------------
@dataclass
class BeforeAction:
    """The mesh just before the action: each flow's delivery, the connectivity, who was reachable."""
    flows: dict[Flow, Delivery] = field(default_factory=dict)
    connectivity: float = 1.0
    reachable: frozenset[str] = frozenset()


def before_action(history: History, base: Baseline, nodes: list[events_pb2.NodeTelemetry], acted_ns: int,
                  window_s: float = 2.0) -> BeforeAction:
    out = BeforeAction()
    for (src, dst) in base.flows:
        win = history.window(src, acted_ns - int(window_s * 1e9), acted_ns)
        if win is not None:
            out.flows[(src, dst)] = delivery(win[0], win[1], dst)
    expected = base.reachable
    out.connectivity = connectivity({t.node_id: list(t.neighbours) for t in nodes if t.reachable}, expected)
    out.reachable = frozenset(t.node_id for t in nodes if t.reachable)
    return out


def harm(before: BeforeAction, base: Baseline, effect: events_pb2.ExpectedEffect, history: History,
         nodes: list[events_pb2.NodeTelemetry], acted_ns: int, hold_s: float = 1.0,
         margin: float = HARM_MARGIN) -> list[str]:
    """Why the mesh is worse since the action ([] : it is not): a flow delivering more than ``margin`` below
    what it delivered just before the action (over the latest window of ``hold_s`` after it), or the mesh's
    connectivity below both the twin's prediction and its value just before the action. An action that only
    took out nodes that were down already is not judged."""
    out: list[str] = []
    removed = set(effect.removed)
    if removed and not removed & before.reachable:
        return out
    for (src, dst), pre in sorted(before.flows.items()):
        if src in removed or dst in removed or pre.sent < MIN_PACKETS or pre.acked == 0:
            continue
        win = held_window(history, src, acted_ns, hold_s, dst)
        if win is None:
            continue
        post = delivery(win[0], win[1], dst)
        if not post.at_least(pre.ratio - margin):
            out.append(f"flow {src}->{dst} delivers {post.text()} since the action, "
                       f"{100 * pre.ratio:.0f} % just before it")
    expected = (base.reachable - removed) | set(effect.rejoins)
    now = connectivity({t.node_id: list(t.neighbours) for t in nodes if t.reachable}, expected)
    if now + 1e-9 < min(effect.connectivity, before.connectivity):
        out.append(f"connectivity {now:.2f} since the action, {before.connectivity:.2f} just before it "
                   f"(the twin predicted {effect.connectivity:.2f})")
    return out


def verification(req: events_pb2.ActionRequest, outcome: Outcome, mttr_ms: float,
                 effect: events_pb2.ExpectedEffect | None = None, rolled_back: bool = False,
                 escalated: bool = False) -> events_pb2.Verification:
    action = events_pb2.ActionSpec()
    action.CopyFrom(req.action)
    if effect is not None:
        action.expected.CopyFrom(effect)
    return events_pb2.Verification(
        meta=new_meta("executor", req.meta.cycle_id),
        action_id=req.action_id,
        recovered=outcome.recovered,
        mttr_ms=mttr_ms,
        checks_failed=outcome.failed,
        checks_passed=outcome.passed,
        incident_id=req.incident_id,
        fault_type=req.fault_type,
        action=action,
        rolled_back=rolled_back,
        escalated=escalated,
    )
