"""docker-compose.yml rehearsed without a Docker engine (none runs on our build machines): every container of
the file is started as a process exactly as the file declares it - its command, its environment, only the
files it mounts as secrets - after the one-shot `provision` container, against a real nats-server running the
generated configuration. Only what a container runtime would provide is translated: the container paths
(/run/secrets/x0tta6bl4, /var/lib/x0tta6bl4) become directories of this test, the compose network names
(`nats`, `keyvault`) and the fixed ports become free loopback ports. Every service and the demo mesh must
become ready with no permission violation on the bus, the mesh's nodes report through their mesh host's own
identity and their keys come from keyvault."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from testkit import eventually, scaled

from x0tta6bl4.bus.connection import NatsCredentials, connect_once
from x0tta6bl4.runtime import deploy
from x0tta6bl4.runtime.stack import free_port, repo_root

pytestmark = pytest.mark.slow
DATA = "/var/lib/x0tta6bl4"


class Container:
    def __init__(self, name: str, svc: dict, compose: dict, tmp: pathlib.Path, nats_url: str,
                 grpc_ports: dict[str, int]):
        self.name = name
        self.dir = tmp / name
        secrets = self.dir / "secrets"
        secrets.mkdir(parents=True)
        for s in svc.get("secrets", []):      # only the files the file mounts into this container
            target = pathlib.PurePosixPath(s["target"])
            assert str(target.parent) == deploy.CONTAINER_DIR, (name, s)
            shutil.copyfile(compose["secrets"][s["source"]]["file"], secrets / target.name)
        paths = {deploy.CONTAINER_DIR: str(secrets), DATA: str(self.dir / "data")}
        self.health_port = free_port()
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        env = {k: self._move(v, paths) for k, v in env.items()}
        assert env["X0TTA6BL4_NATS_URL"] == "tls://nats:4222", name
        env["X0TTA6BL4_NATS_URL"] = nats_url
        env["X0TTA6BL4_HEALTH_PORT"] = str(self.health_port)
        if name in grpc_ports:
            env["X0TTA6BL4_GRPC_PORT"] = str(grpc_ports[name])
        network = {"tls://nats:4222": nats_url, "keyvault:50052": f"127.0.0.1:{grpc_ports['keyvault']}",
                   "8080": str(self.health_port), "python": sys.executable}
        self.cmd = [network.get(a, self._move(a, paths)) for a in svc["command"]]
        root = repo_root()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("X0TTA6BL4_")}
        self.env.update(env, PYTHONPATH=os.pathsep.join([str(root), str(root / "libs")]), PYTHONUNBUFFERED="1")
        self.log = self.dir / "log"
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def _move(value: str, paths: dict[str, str]) -> str:
        for old, new in paths.items():
            if value == old or value.startswith(old + "/"):
                return new + value[len(old):]
        return value

    def start(self) -> Container:
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=repo_root(), stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def ready(self) -> bool:
        """/ready answers true; RuntimeError (not "not yet") when the process has exited."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc and self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/ready", timeout=1) as r:
                return bool(json.loads(r.read()).get("ready"))
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2500:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(scaled(15))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


async def test_the_compose_stack_runs_secured_as_declared(generated_compose, secured_nats, tmp_path):
    c = generated_compose.compose()
    grpc = {"keyvault": free_port(), "governance": free_port()}
    containers = {name: Container(name, svc, c, tmp_path / "containers", secured_nats.url, grpc)
                  for name, svc in c["services"].items() if name != "nats"}
    prov = containers.pop("provision")
    try:
        prov.start()
        assert prov.proc is not None and prov.proc.wait(scaled(120)) == 0, prov.tail()
        assert "provisioned" in prov.tail() and "as provisioner" in prov.tail()
        for ct in containers.values():
            ct.start()
        waiting = dict(containers)

        def all_ready() -> bool:
            for name in [n for n, ct in waiting.items() if ct.ready()]:
                del waiting[name]
            return not waiting
        try:
            await eventually(all_ready, timeout=150, interval=0.5)
        except AssertionError:
            tails = [f"--- {ct.name}:\n{ct.tail()}" for ct in waiting.values()]
            raise AssertionError("not ready:\n" + "\n".join(tails)) from None

        ops = generated_compose.dep.secrets
        nc = await connect_once(secured_nats.url, "rehearsal-operator", timeout_s=scaled(10),
                                creds=NatsCredentials.in_secrets(ops.root, "operator"))
        try:
            js = nc.jetstream(timeout=scaled(5))
            telemetry, keys = await js.key_value("telemetry"), await js.key_value("keys")
            nodes = set(deploy.DEMO_NODES)

            async def mesh_reports_and_is_keyed() -> bool:
                reported = set(await telemetry.keys())
                keyed = {k.split(".")[1] for k in await keys.keys() if k.startswith("node.") and k.endswith(".sig")}
                return nodes <= reported and nodes <= keyed
            await eventually(mesh_reports_and_is_keyed, timeout=60, interval=0.5)
        finally:
            await nc.close()
        assert "spiffe://x0tta6bl4.mesh/host/demo" in containers["mesh"].tail()   # its SVID: mTLS to keyvault
        refused = [ln for ln in secured_nats.log.read_text().splitlines() if "Permissions Violation" in ln]
        assert not refused, "\n".join(refused[:10])
    finally:
        for ct in [prov, *containers.values()]:
            ct.stop()
