"""Planner: anomaly -> plan (decision matrix, twin, knowledge) -> action when auto-approved."""
from __future__ import annotations

import asyncio
import logging
import time

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import Field

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import Context, Service, run_service
from x0tta6bl4.bus.reader import kv_snapshot
from x0tta6bl4.config import CommonSettings
from x0tta6bl4.governance.decision import DecisionKind, DecisionPolicy
from x0tta6bl4.knowledge.outcomes import ActionStats
from x0tta6bl4.knowledge.outcomes import key as kkey
from x0tta6bl4.mapek import plan as planning
from x0tta6bl4.mapek.health import classify_node
from x0tta6bl4.mapek.twin_adapter import twin_verdict
from x0tta6bl4.v1 import common_pb2, events_pb2

log = logging.getLogger("x0tta6bl4.planner")


class PlannerSettings(CommonSettings):
    emergency_vote_s: float = Field(300.0, gt=0, le=7 * 86400)
    standard_vote_s: float = Field(3600.0, gt=0, le=7 * 86400)
    action_timeout_s: float = Field(30.0, gt=0, le=3600)
    reinstate_after_s: float = Field(10.0, ge=0, le=86400, description=(
        "a node routed around is reinstated after it has been reachable and healthy this long (0: never)"))
    reinstate_tick_s: float = Field(1.0, gt=0, le=60)


