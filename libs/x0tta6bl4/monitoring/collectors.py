"""Node telemetry collectors: eBPF (tracepoints via bcc) and /proc + psutil.

Both implement :class:`Collector`. ``collect()`` returns a :class:`Snapshot`
whose counters are **deltas since the previous collect()** (for a pid seen for
the first time: since the collector attached/was told about it, or since the
process started if it is a newly discovered child). Use
:func:`select_collector` to get the best one available; it logs exactly one
line saying which collector is used and which signals are missing and why.

Signal names (``CollectorInfo.signals``/``missing``) are the keys of
:data:`SIGNAL_DESCRIPTIONS`.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from . import bpf_loader as _bl

log = logging.getLogger("x0tta6bl4.monitoring")

EbpfUnavailable = _bl.EbpfUnavailable

SIGNAL_DESCRIPTIONS: dict[str, str] = {
    "ctx_switches": "context switches per pid",
    "cpu": "CPU time / percent per pid",
    "memory": "RSS and memory percent per pid",
    "syscalls": "syscall count per pid",
    "child_tracking": "child processes of monitored pids are monitored too",
    "iface_packets": "packets per interface",
    "iface_bytes": "bytes per interface",
    "iface_drops": "per-interface drop counters (/proc/net/dev)",
    "drop_reasons": "kernel packet drops by skb drop reason",
    "tcp_states": "TCP state transitions",
    "udp_errors": "UDP receive/send errors",
    "sock_bytes": "socket bytes sent/received per pid",
    "sensitive_open": "opens of watched sensitive paths (event)",
    "privilege_change": "setuid/setgid/capset family calls (event)",
}
ALL_SIGNALS: tuple[str, ...] = tuple(SIGNAL_DESCRIPTIONS)

DEFAULT_WATCH_PREFIXES: tuple[str, ...] = (
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/root/.ssh/",
    "/etc/ssh/ssh_host_",
    "/etc/x0tta6bl4/keys/",
    "/var/lib/x0tta6bl4/keys/",
)

# drop reasons worth an immediate event (counts cover every reason anyway);
# leaves out the constant background of NO_SOCKET, NOT_SPECIFIED, TCP churn
DEFAULT_DROP_EVENT_REASONS: tuple[str, ...] = (
    "NETFILTER_DROP", "SOCKET_RCVBUFF", "SOCKET_BACKLOG", "PROTO_MEM", "CPU_BACKLOG", "QDISC_DROP",
    "QDISC_OVERLIMIT", "QDISC_CONGESTED", "FULL_RING", "NOMEM", "IP_OUTNOROUTES", "IP_INNOROUTES",
    "NEIGH_CREATEFAIL", "NEIGH_FAILED", "NEIGH_QUEUEFULL", "XDP", "TC_INGRESS", "TC_EGRESS",
    "BPF_CGROUP_EGRESS", "IP_RPFILTER", "XFRM_POLICY", "UDP_CSUM", "TCP_CSUM", "IP_CSUM", "SKB_CSUM",
)

PRIV_SYSCALLS = {1: "setuid", 2: "setgid", 3: "setreuid", 4: "setregid", 5: "setresuid",
                 6: "setresgid", 7: "setfsuid", 8: "setfsgid", 9: "capset"}
_UNCHANGED = 0xFFFFFFFF
_SNMP_UDP_KEYS = ("InErrors", "NoPorts", "RcvbufErrors", "SndbufErrors", "InCsumErrors")


# ------------------------------------------------------------------- model --
@dataclass(frozen=True)
class CollectorInfo:
    """What a collector can see (for ``meshctl monitor info``)."""

    name: str
    signals: tuple[str, ...]
    missing: tuple[str, ...]
    reason: str = ""
    details: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        s = f"monitor collector={self.name}"
        if self.missing:
            s += f"; missing signals: {', '.join(self.missing)} ({self.reason or 'unknown reason'})"
        else:
            s += "; all signals available"
        return s


@dataclass(frozen=True)
class ProcessStats:
    pid: int
    comm: str
    ctx_switches: int | None = None
    involuntary_ctx_switches: int | None = None
    cpu_ns: int | None = None
    cpu_percent: float | None = None  # percent of ONE core over the interval
    rss_bytes: int | None = None
    memory_percent: float | None = None
    syscalls: int | None = None
    sock_tx_bytes: int | None = None
    sock_rx_bytes: int | None = None
    alive: bool = True


@dataclass(frozen=True)
class InterfaceStats:
    name: str
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_dropped: int | None = None
    tx_dropped: int | None = None
    tx_errors: int | None = None


@dataclass(frozen=True)
class KernelEvent:
    """A ring-buffer event: sensitive_open, privilege_change or packet_drop."""

    kind: str
    pid: int
    tid: int
    uid: int
    gid: int
    comm: str
    ts_ns: int  # CLOCK_MONOTONIC, when the kernel saw it
    received_ns: int  # CLOCK_MONOTONIC, when this process decoded it
    path: str | None = None
    watch_prefix: str | None = None
    syscall: str | None = None
    target_ids: tuple[int | None, ...] = ()
    escalation: bool = False
    drop_reason: str | None = None
    protocol: int | None = None

    @property
    def delay_ms(self) -> float:
        return (self.received_ns - self.ts_ns) / 1e6

    @property
    def is_security(self) -> bool:
        return self.kind in ("sensitive_open", "privilege_change")


@dataclass(frozen=True)
class Snapshot:
    collector: str
    ts: float  # wall clock (time.time())
    interval_s: float
    processes: dict[int, ProcessStats]
    interfaces: dict[str, InterfaceStats]
    drops: dict[str, int] = field(default_factory=dict)  # reason -> packets
    udp: dict[str, int] = field(default_factory=dict)
    tcp_states: dict[str, int] = field(default_factory=dict)  # "OLD->NEW" -> count
    events: tuple[KernelEvent, ...] = ()
    lost_events: int = 0


@runtime_checkable
class Collector(Protocol):
    @property
    def info(self) -> CollectorInfo: ...

    def set_pids(self, pids: Iterable[int] | None) -> None:
        """Restrict per-process stats to these pids (None: every process)."""

    def collect(self) -> Snapshot: ...

    def close(self) -> None: ...


# -------------------------------------------------------------- /proc bits --
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def read_net_dev(path: str = "/proc/net/dev") -> dict[str, tuple[int, ...]]:
    """name -> (rx_bytes, rx_packets, rx_errs, rx_drop, tx_bytes, tx_packets, tx_errs, tx_drop)."""
    out: dict[str, tuple[int, ...]] = {}
    text = _read(path) or ""
    for line in text.splitlines()[2:]:
        if ":" not in line:
            continue
        name, rest = line.split(":", 1)
        v = [int(x) for x in rest.split()]
        if len(v) >= 12:
            out[name.strip()] = (v[0], v[1], v[2], v[3], v[8], v[9], v[10], v[11])
    return out


def read_snmp_udp(path: str = "/proc/net/snmp") -> dict[str, int]:
    text = _read(path) or ""
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("Udp:")]
    if len(lines) < 2:
        return {}
    hdr, val = lines[0][1:], lines[1][1:]
    d = dict(zip(hdr, (int(x) for x in val), strict=False))
    return {k: d[k] for k in _SNMP_UDP_KEYS if k in d}


_PAGE = os.sysconf("SC_PAGE_SIZE")
_MEM_TOTAL = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _rss(pid: int) -> int | None:
    # raw os.open/read: ~3x cheaper than open() for 50 pids every interval
    try:
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
    except OSError:
        return None
    try:
        return int(os.read(fd, 128).split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None
    finally:
        os.close(fd)


def _comm(pid: int) -> str:
    return (_read(f"/proc/{pid}/comm") or "").strip()


def _children(pid: int) -> list[int]:
    """Direct children of every thread of pid (CONFIG_PROC_CHILDREN)."""
    out: list[int] = []
    for tid in _listdir(f"/proc/{pid}/task"):
        b = _read_bytes(f"/proc/{pid}/task/{tid}/children")
        if b:
            out.extend(int(x) for x in b.split())
    return out


def _delta(cur: int, prev: int | None) -> int:
    if prev is None:
        return cur
    return cur - prev if cur >= prev else cur  # counter reset -> treat as new


def _iface_snapshot(prev_dev: dict[str, tuple[int, ...]], cur_dev: dict[str, tuple[int, ...]],
                    ebpf: dict[str, tuple[int, ...]] | None = None) -> dict[str, InterfaceStats]:
    out: dict[str, InterfaceStats] = {}
    for name, c in cur_dev.items():
        p = prev_dev.get(name)

        def d(i: int, c: tuple[int, ...] = c, p: tuple[int, ...] | None = p) -> int:
            return _delta(c[i], p[i] if p else None)

        if ebpf is not None:
            e = ebpf.get(name, (0, 0, 0, 0, 0))
            out[name] = InterfaceStats(name, rx_packets=e[0], rx_bytes=e[1], tx_packets=e[2], tx_bytes=e[3],
                                       rx_dropped=d(3), tx_dropped=d(7), tx_errors=e[4])
        else:
            out[name] = InterfaceStats(name, rx_packets=d(1), rx_bytes=d(0), tx_packets=d(5), tx_bytes=d(4),
                                       rx_dropped=d(3), tx_dropped=d(7), tx_errors=d(6))
    if ebpf is not None:  # interfaces of other netns seen by the tracepoints
        for name, e in ebpf.items():
            if name not in out:
                out[name] = InterfaceStats(name, rx_packets=e[0], rx_bytes=e[1], tx_packets=e[2], tx_bytes=e[3],
                                           tx_errors=e[4])
    return out


def _udp_delta(prev: dict[str, int], cur: dict[str, int]) -> dict[str, int]:
    return {k: _delta(v, prev.get(k)) for k, v in cur.items()}


# -------------------------------------------------------- ProcCollector -----
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read_bytes(path: str, size: int = 4096) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _proc_stat(pid: int) -> tuple[str, float, int, int] | None:
    """(comm, utime+stime seconds of all threads, rss bytes, num_threads)."""
    b = _read_bytes(f"/proc/{pid}/stat", 1024)
    if not b:
        return None
    try:
        lp, rp = b.index(b"("), b.rindex(b")")
        f = b[rp + 2:].split()
        return (b[lp + 1:rp].decode(errors="replace"), (int(f[11]) + int(f[12])) / _CLK_TCK,
                int(f[21]) * _PAGE, int(f[17]))
    except (ValueError, IndexError):
        return None


def _ctx_switches(pid: int, threads: int) -> tuple[int, int] | None:
    """(voluntary, involuntary) summed over the process's threads."""
    paths = ([f"/proc/{pid}/status"] if threads <= 1 else
             [f"/proc/{pid}/task/{t}/status" for t in _listdir(f"/proc/{pid}/task")])
    vol = inv = 0
    seen = False
    for path in paths:
        b = _read_bytes(path, 8192)
        if not b:
            continue
        i = b.find(b"voluntary_ctxt_switches:")
        j = b.find(b"nonvoluntary_ctxt_switches:")
        if i < 0 or j < 0:
            continue
        vol += int(b[i + 24:b.index(b"\n", i)])
        inv += int(b[j + 27:b.index(b"\n", j)])
        seen = True
    return (vol, inv) if seen else None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


