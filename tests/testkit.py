"""Helpers for tests (importable as `testkit`)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from x0tta6bl4.bus.reader import mesh_telemetry
from x0tta6bl4.runtime.stack import repo_root


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll an async or sync predicate until it returns a truthy value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def start_mesh(stack, topology="grid:9", traffic="n0:n8"):
    env = stack.service_env("mesh-host", 0, 0)
    proc = subprocess.Popen([sys.executable, "-m", "x0tta6bl4.mesh.host", "--nats", stack.url, "--topology", topology,
                             "--traffic", traffic, "--data-dir", str(stack.data_dir)], cwd=repo_root(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    ready = json.loads(proc.stdout.readline())
    assert ready["ready"]
    return proc


async def mesh_ready(js, n):
    """Every node reports and DATA from n0 is acknowledged without loss."""
    tel = await mesh_telemetry(js)
    src = tel.get("n0")
    return len(tel) >= n and src is not None and src.counters.get("acked", 0) > 10 and src.loss_pct == 0