"""The deployments rehearsed without a Docker engine or a cluster (neither runs on our build machines): every
container of docker-compose.yml, and every pod of deploy/k8s/ (plus a generated node agent), is started as a
process exactly as its file declares it - its command, its environment (Kubernetes: the ConfigMaps, field
and $(VAR) references resolved), only the files it mounts - after the provisioning step (the compose
`provision` container, the Kubernetes Job), against a real nats-server running the generated configuration.
Only what a container runtime provides is translated: mount paths (/run/secrets/x0tta6bl4, /var/lib/x0tta6bl4,
/topology) become directories of the test, the network names (`nats`, `keyvault`) and the fixed ports become
free loopback ports. Every service and mesh host must become ready with no permission violation on the bus,
the mesh's nodes must report through their own host identity, and their keys must come from keyvault; the
dashboard must have read the bus (its /ready) with its own identity, and show every node."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml
from nats.js.errors import NoKeysError
from testkit import eventually, scaled

from x0tta6bl4.bus.connection import NatsCredentials, connect_once
from x0tta6bl4.runtime import deploy
from x0tta6bl4.runtime.stack import free_port, repo_root

pytestmark = pytest.mark.slow
CD = deploy.CONTAINER_DIR
K8S = pathlib.Path(__file__).resolve().parents[3] / "deploy" / "k8s"


def move(value: str, paths: dict[str, str]) -> str:
    for old, new in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        if value == old or value.startswith(old + "/"):
            return new + value[len(old):]
    return value


class Proc:
    """One container as a process: ``mounts`` maps its mount paths to directories of the test."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], mounts: dict[str, pathlib.Path],
                 nats_url: str, grpc: dict[str, int], log: pathlib.Path):
        self.name, self.log = name, log
        paths = {k: str(v) for k, v in mounts.items()}
        self.health_port = free_port()
        env = {k: move(v, paths) for k, v in env.items()}
        assert env["X0TTA6BL4_NATS_URL"] == "tls://nats:4222", name
        env.update(X0TTA6BL4_NATS_URL=nats_url, X0TTA6BL4_HEALTH_PORT=str(self.health_port))
        if env.get("X0TTA6BL4_DASHBOARD_PORT") == "8080":      # the dashboard serves /ready on its own port
            env.update(X0TTA6BL4_DASHBOARD_PORT=str(self.health_port), X0TTA6BL4_DASHBOARD_HOST="127.0.0.1")
        if name in grpc:
            env["X0TTA6BL4_GRPC_PORT"] = str(grpc[name])
        network = {"tls://nats:4222": nats_url, "keyvault:50052": f"127.0.0.1:{grpc['keyvault']}",
                   "8080": str(self.health_port), "python": sys.executable}
        self.cmd = [network.get(a, move(a, paths)) for a in command]
        root = repo_root()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("X0TTA6BL4_")}
        self.env.update(env, PYTHONPATH=os.pathsep.join([str(root), str(root / "libs")]), PYTHONUNBUFFERED="1")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Proc:
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


# ---- compose ---------------------------------------------------------------------------------------------
def compose_procs(c: dict, tmp: pathlib.Path, nats_url: str, grpc: dict[str, int]) -> dict[str, Proc]:
    out = {}
    for name, svc in c["services"].items():
        if name.startswith("nats"):  # the servers the fixture runs (their mounted files are checked statically)
            continue
        secrets, data = tmp / name / "secrets", tmp / name / "data"
        secrets.mkdir(parents=True)
        for s in svc.get("secrets", []):      # only the files the file mounts into this container
            target = pathlib.PurePosixPath(s["target"])
            assert str(target.parent) == CD, (name, s)
            shutil.copyfile(c["secrets"][s["source"]]["file"], secrets / target.name)
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        out[name] = Proc(name, svc["command"], env, {CD: secrets, "/var/lib/x0tta6bl4": data}, nats_url, grpc,
                         tmp / name / "log")
    return out


