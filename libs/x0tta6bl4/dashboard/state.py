"""What the web dashboard shows, folded from the bus's events (no I/O: the server feeds it, the tests too).

Four sections, each a JSON-able dict the page renders as it is:

- ``mesh``: every node with its health (from its latest telemetry, as ``meshctl mesh status`` classifies it),
  whether it is silent (declared unreachable by the monitor, or no report for ``silent_after_s``), routed
  around (in the planner's ``avoided`` bucket: a verified repair routes the mesh around it), which nodes were
  told to avoid it, and the links: every link ever seen, live or lost.
- ``cycles``: the current MAPE-K cycle (the latest one) and the recent ones that went past analysis, each
  with its trace id (from the ``traceparent`` header) and one line per stage.
- ``proposals``: DAO proposals as governance announces them (``gov.watch.*``), with their tallies.
- ``audit``: the latest audit events (service, type, subject, cycle, trace, chain position).
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from x0tta6bl4.mapek.health import classify_node
from x0tta6bl4.v1 import common_pb2, events_pb2, governance_pb2

SECTIONS = ("mesh", "cycles", "proposals", "audit")
HEALTH_NAMES: dict[int, str] = {common_pb2.HEALTH_UNSPECIFIED: "unknown", common_pb2.HEALTH_HEALTHY: "healthy",
                common_pb2.HEALTH_WARNING: "warning", common_pb2.HEALTH_CRITICAL: "critical"}
STAGES: dict[str, tuple[str, Any]] = {"mapek.telemetry": ("monitor", events_pb2.TelemetryWindow),
          "mapek.anomaly": ("analyze", events_pb2.Anomaly),
          "mapek.plan": ("plan", events_pb2.Plan),
          "mapek.action": ("execute", events_pb2.ActionRequest),
          "mapek.result": ("result", events_pb2.ActionResult),
          "mapek.verified": ("verify", events_pb2.Verification),
          "mapek.escalation": ("escalate", events_pb2.Escalation)}


def natural(name: str) -> tuple[int, str]:
    """n2 before n10."""
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else -1, name)


def layout(nodes: list[str], links: Iterable[tuple[str, str]]) -> dict[str, tuple[float, float]]:
    """Where each node goes on the map, in [0, 1] x [0, 1]: a force-directed layout of the links ever seen,
    started from a grid in name order (a grid mesh stays a grid, a ring becomes a circle, a line a line),
    deterministic for the same nodes and links."""
    if not nodes:
        return {}
    import networkx as nx
    cols = max(1, math.ceil(math.sqrt(len(nodes))))
    rows = max(1, math.ceil(len(nodes) / cols))
    start = {n: ((i % cols) / max(cols - 1, 1), (i // cols) / max(rows - 1, 1)) for i, n in enumerate(nodes)}
    if len(nodes) < 3:
        return start
    g = nx.Graph()
    g.add_nodes_from(nodes)
    g.add_edges_from((a, b) for a, b in links if a in start and b in start)
    pos = nx.spring_layout(g, pos=start, seed=0, iterations=100)
    xs = [float(p[0]) for p in pos.values()]
    ys = [float(p[1]) for p in pos.values()]

    def scale(v: float, lo: float, hi: float) -> float:
        return 0.5 if hi - lo < 1e-9 else (v - lo) / (hi - lo)
    return {n: (round(scale(float(pos[n][0]), min(xs), max(xs)), 4),
                round(scale(float(pos[n][1]), min(ys), max(ys)), 4)) for n in nodes}


def trace_id_of(traceparent: str | None) -> str:
    """The trace id of a W3C ``traceparent`` header ("" when there is none or it is malformed)."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def _action(a: events_pb2.ActionSpec) -> str:
    kind = events_pb2.ActionKind.Name(a.kind).removeprefix("ACTION_KIND_").lower()
    return f"{kind} {a.target_node}".strip()


