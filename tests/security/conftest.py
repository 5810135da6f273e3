"""One secured stack for the attack suite (module scope): the six services on a TLS + nkeys + permissions bus,
a 9-node mesh host (identity mesh-host-mesh: n0..n8) and a second mesh host identity ``other`` (node x0) that
an attacker may hold. Connections are opened per test as the identity the attack needs."""
from __future__ import annotations

import subprocess

import pytest
from testkit import scaled, start_mesh

from x0tta6bl4.runtime.stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("security"),
              ("monitor", "analyzer", "planner", "executor", "governance", "keyvault"), secure=True,
              env={"X0TTA6BL4_MONITOR_COLLECTOR": "off"})
    try:
        s.start(scaled(90))
        s.add_mesh_host("other", ["x0"])          # another host's credential: it owns x0 only
        s.mesh = start_mesh(s)                     # grid:9, DATA n0 -> n8
        yield s
    finally:
        mesh = getattr(s, "mesh", None)
        if mesh is not None:
            mesh.terminate()
            try:
                mesh.wait(10)
            except subprocess.TimeoutExpired:
                mesh.kill()
        s.stop()
