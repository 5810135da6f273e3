"""meshctl answers bad input and an absent stack with one clear line, never a traceback."""
import subprocess
import sys

import pytest

from x0tta6bl4.runtime.stack import repo_root


@pytest.mark.parametrize("args,needle", [
    (["status", "--nats", "nats://127.0.0.1:1"], "cannot reach NATS"),
    (["audit", "tail", "--nats", "nats://127.0.0.1:1"], "cannot reach NATS"),
    (["cycle", "list", "--nats", "nats://127.0.0.1:1"], "cannot reach NATS"),
    (["trace", "no-such-cycle", "--data-dir", "/nonexistent"], "no spans"),
    (["up", "--replicas", "99"], "--replicas"),
])
def test_one_line_errors(args, needle):
    p = subprocess.run([sys.executable, "-m", "x0tta6bl4.cli.main", *args], cwd=repo_root(), capture_output=True,
                       text=True, timeout=60)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert needle in out, out
    assert "Traceback" not in out
