from x0tta6bl4.audit.chain import AuditChain, MLDSASigner, verify_chains


def _chain(n=5):
    c = AuditChain("governance", MLDSASigner())
    return c, [c.next("vote.cast", f"p{i}", {"i": i}) for i in range(n)]


def test_intact_chain_verifies():
    _, evs = _chain()
    r = verify_chains(evs)
    assert r.ok and r.events == 5 and r.chains == 1


def test_edit_is_detected():
    _, evs = _chain()
    evs[2].details["i"] = "999"
    r = verify_chains(evs)
    assert not r.ok and any("seq 3: content was edited" in p for p in r.problems)


def test_gap_is_detected():
    _, evs = _chain()
    del evs[1]
    r = verify_chains(evs)
    assert any("gap" in p for p in r.problems) and any("prev_hash" in p for p in r.problems)


def test_resigned_forgery_with_another_key_is_detected():
    _, evs = _chain()
    forger = AuditChain("governance", MLDSASigner(), chain_id=evs[0].chain_id, seq=2, last_hash=evs[1].hash)
    forged = forger.next("vote.cast", "p2", {"i": "evil"})
    evs[2] = forged
    r = verify_chains(evs)
    assert any("unexpected key" in p for p in r.problems)


def test_signer_round_trips_through_its_seed():
    s = MLDSASigner()
    again = MLDSASigner.from_seed(s.seed_bytes_unsafe())
    assert again.public_bytes() == s.public_bytes() and "seed" not in repr(s)