# ---- Kubernetes ------------------------------------------------------------------------------------------
def k8s_procs(docs: list[dict], tmp: pathlib.Path, nats_url: str, grpc: dict[str, int]) -> dict[str, Proc]:
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    out = {}
    for d in docs:
        if d["kind"] not in ("Deployment", "Job", "StatefulSet") or d["metadata"]["name"] in ("nats", "x0tta6bl4-edge"):
            continue     # nats-server is the fixture's; the edge node needs its offline setup (tests/integration/edge)
        name = d["metadata"]["name"]
        spec = d["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        vols: dict[str, pathlib.Path] = {}
        for v in spec["volumes"]:
            path = tmp / name / "volumes" / v["name"]
            path.mkdir(parents=True)
            if "secret" in v:
                for k, b64 in by[("Secret", v["secret"]["secretName"])]["data"].items():
                    (path / k).write_bytes(base64.b64decode(b64))
            elif "configMap" in v:
                for k, text in by[("ConfigMap", v["configMap"]["name"])]["data"].items():
                    (path / k).write_text(text)
            vols[v["name"]] = path
        mounts = {m["mountPath"]: vols[m["name"]] for m in c["volumeMounts"]}
        env: dict[str, str] = {}
        for ref in c.get("envFrom", []):
            env.update(by[("ConfigMap", ref["configMapRef"]["name"])]["data"])
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "fieldRef" in e["valueFrom"]:
                assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
                env[e["name"]] = f"{name}-0"
            else:
                ref = e["valueFrom"]["configMapKeyRef"]
                env[e["name"]] = by[("ConfigMap", ref["name"])]["data"][ref["key"]]
        command = [re.sub(r"\$\((\w+)\)", lambda m, env=env: env[m.group(1)], a) for a in c["command"]]
        key = "provision" if d["kind"] == "Job" else name
        out[key] = Proc(key, command, env, mounts, nats_url, grpc, tmp / name / "log")
    return out


def k8s_docs(gen) -> list[dict]:
    files = sorted(K8S.glob("*.yaml")) + sorted((gen.dep.root / "manifests").glob("*.yaml"))
    return [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]


# ---- the rehearsal -----------------------------------------------------------------------------------------
async def rehearse(procs: dict[str, Proc], server, secrets_root: pathlib.Path, meshes: dict[str, set[str]]) -> None:
    prov = procs.pop("provision")
    try:
        prov.start()
        assert prov.proc is not None and prov.proc.wait(scaled(120)) == 0, prov.tail()
        assert "provisioned" in prov.tail() and "as provisioner" in prov.tail()
        for p in procs.values():
            p.start()
        waiting = dict(procs)

        def all_ready() -> bool:
            for name in [n for n, p in waiting.items() if p.ready()]:
                del waiting[name]
            return not waiting
        try:
            await eventually(all_ready, timeout=150, interval=0.5)
        except AssertionError:
            tails = [f"--- {p.name}:\n{p.tail()}" for p in waiting.values()]
            raise AssertionError("not ready:\n" + "\n".join(tails)) from None
        nc = await connect_once(server.urls, "rehearsal-operator", timeout_s=scaled(10),
                                creds=NatsCredentials.in_secrets(secrets_root, "operator"))
        try:
            js = nc.jetstream(timeout=scaled(5))
            telemetry, keys = await js.key_value("telemetry"), await js.key_value("keys")
            nodes = set().union(*meshes.values())

            async def meshes_report_and_are_keyed() -> bool:
                try:
                    reported = set(await telemetry.keys())
                    keyed = {k.split(".")[1] for k in await keys.keys()
                             if k.startswith("node.") and k.endswith(".sig")}
                except NoKeysError:         # an empty bucket: nothing reported or keyed yet
                    return False
                return nodes <= reported and nodes <= keyed
            await eventually(meshes_report_and_are_keyed, timeout=60, interval=0.5)
        finally:
            await nc.close()
        dash = procs["dashboard"]    # the dashboard reads the nodes' reports with its own credentials

        def dashboard_shows_every_node() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{dash.health_port}/api/state", timeout=5) as r:
                return nodes <= {n["id"] for n in json.loads(r.read())["mesh"]["nodes"]}
        await eventually(dashboard_shows_every_node, timeout=30, interval=0.5, what="every node on the dashboard")
        for name in meshes:      # each mesh host got its SVID (mutual TLS to keyvault) for its own identity
            assert "spiffe://x0tta6bl4.mesh/host/" in procs[name].tail(), procs[name].tail()
        refused = [ln for log in server.logs for ln in log.read_text().splitlines() if "Permissions Violation" in ln]
        assert not refused, "\n".join(refused[:10])
    finally:
        for p in [prov, *procs.values()]:
            p.stop()


async def test_compose_runs_secured_as_declared(generated_compose, secured_nats, tmp_path):
    grpc = {"keyvault": free_port(), "governance": free_port()}
    procs = compose_procs(generated_compose.compose(), tmp_path / "containers", secured_nats.urls, grpc)
    assert set(procs) == {"provision", "mesh", "dashboard", *deploy.SERVICES}
    await rehearse(procs, secured_nats, generated_compose.dep.root, {"mesh": set(deploy.DEMO_NODES)})


async def test_kubernetes_runs_secured_as_declared(generated_k8s, secured_nats_k8s, tmp_path):
    grpc = {"keyvault": free_port(), "governance": free_port()}
    procs = k8s_procs(k8s_docs(generated_k8s), tmp_path / "pods", secured_nats_k8s.urls, grpc)
    # one generated node agent is enough here (the other one is the same template)
    procs.pop("node-agent-worker-2-example")
    assert set(procs) == {"provision", "x0tta6bl4-mesh", "node-agent-worker-1", "dashboard", *deploy.SERVICES}
    await rehearse(procs, secured_nats_k8s, generated_k8s.dep.root,
                   {"x0tta6bl4-mesh": set(deploy.DEMO_NODES), "node-agent-worker-1": {"worker-1"}})
