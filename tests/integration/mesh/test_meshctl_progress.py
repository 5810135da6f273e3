"""Long meshctl commands show progress (issue #18): one line per step on stderr, the result on stdout.
`meshctl mesh up` against a real secured stack, as a real process."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from testkit import scaled

from x0tta6bl4.runtime.stack import repo_root


def meshctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "x0tta6bl4.cli.main", *args], capture_output=True, text=True,
                          cwd=repo_root(), env=dict(os.environ, COLUMNS="200"), timeout=scaled(120))


def test_mesh_up_prints_a_line_per_step_on_stderr(stack_factory):
    stack = stack_factory(services=("monitor",))
    common = ["--nats", stack.url, "--data-dir", str(stack.data_dir)]
    r = meshctl("mesh", "up", "--nodes", "4", "--topology", "line", "--detach", *common)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        steps = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert all(re.match(r"^\s*\d+\.\ds ", ln) for ln in steps), steps      # elapsed time, then the step
        wanted = ["checking the stack", "granting 1 mesh host identity", "starting 4 node agents"]
        found = [next(i for i, ln in enumerate(steps) if w in ln) for w in wanted]
        assert found == sorted(found), steps                                     # in order
        assert "4 nodes, 3 links" in r.stdout and "checking the stack" not in r.stdout   # the result on stdout
    finally:
        down = meshctl("mesh", "down", "--data-dir", str(stack.data_dir))
        assert down.returncode == 0, down.stdout + down.stderr
