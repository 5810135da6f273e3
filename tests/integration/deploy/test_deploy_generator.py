"""python -m x0tta6bl4.runtime.deploy: idempotent, adds mesh host identities without touching the others,
keeps the rest of .env, and refuses bad input in one line naming it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from testkit import scaled

from x0tta6bl4.runtime import deploy
from x0tta6bl4.runtime.secrets import Secrets, nkey_public
from x0tta6bl4.runtime.stack import repo_root


def run(*args: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    root = repo_root()
    full = {k: v for k, v in os.environ.items() if not k.startswith("X0TTA6BL4_")}
    full.update(env or {},
                PYTHONPATH=os.pathsep.join([str(root), str(root / "libs"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "x0tta6bl4.runtime.deploy", *args], env=full, cwd=cwd,
                          capture_output=True, text=True, timeout=scaled(120))


def nats_users(dep: deploy.Deployment) -> set[str]:
    return {u["nkey"] for u in json.loads(dep.nats_conf.read_text())["accounts"]["X0"]["users"]}


def test_compose_generation_is_idempotent_and_adds_mesh_hosts_only(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("COMPOSE_PROJECT_NAME=mine\nX0TTA6BL4_SECRETS_GID=424242\n")
    r = run("compose", "--out", str(tmp_path / "s"), "--env-file", str(env_file))
    assert r.returncode == 0, r.stderr
    assert "made" in r.stdout and "docker compose up" in r.stdout
    dep = deploy.Deployment(Secrets((tmp_path / "s").resolve()))
    before = {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()}
    users = nats_users(dep)
    env = env_file.read_text()
    assert env.startswith("COMPOSE_PROJECT_NAME=mine\n") and "424242" not in env      # ours replaced, theirs kept
    r = run("compose", "--out", str(tmp_path / "s"), "--env-file", str(env_file))
    assert r.returncode == 0 and "nothing to make" in r.stdout, r.stdout + r.stderr
    assert {p: p.read_bytes() for p in before} == before and env_file.read_text() == env
    r = run("compose", "--out", str(tmp_path / "s"), "--env-file", str(env_file), "--mesh-host", "lab=n20,n21")
    assert r.returncode == 0, r.stderr
    assert "mesh-host-lab" in r.stdout
    lab = dep.secrets.nkey_file("mesh-host-lab")
    assert nats_users(dep) == users | {nkey_public(lab.read_bytes())}
    assert dep.mesh_hosts()["lab"] == ["n20", "n21"] and dep.mesh_hosts()["demo"] == list(deploy.DEMO_NODES)
    for p, data in before.items():          # nothing else was remade: every key and certificate is the same
        if p.name not in ("nats.conf", "auth.json", "hosts.json"):
            assert p.read_bytes() == data, p


@pytest.mark.parametrize(("args", "named"), [
    (["compose", "--mesh-host", "lab"], "--mesh-host 'lab'"),
    (["compose", "--mesh-host", "lab=n1", "--mesh-host", "lab=n2"], "given twice"),
    (["k8s", "--node-agent", "..."], "--node-agent '...'"),
])
def test_bad_input_is_one_line_naming_it(tmp_path, args, named):
    r = run(*args, "--out", str(tmp_path / "s"), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and named in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_provision_without_its_credentials_file_is_one_line(tmp_path):
    r = run("provision", "--timeout", "1", env={"X0TTA6BL4_NATS_NKEY_FILE": str(tmp_path / "missing.nk"),
                                                 "X0TTA6BL4_NATS_URL": "tls://127.0.0.1:1"})
    assert r.returncode != 0 and "X0TTA6BL4_NATS_NKEY_FILE" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_a_file_the_generator_cannot_mount_is_refused_by_name(tmp_path, monkeypatch):
    """When secrets.env_for grows a setting naming a new file, the generator says so instead of mounting
    nothing (and a container failing later)."""
    dep = deploy.generate(tmp_path / "s", kubernetes=False)
    real = Secrets.env_for

    def more(self, identity, *, service=None):
        return {**real(self, identity, service=service), "X0TTA6BL4_NEW_FILE": str(self.root / "new" / "f")}
    monkeypatch.setattr(Secrets, "env_for", more)
    with pytest.raises(deploy.DeployError, match=r"X0TTA6BL4_NEW_FILE=.*does not know how to mount"):
        dep.identity("monitor", "monitor")
