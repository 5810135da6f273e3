"""Audit chain verification: only keys of the trust bundle (services) or keyvault-signed records (edge nodes)
are trusted; forged, edited, unknown-key, broken-link, gap, duplicate and garbage entries are each reported
and everything else is still verified."""
from __future__ import annotations

import time

import pytest

from x0tta6bl4.audit.chain import (
    BROKEN_LINK,
    DUPLICATE,
    EDGE_SERVICE,
    EDITED,
    FORGED,
    GAP,
    GARBAGE,
    NO_KEYVAULT_ROOT,
    UNKNOWN_KEY,
    AuditChain,
    MLDSASigner,
    NodeAuditSigner,
    ServiceAuditSigner,
    parse_event,
    trusted_keys,
    verify_chains,
)
from x0tta6bl4.keyvault.distribution import KeyDirectory, key_key
from x0tta6bl4.pqc import KeyvaultRoot, NodeIdentity, records_for_identity
from x0tta6bl4.pqc.identity import KeyPurpose
from x0tta6bl4.trust import ROLE_APPROVE, ROLE_AUDIT, ROLES, Signer, TrustBundle
from x0tta6bl4.v1 import events_pb2

SIGNERS = {name: Signer.generate(name) for name in ("governance", "planner")}
BUNDLE = TrustBundle("x0tta6bl4.mesh", tuple(s.trusted(ROLES[n]) for n, s in SIGNERS.items()))
KEYS = trusted_keys(BUNDLE)


def chain(service: str = "governance", n: int = 5) -> tuple[AuditChain, list[events_pb2.AuditEvent]]:
    c = AuditChain(service, ServiceAuditSigner(SIGNERS[service]))
    return c, [c.next("vote.cast", f"p{i}", {"i": i}) for i in range(n)]


def test_a_chain_signed_by_the_services_key_in_the_bundle_verifies():
    _, evs = chain()
    _, other = chain("planner", 3)
    r = verify_chains(evs + other, KEYS)
    assert r.ok and r.chains == 2 and r.events == 8 and r.verified == 8 and not r.unverified
    # the audit signature is the trust bundle's audit role (ML-DSA-65 over the hash, empty context)
    BUNDLE.verify(ROLE_AUDIT, evs[0].key_id, evs[0].hash, evs[0].signature, owners=["governance"])


def test_an_edit_is_reported_and_the_rest_still_verifies():
    _, evs = chain()
    evs[2].details["i"] = "999"
    r = verify_chains(evs, KEYS)
    res = r.results[evs[0].chain_id]
    assert not r.ok and res.counts == {EDITED: 1}
    assert res.examples(EDITED) == ["seq 3: content does not match its hash (edited)"]
    assert res.verified == 4                    # the next event still links to the hash the edited one kept


def test_a_gap_is_reported():
    _, evs = chain()
    del evs[1]
    r = verify_chains(evs, KEYS)
    res = r.results[evs[0].chain_id]
    assert res.counts == {GAP: 1} and res.examples(GAP) == ["seq 3: event 2 is missing"]
    assert res.verified == 4 and any("gap" in p for p in r.problems)


def test_a_forged_chain_with_its_own_key_is_not_trusted_whatever_it_brings():
    """The measured attack: a self-consistent chain whose key the forger published (formerly into the
    `audit_keys` bucket). It carries its public key, links and signs correctly, and is still refused."""
    _, good = chain()
    forger = AuditChain("governance", MLDSASigner())
    forged = [forger.next("proposal.closed", "p1", {"state": "PASSED"}) for _ in range(4)]
    r = verify_chains(good + forged, KEYS)
    bad = r.results[forger.chain_id]
    assert bad.counts == {UNKNOWN_KEY: 4} and bad.verified == 0
    assert f"key {forger.signer.key_id} is not in the trust bundle" in bad.examples(UNKNOWN_KEY)[0]
    assert len(bad.examples(UNKNOWN_KEY)) == 3           # the first examples, the count says how many
    assert r.results[good[0].chain_id].ok and r.verified == 5 and not r.ok


def test_another_services_key_cannot_sign_for_a_service():
    c = AuditChain("governance", ServiceAuditSigner(SIGNERS["planner"]))
    ev = c.next("proposal.closed", "p1")
    res = verify_chains([ev], KEYS).results[c.chain_id]
    assert res.counts == {UNKNOWN_KEY: 1}
    assert "belongs to planner, not to governance" in res.examples(UNKNOWN_KEY)[0]


