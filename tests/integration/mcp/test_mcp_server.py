"""x0tta6bl4-mcp driven by the MCP SDK's own client over stdio, against a real stack (nats-server, the six
services, a mesh host with 3 node agents): tools listed with their destructive hints, mesh status, the twin,
DAO register/create/vote/status, keyvault issue/rotate, edge setup."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

mcp = pytest.importorskip("mcp", reason="pip install 'mcp>=1.20,<2'")
from mcp import ClientSession, StdioServerParameters  # noqa: E402 - after the importorskip above
from mcp.client.stdio import stdio_client  # noqa: E402
from testkit import eventually  # noqa: E402

from x0tta6bl4.runtime.stack import free_port, repo_root  # noqa: E402

EXPECTED = {"mesh_status", "run_mapek_cycle", "simulate_failure", "self_heal_topology", "dao_create_proposal",
            "dao_vote", "dao_status", "pqc_rotate_keys", "edge_setup", "crisis_recovery"}


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def result(r) -> dict:
    assert not r.isError, r.content
    if r.structuredContent is not None:
        sc = r.structuredContent
        return sc.get("result", sc) if set(sc) == {"result"} else sc
    return json.loads(r.content[0].text)


@pytest.mark.timeout(150)
async def test_mcp_tools_over_stdio_against_a_live_stack(stack_factory, tmp_path):
    stack = stack_factory()
    hp = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root() / "libs"), os.environ.get("PYTHONPATH", "")]))
    host = subprocess.Popen([sys.executable, "-m", "x0tta6bl4.mesh.host", "--nats", stack.url, "--topology", "line:3",
                             "--health-port", str(hp), "--telemetry-interval", "0.25"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**env, **stack.mesh_host_env("mesh", ["n0", "n1", "n2"])})
    try:
        # the node agents' host serves /health (liveness) and /ready (readiness) like every service
        def host_ready():
            try:
                return get(f"http://127.0.0.1:{hp}/ready")[1].get("ready")
            except OSError:
                return False
        await eventually(host_ready, 30, 0.2, what="the mesh host's /ready")
        code, body = get(f"http://127.0.0.1:{hp}/health")
        assert code == 200 and body["status"] == "ok" and body["service"] == "mesh-host"
        for sp in stack.procs:
            code, body = get(f"http://127.0.0.1:{sp.health_port}/ready")
            assert code == 200 and body["ready"] is True, sp.name

        # the MCP server speaks on the bus as the operator (its nkey and the CA from X0TTA6BL4_NATS_*)
        server = StdioServerParameters(command=sys.executable, args=["-m", "x0tta6bl4.mcp_server"], env={
            **env, **stack.identity_env("operator"), "X0TTA6BL4_NATS_URL": stack.url,
            "X0TTA6BL4_GOV_ADDR": stack.grpc_addr("governance"),
            "X0TTA6BL4_KEYVAULT_ADDR": stack.grpc_addr("keyvault"), "X0TTA6BL4_DATA_DIR": str(tmp_path / "mcp"),
            "X0TTA6BL4_ADMIN_TOKEN_FILE": str(stack.data_dir / "governance-admin.token")})
        async with stdio_client(server) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert set(tools) >= EXPECTED
            for name in ("run_mapek_cycle", "self_heal_topology", "pqc_rotate_keys", "crisis_recovery"):
                assert "DESTRUCTIVE" in tools[name].description and tools[name].annotations.destructiveHint
            assert tools["mesh_status"].annotations.readOnlyHint

            # mesh status from the live telemetry bucket
            async def three_nodes():
                st = result(await s.call_tool("mesh_status", {}))
                assert st["node_count"] == 3, st
                return st
            st = await eventually(three_nodes, 30, 0.3)
            assert {n["node"] for n in st["nodes"]} == {"n0", "n1", "n2"}
            assert st["mesh"] in ("healthy", "warning", "critical")
            assert all(n["health"] in ("healthy", "warning", "critical") for n in st["nodes"])

            twin = result(await s.call_tool("simulate_failure", {"node": "n1"}))
            assert twin["partitioned"] is True and twin["connectivity_maintained"] < 1.0

            # a cycle on request: the monitor starts it (monitor.rpc.Cycle), the operator only asks
            cyc = result(await s.call_tool("run_mapek_cycle", {"trigger_node": "n1", "wait_s": 2}))
            assert cyc["cycle_id"] and cyc["trigger_node"] == "n1"
            bad = await s.call_tool("run_mapek_cycle", {"trigger_node": "n9", "wait_s": 1})
            assert bad.isError and "unknown node 'n9'" in bad.content[0].text

            # DAO: a voter, a proposal, a signed quadratic vote, the tally
            key = str(tmp_path / "alice.key")
            v = result(await s.call_tool("dao_register_voter", {"voter": "alice", "balance": 100, "key_file": key}))
            assert v["voter"] == "alice"
            p = result(await s.call_tool("dao_create_proposal", {"title": "reroute around n1", "duration_s": 300,
                                                                 "action": "reroute", "target_node": "n1"}))
            vote = result(await s.call_tool("dao_vote", {"proposal_id": p["id"], "voter": "alice", "choice": "yes",
                                                         "tokens": 64, "key_file": key}))
            assert vote["weight"] == pytest.approx(8.0)
            status = result(await s.call_tool("dao_status", {"proposal_id": p["id"]}))
            assert status["id"] == p["id"] and status["tally"]["yes"] == pytest.approx(8.0)
            bad = await s.call_tool("dao_vote", {"proposal_id": p["id"], "voter": "alice", "choice": "yes",
                                                 "tokens": 1000, "key_file": key})
            assert bad.isError and "FAILED_PRECONDITION" in bad.content[0].text

            # keyvault: issue, rotate
            rec = result(await s.call_tool("pqc_issue_identity", {"node": "n1"}))
            assert rec["generation"] == 1
            rot = result(await s.call_tool("pqc_rotate_keys", {"nodes": ["n1"]}))
            assert rot["rotated"][0]["generation"] == 2 and rot["rotated"][0]["sig_key_id"] != rec["sig_key_id"]
            listed = result(await s.call_tool("pqc_list_keys", {}))
            assert any(i["node_id"] == "n1" and i["generation"] == 2 for i in listed["identities"])

            # edge crisis mode: offline provisioning, then recovery merges it with the broker
            e = result(await s.call_tool("edge_setup", {"node": "n2", "topology": "line:3"}))
            assert e["offline"] is True and e["routing_table"] == {"n0": "n1", "n1": "n1"}
            rcv = result(await s.call_tool("crisis_recovery", {"run_cycle": False}))
            assert rcv["synced"] == 1 and rcv["edge"][0]["published"] >= 1
    finally:
        host.terminate()
        host.wait(10)
