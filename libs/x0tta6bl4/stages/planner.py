"""Plan stage: anomaly -> plan (decision matrix, digital twin, knowledge) -> action when auto-approved;
verified outcomes -> knowledge; nodes routed around are reinstated once healthy again.

* :func:`on_anomaly` drops an anomaly whose root cause is in planned maintenance (``maint.<node>`` in the
  ``health`` bucket, kept by the monitor from ``maintenance.*`` MeshEvents; audited
  ``anomaly.maintenance``), claims the anomaly's incident in the ``incidents`` bucket (one plan per
  incident across replicas; late anomalies of a repaired incident are stale, see
  :func:`x0tta6bl4.mapek.plan.claim_verdict`; a claim of another mesh generation does not count), plans
  it for the mesh generation its root cause reports from (``params["generation"]`` of the actions: a
  host of another generation refuses their commands) and, when the decision is AUTO_EXECUTE,
  publishes the ActionRequest, signed as approved by the planner (:func:`approved_request`; the executor
  runs nothing unsigned). Other decisions leave the plan to governance.
* :func:`on_verified` refuses a verification without an incident id (dead-lettered once: its outcome
  belongs to no incident), records the outcome in the knowledge base once per action id (per fault
  type and action, with the topology size at verification time), keeps the ``avoided`` bucket (a
  verified REROUTE puts the node in, a verified REINSTATE takes it out) and resolves or releases the
  incident claim.
* :func:`reinstate_tick` (every ``reinstate_tick_s``, :func:`reinstate_loop`) moves each avoided node's
  probation on and reinstates the node once it has been reachable and healthy -- by the deployment's
  threshold table -- for ``reinstate_after_s``; a node routed around for a gray failure (slow, lossy,
  congested, flapping) must also have clean links, measured by itself and its neighbours (HELLO
  beacons still cross a node nobody routes through). The record of a node whose mesh generation
  changed is dropped: the new mesh's agents never avoided it.

Every shared write is a compare-and-set (:func:`x0tta6bl4.bus.ports.cas_update`): replicas agree.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.ports import DELETE, KV, CasConflict, Context, Entry, KeyNotFound, Reject, _Delete, cas_update
from x0tta6bl4.governance.decision import Decision, DecisionKind, DecisionPolicy
from x0tta6bl4.ids import new_meta
from x0tta6bl4.knowledge.outcomes import ActionStats
from x0tta6bl4.knowledge.outcomes import key as knowledge_key
from x0tta6bl4.mapek import plan as planning
from x0tta6bl4.mapek.approval import sign_approval
from x0tta6bl4.mapek.health import classify_node, links_healthy
from x0tta6bl4.mapek.twin_adapter import twin_verdict
from x0tta6bl4.monitoring.thresholds import Thresholds
from x0tta6bl4.trust import Signer
from x0tta6bl4.v1 import common_pb2, events_pb2

log = logging.getLogger("x0tta6bl4.planner")

CLAIM_TRIES = 5          # races with other planner replicas and with a verification
KNOWLEDGE_TRIES = 10     # concurrent outcomes of the same fault and action


@dataclass
class PlannerDeps:
    policy: DecisionPolicy
    thresholds: Thresholds
    telemetry: Mapping[str, events_pb2.NodeTelemetry]    # the `telemetry` bucket's mirror (latest per node)
    signer: Signer                                       # the planner's key: signs what it auto-approves
    action_timeout_s: float = 30.0
    approval_ttl_s: float = 300.0                        # + action_timeout_s: how long an approval is valid
    reinstate_after_s: float = 10.0                      # 0: never reinstate
    reinstate_tick_s: float = 1.0
    clock_ns: Callable[[], int] = time.time_ns
    # the `health` bucket's mirror: maint.<node> holds a node's planned maintenance (the monitor keeps it)
    health: Mapping[str, bytes] = field(default_factory=dict)

    def generation(self, node: str) -> str:
        """The mesh generation ``node`` last reported from ("" unknown)."""
        t = self.telemetry.get(subjects.token(node)) if node else None
        return t.mesh_generation if t is not None else ""

    def maintenance(self, node: str) -> dict | None:
        """The node's maintenance record (who announced it, why, since when) while it is in maintenance."""
        return maintenance_of(self.health, node, self.generation(node))