class ProcCollector:
    """Fallback collector: /proc (per-pid stat/status, net/dev, net/snmp) and
    psutil (process enumeration when no pids are given).

    Missing compared with eBPF: syscall counts, drop reasons, TCP state
    transitions, socket bytes per pid and the security events.
    Context switches are summed over all threads of a process.
    """

    SIGNALS = ("ctx_switches", "cpu", "memory", "child_tracking", "iface_packets", "iface_bytes",
               "iface_drops", "udp_errors")

    def __init__(self, pids: Iterable[int] | None = None, *, track_children: bool = True,
                 reason: str = "") -> None:
        import psutil

        self._psutil = psutil
        self._track_children = track_children
        self._prev: dict[int, tuple[float, int, int]] = {}  # pid -> (cpu_s, vol, invol)
        self._roots: set[int] | None = None
        self._last = time.monotonic()
        self._prev_dev = read_net_dev()
        self._prev_udp = read_snmp_udp()
        missing = tuple(s for s in ALL_SIGNALS if s not in self.SIGNALS)
        self._info = CollectorInfo("proc", self.SIGNALS, missing,
                                   reason or "fallback collector has no kernel tracepoints",
                                   {"source": "/proc + psutil"})
        self.set_pids(pids)

    @property
    def info(self) -> CollectorInfo:
        return self._info

    def set_pids(self, pids: Iterable[int] | None) -> None:
        self._roots = None if pids is None else {int(p) for p in pids}
        if self._roots is not None:
            for pid in [p for p in self._prev if p not in self._roots]:
                del self._prev[pid]
        for pid in self._roots or ():
            if pid not in self._prev:
                cur = self._sample(pid)
                if cur is not None:
                    self._prev[pid] = cur[1]

    @staticmethod
    def _sample(pid: int) -> tuple[tuple[str, int], tuple[float, int, int]] | None:
        st = _proc_stat(pid)
        if st is None:
            return None
        ctx = _ctx_switches(pid, st[3])
        if ctx is None:
            return None
        return (st[0], st[2]), (st[1], ctx[0], ctx[1])

    def _targets(self) -> set[int]:
        if self._roots is None:
            return set(self._psutil.pids())
        targets = set(self._roots)
        if self._track_children:
            stack = list(targets)
            while stack:
                for c in _children(stack.pop()):
                    if c not in targets:
                        targets.add(c)
                        stack.append(c)
        return targets

    def collect(self) -> Snapshot:
        now = time.monotonic()
        interval = max(now - self._last, 1e-9)
        self._last = now
        procs: dict[int, ProcessStats] = {}
        targets = self._targets()
        for pid in [p for p in self._prev if p not in targets]:
            del self._prev[pid]
        for pid in targets:
            cur = self._sample(pid)
            if cur is None:
                self._prev.pop(pid, None)
                if self._roots is not None and pid in self._roots:
                    procs[pid] = ProcessStats(pid, "", alive=False)
                continue
            (name, rss), (cpu_s, vol, inv) = cur
            prev = self._prev.get(pid) or (0.0, 0, 0)  # newly discovered: totals since start
            self._prev[pid] = (cpu_s, vol, inv)
            dcpu = max(cpu_s - prev[0], 0.0)
            dvol, dinv = _delta(vol, prev[1]), _delta(inv, prev[2])
            procs[pid] = ProcessStats(
                pid, name, ctx_switches=dvol + dinv, involuntary_ctx_switches=dinv,
                cpu_ns=int(dcpu * 1e9), cpu_percent=100.0 * dcpu / interval,
                rss_bytes=rss, memory_percent=100.0 * rss / _MEM_TOTAL)
        dev = read_net_dev()
        udp = read_snmp_udp()
        ifs = _iface_snapshot(self._prev_dev, dev)
        udp_d = _udp_delta(self._prev_udp, udp)
        self._prev_dev, self._prev_udp = dev, udp
        return Snapshot("proc", time.time(), interval, procs, ifs, udp=udp_d)

    def close(self) -> None:
        self._prev.clear()

    def __enter__(self) -> ProcCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------- EbpfCollector ----
