"""Do no harm, on real processes: a secured nats-server, the monitor and the executor as service processes, a
mesh host process with nine UDP agents on a 3x3 grid and a DATA flow n0 -> n8 (20 packets/s). The actions are
approved with the planner's signing key (what the planner or a vote would publish); no analyzer or planner
runs, so nothing else acts on the mesh.

    n0 n1 n2
    n3 n4 n5
    n6 n7 n8

1. The degrade finding: routing around the flow source's neighbours one after the other. Around n1 the flow
   takes n3 and the repair verifies; around n3 too, n0 has no way out: delivery falls to nothing, the executor
   un-avoids n3 everywhere (rollback), escalates on mapek.escalation, and the flow delivers again.
2. The rotation finding: the keys of every node are rotated (keyvault, the mesh host generating the new keys)
   and right after the rotation's steps answered, every node is cut off from its neighbours. Today's rotation
   does not do that by itself (the Example 3 e2e test loses no neighbour), so the cut-off is made the way the
   finding saw it -- every agent drops every packet -- once the rotation has answered. The verification
   does not call that recovered: it says the flow delivers nothing and connectivity is below the twin's
   prediction; a rotation cannot be undone, so it escalates as irreversible."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from testkit import eventually, mesh_ready, scaled, start_mesh

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.reader import mesh_telemetry, read_all
from x0tta6bl4.mapek.approval import sign_approval
from x0tta6bl4.mesh.topology import parse_spec
from x0tta6bl4.runtime.stack import repo_root
from x0tta6bl4.trust import Signer
from x0tta6bl4.v1 import events_pb2, mesh_pb2

K = events_pb2
NODES = [f"n{i}" for i in range(9)]


def flow_of(t: events_pb2.NodeTelemetry | None, dest: str) -> events_pb2.FlowCounters | None:
    return next((f for f in t.flows if f.dest == dest), None) if t is not None else None


class Loop:
    """The test's side of the bus: the operator reads and commands, the planner's credentials and key approve."""

    def __init__(self, stack, nc, planner) -> None:
        self.stack, self.nc, self.js, self.planner = stack, nc, nc.jetstream(), planner
        self.signer = Signer.load("planner", stack.secrets.signing_file("planner"))

    async def flow_running(self, seconds: float) -> None:
        """The flow has run ``seconds`` (the executor's history then covers the window before an incident)."""
        async def long_enough():
            f = flow_of((await mesh_telemetry(self.js)).get("n0"), "n8")
            return f is not None and f.sent >= 20 * seconds and f.acked > 0
        await eventually(long_enough, scaled(30), 0.2, what=f"the flow n0 -> n8 running for {seconds} s")

    async def act(self, kind: int, node: str, action_id: str, fault: str) -> events_pb2.ActionRequest:
        req = events_pb2.ActionRequest(
            meta=new_meta("planner", f"cycle-{action_id}"), action_id=action_id, plan_id=f"plan-{action_id}",
            approved_by="auto", timeout_s=20.0, incident_id=f"{node}.{fault}", fault_type=fault,
            first_symptom_unix_ns=time.time_ns(), action=events_pb2.ActionSpec(kind=kind, target_node=node))
        sign_approval(req, self.signer, 300, time.time_ns())
        await self.planner.jetstream().publish(subjects.MAPEK_ACTION, req.SerializeToString())
        return req

    async def published(self, subject: str, cls, action_id: str, timeout: float = 30.0):
        async def found():
            for m in await read_all(self.js, subject):
                e = cls.FromString(m.data)
                if e.action_id == action_id:
                    return e
        return await eventually(found, scaled(timeout), 0.1, what=f"{cls.__name__} of {action_id}")

    async def audits(self) -> list[events_pb2.AuditEvent]:
        return [events_pb2.AuditEvent.FromString(m.data) for m in await read_all(self.js, "audit.executor.>")]

    async def command(self, node: str, **params: str) -> None:
        cmd = mesh_pb2.MeshCommand(meta=new_meta("test"), node_id=node, kind=mesh_pb2.MeshCommand.KIND_FAULT,
                                   params=params)
        reply = await self.nc.request(subjects.mesh_cmd(node), cmd.SerializeToString(), timeout=5)
        assert mesh_pb2.MeshEvent.FromString(reply.data).kind == "command.ok"


@pytest.mark.slow
async def test_a_reroute_that_cuts_the_flow_is_rolled_back_and_escalated(stack_factory):
    stack = stack_factory(services=("monitor", "executor"))
    mesh = start_mesh(stack)
    nc = await stack.connect()
    planner = await stack.connect("planner")
    loop = Loop(stack, nc, planner)
    try:
        await eventually(lambda: mesh_ready(loop.js, 9), scaled(30), what="the mesh reporting, DATA acknowledged")
        await loop.flow_running(8)
        # around n1: the flow takes n3, delivery as before -> verified
        await loop.act(K.ACTION_KIND_REROUTE, "n1", "around-n1", "congestion")
        v1 = await loop.published(subjects.MAPEK_VERIFIED, events_pb2.Verification, "around-n1")
        assert v1.recovered and not v1.rolled_back, list(v1.checks_failed)
        assert any(p.startswith("1 flow(s) deliver at least 95 % of their rate before the incident")
                   for p in v1.checks_passed), list(v1.checks_passed)
        # around n3 too: n0's last way out -> worse than before the action -> rolled back, escalated
        await loop.act(K.ACTION_KIND_REROUTE, "n3", "around-n3", "congestion")
        v2 = await loop.published(subjects.MAPEK_VERIFIED, events_pb2.Verification, "around-n3")
        assert not v2.recovered and v2.rolled_back and v2.escalated, list(v2.checks_failed)
        assert any(f.startswith("worse since the action: flow n0->n8 delivers") for f in v2.checks_failed), \
            list(v2.checks_failed)
        esc = await loop.published(subjects.MAPEK_ESCALATION, events_pb2.Escalation, "around-n3")
        assert esc.reason == "rolled_back" and esc.rolled_back and esc.incident_id == "n3.congestion"
        assert esc.detail.startswith("reroute n3 made delivery worse: flow n0->n8") and "undone" in esc.detail
        audit = await loop.audits()
        [rb] = [a for a in audit if a.event_type == "action.rolled_back"]
        assert rb.subject_id == "around-n3" and rb.details["ok"] == "true" and rb.details["steps"] == "8"
        assert [a.details["reason"] for a in audit if a.event_type == "incident.escalated"] == ["rolled_back"]

        # undone: nobody avoids n3 any more and the flow delivers again (over n3; n1 stays avoided)
        async def nobody_avoids_n3():
            tel = await mesh_telemetry(loop.js)
            return len(tel) == 9 and not any("n3" in t.avoided for t in tel.values())
        await eventually(nobody_avoids_n3, scaled(15), 0.1)
        acked = flow_of((await mesh_telemetry(loop.js))["n0"], "n8").acked

        async def delivers_again():
            return flow_of((await mesh_telemetry(loop.js))["n0"], "n8").acked > acked + 20
        await eventually(delivers_again, scaled(15), 0.1, what="the flow n0 -> n8 delivering after the rollback")
    finally:
        await planner.close()
        await nc.close()
        mesh.terminate()
        mesh.wait(10)


def start_keyed_mesh(stack) -> subprocess.Popen:
    """start_mesh with keys: the host generates its nodes' keys and keyvault certifies them (signed HELLOs)."""
    env = stack.mesh_host_env("mesh", parse_spec("grid:9").nodes)
    proc = subprocess.Popen([sys.executable, "-m", "x0tta6bl4.mesh.host", "--nats", stack.url, "--topology", "grid:9",
                             "--traffic", "n0:n8", "--data-dir", str(stack.data_dir),
                             "--keyvault", stack.grpc_addr("keyvault")], cwd=repo_root(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    assert json.loads(proc.stdout.readline())["ready"]
    return proc


@pytest.mark.slow
async def test_a_rotation_after_which_the_nodes_are_cut_off_is_not_called_recovered(stack_factory):
    stack = stack_factory(services=("keyvault", "monitor", "executor"), env={"X0TTA6BL4_STEP_TIMEOUT_S": "20"})
    mesh = start_keyed_mesh(stack)
    nc = await stack.connect()
    planner = await stack.connect("planner")
    loop = Loop(stack, nc, planner)
    try:
        await eventually(lambda: mesh_ready(loop.js, 9), scaled(40), what="the keyed mesh reporting, DATA acknowledged")
        await loop.flow_running(8)
        req = await loop.act(K.ACTION_KIND_ROTATE_KEYS, "*", "rotate-all", "key_compromise")
        result = await loop.published(subjects.MAPEK_RESULT, events_pb2.ActionResult, "rotate-all")
        assert result.success, result.error                       # keyvault rotated, every node reloaded
        assert sorted(s.name for s in result.steps) == ["reload keys at " + n for n in NODES] + ["rotate keys of *"]
        for n in NODES:                                           # ... and the nodes are cut off from each other
            await loop.command(n, type="loss", pct="100")
        v = await loop.published(subjects.MAPEK_VERIFIED, events_pb2.Verification, "rotate-all")
        assert not v.recovered and v.escalated and not v.rolled_back, list(v.checks_failed)
        assert any(f.startswith("flow n0->n8 delivers 0 %") for f in v.checks_failed), list(v.checks_failed)
        assert any(f.startswith("connectivity 0.00 below the 1.00 the twin predicts for rotate_keys *")
                   for f in v.checks_failed), list(v.checks_failed)
        assert v.mttr_ms > 0 and v.incident_id == req.incident_id
        esc = await loop.published(subjects.MAPEK_ESCALATION, events_pb2.Escalation, "rotate-all")
        assert esc.reason == "irreversible" and not esc.rolled_back
        assert esc.detail.startswith("rotate_keys * made delivery worse and cannot be undone")
        audit = await loop.audits()
        assert [a for a in audit if a.event_type == "action.rolled_back"] == []
        [verification] = [a for a in audit if a.event_type == "verification" and a.subject_id == "rotate-all"]
        assert verification.details["recovered"] == "false" and verification.details["escalated"] == "true"
    finally:
        await planner.close()
        await nc.close()
        mesh.terminate()
        mesh.wait(10)