def _stage_line(stage: str, m: Any) -> str:
    if stage == "monitor":
        return (f"window of {len(m.nodes)} nodes" + (f", trigger {m.trigger_node}" if m.trigger_node else "")
                + (f" ({', '.join(m.trigger_reasons[:2])})" if m.trigger_reasons else ""))
    if stage == "analyze":
        return f"{m.fault_type} at {m.root_cause} (confidence {m.confidence:.2f}, {m.detector or 'detector'})"
    if stage == "plan":
        decision = events_pb2.DecisionKind.Name(m.decision).removeprefix("DECISION_KIND_").lower()
        return f"{decision}: {_action(m.action)}" + (f" - escalated: {m.escalation}" if m.escalation else "")
    if stage == "execute":
        return f"{_action(m.action)} approved by {m.approved_by or '?'}"
    if stage == "result":
        return f"{'succeeded' if m.success else 'failed'} ({len(m.steps)} steps)"
    if stage == "verify":
        if m.recovered:
            return f"recovered, MTTR {m.mttr_ms / 1000:.2f} s"
        return "not recovered" + (" (rolled back)" if m.rolled_back else "") + \
            (f": {', '.join(m.checks_failed[:3])}" if m.checks_failed else "")
    if stage == "escalate":
        return f"handed to operators: {getattr(m, 'reason', '') or _action(m.action)}"
    return ""


@dataclass
class Cycle:
    cycle_id: str
    trace_id: str = ""
    started_ns: int = 0
    stages: list[dict[str, Any]] = field(default_factory=list)
    target: str = ""
    fault: str = ""
    status: str = "open"        # open | verified | failed | escalated (and, when shown: no anomaly | no action)

    def shown_status(self, now_ns: int, settle_s: float) -> str:
        """An open cycle that has been quiet for ``settle_s``: "no anomaly" (a window and nothing found) or
        "no action" (an anomaly no plan followed, e.g. one already being handled); one with a plan stays open
        (a vote can take minutes)."""
        if self.status != "open":
            return self.status
        last = self.stages[-1]["ts_ns"] if self.stages else self.started_ns
        if now_ns - last < settle_s * 1e9:
            return "open"
        stages = {s["stage"] for s in self.stages}
        if stages <= {"monitor"}:
            return "no anomaly"
        if not stages & {"plan", "execute", "result"}:
            return "no action"
        return "open"

    def as_dict(self, now_ns: int, settle_s: float) -> dict[str, Any]:
        return {"cycle_id": self.cycle_id, "trace_id": self.trace_id, "started_ns": self.started_ns,
                "target": self.target, "fault": self.fault, "status": self.shown_status(now_ns, settle_s),
                "stages": list(self.stages)}


