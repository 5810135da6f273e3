"""The skill's scripts against a real stack: validate-mesh.py --metrics prints the spec's threshold table from
the live telemetry bucket; --verify fails without a verification and passes after a recovered one lands in
stream MAPEK; the API guide's import map imports."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from testkit import eventually

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.runtime.stack import repo_root
from x0tta6bl4.v1 import events_pb2

SCRIPT = repo_root() / "skill" / "scripts" / "validate-mesh.py"


def run(stack, *args: str, creds: bool = True) -> subprocess.CompletedProcess:
    """validate-mesh.py against the stack, as the operator (its nkey and the CA from X0TTA6BL4_NATS_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("X0TTA6BL4_NATS_")}
    env["X0TTA6BL4_DATA_DIR"] = str(stack.data_dir.parent / "elsewhere")    # no secrets found by accident
    if creds:
        env.update(stack.identity_env("operator"))
    return subprocess.run([sys.executable, str(SCRIPT), "--nats", stack.url, *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_api_guide_import_map_imports():
    text = (repo_root() / "skill" / "references" / "api-guide.md").read_text()
    block = text.split("```python", 1)[1].split("```", 1)[0]
    code = "\n".join(line for line in block.splitlines() if "import *" not in line)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_skill_md_metadata_and_commands():
    text = (repo_root() / "skill" / "SKILL.md").read_text()
    assert re.search(r"^\s+mcp-server: x0tta6bl4-mcp$", text, re.MULTILINE)
    assert "src." not in text                      # only our real modules and commands
    for path in re.findall(r"skill/scripts/[\w.-]+\.py", text):
        assert (repo_root() / path).exists(), path


@pytest.mark.timeout(120)
async def test_validate_mesh_metrics_and_verify(stack_factory):
    stack = stack_factory(services=("monitor",))
    host = subprocess.Popen([sys.executable, "-m", "x0tta6bl4.mesh.host", "--nats", stack.url, "--topology", "line:3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=stack.mesh_host_env("mesh", ["n0", "n1", "n2"]))
    try:
        # no credentials: refused by the broker, one clear line, exit 3
        anonymous = run(stack, "--metrics", creds=False)
        assert anonymous.returncode == 3 and "cannot read telemetry from NATS" in anonymous.stderr
        assert "Traceback" not in anonymous.stderr

        def three_nodes():
            r = run(stack, "--metrics", "--json")
            assert r.returncode != 3 and len(json.loads(r.stdout)["metrics"]["nodes"]) == 3, r.stderr
            return r
        r = await eventually(three_nodes, 30, 0.5)
        rep = json.loads(r.stdout)["metrics"]
        assert {n["node"] for n in rep["nodes"]} == {"n0", "n1", "n2"}
        assert r.returncode == ["green", "yellow", "red"].index(rep["mesh"])
        table = run(stack, "--metrics").stdout
        assert "| p99 latency (ms) | < 40 | 40-100 | > 100 |" in table
        assert "| packet loss (%) | < 1 | 1-5 | > 5 |" in table
        assert re.search(r"^n1\s+(green|yellow|red)", table, re.MULTILINE)

        v = run(stack, "--verify")
        assert v.returncode == 1 and "no mapek.verified yet" in v.stdout

        nc = await stack.connect("executor")          # verifications come from the executor only
        ver = events_pb2.Verification(meta=new_meta("executor", "cycle-test"), action_id="a1", recovered=True,
                                      mttr_ms=1234.0, incident_id="i1", fault_type="node_down",
                                      checks_passed=["n1 rerouted"])
        await Publisher(nc, "executor").publish(subjects.MAPEK_VERIFIED, ver)
        await nc.close()
        v = run(stack, "--verify", "--json")
        out = json.loads(v.stdout)["verify"]
        assert out["verification"]["recovered"] is True and out["verification"]["mttr_ms"] == 1234.0
        assert {c["check"]: c["ok"] for c in out["checks"]}["latest verification recovered"] is True
        assert v.returncode == (0 if out["verified"] else 1)
    finally:
        host.terminate()
        host.wait(10)
