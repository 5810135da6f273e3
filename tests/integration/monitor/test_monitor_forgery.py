"""The monitor on a secured stack with a real mesh host: what a node agent's credential lets an attacker forge
(loss reports about a healthy neighbour, a report from ten years ahead, a report for another node) is refused
or outweighed by the node's own reports, the refusals are audited, and a real node death is still detected."""
from __future__ import annotations

import subprocess
import time

import pytest
from testkit import consistently, eventually, scaled, start_mesh, violations

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.permissions import MESH_HOST_PREFIX
from x0tta6bl4.bus.reader import mesh_telemetry, read_all
from x0tta6bl4.runtime.stack import Stack
from x0tta6bl4.v1 import common_pb2, events_pb2, mesh_pb2

pytestmark = pytest.mark.timeout(120)
DECADE_NS = 10 * 365 * 86400 * 10**9


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path / "stack", ("monitor",), env={"X0TTA6BL4_MONITOR_COLLECTOR": "off",
                                                     "X0TTA6BL4_DISCOVER_HOSTS": "false"}, secure=True)
    s.start(scaled(60))
    yield s
    s.stop()


async def telemetry_of(js, node: str) -> events_pb2.NodeTelemetry:
    """The node's latest telemetry in the monitor's bucket (one key read: a snapshot of a bucket written
    every 0.25 s by three nodes can miss one)."""
    kv = await js.key_value("telemetry")
    return events_pb2.NodeTelemetry.FromString((await kv.get(subjects.token(node))).value)


async def monitor_audits(js, event_type: str) -> list[events_pb2.AuditEvent]:
    out = [events_pb2.AuditEvent.FromString(m.data)
           for m in await read_all(js, subjects.audit("monitor", event_type), stream=subjects.STREAM_AUDIT)]
    return [a for a in out if a.event_type == event_type]


async def test_forged_reports_with_a_node_agents_credential_change_nothing_and_a_real_death_is_seen(stack):
    mesh = start_mesh(stack, "line:3", "n0:n2")               # n0 - n1 - n2, each reporting every 0.25 s
    op = await stack.connect()
    attacker = await stack.connect(MESH_HOST_PREFIX + "mesh")  # the mesh host's own credential, leaked
    try:
        js = op.jetstream()

        async def all_up() -> bool:
            tel = await mesh_telemetry(js)
            return len(tel) == 3 and all(t.reachable for t in tel.values())
        await eventually(all_up, 30, 0.2)
        changes: list[events_pb2.HealthChange] = []

        async def on_change(m) -> None:
            changes.append(events_pb2.HealthChange.FromString(m.data))
        await op.subscribe(subjects.MAPEK_HEALTH, cb=on_change)
        await op.flush()

        # 1. both neighbours of n1 "report" it lost, again and again: it keeps reporting, so it stays up
        for _ in range(3):
            for reporter in ("n0", "n2"):
                ev = mesh_pb2.MeshEvent(meta=new_meta("mesh-host"), node_id=reporter, kind="neighbour_lost",
                                        peer="n1", details={"silent_ms": "600"})
                await attacker.publish(subjects.mesh_event(reporter), ev.SerializeToString())
            await attacker.flush()

            async def n1_up() -> bool:
                t = await telemetry_of(js, "n1")
                assert t.reachable and not [c for c in changes if c.node_id == "n1"], (t, changes)
                return True
            await consistently(n1_up, 1.0, 0.1)
        verdicts = await eventually(lambda: _verdicts(js), 10, 0.2)
        assert all(v.startswith(("not down: n1 itself reported", "not enough neighbours")) for v in verdicts), verdicts

        # 2. a report of n1 from ten years ahead, and one for n1 on n0's subject: refused and audited
        now = time.time_ns()
        future = events_pb2.NodeTelemetry(meta=new_meta("mesh-host"), node_id="n1", reachable=True, cpu_pct=99)
        future.meta.ts_unix_ns = now + DECADE_NS
        other = events_pb2.NodeTelemetry(meta=new_meta("mesh-host"), node_id="n1", reachable=True, cpu_pct=99)
        await attacker.publish(subjects.telemetry("n1"), future.SerializeToString())
        await attacker.publish(subjects.telemetry("n0"), other.SerializeToString())
        await attacker.flush()

        async def refused() -> set[str]:
            kinds = {a.details["kind"] for a in await monitor_audits(js, "telemetry.refused")}
            return kinds if kinds >= {"future_timestamp", "subject_mismatch"} else set()
        await eventually(refused, 10, 0.2)

        async def n1_heard_after_the_forgery() -> bool:     # its real reports still count
            t = await telemetry_of(js, "n1")
            return t.meta.ts_unix_ns > now and t.cpu_pct < 99
        await eventually(n1_heard_after_the_forgery, 10, 0.1)
        assert not [c for c in changes if c.node_id == "n1"]

        # 3. n1 really dies: its neighbours' reports and its silence take it down, quickly
        cmd = mesh_pb2.MeshCommand(meta=new_meta("test"), node_id="n1", kind=mesh_pb2.MeshCommand.KIND_FAULT,
                                   params={"type": "kill"})
        t_kill = time.monotonic()
        reply = mesh_pb2.MeshEvent.FromString((await op.request(subjects.mesh_cmd("n1"), cmd.SerializeToString(),
                                                                timeout=scaled(5))).data)
        assert reply.kind == "command.ok"
        down = await eventually(lambda: [c for c in changes if c.node_id == "n1"], 10, 0.05)
        assert down[0].current == common_pb2.HEALTH_CRITICAL and list(down[0].reasons) == ["unreachable"]
        assert time.monotonic() - t_kill < scaled(3.0)
    finally:
        await attacker.close()
        await op.close()
        mesh.terminate()
        try:
            mesh.wait(10)
        except subprocess.TimeoutExpired:
            mesh.kill()
    assert not violations(stack), "nats-server refused a legitimate flow"


async def _verdicts(js) -> list[str]:
    got = [a.details.get("verdict", "") for a in await monitor_audits(js, "mesh.neighbour_lost")
           if a.details.get("peer") == "n1"]
    return got if len(got) >= 6 else []
