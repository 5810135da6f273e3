"""Namespace mode: every node in its own ``ip netns`` with veth links.

Needs root.  For link number k between A and B a veth pair ``e<k>`` is created
*inside* the two namespaces (nothing is added to the root namespace) with
addresses ``10.231.<k // 64>.<4 (k % 64) + 1 / + 2>/30``.  Each node runs
``ip netns exec <ns> python -m x0tta6bl4.mesh.node --bind 0.0.0.0:<port>``
with its topology neighbours as peers (their address on the shared link).

Faults use real kernel tools: ``kill`` = SIGKILL of the node process,
``pause``/``resume`` = SIGSTOP/SIGCONT, ``partition`` = ``ip link set down``
of the veth pair, ``loss`` = nftables ``numgen random mod 100 < PCT drop`` on
the node's input (and/or output: ``loss N PCT both``), ``latency`` = agent-level (tc netem is not available) via a
stdin command, ``heal`` = undo all and restart killed nodes.  Every namespace
created is deleted on :meth:`NetnsMesh.close` (also registered with atexit).

The node processes talk to the supervisor (this object, in the root namespace)
over their stdin/stdout JSON lines only; :mod:`x0tta6bl4.mesh.netns_host` uses
``on_record`` to bridge those lines to NATS, so no process inside a namespace
needs to reach the broker.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable

from .faults import parse_fault
from .topology import Topology

NFT_TABLE = "x6fault"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=20)


def netns_available() -> tuple[bool, str]:
    """(ok, reason): root, ``ip`` present and a namespace can actually be created."""
    if os.geteuid() != 0:
        return False, "not root"
    if shutil.which("ip") is None:
        return False, "iproute2 'ip' not found"
    name = f"x6probe{os.getpid()}"
    try:
        _run("ip", "netns", "add", name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
    except (subprocess.SubprocessError, OSError) as e:
        return False, f"ip netns failed: {getattr(e, 'stderr', '') or e}"
    finally:
        _run("ip", "netns", "del", name, check=False)
    return True, ""


class _Node:
    def __init__(self, name: str, ns: str, max_records: int) -> None:
        self.name = name
        self.ns = ns
        self.proc: subprocess.Popen | None = None
        self.lines: deque[dict] = deque(maxlen=max_records)
        self.lock = threading.Lock()
        self.reader: threading.Thread | None = None


class NetnsMesh:
    def __init__(
        self,
        topology: Topology,
        *,
        port: int = 7000,
        python: str = sys.executable,
        hello_interval: float = 0.2,
        miss_count: int = 3,
        telemetry_interval: float = 1.0,
        prefix: str | None = None,
        on_record: Callable[[str, dict], None] | None = None,
        log_data: bool = True,
        max_records: int = 50_000,
    ) -> None:
        """``on_record(node, record)`` is called (from a reader thread) for every JSON
        line a node prints; the last ``max_records`` lines per node are kept for
        :meth:`records`."""
        self.topology = topology
        self.port = port
        self.python = python
        self.hello_interval = hello_interval
        self.miss_count = miss_count
        self.telemetry_interval = telemetry_interval
        self.prefix = prefix or f"x6m{uuid.uuid4().hex[:6]}"
        self.on_record = on_record
        self.log_data = log_data
        self.nodes = {n: _Node(n, f"{self.prefix}-{n}", max_records) for n in topology.nodes}
        self.links: dict[frozenset[str], tuple[str, str, str, str, str]] = {}  # -> (ifname, a, ip_a, b, ip_b)
        self.created_ns: list[str] = []
        self.traffic: dict[str, str] = {}
        self._closed = False
        atexit.register(self.close)

    # ------------------------------------------------------------------ build
    def build(self) -> NetnsMesh:
        try:
            for node in self.nodes.values():
                _run("ip", "netns", "add", node.ns)
                self.created_ns.append(node.ns)
                _run("ip", "-n", node.ns, "link", "set", "lo", "up")
            for k, (a, b) in enumerate(self.topology.edge_list()):
                if k >= 64 * 256:
                    raise ValueError("too many links for 10.231.0.0/16")
                ifname = f"e{k}"
                base = f"10.231.{k // 64}."
                ip_a, ip_b = base + str((k % 64) * 4 + 1), base + str((k % 64) * 4 + 2)
                nsa, nsb = self.nodes[a].ns, self.nodes[b].ns
                _run("ip", "-n", nsa, "link", "add", ifname, "type", "veth", "peer", "name", ifname, "netns", nsb)
                _run("ip", "-n", nsa, "addr", "add", f"{ip_a}/30", "dev", ifname)
                _run("ip", "-n", nsb, "addr", "add", f"{ip_b}/30", "dev", ifname)
                _run("ip", "-n", nsa, "link", "set", ifname, "up")
                _run("ip", "-n", nsb, "link", "set", ifname, "up")
                self.links[frozenset((a, b))] = (ifname, a, ip_a, b, ip_b)
        except Exception:
            self.close()
            raise
        return self

    def peer_addr(self, node: str, peer: str) -> str:
        _ifname, _a, ip_a, b, ip_b = self.links[frozenset((node, peer))]
        return ip_b if peer == b else ip_a

    # ------------------------------------------------------------------ processes
    def start(self, traffic: dict[str, str] | None = None, rate: float = 20.0) -> NetnsMesh:
        """Start every node; ``traffic`` maps source -> destination of a DATA flow."""
        self.traffic = dict(traffic or {})
        self.rate = rate
        for n in self.nodes:
            self.start_node(n)
        return self

    def start_node(self, n: str) -> None:
        node = self.nodes[n]
        cmd = [
            "ip", "netns", "exec", node.ns, self.python, "-u", "-m", "x0tta6bl4.mesh.node",
            "--id", n, "--bind", f"0.0.0.0:{self.port}",
            "--hello-interval", str(self.hello_interval), "--miss-count", str(self.miss_count),
            "--telemetry-interval", str(self.telemetry_interval),
        ] + (["--log-data"] if self.log_data else [])  # fmt: skip
        for p in self.topology.neighbours(n):
            cmd += ["--peer", f"{p}={self.peer_addr(n, p)}:{self.port}"]
        if n in self.traffic:
            cmd += ["--traffic", self.traffic[n], "--rate", str(self.rate)]
        node.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
        )
        node.reader = threading.Thread(target=self._read, args=(node, node.proc), daemon=True)
        node.reader.start()

    def _read(self, node: _Node, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            rec["_rx"] = time.monotonic()
            with node.lock:
                node.lines.append(rec)
            if self.on_record is not None:
                with contextlib.suppress(Exception):  # a sink error must not stop the reader
                    self.on_record(node.name, rec)

    def records(self, n: str, type_: str | None = None, since: float = 0.0) -> list[dict]:
        node = self.nodes[n]
        with node.lock:
            return [r for r in node.lines if (type_ is None or r.get("type") == type_) and r["_rx"] >= since]

    def wait_for(self, n: str, pred: Callable[[dict], bool], timeout: float = 10.0, since: float = 0.0) -> dict | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for r in self.records(n, since=since):
                if pred(r):
                    return r
            time.sleep(0.02)
        return None

    def command(self, n: str, cmd: dict) -> None:
        proc = self.nodes[n].proc
        if proc is not None and proc.poll() is None and proc.stdin is not None:
            proc.stdin.write(json.dumps(cmd) + "\n")
            proc.stdin.flush()

    def alive(self, n: str) -> bool:
        p = self.nodes[n].proc
        return p is not None and p.poll() is None

    # ------------------------------------------------------------------ faults
    def apply(self, spec: str) -> None:
        f = parse_fault(spec)
        a = f.args
        if f.op == "kill":
            self.kill(a[0])
        elif f.op == "pause":
            self._signal(a[0], signal.SIGSTOP)
        elif f.op == "resume":
            self._signal(a[0], signal.SIGCONT)
        elif f.op == "partition":
            self.set_link(a[0], a[1], up=False)
        elif f.op == "unpartition":
            self.set_link(a[0], a[1], up=True)
        elif f.op == "loss":
            self.loss(a[0], float(a[1]), a[2] if len(a) > 2 else "in")
        elif f.op == "latency":
            self.command(a[0], {"kind": "fault", "params": {"type": "latency", "ms": float(a[1])}})
        elif f.op == "flap":
            period = float(a[2]) if len(a) > 2 else 0.5
            count = int(float(a[3])) if len(a) > 3 else 4
            threading.Thread(target=self._flap, args=(a[0], a[1], period, count), daemon=True).start()
        elif f.op == "heal":
            self.heal()

    def _signal(self, n: str, sig: int) -> None:
        proc = self.nodes[n].proc
        if proc is not None and proc.poll() is None:
            # the Popen child is `ip netns exec`, which execs python: same pid
            os.kill(proc.pid, sig)

    def pause(self, n: str) -> None:
        self._signal(n, signal.SIGSTOP)

    def resume(self, n: str) -> None:
        self._signal(n, signal.SIGCONT)

    def revive(self, n: str) -> bool:
        """Restart a killed node process (fresh protocol state); False if it was alive."""
        if self.alive(n):
            return False
        self.start_node(n)
        return True

    def heal_node(self, n: str) -> None:
        """Undo every fault on one node: nftables loss, SIGSTOP, agent impairments,
        its links, and restart it if it was killed."""
        node = self.nodes[n]
        _run("ip", "netns", "exec", node.ns, "nft", "delete", "table", "inet", NFT_TABLE, check=False)
        self._signal(n, signal.SIGCONT)
        self.command(n, {"kind": "heal"})
        for pair in self.links:
            if n in pair:
                a, b = tuple(pair)
                self.set_link(a, b, up=True)
        self.revive(n)

    def kill(self, n: str) -> None:
        proc = self.nodes[n].proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def set_link(self, a: str, b: str, *, up: bool) -> None:
        ifname, na, _, nb, _ = self.links[frozenset((a, b))]
        state = "up" if up else "down"
        _run("ip", "-n", self.nodes[na].ns, "link", "set", ifname, state)
        _run("ip", "-n", self.nodes[nb].ns, "link", "set", ifname, state)

    def _flap(self, a: str, b: str, period: float, count: int) -> None:
        for i in range(count):
            if self._closed:
                return
            self.set_link(a, b, up=(i % 2 == 1))
            time.sleep(period)
        if not self._closed:
            self.set_link(a, b, up=True)

    def loss(self, n: str, pct: float, direction: str = "in") -> None:
        """Random loss with nftables in the node's namespace: PCT % of the mesh datagrams it receives
        (``in``), sends (``out``, each neighbour's copy drawn apart) or both; ``pct=0`` removes it."""
        if direction not in ("in", "out", "both"):
            raise ValueError(f"loss direction must be in, out or both, got {direction!r}")
        ns = self.nodes[n].ns
        _run("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", NFT_TABLE, check=False)
        if pct <= 0:
            return
        if shutil.which("nft") is None:
            raise RuntimeError("nft not installed")
        _run("ip", "netns", "exec", ns, "nft", "add", "table", "inet", NFT_TABLE)
        hooks = {"in": ["input"], "out": ["output"], "both": ["input", "output"]}[direction]
        for hook in hooks:
            _run(
                "ip", "netns", "exec", ns, "nft", "add", "chain", "inet", NFT_TABLE, hook,
                f"{{ type filter hook {hook} priority 0 ; policy accept ; }}",
            )  # fmt: skip
            _run(
                "ip", "netns", "exec", ns, "nft", "add", "rule", "inet", NFT_TABLE, hook,
                "udp", "dport", str(self.port), "numgen", "random", "mod", "100", "<", str(int(pct)), "drop",
            )  # fmt: skip

    def heal(self) -> None:
        for n, node in self.nodes.items():
            _run("ip", "netns", "exec", node.ns, "nft", "delete", "table", "inet", NFT_TABLE, check=False)
            self._signal(n, signal.SIGCONT)
            self.command(n, {"kind": "heal"})
        for pair in self.links:
            a, b = tuple(pair)
            self.set_link(a, b, up=True)
        for n in self.nodes:
            if not self.alive(n):
                self.start_node(n)

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for node in self.nodes.values():
            p = node.proc
            if p is not None and p.poll() is None:
                with contextlib.suppress(OSError):
                    os.kill(p.pid, signal.SIGCONT)
                p.terminate()
        for node in self.nodes.values():
            p = node.proc
            if p is not None:
                try:
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=3)
        for ns in self.created_ns:
            _run("ip", "netns", "del", ns, check=False)
        self.created_ns.clear()
        atexit.unregister(self.close)

    def __enter__(self) -> NetnsMesh:
        return self.build()

    def __exit__(self, *exc) -> None:
        self.close()
