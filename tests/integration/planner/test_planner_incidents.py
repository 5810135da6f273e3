"""The planner plans an incident once; after its repair is verified, late anomalies of the same incident
(symptom before the verification) are not planned again, while a new symptom is a new incident.

Real nats-server and planner process; events go through JetStream as in production."""
from __future__ import annotations

import time

from testkit import eventually

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.mapek import plan as planning
from x0tta6bl4.v1 import common_pb2, events_pb2


def _anomaly(first_ns: int, cycle: str) -> events_pb2.Anomaly:
    return events_pb2.Anomaly(meta=new_meta("analyzer", cycle), node_id="n7", root_cause="n7",
                              fault_type="node_down", anomaly_score=1.0, confidence=0.97,
                              severity=common_pb2.SEVERITY_CRITICAL, affected_nodes=["n6", "n8"],
                              detector="rules", first_symptom_unix_ns=first_ns, incident_id="n7.node_down")


async def test_late_anomalies_of_a_repaired_incident_are_not_planned_again(stack_factory):
    stack = stack_factory(services=("planner",))
    nc = await stack.connect()                   # the operator reads plans, audit, incidents
    js = nc.jetstream()
    analyzer, executor = await stack.connect("analyzer"), await stack.connect("executor")
    pub = Publisher(analyzer, "test")            # anomalies come from the analyzer's identity only

    async def plans():
        return [events_pb2.Plan.FromString(m.data) for m in await read_all(js, subjects.MAPEK_PLAN)]

    async def audits(kind):
        evs = [events_pb2.AuditEvent.FromString(m.data) for m in await read_all(js, "audit.planner.>")]
        return [e for e in evs if e.event_type == kind]
    try:
        t0 = time.time_ns()
        await pub.publish(subjects.MAPEK_ANOMALY, _anomaly(t0, "c1"))
        await eventually(lambda: _len_at_least(plans, 1), 20)
        # the same incident while it is being handled: a duplicate
        await pub.publish(subjects.MAPEK_ANOMALY, _anomaly(t0 + 1_000, "c2"))
        await eventually(lambda: _len_at_least(lambda: audits("anomaly.duplicate"), 1), 20)
        # the repair is verified ...
        verified_at = time.time_ns()
        v = events_pb2.Verification(meta=new_meta("executor", "c1"), action_id="a1", recovered=True,
                                    incident_id="n7.node_down", fault_type="node_down")
        v.meta.ts_unix_ns = verified_at
        await Publisher(executor, "test").publish(subjects.MAPEK_VERIFIED, v)   # ... by the executor
        kv = await js.key_value("incidents")

        async def resolved():
            try:
                e = await kv.get("n7.node_down")
            except Exception:  # noqa: BLE001 - not written yet
                return None
            return planning.claim_verdict(e.value, verified_at - 1) == planning.CLAIM_STALE or None
        await eventually(resolved, 20)
        # ... a late anomaly of that incident (its window saw the symptom before the repair): not re-planned
        await pub.publish(subjects.MAPEK_ANOMALY, _anomaly(t0 + 2_000, "c3"))
        await eventually(lambda: _len_at_least(lambda: audits("anomaly.stale"), 1), 20)
        assert len(await plans()) == 1
        # a symptom that starts after the repair is a new incident: planned
        await pub.publish(subjects.MAPEK_ANOMALY, _anomaly(verified_at + 1_000_000, "c4"))
        got = await eventually(lambda: _len_at_least(plans, 2), 20)
        assert [p.meta.cycle_id for p in got] == ["c1", "c4"]
    finally:
        for c in (nc, analyzer, executor):
            await c.close()


async def _len_at_least(fn, n):
    xs = await fn()
    return xs if len(xs) >= n else None