def test_a_key_without_the_audit_role_is_refused():
    s = Signer.generate("governance")
    bundle = TrustBundle("x0tta6bl4.mesh", (s.trusted((ROLE_APPROVE,)),))
    c = AuditChain("governance", ServiceAuditSigner(s))
    res = verify_chains([c.next("x")], trusted_keys(bundle)).results[c.chain_id]
    assert res.counts == {UNKNOWN_KEY: 1} and "not trusted to sign audit events" in res.examples(UNKNOWN_KEY)[0]


def test_a_signature_that_does_not_verify_is_forged():
    _, evs = chain()
    evs[1].signature = MLDSASigner().sign(evs[1].hash)       # names the governance key, signed by another
    res = verify_chains(evs, KEYS).results[evs[0].chain_id]
    assert res.counts == {FORGED: 1} and res.examples(FORGED)[0].startswith("seq 2: bad signature")
    assert res.verified == 4


def test_an_event_replaced_by_the_forgers_breaks_the_link_after_it():
    _, evs = chain()
    forger = AuditChain("governance", MLDSASigner(), chain_id=evs[0].chain_id, seq=2, last_hash=evs[1].hash)
    evs[2] = forger.next("vote.cast", "p2", {"i": "evil"})
    res = verify_chains(evs, KEYS).results[evs[0].chain_id]
    assert res.counts == {UNKNOWN_KEY: 1, BROKEN_LINK: 1}
    assert res.examples(BROKEN_LINK) == ["seq 4: prev_hash is not the hash of event 3"]
    assert res.verified == 3                    # 1, 2 and 5; 4 is signed but does not link


def test_an_injected_copy_at_a_taken_sequence_number_is_the_odd_one_out():
    _, evs = chain()
    forger = AuditChain("governance", MLDSASigner(), chain_id=evs[0].chain_id, seq=2, last_hash=evs[1].hash)
    injected = forger.next("vote.cast", "p2", {"i": "evil"})
    res = verify_chains([injected, *evs], KEYS).results[evs[0].chain_id]
    assert res.counts == {UNKNOWN_KEY: 1} and res.verified == 5 and res.events == 6


def test_a_replayed_signed_event_is_a_duplicate():
    _, evs = chain()
    again = events_pb2.AuditEvent()
    again.CopyFrom(evs[2])
    res = verify_chains([*evs, again], KEYS).results[evs[0].chain_id]
    assert res.counts == {DUPLICATE: 1} and res.verified == 5


@pytest.mark.parametrize("data, why", [
    (b"\x08\xff\xff\xff garbage", "does not parse"),
    (b"", "missing"),
    (events_pb2.Anomaly(node_id="n1").SerializeToString(), "missing"),
])
def test_garbage_is_not_an_audit_event(data, why):
    with pytest.raises(ValueError, match=why):
        parse_event(data)


def test_garbage_is_reported_and_everything_else_verified():
    _, evs = chain()
    r = verify_chains(evs, KEYS, garbage=["stream seq 7 on audit.x.y: does not parse", "stream seq 9 on audit.x.z: ?"])
    assert not r.ok and r.counts == {GARBAGE: 2} and r.verified == 5 and r.events == 7
    assert r.unreadable.examples(GARBAGE)[0].startswith("stream seq 7")
    assert r.results[evs[0].chain_id].ok


def test_without_trusted_keys_a_chain_is_only_self_consistent_and_says_so():
    _, evs = chain()
    r = verify_chains(evs)
    assert r.ok and [u.unverified for u in r.unverified] == ["no trusted keys given"]
    evs[3].signature = MLDSASigner().sign(evs[3].hash)
    assert verify_chains(evs).counts == {FORGED: 1}


# ---- edge chains: signed by a node key, trusted through keyvault-signed records ----------------------------
def edge_chain(identity: NodeIdentity, published_by: str | None = None) -> tuple[AuditChain, list]:
    c = AuditChain(EDGE_SERVICE, NodeAuditSigner(identity), chain_id=f"edge-{identity.spiffe_id.node_id}-s1")
    return c, [c.next("decision.local", "n3", {"published_by": published_by or identity.spiffe_id.node_id})
               for _ in range(3)]


def directory_with(root: KeyvaultRoot, *identities: NodeIdentity) -> KeyDirectory:
    d = KeyDirectory(root.public_key())
    for ident in identities:
        for rec in records_for_identity(ident):
            d.apply(key_key(rec.key_id), root.sign(rec).to_bytes())
    return d


