"""Do no harm around the repairs (#21) on the embedded stack: real nats-server, the monitor, analyzer, planner and
executor processes, a real UDP mesh started and stopped with meshctl.

- a real heal on 9 nodes (a corner killed) is followed by ``validate-mesh.py --verify``, which passes (the twin's
  cascade model no longer gives idle nodes no capacity), and ``meshctl cycle list`` shows the repair by default;
- planned maintenance is not a failure: ``meshctl mesh drain NODE --stop`` and ``meshctl mesh down`` start no
  repair (the only action of the whole test is the heal of the killed node);
- a new mesh never receives an old mesh's commands: after ``mesh down`` / ``mesh up`` under the same node names
  the planner drops the old mesh's avoided node instead of reinstating it, and a command naming the old
  generation is refused by the new mesh's host and reported.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from testkit import consistently_sync, eventually_sync, mesh_ready, scaled
from typer.testing import CliRunner

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.reader import mesh_telemetry, read_all
from x0tta6bl4.cli.main import app
from x0tta6bl4.runtime.stack import repo_root
from x0tta6bl4.v1 import events_pb2, mesh_pb2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
ENV = {"COLUMNS": "250", "X0TTA6BL4_NATS_URL": ""}
LOOP = ("monitor", "analyzer", "planner", "executor")


def meshctl(*args: str, ok: bool = True) -> str:
    r = CliRunner().invoke(app, list(args), env=ENV)
    assert (r.exit_code == 0) == ok, r.output
    assert "Traceback" not in r.output
    return r.output


def on_bus(stack, fn):
    """Run ``await fn(nc, js)`` on a fresh operator connection (this test is synchronous: meshctl runs its
    own event loops)."""
    async def go():
        nc = await stack.connect()
        try:
            return await fn(nc, nc.jetstream())
        finally:
            await nc.close()
    return asyncio.run(go())


def stored(stack, subject: str, cls):
    async def go(_nc, js):
        return [cls.FromString(m.data) for m in await read_all(js, subject)]
    return on_bus(stack, go)


def audited(stack, service: str, event_type: str) -> list[events_pb2.AuditEvent]:
    async def go(_nc, js):
        return [events_pb2.AuditEvent.FromString(m.data)
                for m in await read_all(js, subjects.audit(service, event_type), stream=subjects.STREAM_AUDIT)]
    return [a for a in on_bus(stack, go) if a.event_type == event_type]


def telemetry(stack) -> dict[str, events_pb2.NodeTelemetry]:
    return on_bus(stack, lambda _nc, js: mesh_telemetry(js))


def bucket_keys(stack, bucket: str) -> list[str]:
    async def go(_nc, js):
        kv = await js.key_value(bucket)
        try:
            return sorted(await kv.keys())
        except Exception:  # noqa: BLE001 - nats-py raises NoKeysError on an empty bucket
            return []
    return on_bus(stack, go)


def flow_path(tel: dict[str, events_pb2.NodeTelemetry], src: str, dst: str) -> list[str]:
    """The nodes DATA from ``src`` to ``dst`` crosses, by the route tables the agents report."""
    path = [src]
    while path[-1] != dst and len(path) <= len(tel):
        path.append(tel[path[-1]].routes[dst])
    return path


def only_the_heal(stack, victim: str) -> bool:
    """The one action so far is the reroute around the killed node."""
    actions = stored(stack, subjects.MAPEK_ACTION, events_pb2.ActionRequest)
    assert [(a.action.kind, a.action.target_node) for a in actions] == [(events_pb2.ACTION_KIND_REROUTE, victim)], \
        [(events_pb2.ActionKind.Name(a.action.kind), a.action.target_node, a.fault_type) for a in actions]
    return True


def validate_mesh(stack) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("X0TTA6BL4_NATS_")}
    env.update(stack.identity_env("operator"))
    p = subprocess.run([sys.executable, str(repo_root() / "skill" / "scripts" / "validate-mesh.py"), "--nats",
                        stack.url, "--verify", "--json"], capture_output=True, text=True, timeout=60, env=env)
    assert p.stdout, p.stderr
    return p.returncode, json.loads(p.stdout)["verify"]


def test_heal_verify_list_then_maintenance_and_a_new_generation(stack_factory):
    stack = stack_factory(services=LOOP)
    common = ["--nats", stack.url, "--data-dir", str(stack.data_dir)]
    out = meshctl("mesh", "up", "--nodes", "9", "--topology", "grid", "--traffic", "n0:n8", "--rate", "50",
                  "--detach", *common)
    assert "9 nodes, 12 links" in out
    old = json.loads((stack.data_dir / "mesh.json").read_text())["generation"]
    try:
        # 3 s of the 50/s flow: the executor needs telemetry from before the incident to verify the heal
        eventually_sync(lambda: on_bus(stack, lambda _nc, js: mesh_ready(js, 9, min_acked=150)), 40, 0.3)
        assert {t.mesh_generation for t in telemetry(stack).values()} == {old}

        # 1. a real heal: a corner of the grid off the flow's path dies and is routed around (the corner is
        # what the cascade model got wrong; off the path, the flow's own recovery is not what is tested here)
        victim = next(c for c in ("n2", "n6") if c not in flow_path(telemetry(stack), "n0", "n8"))
        assert "fault kill applied" in meshctl("fault", "kill", victim, *common)

        def healed():
            vs = [v for v in stored(stack, subjects.MAPEK_VERIFIED, events_pb2.Verification)
                  if v.action.target_node == victim]
            assert vs and vs[-1].recovered, [(list(x.checks_failed), x.rolled_back) for x in vs]
            return vs[-1]
        v = eventually_sync(healed, 40, 0.3)
        assert v.action.kind == events_pb2.ACTION_KIND_REROUTE and v.action.params["generation"] == old

        # validate-mesh --verify passes after it (the cascade model's finding: it failed after every heal)
        def verified():
            code, rep = validate_mesh(stack)
            assert code == 0 and rep["verified"], rep
            return rep
        rep = eventually_sync(verified, 20, 0.5)
        checks = {c["check"]: c for c in rep["checks"]}
        assert checks["no cascading failure predicted"]["ok"]
        assert f"without {victim}" in checks["no cascading failure predicted"]["detail"]
        # meshctl cycle list shows the repair by default, whatever the observations around it
        listed = meshctl("cycle", "list", *common)
        assert v.meta.cycle_id in listed and "recovered" in listed
        assert v.meta.cycle_id in meshctl("cycle", "list", "--all", "--last", "500", *common)

        # 2. drain a node (off the flow's path) and stop its agent: planned, so no repair
        drained = next(c for c in ("n6", "n2", "n4", "n1", "n3", "n5", "n7")
                       if c != victim and c not in flow_path(telemetry(stack), "n0", "n8"))
        out = meshctl("mesh", "drain", drained, "--stop", *common)
        assert "maintenance announced (drain) for 1 node(s), recorded by the monitor" in out
        assert f"drain {drained}: 8/8 nodes route around it" in out and "stop: ok" in out
        eventually_sync(lambda: not telemetry(stack)[drained].reachable, 15, 0.3)
        consistently_sync(lambda: only_the_heal(stack, victim), scaled(4), 0.5)
        assert not [p for p in stored(stack, subjects.MAPEK_PLAN, events_pb2.Plan) if p.root_cause == drained]
        out = meshctl("mesh", "undrain", drained, *common)
        assert f"undrain {drained}: 8/8 nodes route through it again" in out
        assert "the end of maintenance announced (undrain) for 1 node(s), recorded by the monitor" in out
        eventually_sync(lambda: telemetry(stack)[drained].reachable, 15, 0.3)

        # 3. the mesh goes down: announced, nothing repaired
        out = meshctl("mesh", "down", "--data-dir", str(stack.data_dir))
        assert "maintenance announced (mesh down) for 9 node(s), recorded by the monitor" in out
        eventually_sync(lambda: not any(t.reachable for t in telemetry(stack).values()), 20, 0.3)
        consistently_sync(lambda: only_the_heal(stack, victim), scaled(4), 0.5)
        assert bucket_keys(stack, "avoided") == [victim]     # the old mesh's repair, still on record

        # 4. a new mesh under the same names: a new generation
        meshctl("mesh", "up", "--nodes", "9", "--topology", "grid", "--traffic", "n0:n8", "--rate", "50",
                "--detach", *common)
        new = json.loads((stack.data_dir / "mesh.json").read_text())["generation"]
        assert new != old
        eventually_sync(lambda: {t.mesh_generation for t in telemetry(stack).values()} == {new}
                        and all(t.reachable for t in telemetry(stack).values()), 40, 0.3)
        # the old mesh's avoided node is dropped, not reinstated: the new agents never avoided it
        eventually_sync(lambda: bucket_keys(stack, "avoided") == [], 20, 0.3)
        [dropped] = audited(stack, "planner", "avoided.dropped")
        assert dropped.subject_id == victim and dict(dropped.details)["was"] == old
        assert len(audited(stack, "monitor", "maintenance.ended")) >= 9     # drain's end + the nine nodes'

        # an old mesh's command reaches the new one: refused, and reported
        async def old_command(nc, _js):
            cmd = mesh_pb2.MeshCommand(meta=new_meta("executor"), node_id="n3", peer="n4", params={"generation": old},
                                       kind=mesh_pb2.MeshCommand.KIND_AVOID_NODE)
            reply = await nc.request(subjects.mesh_cmd("n3"), cmd.SerializeToString(), timeout=5)
            return mesh_pb2.MeshEvent.FromString(reply.data)
        reply = on_bus(stack, old_command)
        assert reply.kind == "command.failed" and f"for mesh generation {old!r}" in reply.details["detail"]
        assert "n4" not in telemetry(stack)["n3"].avoided
        refused = eventually_sync(lambda: audited(stack, "monitor", "mesh.command.refused"), 10, 0.3)
        assert dict(refused[0].details)["generation"] == old and dict(refused[0].details)["current"] == new
        # and in all of it a single action ran: the heal of the killed node
        [action] = stored(stack, subjects.MAPEK_ACTION, events_pb2.ActionRequest)
        assert action.action.target_node == victim
    finally:
        meshctl("mesh", "down", "--data-dir", str(stack.data_dir))