def build(settings: PlannerSettings) -> Service:
    app = Service("planner", settings)
    policy = DecisionPolicy(emergency_vote_duration_s=settings.emergency_vote_s,
                            standard_vote_duration_s=settings.standard_vote_s)

    async def knowledge_for(fault: str) -> dict[str, ActionStats]:
        kv = await app.kv("knowledge")
        out = {}
        for kind in planning.FAULT_ACTIONS.get(fault, planning.DEFAULT_ACTIONS):
            name = planning.action_name(kind)
            try:
                out[name] = ActionStats.from_json((await kv.get(kkey(fault, name))).value)
            except KeyNotFoundError:
                pass
        return out

    telemetry = app.mirror("telemetry", events_pb2.NodeTelemetry.FromString)

    def mesh_adjacency() -> dict[str, list[str]]:
        return {t.node_id: list(t.neighbours) for t in telemetry.values()}

    async def claim(anomaly: events_pb2.Anomaly, ctx: Context) -> bool:
        """Claim the anomaly's incident (True: plan it). See mapek.plan.claim_verdict."""
        incidents = await app.kv("incidents")
        value = planning.open_claim(anomaly.meta.cycle_id)
        for _ in range(5):   # races with other planner replicas and with a verification
            try:
                await incidents.create(anomaly.incident_id, value)
                return True
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await incidents.get(anomaly.incident_id)
            except KeyNotFoundError:
                continue       # resolved and deleted meanwhile: try to create again
            verdict = planning.claim_verdict(entry.value, anomaly.first_symptom_unix_ns)
            if verdict != planning.CLAIM_NEW:
                await ctx.audit("anomaly.duplicate" if verdict == planning.CLAIM_OPEN else "anomaly.stale",
                                anomaly.incident_id, {"node": anomaly.node_id})
                return False
            try:
                await incidents.update(anomaly.incident_id, value, last=entry.revision)
                return True
            except KeyWrongLastSequenceError:
                continue
        await ctx.audit("anomaly.duplicate", anomaly.incident_id, {"node": anomaly.node_id})
        return False

    @app.subscriber("planner", events_pb2.Anomaly)
    async def on_anomaly(anomaly: events_pb2.Anomaly, ctx: Context) -> None:
        if not await claim(anomaly, ctx):
            return
        adjacency = mesh_adjacency()
        plan, decision = planning.make_plan(anomaly, policy, await knowledge_for(anomaly.fault_type),
                                            lambda kind, node: twin_verdict(adjacency, kind, node))
        await ctx.publish(subjects.MAPEK_PLAN, plan)
        await ctx.audit("decision", plan.plan_id, {
            "decision": decision.kind.value, "reason": decision.reason, "incident": plan.incident_id,
            "action": planning.action_name(plan.action.kind), "target": plan.root_cause,
            "confidence": f"{anomaly.confidence:.3f}",
            "auto_approved": decision.kind is DecisionKind.AUTO_EXECUTE})
        if decision.kind is DecisionKind.AUTO_EXECUTE:
            await ctx.publish(subjects.MAPEK_ACTION,
                              planning.action_request(plan, "auto", timeout_s=settings.action_timeout_s))
        # OBSERVE keeps the incident claim until it expires (bucket TTL), so the same observation is
        # not re-planned on every window; a different root cause or fault is a different incident.

    async def track_avoided(v: events_pb2.Verification) -> None:
        """A verified REROUTE of a dead node puts it in `avoided`; a verified REINSTATE takes it out."""
        node = v.action.target_node
        if not node:
            return
        avoided = await app.kv("avoided")
        key = subjects.token(node)
        if v.action.kind == events_pb2.ACTION_KIND_REROUTE and v.recovered and v.fault_type == "node_down":
            # only a node that died and comes back is reinstated on its own: a degraded node that is
            # merely routed around looks healthy once nothing crosses it, and would flap in and out
            await avoided.put(key, planning.avoided_record(node, v.action_id, v.meta.ts_unix_ns))
        elif v.action.kind == events_pb2.ACTION_KIND_REINSTATE:
            try:
                entry = await avoided.get(key)
            except KeyNotFoundError:
                return
            try:
                if v.recovered:
                    await avoided.delete(key, last=entry.revision)
                else:
                    await avoided.update(key, planning.reinstate_failed(entry.value), last=entry.revision)
            except KeyWrongLastSequenceError:
                pass   # the node was rerouted again meanwhile: that newer record stands

    @app.background
    async def reinstate_healthy_nodes() -> None:
        """Every tick: avoided nodes that are back and healthy through the probation are reinstated."""
        if settings.reinstate_after_s <= 0:
            return
        probation_ns = int(settings.reinstate_after_s * 1e9)
        while True:
            await asyncio.sleep(settings.reinstate_tick_s)
            try:
                avoided = await app.kv("avoided")
                keys = sorted(await kv_snapshot(app.nc.jetstream(), "avoided"))
            except Exception as e:  # noqa: BLE001 - broker away: next tick
                log.warning("planner: cannot read the avoided nodes: %s", e)
                continue
            for key in keys:
                try:
                    await reinstate_one(avoided, key, probation_ns)
                except Exception as e:  # noqa: BLE001 - one node's trouble must not stop the loop
                    log.warning("planner: reinstating %s failed this tick: %s", key, e)

    async def reinstate_one(avoided, key: str, probation_ns: int) -> None:
        """One avoided node: move its probation on, and reinstate it when it has served it."""
        try:
            entry = await avoided.get(key)
        except KeyNotFoundError:
            return
        node = planning.avoided_node(entry.value)
        t = telemetry.get(subjects.token(node)) if node else None
        healthy = (t is not None and t.reachable
                   and classify_node(t)[0] == common_pb2.HEALTH_HEALTHY)
        step, record = planning.reinstate_step(entry.value, healthy, time.time_ns(), probation_ns)
        if step == planning.WAIT:
            return
        try:
            await avoided.update(key, record, last=entry.revision)
        except KeyWrongLastSequenceError:
            return            # another replica moved it first
        if step == planning.REINSTATE:
            plan = planning.reinstate_plan(record, settings.reinstate_after_s)
            await app.publish(subjects.MAPEK_PLAN, plan, cycle_id=plan.meta.cycle_id)
            await app.audit("decision", plan.plan_id, {
                "decision": "auto_execute", "reason": plan.rationale, "incident": plan.incident_id,
                "action": "reinstate", "target": node, "auto_approved": True},
                cycle_id=plan.meta.cycle_id)
            await app.publish(subjects.MAPEK_ACTION,
                              planning.action_request(plan, "auto", timeout_s=settings.action_timeout_s),
                              cycle_id=plan.meta.cycle_id)

    @app.subscriber("planner-knowledge", events_pb2.Verification)
    async def on_verified(v: events_pb2.Verification, ctx: Context) -> None:
        kv = await app.kv("knowledge")
        name = planning.action_name(v.action.kind)
        k = kkey(v.fault_type or "unknown", name)
        for _ in range(10):  # optimistic concurrency with other replicas
            try:
                entry = await kv.get(k)
                stats, rev = ActionStats.from_json(entry.value), entry.revision
            except KeyNotFoundError:
                stats, rev = ActionStats(v.fault_type or "unknown", name), 0
            stats.record(v.recovered, v.mttr_ms, topology_size=int(v.meta.ts_unix_ns and 0))
            try:
                if rev:
                    await kv.update(k, stats.to_json(), last=rev)
                else:
                    await kv.create(k, stats.to_json())
                break
            except KeyWrongLastSequenceError:
                continue
        await ctx.audit("knowledge.recorded", k, {"recovered": v.recovered, "mttr_ms": f"{v.mttr_ms:.0f}",
                                                  "success_rate": f"{stats.success_rate:.2f}"})
        await track_avoided(v)
        incidents = await app.kv("incidents")
        if v.recovered:   # late anomalies of this incident (symptom before now) are not planned again
            await incidents.put(v.incident_id, planning.resolved_claim(v.meta.cycle_id, v.meta.ts_unix_ns))
        else:             # not repaired: the next anomaly may plan again at once
            await incidents.delete(v.incident_id)

    return app


def main() -> None:
    run_service("planner", PlannerSettings, build)


if __name__ == "__main__":
    main()
