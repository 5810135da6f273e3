"""Run one mesh node agent.

    python -m x0tta6bl4.mesh.node --id n0 --bind 127.0.0.1:7000 \
        --peer n1=127.0.0.1:7001 --peer n2=127.0.0.1:7002 \
        [--traffic n2 --rate 20] [--telemetry-interval 1] [--log-data]

Writes JSON lines to stdout: ``ready``, ``event``, ``telemetry`` and (with
``--log-data``) ``delivered``/``ack`` records.  Reads JSON command lines from
stdin (``{"kind": "avoid", "peer": "n3"}``, ``flush_routes``, ``unavoid``,
``shutdown``, ``send``, ``fault`` with params, ``heal``, ``telemetry``).
SIGTERM/SIGINT shut the node down cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from .agent import MeshAgent
from .core import CoreConfig
from .packets import Packet, valid_node_id


def _addr(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {s!r}")
    return host, int(port)


def _peer(s: str) -> tuple[str, tuple[str, int]]:
    nid, eq, addr = s.partition("=")
    if not eq or not valid_node_id(nid):
        raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT, got {s!r}")
    return nid, _addr(addr)


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    cfg = CoreConfig(hello_interval=args.hello_interval, miss_count=args.miss_count)

    def on_deliver(p: Packet) -> None:
        if args.log_data:
            _emit({"type": "delivered", "origin": p.origin, "id": p.packet_id, "ts": p.timestamp_ns,
                   "hops": p.hop_count})

    agent = MeshAgent(
        args.id,
        args.bind,
        dict(args.peer),
        config=cfg,
        seed=args.seed,
        telemetry_sink=(lambda t: _emit({"type": "telemetry", **t})) if args.telemetry_interval > 0 else None,
        event_sink=lambda e: _emit({"type": "event", **e}),
        on_deliver=on_deliver,
        telemetry_interval=args.telemetry_interval or 1.0,
    )
    await agent.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _emit({"type": "ready", "node_id": args.id, "addr": list(agent.address), "peers": sorted(agent.peers)})

    async def traffic() -> None:
        n_acked = 0
        while not stop.is_set():
            agent.send(args.traffic, b"x" * args.size, ack=True)
            if args.log_data:
                while len(agent.acks) > n_acked:
                    now, dest, pid, ts = agent.acks[n_acked]
                    _emit({"type": "ack", "dest": dest, "id": pid, "rtt_ms": round((now - ts) / 1e6, 3), "now": now})
                    n_acked += 1
                n_acked = min(n_acked, len(agent.acks))
            await asyncio.sleep(1.0 / args.rate)

    async def commands() -> None:
        reader = asyncio.StreamReader()
        try:
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        except (ValueError, OSError):
            return
        while not stop.is_set():
            line = await reader.readline()
            if not line:
                return  # stdin closed: keep running until signalled
            try:
                cmd = json.loads(line)
                if cmd.get("kind") == "telemetry":
                    _emit({"type": "telemetry", **agent.telemetry()})
                    continue
                res = await agent.command(cmd)
                _emit({"type": "result", "cmd": cmd.get("kind"), **res})
                if cmd.get("kind") == "shutdown":
                    stop.set()
            except Exception as e:  # noqa: BLE001 - bad command line: report, keep running
                _emit({"type": "result", "ok": False, "error": str(e)})

    tasks = [asyncio.create_task(commands())]
    if args.traffic:
        tasks.append(asyncio.create_task(traffic()))
    if args.duration > 0:
        loop.call_later(args.duration, stop.set)
    await stop.wait()
    for t in tasks:
        t.cancel()
    _emit({"type": "telemetry", "final": True, **agent.telemetry()})
    await agent.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m x0tta6bl4.mesh.node", description="Run one mesh node agent.")
    ap.add_argument("--id", required=True)
    ap.add_argument("--bind", type=_addr, required=True, help="HOST:PORT")
    ap.add_argument("--peer", type=_peer, action="append", default=[], help="ID=HOST:PORT (repeatable)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--hello-interval", type=float, default=0.2)
    ap.add_argument("--miss-count", type=int, default=3)
    ap.add_argument("--telemetry-interval", type=float, default=1.0, help="0 = no periodic telemetry")
    ap.add_argument("--traffic", default="", help="destination to send DATA to (with ACK)")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--duration", type=float, default=0.0, help="exit after N seconds (0 = run until signalled)")
    ap.add_argument("--log-data", action="store_true")
    args = ap.parse_args(argv)
    if not valid_node_id(args.id):
        ap.error(f"invalid node id {args.id!r}")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
