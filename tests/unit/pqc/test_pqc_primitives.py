import hashlib
import pickle

import pytest

from x0tta6bl4.pqc import (
    DecryptionError,
    HybridKemPrivateKey,
    HybridKemPublicKey,
    HybridSigningKey,
    HybridVerifyKey,
    InvalidKey,
    InvalidSignature,
    MLDSA65PrivateKey,
    MLDSA65PublicKey,
    MLKEM768PrivateKey,
    MLKEM768PublicKey,
    PQCError,
    backend_info,
    derive_session_keys,
    key_id,
    transcript_hash,
)


@pytest.fixture(scope="module")
def dsa():
    return MLDSA65PrivateKey.generate()


@pytest.fixture(scope="module")
def kem():
    return MLKEM768PrivateKey.generate()


def flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1 :]


def test_backend_info_reports_default():
    info = backend_info()
    assert info.name == "cryptography"
    assert "ML-KEM-768" in info.algorithms and "ML-DSA-65" in info.algorithms
    assert info.version.startswith("50") or info.version[0].isdigit()
    assert info.as_dict()["hybrids"] == ["X25519+ML-KEM-768", "Ed25519+ML-DSA-65"]


def test_mldsa_sizes_and_round_trip(dsa):
    pk = dsa.public_key()
    assert len(pk.public_bytes()) == 1952
    sig = dsa.sign(b"hello", b"ctx")
    assert len(sig) == 3309
    pk.verify(sig, b"hello", b"ctx")
    MLDSA65PublicKey.from_bytes(pk.public_bytes()).verify(sig, b"hello", b"ctx")
    assert pk.key_id == hashlib.sha256(pk.public_bytes()).hexdigest()[:16] == key_id(pk.public_bytes())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s, m, c: (flip(s, 100), m, c),
        lambda s, m, c: (s, m + b"!", c),
        lambda s, m, c: (s, m, b"other"),
        lambda s, m, c: (s[:-1], m, c),
        lambda s, m, c: (s + b"\0", m, c),
    ],
    ids=["sig-bit", "message", "context", "truncated", "extended"],
)
def test_mldsa_tamper_detected(dsa, mutate):
    sig = dsa.sign(b"msg", b"ctx")
    s, m, c = mutate(sig, b"msg", b"ctx")
    with pytest.raises(InvalidSignature):
        dsa.public_key().verify(s, m, c)


def test_mldsa_seed_export_is_explicit_and_round_trips(dsa):
    seed = dsa.private_bytes_unsafe()
    assert len(seed) == 32
    again = MLDSA65PrivateKey.from_private_bytes(seed)
    assert again.public_key() == dsa.public_key()
    assert seed.hex() not in repr(dsa)
    assert not hasattr(dsa, "private_bytes_raw")
    with pytest.raises(TypeError):
        pickle.dumps(dsa)


def test_mlkem_sizes_round_trip_and_seed(kem):
    ek = kem.public_key().public_bytes()
    assert len(ek) == 1184
    ss, ct = MLKEM768PublicKey.from_bytes(ek).encapsulate()
    assert len(ss) == 32 and len(ct) == 1088
    assert kem.decapsulate(ct) == ss
    seed = kem.private_bytes_unsafe()
    assert len(seed) == 64
    assert MLKEM768PrivateKey.from_private_bytes(seed).decapsulate(ct) == ss


def test_mlkem_tampered_ciphertext_implicit_rejection(kem):
    ss, ct = kem.public_key().encapsulate()
    other = kem.decapsulate(flip(ct, 500))
    assert other != ss and len(other) == 32


@pytest.mark.parametrize("n", [0, 1087, 1089])
def test_mlkem_wrong_length_ciphertext(kem, n):
    with pytest.raises(DecryptionError, match="1088"):
        kem.decapsulate(b"\0" * n)


@pytest.mark.parametrize(
    "loader,size",
    [
        (MLKEM768PublicKey.from_bytes, 1184),
        (MLDSA65PublicKey.from_bytes, 1952),
        (HybridKemPublicKey.from_bytes, 1216),
        (HybridVerifyKey.from_bytes, 1984),
    ],
)
def test_wrong_length_public_keys(loader, size):
    for n in (0, size - 1, size + 1):
        with pytest.raises(InvalidKey, match=str(size)):
            loader(b"\x01" * n)


