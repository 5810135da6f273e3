"""Seed Example 4 as written: `meshctl edge setup edge-7 --offline` for a node that is not in the known topology
(a new edge node joins the mesh through --attach, default the topology's first node), its routes preloaded,
then `meshctl edge sync edge-7` merges its offline state into the real secured stack (edge identity only)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from testkit import scaled, violations

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.permissions import EDGE
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.edge.node import EdgeError, routing_table
from x0tta6bl4.runtime.stack import repo_root
from x0tta6bl4.v1 import events_pb2

pytestmark = pytest.mark.timeout(180)


def edge_only_secrets(stack, dest):
    """A secrets directory with the edge identity's nkey and the CA and nothing else."""
    (dest / "creds").mkdir(parents=True)
    (dest / "ca").mkdir()
    shutil.copy(stack.secrets.nkey_file(EDGE), dest / "creds" / f"{EDGE}.nk")
    shutil.copy(stack.secrets.ca_cert, dest / "ca" / "ca.pem")
    return dest


def meshctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "x0tta6bl4.cli.main", *args], capture_output=True, text=True,
                          cwd=repo_root(), env=env or dict(os.environ), timeout=scaled(60))


def test_routes_of_a_node_new_to_the_topology():
    assert routing_table("edge-7", "grid:9") == {f"n{i}": "n0" for i in range(9)}
    table = routing_table("edge-7", "grid:9", attach=["n0", "n8"])
    assert table["n0"] == "n0" and table["n8"] == "n8" and table["n1"] == "n0" and table["n7"] == "n8"
    assert routing_table("edge-7", None, attach=["n2"]) == {"n2": "n2"}
    assert routing_table("n4", "grid:9")["n0"] in ("n1", "n3")          # a node of the topology: its own paths
    with pytest.raises(EdgeError, match="--attach n42: not in topology"):
        routing_table("edge-7", "grid:9", attach=["n42"])
    with pytest.raises(EdgeError, match="its links are known"):
        routing_table("n4", "grid:9", attach=["n0"])


async def test_edge_setup_for_a_new_node_name_then_sync(tmp_path, stack_factory):
    d = tmp_path / "edge"
    r = meshctl("edge", "setup", "edge-7", "--offline", "--topology", "grid:9", "--data-dir", str(d), "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["node"] == "edge-7" and st["offline"] is True and st["routes"] == 9
    assert st["spiffe_id"].endswith("/node/edge-7")
    r = meshctl("edge", "route", "edge-7", "n8", "--data-dir", str(d))
    assert r.returncode == 0 and "next hop n0" in r.stdout, r.stdout + r.stderr
    # the seed's form, no topology at all, works too; a bad attachment is one line naming it
    assert meshctl("edge", "setup", "edge-9", "--offline", "--data-dir", str(d)).returncode == 0
    r = meshctl("edge", "setup", "edge-8", "--offline", "--topology", "grid:9", "--attach", "n99",
                "--data-dir", str(d))
    assert r.returncode == 1 and "--attach n99" in r.stderr and "Traceback" not in r.stderr

    stack = stack_factory(services=())               # a secured, provisioned nats-server
    env = {k: v for k, v in os.environ.items() if not k.startswith("X0TTA6BL4_NATS_")}
    env["X0TTA6BL4_SECRETS_DIR"] = str(edge_only_secrets(stack, tmp_path / "edge-secrets"))
    r = meshctl("edge", "sync", "edge-7", "--nats", stack.url, "--data-dir", str(d), "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["node"] == "edge-7" and report["published_ids"]
    assert not violations(stack)
    nc = await stack.connect()
    try:
        published = [events_pb2.AuditEvent.FromString(m.data)
                     for m in await read_all(nc.jetstream(), "audit.edge.>", stream=subjects.STREAM_AUDIT)]
        assert {e.details["edge_event_id"] for e in published} == set(report["published_ids"])
        assert any(e.event_type == "edge.provisioned" and e.subject_id == "edge-7" for e in published), \
            [(e.event_type, e.subject_id) for e in published]
    finally:
        await nc.close()
