"""'Rotate all' rotates the nodes the mesh hosts run, not operators' and voters' identities, unless asked
(issue #17). Real nats-server + keyvault process; the hosts are those of the deployment's hosts.json."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from x0tta6bl4.v1 import keyvault_pb2 as pb


def _gens(s) -> dict[str, int]:
    return {r.node_id: r.generation for r in s.ListIdentities(pb.ListIdentitiesRequest(), timeout=10).records}


def test_rotate_all_leaves_operator_identities_unless_asked(fresh_keyvault):
    kv = fresh_keyvault()
    s = kv.stub
    kv.stack.add_mesh_host("h1", ["m1", "m2"])
    kv.stack.add_mesh_host("h2", ["m3"])
    for n in ("m1", "m2", "m3", "op-alice", "op-bob"):
        s.IssueIdentity(pb.IssueIdentityRequest(node_id=n), timeout=30)

    out = s.Rotate(pb.RotateRequest(all=True, overlap_s=60), timeout=30)
    assert sorted(r.node_id for r in out.records) == ["m1", "m2", "m3"]
    assert _gens(s) == {"m1": 2, "m2": 2, "m3": 2, "op-alice": 1, "op-bob": 1}

    out = s.Rotate(pb.RotateRequest(all=True, overlap_s=60, include_operators=True), timeout=30)
    assert sorted(r.node_id for r in out.records) == ["m1", "m2", "m3", "op-alice", "op-bob"]
    assert _gens(s) == {"m1": 3, "m2": 3, "m3": 3, "op-alice": 2, "op-bob": 2}

    # named nodes are rotated whatever they are
    out = s.Rotate(pb.RotateRequest(node_ids=["op-alice"], overlap_s=60), timeout=30)
    assert [(r.node_id, r.generation) for r in out.records] == [("op-alice", 3)]

    # meshctl: --all is nodes only, --include-operators adds the others
    env = dict(os.environ, X0TTA6BL4_DATA_DIR=str(kv.data_dir), X0TTA6BL4_KEYVAULT_ADDR=kv.addr,
               X0TTA6BL4_NATS_URL=kv.nats_url)
    meshctl = str(pathlib.Path(sys.executable).parent / "meshctl")

    def rotate(*extra: str) -> list[str]:
        r = subprocess.run([meshctl, "keys", "rotate", "--all", "--overlap", "60", "--json", *extra], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return sorted(x["node_id"] for x in json.loads(r.stdout))
    assert rotate() == ["m1", "m2", "m3"]
    assert rotate("--include-operators") == ["m1", "m2", "m3", "op-alice", "op-bob"]
    assert _gens(s) == {"m1": 5, "m2": 5, "m3": 5, "op-alice": 4, "op-bob": 3}
