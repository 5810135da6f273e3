"""An operator's topology_update and config_change on a namespace mesh (issue #18): the netns mesh host forwards
SET_LINK / SET_CONFIG to the node processes, whose telemetry then shows the change (a link out of service at both
ends and back, the HELLO interval in force and restored)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from testkit import eventually, mesh_telemetry, scaled

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.mesh.netns import netns_available
from x0tta6bl4.runtime.stack import repo_root
from x0tta6bl4.v1 import mesh_pb2

_ok, _why = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(not _ok, reason=f"network namespaces unavailable: {_why}"),
]
C = mesh_pb2.MeshCommand


def meshctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "x0tta6bl4.cli.main", *args], capture_output=True, text=True,
                          cwd=repo_root(), env=dict(os.environ, COLUMNS="200", X0TTA6BL4_NATS_URL=""),
                          timeout=scaled(120))


async def test_netns_mesh_applies_an_operators_link_and_config_changes(stack_factory):
    stack = stack_factory(services=("monitor",))          # the monitor keeps the telemetry bucket
    common = ["--nats", stack.url, "--data-dir", str(stack.data_dir)]
    r = meshctl("mesh", "up", "--nodes", "4", "--topology", "ring", "--netns", "--detach", *common)
    assert r.returncode == 0, r.stdout + r.stderr
    nc = await stack.connect()
    js = nc.jetstream()

    async def cmd(node: str, kind: int, peer: str = "", **params: str) -> mesh_pb2.MeshEvent:
        c = mesh_pb2.MeshCommand(meta=new_meta("test"), node_id=node, kind=kind, peer=peer, params=params)
        c.command_id = c.meta.event_id
        reply = await nc.request(subjects.mesh_cmd(node), c.SerializeToString(), timeout=10)
        return mesh_pb2.MeshEvent.FromString(reply.data)

    async def neighbours(want) -> bool:
        tel = await mesh_telemetry(js)
        return len(tel) == 4 and want({n: set(t.neighbours) for n, t in tel.items()}, tel)
    try:
        await eventually(lambda: neighbours(lambda nb, _: "n1" in nb["n0"] and "n0" in nb["n1"]), 60, 0.3)
        for a, b in (("n0", "n1"), ("n1", "n0")):
            ev = await cmd(a, C.KIND_SET_LINK, b, state="down")
            assert ev.kind == "command.ok", ev
        await eventually(lambda: neighbours(lambda nb, _: "n1" not in nb["n0"] and "n0" not in nb["n1"]), 30, 0.3,
                         what="link n0-n1 down at both ends")
        for a, b in (("n0", "n1"), ("n1", "n0")):
            assert (await cmd(a, C.KIND_SET_LINK, b, state="up")).kind == "command.ok"
        await eventually(lambda: neighbours(lambda nb, _: "n1" in nb["n0"] and "n0" in nb["n1"]), 30, 0.3,
                         what="link n0-n1 back")
        # a link that does not exist, a bad value: refused with the reason
        ev = await cmd("n0", C.KIND_SET_LINK, "n2", state="down")
        assert ev.kind == "command.failed" and "no such link" in ev.details["detail"], ev
        ev = await cmd("n0", C.KIND_SET_CONFIG, hello_interval="9")
        assert ev.kind == "command.failed" and "between 0.05 and 2" in ev.details["detail"], ev

        for n in ("n0", "n1", "n2", "n3"):
            assert (await cmd(n, C.KIND_SET_CONFIG, hello_interval="0.3")).kind == "command.ok"
        await eventually(lambda: neighbours(lambda _, tel: {t.counters["config.hello_interval_s"]
                                                            for t in tel.values()} == {0.3}), 30, 0.3,
                         what="hello_interval 0.3 in force at every node")
        for n in ("n0", "n1", "n2", "n3"):
            assert (await cmd(n, C.KIND_SET_CONFIG, restore="previous")).kind == "command.ok"
        await eventually(lambda: neighbours(lambda _, tel: {t.counters["config.hello_interval_s"]
                                                            for t in tel.values()} == {0.2}), 30, 0.3,
                         what="hello_interval restored")
    finally:
        await nc.close()
        down = meshctl("mesh", "down", "--data-dir", str(stack.data_dir))
        assert down.returncode == 0, down.stdout + down.stderr
