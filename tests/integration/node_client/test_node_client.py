"""The Node.js examples of docs/integrate.md against a real secured stack (nats-server with TLS, nkeys and
permissions; keyvault; governance over mutual TLS): a governance client registers a voter with its own
ML-DSA-65 key and casts a signed vote (a vote with a changed field is refused), and an audit subscriber reading
stream AUDIT as the audit-reader identity verifies every event's hash, signature and chain link, up to the
governance service's audit event of that vote. nats-server must log no permission violation (stack_factory)."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import pytest
from testkit import scaled

from x0tta6bl4.rpc import svid as svids
from x0tta6bl4.runtime.locate import admin_token

ROOT = pathlib.Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "node"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node absent: the Node.js examples cannot run "
                                                     "(apt-get install nodejs npm; make setup)")


@pytest.fixture(scope="module", autouse=True)
def installed():
    want = json.loads((EXAMPLE / "package.json").read_text())["dependencies"]
    for pkg, version in want.items():
        manifest = EXAMPLE / "node_modules" / pkg / "package.json"
        assert manifest.exists(), f"{manifest} missing: run `make setup` (npm ci in {EXAMPLE})"
        assert json.loads(manifest.read_text())["version"] == version, f"{pkg}: run `make setup` (npm ci)"


def node(script: str, env: dict[str, str], timeout: float) -> tuple[int, list[dict], str]:
    r = subprocess.run([NODE, str(EXAMPLE / script)], capture_output=True, text=True, timeout=timeout,
                       cwd=EXAMPLE, env={**os.environ, "NODE_NO_WARNINGS": "1", **env})
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return r.returncode, lines, r.stderr


def test_node_vote_is_counted_and_its_audit_event_verified(stack_factory, tmp_path):
    stack = stack_factory(services=("keyvault", "governance"), ready_s=90)
    assert stack.secrets is not None
    td = "x0tta6bl4.mesh"
    svid = svids.mint(stack.secrets.root, "operator", "node-client")
    for name, data in (("ca.pem", svid.bundle), ("cert.pem", svid.certificate), ("key.pem", svid.key)):
        (tmp_path / name).write_bytes(data)
    token = admin_token(directory=stack.data_dir)
    assert token, "the governance service wrote no admin token"

    code, out, err = node("governance-client.mjs", {
        "X0_GOV_ADDR": stack.grpc_addr("governance"), "X0_SERVER_NAME": svids.server_name("governance", td),
        "X0_CA": str(tmp_path / "ca.pem"), "X0_CERT": str(tmp_path / "cert.pem"), "X0_KEY": str(tmp_path / "key.pem"),
        "X0_ADMIN_TOKEN": token}, timeout=scaled(60))
    assert code == 0, f"governance-client.mjs failed ({code}):\n{err}"
    steps = {s["step"]: s for s in out}
    assert steps["registered"]["balance"] == 100 and steps["registered"]["key_id"]
    pid = steps["proposed"]["proposal_id"]
    assert pid and steps["proposed"]["state"] == "PROPOSAL_STATE_ACTIVE"
    assert steps["forged"]["refused"] and steps["forged"]["code"] == "UNAUTHENTICATED", steps["forged"]
    voted = steps["voted"]
    assert voted["weight"] == pytest.approx(10.0) and not voted["duplicate"]      # sqrt(100 tokens)
    assert voted["yes"] == pytest.approx(10.0)

    code, events, err = node("audit-subscriber.mjs", {
        "X0_NATS_URL": stack.url, "X0_NATS_CA": str(stack.secrets.ca_cert),
        "X0_NKEY_FILE": str(stack.secrets.nkey_file("audit-reader")), "X0_TRUST": str(stack.secrets.trust_file),
        "X0_WANT_TYPE": "vote.cast", "X0_WANT_SUBJECT": pid, "X0_TIMEOUT_S": str(scaled(30))},
        timeout=scaled(60))
    summary = events[-1] if events and events[-1].get("summary") else {}
    assert code == 0, f"audit-subscriber.mjs exit {code}: {summary}\n{err}\n" + "\n".join(
        json.dumps(e) for e in events if not (e.get("hash_ok") and e.get("link_ok") and e.get("signature_ok")))
    checked = [e for e in events if not e.get("summary")]
    assert summary == {"summary": True, "found": True, "failed": 0, "chains": summary["chains"]}
    assert {e["service"] for e in checked} >= {"governance", "keyvault"}
    assert all(e["hash_ok"] and e["signature_ok"] and e["link_ok"] and e["tamper_detected"] for e in checked)
    vote = next(e for e in checked if e["event_type"] == "vote.cast" and e["subject_id"] == pid)
    # typed details (docs/audit-events.md): strings as they are, numbers as JSON
    assert vote["details"]["choice"] == "YES" and json.loads(vote["details"]["tokens"]) == 100
    assert json.loads(vote["details"]["weight"]) == pytest.approx(10.0)
