"""Run a whole topology (or one shard of it) in one process on loopback (same agent code path).

Each node is a :class:`~.agent.MeshAgent` with its own UDP socket on
``127.0.0.1:<ephemeral port>``.  The runtime is the static "medium": it maps
node -> address and gives every agent only its topology neighbours as peers,
so agents drop datagrams from anybody else and the topology is real.

Sharding (several processes, see :mod:`.cluster`): ``nodes=`` hosts only a subset of
the topology here and ``addresses=`` (node -> (host, port), for every node) fixes
where each agent binds and where the neighbours hosted by other processes listen.
A remote neighbour is assumed running (its own process supervises it).

CLI::

    python -m x0tta6bl4.mesh.runtime --topology grid:9 --duration 5 \
        --traffic n0:n8 --rate 20 [--kill n4@2.0] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from .agent import MeshAgent, Sink
from .core import CoreConfig
from .faults import AgentFaults
from .packets import Packet
from .topology import Topology, parse_spec


class MeshRuntime:
    def __init__(
        self,
        topology: Topology,
        *,
        config: CoreConfig | None = None,
        host: str = "127.0.0.1",
        seed: int = 0,
        telemetry_sink: Sink | None = None,
        event_sink: Sink | None = None,
        on_deliver: Callable[[str, Packet], Any] | None = None,
        telemetry_interval: float = 1.0,
        nodes: Iterable[str] | None = None,
        addresses: dict[str, tuple[str, int]] | None = None,
        **agent_kwargs: Any,
    ) -> None:
        self.topology = topology
        self.config = config or CoreConfig()
        self.host = host
        self.addresses = {n: (a[0], int(a[1])) for n, a in (addresses or {}).items()}
        hosted = set(nodes) if nodes is not None else set(topology.nodes)
        unknown = hosted - set(topology.nodes)
        if unknown:
            raise ValueError(f"nodes not in the topology: {sorted(unknown)}")
        if hosted != set(topology.nodes):
            missing = [p for n in hosted for p in topology.neighbours(n) if p not in hosted and p not in self.addresses]
            if missing:
                raise ValueError(f"no address for remote neighbours {sorted(set(missing))}")
        self.agents: dict[str, MeshAgent] = {}
        for i, n in enumerate(topology.nodes):
            if n not in hosted:
                continue
            deliver = (lambda p, _n=n: on_deliver(_n, p)) if on_deliver else None
            self.agents[n] = MeshAgent(
                n,
                self.addresses.get(n, (host, 0)),
                config=self.config,
                seed=seed * 100003 + i,
                telemetry_sink=telemetry_sink,
                event_sink=event_sink,
                on_deliver=deliver,
                telemetry_interval=telemetry_interval,
                path_loss_db=functools.partial(topology.path_loss_db, n),
                **agent_kwargs,
            )
        self.faults = AgentFaults(self)
        self.started = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> MeshRuntime:
        for a in self.agents.values():
            await a.start()
        addr = dict(self.addresses)
        addr.update({n: a.address for n, a in self.agents.items()})
        for n, a in self.agents.items():
            a.set_peers({p: addr[p] for p in self.topology.neighbours(n)})
        self.started = True
        return self

    async def stop(self) -> None:
        for a in self.agents.values():
            await a.shutdown()
        self.faults.cancel_tasks()
        self.started = False

    async def __aenter__(self) -> MeshRuntime:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # ------------------------------------------------------------------ queries
    def alive(self) -> list[str]:
        return [n for n, a in self.agents.items() if a.running]

    def remote(self, n: str) -> bool:
        """True for a node of the topology hosted by another process."""
        return n not in self.agents

    def expected_neighbours(self, n: str) -> set[str]:
        a = self.agents[n]
        return {
            p
            for p in self.topology.neighbours(n)
            if p not in a.impair.blocked
            and (p not in self.agents or (self.agents[p].running and n not in self.agents[p].impair.blocked))
        }

    def converged(self) -> bool:
        return all(
            set(self.agents[n].core.neighbours.links) == self.expected_neighbours(n) for n in self.alive()
        )

    async def wait_converged(self, timeout: float = 10.0, poll: float = 0.01) -> float:
        t0 = time.monotonic()
        while not self.converged():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("mesh did not converge")
            await asyncio.sleep(poll)
        return time.monotonic() - t0

    def path(self, src: str, dst: str, limit: int = 128) -> list[str] | None:
        """Current forwarding path from the routing tables (None if broken)."""
        path, cur = [src], src
        while cur != dst:
            a = self.agents.get(cur)
            if a is None or not a.running:
                return None
            nh = a.core.router.next_hop(dst)
            if nh is None or nh in path or len(path) > limit:
                return None
            path.append(nh)
            cur = nh
        return path if dst in self.agents and self.agents[dst].running else None

    def telemetry(self) -> dict[str, dict]:
        return {n: a.telemetry() for n, a in self.agents.items() if a.running}

    # ------------------------------------------------------------------ actions
    def send(self, src: str, dst: str, payload: bytes = b"", *, ack: bool = True) -> Packet | None:
        return self.agents[src].send(dst, payload, ack=ack)

    def avoid(self, node: str, on: Iterable[str] | None = None) -> None:
        for n in on if on is not None else self.alive():
            self.agents[n].avoid(node)

    def unavoid(self, node: str) -> None:
        for n in self.alive():
            self.agents[n].unavoid(node)


# ---------------------------------------------------------------------- CLI
async def _main(args: argparse.Namespace) -> int:
    topo = parse_spec(args.topology, seed=args.seed)
    events: list[dict] = []

    def ev_sink(e: dict) -> None:
        events.append(e)
        if args.events:
            print(json.dumps({"type": "event", **e}), flush=True)

    cfg = CoreConfig(hello_interval=args.hello_interval, miss_count=args.miss_count)
    rt = MeshRuntime(topo, config=cfg, seed=args.seed, event_sink=ev_sink)
    await rt.start()
    conv = await rt.wait_converged(timeout=30)
    print(json.dumps({"type": "converged", "nodes": len(topo.nodes), "links": len(topo.links),
                      "seconds": round(conv, 3)}), flush=True)
    flows = [tuple(t.split(":")) for t in args.traffic]
    kills = [(k.split("@")[0], float(k.split("@")[1])) for k in args.kill]
    t0 = time.monotonic()
    period = 1.0 / args.rate if args.rate > 0 else None
    for spec in args.fault:
        rt.faults.apply(spec)
    while time.monotonic() - t0 < args.duration:
        for node, at in list(kills):
            if time.monotonic() - t0 >= at:
                rt.faults.kill(node)
                kills.remove((node, at))
                print(json.dumps({"type": "fault", "kill": node, "t": round(time.monotonic() - t0, 3)}), flush=True)
        for src, dst in flows:
            rt.send(src, dst, b"x" * args.size)
        await asyncio.sleep(period or 0.1)
    await asyncio.sleep(0.5)
    summary = {}
    for n, tel in rt.telemetry().items():
        c = tel["counters"]
        summary[n] = {
            "peers": tel["peer_count"],
            "routes": tel["route_count"],
            "sent": c.get("sent", 0),
            "delivered": c.get("delivered", 0),
            "forwarded": c.get("forwarded", 0),
            "acked": c.get("acked", 0),
            "p99_latency_ms": tel["p99_latency_ms"],
            "loss_pct": tel["loss_pct"],
        }
    out: dict[str, Any] = {"type": "summary", "nodes": summary, "events": len(events)}
    for src, dst in flows:
        out.setdefault("paths", {})[f"{src}->{dst}"] = rt.path(src, dst)
    print(json.dumps(out, indent=None if args.json else 1), flush=True)
    await rt.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m x0tta6bl4.mesh.runtime", description=__doc__.split("\n")[0])
    ap.add_argument("--topology", default="grid:9", help="grid:N, line:N, ring:N, rgg:N, ba:N or a YAML/TOML file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--traffic", action="append", default=[], help="SRC:DST (repeatable)")
    ap.add_argument("--rate", type=float, default=20.0, help="DATA packets/s per flow")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--kill", action="append", default=[], help="NODE@SECONDS (repeatable)")
    ap.add_argument("--fault", action="append", default=[], help="fault spec, e.g. 'loss n3 20' (repeatable)")
    ap.add_argument("--hello-interval", type=float, default=0.2)
    ap.add_argument("--miss-count", type=int, default=3)
    ap.add_argument("--events", action="store_true", help="print events as JSON lines")
    ap.add_argument("--json", action="store_true", help="compact JSON summary")
    args = ap.parse_args(argv)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
