"""Plan: from an anomaly to a plan and, when auto-approved, an action request."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import networkx as nx

from x0tta6bl4.governance.decision import Decision, DecisionKind, DecisionPolicy, Severity, decide
from x0tta6bl4.ids import derive_id, new_meta
from x0tta6bl4.knowledge.outcomes import ActionStats, rank
from x0tta6bl4.mapek.verify import BRINGS_BACK, REMOVES, REVERSIBLE
from x0tta6bl4.v1 import common_pb2, events_pb2

K = events_pb2
# Candidate actions per fault type, in default order of preference.
FAULT_ACTIONS: dict[str, tuple[events_pb2.ActionKind, ...]] = {
    "node_down": (K.ACTION_KIND_REROUTE, K.ACTION_KIND_RESTART),
    "degrading_link": (K.ACTION_KIND_REROUTE, K.ACTION_KIND_RESTART),
    "congestion": (K.ACTION_KIND_REROUTE,),
    "high_latency": (K.ACTION_KIND_REROUTE,),
    "packet_loss": (K.ACTION_KIND_REROUTE,),
    "flapping": (K.ACTION_KIND_REROUTE, K.ACTION_KIND_RESTART),
    "cpu_overload": (K.ACTION_KIND_RESTART, K.ACTION_KIND_REROUTE),
    "memory_leak": (K.ACTION_KIND_RESTART,),
    "compromised": (K.ACTION_KIND_ISOLATE, K.ACTION_KIND_ROTATE_KEYS),
    "key_compromise": (K.ACTION_KIND_ROTATE_KEYS, K.ACTION_KIND_ISOLATE),
}
DEFAULT_ACTIONS: tuple[events_pb2.ActionKind, ...] = (K.ACTION_KIND_REROUTE,)
GENERATION = "generation"   # ActionSpec.params / MeshCommand.params: the mesh generation an action is for
MAX_AUTO_CASCADE = 2

EFFECT = {
    K.ACTION_KIND_REROUTE: "neighbours avoid {node}; routes are rediscovered around it",
    K.ACTION_KIND_ISOLATE: "{node}'s identity is revoked; its beacons are rejected and it is routed around",
    K.ACTION_KIND_ROTATE_KEYS: "fresh ML-KEM-768/ML-DSA-65 keys for {node}; old keys retired after the overlap",
    K.ACTION_KIND_RESTART: "{node}'s agent process is restarted and rejoins the mesh",
    K.ACTION_KIND_DEPLOY: "blue-green deployment of a new agent version",
    K.ACTION_KIND_CONFIG_CHANGE: "configuration change applied to {node}",
    K.ACTION_KIND_REINSTATE: "every node may route through {node} again",
}

_SEVERITY = {
    common_pb2.SEVERITY_LOW: Severity.LOW,
    common_pb2.SEVERITY_MEDIUM: Severity.MEDIUM,
    common_pb2.SEVERITY_HIGH: Severity.HIGH,
    common_pb2.SEVERITY_CRITICAL: Severity.CRITICAL,
}

_DECISION = {
    DecisionKind.AUTO_EXECUTE: K.DECISION_KIND_AUTO_EXECUTE,
    DecisionKind.EMERGENCY_VOTE: K.DECISION_KIND_EMERGENCY_VOTE,
    DecisionKind.STANDARD_VOTE: K.DECISION_KIND_STANDARD_VOTE,
    DecisionKind.OBSERVE: K.DECISION_KIND_OBSERVE,
}


def action_name(kind: int) -> str:
    return K.ActionKind.Name(kind).removeprefix("ACTION_KIND_").lower()


@dataclass
class TwinVerdict:
    connectivity: float = 1.0
    cascade: list[str] = field(default_factory=list)


def candidate_actions(fault_type: str, knowledge: dict[str, ActionStats]) -> list[events_pb2.ActionKind]:
    cands = list(FAULT_ACTIONS.get(fault_type, DEFAULT_ACTIONS))
    order = rank([action_name(k) for k in cands], knowledge)
    by_name = {action_name(k): k for k in cands}
    return [by_name[n] for n in order]


# ---- do no harm -------------------------------------------------------------------------------------
LIVE_FLOW_IDLE_S = 5.0     # a flow that sent DATA this recently is live
MIN_DELIVERY = 0.95        # what an action promises: flows deliver this share of their rate before the incident


@dataclass(frozen=True)
class MeshFacts:
    """What the planner knows of the mesh to do no harm (from the telemetry mirror)."""
    adjacency: dict[str, list[str]] = field(default_factory=dict)
    reachable: frozenset[str] = frozenset()
    flows: tuple[tuple[str, str], ...] = ()       # live flows (source, destination)
    avoided: frozenset[str] = frozenset()          # nodes every other reachable node routes around


def mesh_facts(telemetry: Iterable[events_pb2.NodeTelemetry], idle_s: float = LIVE_FLOW_IDLE_S) -> MeshFacts:
    tel = [t for t in telemetry if t.node_id]
    reachable = frozenset(t.node_id for t in tel if t.reachable)
    flows = tuple(sorted({(t.node_id, f.dest) for t in tel if t.reachable for f in t.flows if f.idle_s <= idle_s}))
    reporters = [t for t in tel if t.reachable]
    avoided = frozenset(n for n in reachable
                        if (others := [t for t in reporters if t.node_id != n]) and all(n in t.avoided for t in others))
    return MeshFacts({t.node_id: list(t.neighbours) for t in tel}, reachable, flows, avoided)


def flows_cut(mesh: MeshFacts, node: str) -> list[str]:
    """Live flows that reach their destination over the reported links (avoiding the nodes everyone routes
    around) now, and would not once ``node`` is taken out too."""
    g = nx.Graph()
    usable = mesh.reachable - mesh.avoided
    g.add_nodes_from(usable)
    g.add_edges_from((a, b) for a in usable for b in mesh.adjacency.get(a, ()) if b in usable and b != a)
    without = g.copy()
    if node in without:
        without.remove_node(node)
    return [f"{s}->{d}" for s, d in mesh.flows
            if s in g and d in g and nx.has_path(g, s, d) and not (s in without and d in without
                                                                  and nx.has_path(without, s, d))]


def refusal(kind: int, node: str, mesh: MeshFacts) -> str:
    """Why taking ``node`` out with ``kind`` would do harm the loop must not do on its own ("": it would not):
    it is a live endpoint of a flow, or no path would be left for a live flow. A node that is down already
    costs nothing to route around."""
    if kind not in REMOVES or node not in mesh.reachable:
        return ""
    ends = [f"{s}->{d}" for s, d in mesh.flows if node in (s, d)]
    if ends:
        return (f"{node} is a live endpoint of flow {', '.join(ends)}: a live endpoint is never routed around "
                "or isolated")
    cut = flows_cut(mesh, node)
    if cut:
        avoided = ", ".join(sorted(mesh.avoided)[:8]) or "none"
        return (f"taking {node} out would leave flow {', '.join(cut)} no path (around it and the nodes avoided: "
                f"{avoided})")
    return ""


def expected_effect(kind: events_pb2.ActionKind, node: str, verdict: TwinVerdict) -> events_pb2.ExpectedEffect:
    """What an action on ``node`` states it will do (the executor verifies the mesh against it)."""
    return events_pb2.ExpectedEffect(
        summary=EFFECT.get(kind, "").format(node=node), removed=[node] if kind in REMOVES and node else [],
        rejoins=[node] if kind in BRINGS_BACK and node else [], connectivity=verdict.connectivity,
        min_delivery=MIN_DELIVERY, reversible=kind in REVERSIBLE)


def escalated_claim(cycle_id: str, escalated_ns: int, generation: str = "") -> bytes:
    """The incident went to operators: an open claim (nothing is planned for it until the claim expires)."""
    doc: dict = {"cycle": cycle_id, "escalated_ns": int(escalated_ns)}
    if generation:
        doc["generation"] = generation
    return json.dumps(doc).encode()


def make_plan(anomaly: events_pb2.Anomaly, policy: DecisionPolicy,
              knowledge: dict[str, ActionStats] | None = None,
              twin: Callable[[int, str], TwinVerdict] | None = None,
              mesh: MeshFacts | None = None, failed: frozenset[str] = frozenset()) -> tuple[events_pb2.Plan, Decision]:
    """Choose what to do about an anomaly (decision matrix + twin + knowledge). With ``mesh``, an action that
    would take out a live endpoint of a flow or leave a live flow no path is refused: the plan observes and
    names the reason in ``escalation`` (the planner hands it to operators)."""
    decision = decide(anomaly.confidence, _SEVERITY.get(anomaly.severity, Severity.LOW), policy)
    ranked = candidate_actions(anomaly.fault_type, knowledge or {})
    actions = [k for k in ranked if action_name(k) not in failed] or ranked
    exhausted = len(actions) == len(ranked) and bool(failed & {action_name(k) for k in ranked})
    node = anomaly.root_cause
    chosen = actions[0]
    verdicts = {k: twin(k, node) if twin else TwinVerdict() for k in actions}
    verdict = verdicts[chosen]
    # A node that is already down has already shed its load: routing around it adds no risk, the
    # cascade is reported for the operator. Taking a *live* node out (isolate, or rerouting around a
    # degraded one) could start the cascade, so that needs a human.
    if decision.kind is DecisionKind.AUTO_EXECUTE and anomaly.fault_type != "node_down" \
            and len(verdict.cascade) > MAX_AUTO_CASCADE:
        # the spec: "if len(cascade) > 2: cascade risk, manual review required"
        decision = Decision(DecisionKind.EMERGENCY_VOTE, policy.emergency_vote_duration_s,
                            policy.emergency_quorum, policy.emergency_threshold,
                            f"{decision.reason}; but the twin predicts a cascade of {len(verdict.cascade)} nodes: "
                            "manual review (emergency vote)", decision.confidence, decision.severity)
    refused = refusal(chosen, node, mesh) if mesh is not None and decision.kind is not DecisionKind.OBSERVE else ""
    if exhausted and decision.kind is not DecisionKind.OBSERVE and not refused:
        refused = (f"every candidate action for {anomaly.fault_type} at {node} already failed for this incident "
                   f"({', '.join(sorted(failed))}): the loop does not repeat them")
    if refused:
        decision = Decision(DecisionKind.OBSERVE, 0.0, 0.0, 0.0,
                            f"{decision.reason}; refused: {refused}; escalated to operators",
                            decision.confidence, decision.severity)
    elif chosen == K.ACTION_KIND_REROUTE and mesh is not None and node in mesh.avoided \
            and decision.kind is not DecisionKind.OBSERVE:
        # every node routes around it already (an earlier repair, until its probation ends): rerouting again
        # changes nothing and spends its action budget. A fault of a node on probation - its links coming
        # back after a flap, the last of a congestion in its latency - is observed, not acted on.
        decision = Decision(DecisionKind.OBSERVE, 0.0, 0.0, 0.0,
                            f"{decision.reason}; {node} is already routed around by every node: nothing to do",
                            decision.confidence, decision.severity)
    specs = [events_pb2.ActionSpec(kind=k, target_node=node, expected=expected_effect(k, node, verdicts[k]))
             for k in actions]
    chosen_spec = specs[actions.index(chosen)]
    plan = events_pb2.Plan(
        meta=new_meta("planner", anomaly.meta.cycle_id),
        plan_id=derive_id("plan", anomaly.meta.event_id),
        incident_id=anomaly.incident_id,
        fault_type=anomaly.fault_type,
        root_cause=node,
        confidence=anomaly.confidence,
        severity=anomaly.severity,
        decision=_DECISION[decision.kind],
        action=chosen_spec,
        alternatives=[s for s in specs if s is not chosen_spec],
        expected_effect=EFFECT.get(chosen, "").format(node=node),
        predicted_connectivity=verdict.connectivity,
        cascade_risk=verdict.cascade,
        rationale=decision.reason,
        vote_duration_s=int(decision.vote_duration_s),
        first_symptom_unix_ns=anomaly.first_symptom_unix_ns,
        escalation=refused,
    )
    return plan, decision


def action_request(plan: events_pb2.Plan, approved_by: str, proposal_id: str = "",
                   timeout_s: float = 30.0) -> events_pb2.ActionRequest:
    return events_pb2.ActionRequest(
        meta=new_meta("planner" if approved_by == "auto" else "governance", plan.meta.cycle_id),
        action_id=derive_id("action", plan.plan_id, proposal_id),
        plan_id=plan.plan_id,
        action=plan.action,
        approved_by=approved_by,
        proposal_id=proposal_id,
        timeout_s=timeout_s,
        first_symptom_unix_ns=plan.first_symptom_unix_ns,
        incident_id=plan.incident_id,
        fault_type=plan.fault_type,
    )


# ---- incident claims (the planner's de-duplication in the `incidents` bucket) --------------------
# One entry per incident id (root cause + fault type). While an incident is being handled its entry
# is an open claim; once its repair is verified the entry becomes a resolution marker carrying the
# time of the verification. Windows overlap, so anomalies of an incident keep arriving for a moment
# after it was repaired: one whose first symptom predates the verified repair belongs to the incident
# just resolved and must not be planned again (re-planning it would, say, make every node avoid a
# node that has just come back). A symptom that starts after the repair is a new incident. An entry
# of another mesh generation (the node's mesh was replaced since) is no claim on this mesh's incident.
CLAIM_NEW, CLAIM_OPEN, CLAIM_STALE = "new", "open", "stale"


def _with_generation(doc: dict, generation: str) -> bytes:
    return json.dumps({**doc, "generation": generation} if generation else doc).encode()


def open_claim(cycle_id: str, generation: str = "", observe: bool = False,
               failed: Iterable[str] = ()) -> bytes:
    """An open claim; ``observe``: the anomaly that made it is only observed (confidence below the vote line), so
    a later finding of the same incident that would act or go to a vote is planned after all; ``failed``: the
    actions that already failed for this incident (carried over from a released claim)."""
    doc: dict = {"cycle": cycle_id, "observe": True} if observe else {"cycle": cycle_id}
    if failed:
        doc["failed"] = sorted(set(failed))
    return _with_generation(doc, generation)


def released_claim(cycle_id: str, released_ns: int, failed: Iterable[str], generation: str = "") -> bytes:
    """An incident whose action did not repair it (and was not escalated): the next finding is planned at once,
    but not with an action that already failed for it (``failed``) - repeating it would only spend the node's
    action budget (and a restart of a lossy node makes it look flapping: a second incident of the loop's own
    making)."""
    return _with_generation({"cycle": cycle_id, "released_ns": int(released_ns), "failed": sorted(set(failed))},
                            generation)


def failed_actions(existing: bytes | None) -> frozenset[str]:
    """The actions a claim records as failed for its incident (none for a missing or older claim)."""
    failed = _doc(existing).get("failed") if existing else None
    return frozenset(str(x) for x in failed) if isinstance(failed, list) else frozenset()


def observes(anomaly: events_pb2.Anomaly, policy: DecisionPolicy) -> bool:
    """Whether the decision matrix alone only observes ``anomaly`` (nothing to act on, nothing to vote on)."""
    return decide(anomaly.confidence, _SEVERITY.get(anomaly.severity, Severity.LOW), policy).kind \
        is DecisionKind.OBSERVE


def resolved_claim(cycle_id: str, verified_ns: int, generation: str = "") -> bytes:
    return _with_generation({"cycle": cycle_id, "resolved_ns": int(verified_ns)}, generation)


def claim_verdict(existing: bytes | None, first_symptom_ns: int, generation: str = "", acting: bool = False) -> str:
    """What to do with an anomaly whose incident already has an entry ``existing`` (None: no entry);
    ``generation``: the mesh generation the anomaly's root cause reports from ("" unknown); ``acting``: the
    anomaly would be acted on or voted on (an open claim made by an observed-only finding then gives way: the
    evidence grew - a lossy node is first seen by one neighbour, observed, and blamed a window later)."""
    if existing is None:
        return CLAIM_NEW
    observed = False
    doc = None
    try:
        doc = json.loads(existing)
        resolved = int(doc.get("resolved_ns", 0)) if isinstance(doc, dict) else 0
        theirs = str(doc.get("generation", "")) if isinstance(doc, dict) else ""
        observed = bool(doc.get("observe")) if isinstance(doc, dict) else False
    except (ValueError, TypeError):
        resolved, theirs = 0, ""           # an older plain claim (cycle id bytes): still open
    if generation and theirs and theirs != generation:
        return CLAIM_NEW                   # the claim of a mesh that is gone
    if isinstance(doc, dict) and doc.get("released_ns"):
        return CLAIM_NEW                   # its action did not repair it: plan again (another action)
    if not resolved:
        return CLAIM_NEW if observed and acting else CLAIM_OPEN
    return CLAIM_NEW if first_symptom_ns > resolved else CLAIM_STALE


# ---- reinstating a node that was routed around ---------------------------------------------------
# A verified REROUTE leaves the node in the `avoided` bucket. The planner looks at every avoided node
# once a tick: when the node reports again, reachable and HEALTHY, and stays so for the probation
# period, it is reinstated (ACTION_KIND_REINSTATE: every node may route through it again). A node
# that turns unhealthy during probation starts its probation over. All of it lives in the record, so
# replicas agree (compare-and-set on its revision) and a restart loses nothing.
WAIT, UPDATE, REINSTATE = "wait", "update", "reinstate"
REINSTATE_STALE_NS = 120 * 10**9   # a reinstatement without a verification by then is tried again


def avoided_record(node: str, plan_id: str, since_ns: int, fault: str = "node_down", generation: str = "") -> bytes:
    """``fault``: why it was routed around (a dead node must be back and healthy; a degraded one's links
    clean too); ``generation``: the mesh generation it was routed around in."""
    return _with_generation({"node": node, "plan": plan_id, "since_ns": int(since_ns), "fault": fault},
                            generation)


def avoided_fault(record: bytes) -> str:
    return str(_doc(record).get("fault", "node_down"))


def avoided_generation(record: bytes) -> str:
    return str(_doc(record).get("generation", ""))


def _doc(record: bytes) -> dict:
    try:
        doc = json.loads(record)
    except (ValueError, TypeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def avoided_node(record: bytes) -> str:
    return str(_doc(record).get("node", ""))


def reinstate_step(record: bytes, healthy: bool, now_ns: int, probation_ns: int) -> tuple[str, bytes | None]:
    """(WAIT, None), (UPDATE, new record) or (REINSTATE, new record) for one avoided node."""
    doc = _doc(record)
    if not doc.get("node"):
        return WAIT, None                   # unreadable
    if doc.get("reinstating_ns"):
        if now_ns - int(doc["reinstating_ns"]) > REINSTATE_STALE_NS:   # no verification ever came back
            return UPDATE, reinstate_failed(record)
        return WAIT, None                   # a reinstatement is under way
    since = doc.get("healthy_since_ns")
    if not healthy:
        if since:
            doc.pop("healthy_since_ns")
            return UPDATE, json.dumps(doc).encode()
        return WAIT, None
    if not since:
        doc["healthy_since_ns"] = int(now_ns)
        return UPDATE, json.dumps(doc).encode()
    if now_ns - int(since) >= probation_ns:
        doc["reinstating_ns"] = int(now_ns)
        return REINSTATE, json.dumps(doc).encode()
    return WAIT, None


def reinstate_failed(record: bytes) -> bytes:
    """The reinstatement did not verify: the node starts its probation over."""
    doc = _doc(record)
    doc.pop("reinstating_ns", None)
    doc.pop("healthy_since_ns", None)
    return json.dumps(doc).encode()


def reinstate_plan(record: bytes, probation_s: float) -> events_pb2.Plan:
    """The auto-approved plan that reinstates the node of ``record`` (from a REINSTATE step)."""
    doc = _doc(record)
    node, since = str(doc["node"]), int(doc.get("healthy_since_ns", 0))
    key = (node, str(doc.get("since_ns", 0)), str(doc.get("reinstating_ns", 0)))
    fault, generation = str(doc.get("fault", "node_down")), str(doc.get("generation", ""))
    back = "reachable and healthy" if fault == "node_down" else "reachable and healthy with clean links"
    return events_pb2.Plan(
        meta=new_meta("planner", derive_id("cycle", "reinstate", *key)),
        plan_id=derive_id("plan", "reinstate", *key),
        incident_id=f"{node}.reinstate",
        fault_type="recovered",
        root_cause=node,
        confidence=1.0,
        severity=common_pb2.SEVERITY_LOW,
        decision=K.DECISION_KIND_AUTO_EXECUTE,
        action=events_pb2.ActionSpec(kind=K.ACTION_KIND_REINSTATE, target_node=node,
                                     params={GENERATION: generation} if generation else {}),
        expected_effect=EFFECT[K.ACTION_KIND_REINSTATE].format(node=node),
        rationale=f"{node} was routed around by a REROUTE ({fault}) and has been {back} for "
                  f"{probation_s:g} s: undo the avoid (auto: it reverses an automatic action)",
        first_symptom_unix_ns=since,
    )
