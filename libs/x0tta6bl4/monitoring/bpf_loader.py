"""Load ebpf/monitor.bpf.c with bcc (tracepoints only).

Stdlib only (plus bcc, imported lazily) so that ``ebpf/loader.py`` and
``ebpf/setup.sh`` can use this file under Debian's ``/usr/bin/python3``
without importing the rest of the package.

bcc comes from Debian's ``python3-bpfcc``; our venv is a different Python
3.11 build, so :func:`import_bcc` temporarily appends Debian's dist-packages
to ``sys.path`` for the import only and removes it again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("x0tta6bl4.monitoring.ebpf")

DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
DEFAULT_CACHE_DIR = Path("/var/cache/x0tta6bl4")
KERNEL_SOURCE_FILE = "bcc_kernel_source"  # written by ebpf/setup.sh
TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

EV_SENSITIVE_OPEN = 1
EV_PRIV_CHANGE = 2
EV_PACKET_DROP = 3
PATH_MAX = 128
PREFIX_MAX = 64
MAX_WATCH = 16

# probe group macro -> tracepoints it needs (all must exist)
GROUPS: dict[str, tuple[str, ...]] = {
    "X0_HAVE_SCHED_SWITCH": ("sched/sched_switch",),
    "X0_HAVE_SYS_ENTER": ("raw_syscalls/sys_enter",),
    "X0_HAVE_TASK_NEWTASK": ("task/task_newtask",),
    "X0_HAVE_NET_DEV_XMIT": ("net/net_dev_xmit",),
    "X0_HAVE_NETIF_RECEIVE_SKB": ("net/netif_receive_skb",),
    "X0_HAVE_KFREE_SKB": ("skb/kfree_skb",),
    "X0_HAVE_INET_SOCK_SET_STATE": ("sock/inet_sock_set_state",),
    "X0_HAVE_UDP_FAIL_QUEUE": ("udp/udp_fail_queue_rcv_skb",),
    "X0_HAVE_SOCK_LENGTH": ("sock/sock_send_length", "sock/sock_recv_length"),
    "X0_HAVE_SYS_ENTER_OPENAT": ("syscalls/sys_enter_openat",),
    "X0_HAVE_SYS_ENTER_OPENAT2": ("syscalls/sys_enter_openat2",),
    "X0_HAVE_SYS_ENTER_OPEN": ("syscalls/sys_enter_open",),
    "X0_HAVE_SYS_ENTER_SETUID": ("syscalls/sys_enter_setuid",),
    "X0_HAVE_SYS_ENTER_SETGID": ("syscalls/sys_enter_setgid",),
    "X0_HAVE_SYS_ENTER_SETREUID": ("syscalls/sys_enter_setreuid",),
    "X0_HAVE_SYS_ENTER_SETREGID": ("syscalls/sys_enter_setregid",),
    "X0_HAVE_SYS_ENTER_SETRESUID": ("syscalls/sys_enter_setresuid",),
    "X0_HAVE_SYS_ENTER_SETRESGID": ("syscalls/sys_enter_setresgid",),
    "X0_HAVE_SYS_ENTER_SETFSUID": ("syscalls/sys_enter_setfsuid",),
    "X0_HAVE_SYS_ENTER_SETFSGID": ("syscalls/sys_enter_setfsgid",),
    "X0_HAVE_SYS_ENTER_CAPSET": ("syscalls/sys_enter_capset",),
}

# family -> groups; used to isolate a family that fails to compile
FAMILIES: dict[str, tuple[str, ...]] = {
    "sched": ("X0_HAVE_SCHED_SWITCH", "X0_HAVE_TASK_NEWTASK"),
    "syscalls": ("X0_HAVE_SYS_ENTER",),
    "netdev": ("X0_HAVE_NET_DEV_XMIT", "X0_HAVE_NETIF_RECEIVE_SKB"),
    "drops": ("X0_HAVE_KFREE_SKB",),
    "sock": ("X0_HAVE_INET_SOCK_SET_STATE", "X0_HAVE_UDP_FAIL_QUEUE", "X0_HAVE_SOCK_LENGTH"),
    "open": ("X0_HAVE_SYS_ENTER_OPENAT", "X0_HAVE_SYS_ENTER_OPENAT2", "X0_HAVE_SYS_ENTER_OPEN"),
    "priv": tuple(g for g in GROUPS if re.match(r"X0_HAVE_SYS_ENTER_(SET|CAP)", g)),
}

# signal name -> groups of which at least one must be loaded
SIGNAL_GROUPS: dict[str, tuple[str, ...]] = {
    "ctx_switches": ("X0_HAVE_SCHED_SWITCH",),
    "cpu": ("X0_HAVE_SCHED_SWITCH",),
    "syscalls": ("X0_HAVE_SYS_ENTER",),
    "child_tracking": ("X0_HAVE_TASK_NEWTASK",),
    "iface_packets": ("X0_HAVE_NET_DEV_XMIT", "X0_HAVE_NETIF_RECEIVE_SKB"),
    "iface_bytes": ("X0_HAVE_NET_DEV_XMIT", "X0_HAVE_NETIF_RECEIVE_SKB"),
    "drop_reasons": ("X0_HAVE_KFREE_SKB",),
    "tcp_states": ("X0_HAVE_INET_SOCK_SET_STATE",),
    "udp_errors": ("X0_HAVE_UDP_FAIL_QUEUE",),
    "sock_bytes": ("X0_HAVE_SOCK_LENGTH",),
    "sensitive_open": FAMILIES["open"],
    "privilege_change": FAMILIES["priv"],
}


class EbpfUnavailable(RuntimeError):
    """eBPF collection is impossible here; ``str(exc)`` says why."""


# ----------------------------------------------------------------- probing --
def find_tracefs(mount: bool = False) -> Path | None:
    """Return a tracefs dir that has events/, optionally mounting it (root)."""
    for p in TRACEFS_CANDIDATES:
        if (p / "events").is_dir():
            return p
    if mount and os.geteuid() == 0:
        p = TRACEFS_CANDIDATES[0]
        with contextlib.suppress(Exception):
            import subprocess

            subprocess.run(["mount", "-t", "tracefs", "nodev", str(p)],
                           check=False, capture_output=True, timeout=10)
            if (p / "events").is_dir():
                return p
    return None


@dataclass
class TracepointFormat:
    fields: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # name -> (offset, size, type)
    symbols: dict[str, dict[int, str]] = field(default_factory=dict)  # field -> {value: NAME}


_FIELD_RE = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);")
_SYMBOLIC_RE = re.compile(r"__print_symbolic\(REC->(\w+),((?:\s*\{\s*-?\d+,\s*\"[^\"]*\"\s*\},?)+)\)")
_PAIR_RE = re.compile(r"\{\s*(-?\d+),\s*\"([^\"]*)\"\s*\}")


def parse_format(text: str) -> TracepointFormat:
    fmt = TracepointFormat()
    for m in _FIELD_RE.finditer(text):
        decl = m.group("decl").strip()
        name = re.sub(r"\[.*\]$", "", decl.split()[-1]).lstrip("*")
        fmt.fields[name] = (int(m.group("off")), int(m.group("size")), decl)
    for m in _SYMBOLIC_RE.finditer(text):
        fmt.symbols.setdefault(m.group(1), {}).update(
            {int(v): n for v, n in _PAIR_RE.findall(m.group(2))})
    return fmt


def read_format(tracefs: Path, tp: str) -> TracepointFormat | None:
    try:
        return parse_format((tracefs / "events" / tp / "format").read_text())
    except OSError:
        return None


def available_groups(tracefs: Path) -> dict[str, bool]:
    return {g: all((tracefs / "events" / tp).is_dir() for tp in tps) for g, tps in GROUPS.items()}


# ------------------------------------------------------------ environment --
_bcc_lock = threading.Lock()


def import_bcc() -> Any:
    """Import bcc, borrowing Debian's dist-packages for the import only."""
    with _bcc_lock:
        if "bcc" in sys.modules:
            return sys.modules["bcc"]
        try:
            import bcc

            return bcc
        except ImportError:
            pass
        if not os.path.isdir(os.path.join(DEBIAN_DIST_PACKAGES, "bcc")):
            raise EbpfUnavailable(
                "bcc missing: python3-bpfcc is not installed (run ebpf/setup.sh)")
        added = DEBIAN_DIST_PACKAGES not in sys.path
        if added:
            sys.path.append(DEBIAN_DIST_PACKAGES)
        try:
            import bcc

            return bcc
        except Exception as exc:  # ImportError, OSError from libbcc.so
            raise EbpfUnavailable(f"bcc missing: cannot import Debian's bcc ({exc})") from exc
        finally:
            if added:
                with contextlib.suppress(ValueError):
                    sys.path.remove(DEBIAN_DIST_PACKAGES)


