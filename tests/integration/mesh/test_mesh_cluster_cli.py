"""``python -m x0tta6bl4.mesh.cluster``: one mesh over two host processes behind one supervisor with
the mesh host's command line and ready line (what ``meshctl mesh up`` starts); DATA crosses the
process boundary, both hosts report telemetry, SIGTERM stops everything."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import nats
from testkit import eventually, eventually_sync

from x0tta6bl4.bus.connection import ensure_topology
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


def test_cluster_cli_runs_one_mesh_over_two_hosts_and_stops_them(nats_server, tmp_path):
    async def prep():
        nc = await nats.connect(nats_server.url)
        await ensure_topology(nc.jetstream())
        await nc.close()
    asyncio.run(prep())
    proc = subprocess.Popen([sys.executable, "-m", "x0tta6bl4.mesh.cluster", "--nats", nats_server.url,
                             "--topology", "grid:9", "--hosts", "2", "--traffic", "n0:n8", "--rate", "20",
                             "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"] and len(ready["nodes"]) == 9 and len(ready["links"]) == 12
        hosts = ready["hosts"]
        assert [h["nodes"] for h in hosts] == [["n0", "n1", "n2", "n3", "n4"], ["n5", "n6", "n7", "n8"]]
        assert (tmp_path / "mesh-cluster" / "addresses.json").exists()

        async def watch():
            nc = await nats.connect(nats_server.url)
            seen: dict[str, events_pb2.NodeTelemetry] = {}

            async def cb(msg):
                t = events_pb2.NodeTelemetry.FromString(msg.data)
                seen[t.node_id] = t
            await nc.subscribe("mesh.telemetry.*", cb=cb)
            try:
                await eventually(lambda: len(seen) == 9 and seen["n8"].counters["delivered"] > 5, 20, 0.1,
                                 what="telemetry from all 9 nodes, n8 receiving DATA from n0")
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
