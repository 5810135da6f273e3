"""Kernel telemetry for the monitor service: which processes host which nodes,
a collector run on an interval, and the per-node ``NodeTelemetry.kernel`` map.

Node agents run inside mesh host processes (``python -m x0tta6bl4.mesh.host``),
many agents per process, so kernel signals are per *process* (and per host):
every node hosted by a process gets that process's signals, with
``proc.nodes`` saying how many nodes share them. Mesh hosts are found

* from configuration (``"PID=n0,n1;PID2=n5"``), and/or
* by discovery: local processes whose command line runs ``x0tta6bl4.mesh.host``
  with ``--nats`` pointing at the same broker as the monitor; their nodes are
  the ones of their ``--topology`` (a mesh host runs every node of it).

Security events (opens of watched sensitive paths, setuid/setgid/capset
family calls) of a monitored process or any of its descendants are attributed
to the nodes of that process; the count of the last ``security_hold_s``
seconds goes into ``kernel["security.<kind>"]``, which makes the node a
warning (see :mod:`x0tta6bl4.mapek.health`). Events of other processes are
counted host-wide (``host.security_events``) and not attributed to nodes.

No bus I/O here: the monitor service owns publishing.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import pathlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..bus import subjects
from .collectors import (
    Collector,
    CollectorInfo,
    KernelEvent,
    Snapshot,
    select_collector,
)

log = logging.getLogger("x0tta6bl4.monitoring.feed")

HOST_MODULE = "x0tta6bl4.mesh.host"
SECURITY_KINDS = ("sensitive_open", "privilege_change")
MAX_DROP_REASONS = 8   # per-reason drop keys put into each node's kernel map


# ------------------------------------------------------- host discovery ----
def parse_host_map(spec: str) -> dict[int, tuple[str, ...]]:
    """``"1234=n0,n1;5678=n2"`` -> {1234: ("n0", "n1"), 5678: ("n2",)}; ValueError on a bad entry."""
    out: dict[int, tuple[str, ...]] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(";"))):
        pid_s, sep, nodes_s = part.partition("=")
        nodes = tuple(n.strip() for n in nodes_s.split(",") if n.strip())
        if not sep or not pid_s.strip().isdigit() or not nodes:
            raise ValueError(f"bad monitored process entry {part!r} (expected PID=node,node)")
        out[int(pid_s)] = nodes
    return out


def _brokers(urls: str) -> set[tuple[str, int]]:
    out = set()
    for u in urls.split(","):
        u = u.strip()
        if "://" in u:
            u = u.split("://", 1)[1]
        u = u.rsplit("@", 1)[-1].rstrip("/")
        host, _, port = u.rpartition(":")
        if not host:
            host, port = port, "4222"
        host = {"localhost": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::1]": "127.0.0.1"}.get(host, host)
        try:
            out.add((host, int(port)))
        except ValueError:
            continue
    return out


def _cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _arg(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def mesh_host_nodes(pid: int, argv: list[str], brokers: set[tuple[str, int]]) -> tuple[str, ...] | None:
    """Nodes hosted by a mesh host process connected to one of ``brokers``, else None."""
    if not any(HOST_MODULE in a for a in argv):
        return None
    url = _arg(argv, "--nats")
    if not url or not (_brokers(url) & brokers):
        return None
    spec = _arg(argv, "--topology") or "grid:9"
    seed = int(_arg(argv, "--seed") or 0)
    from x0tta6bl4.mesh.topology import parse_spec  # lazy: the mesh package is big

    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        if ":" not in spec or pathlib.Path(cwd, spec).exists():
            spec = str(pathlib.Path(cwd, spec))
        return tuple(parse_spec(spec, seed=seed).nodes)
    except Exception as e:  # noqa: BLE001 - a host we cannot read is not monitored
        log.warning("mesh host pid %d: cannot read its topology %r: %s", pid, spec, e)
        return None


class HostDiscovery:
    """Local mesh host processes of this broker; command lines are read once per pid."""

    def __init__(self, nats_url: str) -> None:
        self.brokers = _brokers(nats_url)
        self._seen: dict[int, tuple[str, ...] | None] = {}

    def scan(self) -> dict[int, tuple[str, ...]]:
        try:
            pids = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        except OSError:
            return {}
        for pid in [p for p in self._seen if p not in pids]:
            del self._seen[pid]
        me = os.getpid()
        for pid in pids - self._seen.keys():
            argv = _cmdline(pid) if pid != me else None
            self._seen[pid] = mesh_host_nodes(pid, argv, self.brokers) if argv else None
        return {p: n for p, n in self._seen.items() if n}


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            b = f.read()
        return int(b[b.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


# ----------------------------------------------------------------- feed -----
@dataclass
class SecuritySignal:
    """A security event of a monitored process, attributed to its nodes."""

    event: KernelEvent
    root_pid: int
    nodes: tuple[str, ...]

    @property
    def kind(self) -> str:
        return self.event.kind

    def details(self) -> dict[str, str]:
        e = self.event
        d = {"pid": str(e.pid), "comm": e.comm, "uid": str(e.uid), "host_pid": str(self.root_pid),
             "nodes": ",".join(self.nodes), "kernel_to_monitor_ms": f"{e.delay_ms:.3f}"}
        if e.path is not None:
            d["path"] = e.path
        if e.watch_prefix:
            d["watch_prefix"] = e.watch_prefix
        if e.syscall:
            d["syscall"] = e.syscall
        if e.kind == "privilege_change":
            d["escalation"] = str(e.escalation).lower()
            d["target_ids"] = ",".join("-" if v is None else str(v) for v in e.target_ids)
        return d

    def reason(self) -> str:
        e = self.event
        what = e.path if e.kind == "sensitive_open" else e.syscall
        return f"security.{e.kind}: {what} by pid {e.pid} ({e.comm})"


@dataclass
class KernelFeed:
    """Runs a collector on an interval and keeps the latest kernel map per node.

    All collector calls run on one worker thread (never on the event loop).
    Security events arrive on the collector's poll thread and are handed to
    ``on_security`` on the event loop at once (not at the next interval).
    """

    nats_url: str
    prefer: str = "auto"              # auto | ebpf | proc | off
    interval_s: float = 1.0
    configured: dict[int, tuple[str, ...]] = field(default_factory=dict)
    discover: bool = True
    discover_every_s: float = 2.0
    security_hold_s: float = 30.0
    extra_watch_prefixes: tuple[str, ...] = ()
    on_security: Callable[[SecuritySignal], Any] | None = None
    on_snapshot: Callable[[Snapshot, dict[int, str]], Any] | None = None

    collector: Collector | None = None
    info: CollectorInfo | None = None
    state: str = "starting"            # starting | running | off | failed
    error: str = ""
    hosts: dict[int, tuple[str, ...]] = field(default_factory=dict)
    kernel: dict[str, dict[str, float]] = field(default_factory=dict)
    host_security_events: int = 0
    last_collect_ms: float = 0.0

    def __post_init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="x0-monitor-collector")
        self._discovery = HostDiscovery(self.nats_url)
        self._root_of: dict[int, int | None] = {}
        self._security: dict[str, dict[str, deque[float]]] = {}  # node -> kind -> monotonic times
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[KernelEvent] | None = None

    # ---- lifecycle ------------------------------------------------------
    async def start(self) -> None:
        """Select and load the collector (off the event loop); logs one line saying which."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=4096)
        if self.prefer == "off":
            self.state = "off"
            log.info("monitor collector=off (kernel telemetry disabled by configuration)")
            return
        self._refresh_hosts(force=True)

        def on_event(ev: KernelEvent) -> None:  # collector's poll thread
            if ev.is_security and self._loop is not None:
                self._loop.call_soon_threadsafe(self._enqueue, ev)

        def make() -> Collector:
            kw: dict[str, Any] = {}
            if self.prefer != "proc":
                kw = {"on_event": on_event, "extra_watch_prefixes": tuple(self.extra_watch_prefixes),
                      "poll_timeout_ms": 100}
            return select_collector(self.prefer, pids=sorted(self.hosts), **kw)

        try:
            self.collector = await self._loop.run_in_executor(self._pool, make)
        except Exception as e:  # noqa: BLE001 - reported by info, the monitor keeps working without
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            log.error("monitor collector=none: %s collector could not start: %s", self.prefer, self.error)
            return
        self.info = self.collector.info
        self.state = "running"

    def _enqueue(self, ev: KernelEvent) -> None:
        assert self._queue is not None
        with contextlib.suppress(asyncio.QueueFull):  # bounded; the collector's Prometheus counters count drops
            self._queue.put_nowait(ev)

    async def close(self) -> None:
        c, self.collector = self.collector, None
        if c is not None and self._loop is not None:
            await self._loop.run_in_executor(self._pool, c.close)
        self._pool.shutdown(wait=False)

    def as_dict(self) -> dict[str, Any]:
        i = self.info
        return {"collector": i.name if i else ("none" if self.state != "starting" else "starting"),
                "state": self.state, "error": self.error,
                "signals": list(i.signals) if i else [], "missing": list(i.missing) if i else [],
                "reason": i.reason if i else self.error, "details": dict(i.details) if i else {},
                "interval_s": self.interval_s,
                "hosts": {str(p): list(n) for p, n in sorted(self.hosts.items())},
                "security_hold_s": self.security_hold_s, "last_collect_ms": round(self.last_collect_ms, 3)}

    # ---- loops ----------------------------------------------------------
    async def run_collect(self) -> None:
        """Collect every interval_s; maps the snapshot onto nodes."""
        if self.collector is None:
            return
        loop = self._loop
        assert loop is not None, "start() first"
        last_disc = time.monotonic()
        while True:
            await asyncio.sleep(self.interval_s)
            if self.collector is None:
                return
            if time.monotonic() - last_disc >= self.discover_every_s:
                last_disc = time.monotonic()
                if self._refresh_hosts():
                    await loop.run_in_executor(self._pool, self.collector.set_pids, sorted(self.hosts))
            t0 = time.perf_counter()
            snap = await loop.run_in_executor(self._pool, self.collector.collect)
            self.last_collect_ms = (time.perf_counter() - t0) * 1e3
            node_of_pid = self.apply(snap)
            if self.on_snapshot is not None:
                self.on_snapshot(snap, node_of_pid)

    async def run_events(self) -> None:
        """Hand security events to on_security as they arrive."""
        assert self._queue is not None
        while True:
            ev = await self._queue.get()
            sig = self.attribute(ev)
            if sig is None:
                self.host_security_events += 1
                continue
            now = time.monotonic()
            for n in sig.nodes:
                self._security.setdefault(n, {}).setdefault(ev.kind, deque(maxlen=1024)).append(now)
                self.kernel.setdefault(n, {}).update(self._security_counts(n, now))
            if self.on_security is not None:
                r = self.on_security(sig)
                if asyncio.iscoroutine(r):
                    await r

    # ---- mapping --------------------------------------------------------
    def _refresh_hosts(self, force: bool = False) -> bool:
        hosts = dict(self._discovery.scan()) if self.discover else {}
        hosts.update(self.configured)
        hosts = {p: n for p, n in hosts.items() if os.path.exists(f"/proc/{p}")}
        if hosts == self.hosts and not force:
            return False
        if hosts != self.hosts:
            log.info("monitored mesh host processes: %s",
                     ", ".join(f"{p} ({len(n)} nodes)" for p, n in sorted(hosts.items())) or "none")
        gone = {n for p, ns in self.hosts.items() if p not in hosts for n in ns}
        self.hosts = hosts
        self._root_of.clear()
        for n in gone - {n for ns in hosts.values() for n in ns}:
            self.kernel.pop(n, None)
        return True

    def root_of(self, pid: int) -> int | None:
        """The monitored host process pid is or descends from (None: not monitored)."""
        if pid in self.hosts:
            return pid
        if pid in self._root_of:
            return self._root_of[pid]
        chain, cur, root = [], pid, None
        for _ in range(64):
            if cur in self.hosts:
                root = cur
                break
            if cur in self._root_of:
                root = self._root_of[cur]
                break
            chain.append(cur)
            nxt = _ppid(cur)
            if not nxt or nxt == cur:
                break
            cur = nxt
        for p in chain:
            self._root_of[p] = root
        if len(self._root_of) > 65536:
            self._root_of.clear()
        return root

    def attribute(self, ev: KernelEvent) -> SecuritySignal | None:
        root = self.root_of(ev.pid)
        if root is None:
            return None
        return SecuritySignal(ev, root, self.hosts[root])

    def _security_counts(self, node: str, now: float) -> dict[str, float]:
        out = {}
        for kind in SECURITY_KINDS:
            q = self._security.get(node, {}).get(kind)
            while q and now - q[0] > self.security_hold_s:
                q.popleft()
            out[f"security.{kind}"] = float(len(q)) if q else 0.0
        return out

    def apply(self, snap: Snapshot) -> dict[int, str]:
        """Snapshot -> self.kernel (node -> signals). Returns pid -> first node (for Prometheus labels)."""
        per_root: dict[int, dict[str, float]] = {}
        for pid, p in snap.processes.items():
            root = self.root_of(pid)
            if root is None:
                continue
            acc = per_root.setdefault(root, {})
            for key, v in (("ctx_switches", p.ctx_switches), ("involuntary_ctx_switches", p.involuntary_ctx_switches),
                           ("syscalls", p.syscalls), ("cpu_pct", p.cpu_percent), ("rss_bytes", p.rss_bytes),
                           ("sock_tx_bytes", p.sock_tx_bytes), ("sock_rx_bytes", p.sock_rx_bytes)):
                if v is not None:
                    acc[key] = acc.get(key, 0.0) + float(v)
            acc["processes"] = acc.get("processes", 0.0) + (1.0 if p.alive else 0.0)
        dt = max(snap.interval_s, 1e-6)
        host: dict[str, float] = {"host.interval_s": round(dt, 6),
                                  "host.security_events": float(self.host_security_events),
                                  "collector.ebpf": 1.0 if snap.collector == "ebpf" else 0.0}
        for k in ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes"):
            host[f"host.{k}"] = float(sum(getattr(i, k) for i in snap.interfaces.values()))
        host["host.iface_drops"] = float(sum((i.rx_dropped or 0) + (i.tx_dropped or 0)
                                             for i in snap.interfaces.values()))
        if snap.collector == "ebpf":
            host["host.drops"] = float(sum(snap.drops.values()))
            for reason, count in sorted(snap.drops.items(), key=lambda kv: -kv[1])[:MAX_DROP_REASONS]:
                host[f"host.drops.{reason}"] = float(count)
            host["host.tcp_transitions"] = float(sum(snap.tcp_states.values()))
            host["host.lost_events"] = float(snap.lost_events)
        host["host.udp_errors"] = float(sum(snap.udp.values()))
        now = time.monotonic()
        kernel: dict[str, dict[str, float]] = {}
        node_of_pid: dict[int, str] = {}
        for root, nodes in self.hosts.items():
            totals = per_root.get(root)
            proc: dict[str, float] = {"proc.pid": float(root), "proc.nodes": float(len(nodes))}
            if totals is not None:
                for k, v in totals.items():
                    proc[f"proc.{k}"] = v
                for k in ("ctx_switches", "syscalls"):
                    if k in totals:
                        proc[f"proc.{k}_per_s"] = totals[k] / dt
            if nodes:
                node_of_pid[root] = nodes[0] if len(nodes) == 1 else f"host:{root}"
            for n in nodes:
                kernel[n] = {**host, **proc, **self._security_counts(n, now)}
        for pid in snap.processes:
            r = self.root_of(pid)
            if r is not None and r in node_of_pid:
                node_of_pid[pid] = node_of_pid[r]
        self.kernel = kernel
        return node_of_pid

    def kernel_for(self, node: str) -> dict[str, float]:
        k = self.kernel.get(node)
        if not k:
            return {}
        k.update(self._security_counts(node, time.monotonic()))
        return k


# core NATS request/reply: the running monitor says which collector runs (meshctl monitor info)
INFO_SUBJECT = subjects.MONITOR_INFO
