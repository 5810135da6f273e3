"""One MAPE-K cycle on the embedded stack: real nats-server, six service processes, real UDP mesh agents."""
from __future__ import annotations

import subprocess
import sys
import time

import nats
import psutil
import pytest
from testkit import eventually, eventually_sync, mesh_ready, scaled, start_mesh

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.runtime.stack import repo_root
from x0tta6bl4.v1 import events_pb2, mesh_pb2

ORDER = [subjects.MAPEK_TELEMETRY, subjects.MAPEK_ANOMALY, subjects.MAPEK_PLAN, subjects.MAPEK_ACTION,
         subjects.MAPEK_RESULT, subjects.MAPEK_VERIFIED]
CLS = {subjects.MAPEK_TELEMETRY: events_pb2.TelemetryWindow, subjects.MAPEK_ANOMALY: events_pb2.Anomaly,
       subjects.MAPEK_PLAN: events_pb2.Plan, subjects.MAPEK_ACTION: events_pb2.ActionRequest,
       subjects.MAPEK_RESULT: events_pb2.ActionResult, subjects.MAPEK_VERIFIED: events_pb2.Verification}


async def kill_and_follow(stack, victim="n4", timeout=20.0):
    nc = await stack.connect()
    js = nc.jetstream()
    try:
        await eventually(lambda: mesh_ready(js, 9), 30)
        # the executor measures the flows before the incident (a window ending 1 s before the first symptom): a
        # kill in the first second of the mesh's reports cannot be verified ("no telemetry recorded before the
        # incident"), so the mesh runs and stays ready a moment first
        t_ready = time.monotonic()

        async def reported_a_while() -> bool:
            return await mesh_ready(js, 9) and time.monotonic() - t_ready >= 2.5
        await eventually(reported_a_while, 30)
        cmd = mesh_pb2.MeshCommand(meta=new_meta("test"), node_id=victim, kind=mesh_pb2.MeshCommand.KIND_FAULT,
                                   params={"type": "kill"})
        t_kill = time.time_ns()
        reply = mesh_pb2.MeshEvent.FromString((await nc.request(subjects.mesh_cmd(victim), cmd.SerializeToString(),
                                                                timeout=5)).data)
        assert reply.kind == "command.ok"

        async def verified():
            for m in await read_all(js, subjects.MAPEK_VERIFIED):
                v = events_pb2.Verification.FromString(m.data)
                if v.action.target_node == victim:
                    return v
        v = await eventually(verified, timeout, 0.1, what=f"a Verification for {victim}")
        events = [(m, CLS[m.subject].FromString(m.data)) for m in await read_all(js, "mapek.>")
                  if m.subject in CLS]
        cycle = [(m, e) for m, e in events if e.meta.cycle_id == v.meta.cycle_id]
        audit = [events_pb2.AuditEvent.FromString(m.data) for m in await read_all(js, "audit.>")]
        return t_kill, v, cycle, audit
    finally:
        await nc.close()


def trace_id(m):
    return m.headers["traceparent"].split("-")[1]


@pytest.mark.slow
async def test_node_kill_is_healed_in_one_traced_cycle(stack_factory):
    stack = stack_factory()
    mesh = start_mesh(stack)
    try:
        t_kill, v, cycle, audit = await kill_and_follow(stack, "n4")
    finally:
        mesh.terminate()
        mesh.wait(10)
    subjects_in_order = [m.subject for m, _ in cycle]
    assert subjects_in_order == ORDER, subjects_in_order
    assert len({trace_id(m) for m, _ in cycle}) == 1, "every stage of one cycle shares one trace id"
    anomaly = cycle[1][1]
    assert (anomaly.root_cause, anomaly.fault_type) == ("n4", "node_down")
    plan, action, result = cycle[2][1], cycle[3][1], cycle[4][1]
    assert plan.decision == events_pb2.DECISION_KIND_AUTO_EXECUTE and action.approved_by == "auto"
    assert result.success and all(s.ok for s in result.steps) and len(result.steps) == 8
    assert v.recovered and v.mttr_ms > 0
    assert (v.meta.ts_unix_ns - t_kill) / 1e9 < scaled(10), "kill to verified repair within a bounded time"
    stamps = [e.meta.ts_unix_ns for _, e in cycle]
    assert stamps == sorted(stamps)
    cycle_audit = {a.event_type for a in audit if a.meta.cycle_id == v.meta.cycle_id}
    assert {"health.changed", "anomaly.detected", "decision", "action.executed", "verification"} <= cycle_audit
    # the spans of the cycle were kept locally and span at least four processes (each writes its own file)
    from x0tta6bl4.telemetry.tracing import load_spans, spans_for

    def services_in_trace():
        services = {s["service"] for s in spans_for(load_spans(stack.data_dir), v.meta.cycle_id)}
        assert {"monitor", "analyzer", "planner", "executor"} <= services, sorted(services)
        return True
    eventually_sync(services_in_trace, 10, 0.1)


