"""`meshctl audit verify` against a real stack: the trail a real service wrote is intact; a forged chain
(whose key the forger pinned in the old `audit_keys` bucket, as in the measured attack) and garbage bytes on
audit.* are each reported, everything else is still verified, and the exit code says something is wrong."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from testkit import eventually, scaled

from x0tta6bl4.audit.chain import EDGE_SERVICE, AuditChain, MLDSASigner, NodeAuditSigner
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.connection import NatsCredentials, connect_once
from x0tta6bl4.bus.permissions import OPERATOR, PROVISIONER
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.keyvault import distribution as dist
from x0tta6bl4.keyvault import pin
from x0tta6bl4.pqc import KeyvaultRoot, MLDSA65PrivateKey, NodeIdentity, records_for_identity
from x0tta6bl4.runtime.stack import Stack, repo_root

pytestmark = pytest.mark.timeout(180)
MESHCTL = pathlib.Path(sys.executable).with_name("meshctl")


def meshctl(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **stack.identity_env(OPERATOR), "COLUMNS": "250"}
    return subprocess.run([str(MESHCTL), *args, "--nats", stack.url, "--data-dir", str(stack.data_dir)],
                          capture_output=True, text=True, env=env, cwd=repo_root(), timeout=scaled(60))


async def connect_as(stack: Stack, identity: str):
    """On a secured bus, a connection with ``identity``'s credentials (an attacker who holds them)."""
    assert stack.secrets is not None
    creds = NatsCredentials.in_secrets(stack.secrets.root, identity) if stack.bus_secured else None
    return await connect_once(stack.url, f"test-{identity}", creds=creds)


