"""meshctl starts fast (issue #18): `meshctl --help` imports none of the command modules and no heavy library,
`meshctl CMD` imports only what CMD needs. Checked on what a real meshctl process has imported (sys.modules at
exit), not on a timing (bench/meshctl_startup.py measures the time)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer

from x0tta6bl4.cli import main
from x0tta6bl4.runtime.stack import repo_root

pytestmark = pytest.mark.subprocess     # real meshctl processes: what they import

HEAVY = ("torch", "grpc", "cryptography", "nats", "google.protobuf", "networkx", "numpy", "pydantic", "aiohttp",
         "torch_geometric", "oqs")
PROBE = """
import atexit, json, sys
def report():
    heavy = sorted({m for m in sys.modules for h in %r if m == h or m.startswith(h + ".")} )
    cli = sorted(m for m in sys.modules if m.startswith("x0tta6bl4.cli."))
    print("\\nIMPORTED " + json.dumps({"heavy": sorted({m.split(".")[0] if not m.startswith("google.protobuf")
                                                       else "google.protobuf" for m in heavy}), "cli": cli}))
atexit.register(report)
sys.argv = ["meshctl", *%r]
from x0tta6bl4.cli.main import app
app()
"""


def imported(*argv: str) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-c", PROBE % (HEAVY, list(argv))], capture_output=True, text=True,
                       cwd=repo_root(), timeout=120)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("IMPORTED "))
    return json.loads(line.removeprefix("IMPORTED ")), r.stdout


def test_help_imports_no_command_module_and_nothing_heavy():
    got, out = imported("--help")
    assert got == {"heavy": [], "cli": ["x0tta6bl4.cli.main"]}
    for name in main.COMMANDS:                      # every command is listed all the same
        assert f" {name} " in out, name


def test_a_command_imports_only_its_own_module():
    got, out = imported("status", "--help")
    assert got["cli"] == ["x0tta6bl4.cli.common", "x0tta6bl4.cli.main", "x0tta6bl4.cli.ops"]
    # status reads the bus (nats, which imports aiohttp; protobuf); typer itself converts option values with
    # pydantic. Nothing else heavy: no twin (networkx, numpy), no gRPC, no crypto, no model
    assert set(got["heavy"]) <= {"nats", "google.protobuf", "aiohttp", "pydantic"}, got
    assert "meshctl status" in out
    got, _ = imported("gov", "create", "--help")
    assert got["cli"] == ["x0tta6bl4.cli.gov", "x0tta6bl4.cli.main"] and set(got["heavy"]) <= {"pydantic"}, got


@pytest.mark.parametrize("name", list(main.COMMANDS))
def test_the_one_line_help_is_the_command_s_own(name):
    """COMMANDS (what --help shows without importing) says what the command's module says."""
    module, attr, kind, text = main.COMMANDS[name]
    obj = getattr(__import__(module, fromlist=[attr]), attr)
    if kind == "group":
        info = obj.info
        own = info.help or ""
    else:
        own = (obj.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    assert " ".join(own.split()) == text


def test_any_other_use_of_app_registers_every_command():
    command = typer.main.get_command(main.app)
    assert sorted(command.commands) == sorted(main.COMMANDS)       # type: ignore[attr-defined]
