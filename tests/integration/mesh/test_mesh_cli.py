"""meshctl mesh up/status/down and meshctl fault ... on a real stack (nats-server + monitor) with a real mesh host.
The bus is secured: meshctl speaks as the operator (the stack's secrets, found from --data-dir), every mesh host
process as its own identity that ``mesh up`` registers and ``mesh down`` withdraws."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from testkit import eventually_sync
from typer.testing import CliRunner

from x0tta6bl4.cli.mesh import cli
from x0tta6bl4.v1 import events_pb2

pytestmark = pytest.mark.slow
ENV = {"COLUMNS": "250", "X0TTA6BL4_NATS_URL": ""}


def meshctl(*args: str, ok: bool = True):
    r = CliRunner().invoke(cli, list(args), env=ENV)
    out = r.output
    if ok:
        assert r.exit_code == 0, out
    else:
        assert r.exit_code != 0, out
    assert "Traceback" not in out
    return out


def live(stack, seconds: float = 0.8) -> dict[str, events_pb2.NodeTelemetry]:
    """The latest telemetry of each node heard during a sampling window of ``seconds`` (as the operator)."""
    async def go():
        nc = await stack.connect()
        out: dict[str, events_pb2.NodeTelemetry] = {}

        async def cb(m):
            t = events_pb2.NodeTelemetry.FromString(m.data)
            out[t.node_id] = t
        await nc.subscribe("mesh.telemetry.*", cb=cb)
        await asyncio.sleep(seconds)   # the sampling window (nodes report every 0.5 s)
        await nc.close()
        return out
    return asyncio.run(go())


def wait_live(stack, pred, timeout: float = 15.0) -> dict[str, events_pb2.NodeTelemetry]:
    """Sample live telemetry until ``pred`` holds for a sample."""
    def sample():
        tel = live(stack)
        assert pred(tel), f"routes heard: { {n: dict(t.routes) for n, t in tel.items()} }"
        return tel
    return eventually_sync(sample, timeout, 0)


def status_shows(needle: str, *args: str, timeout: float = 10.0) -> str:
    """`meshctl mesh status ...` once its output contains ``needle`` (the monitor stores what the agents
    publish a moment later)."""
    def status():
        out = meshctl("mesh", "status", *args)
        assert needle in out, out
        return out
    return eventually_sync(status, timeout, 0.5)


def test_meshctl_mesh_and_faults_loopback(stack_factory, tmp_path):
    stack = stack_factory(services=("monitor",))
    url, data = stack.url, str(stack.data_dir)
    common = ["--nats", url, "--data-dir", data]

    # nothing running yet: one clear line each
    assert "no mesh telemetry" in meshctl("mesh", "status", "--listen", "0.3", *common, ok=False)
    assert "no mesh host answers on mesh.cmd.n4" in meshctl("fault", "kill", "n4", *common, ok=False)
    assert "no mesh is running" in meshctl("mesh", "down", "--data-dir", data)
    assert "cannot reach NATS" in meshctl("mesh", "up", "--nats", "nats://127.0.0.1:1", "--data-dir", data, ok=False)
    assert "bad --traffic" in meshctl("mesh", "up", "--traffic", "n0:n99", *common, ok=False)

    out = meshctl("mesh", "up", "--nodes", "9", "--topology", "grid", "--traffic", "n0:n8", "--rate", "50",
                  "--detach", *common)
    assert "9 nodes, 12 links (grid3x3), loopback mode" in out
    state = json.loads((stack.data_dir / "mesh.json").read_text())
    assert state["mode"] == "loopback" and len(state["nodes"]) == 9
    # the host process has its own bus identity for exactly these nodes (registered, nats-server reloaded)
    assert stack.secrets.hosts() == {"mesh": sorted(state["nodes"])} and state["identities"] == ["mesh"]
    assert "already running" in meshctl("mesh", "up", *common, ok=False)
    try:
        tel = wait_live(stack, lambda t: len(t) == 9 and "n8" in t.get("n0", events_pb2.NodeTelemetry()).routes
                        and t["n0"].counters.get("acked", 0) > 10)
        # status comes from the monitor's telemetry bucket: every node, neighbours and routes
        out = status_shows("from telemetry bucket", *common)
        assert "9 nodes from telemetry bucket" in out and "n1,n3" in out  # n0's neighbours
        assert "→" in out
        status_shows("n8          │ n", "--node", "n0", *common)

        # kill the relay n0 uses towards n8: traffic is rerouted around it
        victim = tel["n0"].routes["n8"]
        assert victim in ("n1", "n3")
        acked = tel["n0"].counters["acked"]
        assert "ok — fault kill applied" in meshctl("fault", "kill", victim, *common)
        tel = wait_live(stack, lambda t: victim not in t and t["n0"].routes.get("n8") not in (None, victim)
                        and t["n0"].counters.get("acked", 0) > acked + 20, timeout=10)
        assert victim not in tel["n0"].neighbours
        status_shows("unreachable", *common)     # the monitor declares the killed node unreachable

        # the other faults: each is a MeshCommand answered by the host
        other = "n3" if victim == "n1" else "n1"
        out = meshctl("fault", "partition", "n4", "n5", *common)
        assert out.count("fault block applied") == 2
        assert "fault loss applied" in meshctl("fault", "loss", "n7", "40", *common)
        assert "fault latency applied" in meshctl("fault", "latency", other, "30", *common)
        out = meshctl("fault", "flap", "n6", "--period", "0.1", "--count", "2", *common)
        assert out.count("fault pause applied") == 2 and out.count("fault resume applied") == 2
        assert "no link" not in meshctl("fault", "flap", "n2", "--peer", "n5", "--period", "0.1", "--count", "1",
                                        *common)
        meshctl("fault", "loss", "n7", "140", *common, ok=False)  # out of range: rejected by the CLI
        tel = wait_live(stack, lambda t: "n5" not in t.get("n4",
                                                            events_pb2.NodeTelemetry(neighbours=["n5"])).neighbours)

        out = meshctl("fault", "heal", *common)
        assert out.count("HEAL: ok") == 9 and "failed" not in out
        wait_live(stack, lambda t: len(t) == 9 and "n5" in t["n4"].neighbours and victim in t["n0"].neighbours)
    finally:
        out = meshctl("mesh", "down", "--data-dir", data)
    assert "mesh stopped: 9 nodes" in out
    assert not (stack.data_dir / "mesh.json").exists()
    assert stack.secrets.hosts() == {} and not stack.secrets.nkey_file("mesh-host-mesh").exists()   # withdrawn
    with pytest.raises(ProcessLookupError):
        os.kill(state["pid"], 0)


def test_meshctl_mesh_up_over_two_host_processes_with_keys(stack_factory, tmp_path):
    """meshctl mesh up --hosts 2 --keys: one mesh over two host processes, identities from the stack's
    keyvault, signed HELLOs and encrypted links; traffic crosses the process boundary; down stops all."""
    stack = stack_factory(services=("keyvault",))
    url, data = stack.url, str(stack.data_dir)
    common = ["--nats", url, "--data-dir", data]
    env = {**ENV, "X0TTA6BL4_KEYVAULT_ADDR": stack.grpc_addr("keyvault")}
    assert "--netns" in meshctl("mesh", "up", "--netns", "--hosts", "2", *common, ok=False)
    r = CliRunner().invoke(cli, ["mesh", "up", "--nodes", "6", "--topology", "line", "--hosts", "2", "--keys",
                                 "--traffic", "n0:n5", "--rate", "20", "--detach", *common], env=env)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "2 host processes" in r.output and "signed HELLOs" in r.output
    state = json.loads((stack.data_dir / "mesh.json").read_text())
    assert stack.secrets.hosts() == {"mesh-0": ["n0", "n1", "n2"], "mesh-1": ["n3", "n4", "n5"]}   # one each
    children = [int(p) for p in Path(f"/proc/{state['pid']}/task/{state['pid']}/children").read_text().split()]
    assert len(children) == 2
    try:
        tel = wait_live(stack, lambda t: len(t) == 6 and t.get("n0", events_pb2.NodeTelemetry()).counters.get(
            "acked", 0) > 10, timeout=60)
        assert all(t.counters.get("channels.established", 0) > 0 for t in tel.values())
        assert all(t.counters.get("failed_auth", 0) == 0 for t in tel.values())
    finally:
        out = meshctl("mesh", "down", "--data-dir", data)
    assert "mesh stopped: 6 nodes" in out
    for pid in [state["pid"], *children]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_meshctl_mesh_reinstate_undoes_an_avoid(stack_factory, tmp_path):
    """After a REROUTE every node avoids the target; once it is back, `meshctl mesh reinstate` lets the
    mesh route through it again (here the only path: a line n0-n1-n2-n3)."""
    from x0tta6bl4.cli.mesh import send_command
    from x0tta6bl4.v1 import mesh_pb2
    stack = stack_factory(services=("monitor",))
    url, data = stack.url, str(stack.data_dir)
    common = ["--nats", url, "--data-dir", data]
    meshctl("mesh", "up", "--nodes", "4", "--topology", "line", "--traffic", "n0:n3", "--rate", "50", "--detach",
            *common)
    try:
        wait_live(stack, lambda t: t.get("n0", events_pb2.NodeTelemetry()).routes.get("n3") == "n1")

        async def avoid():
            nc = await stack.connect()
            try:
                return await asyncio.gather(*(send_command(nc, n, mesh_pb2.MeshCommand.KIND_AVOID_NODE, peer="n2")
                                              for n in ("n0", "n1", "n3")))
            finally:
                await nc.close()
        assert all(ok for ok, _ in asyncio.run(avoid()))
        tel = wait_live(stack, lambda t: "n3" not in t.get("n1", events_pb2.NodeTelemetry(routes={"n3": "x"})).routes)
        acked = tel["n0"].counters.get("acked", 0)
        out = meshctl("mesh", "reinstate", "n2", *common)
        assert "reinstate n2: 3/3 nodes route through it again" in out
        wait_live(stack, lambda t: t["n1"].routes.get("n3") == "n2" and t["n0"].counters.get("acked", 0) > acked + 20)
    finally:
        meshctl("mesh", "down", "--data-dir", data)
