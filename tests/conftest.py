"""Shared fixtures: a real nats-server on a random loopback port, real service processes."""
from __future__ import annotations

import pathlib

import nats
import pytest

from x0tta6bl4.runtime.stack import NatsServer, Stack


@pytest.fixture
def nats_server(tmp_path: pathlib.Path):
    server = NatsServer(tmp_path / "jetstream", log_file=tmp_path / "nats.log").start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer):
    from x0tta6bl4.bus.connection import ensure_topology
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    await ensure_topology(client.jetstream())
    yield client
    await client.close()


@pytest.fixture
def stack_factory(tmp_path: pathlib.Path):
    """Start a Stack (real nats-server + real service processes); everything is stopped at teardown."""
    stacks: list[Stack] = []

    def make(services=("monitor", "analyzer", "planner", "executor", "governance", "keyvault"),
             replicas: int = 1, env: dict | None = None, name: str = "stack") -> Stack:
        s = Stack(tmp_path / name, tuple(services), replicas, env=dict(env or {}))
        stacks.append(s)
        return s.start()

    yield make
    for s in stacks:
        s.stop()
