"""Host commands for blue-green against two real MeshHosts (real nats-server, real UDP agents):
only the active host answers unaddressed commands, a standby host publishes nothing, addressing by
instance reaches a standby host, retire ends the host; the verify check of the adapter."""
from __future__ import annotations

import asyncio
import contextlib

import pytest
from testkit import consistently, eventually, scaled

from x0tta6bl4.execution.bluegreen_local import DeployError, HostControl, http_status
from x0tta6bl4.execution.deploy import DeploySpec, HostInfo
from x0tta6bl4.mesh.host import HostHealthServer, MeshHost
from x0tta6bl4.mesh.topology import parse_spec
from x0tta6bl4.runtime.stack import free_port


@contextlib.asynccontextmanager
async def telemetry_from(nc):
    """The nodes whose telemetry is published from now on (a set that grows)."""
    got: set[str] = set()

    async def on(m):
        got.add(m.subject.rsplit(".", 1)[-1])
    sub = await nc.subscribe("mesh.telemetry.*", cb=on)
    await nc.flush()   # subscribed at the server: the window starts now
    try:
        yield got
    finally:
        await sub.unsubscribe()


@pytest.fixture
async def hosts(nats_server):
    topo = parse_spec("grid:4")
    blue = MeshHost(nats_server.url, topo, instance="mesh-v1", version="v1", telemetry_interval=0.1)
    green = MeshHost(nats_server.url, topo, instance="mesh-v2", version="v2", telemetry_interval=0.1, standby=True)
    await blue.start()
    await green.start()
    blue.traffic("n0", "n3", 20)
    green.traffic("n0", "n3", 20)
    yield blue, green
    await green.stop()
    await blue.stop()


async def test_only_the_active_host_answers_and_publishes(nc, hosts):
    blue, green = hosts
    ctl = HostControl(nc)
    assert (await ctl.host_op("n0", "status"))["instance"] == "mesh-v1"
    st = await ctl.host_op("n0", "status", "mesh-v2")
    assert (st["version"], st["active"], st["ready"]) == ("v2", False, True), "standby: agents run dark"
    _, found = await ctl.discover(DeploySpec("v2"))
    assert found == HostInfo.from_status(await ctl.host_op("n0", "status")) and found.traffic == ("n0:n3",)

    # switch: blue stands down, green activates; the unaddressed status now reaches green
    spec = DeploySpec("v2", probe_node="n1", verify_timeout_s=5, max_loss_pct=50)
    await ctl.stand_down_blue(spec, found)
    await ctl.activate_green(spec)
    assert (await ctl.host_op("n1", "status"))["instance"] == "mesh-v2"
    assert not blue.active and green.active
    assert "4 nodes report from green" in await ctl.verify(spec, found)
    # a standby host sends no DATA and no telemetry: nothing from blue's agents any more
    before = blue.runtime.agents["n0"].counters.get("sent", 0)
    await consistently(lambda: blue.runtime.agents["n0"].counters.get("sent", 0) == before, 0.3)
    await ctl.stand_down_blue(spec, HostInfo("mesh-v2"))        # now green stands down too
    async with telemetry_from(nc) as got:
        await consistently(lambda: got == set(), 0.5, what="no active host: nothing is published")
    with pytest.raises(DeployError, match="no answer"):
        await ctl.host_op("n0", "status", timeout_s=0.3)
    with pytest.raises(DeployError, match="green is not active"):
        await ctl.verify(spec, found)

    # rollback path: blue re-activates and publishes again
    async with telemetry_from(nc) as got:
        await ctl.activate_blue(spec, found)
        await eventually(lambda: got == {"n0", "n1", "n2", "n3"}, 5)
    with pytest.raises(DeployError, match="unknown host_op"):
        await ctl.host_op("n0", "explode")

    # retire: the addressed host is told to end (its process exits in __main__)
    await ctl.host_op("n0", "retire", "mesh-v2")
    await asyncio.wait_for(green.retired.wait(), scaled(5))
    assert not green.active and not blue.retired.is_set()


async def test_verify_fails_when_green_would_lose_nodes(nc, nats_server):
    small = MeshHost(nats_server.url, parse_spec("line:2"), instance="mesh-v3", version="v3")
    await small.start()
    try:
        ctl = HostControl(nc)
        blue = HostInfo("mesh-v1", nodes=("n0", "n1", "n2"))
        with pytest.raises(DeployError, match="does not host n2: nodes would be lost"):
            await ctl.verify(DeploySpec("v3"), blue)
    finally:
        await small.stop()


async def test_fail_health_answers_503_and_health_otherwise_200(nats_server):
    host = MeshHost(nats_server.url, parse_spec("line:2"), fail_health=True)
    port = free_port()
    server = HostHealthServer(host, port)
    await server.start()
    try:
        assert await http_status(port, "/health") == 503
        host.fail_health = False
        assert await http_status(port, "/health") == 200
        assert await http_status(free_port(), "/health") == 0
    finally:
        await server.stop()