MAINTENANCE_PREFIX = "maint."


def maintenance_key(node: str) -> str:
    return MAINTENANCE_PREFIX + subjects.token(node)


def maintenance_of(health: Mapping[str, bytes], node: str, generation: str = "") -> dict | None:
    """``node``'s record in the ``health`` bucket's ``maint.`` keys, unless it is for another mesh
    generation than ``generation`` (a mesh started since is not in maintenance)."""
    raw = health.get(maintenance_key(node)) if node else None
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    theirs = str(doc.get("generation", ""))
    if generation and theirs and theirs != generation:
        return None
    return doc


# ---- anomalies -> plans -----------------------------------------------------------------------------
def approved_request(plan: events_pb2.Plan, deps: PlannerDeps) -> events_pb2.ActionRequest:
    """The ActionRequest of an auto-approved plan, signed by the planner; valid for the action's timeout
    plus ``approval_ttl_s`` (the time the executor may take to get to it)."""
    req = planning.action_request(plan, "auto", timeout_s=deps.action_timeout_s)
    return sign_approval(req, deps.signer, deps.action_timeout_s + deps.approval_ttl_s, deps.clock_ns())


async def claim(anomaly: events_pb2.Anomaly, ctx: Context, generation: str = "", observe: bool = False,
                failed: frozenset[str] = frozenset()) -> bool:
    """Claim the anomaly's incident (True: plan it); a duplicate or stale anomaly is audited.
    ``generation``: the mesh generation of its root cause (a claim of another generation is no claim);
    ``observe``: the anomaly is only observed (its claim gives way to a later finding that acts or votes)."""
    incidents = await ctx.kv("incidents")
    verdict = planning.CLAIM_NEW

    def change(entry: Entry | None) -> bytes | None:
        nonlocal verdict
        verdict = planning.claim_verdict(entry.value if entry else None, anomaly.first_symptom_unix_ns, generation,
                                         acting=not observe)
        carried = failed | planning.failed_actions(entry.value if entry else None)   # kept until it expires
        return planning.open_claim(anomaly.meta.cycle_id, generation, observe, carried) \
            if verdict == planning.CLAIM_NEW else None

    try:
        if (await cas_update(incidents, anomaly.incident_id, change, tries=CLAIM_TRIES)).written:
            return True
    except CasConflict:
        verdict = planning.CLAIM_OPEN     # lost every race: another replica is on it
    await not_planned(anomaly, ctx, verdict)
    return False


async def not_planned(anomaly: events_pb2.Anomaly, ctx: Context, verdict: str) -> None:
    await ctx.audit("anomaly.stale" if verdict == planning.CLAIM_STALE else "anomaly.duplicate",
                    anomaly.incident_id, {"node": anomaly.node_id})


async def claim_open_to(anomaly: events_pb2.Anomaly, ctx: Context, generation: str = "") -> tuple[str, frozenset[str]]:
    """The claim verdict an acting finding of the anomaly's incident would get now (nothing written), and the
    actions that already failed for the incident: a finding that cannot be planned anyway is not planned
    (planning costs a twin run per candidate action)."""
    incidents = await ctx.kv("incidents")
    try:
        existing: bytes | None = (await incidents.get(anomaly.incident_id)).value
    except KeyNotFound:
        existing = None
    return (planning.claim_verdict(existing, anomaly.first_symptom_unix_ns, generation, acting=True),
            planning.failed_actions(existing))


async def knowledge_for(ctx: Context, fault: str) -> dict[str, ActionStats]:
    """What the knowledge base knows of each candidate action for ``fault``."""
    kv = await ctx.kv("knowledge")
    out = {}
    for kind in planning.FAULT_ACTIONS.get(fault, planning.DEFAULT_ACTIONS):
        name = planning.action_name(kind)
        with contextlib.suppress(KeyNotFound):
            out[name] = ActionStats.from_json((await kv.get(knowledge_key(fault, name))).value)
    return out