def test_wrong_length_private_keys_and_type():
    with pytest.raises(InvalidKey, match="32-byte seed"):
        MLDSA65PrivateKey.from_private_bytes(b"\0" * 31)
    with pytest.raises(InvalidKey, match="64-byte seed"):
        MLKEM768PrivateKey.from_private_bytes(b"\0" * 63)
    with pytest.raises(TypeError):
        MLDSA65PublicKey.from_bytes("not bytes")  # type: ignore[arg-type]


def test_malformed_mlkem_public_key_rejected():
    # coefficients >= q fail the FIPS 203 modulus check
    with pytest.raises(InvalidKey):
        MLKEM768PublicKey.from_bytes(b"\xff" * 1184)


def test_all_errors_share_base():
    for e in (InvalidKey, InvalidSignature, DecryptionError):
        assert issubclass(e, PQCError)


def test_hybrid_kem_round_trip_and_sizes():
    k = HybridKemPrivateKey.generate()
    pk = HybridKemPublicKey.from_bytes(k.public_key().public_bytes())
    ss, ct = pk.encapsulate()
    assert len(pk.public_bytes()) == 1216 and len(ct) == 1120 and len(ss) == 64
    assert k.decapsulate(ct) == ss
    assert HybridKemPrivateKey.from_private_bytes(k.private_bytes_unsafe()).decapsulate(ct) == ss
    # tampering with either half changes the combined secret
    assert k.decapsulate(flip(ct, 10)) != ss
    assert k.decapsulate(flip(ct, 1100)) != ss
    with pytest.raises(DecryptionError):
        k.decapsulate(ct[:-1])
    with pytest.raises(DecryptionError, match="X25519"):
        k.decapsulate(ct[:1088] + b"\0" * 32)  # small-order point


def test_hybrid_signature_requires_both_components():
    k = HybridSigningKey.generate()
    other = HybridSigningKey.generate()
    sig = k.sign(b"data", b"c")
    assert len(sig) == 64 + 3309
    vk = HybridVerifyKey.from_bytes(k.public_key().public_bytes())
    vk.verify(sig, b"data", b"c")
    forged_ed = other.sign(b"data", b"c")[:64] + sig[64:]
    with pytest.raises(InvalidSignature, match="Ed25519"):
        vk.verify(forged_ed, b"data", b"c")
    forged_pq = sig[:64] + other.sign(b"data", b"c")[64:]
    with pytest.raises(InvalidSignature, match="ML-DSA-65"):
        vk.verify(forged_pq, b"data", b"c")
    with pytest.raises(InvalidSignature):
        vk.verify(sig, b"data", b"d")
    with pytest.raises(InvalidSignature, match="3373"):
        vk.verify(sig[:-5], b"data", b"c")
    restored = HybridSigningKey.from_private_bytes(k.private_bytes_unsafe())
    vk.verify(restored.sign(b"x"), b"x")


def test_hybrid_components_do_not_verify_standalone():
    k = HybridSigningKey.generate()
    sig = k.sign(b"m")
    with pytest.raises(InvalidSignature):
        k.public_key().mldsa.verify(sig[64:], b"m")


def test_kdf_binds_transcript_and_directions():
    ss = b"\x11" * 64
    t1 = transcript_hash(b"pk1", b"ct1")
    t2 = transcript_hash(b"pk1", b"ct2")
    assert transcript_hash(b"ab", b"c") != transcript_hash(b"a", b"bc")
    k1, k2 = derive_session_keys(ss, t1), derive_session_keys(ss, t2)
    assert k1.initiator_to_responder != k1.responder_to_initiator
    assert k1.initiator_to_responder != k2.initiator_to_responder
    assert derive_session_keys(ss, t1).initiator_to_responder == k1.initiator_to_responder
    assert k1.for_role("initiator") == k1.for_role("responder")[::-1]
    assert k1.initiator_to_responder.hex() not in repr(k1)
    with pytest.raises(ValueError):
        derive_session_keys(b"short", t1)
