"""A congested node routed around is reinstated after a probation, like a dead node that came back (#21):
while its links are slow it stays avoided (routed around, it carries no DATA and its own p99 looks perfect:
the HELLO beacons crossing its links are what tell), once they are clean for the probation the planner
reinstates it, the executor un-avoids it at every node and the verification takes it off the record.

Real nats-server, monitor, planner and executor processes and a real UDP mesh. The gray-failure heal itself
is the analyzer's and the executor's business (tests/e2e); here its outcome - every node avoiding the slow
node, and the executor's verified REROUTE - is produced by hand, as the operator and as the executor."""
from __future__ import annotations

import json

import pytest
from nats.js.errors import KeyNotFoundError
from testkit import consistently, eventually, mesh_ready, scaled, start_mesh

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.bus.reader import mesh_telemetry, read_all
from x0tta6bl4.v1 import events_pb2, mesh_pb2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
C = mesh_pb2.MeshCommand
PROBATION_S = 2.0


async def command(nc, node: str, kind: int, peer: str = "", **params: str) -> None:
    cmd = C(meta=new_meta("operator"), node_id=node, kind=kind, peer=peer, params=params)
    reply = mesh_pb2.MeshEvent.FromString((await nc.request(subjects.mesh_cmd(node), cmd.SerializeToString(),
                                                            timeout=5)).data)
    assert reply.kind == "command.ok", reply


async def test_a_congested_node_is_reinstated_once_its_links_are_clean(stack_factory):
    stack = stack_factory(services=("monitor", "planner", "executor"),
                          env={"X0TTA6BL4_REINSTATE_AFTER_S": str(PROBATION_S)})
    mesh = start_mesh(stack, "grid:9", "n0:n8")
    nc = await stack.connect()
    executor = await stack.connect("executor")
    js = nc.jetstream()
    try:
        await eventually(lambda: mesh_ready(js, 9), 40, 0.2)
        generation = (await mesh_telemetry(js))["n4"].mesh_generation
        assert generation

        # n4 gets slow (150 ms on everything it sends) and the loop routes around it
        await command(nc, "n4", C.KIND_FAULT, type="latency", ms="150")
        for n in ("n0", "n1", "n2", "n3", "n5", "n6", "n7", "n8"):
            await command(nc, n, C.KIND_AVOID_NODE, "n4")
        v = events_pb2.Verification(
            meta=new_meta("executor", "cycle-congestion-n4"), action_id="reroute-n4", recovered=True, mttr_ms=900,
            incident_id="n4.congestion", fault_type="congestion",
            action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_REROUTE, target_node="n4",
                                         params={"generation": generation}))
        await Publisher(executor, "executor").publish(subjects.MAPEK_VERIFIED, v)
        avoided = await js.key_value("avoided")

        async def on_record() -> dict | None:
            try:
                return json.loads((await avoided.get("n4")).value)
            except KeyNotFoundError:
                return None
        record = await eventually(on_record, 20, 0.2)
        assert record["fault"] == "congestion" and record["generation"] == generation

        # routed around it carries no DATA: its own metrics look perfect, its links (HELLO beacons) do not
        async def slow_links() -> bool:
            tel = await mesh_telemetry(js)
            assert tel["n4"].p99_latency_ms < 40, tel["n4"].p99_latency_ms
            assert max((q.latency_ms for q in tel["n1"].links if q.peer == "n4"), default=0.0) >= 40
            return True
        await eventually(slow_links, 20, 0.2)

        async def reinstate_plans() -> list[events_pb2.Plan]:
            return [p for p in (events_pb2.Plan.FromString(m.data) for m in await read_all(js, subjects.MAPEK_PLAN))
                    if p.action.kind == events_pb2.ACTION_KIND_REINSTATE and p.action.target_node == "n4"]

        async def still_avoided() -> bool:
            assert await reinstate_plans() == []
            rec = await on_record()
            assert rec is not None and "healthy_since_ns" not in rec, rec
            return True
        # the planner may have started a probation in the moment before the slowness showed in the links' EWMA
        # (it ends it at its next pass over the avoided records): from then on it holds
        await eventually(still_avoided, 20, 0.25)
        await consistently(still_avoided, scaled(2 * PROBATION_S + 1), 0.25)

        # the fault clears: its links are clean again, and after the probation it is reinstated
        await command(nc, "n4", C.KIND_HEAL)
        [plan] = await eventually(reinstate_plans, 40, 0.3)
        assert "(congestion) and has been reachable and healthy with clean links" in plan.rationale
        assert plan.action.params["generation"] == generation

        async def reinstated() -> events_pb2.Verification:
            vs = [events_pb2.Verification.FromString(m.data) for m in await read_all(js, subjects.MAPEK_VERIFIED)]
            done = [x for x in vs if x.action.kind == events_pb2.ACTION_KIND_REINSTATE]
            assert done and done[-1].recovered, done
            return done[-1]
        await eventually(reinstated, 40, 0.3)

        async def off_the_record() -> bool:
            assert await on_record() is None
            tel = await mesh_telemetry(js)
            assert all("n4" not in t.avoided for t in tel.values()), {n: list(t.avoided) for n, t in tel.items()}
            return True
        await eventually(off_the_record, 20, 0.3)
    finally:
        await executor.close()
        await nc.close()
        mesh.terminate()
        mesh.wait(10)
