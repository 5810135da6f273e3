"""Helpers for tests (importable as `testkit`).

Waiting: a test never sleeps for a fixed time hoping something has happened; it polls the condition with
``eventually`` (async tests) or ``eventually_sync`` (plain tests, threads) until it holds or a deadline passes,
and checks that something does NOT happen with ``consistently``/``consistently_sync`` (the condition holds at
every poll of a window).
Deadlines are multiplied by ``X0TTA6BL4_TEST_TIMEOUT_SCALE`` (default 1) for slow or loaded machines.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from x0tta6bl4.bus.reader import mesh_telemetry
from x0tta6bl4.runtime.stack import repo_root

SCALE_ENV = "X0TTA6BL4_TEST_TIMEOUT_SCALE"


def _timeout_scale() -> float:
    # two or more pytest-xdist workers (make test) are two test files at once on a 2-core machine: a busy
    # machine, so deadlines (only ever reached when something fails) are doubled unless set explicitly
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    busy = "2" if workers.isdigit() and int(workers) > 1 else "1"
    raw = os.environ.get(SCALE_ENV, "").strip() or busy
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not scale > 0:
        raise ValueError(f"{SCALE_ENV}={raw!r}: expected a positive number (a factor for every test deadline)")
    return scale


TIMEOUT_SCALE = _timeout_scale()


def scaled(seconds: float) -> float:
    """A deadline of ``seconds`` on this machine (times X0TTA6BL4_TEST_TIMEOUT_SCALE)."""
    return seconds * TIMEOUT_SCALE


class _Poll:
    """One condition being polled: calls it, remembers the last value or assertion error, explains a timeout."""

    def __init__(self, check: Callable[[], Any], timeout: float, what: str | None):
        self.check = check
        self.limit = scaled(timeout)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.limit
        self.what = what
        self.tries = 0
        self.last: Any = None
        self.error: AssertionError | None = None

    def settle(self, value: Any) -> bool:
        self.tries += 1
        self.last, self.error = value, None
        return bool(value)

    def failed(self, error: AssertionError) -> None:
        self.tries += 1
        self.last, self.error = None, error

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def pause(self, interval: float) -> float:
        return max(0.0, min(interval, self.deadline - time.monotonic()))

    def timeout_error(self) -> AssertionError:
        last = f"last assertion: {self.error}" if self.error is not None else f"last value: {self.last!r}"
        if len(last) > 800:
            last = last[:800] + "..."
        scale = f" ({self.limit / TIMEOUT_SCALE:g}s x {SCALE_ENV}={TIMEOUT_SCALE:g})" if TIMEOUT_SCALE != 1 else ""
        return AssertionError(f"not within {self.limit:g}s{scale}, {self.tries} tries: {self.describe()}; {last}")

    def describe(self) -> str:
        if self.what:
            return self.what
        try:
            src = " ".join(inspect.getsource(self.check).split())
        except (OSError, TypeError):
            src = ""
        name = getattr(self.check, "__qualname__", repr(self.check))
        if not src or "<lambda>" not in name:
            return name
        src = src[src.index("lambda"):] if "lambda" in src else src
        return src if len(src) <= 160 else src[:160] + "..."


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, *,
                     what: str | None = None) -> Any:
    """Poll ``check()`` (sync or async) until it holds and return what it returned.

    It holds when it returns a truthy value without raising AssertionError; a falsy value (False, None, 0,
    an empty list) or an AssertionError means "not yet" (an assertion-style check ends with ``return True``).
    Any other exception propagates at once. After ``timeout`` seconds (scaled, see ``scaled``) it raises
    AssertionError naming the check (``what`` or its source) and the last value or assertion error.
    """
    poll = _Poll(check, timeout, what)
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except AssertionError as e:
            poll.failed(e)
        else:
            if poll.settle(value):
                return value
        if poll.expired():
            raise poll.timeout_error() from poll.error
        await asyncio.sleep(poll.pause(interval))


def eventually_sync(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, *,
                    what: str | None = None) -> Any:
    """``eventually`` for plain (non-async) tests: ``check`` is a plain callable, polled with time.sleep."""
    poll = _Poll(check, timeout, what)
    while True:
        try:
            value = check()
        except AssertionError as e:
            poll.failed(e)
        else:
            if inspect.isawaitable(value):
                raise TypeError("eventually_sync got an async check: use `await eventually(...)`")
            if poll.settle(value):
                return value
        if poll.expired():
            raise poll.timeout_error() from poll.error
        time.sleep(poll.pause(interval))


def _broken(poll: _Poll, value: Any = None, error: AssertionError | None = None) -> AssertionError:
    why = f"{error}" if error is not None else f"value: {value!r}"
    return AssertionError(f"stopped holding after {time.monotonic() - poll.t0:.2f}s: {poll.describe()}; {why}")


async def consistently(check: Callable[[], Any], during: float = 1.0, interval: float = 0.05, *,
                       what: str | None = None) -> None:
    """The opposite wait, for "nothing happens": ``check()`` (sync or async) must hold at every poll for
    ``during`` seconds (scaled: a slow machine gives a bug longer to show). Fails at the first poll where it
    does not, with the value or assertion that broke it."""
    poll = _Poll(check, during, what)
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except AssertionError as e:
            raise _broken(poll, error=e) from e
        if not value:
            raise _broken(poll, value)
        if poll.expired():
            return
        await asyncio.sleep(poll.pause(interval))


def consistently_sync(check: Callable[[], Any], during: float = 1.0, interval: float = 0.05, *,
                      what: str | None = None) -> None:
    """``consistently`` for plain (non-async) tests."""
    poll = _Poll(check, during, what)
    while True:
        try:
            value = check()
        except AssertionError as e:
            raise _broken(poll, error=e) from e
        if not value:
            raise _broken(poll, value)
        if poll.expired():
            return
        time.sleep(poll.pause(interval))


def unused_pid() -> int:
    """A pid that no process has (for "a process that died"), found without starting one: the top of the pid
    range, which the kernel hands out last."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    for pid in range(pid_max - 1, 1, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise RuntimeError("every pid is in use")


