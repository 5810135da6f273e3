"""Shared fixtures: a real nats-server on a random loopback port, real service processes.

Every test is marked with its layer, from the directory it lives in (tests/<layer>/...): unit, service,
integration, e2e, security (registered in pyproject.toml). `pytest -m unit` selects the in-process tests only.
"""
from __future__ import annotations

import os
import pathlib
import socket
import sys
import threading

import nats
import pytest
from testkit import scaled, violations

from x0tta6bl4.runtime.stack import NatsServer, Stack

TESTS = pathlib.Path(__file__).resolve().parent
# the CLIs the tests start print rich tables: without a terminal (a pytest-xdist worker's stdin is a pipe, so is
# CI's) rich falls back to 80 columns and truncates the ids and words the tests look for
os.environ.setdefault("COLUMNS", "200")
LAYERS = ("unit", "service", "integration", "e2e", "security", "containers")


def _layer(path: pathlib.Path) -> str | None:
    try:
        parts = pathlib.Path(path).resolve().relative_to(TESTS).parts
    except ValueError:
        return None
    return parts[0] if parts and parts[0] in LAYERS else None


def _selected_layers(config: pytest.Config) -> set[str] | None:
    """The layers a plain `-m` expression asks for (`unit`, `unit or service`); None for anything else."""
    words = (config.getoption("markexpr", "") or "").split()
    if not words or words[1::2] != ["or"] * (len(words) // 2) or not set(words[::2]) <= set(LAYERS):
        return None
    return set(words[::2])


def pytest_ignore_collect(collection_path: pathlib.Path, config: pytest.Config) -> bool | None:
    """`-m unit` does not even import the other layers' modules (some import torch, grpc, ...)."""
    layers = _selected_layers(config)
    layer = _layer(collection_path)
    if layers is not None and layer is not None and layer not in layers:
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        layer = _layer(item.path)
        if layer is not None:
            item.add_marker(getattr(pytest.mark, layer))


# tests/unit stays in-process: a unit test that opens a network socket or starts a process fails at once,
# naming what it did (an audit hook on the test's own thread; `@pytest.mark.subprocess` allows a helper process)
_unit_item: list[pytest.Item] = []


def _unit_guard(event: str, args: tuple) -> None:
    if not _unit_item or threading.current_thread() is not threading.main_thread():
        return
    item = _unit_item[0]
    if event in ("socket.bind", "socket.connect") and args[0].family in (socket.AF_INET, socket.AF_INET6):
        raise RuntimeError(f"{item.nodeid} opened a network socket ({event} {args[1]!r}): tests that touch the "
                           "network belong in tests/integration")
    if event == "subprocess.Popen" and item.get_closest_marker("subprocess") is None:
        raise RuntimeError(f"{item.nodeid} started a process ({args[1]!r}): tests that start processes belong in "
                           "tests/integration")


sys.addaudithook(_unit_guard)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    if _layer(item.path) == "unit":
        _unit_item.append(item)
    try:
        yield
    finally:
        _unit_item.clear()


@pytest.fixture
def nats_server(tmp_path: pathlib.Path):
    server = NatsServer(tmp_path / "jetstream", log_file=tmp_path / "nats.log").start(scaled(15))
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer):
    from x0tta6bl4.bus.connection import ensure_topology
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    await ensure_topology(client.jetstream())
    yield client
    await client.close()


def unready_logs(stack: Stack, lines: int = 15) -> str:
    out = []
    for sp in stack.procs:
        if sp.proc.poll() is None and not sp.ready():
            tail = sp.log_file.read_text(errors="replace").splitlines()[-lines:] if sp.log_file.exists() else []
            out.append(f"--- {sp.name}-{sp.index} (pid {sp.proc.pid}), last lines of {sp.log_file}:\n"
                       + "\n".join(tail))
    return "\n".join(out)


@pytest.fixture
def stack_factory(tmp_path: pathlib.Path):
    """Start a Stack (real nats-server + real service processes); everything is stopped at teardown. The bus is
    secured as in production (TLS, one nkey identity per process, least-privilege permissions): a test speaks
    on it with ``await stack.connect(identity)`` (the operator by default, a service's name to act as that
    service) and starts mesh hosts with ``stack.mesh_host_env(host, nodes)``. At teardown the nats-server log
    must hold no permission violation: a legitimate flow is never refused."""
    stacks: list[Stack] = []
    tolerant: set[int] = set()

    def make(services=("monitor", "analyzer", "planner", "executor", "governance", "keyvault"),
             replicas: int = 1, env: dict | None = None, name: str = "stack", ready_s: float = 90.0,
             secure: bool = True, violations_expected: bool = False, nats_servers: int = 1) -> Stack:
        s = Stack(tmp_path / name, tuple(services), replicas, env=dict(env or {}), secure=secure,
                  nats_servers=nats_servers)
        stacks.append(s)
        if violations_expected:
            tolerant.add(id(s))
        try:
            return s.start(scaled(ready_s))
        except TimeoutError as e:   # say why: the end of each unready service's log
            raise TimeoutError(f"{e} within {scaled(ready_s):g}s\n{unready_logs(s)}") from None

    yield make
    for s in stacks:
        s.stop()
    refused = [f"{s.data_dir.name}: {line}" for s in stacks if id(s) not in tolerant for line in violations(s)]
    assert not refused, "nats-server refused a legitimate flow (fix bus/permissions.py or the test's identity):\n" \
        + "\n".join(refused[:20])
