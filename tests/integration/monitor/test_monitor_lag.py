"""A monitor that falls behind knows it (issue #20), on a real stack: real nats-server (TLS, nkeys,
permissions), the real monitor process, telemetry published under a mesh host's own bus identity.
The monitor is frozen (SIGSTOP) for longer than the liveness timeout while every node keeps reporting:
when it runs again its consumer is behind, and judging silence by the wall clock would declare every
node dead. It declares none; a node that really stops is still declared dead; the lag is on /ready and
/metrics."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request

import pytest
from testkit import eventually, scaled, violations

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.permissions import MESH_HOST_PREFIX
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.ids import new_meta
from x0tta6bl4.runtime.stack import Stack
from x0tta6bl4.v1 import common_pb2, events_pb2

NODES = [f"n{i}" for i in range(40)]


def neighbours(i: int) -> list[str]:
    return [NODES[(i - 1) % len(NODES)], NODES[(i + 1) % len(NODES)]]


def ready(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        return r.read().decode()


@pytest.mark.timeout(120)
async def test_a_frozen_monitor_declares_no_healthy_node_dead_and_still_finds_the_dead_one(tmp_path):
    stack = Stack(tmp_path / "stack", ("monitor",), secure=True,
                  env={"X0TTA6BL4_MONITOR_COLLECTOR": "off", "X0TTA6BL4_DISCOVER_HOSTS": "false"})
    stack.start(scaled(60))
    stopped: set[str] = set()
    try:
        stack.add_mesh_host("gen", NODES)
        gen = await stack.connect(MESH_HOST_PREFIX + "gen")      # the identity a mesh host of these nodes has
        op = await stack.connect()
        pub = Publisher(gen, "gen")
        criticals: list[str] = []

        async def on_health(msg) -> None:
            ch = events_pb2.HealthChange.FromString(msg.data)
            if ch.node_id and ch.current == common_pb2.HEALTH_CRITICAL:
                criticals.append(ch.node_id)
        await op.subscribe(subjects.MAPEK_HEALTH, cb=on_health)

        async def generate() -> None:
            while True:
                for i, n in enumerate(NODES):
                    if n in stopped:
                        continue
                    t = events_pb2.NodeTelemetry(meta=new_meta(n), node_id=n, reachable=True,
                                                 neighbours=neighbours(i), cpu_pct=10)
                    await pub.emit(subjects.telemetry(n), t)
                await asyncio.sleep(0.25)
        task = asyncio.create_task(generate())
        proc = next(p for p in stack.procs if p.name == "monitor")
        try:
            async def caught_up() -> dict | None:
                doc = ready(proc.health_port)
                lag = doc.get("checks", {}).get("telemetry_lag", {})
                info = json.loads((await op.request(subjects.MONITOR_INFO, b"", timeout=2)).data)
                return doc if lag.get("ok") and lag.get("pending") is not None and info["nodes"] == 40 else None
            doc = await eventually(caught_up, 30, 0.2)
            assert doc["ready"] and "lag_s" in doc["checks"]["telemetry_lag"]
            assert "x0_monitor_lag_seconds" in metrics(proc.health_port)

            os.kill(proc.proc.pid, signal.SIGSTOP)          # frozen 3 s > the 2 s liveness timeout
            try:
                await asyncio.sleep(3.0)                    # the nodes keep reporting meanwhile
            finally:
                os.kill(proc.proc.pid, signal.SIGCONT)
            await eventually(caught_up, 30, 0.2)    # read its backlog
            assert criticals == [], f"healthy nodes declared dead after the freeze: {sorted(set(criticals))}"

            stopped.add("n5")                               # a real death is still found
            def only_n5() -> bool:
                assert criticals == ["n5"], f"declared dead: {criticals}; /ready: {ready(proc.health_port)}"
                return True
            await eventually(only_n5, 20, 0.1)
        finally:
            task.cancel()
        await gen.close()
        await op.close()
    finally:
        stack.stop()
    assert not violations(stack), "nats-server refused a legitimate flow"