def violations(stack) -> list[str]:
    """The permission violations nats-server logged for a stack (a legitimate flow causes none); every server of
    a cluster (logs/nats-server.log, nats-server-1.log, ...)."""
    out: list[str] = []
    for log in sorted((stack.data_dir / "logs").glob("nats-server*.log")):
        try:
            out += [line for line in log.read_text(errors="replace").splitlines() if "Violation" in line]
        except OSError:
            continue
    return out


def start_mesh(stack, topology="grid:9", traffic="n0:n8", extra=()):
    """A mesh host process on the stack, speaking on the bus as its own identity (mesh-host-mesh: these nodes);
    ``extra``: more mesh host arguments."""
    from x0tta6bl4.mesh.topology import parse_spec
    env = stack.mesh_host_env("mesh", parse_spec(topology).nodes)
    proc = subprocess.Popen([sys.executable, "-m", "x0tta6bl4.mesh.host", "--nats", stack.url, "--topology", topology,
                             "--traffic", traffic, "--data-dir", str(stack.data_dir), *extra], cwd=repo_root(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    ready = json.loads(proc.stdout.readline())
    assert ready["ready"]
    return proc


async def mesh_ready(js, n, min_acked=10):
    """Every node reports and DATA from n0 is acknowledged without loss (more than ``min_acked`` packets: a test
    that wants a repair verified asks for ~60, 3 s of the default 20/s flow, since the executor measures the flows
    in a window ending 1 s before the first symptom and cannot verify a kill in the mesh's first seconds)."""
    tel = await mesh_telemetry(js)
    src = tel.get("n0")
    return len(tel) >= n and src is not None and src.counters.get("acked", 0) > min_acked and src.loss_pct == 0


def load_tool(name: str):
    """A script of tools/ (not a package) loaded as a module, e.g. load_tool("gen_docs")."""
    import importlib.util
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(name, root / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FlowWatch:
    """A paced DATA flow src -> dst on an in-process mesh host, and a watcher sampling every node's
    neighbour table: what a key rotation must not disturb (no neighbour lost, no DATA lost)."""

    def __init__(self, host, src: str = "n0", dst: str = "n8", pace_s: float = 0.01):
        self.host, self.rt = host, host.runtime
        self.src, self.dst = self.rt.agents[src], self.rt.agents[dst]
        self.dst_name, self.pace_s = dst, pace_s
        self.sent = 0
        self.lost_links: list[tuple[str, str]] = []
        self.base_delivered, self.base_acked = self.dst.counters["delivered"], self.src.counters["acked"]
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def _traffic(self) -> None:
        while not self._stop.is_set():
            if self.src.send(self.dst_name, b"data") is not None:
                self.sent += 1
            await asyncio.sleep(self.pace_s)   # pacing, not a wait for a state

    async def _watch(self) -> None:
        topo = self.rt.topology
        while not self._stop.is_set():
            for n in self.host.nodes:
                links = self.rt.agents[n].core.neighbours.links
                self.lost_links.extend((n, p) for p in topo.neighbours(n) if p not in links)
            await asyncio.sleep(0.02)          # sampling period

    def start(self) -> FlowWatch:
        self._tasks = [asyncio.create_task(self._traffic()), asyncio.create_task(self._watch())]
        return self

    def delivered(self) -> int:
        return self.dst.counters["delivered"] - self.base_delivered

    def cancel(self) -> None:
        """On the way out of a failed test."""
        self._stop.set()
        for t in self._tasks:
            t.cancel()

    async def stop_and_check(self) -> None:
        """Stop; then every DATA sent was delivered and acknowledged, no neighbour was lost, nothing dropped."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        try:
            await eventually(lambda: (self.delivered(), self.src.counters["acked"] - self.base_acked)
                             == (self.sent, self.sent), 10)
        except AssertionError:
            raise AssertionError(f"DATA lost: sent {self.sent}, delivered {self.delivered()}, acked "
                                 f"{self.src.counters['acked'] - self.base_acked}") from None
        assert not self.lost_links, f"neighbours lost: {sorted(set(self.lost_links))[:10]}"
        dropped = sum(a.counters[k] for a in self.rt.agents.values()
                      for k in ("dropped.no_session", "dropped.decrypt_failed", "dropped.channel_queue_full"))
        assert dropped == 0
        rejected = {k: v for a in self.rt.agents.values() for k, v in a.counters.items() if k.startswith("rejected.")}
        assert not any(rejected.values()), rejected

