"""meshctl up / down / demo: the embedded stack."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import typer
from rich.live import Live
from rich.table import Table

from x0tta6bl4.cli.common import DEFAULT_DATA_DIR, console, fail, progress, stack_file
from x0tta6bl4.runtime.process import pid_alive
from x0tta6bl4.runtime.stack import SERVICES, Stack

DataOpt = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="stack data directory (JetStream store, keys, spans, logs)")


def _status_table(stack: Stack) -> Table:
    table = Table("service", "replica", "pid", "ready", "log", title=f"x0tta6bl4 stack on {stack.url}")
    for sp in stack.procs:
        alive = sp.proc.poll() is None
        table.add_row(sp.name, str(sp.index), str(sp.proc.pid),
                      "[green]ready[/]" if alive and sp.ready()
                      else ("[yellow]starting[/]" if alive else "[red]exited[/]"),
                      str(sp.log_file))
    return table


def _write_state(sf: pathlib.Path, stack: Stack, ready: bool) -> None:
    """stack.json: what clients need to find the stack and speak on it (URL, secrets, nats-server to reload)."""
    assert stack.nats is not None and stack.secrets is not None
    state = {"pid": os.getpid(), "nats_url": stack.url, "ready": ready, "secure": stack.bus_secured,
             "secrets_dir": str(stack.secrets.root), "nats": stack.nats.info()}
    if ready:
        state["grpc"] = {n: stack.grpc_addr(n) for n in ("governance", "keyvault")}
    dashboard = next((sp for sp in stack.procs if sp.name == "dashboard"), None)
    if dashboard is not None:
        state["dashboard"] = f"http://127.0.0.1:{dashboard.health_port}/"
    tmp = sf.with_name(sf.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, sf)


def _start_dashboard(stack: Stack, port: int) -> None:
    """The web dashboard beside the services; a stack without it still runs (a port in use is said)."""
    from x0tta6bl4.dashboard.process import start_dashboard
    try:
        dash = start_dashboard(stack, port)
    except (RuntimeError, TimeoutError) as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        console.print(f"[yellow]dashboard not started[/]: {last}")
        return
    console.print(f"dashboard at {dash.url} (read-only; the operator token is in {dash.token_file})")


def up(detach: bool = typer.Option(False, "--detach", "-d", help="run in the background (stop with meshctl down)"),
       replicas: int = typer.Option(1, min=1, max=8, help="replicas of every service"),
       nats_servers: int = typer.Option(1, "--nats-servers", min=1, max=5,
                                        help="nats-servers: 1, or a JetStream cluster of 3 or 5 on loopback (every "
                                             "stream and bucket replicated on each; survives losing a minority)"),
       monitor_partitions: int = typer.Option(1, "--monitor-partitions", min=1, max=16,
                                              help="telemetry partitioned by node across the monitor replicas "
                                                   "(replica i takes partition i mod K; at most --replicas)"),
       dashboard_port: int = typer.Option(8088, "--dashboard-port", min=0, max=65535,
                                          help="the web dashboard's port on 127.0.0.1 (0: any free port)"),
       dashboard: bool = typer.Option(True, "--dashboard/--no-dashboard", help="start the web dashboard"),
       data_dir: pathlib.Path = DataOpt) -> None:
    """Start nats-server and the six services; show a live status view until Ctrl-C."""
    if nats_servers % 2 == 0:
        fail(f"--nats-servers {nats_servers}: use 1, 3 or 5 (a cluster of {nats_servers} stops when "
             f"{nats_servers // 2} are lost, no better than {nats_servers - 1})")
    if monitor_partitions > replicas:
        fail(f"--monitor-partitions {monitor_partitions}: at most --replicas ({replicas}); a partition without a "
             "monitor replica would leave its nodes unwatched")
    data_dir = data_dir.resolve()
    sf = stack_file(data_dir)
    if sf.exists():
        pid = json.loads(sf.read_text()).get("pid", 0)
        if pid_alive(pid):
            fail(f"a stack is already running (pid {pid}); stop it with meshctl down")
        sf.unlink()
    if detach:
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(data_dir / "stack.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([sys.executable, "-m", "x0tta6bl4.cli.main", "up", "--replicas", str(replicas),
                                     "--nats-servers", str(nats_servers), "--data-dir", str(data_dir),
                                     "--monitor-partitions", str(monitor_partitions),
                                     "--dashboard-port", str(dashboard_port),
                                     "--dashboard" if dashboard else "--no-dashboard"],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        progress(f"starting the stack in the background (pid {proc.pid}, log {data_dir / 'stack.log'})")
        deadline = time.monotonic() + 90
        said_nats = False
        while time.monotonic() < deadline:
            if sf.exists() and not said_nats:
                said_nats = True
                progress(f"nats-server up at {json.loads(sf.read_text()).get('nats_url', '?')}; starting the "
                         "services, waiting until each is ready")
            if sf.exists() and json.loads(sf.read_text()).get("ready"):
                state = json.loads(sf.read_text())
                console.print(f"stack up in the background (pid {proc.pid}), NATS at {state['nats_url']}")
                if state.get("dashboard"):
                    console.print(f"dashboard at {state['dashboard']}")
                return
            if proc.poll() is not None:
                fail(f"stack exited with {proc.returncode}; see {data_dir / 'stack.log'}")
            time.sleep(0.2)
        fail("stack did not become ready within 90 s")
    from x0tta6bl4.runtime.secrets import SecretsError
    from x0tta6bl4.runtime.secrets import init as init_secrets
    made: list[str] = []
    progress("secrets: checking (made when missing)")
    try:   # the deployment's secrets: made when missing (meshctl secrets init), else used as they are
        secrets = init_secrets(pathlib.Path(os.environ.get("X0TTA6BL4_SECRETS_DIR") or data_dir / "secrets"),
                               made=made)
    except (SecretsError, OSError) as e:
        fail(str(e))
    if made:
        console.print(f"secrets: made {len(made)} files in {secrets.root} (CA, NATS credentials, signing keys, "
                      "trust bundle)")
    stack = Stack(data_dir, SERVICES, replicas, fixed_ports=True, secrets=secrets, secure=True,
                  nats_servers=nats_servers, monitor_partitions=monitor_partitions)
    stopping = False

    def _stop(*_):
        nonlocal stopping
        stopping = True
    signal.signal(signal.SIGTERM, _stop)
    try:
        progress(f"starting nats-server ({nats_servers} server{'s' if nats_servers > 1 else ''})")
        stack.start_nats()
        sf.parent.mkdir(parents=True, exist_ok=True)
        _write_state(sf, stack, ready=False)
        progress(f"starting the services ({', '.join(SERVICES)}; {replicas} replica(s) each), waiting until "
                 "each is ready")
        stack.start()
        if dashboard:
            progress("starting the dashboard")
            _start_dashboard(stack, dashboard_port)
        _write_state(sf, stack, ready=True)
        progress("stack ready")
        if not sys.stdout.isatty():
            console.print(_status_table(stack))
        with Live(_status_table(stack), console=console, refresh_per_second=1,
                  auto_refresh=False, transient=False) as live:
            while not stopping:
                live.update(_status_table(stack), refresh=sys.stdout.isatty())
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        console.print("stopping the stack ...")
        stack.stop()
        if sf.exists():
            sf.unlink()


def down(data_dir: pathlib.Path = DataOpt) -> None:
    """Stop a stack started with meshctl up --detach."""
    sf = stack_file(data_dir.resolve())
    if not sf.exists():
        console.print("no stack is running")
        return
    pid = json.loads(sf.read_text()).get("pid", 0)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        sf.unlink(missing_ok=True)
        console.print("the stack was not running (stale state removed)")
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            console.print("stack stopped")
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    sf.unlink(missing_ok=True)
    console.print("stack killed after 30 s")


def demo(data_dir: pathlib.Path = typer.Option(None, "--data-dir", help="keep state here (default: a temp dir)"),
         nodes: int = typer.Option(9, min=4, max=100, help="nodes in the demo mesh"),
         timeout_s: float = typer.Option(60.0, help="give up after this long"),
         keys: bool = typer.Option(True, "--keys/--no-keys", help="signed HELLOs and PQC links (default); "
                                                                 "--no-keys only for a comparison")) -> None:
    """Run the orchestrator on an embedded stack, inject a fault and watch one MAPE-K cycle heal it."""
    from x0tta6bl4.cli.demo import run_demo
    code = run_demo(data_dir, nodes, timeout_s, keys)
    raise typer.Exit(code)
