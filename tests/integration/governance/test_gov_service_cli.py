"""The two thin clients (skill/scripts/dao-vote.py and meshctl gov) against the real service."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

from typer.testing import CliRunner

from x0tta6bl4.cli.gov import gov_app
from x0tta6bl4.runtime.stack import free_port, repo_root

SCRIPT = repo_root() / "skill" / "scripts" / "dao-vote.py"


def dao(gov, *args, addr=None):
    # the ledger admin token of the stack is found through its data dir (RegisterVoter)
    return subprocess.run([sys.executable, str(SCRIPT), "--addr", addr or gov.addr, *args],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, X0TTA6BL4_DATA_DIR=str(gov.stack.data_dir)))


def test_dao_vote_script(gov, tmp_path):
    key = tmp_path / "alice.key"
    r = dao(gov, "--action", "keygen", "--key", str(key))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and (tmp_path / "alice.key.pub").stat().st_size == 1952
    registered = dao(gov, "--action", "register", "--voter", "alice-cli", "--balance", "100", "--key", str(key))
    assert registered.returncode == 0
    dao(gov, "--action", "register", "--voter", "bob-cli", "--balance", "100", "--key", str(key))
    r = dao(gov, "--action", "create", "--title", "rotate keys on n2", "--duration", "60", "--kind", "rotate_keys",
            "--target", "n2", "--quorum", "0.01")              # with the admin token found in the data dir
    assert r.returncode == 0, r.stderr
    r = dao(gov, "--action", "create", "--title", "rotate keys on n2", "--duration", "60", "--kind", "rotate_keys",
            "--target", "n2", "--quorum", "0.01", "--proposer", "alice-cli", "--key", str(key), "--json")
    assert r.returncode == 0, r.stderr                         # signed by alice's key
    assert json.loads(r.stdout)["proposer"] == "alice-cli"
    pid = json.loads(r.stdout)["id"]
    r = dao(gov, "--action", "vote", "--proposal", pid, "--voter", "alice-cli", "--choice", "yes", "--tokens", "100",
            "--key", str(key))
    assert r.returncode == 0 and "weight=10" in r.stdout, r.stderr
    r = dao(gov, "--action", "status", "--proposal", pid)
    assert r.returncode == 0 and "yes=10" in r.stdout
    assert pid in dao(gov, "--action", "list", "--state", "active").stdout
    # errors: one line, the gRPC code, no traceback
    r = dao(gov, "--action", "vote", "--proposal", pid, "--voter", "alice-cli", "--choice", "yes", "--tokens", "500",
            "--key", str(key))
    assert r.returncode == 1 and "FAILED_PRECONDITION" in r.stderr and "Traceback" not in r.stderr
    r = dao(gov, "--action", "status", "--proposal", "nope")
    assert r.returncode == 1 and r.stderr.startswith("error: NOT_FOUND")
    r = dao(gov, "--action", "create", "--title", "x" * 201, "--duration", "60")
    assert r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr
    r = dao(gov, "--action", "status", "--proposal", "x", addr=f"127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "cannot reach" in r.stderr and "Traceback" not in r.stderr
    r = dao(gov, "--action", "vote", "--proposal", pid)
    assert r.returncode == 2 and "needs" in r.stderr


def test_meshctl_gov(gov, tmp_path, monkeypatch):
    monkeypatch.setenv("X0TTA6BL4_SECRETS_DIR", str(gov.stack.secrets.root))   # the operator's SVID, not its token
    run = CliRunner().invoke
    key = tmp_path / "v.key"
    r = run(gov_app, ["keygen", "--out", str(key)])
    assert r.exit_code == 0 and r.output.strip().endswith("v.key.pub")
    assert run(gov_app, ["keygen", "--out", str(key)]).exit_code == 1   # never overwrites a key
    a = ["--addr", gov.addr]
    token = gov.stack.data_dir / "governance-admin.token"
    assert run(gov_app, ["register", "carol-cli", "--balance", "64", "--key", str(key) + ".pub", *a]).exit_code == 1
    assert run(gov_app, ["register", "carol-cli", "--balance", "64", "--key", str(key) + ".pub", *a,
                         "--admin-token-file", str(token)]).exit_code == 0
    r = run(gov_app, ["balance", "carol-cli", *a])
    assert r.exit_code == 0 and "balance=64" in r.output
    create = ["create", "--title", "deploy v2", "--duration", "60", "--action", "deploy", "--param", "version=2",
              "--proposer", "carol-cli", "--quorum", "0.01", *a]
    r = run(gov_app, create)                                   # neither key nor token: refused in one line
    assert r.exit_code == 1 and "UNAUTHENTICATED" in r.output and "admin token" in r.output
    r = run(gov_app, [*create, "--admin-token-file", str(token)])   # the operator, by token
    assert r.exit_code == 0, r.output
    r = run(gov_app, [*create, "--key", str(key)])             # carol herself, signed with her key
    assert r.exit_code == 0, r.output
    pid = r.output.split()[0]
    r = run(gov_app, ["vote", pid, "--voter", "carol-cli", "--choice", "no", "--tokens", "16", "--key", str(key), *a])
    assert r.exit_code == 0 and "weight=4" in r.output, r.output
    r = run(gov_app, ["status", pid, "--json", *a])
    assert r.exit_code == 0 and '"no": 4.0' in r.output
    assert pid in run(gov_app, ["list", *a]).output
    r = run(gov_app, ["cancel", pid, "--proposer", "carol-cli", *a])      # no key, no token: refused
    assert r.exit_code == 1 and "UNAUTHENTICATED" in r.output
    r = run(gov_app, ["cancel", pid, "--proposer", "mallory", "--admin-token-file", str(token), *a])
    assert r.exit_code == 1 and "PERMISSION_DENIED" in r.output
    r = run(gov_app, ["cancel", pid, "--proposer", "carol-cli", "--key", str(key), *a])   # signed by carol
    assert r.exit_code == 0 and re.search(r"CANCELED", r.output)
    r = run(gov_app, ["vote", pid, "--voter", "carol-cli", "--choice", "maybe", "--tokens", "1", "--key", str(key), *a])
    assert r.exit_code == 1 and "--choice" in r.output
    r = run(gov_app, ["vote", pid, "--voter", "carol-cli", "--choice", "yes", "--tokens", "1",
                      "--key", str(tmp_path / "missing"), *a])
    assert r.exit_code == 1 and "cannot read key file" in r.output
