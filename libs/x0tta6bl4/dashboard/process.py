"""The dashboard as a process of an embedded stack (``meshctl up``, the tests).

    sp = start_dashboard(stack)          # after stack.start(): it speaks on the bus as ``dashboard``
    sp.url                               # http://127.0.0.1:<port>/
    # stack.stop() stops it with the services (it is one of stack.procs, named "dashboard")
"""
from __future__ import annotations

import pathlib
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from x0tta6bl4.bus.permissions import DASHBOARD
from x0tta6bl4.runtime.stack import ServiceProcess, free_port, repo_root

if TYPE_CHECKING:
    from x0tta6bl4.runtime.stack import Stack

DEFAULT_PORT = 8088


def token_file(secrets_root: pathlib.Path) -> pathlib.Path:
    """Where a deployment keeps the operator's dashboard token (made by the dashboard when missing)."""
    return pathlib.Path(secrets_root) / "dashboard" / "token"


@dataclass
class Dashboard:
    process: ServiceProcess
    host: str
    token_file: pathlib.Path

    @property
    def port(self) -> int:
        return self.process.health_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def token(self) -> str:
        return self.token_file.read_text().strip()


def start_dashboard(stack: Stack, port: int = 0, host: str = "127.0.0.1", timeout_s: float = 30.0,
                    history_s: float = 900.0) -> Dashboard:
    """Start the dashboard for a running stack (``port`` 0: a free one) and wait until it has read the bus."""
    assert stack.secrets is not None
    port = port or free_port()
    tokens = token_file(stack.secrets.root)
    env = {k: v for k, v in stack.base_env().items() if not k.startswith("X0TTA6BL4_NATS_")}
    env.update({"X0TTA6BL4_NATS_URL": stack.url, "X0TTA6BL4_DATA_DIR": str(stack.data_dir),
                "X0TTA6BL4_DASHBOARD_HOST": host, "X0TTA6BL4_DASHBOARD_PORT": str(port),
                "X0TTA6BL4_DASHBOARD_TOKEN_FILE": str(tokens), "X0TTA6BL4_DASHBOARD_HISTORY_S": str(history_s)})
    env.update(stack.identity_env(DASHBOARD))
    log_file = stack.data_dir / "logs" / "dashboard-0.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "x0tta6bl4.dashboard"], cwd=repo_root(), env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    sp = ServiceProcess("dashboard", 0, proc, port, log_file)
    stack.procs.append(sp)            # stack.stop() stops it too
    deadline = time.monotonic() + timeout_s
    while not sp.ready():
        if proc.poll() is not None:
            stack.procs.remove(sp)
            tail = log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the dashboard exited with {proc.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            stack.stop_service(sp)
            raise TimeoutError(f"the dashboard was not ready within {timeout_s:g} s; see {log_file}")
        time.sleep(0.1)               # polling its /ready
    return Dashboard(sp, host, tokens)
