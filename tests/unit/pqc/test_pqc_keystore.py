import os

import pytest

from x0tta6bl4.pqc import CorruptKeystore, Keystore, KeystoreError, MasterKey, NodeIdentity, WrongMasterKey


@pytest.fixture()
def mk():
    return MasterKey(bytes(range(32)))


def test_put_get_load_all_and_restart(tmp_path, mk):
    ks = Keystore(tmp_path / "ks", mk)
    ks.put("a", b"secret-a")
    ks.put("b.kem", b"secret-b")
    ks.put("a", b"secret-a2")  # overwrite atomically
    again = Keystore(tmp_path / "ks", MasterKey(bytes(range(32))))
    assert again.load_all() == {"a": b"secret-a2", "b.kem": b"secret-b"}
    for p in (tmp_path / "ks").iterdir():
        assert b"secret" not in p.read_bytes()
        assert (p.stat().st_mode & 0o777) == 0o600


def test_identity_round_trip(tmp_path, mk):
    ident = NodeIdentity.generate("mesh", "n1", now=0)
    ks = Keystore(tmp_path, mk)
    ks.put_identity("n1", ident)
    back = Keystore(tmp_path, mk).get_identity("n1")
    assert back.signing.key_id == ident.signing.key_id
    back.signing.public_key.verify(back.sign(b"m"), b"m")


def test_wrong_master_key_and_corruption(tmp_path, mk):
    ks = Keystore(tmp_path, mk)
    ks.put("x", b"v")
    with pytest.raises(WrongMasterKey, match="different master key"):
        Keystore(tmp_path, MasterKey(b"\x01" * 32)).get("x")
    path = tmp_path / "x.key"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptKeystore, match="corrupted"):
        ks.get("x")
    path.write_bytes(bytes(blob[:30]))
    with pytest.raises(CorruptKeystore, match="truncated"):
        ks.get("x")
    # a file renamed to another entry name does not decrypt
    ks.put("y", b"v")
    os.replace(tmp_path / "y.key", tmp_path / "z.key")
    with pytest.raises(CorruptKeystore):
        ks.get("z")


def test_names_validated(tmp_path, mk):
    ks = Keystore(tmp_path, mk)
    for bad in ("../x", "A", "", ".hidden", "a/b"):
        with pytest.raises(KeystoreError):
            ks.put(bad, b"v")
    with pytest.raises(KeystoreError, match="does not exist"):
        ks.get("missing")


def test_master_key_parsing_and_redaction(tmp_path):
    raw = os.urandom(32)
    assert MasterKey.from_text(raw.hex())._key == raw
    import base64

    assert MasterKey.from_text(base64.b64encode(raw).decode())._key == raw
    assert MasterKey.from_text(base64.urlsafe_b64encode(raw).decode().rstrip("="))._key == raw
    with pytest.raises(KeystoreError):
        MasterKey.from_text("too-short")
    m = MasterKey(raw)
    assert raw.hex() not in repr(m) and raw.hex() not in str(m)
    p = tmp_path / "master"
    m.write_file(p)
    assert MasterKey.from_file(p)._key == raw
    assert (p.stat().st_mode & 0o777) == 0o600
    with pytest.raises(KeystoreError, match="overwrite"):
        m.write_file(p)
    (tmp_path / "raw").write_bytes(raw)
    assert MasterKey.from_file(tmp_path / "raw")._key == raw
    with pytest.raises(KeystoreError, match="cannot read"):
        MasterKey.from_file(tmp_path / "nope")


def test_leftover_temp_file_is_ignored(tmp_path, mk):
    ks = Keystore(tmp_path, mk)
    ks.put("node", b"v1")
    (tmp_path / ".node.key.123.abcd.tmp").write_bytes(b"X0KS half-written garbage")
    ks2 = Keystore(tmp_path, mk)
    assert ks2.load_all() == {"node": b"v1"}
    assert ks2.cleanup() == [".node.key.123.abcd.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]