def for_generation(plan: events_pb2.Plan, generation: str) -> events_pb2.Plan:
    """The plan's actions (chosen and alternatives) name the mesh generation they are for."""
    if generation:
        for spec in (plan.action, *plan.alternatives):
            spec.params[planning.GENERATION] = generation
    return plan


async def on_anomaly(anomaly: events_pb2.Anomaly, ctx: Context, deps: PlannerDeps) -> None:
    maint = deps.maintenance(anomaly.root_cause)
    if maint is not None:      # planned: nothing to repair (the monitor starts no cycle for it either)
        await ctx.audit("anomaly.maintenance", anomaly.incident_id, {
            "node": anomaly.root_cause, "fault": anomaly.fault_type, "reason": str(maint.get("reason", "")),
            "since_ns": str(maint.get("since_ns", ""))})
        return
    generation = deps.generation(anomaly.root_cause)

    async def planned() -> tuple[events_pb2.Plan, Decision]:
        adjacency = {t.node_id: list(t.neighbours) for t in deps.telemetry.values()}
        return planning.make_plan(anomaly, deps.policy, await knowledge_for(ctx, anomaly.fault_type),
                                  functools.partial(twin_verdict, adjacency),
                                  planning.mesh_facts(deps.telemetry.values()), failed)

    observe = planning.observes(anomaly, deps.policy)
    made: tuple[events_pb2.Plan, Decision] | None = None
    failed: frozenset[str] = frozenset()
    if not observe:
        # a finding that would act is planned before it claims: a plan refused to do no harm (it would cut a
        # live flow, or take out a live endpoint) only observes, so its claim gives way to a later finding
        # that may act - the facts change (a killed relay still counts as reachable until it is stale; a
        # node routed around comes back) - instead of holding the incident until the claim expires
        # an action that failed for this incident is not chosen again (planning.released_claim)
        verdict, failed = await claim_open_to(anomaly, ctx, generation)
        if verdict != planning.CLAIM_NEW:
            await not_planned(anomaly, ctx, verdict)
            return
        made = await planned()
        observe = made[1].kind is DecisionKind.OBSERVE
    if not await claim(anomaly, ctx, generation, observe, failed):
        return
    plan, decision = made if made is not None else await planned()
    for_generation(plan, generation)
    await ctx.publish(subjects.MAPEK_PLAN, plan)
    await ctx.audit("decision", plan.plan_id, {
        "decision": decision.kind.value, "reason": decision.reason, "incident": plan.incident_id,
        "action": planning.action_name(plan.action.kind), "target": plan.root_cause,
        "confidence": round(anomaly.confidence, 3),
        "auto_approved": decision.kind is DecisionKind.AUTO_EXECUTE})
    if plan.escalation:      # do no harm: refused to act on its own (x0tta6bl4.mapek.plan.refusal)
        await escalate(plan, ctx)
    if decision.kind is DecisionKind.AUTO_EXECUTE:
        await ctx.publish(subjects.MAPEK_ACTION, approved_request(plan, deps))
    # OBSERVE (also a refused plan) keeps the incident claim until it expires (bucket TTL), so the same
    # observation is not re-planned on every window, unless a later finding of the incident would act or
    # vote (see planning.claim_verdict); a different root cause or fault is a different incident.


async def escalate(plan: events_pb2.Plan, ctx: Context) -> None:
    """Hand a refused plan's incident to operators: an Escalation on mapek.escalation, audited."""
    reason = "live_endpoint" if "live endpoint" in plan.escalation else \
        "actions_failed" if "already failed" in plan.escalation else "flow_cut"
    await ctx.publish(subjects.MAPEK_ESCALATION, events_pb2.Escalation(
        meta=new_meta("planner", plan.meta.cycle_id), incident_id=plan.incident_id, action=plan.action,
        fault_type=plan.fault_type, reason=reason, detail=plan.escalation))
    await ctx.audit("incident.escalated", plan.incident_id, {
        "reason": reason, "plan": plan.plan_id, "action": planning.action_name(plan.action.kind),
        "target": plan.root_cause, "detail": plan.escalation[:1000]})


