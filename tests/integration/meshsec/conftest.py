"""A real nats-server (secured) plus the keyvault service for the mesh-security tests (one per module)."""
from __future__ import annotations

import pytest
from testkit import violations

from x0tta6bl4.runtime.stack import Stack, free_port


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Keyvault with a fast retirement tick; ``stack.kv_addr`` is its gRPC address."""
    port = free_port()
    st = Stack(tmp_path_factory.mktemp("meshsec"), services=("keyvault",), secure=True,
               env={"X0TTA6BL4_GRPC_PORT": str(port), "X0TTA6BL4_RETIRE_TICK_S": "0.1"})
    st.start(30)
    st.kv_addr = f"127.0.0.1:{port}"
    yield st
    st.stop()
    assert not violations(st), "nats-server refused a legitimate flow"
