"""On a real (secured) stack the executor carries out only actions approved with a key of its trust bundle.
The attacker holds a leaked bus credential -- the planner's NATS identity, which may publish on mapek.action,
or the executor's, which may write the `actions` bucket -- but not a service's signing key: forged requests
are refused (audited action.rejected, dead-lettered, the mesh untouched) while a real fault is still healed,
and a `done` planted in the `actions` bucket does not make the executor skip an approved action."""
from __future__ import annotations

import time

import pytest
from testkit import eventually, mesh_ready, scaled, start_mesh

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.reader import mesh_telemetry, read_all
from x0tta6bl4.mapek.approval import sign_approval
from x0tta6bl4.trust import Signer
from x0tta6bl4.v1 import events_pb2, mesh_pb2

K = events_pb2


def isolate(node: str, action_id: str, approved_by: str, proposal_id: str = "") -> events_pb2.ActionRequest:
    return events_pb2.ActionRequest(
        meta=new_meta("governance", f"forged-{action_id}"), action_id=action_id, plan_id=f"plan-{action_id}",
        approved_by=approved_by, proposal_id=proposal_id, timeout_s=5.0,
        action=events_pb2.ActionSpec(kind=K.ACTION_KIND_ISOLATE, target_node=node))


async def audits(js) -> list[events_pb2.AuditEvent]:
    return [events_pb2.AuditEvent.FromString(m.data) for m in await read_all(js, "audit.executor.>")]


@pytest.mark.slow
async def test_forged_action_requests_are_refused_while_a_real_fault_is_healed(stack_factory):
    stack = stack_factory()
    mesh = start_mesh(stack)
    nc = await stack.connect()                   # the operator: reads the streams, injects the fault
    leaked = await stack.connect("planner")      # the planner's bus credential, leaked (not its signing key)
    js = nc.jetstream()
    try:
        await eventually(lambda: mesh_ready(js, 9, min_acked=60), scaled(30),   # 3 s of flow: a baseline to verify
                         what="the mesh reporting, DATA acknowledged")
        # the measured attack: ISOLATE of a healthy node "approved" by a proposal that never existed
        await leaked.jetstream().publish(subjects.MAPEK_ACTION, isolate("n2", "forged-1", "dao:never-existed",
                                                                        "never-existed").SerializeToString())
        # the same with a signature, by a key the attacker made (calling itself the planner)
        attacker = Signer.generate("planner")
        forged = sign_approval(isolate("n2", "forged-2", "auto"), attacker, 300, time.time_ns())
        await leaked.jetstream().publish(subjects.MAPEK_ACTION, forged.SerializeToString())
        # meanwhile a real fault
        cmd = mesh_pb2.MeshCommand(meta=new_meta("test"), node_id="n4", kind=mesh_pb2.MeshCommand.KIND_FAULT,
                                   params={"type": "kill"})
        reply = await nc.request(subjects.mesh_cmd("n4"), cmd.SerializeToString(), timeout=5)
        assert mesh_pb2.MeshEvent.FromString(reply.data).kind == "command.ok"

        async def rejected():
            found = {a.subject_id: a for a in await audits(js) if a.event_type == "action.rejected"}
            return found if {"forged-1", "forged-2"} <= set(found) else None
        refused = await eventually(rejected, scaled(20), 0.1, what="action.rejected for both forged requests")
        assert refused["forged-1"].details["check"] == "unsigned"
        assert refused["forged-1"].details["approved_by"] == "dao:never-existed"
        assert refused["forged-2"].details["check"] == "untrusted"
        assert f"key '{attacker.key_id}' is not in the trust bundle" in refused["forged-2"].details["reason"]

        async def healed():
            for m in await read_all(js, subjects.MAPEK_VERIFIED):
                v = events_pb2.Verification.FromString(m.data)
                if v.action.target_node == "n4" and v.recovered:
                    return v
        v = await eventually(healed, scaled(30), 0.1, what="the verified repair of n4")
        executed = [a for a in await audits(js) if a.event_type == "action.executed"]
        assert [a.details["approver"] for a in executed if a.subject_id == v.action_id] == ["planner"]
        assert not [a for a in executed if a.subject_id.startswith("forged-")]
        results = [events_pb2.ActionResult.FromString(m.data) for m in await read_all(js, subjects.MAPEK_RESULT)]
        assert not [r for r in results if r.action_id.startswith("forged-")]
        dead = [events_pb2.DeadLetter.FromString(m.data) for m in await read_all(js, subjects.dead_letter("executor"))]
        for forged_id in ("forged-1", "forged-2"):
            assert any(d.reason.startswith(f"rejected by executor: action {forged_id} refused: ") for d in dead)
        # n2 was not isolated: it still reports, and no node routes around it
        tel = await mesh_telemetry(js)
        assert tel["n2"].reachable and not [n for n, t in tel.items() if "n2" in t.avoided]
    finally:
        await leaked.close()
        await nc.close()
        mesh.terminate()
        mesh.wait(10)


async def test_a_planted_done_claim_does_not_make_the_executor_skip_an_approved_action(stack_factory):
    stack = stack_factory(services=("executor",))
    nc = await stack.connect()
    js = nc.jetstream()
    planner = await stack.connect("planner")
    leaked = await stack.connect("executor")     # the executor's bus credential: it may write `actions`
    try:
        req = events_pb2.ActionRequest(
            meta=new_meta("planner", "cycle-planted"), action_id="act-planted", plan_id="plan-planted",
            approved_by="auto", timeout_s=2.0,
            action=events_pb2.ActionSpec(kind=K.ACTION_KIND_CONFIG_CHANGE, target_node="n1"))
        sign_approval(req, Signer.load("planner", stack.secrets.signing_file("planner")), 300, time.time_ns())
        # someone who can write the bucket marks the (predictable) action id as done before it arrives
        await (await leaked.jetstream().key_value("actions")).put("act-planted", b"done")
        await planner.jetstream().publish(subjects.MAPEK_ACTION, req.SerializeToString())

        async def executed():
            evs = await audits(js)
            return evs if any(e.event_type == "action.executed" and e.subject_id == "act-planted" for e in evs) \
                else None
        evs = await eventually(executed, scaled(20), 0.1, what="action.executed for act-planted")
        [invalid] = [e for e in evs if e.event_type == "action.claim_invalid"]
        assert invalid.subject_id == "act-planted" and invalid.details["reason"].startswith("not a claim")
        assert not [e for e in evs if e.event_type == "action.duplicate"]
        results = [events_pb2.ActionResult.FromString(m.data) for m in await read_all(js, subjects.MAPEK_RESULT)]
        assert [r.action_id for r in results] == ["act-planted"]
        claim = (await (await leaked.jetstream().key_value("actions")).get("act-planted")).value
        assert claim.startswith(b"done ") and claim != b"done"      # the executor's own, MAC'd claim
    finally:
        for c in (leaked, planner, nc):
            await c.close()
