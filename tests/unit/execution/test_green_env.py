"""A local green mesh host speaks on the bus as the blue host it replaces, never as the executor that starts it."""
from __future__ import annotations

import pytest

from x0tta6bl4.execution.bluegreen_local import DeployError, LocalPlatform
from x0tta6bl4.execution.deploy import HostInfo


def test_green_takes_blues_identity_and_drops_the_executors(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "executor.nk").write_text("SU-executor")
    (creds / "mesh-host-mesh.nk").write_text("SU-blue")
    environ = {"X0TTA6BL4_NATS_URL": "tls://127.0.0.1:4222", "X0TTA6BL4_NATS_NKEY_FILE": str(creds / "executor.nk"),
               "X0TTA6BL4_NATS_IDENTITY": "executor", "X0TTA6BL4_NATS_CA_FILE": str(tmp_path / "ca.pem"),
               "X0TTA6BL4_SIGNING_KEY_FILE": str(tmp_path / "executor.seed"), "PATH": "/usr/bin"}
    env = LocalPlatform.green_env(HostInfo("mesh-v1", bus_identity="mesh-host-mesh"), environ)
    assert env["X0TTA6BL4_NATS_NKEY_FILE"] == str(creds / "mesh-host-mesh.nk")
    assert env["X0TTA6BL4_NATS_IDENTITY"] == "mesh-host-mesh"
    assert env["X0TTA6BL4_NATS_CA_FILE"] == str(tmp_path / "ca.pem")
    assert env["X0TTA6BL4_NATS_URL"] == "tls://127.0.0.1:4222" and env["PATH"] == "/usr/bin"
    assert "X0TTA6BL4_SIGNING_KEY_FILE" not in env

    with pytest.raises(DeployError, match="no blue host reported one"):
        LocalPlatform.green_env(None, environ)
    with pytest.raises(DeployError, match="mesh-host-other"):
        LocalPlatform.green_env(HostInfo("mesh-v1", bus_identity="mesh-host-other"), environ)


def test_green_on_an_open_bus_inherits_no_identity(tmp_path):
    env = LocalPlatform.green_env(None, {"X0TTA6BL4_NATS_URL": "nats://127.0.0.1:4222", "HOME": str(tmp_path)})
    assert env == {"X0TTA6BL4_NATS_URL": "nats://127.0.0.1:4222", "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