@dataclass
class DashboardState:
    """The dashboard's picture of the system. ``apply_*`` return the sections they changed."""
    max_cycles: int = 20
    max_audit: int = 100
    max_proposals: int = 30
    silent_after_s: float = 5.0
    settle_s: float = 15.0
    nodes: dict[str, events_pb2.NodeTelemetry] = field(default_factory=dict)
    links: set[tuple[str, str]] = field(default_factory=set)
    avoided: dict[str, dict[str, Any]] = field(default_factory=dict)
    cycles: OrderedDict[str, Cycle] = field(default_factory=OrderedDict)
    proposals: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    audit: deque[dict[str, Any]] = field(default_factory=deque)
    _layout: tuple[Any, dict[str, tuple[float, float]]] = (None, {})

    # ---- folding -------------------------------------------------------------------------------------
    def apply_telemetry(self, t: events_pb2.NodeTelemetry) -> set[str]:
        if not t.node_id:
            return set()
        self.nodes[t.node_id] = t
        for peer in t.neighbours:
            if peer and peer != t.node_id:
                self.links.add((min(t.node_id, peer), max(t.node_id, peer)))
        return {"mesh"}

    def forget_node(self, node: str) -> set[str]:
        return {"mesh"} if self.nodes.pop(node, None) is not None else set()

    def apply_avoided(self, key: str, value: bytes | None) -> set[str]:
        """An entry of the planner's ``avoided`` bucket (None or empty: deleted, the node is back)."""
        if not value:
            return {"mesh"} if self.avoided.pop(key, None) is not None else set()
        try:
            record = json.loads(value)
        except ValueError:
            record = {}
        if not isinstance(record, dict):
            record = {}
        node = str(record.get("node") or key)
        self.avoided[node] = {"fault": str(record.get("fault", "")), "since_ns": int(record.get("since_ns", 0) or 0)}
        return {"mesh"}

    def apply_mapek(self, subject: str, data: bytes, traceparent: str | None = None) -> set[str]:
        if subject not in STAGES:
            return set()
        stage, cls = STAGES[subject]
        try:
            m = cls.FromString(data)
        except Exception:  # noqa: BLE001 - a message that does not parse is not shown
            return set()
        cycle_id = m.meta.cycle_id
        if not cycle_id:
            return set()
        c = self.cycles.get(cycle_id)
        if c is None:
            c = self.cycles[cycle_id] = Cycle(cycle_id, started_ns=m.meta.ts_unix_ns)
        c.trace_id = c.trace_id or trace_id_of(traceparent)
        c.started_ns = min(c.started_ns or m.meta.ts_unix_ns, m.meta.ts_unix_ns or c.started_ns)
        c.stages.append({"stage": stage, "ts_ns": m.meta.ts_unix_ns, "producer": m.meta.producer,
                         "text": _stage_line(stage, m)})
        c.stages.sort(key=lambda s: s["ts_ns"])
        if stage == "analyze":
            c.target, c.fault = c.target or m.root_cause, c.fault or m.fault_type
        elif stage in ("plan", "execute"):
            c.target = c.target or m.action.target_node
        if stage == "verify":
            c.status = "verified" if m.recovered else "failed"
            c.target = c.target or m.action.target_node
        elif stage == "escalate":
            c.status = "escalated"
        elif c.status == "open" and stage == "result" and not m.success:
            c.status = "failed"
        self.cycles = OrderedDict(sorted(self.cycles.items(), key=lambda kv: kv[1].started_ns))
        while len(self.cycles) > self.max_cycles * 4:     # periodic windows: keep a bounded history
            self.cycles.popitem(last=False)
        return {"cycles"}

    def apply_audit(self, data: bytes) -> set[str]:
        try:
            ev = events_pb2.AuditEvent.FromString(data)
        except Exception:  # noqa: BLE001 - not an audit event: not shown
            return set()
        self.audit.append({"ts_ns": ev.meta.ts_unix_ns, "service": ev.service, "event_type": ev.event_type,
                           "subject_id": ev.subject_id, "cycle_id": ev.meta.cycle_id, "trace_id": ev.trace_id,
                           "chain": f"{ev.chain_id}#{ev.chain_seq}",
                           "details": {k: ev.details[k][:120] for k in sorted(ev.details)[:6]}})
        while len(self.audit) > self.max_audit:
            self.audit.popleft()
        return {"audit"}

    def apply_proposal(self, data: bytes) -> set[str]:
        try:
            ev = governance_pb2.ProposalEvent.FromString(data)
        except Exception:  # noqa: BLE001 - not a proposal event
            return set()
        p = ev.proposal
        if not p.id:
            return set()
        t = p.tally
        self.proposals[p.id] = {
            "id": p.id, "title": p.title, "action": _action(p.action), "proposer": p.proposer,
            "state": governance_pb2.ProposalState.Name(p.state).removeprefix("PROPOSAL_STATE_").lower(),
            "last_event": ev.kind, "close_reason": p.close_reason, "cycle_id": p.cycle_id,
            "created_ns": p.created_unix_ns, "closes_ns": p.closes_unix_ns, "quorum": p.quorum,
            "threshold": p.threshold, "tally": {"yes": t.yes, "no": t.no, "abstain": t.abstain,
                                                "eligible": t.eligible, "turnout": t.turnout, "voters": t.voters}}
        self.proposals.move_to_end(p.id)
        while len(self.proposals) > self.max_proposals:
            self.proposals.popitem(last=False)
        return {"proposals"}

    # ---- views ----------------------------------------------------------------------------------------
    def mesh_view(self, now_ns: int) -> dict[str, Any]:
        avoided_by: dict[str, list[str]] = {}
        for a, report in self.nodes.items():
            for n in report.avoided:
                avoided_by.setdefault(n, []).append(a)
        names = sorted(set(self.nodes) | {n for link in self.links for n in link} | set(self.avoided), key=natural)
        nodes: list[dict[str, Any]] = []
        for n in names:
            t: events_pb2.NodeTelemetry | None = self.nodes.get(n)
            health: int
            age: float | None
            if t is None:
                health, reasons, age = common_pb2.HEALTH_UNSPECIFIED, ["no report yet"], None
            else:
                health, reasons = classify_node(t)
                age = max(0.0, (now_ns - t.meta.ts_unix_ns) / 1e9) if t.meta.ts_unix_ns else None
            silent = t is None or not t.reachable or (age is not None and age > self.silent_after_s)
            if silent and t is not None and t.reachable:
                health, reasons = common_pb2.HEALTH_CRITICAL, [f"silent for {age:.0f} s"]
            nodes.append({"id": n, "health": HEALTH_NAMES.get(health, "unknown"), "reasons": reasons[:4],
                          "silent": bool(silent), "routed_around": n in self.avoided,
                          "avoided_by": sorted(avoided_by.get(n, []), key=natural),
                          "avoided": self.avoided.get(n), "age_s": None if age is None else round(age, 1),
                          "p99_ms": round(t.p99_latency_ms, 1) if t else None,
                          "loss_pct": round(t.loss_pct, 1) if t else None,
                          "neighbours": sorted(t.neighbours, key=natural) if t else []})
        drawn = (tuple(names), tuple(sorted(self.links)))       # laid out again only when these change
        if self._layout[0] != drawn:
            self._layout = (drawn, layout(names, self.links))
        for node in nodes:
            node["x"], node["y"] = self._layout[1][node["id"]]
        alive = {n["id"] for n in nodes if not n["silent"]}
        live = {(min(a, b), max(a, b)) for a, r in self.nodes.items() if a in alive for b in r.neighbours
                if b in alive and b in self.nodes and a in self.nodes[b].neighbours}
        links = [{"a": a, "b": b, "up": (a, b) in live} for a, b in sorted(self.links)]
        counts: dict[str, int] = {}
        for node in nodes:
            key = "silent" if node["silent"] else node["health"]
            counts[key] = counts.get(key, 0) + 1
        return {"nodes": nodes, "links": links, "counts": counts,
                "routed_around": sorted({x["id"] for x in nodes if x["routed_around"]}, key=natural)}

    def cycles_view(self, now_ns: int) -> dict[str, Any]:
        ordered = list(self.cycles.values())
        current = ordered[-1].as_dict(now_ns, self.settle_s) if ordered else None
        recent = [c.as_dict(now_ns, self.settle_s) for c in ordered if len(c.stages) > 1][-self.max_cycles:]
        return {"current": current, "recent": list(reversed(recent))}

    def section(self, name: str, now_ns: int) -> dict[str, Any]:
        if name == "mesh":
            return self.mesh_view(now_ns)
        if name == "cycles":
            return self.cycles_view(now_ns)
        if name == "proposals":
            return {"proposals": list(reversed(self.proposals.values()))}
        if name == "audit":
            return {"events": list(reversed(self.audit))}
        raise KeyError(f"no dashboard section {name!r}: one of {', '.join(SECTIONS)}")

    def snapshot(self, now_ns: int, sections: Iterable[str] = SECTIONS) -> dict[str, Any]:
        return {s: self.section(s, now_ns) for s in sections}


def load_avoided(state: DashboardState, entries: Mapping[str, bytes]) -> None:
    for k, v in entries.items():
        state.apply_avoided(k, v)