def test_edge_chains_are_unverified_without_a_pinned_keyvault_root():
    node = NodeIdentity.generate("x0tta6bl4.mesh", "n4", now=time.time())
    _, evs = edge_chain(node)
    r = verify_chains(evs, KEYS)
    assert r.ok and [u.unverified for u in r.unverified] == [NO_KEYVAULT_ROOT]


def test_edge_chains_verify_against_keyvault_signed_records():
    root = KeyvaultRoot.generate()
    node = NodeIdentity.generate("x0tta6bl4.mesh", "n4", now=time.time())
    stranger = NodeIdentity.generate("x0tta6bl4.mesh", "n8", now=time.time())
    keys = trusted_keys(BUNDLE, directory_with(root, node))
    _, evs = edge_chain(node)
    r = verify_chains(evs, keys)
    assert r.ok and r.verified == 3 and not r.unverified

    c, unknown = edge_chain(stranger)                         # no record: not trusted
    res = verify_chains(unknown, keys).results[c.chain_id]
    assert res.counts == {UNKNOWN_KEY: 3} and "has no keyvault-signed record" in res.examples(UNKNOWN_KEY)[0]

    c, borrowed = edge_chain(node, published_by="n8")         # a node's key speaks only for that node
    res = verify_chains(borrowed, keys).results[c.chain_id]
    assert res.counts == {UNKNOWN_KEY: 3} and "is node n4's" in res.examples(UNKNOWN_KEY)[0]


def test_a_record_signed_by_another_root_never_enters_the_directory():
    from x0tta6bl4.pqc import PQCError
    root, fake_root = KeyvaultRoot.generate(), KeyvaultRoot.generate()
    node = NodeIdentity.generate("x0tta6bl4.mesh", "n4", now=time.time())
    d = KeyDirectory(root.public_key())
    [sig] = [r for r in records_for_identity(node) if r.purpose == KeyPurpose.SIGNING]
    with pytest.raises(PQCError):
        d.apply(key_key(sig.key_id), fake_root.sign(sig).to_bytes())
    _, evs = edge_chain(node)
    assert verify_chains(evs, trusted_keys(BUNDLE, d)).counts == {UNKNOWN_KEY: 3}


def test_the_signer_round_trips_through_its_seed():
    s = MLDSASigner()
    again = MLDSASigner.from_seed(s.seed_bytes_unsafe())
    assert again.public_bytes() == s.public_bytes() and "seed" not in repr(s)


# ---- a service signs its chain with its signing key, which the trust bundle must list ---------------------
def _settings(tmp_path, signer: Signer | None, bundle: TrustBundle | None):
    from x0tta6bl4.config import CommonSettings
    kw = {}
    if signer is not None:
        (tmp_path / "key.seed").write_bytes(signer.seed_bytes_unsafe())
        kw["signing_key_file"] = tmp_path / "key.seed"
    if bundle is not None:
        (tmp_path / "trust.json").write_text(bundle.to_json())
        kw["trust_file"] = tmp_path / "trust.json"
    return CommonSettings(data_dir=tmp_path, **kw)


def test_a_service_without_its_signing_key_does_not_start(tmp_path):
    from x0tta6bl4.bus.app import Service
    from x0tta6bl4.config import ConfigError
    with pytest.raises(ConfigError, match="X0TTA6BL4_SIGNING_KEY_FILE is not set: governance needs its signing key"):
        Service("governance", _settings(tmp_path, None, BUNDLE)).audit_signer()


def test_a_service_whose_key_the_bundle_does_not_list_for_it_does_not_start(tmp_path):
    from x0tta6bl4.bus.app import Service
    from x0tta6bl4.config import ConfigError
    stranger = Signer.generate("governance")
    with pytest.raises(ConfigError, match=f"key {stranger.key_id} of governance is not in the trust bundle"):
        Service("governance", _settings(tmp_path, stranger, BUNDLE)).audit_signer()
    with pytest.raises(ConfigError, match=r"lists key .* for planner .* not for governance"):
        Service("governance", _settings(tmp_path, SIGNERS["planner"], BUNDLE)).audit_signer()


def test_a_services_chain_is_signed_with_its_signing_key(tmp_path):
    from x0tta6bl4.bus.app import Service
    signer = Service("governance", _settings(tmp_path, SIGNERS["governance"], BUNDLE)).audit_signer()
    c = AuditChain("governance", signer)
    evs = [c.next("service.started", "governance") for _ in range(2)]
    assert signer.key_id == SIGNERS["governance"].key_id and verify_chains(evs, KEYS).verified == 2
