"""The seed's Example 2 as written: an operator's DAO proposal of kind topology_update / config_change, made with
skill/scripts/dao-vote.py (or meshctl gov), passes the vote and is EXECUTED: governance signs the action, the
executor applies its parameters on the real mesh, verifies them from the nodes' telemetry, and rolls a harmful
one back. Bad parameters are refused when the proposal is made; reinstate is accepted by both CLIs. The mesh is
started with `meshctl mesh up`, whose progress (a line per step) goes to stderr.
Real secured stack (TLS, nkeys, permissions), real mesh agents, real gRPC, ML-DSA-65 signed votes."""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import pytest
from testkit import eventually, mesh_ready, mesh_telemetry

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.ids import derive_id
from x0tta6bl4.runtime.stack import repo_root
from x0tta6bl4.v1 import events_pb2

SCRIPT = repo_root() / "skill" / "scripts" / "dao-vote.py"
SEED_SCRIPT = "skills/x0tta6bl4-mesh-orchestrator/scripts/dao-vote.py"    # the seed's path (a symlink to skill/)
SERVICES = ("keyvault", "monitor", "executor", "governance")   # no analyzer/planner: only the operator acts
# six operator changes within a minute, all with no target node: the executor's per-node action budget (4 a minute
# against "mesh") would refuse the last ones (as it should: that is its job); this test is about the changes
ENV = {"X0TTA6BL4_WINDOW_S": "1", "X0TTA6BL4_BUDGET_PER_NODE": "0"}


class Operator:
    """The two CLIs as an operator runs them (subprocesses; the stack's data dir gives the operator SVID and the
    ledger admin token)."""

    def __init__(self, stack, key):
        self.stack, self.key = stack, key
        self.env = dict(os.environ, X0TTA6BL4_DATA_DIR=str(stack.data_dir),
                        X0TTA6BL4_GOV_ADDR=stack.grpc_addr("governance"))

    async def run(self, *argv: str) -> subprocess.CompletedProcess:
        return await asyncio.to_thread(subprocess.run, list(argv), capture_output=True, text=True, timeout=120,
                                       env=self.env, cwd=repo_root())

    async def dao(self, *args: str, script: str | None = None) -> subprocess.CompletedProcess:
        return await self.run(sys.executable, script or str(SCRIPT), *args)

    async def meshctl(self, *args: str) -> subprocess.CompletedProcess:
        return await self.run(sys.executable, "-m", "x0tta6bl4.cli.main", *args)

    async def propose_and_pass(self, *args: str, script: str | None = None) -> str:
        """Create a proposal with dao-vote.py ``args`` (signed by alice), vote it through; its id."""
        r = await self.dao(*args, "--duration", "300", "--proposer", "alice", "--key", str(self.key), "--json",
                           script=script)
        assert r.returncode == 0, r.stderr
        pid = json.loads(r.stdout)["id"]
        r = await self.dao("--action", "vote", "--proposal", pid, "--voter", "alice", "--choice", "yes",
                           "--tokens", "100", "--key", str(self.key))
        assert r.returncode == 0, r.stderr
        return pid

    async def outcome(self, js, pid: str, timeout: float = 60) -> tuple[dict, events_pb2.Verification]:
        """The Verification of the proposal's action (read from the MAPEK stream), then the proposal, EXECUTED
        (dao-vote.py --action status)."""
        action_id = derive_id("action", "operator", pid)     # governance's request for an operator's proposal

        async def verification():
            vs = [events_pb2.Verification.FromString(m.data) for m in await read_all(js, subjects.MAPEK_VERIFIED)]
            return next((v for v in vs if v.action_id == action_id), None)
        v = await eventually(verification, timeout, 0.2, what=f"verification of {pid}")

        async def executed():
            r = await self.dao("--action", "status", "--proposal", pid, "--json")
            assert r.returncode == 0, r.stderr
            p = json.loads(r.stdout)
            return p if p["state"] == "PROPOSAL_STATE_EXECUTED" else None
        return await eventually(executed, 20, 0.5, what=f"proposal {pid} executed"), v


async def neighbours(js) -> dict[str, set[str]]:
    return {n: set(t.neighbours) for n, t in (await mesh_telemetry(js)).items()}