class EbpfCollector:
    """Tracepoint-based collector (bcc), see ebpf/monitor.bpf.c.

    * ``pids``: per-process stats only for these tgids (plus their children
      when ``track_children``); None = every process. ``cgroups``: cgroup v2
      directories whose tasks are tracked as well.
    * Security events (sensitive opens, privilege changes) are global: they
      are reported for every process, filtered or not. Packet-drop events are
      rate limited in the kernel (``drop_events_per_sec`` per CPU); drop
      *counts* by reason are always complete.
    * Memory is bounded: BPF maps have fixed sizes (LRU for per-pid stats),
      the event queue is a deque of ``max_events``; dead pids are evicted
      from the maps on collect().
    * ``close()`` detaches everything; if the process dies instead, the
      kernel drops the perf-event fds and the programs with them.
    * RSS and /proc/net/dev drop counters come from /proc (no tracepoint).
    """

    def __init__(self, pids: Iterable[int] | None = None, *, cgroups: Iterable[str] = (),
                 track_children: bool = True, watch_prefixes: Sequence[str] | None = None,
                 extra_watch_prefixes: Sequence[str] = (), drop_events: bool = True,
                 drop_event_reasons: Iterable[str] | None = DEFAULT_DROP_EVENT_REASONS,
                 drop_events_per_sec: int = 200, max_events: int = 4096, poll_timeout_ms: int = 500,
                 on_event: Callable[[KernelEvent], None] | None = None,
                 max_pids: int = 10240) -> None:
        prefixes = list(DEFAULT_WATCH_PREFIXES if watch_prefixes is None else watch_prefixes)
        prefixes += [p for p in extra_watch_prefixes if p not in prefixes]
        self._prefixes = _validate_prefixes(prefixes)
        self._prog = _bl.load(extra_defines={"X0_DROP_EVENTS_PER_SEC": int(drop_events_per_sec),
                                             "X0_MAX_PIDS": int(max_pids)})
        self._b = self._prog.bpf
        self._lock = threading.Lock()
        self._events: collections.deque[KernelEvent] = collections.deque(maxlen=max_events)
        self._overflow = 0
        self._on_event = on_event
        self._poll_timeout_ms = poll_timeout_ms
        self._prev_pstat: dict[int, tuple[int, ...]] = {}
        self._prev_if: dict[str, tuple[int, ...]] = {}
        self._prev_drop: dict[tuple[int, int], int] = {}
        self._prev_tcp: dict[tuple[int, int, int], int] = {}
        self._prev_udp_fail = 0
        self._prev_lost = 0
        self._comm: dict[int, str] = {}
        self._pids: set[int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        try:
            fmt = self._prog.formats
            self._drop_names = fmt.get("skb/kfree_skb", _bl.TracepointFormat()).symbols.get("reason", {})
            st = fmt.get("sock/inet_sock_set_state", _bl.TracepointFormat()).symbols
            self._tcp_names = st.get("newstate", {}) or st.get("oldstate", {})
            self._proto_names = st.get("protocol", {})
            self._cfg(1, 1 if track_children else 0)
            self.set_drop_events(drop_events, drop_event_reasons)
            self._load_watch()
            self._set_cgroups(cgroups)
            self.set_pids(pids)
            # baseline: global counters start at zero from now on
            self._read_ifstats()
            self._read_drops()
            self._read_tcp()
            self._prev_dev = read_net_dev()
            self._prev_udp = read_snmp_udp()
            self._last = time.monotonic()
            self._t("events").open_ring_buffer(self._on_ring)
            self._thread = threading.Thread(target=self._poll_loop, name="x0-ebpf-events", daemon=True)
            self._thread.start()
        except BaseException:
            self._prog.close()
            raise
        signals = set(self._prog.signals()) | {"memory", "iface_drops", "udp_errors"}
        missing = tuple(s for s in ALL_SIGNALS if s not in signals)
        reason = ""
        if missing:
            failed = self._prog.failed_families
            reason = ("unsupported kernel: " + "; ".join(f"{k}: {v}" for k, v in failed.items())
                      if failed else "unsupported kernel: tracepoints missing")
        self._info = CollectorInfo(
            "ebpf", tuple(s for s in ALL_SIGNALS if s in signals), missing, reason,
            {"kernel_source": self._prog.kernel_source, "tracefs": str(self._prog.tracefs),
             "groups": ",".join(sorted(self._prog.groups)),
             "watch_prefixes": ",".join(self._prefixes)})

    # -- configuration -------------------------------------------------------
    @property
    def info(self) -> CollectorInfo:
        return self._info

    @property
    def watch_prefixes(self) -> tuple[str, ...]:
        return tuple(self._prefixes)

    def _t(self, name: str) -> Any:
        return self._b[name.encode()]

    def _cfg(self, idx: int, value: int) -> None:
        t = self._t("config")
        t[ctypes.c_int(idx)] = ctypes.c_uint32(value)

    def set_drop_events(self, enabled: bool = True,
                        reasons: Iterable[str] | None = DEFAULT_DROP_EVENT_REASONS) -> None:
        """packet_drop events: off, for every reason (None) or for these reasons.

        Reason names not known to the running kernel are ignored."""
        if not enabled:
            self._cfg(2, 0)
            return
        if reasons is None:
            self._cfg(2, 1)
            return
        by_name = {n: v for v, n in self._drop_names.items()}
        mask = self._t("drop_ev_mask")
        wanted = {by_name[r] for r in reasons if r in by_name}
        for v in set(self._drop_names) | wanted:
            if 0 <= v < 1024:
                mask[ctypes.c_int(v)] = ctypes.c_uint8(1 if v in wanted else 0)
        self._cfg(2, 2)

    def set_watch_prefixes(self, prefixes: Sequence[str]) -> None:
        """Replace the watched path prefixes (<= 16, absolute, <= 64 bytes)."""
        new = _validate_prefixes(prefixes)
        with self._lock:
            self._prefixes = new
            self._load_watch()

    def _load_watch(self) -> None:
        ws, lens, cnt = self._t("watch_set"), self._t("watch_lens"), self._t("watch_count")
        cnt[ctypes.c_int(0)] = ctypes.c_uint32(0)  # matching off while the set changes
        ws.clear()
        distinct: list[int] = []
        for i, p in enumerate(self._prefixes):
            raw = p.encode()
            k = ws.Key()
            ctypes.memmove(ctypes.addressof(k), raw, len(raw))
            ws[k] = ctypes.c_uint32(i)
            if len(raw) not in distinct:
                distinct.append(len(raw))
        for i, n in enumerate(distinct):
            lens[ctypes.c_int(i)] = ctypes.c_uint32(n)
        cnt[ctypes.c_int(0)] = ctypes.c_uint32(len(distinct))

    def _set_cgroups(self, cgroups: Iterable[str]) -> None:
        t = self._t("filter_cgroups")
        t.clear()
        n = 0
        for path in cgroups:
            t[ctypes.c_uint64(os.stat(path).st_ino)] = ctypes.c_uint8(1)
            n += 1
        self._cgroup_mode = 2 if n else 0

    def set_pids(self, pids: Iterable[int] | None) -> None:
        t = self._t("filter_pids")
        with self._lock:
            t.clear()
            self._pids = None if pids is None else {int(p) for p in pids}
            for p in self._pids or ():
                t[ctypes.c_uint32(p)] = ctypes.c_uint8(1)
            mode = (1 if self._pids is not None else 0) | self._cgroup_mode
            self._cfg(0, mode)

    def tracked_pids(self) -> set[int] | None:
        """Pids in the kernel filter (roots + children followed); None = all."""
        if self._pids is None:
            return None
        return {k.value for k in self._t("filter_pids").keys()}  # noqa: SIM118 - a BCC table: iterate as bcc documents it

    # -- events --------------------------------------------------------------
    def _on_ring(self, _ctx: Any, data: Any, _size: int) -> None:
        recv = time.monotonic_ns()
        e = ctypes.cast(data, ctypes.POINTER(_bl.RawEvent)).contents
        ev = self._decode(e, recv)
        if len(self._events) == self._events.maxlen:
            self._overflow += 1
        self._events.append(ev)
        if self._on_event is not None:
            try:
                self._on_event(ev)
            except Exception:  # never kill the poll thread
                log.exception("monitor on_event callback failed")

    def _decode(self, e: Any, recv: int) -> KernelEvent:
        comm = e.comm.decode(errors="replace")
        base = dict(pid=e.pid, tid=e.tid, uid=e.uid, gid=e.gid, comm=comm, ts_ns=e.ts_ns, received_ns=recv)
        if e.kind == _bl.EV_SENSITIVE_OPEN:
            idx = e.watch_idx
            prefix = self._prefixes[idx] if 0 <= idx < len(self._prefixes) else None
            return KernelEvent("sensitive_open", path=e.path.decode(errors="replace"), watch_prefix=prefix,
                               syscall="open", **base)
        if e.kind == _bl.EV_PRIV_CHANGE:
            name = PRIV_SYSCALLS.get(e.watch_idx, f"priv_{e.watch_idx}")
            ids = tuple(None if v == _UNCHANGED else int(v) for v in (e.arg0, e.arg1, e.arg2))
            if name == "capset":
                ids = ()
                esc = e.uid != 0
            else:
                caller = e.gid if "gid" in name else e.uid
                esc = caller != 0 and any(v == 0 for v in ids)
            return KernelEvent("privilege_change", syscall=name, target_ids=ids, escalation=esc, **base)
        reason = self._drop_names.get(int(e.arg0), f"reason_{int(e.arg0)}")
        return KernelEvent("packet_drop", drop_reason=reason, protocol=int(e.arg1), **base)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._b.ring_buffer_poll(self._poll_timeout_ms)
            except Exception:
                if not self._stop.is_set():
                    log.exception("ring buffer poll failed")
                    time.sleep(0.1)

    def drain_events(self) -> list[KernelEvent]:
        out: list[KernelEvent] = []
        while True:
            try:
                out.append(self._events.popleft())
            except IndexError:
                return out

    def wait_for_event(self, pred: Callable[[KernelEvent], bool], timeout: float = 2.0) -> KernelEvent | None:
        """Block until a queued event matches pred (it is removed from the queue)."""
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                for ev in list(self._events):
                    if pred(ev):
                        with contextlib.suppress(ValueError):
                            self._events.remove(ev)
                        return ev
            if time.monotonic() >= end:
                return None
            time.sleep(0.002)

    # -- maps ----------------------------------------------------------------
    def _read_pstats(self) -> dict[int, tuple[int, ...]]:
        out: dict[int, tuple[int, ...]] = {}
        for k, vals in self._t("pstats").items():
            acc = [0] * 6
            newest, comm = -1, b""
            for v in vals:
                if v.comm and v.comm_ts > newest:
                    newest, comm = v.comm_ts, v.comm
                acc[0] += v.ctx_switches
                acc[1] += v.involuntary
                acc[2] += v.cpu_ns
                acc[3] += v.syscalls
                acc[4] += v.sock_tx_bytes
                acc[5] += v.sock_rx_bytes
            out[k.value] = tuple(acc)
            if comm:
                self._comm[k.value] = comm.decode(errors="replace")
        return out

    def _read_ifstats(self) -> dict[str, tuple[int, ...]]:
        cur: dict[str, tuple[int, ...]] = {}
        for k, vals in self._t("ifstats").items():
            acc = [0] * 5
            for v in vals:
                acc[0] += v.rx_packets
                acc[1] += v.rx_bytes
                acc[2] += v.tx_packets
                acc[3] += v.tx_bytes
                acc[4] += v.tx_errors
            cur[k.name.decode(errors="replace")] = tuple(acc)
        out = {n: tuple(_delta(c, p) for c, p in zip(v, self._prev_if.get(n, (None,) * 5), strict=True))
               for n, v in cur.items()}
        self._prev_if = cur
        return out

    def _read_drops(self) -> dict[str, int]:
        if "X0_HAVE_KFREE_SKB" not in self._prog.groups:
            return {}
        cur = {(k.reason, k.protocol): sum(vals) for k, vals in self._t("drop_stats").items()}
        out: dict[str, int] = {}
        for key, v in cur.items():
            d = _delta(v, self._prev_drop.get(key))
            if d:
                name = self._drop_names.get(key[0], f"reason_{key[0]}")
                out[name] = out.get(name, 0) + d
        self._prev_drop = cur
        return out

    def _read_tcp(self) -> dict[str, int]:
        cur = {(k.protocol, k.oldstate, k.newstate): v.value for k, v in self._t("tcp_states").items()}
        out: dict[str, int] = {}
        for (proto, old, new), v in cur.items():
            d = _delta(v, self._prev_tcp.get((proto, old, new)))
            if d:
                pn = self._proto_names.get(proto, str(proto)).removeprefix("IPPROTO_")
                on = self._tcp_names.get(old, str(old)).removeprefix("TCP_")
                nn = self._tcp_names.get(new, str(new)).removeprefix("TCP_")
                key = f"{on}->{nn}" if pn == "TCP" else f"{pn}:{on}->{nn}"
                out[key] = out.get(key, 0) + d
        self._prev_tcp = cur
        return out

    def collect(self) -> Snapshot:
        if self._closed:
            raise RuntimeError("collector is closed")
        now = time.monotonic()
        interval = max(now - self._last, 1e-9)
        self._last = now
        with self._lock:
            tracked = self.tracked_pids()
            stats = self._read_pstats()
            procs: dict[int, ProcessStats] = {}
            wanted = set(stats) if tracked is None else tracked | set(stats)
            dead_keys = []
            for pid in wanted:
                if tracked is not None and pid not in tracked:
                    continue
                cur = stats.get(pid, (0, 0, 0, 0, 0, 0))
                prev = self._prev_pstat.get(pid)
                d = [_delta(c, p) for c, p in zip(cur, prev or (None,) * 6, strict=True)]
                rss = _rss(pid)
                alive = rss is not None or os.path.exists(f"/proc/{pid}")
                if not alive:
                    dead_keys.append(pid)
                if pid not in self._comm and alive:  # tracked but not seen by the probes yet
                    self._comm[pid] = _comm(pid)
                procs[pid] = ProcessStats(
                    pid, self._comm.get(pid, ""), ctx_switches=d[0], involuntary_ctx_switches=d[1],
                    cpu_ns=d[2], cpu_percent=100.0 * d[2] / 1e9 / interval,
                    rss_bytes=rss, memory_percent=None if rss is None else 100.0 * rss / _MEM_TOTAL,
                    syscalls=d[3], sock_tx_bytes=d[4], sock_rx_bytes=d[5], alive=alive)
                self._prev_pstat[pid] = cur
            # bounded memory: evict dead pids everywhere, forget untracked ones
            ps, fp = self._t("pstats"), self._t("filter_pids")
            for pid in dead_keys:
                with contextlib.suppress(KeyError):
                    del ps[ps.Key(pid)]
                if tracked is not None and (self._pids is None or pid not in self._pids):
                    with contextlib.suppress(KeyError):
                        del fp[fp.Key(pid)]
                self._prev_pstat.pop(pid, None)
                self._comm.pop(pid, None)
            for pid in list(self._prev_pstat):
                if pid not in stats and pid not in procs:
                    self._prev_pstat.pop(pid, None)
                    self._comm.pop(pid, None)
            if tracked is None:
                for pid in [p for p in stats if p not in procs]:
                    with contextlib.suppress(KeyError):
                        del ps[ps.Key(pid)]
        ebpf_if = self._read_ifstats()
        dev = read_net_dev()
        ifs = _iface_snapshot(self._prev_dev, dev, ebpf_if)
        udp = read_snmp_udp()
        udp_d = _udp_delta(self._prev_udp, udp)
        self._prev_dev, self._prev_udp = dev, udp
        fail = self._t("udp_errors")[ctypes.c_int(0)].value
        udp_d["fail_queue_rcv_skb"] = _delta(fail, self._prev_udp_fail)
        self._prev_udp_fail = fail
        lost = self._t("lost_events")[ctypes.c_int(0)].value + self._overflow
        lost_d, self._prev_lost = _delta(lost, self._prev_lost), lost
        return Snapshot("ebpf", time.time(), interval, procs, ifs, drops=self._read_drops(), udp=udp_d,
                        tcp_states=self._read_tcp(), events=tuple(self.drain_events()), lost_events=lost_d)

    def bpf_prog_ids(self) -> set[int]:
        """Kernel ids of this collector's loaded programs (from /proc/self/fdinfo)."""
        ids: set[int] = set()
        if self._b is None:
            return ids
        for fn in self._b.funcs.values():
            info = _read(f"/proc/self/fdinfo/{fn.fd}") or ""
            for line in info.splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        return ids

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        # Detach first (slow: ~RCU grace period per tracepoint) while the poll
        # thread is still allowed to sit in epoll_wait; it notices _stop within
        # poll_timeout_ms, and only then is the ring buffer freed.
        with contextlib.suppress(Exception):
            _bl.detach_tracepoints(self._b)
        if self._thread is not None:
            self._thread.join(timeout=self._poll_timeout_ms / 1000 + 2.0)
        self._prog.close()
        self._b = None

    def __enter__(self) -> EbpfCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; the kernel cleans up on exit anyway
        with contextlib.suppress(Exception):
            self.close()


def _validate_prefixes(prefixes: Sequence[str]) -> list[str]:
    out: list[str] = []
    for p in prefixes:
        raw = p.encode()
        if not p.startswith("/"):
            raise ValueError(f"watch prefix {p!r} must be an absolute path")
        if not 1 < len(raw) <= _bl.PREFIX_MAX:
            raise ValueError(f"watch prefix {p!r} must be 2..{_bl.PREFIX_MAX} bytes")
        if p not in out:
            out.append(p)
    if len(out) > _bl.MAX_WATCH:
        raise ValueError(f"at most {_bl.MAX_WATCH} watch prefixes (got {len(out)})")
    return out


# ------------------------------------------------------------- selection ----
def select_collector(prefer: str = "auto", pids: Iterable[int] | None = None, **ebpf_kwargs: Any) -> Collector:
    """Best available collector. prefer: 'auto' | 'ebpf' | 'proc'.

    'ebpf' raises :class:`EbpfUnavailable` if eBPF cannot be used; 'auto'
    falls back to :class:`ProcCollector`. Logs one line with the choice.
    """
    if prefer not in ("auto", "ebpf", "proc"):
        raise ValueError(f"prefer must be 'auto', 'ebpf' or 'proc', not {prefer!r}")
    pids = None if pids is None else list(pids)
    track = ebpf_kwargs.get("track_children", True)
    if prefer == "proc":
        c: Collector = ProcCollector(pids, track_children=track, reason="proc collector forced (prefer='proc')")
        log.info(c.info.summary())
        return c
    try:
        c = EbpfCollector(pids, **ebpf_kwargs)
    except EbpfUnavailable as exc:
        if prefer == "ebpf":
            raise
        c = ProcCollector(pids, track_children=track, reason=f"eBPF unavailable: {exc}")
        log.warning(c.info.summary())
        return c
    except Exception as exc:
        if prefer == "ebpf":
            raise EbpfUnavailable(f"unsupported kernel: {exc}") from exc
        c = ProcCollector(pids, track_children=track, reason=f"eBPF failed to load: {exc}")
        log.warning(c.info.summary())
        return c
    (log.warning if c.info.missing else log.info)(c.info.summary())
    return c