@pytest.mark.slow
async def test_replicated_services_share_consumers_and_heal_once(stack_factory):
    stack = stack_factory(replicas=2)
    assert len(stack.procs) == 12
    mesh = start_mesh(stack)
    try:
        _, v, cycle, audit = await kill_and_follow(stack, "n4")
    finally:
        mesh.terminate()
        mesh.wait(10)
    assert v.recovered, list(v.checks_failed)
    assert [m.subject for m, _ in cycle] == ORDER, "two replicas of each stage still produce one of each event"
    executed = [a for a in audit if a.event_type == "action.executed" and a.meta.cycle_id == v.meta.cycle_id]
    assert len(executed) == 1


@pytest.mark.slow
def test_make_demo_command_heals_and_leaves_no_process_behind(tmp_path):
    before = {p.pid for p in psutil.process_iter()}
    p = subprocess.run([sys.executable, "-m", "x0tta6bl4.cli.main", "demo", "--data-dir", str(tmp_path / "demo")],
                       cwd=repo_root(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "recovered" in p.stdout and "trace" in p.stdout and "intact" in p.stdout

    def nothing_left():
        left = [q for q in psutil.process_iter(["pid", "cmdline"])
                if q.info["pid"] not in before and str(tmp_path) in " ".join(q.info["cmdline"] or [])]
        assert not left, left
        return True
    eventually_sync(nothing_left, 5, 0.1)


@pytest.mark.slow
async def test_a_rerouted_node_that_comes_back_is_reinstated_after_its_probation(stack_factory):
    """Kill n4 -> REROUTE (every node avoids n4) -> n4 comes back -> healthy for the probation
    (1 s here) -> the planner reinstates it on its own (REINSTATE, verified) and nobody avoids it."""
    from x0tta6bl4.bus.reader import mesh_telemetry
    stack = stack_factory(env={"X0TTA6BL4_REINSTATE_AFTER_S": "1"})
    mesh = start_mesh(stack)
    nc = await stack.connect()
    js = nc.jetstream()
    try:
        _, v, _, _ = await kill_and_follow(stack, "n4")
        assert v.recovered and v.action.kind == events_pb2.ACTION_KIND_REROUTE

        async def avoided_everywhere():
            tel = await mesh_telemetry(js)
            return all("n4" in t.avoided for n, t in tel.items() if n != "n4") and len(tel) >= 8
        await eventually(avoided_everywhere, 15, 0.1)
        kv = await js.key_value("avoided")
        assert (await kv.get("n4")).value
        cmd = mesh_pb2.MeshCommand(meta=new_meta("test"), node_id="n4", kind=mesh_pb2.MeshCommand.KIND_FAULT,
                                   params={"type": "revive"})
        reply = await nc.request(subjects.mesh_cmd("n4"), cmd.SerializeToString(), timeout=5)
        assert mesh_pb2.MeshEvent.FromString(reply.data).kind == "command.ok"

        async def reinstated():
            for m in await read_all(js, subjects.MAPEK_VERIFIED):
                r = events_pb2.Verification.FromString(m.data)
                if r.action.kind == events_pb2.ACTION_KIND_REINSTATE and r.action.target_node == "n4":
                    return r
        r = await eventually(reinstated, 30, 0.1)
        assert r.recovered, list(r.checks_failed)

        async def nobody_avoids():
            tel = await mesh_telemetry(js)
            return len(tel) == 9 and not any("n4" in t.avoided for t in tel.values())
        await eventually(nobody_avoids, 15, 0.1)

        async def record_gone() -> bool:       # the planner deletes it after the verification: wait for that
            try:
                await kv.get("n4")
            except nats.js.errors.KeyNotFoundError:
                return True
            return False
        await eventually(record_gone, 10, 0.1, what="n4's avoided record deleted after its reinstatement")
        plans = [events_pb2.Plan.FromString(m.data) for m in await read_all(js, subjects.MAPEK_PLAN)]
        reinstates = [p for p in plans if p.action.kind == events_pb2.ACTION_KIND_REINSTATE]
        assert len(reinstates) == 1 and reinstates[0].decision == events_pb2.DECISION_KIND_AUTO_EXECUTE
    finally:
        await nc.close()
        mesh.terminate()
        mesh.wait(10)
