"""The executor never runs an action twice: a redelivered or re-published ActionRequest is recognised."""
from __future__ import annotations

import time

from testkit import eventually

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.mapek.approval import sign_approval
from x0tta6bl4.trust import Signer
from x0tta6bl4.v1 import events_pb2


async def test_same_action_published_twice_runs_once(stack_factory):
    stack = stack_factory(services=("executor",))
    nc = await stack.connect()
    js = nc.jetstream()
    planner = await stack.connect("planner")     # only the planner and governance may publish mapek.action
    pjs = planner.jetstream()
    try:
        req = events_pb2.ActionRequest(
            meta=new_meta("planner", "cycle-1"), action_id="act-42", plan_id="plan-1", approved_by="auto",
            action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_CONFIG_CHANGE, target_node="n1"),
            timeout_s=2.0, incident_id="n1.degraded", fault_type="degraded")
        # approved as the planner approves it (its key from the stack's secrets)
        sign_approval(req, Signer.load("planner", stack.secrets.signing_file("planner")), 300, time.time_ns())
        data = req.SerializeToString()
        # the same event under two message ids (a producer retry after the de-duplication window),
        # and the same action id in a new event (a second planner replica, a re-published plan)
        await pjs.publish(subjects.MAPEK_ACTION, data, headers={"Nats-Msg-Id": "first"})
        await pjs.publish(subjects.MAPEK_ACTION, data, headers={"Nats-Msg-Id": "second"})
        again = events_pb2.ActionRequest()
        again.CopyFrom(req)
        again.meta.CopyFrom(new_meta("planner", "cycle-1"))
        await pjs.publish(subjects.MAPEK_ACTION, again.SerializeToString(), headers={"Nats-Msg-Id": "third"})

        async def audits():
            evs = [events_pb2.AuditEvent.FromString(m.data) for m in await read_all(js, "audit.executor.>")]
            return evs if any(e.event_type == "action.duplicate" for e in evs) else None
        await eventually(audits, 20)

        async def all_handled():   # the three deliveries acknowledged: nothing more will run
            info = await js.consumer_info(subjects.STREAM_MAPEK, "executor")
            return info.delivered.consumer_seq >= 3 and info.num_pending == 0 and info.num_ack_pending == 0
        await eventually(all_handled, 20)
        evs = [events_pb2.AuditEvent.FromString(m.data) for m in await read_all(js, "audit.executor.>")]
        executed = [e for e in evs if e.event_type == "action.executed" and e.subject_id == "act-42"]
        results = [events_pb2.ActionResult.FromString(m.data) for m in await read_all(js, subjects.MAPEK_RESULT)]
        assert len(executed) == 1, [e.event_type for e in evs]
        assert len([r for r in results if r.action_id == "act-42"]) == 1
        assert any(e.event_type == "action.duplicate" and e.subject_id == "act-42" for e in evs)
    finally:
        await planner.close()
        await nc.close()
