"""Fault injection.

Fault language (one fault per string)::

    kill NODE              crash the node (socket closed, state lost)
    pause NODE / resume NODE   freeze / unfreeze the node
    partition A B          cut the link A-B (both directions)
    unpartition A B        restore the link A-B
    loss NODE PCT [DIR]    drop PCT % of the datagrams NODE receives (DIR ``in``, default),
                           sends (``out``) or both (``both``)
    latency NODE MS        add MS ms to every datagram NODE sends
    flap A B [PERIOD [COUNT]]   toggle link A-B every PERIOD s (default 0.5 s, 4 times)
    heal                   remove every impairment and revive killed nodes

``AgentFaults`` applies them at agent level (one-process runtime); the same
strings are accepted by :class:`x0tta6bl4.mesh.netns.NetnsMesh`, which uses
kernel tools (process kill, ``ip link set down``, nftables ``numgen random``).
"""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import MeshRuntime

OPS: dict[str, int | tuple[int, int]] = {
    "kill": 1,
    "pause": 1,
    "resume": 1,
    "partition": 2,
    "unpartition": 2,
    "loss": (2, 3),
    "latency": 2,
    "flap": (2, 4),
    "heal": 0,
}


LOSS_DIRECTIONS = ("in", "out", "both")


@dataclass(frozen=True)
class Fault:
    op: str
    args: tuple[str, ...]


def parse_fault(spec: str) -> Fault:
    parts = shlex.split(spec)
    if not parts:
        raise ValueError("empty fault spec")
    op, args = parts[0].lower(), tuple(parts[1:])
    if op not in OPS:
        raise ValueError(f"unknown fault {op!r}")
    want = OPS[op]
    lo, hi = (want, want) if isinstance(want, int) else want
    if not lo <= len(args) <= hi:
        raise ValueError(f"{op} takes {want} arguments, got {len(args)}")
    if op == "loss" and not 0 <= float(args[1]) <= 100:
        raise ValueError("loss percentage must be 0..100")
    if op == "loss" and len(args) > 2 and args[2] not in LOSS_DIRECTIONS:
        raise ValueError(f"loss direction must be one of {', '.join(LOSS_DIRECTIONS)}, got {args[2]!r}")
    if op == "latency" and float(args[1]) < 0:
        raise ValueError("latency must be >= 0")
    return Fault(op, args)


class AgentFaults:
    """Agent-level fault injection for a :class:`MeshRuntime`."""

    def __init__(self, runtime: MeshRuntime) -> None:
        self.rt = runtime
        self.tasks: set[asyncio.Task] = set()
        self.log: list[str] = []

    def _agent(self, n: str):
        if n not in self.rt.agents:
            raise KeyError(f"unknown node {n!r}")
        return self.rt.agents[n]

    def apply(self, spec: str) -> None:
        f = parse_fault(spec)
        self.log.append(spec)
        a = f.args
        if f.op == "kill":
            self.kill(a[0])
        elif f.op == "pause":
            self._agent(a[0]).impair.paused = True
        elif f.op == "resume":
            self._agent(a[0]).impair.paused = False
        elif f.op == "partition":
            self.partition(a[0], a[1])
        elif f.op == "unpartition":
            self.unpartition(a[0], a[1])
        elif f.op == "loss":
            self.loss(a[0], float(a[1]), a[2] if len(a) > 2 else "in")
        elif f.op == "latency":
            self.latency(a[0], float(a[1]))
        elif f.op == "flap":
            self.flap(a[0], a[1], *(float(x) for x in a[2:]))
        elif f.op == "heal":
            self.heal()

    def kill(self, node: str) -> None:
        self._agent(node).kill()

    async def revive(self, node: str) -> None:
        await self._agent(node).revive()

    def partition(self, a: str, b: str) -> None:
        self._agent(a).block(b)
        self._agent(b).block(a)

    def unpartition(self, a: str, b: str) -> None:
        self._agent(a).impair.blocked.discard(b)
        self._agent(b).impair.blocked.discard(a)

    def loss(self, node: str, pct: float, direction: str = "in") -> None:
        impair = self._agent(node).impair
        if direction in ("in", "both"):
            impair.drop_prob = pct / 100.0
        if direction in ("out", "both"):
            impair.tx_drop_prob = pct / 100.0

    def latency(self, node: str, ms: float) -> None:
        self._agent(node).impair.latency_ms = ms

    def flap(self, a: str, b: str, period: float = 0.5, count: float = 4) -> asyncio.Task:
        async def run() -> None:
            for i in range(int(count)):
                self.partition(a, b) if i % 2 == 0 else self.unpartition(a, b)
                await asyncio.sleep(period)
            self.unpartition(a, b)

        return self._spawn(run())

    def heal(self) -> asyncio.Task | None:
        for t in list(self.tasks):
            t.cancel()
        dead = []
        for n, ag in self.rt.agents.items():
            ag.impair.clear()
            if ag.killed:
                dead.append(n)
        if dead:
            async def run() -> None:
                for n in dead:
                    await self.revive(n)

            return self._spawn(run())
        return None

    async def heal_async(self) -> None:
        t = self.heal()
        if t is not None:
            await t

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    def cancel_tasks(self) -> None:
        for t in list(self.tasks):
            t.cancel()
