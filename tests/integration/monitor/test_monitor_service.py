"""The monitor service on a real stack: real nats-server, the real monitor process, a real mesh
host process, real eBPF (as root) or the forced /proc + psutil fallback. No mocks."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest
from testkit import eventually, scaled, violations

from x0tta6bl4.bus import subjects
from x0tta6bl4.monitoring import bpf_loader
from x0tta6bl4.runtime.stack import Stack, repo_root
from x0tta6bl4.v1 import common_pb2, events_pb2


def _ebpf_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "eBPF needs root"
    try:
        bpf_loader.preflight()
    except bpf_loader.EbpfUnavailable as exc:
        return f"eBPF unavailable: {exc}"
    return None


EBPF_SKIP = _ebpf_skip_reason()

# A real mesh host (x0tta6bl4.mesh.host.main) that opens /etc/shadow when it gets SIGUSR1:
# the "monitored process touching a forbidden file".
HOST_CODE = textwrap.dedent("""
    import signal, sys
    def touch(*_):
        try:
            open("/etc/shadow", "rb").close()
        except OSError:
            pass
    signal.signal(signal.SIGUSR1, touch)
    from x0tta6bl4.mesh.host import main  # x0tta6bl4.mesh.host
    sys.exit(main())
""")


def start_host(stack: Stack, topology: str = "line:3", as_module: bool = False) -> subprocess.Popen:
    from x0tta6bl4.mesh.topology import parse_spec
    env = stack.mesh_host_env("mesh", parse_spec(topology).nodes)    # its own bus identity: these nodes
    args = ["--nats", stack.url, "--topology", topology, "--telemetry-interval", "0.25"]
    cmd = [sys.executable, "-m", "x0tta6bl4.mesh.host", *args] if as_module else \
        [sys.executable, "-c", HOST_CODE, *args]
    p = subprocess.Popen(cmd, cwd=repo_root(), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert b'"ready": true' in line, line
    return p


def stop_host(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def monitor_port(stack: Stack) -> int:
    return next(sp.health_port for sp in stack.procs if sp.name == "monitor")


async def info(nc) -> dict:
    return json.loads((await nc.request(subjects.MONITOR_INFO, b"", timeout=2)).data)


async def telemetry_of(nc, node: str) -> events_pb2.NodeTelemetry | None:
    kv = await nc.jetstream().key_value("telemetry")
    try:
        return events_pb2.NodeTelemetry.FromString((await kv.get(node)).value)
    except Exception:  # noqa: BLE001 - not there yet (no bucket, no key)
        return None


@pytest.fixture
def stack_with(tmp_path):
    made: list[tuple[Stack, list[subprocess.Popen]]] = []

    def make(env: dict[str, str]) -> tuple[Stack, list[subprocess.Popen]]:
        s = Stack(tmp_path / f"stack{len(made)}", ("monitor",), env=env, secure=True)
        hosts: list[subprocess.Popen] = []
        made.append((s, hosts))
        s.start(scaled(60))
        return s, hosts

    yield make
    for s, hosts in made:
        for h in hosts:
            stop_host(h)
        s.stop()
    assert not [v for s, _ in made for v in violations(s)], "nats-server refused a legitimate flow"


@pytest.mark.timeout(60)
@pytest.mark.skipif(EBPF_SKIP is not None, reason=EBPF_SKIP or "")
async def test_ebpf_monitor_kernel_signals_security_event_and_metrics(stack_with) -> None:
    stack, hosts = stack_with({"X0TTA6BL4_MONITOR_COLLECTOR": "ebpf", "X0TTA6BL4_COLLECT_INTERVAL_S": "0.25",
                               "X0TTA6BL4_WINDOW_S": "1", "X0TTA6BL4_SECURITY_HOLD_S": "5"})
    host = start_host(stack)
    hosts.append(host)
    nc = await stack.connect()
    try:
        # which collector runs, with which signals
        got = await eventually(lambda: _running(nc, host.pid), 20, 0.25)
        assert got["collector"] == "ebpf" and "syscalls" in got["signals"] and "sensitive_open" in got["signals"]
        assert got["hosts"][str(host.pid)] == ["n0", "n1", "n2"]

        # kernel signals of the host process in the nodes' telemetry and in the windows
        async def kernel_ok():
            t = await telemetry_of(nc, "n1")
            assert t and t.kernel.get("proc.pid") == host.pid and t.kernel.get("proc.syscalls", 0) > 0 \
                and t.kernel.get("proc.ctx_switches", 0) > 0, t
            return t
        t = await eventually(kernel_ok, 15)
        assert t.kernel["proc.nodes"] == 3 and t.kernel["collector.ebpf"] == 1 and "host.rx_packets" in t.kernel
        assert t.peer_count >= 1  # the agent's own telemetry is merged, not replaced

        windows: asyncio.Queue = asyncio.Queue()
        await nc.subscribe("mapek.telemetry", cb=queue_cb(windows))
        # a window is a sample of the last interval: one quiet interval on a busy machine may count no syscalls,
        # so wait (a bounded number of windows) for one that carries them
        for _ in range(10):
            w = events_pb2.TelemetryWindow.FromString(await asyncio.wait_for(windows.get(), scaled(5)))
            n0 = {n.node_id: n for n in w.nodes}["n0"]
            assert n0.kernel["proc.pid"] == host.pid, n0
            if n0.kernel["proc.syscalls"] > 0:
                break
        else:
            raise AssertionError(f"ten windows without n0's syscalls: {n0}")

        # a forbidden file open by the monitored process: audit event + health reason, quickly
        audits: asyncio.Queue = asyncio.Queue()
        seen: dict[str, events_pb2.HealthChange] = {}    # the first health change of each node

        async def on_change(m) -> None:
            hc = events_pb2.HealthChange.FromString(m.data)
            seen.setdefault(hc.node_id, hc)
        await nc.subscribe("audit.monitor.security.>", cb=queue_cb(audits, stamp=True))
        await nc.subscribe("mapek.health", cb=on_change)
        await nc.flush()   # the server has both subscriptions before the event they must see
        t0 = time.monotonic()
        os.kill(host.pid, signal.SIGUSR1)
        ts, data = await asyncio.wait_for(audits.get(), scaled(3))
        ev = events_pb2.AuditEvent.FromString(data)
        assert ev.event_type == "security.sensitive_open" and ev.subject_id == "n0,n1,n2", ev
        assert ev.details["path"] == "/etc/shadow" and ev.details["host_pid"] == str(host.pid), ev
        assert ts - t0 < scaled(1.0), f"forbidden open reached the bus after {ts - t0:.3f} s"
        await eventually(lambda: {"n0", ""} <= seen.keys(), 5, what="health changes of n0 and of the mesh")
        assert seen["n0"].current == common_pb2.HEALTH_WARNING
        assert any(r.startswith("security.sensitive_open") for r in seen["n0"].reasons), seen["n0"]
        assert seen[""].current == common_pb2.HEALTH_WARNING  # the mesh's health changed too

        # Prometheus text on the monitor's HTTP port, next to /health and /ready
        port = monitor_port(stack)

        async def scrape():
            b = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            return b if 'x0_kernel_events_total{kind="sensitive_open"}' in b else None  # counted at the next collect
        body = await eventually(scrape, 5, 0.1)
        assert 'x0_node_health{node="n0"} 1.0' in body
        assert 'x0_node_latency_p99_ms{node="n2"}' in body and "x0_mesh_health 1.0" in body
        assert f'x0_node_syscalls_total{{node="host:{host.pid}"}}' in body
        assert 'x0_kernel_events_total{kind="sensitive_open"}' in body
        for path in ("/health", "/ready"):
            assert json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).read())
    finally:
        await nc.close()


def meshctl(*args: str):
    import typer
    from typer.testing import CliRunner

    from x0tta6bl4.cli.monitor import monitor_app
    app = typer.Typer()
    app.add_typer(monitor_app, name="monitor")
    app.command("noop")(lambda: None)
    return CliRunner().invoke(app, list(args))


def test_meshctl_monitor_info_without_a_monitor(nats_server) -> None:
    out = meshctl("monitor", "info", "--nats", nats_server.url, "--timeout", "0.5")
    assert out.exit_code == 1 and "no monitor answered on monitor.rpc.Info" in out.output, out.output


def queue_cb(q: asyncio.Queue, stamp: bool = False):
    async def cb(m) -> None:
        q.put_nowait((time.monotonic(), m.data) if stamp else m.data)
    return cb


async def _running(nc, pid: int) -> dict | None:
    try:
        got = await info(nc)
    except Exception:  # noqa: BLE001 - no responder yet
        return None
    assert got["state"] == "running" and str(pid) in got["hosts"], got
    return got


@pytest.mark.timeout(60)
async def test_forced_fallback_collector(stack_with) -> None:
    stack, hosts = stack_with({"X0TTA6BL4_MONITOR_COLLECTOR": "proc", "X0TTA6BL4_COLLECT_INTERVAL_S": "0.25"})
    host = start_host(stack, as_module=True)  # discovered from its command line
    hosts.append(host)
    nc = await stack.connect()
    try:
        got = await eventually(lambda: _running(nc, host.pid), 20, 0.25)
        assert got["collector"] == "proc"
        assert "syscalls" in got["missing"] and "sensitive_open" in got["missing"]
        assert "ctx_switches" in got["signals"] and got["reason"]

        async def kernel_ok():
            t = await telemetry_of(nc, "n0")
            assert t and t.kernel.get("proc.pid") == host.pid and t.kernel.get("proc.ctx_switches", 0) > 0, t
            return t
        t = await eventually(kernel_ok, 15)
        assert "proc.syscalls" not in t.kernel and t.kernel["collector.ebpf"] == 0

        # meshctl monitor info asks the running monitor
        out = await asyncio.to_thread(meshctl, "monitor", "info", "--nats", stack.url, "--data-dir",
                                      str(stack.data_dir))
        assert out.exit_code == 0, out.output
        assert "collector proc (running)" in out.output and "proc collector forced" in out.output
        assert "syscalls" in out.output and f"monitored mesh host processes: pid {host.pid}" in out.output
        js = await asyncio.to_thread(meshctl, "monitor", "info", "--json", "--nats", stack.url, "--data-dir",
                                     str(stack.data_dir))
        assert json.loads(js.output)["collector"] == "proc"

        # `meshctl cycle run` asks the running monitor to start a cycle over every node's latest telemetry
        by_cycle: dict[str, events_pb2.TelemetryWindow] = {}

        async def on_window(m) -> None:
            w = events_pb2.TelemetryWindow.FromString(m.data)
            by_cycle[w.meta.cycle_id] = w
        await nc.subscribe(subjects.MAPEK_TELEMETRY, cb=on_window)
        answer = json.loads((await nc.request(subjects.MONITOR_CYCLE, b"", timeout=5)).data)
        assert answer["nodes"] == 3 and answer["cycle_id"], answer
        w = await eventually(lambda: by_cycle.get(answer["cycle_id"]), 5, what="the operator's cycle window")
        assert list(w.trigger_reasons) == ["operator request"] and len(w.nodes) == 3
    finally:
        await nc.close()
    log = next(sp.log_file for sp in stack.procs if sp.name == "monitor").read_text()
    lines = [ln for ln in log.splitlines() if "monitor collector=proc" in ln]
    assert len(lines) == 1 and "missing signals:" in lines[0], lines


@pytest.mark.parametrize(("env", "needle"), [
    ({"X0TTA6BL4_THRESHOLDS": '{"cpu_percent": {"warning": 95, "critical": 90}}'},
     "X0TTA6BL4_THRESHOLDS: cpu_percent.warning (95) must be lower than cpu_percent.critical (90)"),
    ({"X0TTA6BL4_THRESHOLDS_FILE": "/nonexistent/thresholds.toml"}, "no such file"),
    ({"X0TTA6BL4_THRESHOLDS": '{"disk": {"warning": 1}}'}, "unknown threshold setting 'disk'"),
    ({"X0TTA6BL4_MONITOR_COLLECTOR": "bpf"}, "X0TTA6BL4_MONITOR_COLLECTOR='bpf'"),
])
def test_bad_monitor_config_exits_2_with_one_line(tmp_path, env: dict[str, str], needle: str) -> None:
    full = {**os.environ, "X0TTA6BL4_DATA_DIR": str(tmp_path), "X0TTA6BL4_NATS_URL": "nats://127.0.0.1:1",
            "PYTHONPATH": os.pathsep.join([str(repo_root()), str(repo_root() / "libs")]), **env}
    r = subprocess.run([sys.executable, "-m", "services.monitor.main"], check=False, cwd=repo_root(), env=full,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("monitor: config error:") and needle in lines[0], r.stderr


def test_threshold_file_is_used(tmp_path) -> None:
    from services.monitor.main import MonitorSettings
    from x0tta6bl4.mapek.health import classify_node

    f = tmp_path / "th.toml"
    f.write_text("[cpu_percent]\nwarning = 50\ncritical = 60\n")
    th = MonitorSettings(thresholds_file=f, thresholds='{"cpu_percent": {"critical": 65}}').threshold_table()
    assert (th.cpu_percent.warning, th.cpu_percent.critical) == (50, 65)
    t = events_pb2.NodeTelemetry(node_id="n", reachable=True, cpu_pct=50)
    assert classify_node(t, th)[0] == common_pb2.HEALTH_WARNING
    t.cpu_pct = 65.01
    assert classify_node(t, th) == (common_pb2.HEALTH_CRITICAL, ["cpu_pct=65.01 > 65 (critical)"])
    assert classify_node(t, None)[0] == common_pb2.HEALTH_HEALTHY  # the spec's 70/90 when no table is given
