"""Deployments generated into temporary directories (python -m x0tta6bl4.runtime.deploy), shared by the
deploy tests of one module."""
from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass

import pytest
import yaml

from x0tta6bl4.runtime import deploy
from x0tta6bl4.runtime.secrets import Secrets

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
