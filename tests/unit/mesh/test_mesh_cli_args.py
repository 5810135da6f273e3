"""meshctl mesh helpers: topology specs and the mesh.json state file."""
from __future__ import annotations

import json
import os

import pytest
import typer
from testkit import unused_pid

from x0tta6bl4.cli.mesh import _routes_cell, mesh_file, running_mesh, topology_spec
from x0tta6bl4.v1 import events_pb2


def test_topology_spec():
    assert topology_spec("grid", 50) == "grid:50"
    assert topology_spec("rgg", 20) == "rgg:20"
    assert topology_spec("ring:8", 50) == "ring:8"
    with pytest.raises(typer.Exit):
        topology_spec("torus", 9)


def test_running_mesh_removes_stale_state(tmp_path):
    assert running_mesh(tmp_path) is None
    mesh_file(tmp_path).write_text(json.dumps({"pid": unused_pid(), "mode": "loopback", "nodes": ["n0"]}))
    assert running_mesh(tmp_path) is None and not mesh_file(tmp_path).exists()
    mesh_file(tmp_path).write_text("{not json")
    assert running_mesh(tmp_path) is None and not mesh_file(tmp_path).exists()
    mesh_file(tmp_path).write_text(json.dumps({"pid": os.getpid(), "mode": "netns", "nodes": ["n0"]}))
    assert running_mesh(tmp_path)["mode"] == "netns"


def test_routes_cell_groups_by_next_hop():
    t = events_pb2.NodeTelemetry(node_id="n0")
    for d, h in {"n1": "n1", "n10": "n1", "n2": "n1", "n3": "n3"}.items():
        t.routes[d] = h
    assert _routes_cell(t, wide=True) == "n1,n2,n10→n1; n3→n3"
    for i in range(40):
        t.routes[f"x{i}"] = "n3"
    assert len(_routes_cell(t, wide=False)) == 48
