"""The /proc + psutil fallback collector, forced (prefer='proc'), plus the
auto-fallback when eBPF is impossible (a real unprivileged subprocess)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
from testkit import eventually_sync

from x0tta6bl4.monitoring.collectors import (
    ALL_SIGNALS,
    Collector,
    ProcCollector,
    read_net_dev,
    read_snmp_udp,
    select_collector,
)

pytestmark = pytest.mark.timeout(60)


def _spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)


def test_forced_proc_collector_info_and_single_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="x0tta6bl4.monitoring")
    c = select_collector("proc", pids=[os.getpid()])
    try:
        assert isinstance(c, ProcCollector) and isinstance(c, Collector)
        info = c.info
        assert info.name == "proc"
        assert set(info.signals) | set(info.missing) == set(ALL_SIGNALS)
        assert {"syscalls", "drop_reasons", "sensitive_open", "privilege_change"} <= set(info.missing)
        assert "forced" in info.reason
        recs = [r.getMessage() for r in caplog.records if r.name == "x0tta6bl4.monitoring"]
        assert len(recs) == 1 and "collector=proc" in recs[0] and "syscalls" in recs[0]
        assert info.as_dict()["name"] == "proc"
    finally:
        c.close()


def test_busy_process_cpu_ctx_switches_memory() -> None:
    p = _spawn("""
        import sys, time
        sys.stdin.readline()
        while time.process_time() < 0.3:
            pass
        for _ in range(100):
            time.sleep(0.001)
        print("done", flush=True)
        sys.stdin.readline()
    """)
    try:
        c = ProcCollector([p.pid])
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "done"
        s = c.collect()
        st = s.processes[p.pid]
        assert st.alive and st.comm.startswith("python")
        assert st.cpu_ns >= 0.25e9 and st.cpu_percent > 0
        assert st.ctx_switches >= 100
        assert st.rss_bytes > 1_000_000 and 0 < st.memory_percent < 100
        assert st.syscalls is None  # not observable without eBPF
        # next interval: idle process, ~0 CPU
        st2 = c.collect().processes[p.pid]
        assert st2.cpu_ns < 0.05e9
    finally:
        p.kill()
        p.wait()
    # a monitored (root) pid that died stays reported as dead, with no deltas
    for _ in range(2):
        dead = c.collect().processes[p.pid]
        assert dead.alive is False and dead.cpu_ns is None


def test_children_of_monitored_pid_are_followed() -> None:
    p = _spawn("""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE)
        print(child.pid, flush=True)
        sys.stdin.readline()
        child.stdin.close(); child.wait()
    """)
    try:
        child = int(p.stdout.readline())
        with ProcCollector([p.pid]) as c:
            assert {p.pid, child} <= set(c.collect().processes)
        with ProcCollector([p.pid], track_children=False) as c:
            assert child not in c.collect().processes
    finally:
        p.stdin.write("x\n")
        p.stdin.flush()
        p.wait(10)


def test_loopback_packets_and_udp_errors() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c = ProcCollector([])
    n = 40
    for _ in range(n):
        tx.sendto(b"x" * 100, rx.getsockname())
        tx.sendto(b"y", ("127.0.0.1", dead_port))  # no listener: Udp NoPorts
    seen = {"rx_packets": 0, "tx_packets": 0, "rx_bytes": 0, "NoPorts": 0}

    def counted():   # each collect() reports the change since the previous one: add them up
        s = c.collect()
        assert s.processes == {}
        lo = s.interfaces["lo"]
        for k in ("rx_packets", "tx_packets", "rx_bytes"):
            seen[k] += getattr(lo, k)
        seen["NoPorts"] += s.udp["NoPorts"]
        assert seen["rx_packets"] >= 2 * n and seen["tx_packets"] >= 2 * n, seen
        assert seen["rx_bytes"] >= n * 128, seen  # 100 B payload + 28 B UDP/IP headers
        assert seen["NoPorts"] >= n, seen
        return True
    eventually_sync(counted, 5, 0.02)
    for sock in (rx, tx):
        sock.close()


def test_proc_parsers_read_the_real_files() -> None:
    dev = read_net_dev()
    assert "lo" in dev and len(dev["lo"]) == 8
    assert {"InErrors", "NoPorts", "RcvbufErrors"} <= set(read_snmp_udp())


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root to start an unprivileged subprocess with setpriv")
def test_auto_falls_back_with_one_clear_line_when_not_root() -> None:
    code = textwrap.dedent("""
        import json, logging, os
        logging.basicConfig(level=logging.DEBUG, format="%(name)s|%(message)s")
        from x0tta6bl4.monitoring.collectors import select_collector
        c = select_collector("auto", pids=[os.getpid()])
        s = c.collect()
        print(json.dumps({"info": c.info.as_dict(), "procs": list(s.processes)}))
    """)
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=30, check=True)
    res = json.loads(out.stdout)
    assert res["info"]["name"] == "proc"
    assert "not root" in res["info"]["reason"]
    assert "syscalls" in res["info"]["missing"] and "sensitive_open" in res["info"]["missing"]
    assert len(res["procs"]) == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("x0tta6bl4.monitoring")]
    assert len(lines) == 1, out.stderr
    assert "collector=proc" in lines[0] and "not root" in lines[0] and "syscalls" in lines[0]


def test_prefer_validation() -> None:
    with pytest.raises(ValueError, match="prefer"):
        select_collector("bpf")


def test_logging_is_quiet_for_collect(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="x0tta6bl4.monitoring")
    with ProcCollector([os.getpid()]) as c:
        c.collect()
    assert not [r for r in caplog.records if r.name.startswith("x0tta6bl4.monitoring")]


@pytest.mark.skipif(os.geteuid() != 0, reason="as non-root the 'not root' reason wins")
def test_auto_falls_back_when_no_kernel_headers(tmp_path) -> None:
    if os.path.isdir(f"/lib/modules/{os.uname().release}/build/include"):
        pytest.skip("this host has installed headers for the running kernel")
    code = textwrap.dedent("""
        import json, os
        from x0tta6bl4.monitoring.collectors import select_collector
        c = select_collector("auto", pids=[os.getpid()])
        print(json.dumps(c.info.as_dict()))
    """)
    env = {k: v for k, v in os.environ.items() if k != "BCC_KERNEL_SOURCE"}
    env["X0_EBPF_CACHE"] = str(tmp_path)  # empty: setup.sh never ran here
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env,
                         check=True)
    info = json.loads(out.stdout)
    assert info["name"] == "proc" and "no headers" in info["reason"]
    assert "run ebpf/setup.sh" in info["reason"]
    assert "no headers" in out.stderr and out.stderr.count("collector=proc") == 1