@pytest.mark.slow
async def test_operator_changes_pass_the_dao_and_are_executed(stack_factory, tmp_path):
    stack = stack_factory(services=SERVICES, env=ENV)
    op = Operator(stack, tmp_path / "alice.key")
    assert (await op.dao("--action", "keygen", "--key", str(op.key))).returncode == 0
    r = await op.dao("--action", "register", "--voter", "alice", "--balance", "100", "--key", str(op.key))
    assert r.returncode == 0, r.stderr
    # the mesh as an operator starts it: meshctl mesh up, a long command that shows a line per step on stderr
    common = ("--nats", stack.url, "--data-dir", str(stack.data_dir))
    r = await op.meshctl("mesh", "up", "--nodes", "9", "--topology", "grid", "--traffic", "n0:n8", "--detach",
                         *common)
    assert r.returncode == 0, r.stdout + r.stderr
    steps = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert all(re.match(r"^\s*\d+\.\ds ", ln) for ln in steps), steps          # elapsed time, then the step
    found = [next(i for i, ln in enumerate(steps) if w in ln)
             for w in ("checking the stack", "granting 1 mesh host identity", "starting 9 node agents")]
    assert found == sorted(found), steps                                          # in order
    assert "9 nodes, 12 links" in r.stdout and "checking the stack" not in r.stdout   # the result on stdout
    nc = await stack.connect()
    js = nc.jetstream()
    try:
        await eventually(lambda: mesh_ready(js, 9, min_acked=140), 60)   # ~7 s of flow: the executor's baseline

        # bad parameters: refused when the proposal is made, one line naming the parameter, no traceback
        r = await op.dao("--action", "topology_update", "--title", "t", "--duration", "300",
                         "--param", "link=n0,n1", "--param", "state=sideways")
        assert r.returncode == 1 and "state must be down or up" in r.stderr and "Traceback" not in r.stderr
        r = await op.meshctl("gov", "create", "--title", "t", "--duration", "300", "--action", "config_change",
                             "--param", "hello_interval=9")
        assert r.returncode == 1 and "hello_interval must be between 0.05 and 2" in r.stderr, r.stderr
        # reinstate is accepted by both CLIs (it is refused by neither client nor service)
        r = await op.dao("--action", "create", "--kind", "reinstate", "--target", "n4", "--title", "reinstate n4",
                         "--duration", "300")
        assert r.returncode == 0 and "ACTIVE" in r.stdout, r.stderr
        r = await op.meshctl("gov", "create", "--action", "reinstate", "--target", "n4", "--title", "reinstate n4",
                             "--duration", "300")
        assert r.returncode == 0 and "ACTIVE" in r.stdout, r.stderr

        # the seed's command as written, by the seed's path (no parameters): a route refresh at every node,
        # executed and verified
        pid = await op.propose_and_pass("--action", "topology_update", "--title", "Auto-heal: reroute around node-3",
                                        script=SEED_SCRIPT)
        _, v = await op.outcome(js, pid)
        assert v.recovered, list(v.checks_failed)

        # a link out of service: both ends stop listing each other, the flow still delivers
        pid = await op.propose_and_pass("--action", "topology_update", "--title", "take n1-n4 down",
                                        "--param", "link=n1,n4", "--param", "state=down")
        _, v = await op.outcome(js, pid)
        assert v.recovered and not v.rolled_back, list(v.checks_failed)
        assert "link n1,n4 is down at both ends" in v.checks_passed
        nb = await neighbours(js)
        assert "n4" not in nb["n1"] and "n1" not in nb["n4"]

        # and back (meshctl gov create this time, voted with dao-vote.py)
        r = await op.meshctl("gov", "create", "--title", "n1-n4 back", "--duration", "300", "--action",
                             "topology_update", "--param", "link=n1,n4", "--param", "state=up", "--json")
        assert r.returncode == 0, r.stderr
        pid = json.loads(r.stdout)["id"]
        assert (await op.dao("--action", "vote", "--proposal", pid, "--voter", "alice", "--choice", "yes",
                             "--tokens", "100", "--key", str(op.key))).returncode == 0
        _, v = await op.outcome(js, pid)
        assert v.recovered and "link n1,n4 is up at both ends" in v.checks_passed, list(v.checks_failed)

        # config_change: every node's HELLO interval, read back from its telemetry
        pid = await op.propose_and_pass("--action", "config_change", "--title", "slower HELLOs",
                                        "--param", "hello_interval=0.3")
        _, v = await op.outcome(js, pid)
        assert v.recovered and "hello_interval=0.3 in force at 9 node(s)" in v.checks_passed, list(v.checks_failed)
        tel = await mesh_telemetry(js)
        assert {t.counters["config.hello_interval_s"] for t in tel.values()} == {0.3}

        # a change that harms is rolled back: n0 keeps one link (n0-n3) once n0-n1 is down; taking n0-n3 down too
        # cuts the flow's source off -> connectivity and delivery worse -> the executor puts the link back
        pid = await op.propose_and_pass("--action", "topology_update", "--title", "n0-n1 down",
                                        "--param", "link=n0,n1", "--param", "state=down")
        _, v = await op.outcome(js, pid)
        assert v.recovered, list(v.checks_failed)
        await eventually(lambda: mesh_ready(js, 9, min_acked=0), 30)
        pid = await op.propose_and_pass("--action", "topology_update", "--title", "n0-n3 down (cuts n0 off)",
                                        "--param", "link=n0,n3", "--param", "state=down")
        _, v = await op.outcome(js, pid)
        assert not v.recovered and v.rolled_back and v.escalated, v

        async def n0_back():
            nb = await neighbours(js)
            return "n3" in nb["n0"] and "n0" in nb["n3"]
        await eventually(n0_back, 30, 0.2, what="link n0-n3 back after the rollback")
    finally:
        await nc.close()
        down = await op.meshctl("mesh", "down", "--data-dir", str(stack.data_dir))
        assert down.returncode == 0, down.stdout + down.stderr