# ---- verified outcomes -> knowledge ---------------------------------------------------------------
async def record_outcome(v: events_pb2.Verification, ctx: Context,
                         topology_size: int) -> tuple[str, ActionStats, bool]:
    """Add one verified outcome to the knowledge base, once per action id: the key, the stats as they
    are now, and whether this call counted it (False: this action's outcome was counted already)."""
    kv = await ctx.kv("knowledge")
    fault, name = v.fault_type or "unknown", planning.action_name(v.action.kind)
    k = knowledge_key(fault, name)

    stats, counted = ActionStats(fault, name), False

    def change(entry: Entry | None) -> bytes | None:
        nonlocal stats, counted
        stats = ActionStats.from_json(entry.value) if entry else ActionStats(fault, name)
        counted = not stats.counted(v.action_id)
        if not counted:
            return None
        return stats.record(v.recovered, v.mttr_ms, topology_size=topology_size, action_id=v.action_id).to_json()

    await cas_update(kv, k, change, tries=KNOWLEDGE_TRIES)
    return k, stats, counted


NOT_REINSTATED = frozenset({"compromised", "key_compromise"})
"""Faults whose REROUTE is not undone on its own: a security verdict is an operator's to lift."""


async def track_avoided(v: events_pb2.Verification, ctx: Context) -> None:
    """A verified REROUTE puts its node in ``avoided`` (with the fault, which decides what "back to
    normal" means, and the mesh generation); a verified REINSTATE takes it out."""
    node = v.action.target_node
    if not node:
        return
    avoided = await ctx.kv("avoided")
    key = subjects.token(node)
    if v.action.kind == events_pb2.ACTION_KIND_REROUTE and v.recovered and v.fault_type not in NOT_REINSTATED:
        # a degraded node routed around looks healthy as soon as no DATA crosses it: its probation
        # also asks for clean links (see node_back), so it does not flap in and out
        await avoided.put(key, planning.avoided_record(node, v.action_id, v.meta.ts_unix_ns,
                                                       v.fault_type or "node_down",
                                                       v.action.params.get(planning.GENERATION, "")))
    elif v.action.kind == events_pb2.ACTION_KIND_REINSTATE:
        def change(entry: Entry | None):
            if entry is None:
                return None
            return DELETE if v.recovered else planning.reinstate_failed(entry.value)
        # one try: a lost race means the node was rerouted again meanwhile, and that newer record stands
        with contextlib.suppress(CasConflict):
            await cas_update(avoided, key, change, tries=1)


async def on_verified(v: events_pb2.Verification, ctx: Context, deps: PlannerDeps) -> None:
    if not v.incident_id:
        # refused at once (dead-lettered, audited by the runtime), never retried: whatever it says belongs
        # to no incident, so it is not counted and resolves nothing
        raise Reject(f"verification of action {v.action_id!r} names no incident_id: not counted in the "
                     "knowledge base, no incident resolved")
    k, stats, counted = await record_outcome(v, ctx, topology_size=len(deps.telemetry))
    if counted:
        await ctx.audit("knowledge.recorded", k, {"recovered": v.recovered, "mttr_ms": round(v.mttr_ms),
                                                  "success_rate": round(stats.success_rate, 2),
                                                  "topology_size": stats.last_topology_size,
                                                  "action_id": v.action_id})
    else:
        await ctx.audit("knowledge.duplicate", k, {"action_id": v.action_id, "recovered": v.recovered})
    await track_avoided(v, ctx)
    incidents = await ctx.kv("incidents")
    generation = v.action.params.get(planning.GENERATION, "")
    if v.recovered:   # late anomalies of this incident (symptom before now) are not planned again
        await incidents.put(v.incident_id, planning.resolved_claim(v.meta.cycle_id, v.meta.ts_unix_ns, generation))
    elif v.escalated:  # handed to operators (e.g. rolled back): nothing is planned for it until the claim expires
        await incidents.put(v.incident_id, planning.escalated_claim(v.meta.cycle_id, v.meta.ts_unix_ns,
                                                                    v.action.params.get("generation", "")))
    else:             # not repaired: the next anomaly may plan again at once, with another action
        failed_kind = planning.action_name(v.action.kind)

        def release(entry: Entry | None) -> bytes:
            before = planning.failed_actions(entry.value if entry else None)
            return planning.released_claim(v.meta.cycle_id, v.meta.ts_unix_ns, before | {failed_kind}, generation)
        with contextlib.suppress(CasConflict):   # a newer claim written meanwhile stands
            await cas_update(incidents, v.incident_id, release, tries=CLAIM_TRIES)


