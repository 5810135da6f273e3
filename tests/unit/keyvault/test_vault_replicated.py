"""The keyvault domain as replicas use it: changes planned on copies, a cache that only moves
forward by store revision, and the sealed form of shared values. No I/O."""
from __future__ import annotations

import pytest

from x0tta6bl4.keyvault import AlreadyExists, FailedPrecondition, Vault
from x0tta6bl4.keyvault.distribution import entry_all, entry_changes, entry_kv
from x0tta6bl4.pqc import CorruptKeystore, KeyvaultRoot, MasterKey, WrongMasterKey


class Clock:
    t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def root():
    return KeyvaultRoot.generate()


def vault(root, clock=None) -> Vault:
    return Vault(root, "mesh", clock=clock or Clock())


def test_plans_do_not_touch_the_cache_until_learned(root):
    v = vault(root)
    e = v.plan_issue("n1")
    assert "n1" not in v.entries and v.revision("n1") == 0
    assert v.learn("n1", e, 5) and v.get("n1") is e and e.version == 1
    step = v.plan_rotate("n1", 30)
    assert v.get("n1").generation == 1 and step.entry.generation == 2 and step.entry.version == 2
    assert v.get("n1").current.status == "active"      # the cached entry was not changed by the plan
    assert not v.learn("n1", step.entry, 5)            # not newer than the cache: ignored
    assert v.learn("n1", step.entry, 7) and v.get("n1").generation == 2
    assert not v.learn("n1", e, 6)                     # an older revision never goes back
    with pytest.raises(AlreadyExists):
        v.plan_issue("n1")


def test_two_replicas_racing_end_in_one_chain(root):
    """Replica A and B plan a rotation on the same revision; only one compare-and-set can win,
    the loser learns the winner's entry and plans again on it."""
    store: dict[str, tuple[int, bytes]] = {}
    seq = [0]

    def cas(key, data, last):
        cur = store.get(key, (0, b""))[0]
        if cur != last:
            return None
        seq[0] += 1
        store[key] = (seq[0], data)
        return seq[0]

    a, b = vault(root), vault(root)
    e = a.plan_issue("n1")
    rev = cas("n1", a.encode_entry(e), 0)
    a.learn("n1", e, rev)
    b.learn("n1", b.decode_entry(store["n1"][1]), rev)
    sa, sb = a.plan_rotate("n1", 30), b.plan_rotate("n1", 30)
    ra = cas("n1", a.encode_entry(sa.entry), a.revision("n1"))
    rb = cas("n1", b.encode_entry(sb.entry), b.revision("n1"))
    assert ra and rb is None                            # B lost
    a.learn("n1", sa.entry, ra)
    rev, data = store["n1"]
    b.learn("n1", b.decode_entry(data), rev)           # B re-reads and plans again
    sb = b.plan_rotate("n1", 30)
    rb = cas("n1", b.encode_entry(sb.entry), b.revision("n1"))
    assert rb
    final = a.decode_entry(store["n1"][1])
    assert final.generation == 3 and final.retiring.sig_key_id == sa.new.sig_key_id
    assert final.retired[0].generation == 1 and final.version == 3


def test_revoke_retire_and_round_trip(root):
    clock = Clock()
    v = vault(root, clock)
    v.learn("n1", v.plan_issue("n1"), 1)
    v.learn("n1", v.plan_rotate("n1", 10).entry, 2)
    assert v.due() == [] and v.plan_retire("n1") is None
    clock.t += 11
    assert v.due() == ["n1"]
    ret = v.plan_retire("n1")
    assert ret.generation.generation == 1 and v.get("n1").retiring is not None
    v.learn("n1", ret.entry, 3)
    assert v.get("n1").retiring is None and v.get("n1").retired[0].status == "retired"
    rev = v.plan_revoke("n1", "stolen")
    assert rev.revoked and not v.get("n1").revoked
    v.learn("n1", rev, 4)
    assert v.plan_revoke("n1") is None                 # idempotent: nothing to write
    with pytest.raises(FailedPrecondition):
        v.plan_rotate("n1", 10)
    back = v.decode_entry(v.encode_entry(v.get("n1")))
    assert back.to_json() == v.get("n1").to_json() and back.version == 4
    reqs = v.with_request("r1", ["n1"])
    assert v.done_request("r1") is None and v.decode_requests(v.encode_requests(reqs)) == reqs


def test_record_changes_per_transition(root):
    v = vault(root)
    e1 = v.plan_issue("n1")
    puts, dels = entry_changes(None, e1)
    assert puts == entry_kv(e1) and dels == []
    v.learn("n1", e1, 1)
    e2 = v.plan_rotate("n1", 10).entry
    v.learn("n1", e2, 2)
    e3 = v.plan_rotate("n1", 10).entry                 # retires generation 1 early
    puts, dels = entry_changes(e2, e3)
    assert set(dels) == {f"key.{k}" for k in e1.current.key_ids}
    assert f"key.{e3.current.sig_key_id}" in puts and f"key.{e2.current.sig_key_id}" not in puts
    want, gone = entry_all(e3)
    assert want == entry_kv(e3) and set(gone) == set(dels) | {"rot.n1"}      # no request pending: rot.* deleted


def test_sealed_values_are_bound_to_name_and_master_key():
    mk = MasterKey.generate()
    blob = mk.seal("keyvault/node.n1", b"private bundle")
    assert b"private bundle" not in blob and mk.unseal("keyvault/node.n1", blob) == b"private bundle"
    with pytest.raises(CorruptKeystore):
        mk.unseal("keyvault/node.n2", blob)             # moved to another key
    with pytest.raises(WrongMasterKey, match=r"JetStream bucket 'keyvault' entry 'keyvault/node\.n1' was written "
                                             r"under a different master key"):
        MasterKey.generate().unseal("keyvault/node.n1", blob, what="JetStream bucket 'keyvault' entry")
    with pytest.raises(CorruptKeystore, match="truncated"):
        mk.unseal("x", blob[:20])
