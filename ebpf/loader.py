#!/usr/bin/env python3
"""Stand-alone loader for ebpf/monitor.bpf.c (used by ebpf/setup.sh).

Runs under Debian's /usr/bin/python3 or the project venv; imports only
libs/x0tta6bl4/monitoring/bpf_loader.py (stdlib + bcc), not the package.

  loader.py check      compile + attach every available probe group, detach
  loader.py watch [s]  attach and print security events for s seconds (default 10)
  loader.py attached   list the monitor's BPF programs still in the kernel
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _bpf_loader():
    path = HERE.parent / "libs" / "x0tta6bl4" / "monitoring" / "bpf_loader.py"
    spec = importlib.util.spec_from_file_location("x0_bpf_loader", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["x0_bpf_loader"] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str]) -> int:
    bl = _bpf_loader()
    cmd = argv[0] if argv else "check"
    if cmd == "attached":
        progs = [p for p in bl.attached_bpf_programs() if str(p.get("name", "")).startswith(("tracepoint__", "x0_"))]
        print(json.dumps(progs, indent=1))
        return 0
    try:
        t0 = time.monotonic()
        prog = bl.load()
    except bl.EbpfUnavailable as exc:
        print(f"eBPF unavailable: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - any compile/attach failure is one line and exit 1
        print(f"eBPF program failed: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"loaded in {time.monotonic() - t0:.2f}s with headers {prog.kernel_source}")
        print("groups:", " ".join(sorted(prog.groups)))
        print("signals:", " ".join(sorted(prog.signals())))
        if prog.failed_families:
            print("failed families:", prog.failed_families)
            return 1
        if cmd == "watch":
            secs = float(argv[1]) if len(argv) > 1 else 10.0
            b = prog.bpf

            def cb(_ctx, data, _size):
                import ctypes
                e = ctypes.cast(data, ctypes.POINTER(bl.RawEvent)).contents
                print(e.kind, e.pid, e.comm.decode(errors="replace"), e.path.decode(errors="replace"), e.arg0)

            b["events"].open_ring_buffer(cb)
            end = time.monotonic() + secs
            while time.monotonic() < end:
                b.ring_buffer_poll(100)
        return 0
    finally:
        prog.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