def cache_dir() -> Path:
    return Path(os.environ.get("X0_EBPF_CACHE", str(DEFAULT_CACHE_DIR)))


def find_kernel_source() -> tuple[str | None, str]:
    """Kernel headers dir for bcc: (path or None, where it came from)."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and os.path.isdir(os.path.join(env, "include")):
        return env, "BCC_KERNEL_SOURCE"
    f = cache_dir() / KERNEL_SOURCE_FILE
    with contextlib.suppress(OSError):
        p = f.read_text().strip()
        if p and os.path.isdir(os.path.join(p, "include")):
            return p, str(f)
    build = f"/lib/modules/{platform.release()}/build"
    if os.path.isdir(os.path.join(build, "include")):
        return build, build
    return None, "none"


def find_bpf_source() -> Path:
    env = os.environ.get("X0_EBPF_DIR")
    cands = [Path(env)] if env else []
    here = Path(__file__).resolve()
    cands += [here.parent / "bpf", here.parents[3] / "ebpf"]
    for d in cands:
        if (d / "monitor.bpf.c").is_file():
            return d / "monitor.bpf.c"
    raise EbpfUnavailable("BPF source monitor.bpf.c not found (set X0_EBPF_DIR)")


def preflight() -> tuple[Path, str]:
    """Check everything needed before compiling; raises EbpfUnavailable."""
    if os.geteuid() != 0:
        raise EbpfUnavailable("not root (eBPF tracepoints need CAP_BPF+CAP_PERFMON)")
    tracefs = find_tracefs(mount=True)
    if tracefs is None:
        raise EbpfUnavailable("unsupported kernel: tracefs not mounted/available")
    ksrc, _how = find_kernel_source()
    if ksrc is None:
        raise EbpfUnavailable("no headers: no kernel headers for bcc (run ebpf/setup.sh)")
    import_bcc()
    return tracefs, ksrc


# ------------------------------------------------------------------ events --
class RawEvent(ctypes.Structure):
    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("syscall_nr", ctypes.c_int32),
        ("arg0", ctypes.c_uint64),
        ("arg1", ctypes.c_uint64),
        ("arg2", ctypes.c_uint64),
        ("watch_idx", ctypes.c_int32),
        ("comm", ctypes.c_char * 16),
        ("path", ctypes.c_char * PATH_MAX),
    ]


class WatchEntry(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint32), ("prefix", ctypes.c_char * PREFIX_MAX)]


# ----------------------------------------------------------------- program --
@dataclass
class LoadedProgram:
    bpf: Any
    groups: set[str]
    tracefs: Path
    kernel_source: str
    formats: dict[str, TracepointFormat]
    failed_families: dict[str, str]

    def signals(self) -> set[str]:
        return {s for s, gs in SIGNAL_GROUPS.items() if any(g in self.groups for g in gs)}

    def close(self) -> None:
        bpf, self.bpf = self.bpf, None
        if bpf is not None:
            detach_tracepoints(bpf)
            bpf.cleanup()


def detach_tracepoints(bpf: Any) -> None:
    """Close the tracepoint perf fds concurrently.

    Each close waits for an RCU grace period in the kernel (tracepoint
    unregistration), ~70 ms apiece; bcc does them one by one (~1.5 s for the
    monitor's 21 tracepoints). Closing in threads overlaps the waits. What is
    left (or fails here) is detached by ``bpf.cleanup()`` afterwards.
    """
    from concurrent.futures import ThreadPoolExecutor

    bcc = import_bcc()
    items = list(bpf.tracepoint_fds.items())
    if len(items) < 2:
        return

    def close_one(item: tuple[bytes, int]) -> bytes | None:
        tp, fd = item
        return tp if bcc.lib.bpf_close_perf_event_fd(fd) >= 0 else None

    with ThreadPoolExecutor(max_workers=min(len(items), 32)) as pool:
        done = [tp for tp in pool.map(close_one, items) if tp is not None]
    for tp in done:
        bpf.tracepoint_fds.pop(tp, None)


def _cflags(groups: set[str], formats: dict[str, TracepointFormat], extra: dict[str, int]) -> list[str]:
    flags = ["-Wno-macro-redefined", "-Wno-unused-function", "-Wno-ignored-attributes"]
    flags += [f"-D{g}=1" for g in sorted(groups)]
    if "X0_HAVE_KFREE_SKB" in groups:
        f = formats["skb/kfree_skb"].fields
        flags.append(f"-DX0_KFREE_REASON_OFF={f['reason'][0]}")
        flags.append(f"-DX0_KFREE_PROTO_OFF={f['protocol'][0]}")
    flags += [f"-D{k}={int(v)}" for k, v in extra.items()]
    return flags


@contextlib.contextmanager
def _captured_stderr():
    """Capture fd 2 (libbcc/clang diagnostics) into a list of text lines."""
    import tempfile

    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def _compile(bcc: Any, src: str, groups: set[str], formats: dict[str, TracepointFormat],
             extra: dict[str, int]) -> Any:
    with _captured_stderr() as diag:
        try:
            b = bcc.BPF(text=src, cflags=_cflags(groups, formats, extra))
        except Exception as exc:
            errors = [ln for ln in diag if "error" in ln.lower()]
            raise RuntimeError(f"{exc}: {'; '.join(errors[:3]) or 'see debug log'}") from exc
    if diag:
        log.debug("bcc diagnostics:\n%s", "\n".join(diag))
    if "X0_HAVE_KFREE_SKB" in groups:
        try:
            b.attach_tracepoint(tp=b"skb:kfree_skb", fn_name=b"x0_kfree_skb")
        except Exception:
            b.cleanup()
            raise
    return b


def load(extra_defines: dict[str, int] | None = None,
         disable: set[str] | frozenset[str] = frozenset()) -> LoadedProgram:
    """Compile and attach every probe group whose tracepoints exist.

    If the full program fails to compile, each family is compiled on its own
    and the program is rebuilt from the families that work (logged).
    """
    tracefs, ksrc = preflight()
    bcc = import_bcc()
    os.environ["BCC_KERNEL_SOURCE"] = ksrc  # process-local; read by libbcc at compile time
    src = find_bpf_source().read_text()
    extra = dict(extra_defines or {})
    avail = available_groups(tracefs)
    groups = {g for g, ok in avail.items() if ok and g not in disable}
    formats: dict[str, TracepointFormat] = {}
    for tps in GROUPS.values():
        for tp in tps:
            fmt = read_format(tracefs, tp)
            if fmt is not None:
                formats[tp] = fmt
    kf = formats.get("skb/kfree_skb")
    if kf is None or "reason" not in kf.fields or "protocol" not in kf.fields:
        groups.discard("X0_HAVE_KFREE_SKB")
    if not groups:
        raise EbpfUnavailable("unsupported kernel: none of the monitor's tracepoints exist")
    failed: dict[str, str] = {}
    try:
        b = _compile(bcc, src, groups, formats, extra)
    except Exception as exc:
        log.debug("eBPF monitor program failed to build (%s); isolating failing probe families", exc)
        ok: set[str] = set()
        for fam, fgroups in FAMILIES.items():
            fg = groups & set(fgroups)
            if not fg:
                continue
            try:
                _compile(bcc, src, fg, formats, extra).cleanup()
                ok |= fg
            except Exception as fexc:  # noqa: BLE001 - this family does not build: reported below
                failed[fam] = str(fexc)
        if not ok:
            raise EbpfUnavailable(f"unsupported kernel: BPF program does not build/attach ({exc})") from exc
        groups = ok
        b = _compile(bcc, src, groups, formats, extra)
    return LoadedProgram(bpf=b, groups=groups, tracefs=tracefs, kernel_source=ksrc,
                         formats=formats, failed_families=failed)


def attached_bpf_programs() -> list[dict[str, Any]]:
    """Programs currently loaded in the kernel, via bpftool (empty if absent)."""
    import json
    import shutil
    import subprocess

    tool = shutil.which("bpftool") or ("/usr/sbin/bpftool" if os.path.exists("/usr/sbin/bpftool") else None)
    if tool is None:
        return []
    out = subprocess.run([tool, "-j", "prog", "show"], capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        return []
    try:
        return list(json.loads(out.stdout or "[]"))
    except ValueError:
        return []
