"""meshctl secrets init (idempotent, says what it made, 0600 secrets, one trust domain) and how clients find their
bus credentials (runtime/locate.py: the environment first, else the stack's secrets directory)."""
from __future__ import annotations

import json
import stat

import pytest
from typer.testing import CliRunner

from x0tta6bl4.bus import permissions
from x0tta6bl4.bus.connection import CredentialsError, NatsCredentials
from x0tta6bl4.cli.main import app
from x0tta6bl4.runtime import locate
from x0tta6bl4.runtime.secrets import Secrets, SecretsError
from x0tta6bl4.runtime.secrets import init as init_secrets

NATS_ENV = ("X0TTA6BL4_NATS_NKEY_FILE", "X0TTA6BL4_NATS_CA_FILE", "X0TTA6BL4_NATS_IDENTITY", "X0TTA6BL4_SECRETS_DIR")


@pytest.fixture
def clean_env(monkeypatch):
    for k in NATS_ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def meshctl(*args: str):
    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert "Traceback" not in r.output
    return r


def test_secrets_init_makes_everything_once_and_says_what(tmp_path, clean_env):
    d = tmp_path / "secrets"
    r = meshctl("secrets", "init", "--dir", str(d), "--trust-domain", "lab.mesh")
    assert r.exit_code == 0, r.output
    for made in ("ca/ca.pem", "nats/server.pem", "trust.json", "creds/operator.nk", "creds/audit-reader.nk",
                 "signing/planner.seed"):
        assert made in r.output and (d / made).is_file(), made
    s = Secrets(d).check()
    assert s.trust().trust_domain == "lab.mesh"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for secret in (s.ca_key, s.server_key, s.nkey_file("operator"), s.signing_file("executor")):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    users = json.loads(s.auth_file.read_text())["accounts"]["X0"]["users"]
    assert len(users) == len(permissions.table().identities)          # one nkey user per identity, no anonymous
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != ".lock"}

    again = meshctl("secrets", "init", "--dir", str(d))                # idempotent: the existing domain is kept
    assert again.exit_code == 0 and "nothing to make" in again.output and "lab.mesh" in again.output
    assert {p: p.read_bytes() for p in before} == before

    other = meshctl("secrets", "init", "--dir", str(d), "--trust-domain", "other.mesh")
    assert other.exit_code != 0 and "belong to trust domain 'lab.mesh', not 'other.mesh'" in other.output
    bad = meshctl("secrets", "init", "--dir", str(tmp_path / "x"), "--trust-domain", "spiffe://x")
    assert bad.exit_code != 0 and "--trust-domain 'spiffe://x'" in bad.output


def test_mesh_host_identities_are_added_and_withdrawn(tmp_path):
    s = init_secrets(tmp_path / "secrets")
    nkey = s.add_mesh_host("rack-1", ["n1", "n0", "n1"])
    assert nkey == s.nkey_file("mesh-host-rack-1") and nkey.is_file()
    assert s.hosts() == {"rack-1": ["n0", "n1"]}
    user = [u for u in json.loads(s.auth_file.read_text())["accounts"]["X0"]["users"]
            if "mesh.telemetry.n0" in u["permissions"]["publish"]["allow"]]
    assert len(user) == 1 and "mesh.telemetry.n2" not in user[0]["permissions"]["publish"]["allow"]
    assert s.remove_mesh_host("rack-1") and s.hosts() == {} and not nkey.exists()
    assert not s.remove_mesh_host("rack-1")
    with pytest.raises(ValueError, match="no nodes"):
        s.add_mesh_host("empty", [])


def test_credentials_come_from_the_environment_first_then_the_stacks_secrets(tmp_path, clean_env):
    data = tmp_path / "var"
    s = init_secrets(data / "secrets")
    creds = locate.credentials("operator", data)
    assert creds == NatsCredentials("operator", s.nkey_file("operator"), s.ca_cert)
    assert creds.options()["inbox_prefix"] == "_INBOX_operator" and "tls" in creds.options()
    assert locate.credentials("operator", tmp_path / "nothing-here") is None       # an open bus

    # what meshctl up recorded wins over <data dir>/secrets
    elsewhere = init_secrets(tmp_path / "elsewhere")
    (data / "stack.json").write_text(json.dumps({"secrets_dir": str(elsewhere.root)}))
    assert locate.credentials("audit-reader", data).nkey_file == elsewhere.nkey_file("audit-reader")

    clean_env.setenv("X0TTA6BL4_NATS_NKEY_FILE", str(s.nkey_file("audit-reader")))
    clean_env.setenv("X0TTA6BL4_NATS_CA_FILE", str(s.ca_cert))
    assert locate.credentials("operator", data).identity == "audit-reader"         # the environment first
    clean_env.setenv("X0TTA6BL4_NATS_NKEY_FILE", str(tmp_path / "missing.nk"))
    with pytest.raises(CredentialsError, match=r"X0TTA6BL4_NATS_NKEY_FILE=.*missing\.nk.*no such readable file"):
        locate.credentials("operator", data)


def test_a_missing_secrets_file_is_named(tmp_path):
    s = init_secrets(tmp_path / "secrets")
    s.server_key.unlink()
    with pytest.raises(SecretsError, match=r"nats/server.key is missing \(run: meshctl secrets init --dir "):
        s.check()