# ---- reinstating nodes routed around --------------------------------------------------------------
def node_healthy(t: events_pb2.NodeTelemetry | None, thresholds: Thresholds) -> bool:
    return t is not None and t.reachable and classify_node(t, thresholds)[0] == common_pb2.HEALTH_HEALTHY


def node_back(node: str, fault: str, deps: PlannerDeps) -> bool:
    """Whether a node routed around for ``fault`` looks back to normal now: reachable and healthy by the
    table; for anything but a dead node also with clean links (its own and its neighbours' view)."""
    if not node_healthy(deps.telemetry.get(subjects.token(node)), deps.thresholds):
        return False
    return fault == "node_down" or links_healthy(node, deps.telemetry, deps.thresholds)[0]


async def reinstate_one(ctx: Context, deps: PlannerDeps, avoided: KV, key: str, now_ns: int) -> None:
    """One avoided node: move its probation on, and reinstate it when it has served it."""
    probation_ns = int(deps.reinstate_after_s * 1e9)
    step, node, dropped = planning.WAIT, "", ""

    def change(entry: Entry | None) -> bytes | _Delete | None:
        nonlocal step, node, dropped
        step, dropped = planning.WAIT, ""
        if entry is None:
            return None
        node = planning.avoided_node(entry.value)
        theirs, now_gen = planning.avoided_generation(entry.value), deps.generation(node)
        if theirs and now_gen and theirs != now_gen:
            dropped = theirs            # the mesh it was avoided in is gone; the new one never avoided it
            return DELETE
        healthy = bool(node) and node_back(node, planning.avoided_fault(entry.value), deps)
        step, record = planning.reinstate_step(entry.value, healthy, now_ns, probation_ns)
        return record

    try:      # one try: when another replica moved the record first, its move stands
        out = await cas_update(avoided, key, change, tries=1)
    except CasConflict:
        return
    if dropped and out.written:
        await ctx.audit("avoided.dropped", node, {"reason": "mesh generation changed", "was": dropped,
                                                  "now": deps.generation(node)})
        return
    if step != planning.REINSTATE or not out.written or out.value is None:
        return
    plan = planning.reinstate_plan(out.value, deps.reinstate_after_s)
    cycle = plan.meta.cycle_id
    await ctx.publish(subjects.MAPEK_PLAN, plan, cycle_id=cycle)
    await ctx.audit("decision", plan.plan_id, {
        "decision": "auto_execute", "reason": plan.rationale, "incident": plan.incident_id,
        "action": "reinstate", "target": node, "auto_approved": True}, cycle_id=cycle)
    await ctx.publish(subjects.MAPEK_ACTION, approved_request(plan, deps), cycle_id=cycle)


async def reinstate_tick(ctx: Context, deps: PlannerDeps, now_ns: int) -> None:
    """One pass over the avoided nodes (a node's trouble, or the broker's, waits for the next tick)."""
    try:
        avoided = await ctx.kv("avoided")
        keys = sorted(await avoided.keys())
    except Exception as e:  # noqa: BLE001 - broker away: next tick
        log.warning("planner: cannot read the avoided nodes: %s", e)
        return
    for key in keys:
        try:
            await reinstate_one(ctx, deps, avoided, key, now_ns)
        except Exception as e:  # noqa: BLE001 - one node's trouble must not stop the loop
            log.warning("planner: reinstating %s failed this tick: %s", key, e)


async def reinstate_loop(ctx: Context, deps: PlannerDeps,
                         sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Run :func:`reinstate_tick` every ``reinstate_tick_s`` (returns at once when reinstating is off)."""
    if deps.reinstate_after_s <= 0:
        return
    while True:
        await sleep(deps.reinstate_tick_s)
        await reinstate_tick(ctx, deps, deps.clock_ns())
