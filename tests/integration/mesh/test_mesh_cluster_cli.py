"""``python -m x0tta6bl4.mesh.cluster``: one mesh over two host processes behind one supervisor with
the mesh host's command line and ready line (what ``meshctl mesh up`` starts); DATA crosses the
process boundary, both hosts report telemetry (each as its own bus identity, from ``--secrets``), SIGTERM
stops everything."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

from testkit import eventually, eventually_sync

from x0tta6bl4.mesh.cluster import partition
from x0tta6bl4.mesh.topology import parse_spec
from x0tta6bl4.v1 import events_pb2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:        # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_cluster_cli_runs_one_mesh_over_two_hosts_and_stops_them(stack_factory, tmp_path):
    stack = stack_factory(services=())      # nats-server (secured, provisioned) only
    shards = partition(parse_spec("grid:9"), 2)
    for i, nodes in enumerate(shards):      # each host process: its own identity, its own nodes only
        stack.add_mesh_host(f"mesh-{i}", nodes)
    env = {k: v for k, v in stack.base_env().items() if not k.startswith("X0TTA6BL4_NATS_")}
    proc = subprocess.Popen([sys.executable, "-m", "x0tta6bl4.mesh.cluster", "--nats", stack.url,
                             "--topology", "grid:9", "--hosts", "2", "--traffic", "n0:n8", "--rate", "20",
                             "--data-dir", str(tmp_path), "--secrets", str(stack.secrets.root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"] and len(ready["nodes"]) == 9 and len(ready["links"]) == 12
        hosts = ready["hosts"]
        assert [h["nodes"] for h in hosts] == [["n0", "n1", "n2", "n3", "n4"], ["n5", "n6", "n7", "n8"]]
        assert (tmp_path / "mesh-cluster" / "addresses.json").exists()

        async def watch():
            nc = await stack.connect()
            seen: dict[str, events_pb2.NodeTelemetry] = {}

            async def cb(msg):
                t = events_pb2.NodeTelemetry.FromString(msg.data)
                seen[t.node_id] = t
            await nc.subscribe("mesh.telemetry.*", cb=cb)
            try:
                # n4's links to n5 and n7 cross to the other process: its report counts them once both hosts'
                # HELLOs have been bridged (a report taken earlier, on a busy machine, counts 2)
                await eventually(lambda: len(seen) == 9 and seen["n8"].counters["delivered"] > 5
                                 and seen["n4"].peer_count == 4, 20, 0.1,
                                 what="telemetry from all 9 nodes, n8 receiving DATA from n0, n4 with 4 peers")
            finally:
                await nc.close()
            return seen
        seen = asyncio.run(watch())
        assert set(seen) == set(ready["nodes"])                 # both hosts bridge their nodes
        assert seen["n8"].counters["delivered"] > 5             # n0 (host 0) -> n8 (host 1)
        assert seen["n4"].peer_count == 4                       # n5 and n7 are in the other process
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
    assert rc == 0
    eventually_sync(lambda: not [h["pid"] for h in hosts if _alive(h["pid"])], 5, what="both host processes gone")