async def test_forged_chain_and_garbage_are_reported_and_the_rest_verified(stack_factory):
    stack = stack_factory(services=("monitor",), env={"X0TTA6BL4_MONITOR_COLLECTOR": "off",
                                                       "X0TTA6BL4_DISCOVER_HOSTS": "false"})
    op = await connect_as(stack, OPERATOR)
    try:
        for _ in range(2):                             # the monitor audits each operator cycle request
            await op.request(subjects.MONITOR_CYCLE, b"", timeout=scaled(10))

        async def monitor_events() -> int:
            n = len(await read_all(op.jetstream(), subjects.audit_of("monitor"), stream=subjects.STREAM_AUDIT))
            return n if n >= 3 else 0
        legit = await eventually(monitor_events, 20, 0.2)
    finally:
        await op.close()

    clean = meshctl(stack, "audit", "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "1 chain(s) intact" in clean.stdout and "Traceback" not in clean.stderr

    # the attack: a self-consistent governance chain signed by the forger's key, its key "pinned" in the old
    # audit_keys bucket (which verification no longer reads), plus garbage on audit.*
    forger = AuditChain("governance", MLDSASigner())
    admin = await connect_as(stack, PROVISIONER)
    try:
        from nats.js.api import KeyValueConfig
        kv = await admin.jetstream().create_key_value(KeyValueConfig(bucket="audit_keys"))
        await kv.put(f"governance.{forger.signer.key_id}", forger.signer.public_bytes())
    finally:
        await admin.close()
    gov = await connect_as(stack, "governance")       # a leaked service credential is not its signing key
    try:
        pub = Publisher(gov, "governance")
        for ev in (forger.next("proposal.created", "p-evil"), forger.next("proposal.closed", "p-evil",
                                                                           {"state": "PASSED"})):
            await pub.publish(subjects.audit("governance", ev.event_type), ev)
        ack = await gov.jetstream().publish(subjects.audit("governance", "noise"), b"\x08\xff\xff\xff garbage")
    finally:
        await gov.close()

    r = meshctl(stack, "audit", "verify", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "audit trail NOT intact" in r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is False and report["counts"] == {"garbage": 1, "unknown_key": 2}
    [garbage] = report["unreadable"]["examples"]["garbage"]
    assert garbage.startswith(f"stream seq {ack.seq} on audit.governance.noise: does not parse as an AuditEvent")
    by_chain = {c["chain_id"]: c for c in report["results"]}
    forged = by_chain[forger.chain_id]
    assert forged["verified"] == 0 and forged["counts"] == {"unknown_key": 2}
    assert f"key {forger.signer.key_id} is not in the trust bundle" in forged["examples"]["unknown_key"][0]
    [monitor] = [c for c in report["results"] if c["service"] == "monitor"]
    assert monitor["counts"] == {} and monitor["verified"] == monitor["events"] >= legit
    assert report["verified"] == monitor["events"]

    human = meshctl(stack, "audit", "verify")
    assert human.returncode == 1
    assert f"chain {forger.chain_id} (governance): 2 event(s), 0 verified; unknown_key 2" in human.stdout
    assert "unreadable entries: 1 event(s), 0 verified; garbage 1 (stream seq" in human.stdout
    assert "1 chain(s) intact" in human.stdout


async def test_edge_chains_are_trusted_only_through_records_signed_by_the_pinned_keyvault_root(stack_factory):
    """An edge node's chain verifies when its signing key has a record signed by the keyvault root the
    deployment pinned (secrets/keyvault/root.pub, X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT); a node without one
    is an unknown key; with another root pinned, edge chains are reported unverified, never trusted."""
    stack = stack_factory(services=("monitor",), env={"X0TTA6BL4_MONITOR_COLLECTOR": "off",
                                                       "X0TTA6BL4_DISCOVER_HOSTS": "false"})
    assert stack.secrets is not None
    root = KeyvaultRoot(MLDSA65PrivateKey.from_private_bytes((stack.secrets.root / pin.ROOT_KEY_FILE).read_bytes()))
    known = NodeIdentity.generate("x0tta6bl4.mesh", "n4", now=time.time())
    stranger = NodeIdentity.generate("x0tta6bl4.mesh", "n8", now=time.time())

    admin = await connect_as(stack, PROVISIONER)      # keyvault's records, as keyvault writes them
    try:
        kv = await admin.jetstream().key_value(dist.BUCKET)
        for rec in records_for_identity(known):
            await kv.put(dist.key_key(rec.key_id), root.sign(rec).to_bytes())
    finally:
        await admin.close()
    chains = {}
    op = await connect_as(stack, OPERATOR)            # edge sync publishes as the operator
    try:
        pub = Publisher(op, EDGE_SERVICE)
        for ident in (known, stranger):
            node = ident.spiffe_id.node_id
            c = chains[node] = AuditChain(EDGE_SERVICE, NodeAuditSigner(ident), chain_id=f"edge-{node}-s1")
            for i in range(2):
                ev = c.next("decision.local", "n5", {"published_by": node, "i": i})
                await pub.publish(subjects.audit(EDGE_SERVICE, ev.event_type), ev)
    finally:
        await op.close()

    r = meshctl(stack, "audit", "verify", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    by_chain = {c["chain_id"]: c for c in json.loads(r.stdout)["results"]}
    assert by_chain[chains["n4"].chain_id]["verified"] == 2 and by_chain[chains["n4"].chain_id]["counts"] == {}
    unknown = by_chain[chains["n8"].chain_id]
    assert unknown["counts"] == {"unknown_key": 2} and unknown["verified"] == 0
    assert "has no keyvault-signed record" in unknown["examples"]["unknown_key"][0]

    other = "sha256:" + "0" * 64                        # another root pinned: nothing of the edge is trusted
    r = meshctl(stack, "audit", "verify", "--json", "--keyvault-root", other)
    assert r.returncode == 0, r.stdout + r.stderr
    edge = [c for c in json.loads(r.stdout)["results"] if c["service"] == EDGE_SERVICE]
    assert len(edge) == 2 and all(c["unverified"].startswith(f"no keyvault root matching the pinned {other}")
                                  for c in edge)
    human = meshctl(stack, "audit", "verify", "--keyvault-root", other)
    assert f"chain {chains['n4'].chain_id} (edge): 2 event(s) unverified: no keyvault root matching" in human.stdout
