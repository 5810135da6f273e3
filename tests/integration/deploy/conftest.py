"""Deployments generated into temporary directories (python -m x0tta6bl4.runtime.deploy), shared by the
deploy tests of one module."""
from __future__ import annotations

import contextlib
import json
import pathlib
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import yaml
from testkit import eventually_sync

from x0tta6bl4.runtime import deploy
from x0tta6bl4.runtime.secrets import Secrets
from x0tta6bl4.runtime.stack import free_port, nats_server_binary

ROOT = pathlib.Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
NODE_AGENTS = ("worker-1", "Worker.2.Example")


def read_env_file(path: pathlib.Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class MissingValue(Exception):
    pass


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} in every string of a parsed compose file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        have = env.get(name)
        if op.startswith(":") and not have:
            have = None
        if have is not None:
            return have
        if op.endswith("?"):
            raise MissingValue(f"{name}: {arg}")
        return arg if op.endswith("-") else ""
    return _VAR.sub(one, value)


@dataclass
class Generated:
    dep: deploy.Deployment
    env_file: pathlib.Path
    values: dict[str, str]
    lines: list[str]

    def compose(self, values: dict[str, str] | None = None) -> dict:
        """docker-compose.yml with the generated .env's values (or ``values``) substituted; MissingValue
        names a mandatory one that is not set."""
        return interpolate(yaml.safe_load(COMPOSE.read_text()), self.values if values is None else values)


@pytest.fixture(scope="module")
def generated_compose(tmp_path_factory) -> Generated:
    d = tmp_path_factory.mktemp("compose")
    env_file = d / ".env"
    lines = deploy.compose(d / "secrets", env_file)
    dep = deploy.Deployment(Secrets((d / "secrets").resolve()))
    return Generated(dep, env_file, read_env_file(env_file), lines)


@pytest.fixture(scope="module")
def generated_k8s(tmp_path_factory) -> Generated:
    d = tmp_path_factory.mktemp("k8s")
    lines = deploy.kubernetes(d / "secrets", NODE_AGENTS)
    dep = deploy.Deployment(Secrets((d / "secrets").resolve()), kubernetes=True)
    return Generated(dep, d / "none", {}, lines)


# ---- the container layout, laid out in a temporary directory -------------------------------------------------
def rewrite(value, mapping: dict[str, str]):
    """Every string that is a path under one of ``mapping``'s directories, moved to the other one."""
    if isinstance(value, dict):
        return {k: rewrite(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite(v, mapping) for v in value]
    if isinstance(value, str):
        for old, new in mapping.items():
            if value == old or value.startswith(old + "/"):
                return new + value[len(old):]
    return value


def _materialize(ident: deploy.Identity, dest: pathlib.Path) -> dict[str, str]:
    """What the container of ``ident`` sees, laid out in ``dest``; its settings with paths there."""
    dest.mkdir(parents=True)
    for name, path in ident.files.items():
        shutil.copyfile(path, dest / name)
    return {**rewrite(dict(ident.env), {deploy.CONTAINER_DIR: str(dest)}), **ident.values}


@pytest.fixture
def materialize() -> Callable[[deploy.Identity, pathlib.Path], dict[str, str]]:
    return _materialize


@pytest.fixture
def rewrite_paths():
    return rewrite


@dataclass
class Server:
    url: str                    # the first server's
    port: int
    tmp: pathlib.Path
    log: pathlib.Path
    urls: str = ""              # every server's, comma-separated (what the containers' `nats` names)
    logs: tuple[pathlib.Path, ...] = ()


@contextlib.contextmanager
def running_nats(dep: deploy.Deployment, tmp_path: pathlib.Path):
    """The cluster of real nats-servers (deploy.NATS_SERVERS) running the configuration generated for their
    container, with the container paths (credentials, JetStream store) moved into ``tmp_path``, the ports made
    free, each server named as its container's command names it and the routes' hosts (nats-<i>.nats) made
    loopback (the route certificate names 127.0.0.1 too)."""
    nats_dir = tmp_path / "nats-secrets"
    _materialize(dep.nats(), nats_dir)
    base = json.loads((nats_dir / deploy.NATS_CONF).read_text())
    n = deploy.NATS_SERVERS
    ports, routes = [free_port() for _ in range(n)], [free_port() for _ in range(n)]
    assert base["cluster"]["routes"] == [f"nats-route://nats-{i}.nats:{deploy.NATS_CLUSTER_PORT}" for i in range(n)]
    procs, logs = [], []
    for i in range(n):
        conf = rewrite(base, {deploy.CONTAINER_DIR: str(nats_dir), deploy.NATS_STORE: str(tmp_path / f"js-{i}")})
        assert "/run/" not in json.dumps(conf), "a container path the test did not rewrite"
        conf.update(host="127.0.0.1", port=ports[i], http=f"127.0.0.1:{free_port()}")
        conf["cluster"].update(host="127.0.0.1", port=routes[i],
                               routes=[f"nats-route://127.0.0.1:{p}" for j, p in enumerate(routes) if j != i])
        config = tmp_path / f"nats-{i}.conf"
        config.write_text(json.dumps(conf))
        log = tmp_path / ("nats.log" if i == 0 else f"nats-{i}.log")
        logs.append(log)
        with open(log, "wb") as fh:
            procs.append(subprocess.Popen([nats_server_binary(), "-c", str(config), "--name", f"nats-{i}"],
                                          stdout=fh, stderr=subprocess.STDOUT))

    def ready() -> bool:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                text = log.read_text()
                errors = [ln for ln in text.splitlines() if "[FTL]" in ln or "[ERR]" in ln]
                raise AssertionError(f"nats-server {log.name} exited: {' | '.join(errors) or text[-3000:]}")
        return all(b"Server is ready" in log.read_bytes() for log in logs)
    try:
        eventually_sync(ready, timeout=15)
        yield Server(f"tls://127.0.0.1:{ports[0]}", ports[0], tmp_path, logs[0],
                     ",".join(f"tls://127.0.0.1:{p}" for p in ports), tuple(logs))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


@pytest.fixture
def secured_nats(generated_compose, tmp_path):
    """nats-server on the configuration generated for compose."""
    with running_nats(generated_compose.dep, tmp_path) as server:
        yield server


@pytest.fixture
def secured_nats_k8s(generated_k8s, tmp_path):
    """nats-server on the configuration generated for Kubernetes."""
    with running_nats(generated_k8s.dep, tmp_path) as server:
        yield server
