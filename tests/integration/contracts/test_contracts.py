"""The contracts checked by their own tooling from the npm registry (tools/contracts, installed by `make setup`
with `npm ci`): docs/asyncapi.yaml by the AsyncAPI CLI's validator, proto/ by buf lint and buf breaking.

buf breaking compares proto/ (as it is in the working tree) with the protos of the branch ``main`` (when the
clone has one and it is not the commit checked out: a change on a branch is judged against main) and with the
commit before HEAD (when the clone has it: a fresh clone with history judges the last commit). A shallow clone
without either has nothing to compare with, and the check says so (skipped with the reason). Documented lint
exceptions: proto/buf.yaml."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
TOOLS = ROOT / "tools" / "contracts"
BIN = TOOLS / "node_modules" / ".bin"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None or shutil.which("npm") is None,
                       reason="node/npm absent: the AsyncAPI validator and buf come from npm (apt-get install nodejs "
                              "npm; make setup)"),
]


@pytest.fixture(scope="module", autouse=True)
def installed():
    for pkg in ("@asyncapi/cli", "@bufbuild/buf"):
        manifest = TOOLS / "node_modules" / pkg / "package.json"
        assert manifest.exists(), f"{manifest} missing: run `make setup` (npm ci in {TOOLS})"
        wanted = json.loads((TOOLS / "package.json").read_text())["dependencies"][pkg]
        assert json.loads(manifest.read_text())["version"] == wanted, f"{pkg}: run `make setup` (npm ci)"


def run(cmd: list[str], tmp_path: pathlib.Path, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    # CI=true and a config with analytics off: the AsyncAPI CLI sends no usage metrics
    cfg = tmp_path / "asyncapi-analytics.json"
    cfg.write_text(json.dumps({"analyticsEnabled": "false", "infoMessageShown": "true", "userID": "test"}))
    env = dict(os.environ, CI="true", ASYNCAPI_METRICS_CONFIG_PATH=str(cfg), NODE_NO_WARNINGS="1",
               BUF_CACHE_DIR=str(tmp_path / "buf-cache"))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=cwd, env=env)


def test_asyncapi_document_is_valid(tmp_path):
    r = run([str(BIN / "asyncapi"), "validate", str(ROOT / "docs" / "asyncapi.yaml"), "--fail-severity", "warn"],
            tmp_path)
    assert r.returncode == 0, f"asyncapi validate failed:\n{r.stdout}\n{r.stderr}"
    assert "is valid" in r.stdout


def test_the_validator_refuses_a_broken_document(tmp_path):
    text = (ROOT / "docs" / "asyncapi.yaml").read_text(encoding="utf-8")
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("$ref: '#/components/messages/NodeTelemetry'",
                                   "$ref: '#/components/messages/NoSuchMessage'", 1))
    r = run([str(BIN / "asyncapi"), "validate", str(broken)], tmp_path)
    assert r.returncode != 0, r.stdout


def test_buf_lint(tmp_path):
    r = run([str(BIN / "buf"), "lint", "proto"], tmp_path)
    assert r.returncode == 0, f"buf lint proto (exceptions: proto/buf.yaml):\n{r.stdout}{r.stderr}"


def test_buf_lint_finds_a_violation(tmp_path):
    copy = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", copy)
    common = copy / "x0tta6bl4" / "v1" / "common.proto"
    common.write_text(common.read_text() + "\nmessage bad_name { string X = 1; }\n")
    r = run([str(BIN / "buf"), "lint", str(copy)], tmp_path)
    assert r.returncode != 0 and "bad_name" in r.stdout


def _git(*args: str) -> str:
    r = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
    return r.stdout.strip() if r.returncode == 0 else ""


def baselines() -> list[str]:
    """What proto/ is compared with: main (when it is not HEAD) and HEAD~1, each when the clone has it."""
    out = []
    head, main = _git("rev-parse", "HEAD"), _git("rev-parse", "--verify", "--quiet", "refs/heads/main")
    if main and main != head:
        out.append("branch=main")
    if _git("rev-parse", "--verify", "--quiet", "HEAD~1^{commit}"):
        out.append("ref=HEAD~1")
    if main and main == head:
        out.append("ref=HEAD")      # the working tree's protos against the last commit
    return out


@pytest.mark.parametrize("i", range(3))
def test_buf_breaking(i, tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git clone: nothing to compare proto/ with")
    refs = baselines()
    if i >= len(refs):
        pytest.skip(f"this clone has {len(refs)} baseline(s) for buf breaking ({', '.join(refs) or 'none'}): "
                    "a shallow clone has no earlier commit")
    r = run([str(BIN / "buf"), "breaking", "proto", "--against", f".git#{refs[i]},subdir=proto"], tmp_path)
    assert r.returncode == 0, f"buf breaking proto against {refs[i]}:\n{r.stdout}{r.stderr}"


def test_buf_breaking_finds_a_breaking_change(tmp_path):
    copy = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", copy)
    events = copy / "x0tta6bl4" / "v1" / "events.proto"
    text = events.read_text()
    assert "string root_cause = 3;" in text
    events.write_text(text.replace("string root_cause = 3;", "bytes root_cause = 3;", 1))
    r = run([str(BIN / "buf"), "breaking", str(copy), "--against", str(ROOT / "proto")], tmp_path)
    assert r.returncode != 0 and "root_cause" in r.stdout, r.stdout + r.stderr
