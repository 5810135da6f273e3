"""make chaos, short (issue #21): ``bench/chaos.py`` for 1.5 minutes on a 9-node grid - the secured stack,
real service processes and UDP agents, random kills / loss / flaps / congestion on the flow's relays, a
NATS server restart and a ``kill -9`` of a service in between - and its invariants: every incident
the loop acted on resolved or escalated, every audit chain intact (nothing lost across the restarts),
no dead letter without a reason. False actions, missed repairs and MTTR are printed (the soak's report)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from x0tta6bl4.runtime.stack import repo_root

pytestmark = pytest.mark.slow


def test_chaos_soak_short(tmp_path):
    out_file = tmp_path / "chaos.json"
    # --probation-wait 0: a short run does not wait for reinstatements between faults
    proc = subprocess.run([sys.executable, "bench/chaos.py", "--minutes", "1.5", "--nodes", "9", "--hold", "20",
                           "--probation-wait", "0", "--json", str(out_file)],
                          cwd=repo_root(), capture_output=True, text=True, timeout=900)
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    assert out_file.exists(), f"the soak did not finish (exit {proc.returncode}): {proc.stderr[-2000:]}"
    out = json.loads(out_file.read_text())
    assert out["faults"] >= 2, out                      # faults were injected and removed in turn
    assert {d["kind"] for d in out["disruptions"]} == {"nats_restart", "service_kill"}, out["disruptions"]
    inv = out["invariants"]
    assert inv["every incident resolved or escalated"], out["unresolved_incidents"]
    assert inv["no audit event lost"], out["audit"]
    assert inv["no dead letter unexplained"], out["unexplained_dead_letters"]
    assert out["audit"]["events"] > 0 and out["incidents_acted_on"] >= 1, out
