"""Keyvault's root is pinned by configuration: a keyvault whose root is not the pinned one does not serve, and
a governance process without a pinned root does not start (real processes, one line each, exit 2)."""
from __future__ import annotations

import pytest
from testkit import eventually_sync

from x0tta6bl4.keyvault import pin
from x0tta6bl4.pqc import MLDSA65PrivateKey
from x0tta6bl4.runtime.stack import Stack


@pytest.fixture
def bare(tmp_path):
    st = Stack(tmp_path / "pin", services=())
    st.start_nats()
    yield st
    st.stop()


def exits_with_one_line(st: Stack, service: str) -> str:
    sp = st.start_service(service)
    eventually_sync(lambda: sp.proc.poll() is not None, 60, 0.1, what=f"{service} refuses to start")
    out = sp.log_file.read_text(errors="replace")
    st.procs.remove(sp)
    assert sp.proc.returncode == 2 and "Traceback" not in out, out[-2000:]
    return out


def test_keyvault_does_not_serve_a_root_other_than_the_pinned_one(bare):
    rogue = pin.fingerprint(MLDSA65PrivateKey.generate().public_key())
    bare.env["X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT"] = rogue
    out = exits_with_one_line(bare, "keyvault")
    assert f"X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT pins {rogue}" in out
    assert bare.secrets is not None and pin.pinned_fingerprint(bare.secrets.root) in out   # the one it has
    del bare.env["X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT"]
    bare.start_service("keyvault")                    # with the deployment's pin it serves
    bare.wait_ready(60)


def test_governance_needs_a_pinned_keyvault_root(bare):
    bare.env["X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT"] = ""
    out = exits_with_one_line(bare, "governance")
    assert "X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT is not set" in out
    bare.env["X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT"] = "sha256:nothex"
    assert "is not a fingerprint" in exits_with_one_line(bare, "governance")
