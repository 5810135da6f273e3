"""Each service process stops at start with one clear line (exit 2, no traceback) on a bad setting.
(The settings themselves are unit-tested in tests/unit/foundation/test_config.py.)"""
import subprocess
import sys

import pytest

from x0tta6bl4.runtime.stack import repo_root


@pytest.mark.parametrize("service", ["monitor", "analyzer", "planner", "executor", "governance", "keyvault"])
def test_service_stops_at_start_with_one_line_on_bad_config(service):
    env = {"X0TTA6BL4_MAX_DELIVER": "lots", "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", f"services.{service}.main"], cwd=repo_root(), env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "X0TTA6BL4_MAX_DELIVER='lots'" in lines[0] and "Traceback" not in p.stderr
