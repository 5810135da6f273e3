"""Rotation from any entry point reaches the running agents (issue #17).

Real nats-server (secured) + real keyvault process + a mesh host with nine nodes under traffic. The
rotation is started by ``meshctl keys rotate --all`` (a subprocess, operator SVID over mutual TLS) and by
the MCP tool ``pqc_rotate_keys``: nobody sends RELOAD_KEYS. The host sees keyvault's rotation requests in
the ``keys`` bucket, generates each node's next generation, has keyvault certify it and switches to it:
every node ends on its new generation (exactly one), no node loses a neighbour at any moment, no DATA is
lost, and the old keys are retired after the overlap."""
from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys

from testkit import FlowWatch, eventually

from x0tta6bl4.mesh.host import MeshHost
from x0tta6bl4.mesh.topology import parse_spec


def _cli_env(stack) -> dict[str, str]:
    return dict(os.environ, X0TTA6BL4_DATA_DIR=str(stack.data_dir), X0TTA6BL4_KEYVAULT_ADDR=stack.kv_addr,
                X0TTA6BL4_NATS_URL=stack.url)


def _meshctl(stack, *args: str) -> subprocess.CompletedProcess:
    meshctl = str(pathlib.Path(sys.executable).parent / "meshctl")
    return subprocess.run([meshctl, *args], env=_cli_env(stack), capture_output=True, text=True, timeout=120)


async def _rotate_and_check(host: MeshHost, rotate) -> None:
    """Run ``rotate()`` (blocking: started in a thread) under n0 -> n8 traffic and check the outcome."""
    rt = host.runtime
    topo = rt.topology
    n8 = rt.agents["n8"]
    old = {n: host.security[n].key_id for n in host.nodes}
    old_gen = {n: host.security[n].identity.generation for n in host.nodes}
    certified = host._certified
    flow = FlowWatch(host, pace_s=0.005).start()   # ~200 packets/s
    await eventually(lambda: flow.delivered() > 50, 15)
    new = await asyncio.to_thread(rotate)            # node id -> new sig key id, from keyvault's answer
    assert set(new) == set(host.nodes), new
    assert all(new[n] != old[n] for n in host.nodes)
    # nobody sent RELOAD_KEYS: the host reloads from the bucket
    await eventually(lambda: {n: host.security[n].key_id for n in host.nodes} == new, 15)
    assert all(host.security[n].identity.generation == old_gen[n] + 1 for n in host.nodes)
    assert host._certified == certified + len(host.nodes)      # the host generated each one, exactly once
    await eventually(lambda: all(host.beacon_verified(n, new[n])[1] == [] for n in host.nodes), 10)
    await eventually(lambda: all(host.security[n].session_keys(p) == (new[n], new[p])
                                 for n in host.nodes for p in topo.neighbours(n)), 10)
    # the old keys are retired after the overlap; traffic goes on over the new ones
    await eventually(lambda: all(host.trust.directory.lookup(old[n]) is None for n in host.nodes), 15)
    await eventually(lambda: all(host.security[n].previous is None for n in host.nodes), 10)
    d = n8.counters["delivered"]
    await eventually(lambda: n8.counters["delivered"] > d + 50, 10)
    await flow.stop_and_check()
    for n in host.nodes:
        ev = [e["kind"] for e in rt.agents[n].recent_events]
        assert "keys.reloaded" in ev and "keys.retired" in ev, ev


def test_meshctl_and_mcp_rotation_reach_the_running_agents(stack, monkeypatch):
    topo = parse_spec("grid:9", seed=0)
    stack.add_mesh_host("rot", topo.nodes)

    def meshctl_rotate() -> dict[str, str]:
        import json
        r = _meshctl(stack, "keys", "rotate", "--all", "--overlap", "2", "--json")
        assert r.returncode == 0, r.stderr
        return {x["node_id"]: x["sig_key_id"] for x in json.loads(r.stdout)}

    def mcp_rotate() -> dict[str, str]:
        from x0tta6bl4.mcp_server import server
        for k, v in _cli_env(stack).items():
            monkeypatch.setenv(k, v)
        out = asyncio.run(server.pqc_rotate_keys(nodes=list(topo.nodes), overlap_s=2.0))
        return {x["node_id"]: x["sig_key_id"] for x in out["rotated"]}

    async def go():
        host = MeshHost(stack.url, topo, keyvault=stack.kv_addr, telemetry_interval=1.0,
                        key_dir=stack.mesh_key_dir("rot"), creds=stack.creds("mesh-host-rot"))
        await host.start()
        try:
            await host.runtime.wait_converged(15)
            await _rotate_and_check(host, meshctl_rotate)
            await _rotate_and_check(host, mcp_rotate)
        finally:
            await host.stop()
    asyncio.run(go())
