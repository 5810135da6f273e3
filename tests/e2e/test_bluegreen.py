"""Blue-green deployment of a new node-agent version on the embedded stack: real nats-server, real executor
and monitor processes, real mesh host processes (blue started here, green started by the executor), real
HTTP /health checks. No Kubernetes context is configured, so the executor uses the local stack."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest
from testkit import eventually, mesh_ready, scaled

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.execution.bluegreen_local import HostControl, http_status
from x0tta6bl4.execution.deploy import DeploySpec
from x0tta6bl4.mapek.approval import sign_approval
from x0tta6bl4.runtime.stack import free_port, repo_root
from x0tta6bl4.trust import Signer
from x0tta6bl4.v1 import events_pb2

NODES = {f"n{i}" for i in range(9)}


def start_blue(stack, health_port: int) -> subprocess.Popen:
    env = stack.mesh_host_env("mesh", sorted(NODES))    # blue's own bus identity; green speaks as blue
    env.pop("X0TTA6BL4_KUBE_CONTEXT", None)
    proc = subprocess.Popen([sys.executable, "-m", "x0tta6bl4.mesh.host", "--nats", stack.url, "--topology", "grid:9",
                             "--traffic", "n0:n8", "--version", "v1", "--instance", "mesh-v1",
                             "--health-port", str(health_port), "--data-dir", str(stack.data_dir)],
                            cwd=repo_root(), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    assert json.loads(proc.stdout.readline())["ready"]
    return proc


async def deploy(stack, nc, js, params: dict, timeout_s: float | None = None) -> events_pb2.ActionResult:
    timeout_s = timeout_s or scaled(60)
    action_id = uuid.uuid4().hex
    req = events_pb2.ActionRequest(meta=new_meta("test", cycle_id=f"deploy-{action_id[:8]}"), action_id=action_id,
                                   approved_by="auto", timeout_s=timeout_s,
                                   action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_DEPLOY, params=params))
    # the executor runs only approved actions: signed here with the planner's key of the stack's secrets
    sign_approval(req, Signer.load("planner", stack.secrets.signing_file("planner")), timeout_s + 60, time.time_ns())
    planner = await stack.connect("planner")     # only the planner and governance may publish mapek.action
    try:
        await Publisher(planner, "test").publish(subjects.MAPEK_ACTION, req)
    finally:
        await planner.close()

    async def result():
        for m in await read_all(js, subjects.MAPEK_RESULT):
            r = events_pb2.ActionResult.FromString(m.data)
            if r.action_id == action_id:
                return r
    # the executor gives up after timeout_s and then publishes its result: wait a little longer than that
    return await eventually(result, timeout_s + 10, 0.1, what=f"the ActionResult of deploy {params}")


async def fresh_telemetry(nc, timeout: float = 15.0) -> dict[str, events_pb2.NodeTelemetry]:
    """Telemetry published from now on, until every node reported and DATA from n0 was acknowledged."""
    since, latest = time.time_ns(), {}

    async def on(m) -> None:
        t = events_pb2.NodeTelemetry.FromString(m.data)
        if t.meta.ts_unix_ns >= since:
            latest[t.node_id] = t
    sub = await nc.subscribe("mesh.telemetry.*", cb=on)
    try:
        await eventually(lambda: set(latest) >= NODES and latest["n0"].counters.get("acked", 0) > 0 and latest,
                         timeout, what="fresh telemetry from every node, with DATA from n0 acknowledged")
    finally:
        await sub.unsubscribe()
    return latest


def stop_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(10)


def leftovers(stack, before: set[int]) -> list:
    return [q for q in psutil.process_iter(["pid", "cmdline"])
            if q.info["pid"] not in before and "mesh.host" in " ".join(q.info["cmdline"] or [])
            and str(stack.data_dir) in " ".join(q.info["cmdline"] or [])]


@pytest.mark.slow
async def test_blue_green_switches_to_green_keeps_every_node_and_retires_blue(stack_factory):
    stack = stack_factory(services=("monitor", "executor"))
    before = {p.pid for p in psutil.process_iter()}
    blue = start_blue(stack, free_port())
    nc = await stack.connect()
    js = nc.jetstream()
    hosts = HostControl(nc)
    green_pid = 0
    try:
        await eventually(lambda: mesh_ready(js, 9), 30)
        green_port = free_port()
        # both steps end when they pass
        r = await deploy(stack, nc, js, {"version": "v2", "health_port": str(green_port),
                                         "health_timeout_s": f"{scaled(20):g}", "verify_timeout_s": f"{scaled(15):g}"})
        names = [s.name for s in r.steps]
        assert r.success, [(s.name, s.detail) for s in r.steps]
        assert names == ["discover blue", "start green v2 in standby", "health of green v2", "stand down blue v1",
                         "switch traffic to green v2", "verify green v2", "retire blue v1", "blue-green outcome"]
        assert "green v2 serves; blue v1 retired" in r.steps[-1].detail
        assert f":{green_port}" in r.steps[2].detail and "converged" in r.steps[2].detail

        # green serves: it is the active host of the mesh, answers /health, and every node reports from it
        st = await hosts.host_op("n0", "status")
        green_pid = st["pid"]
        assert (st["instance"], st["version"], st["active"]) == ("mesh-v2", "v2", True)
        assert await http_status(green_port, "/health") == 200 and await http_status(green_port, "/ready") == 200
        tel = await fresh_telemetry(nc)
        assert set(tel) == NODES and all(t.reachable for t in tel.values())
        assert tel["n0"].counters.get("acked", 0) > 0, "DATA flows on green"
        # blue was kept in standby through verification, then retired: its process exited by itself
        assert blue.wait(10) == 0

        # a re-run for the version already serving does nothing twice
        again = await deploy(stack, nc, js, {"version": "v2", "health_port": str(green_port)})
        assert again.success and "already at version v2" in again.steps[-1].detail
        assert [s.name for s in again.steps] == ["discover blue", "blue-green outcome"]
        assert (await hosts.host_op("n0", "status"))["pid"] == green_pid
    finally:
        await nc.close()
        if blue.poll() is None:
            stop_pid(blue.pid)
        if green_pid:
            stop_pid(green_pid)
    assert not leftovers(stack, before)


@pytest.mark.slow
async def test_blue_green_with_failing_health_check_rolls_back(stack_factory):
    stack = stack_factory(services=("monitor", "executor"))
    before = {p.pid for p in psutil.process_iter()}
    blue = start_blue(stack, free_port())
    nc = await stack.connect()
    js = nc.jetstream()
    hosts = HostControl(nc)
    try:
        await eventually(lambda: mesh_ready(js, 9), 30)
        green_port = free_port()
        # green v2-canary is started with --fail-health: its /health answers 503, so it never becomes healthy.
        # The health deadline must cover green's start (a new Python process that joins NATS: 0.7 s quiet, 2.2 s
        # with two CPU hogs beside it) or green "answered nothing" instead of 503; the check waits all of it.
        r = await deploy(stack, nc, js, {"version": "v2-canary", "health_port": str(green_port), "fail_health": "true",
                                         "health_timeout_s": f"{scaled(6):g}"})
        steps = {s.name: s for s in r.steps}
        assert not r.success
        assert "rolled back" in r.error and "health check failed" in r.error
        assert not steps["health of green v2-canary"].ok
        assert "answered 503" in steps["health of green v2-canary"].detail
        assert steps["rollback: stop green v2-canary"].ok
        assert "stand down blue v1" not in steps, "blue is not touched before green is healthy"
        assert r.steps[-1].detail.startswith("rolled back to blue v1 serves again")

        # blue serves, green is gone, no node lost
        st = await hosts.host_op("n0", "status")
        assert (st["instance"], st["version"], st["active"], blue.poll()) == ("mesh-v1", "v1", True, None)
        assert await http_status(green_port, "/health") == 0
        assert not (stack.data_dir / "deploy" / "mesh-v2-canary.pid").exists()
        tel = await fresh_telemetry(nc)
        assert set(tel) == NODES and all(t.reachable for t in tel.values())
        assert tel["n0"].counters.get("acked", 0) > 0
        assert DeploySpec.from_params({"version": "v2-canary"}).green_instance == "mesh-v2-canary"
        assert not leftovers(stack, before | {blue.pid})
    finally:
        await nc.close()
        stop_pid(blue.pid)
    assert not leftovers(stack, before)
