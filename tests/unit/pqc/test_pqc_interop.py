"""Interop with the pure-Python FIPS 203/204 reference-style implementations."""

import pytest

from x0tta6bl4.pqc import InvalidSignature, MLDSA65PrivateKey, MLDSA65PublicKey, MLKEM768PrivateKey, MLKEM768PublicKey

ml_kem = pytest.importorskip("kyber_py.ml_kem")
ml_dsa = pytest.importorskip("dilithium_py.ml_dsa")
ML_KEM_768 = ml_kem.ML_KEM_768
ML_DSA_65 = ml_dsa.ML_DSA_65


def test_mldsa_seed_gives_same_public_key_as_reference():
    ours = MLDSA65PrivateKey.generate()
    pk, _sk = ML_DSA_65.key_derive(ours.private_bytes_unsafe())
    assert pk == ours.public_key().public_bytes()


def test_our_mldsa_signature_verifies_with_dilithium_py():
    ours = MLDSA65PrivateKey.generate()
    pk = ours.public_key().public_bytes()
    for ctx in (b"", b"x0tta6bl4/ctx"):
        sig = ours.sign(b"mesh record", ctx)
        assert ML_DSA_65.verify(pk, b"mesh record", sig, ctx=ctx)
        assert not ML_DSA_65.verify(pk, b"mesh recorD", sig, ctx=ctx)
    assert not ML_DSA_65.verify(pk, b"mesh record", ours.sign(b"mesh record", b"a"), ctx=b"b")


def test_dilithium_py_signature_verifies_with_ours():
    pk, sk = ML_DSA_65.keygen()
    sig = ML_DSA_65.sign(sk, b"hello", ctx=b"ctx")
    key = MLDSA65PublicKey.from_bytes(pk)
    key.verify(sig, b"hello", b"ctx")
    with pytest.raises(InvalidSignature):
        key.verify(sig, b"hello", b"")
    key.verify(ML_DSA_65.sign(sk, b"no ctx"), b"no ctx")


def test_kyber_py_decapsulates_our_ciphertext_via_shared_seed():
    ours = MLKEM768PrivateKey.generate()
    ek, dk = ML_KEM_768.key_derive(ours.private_bytes_unsafe())
    assert ek == ours.public_key().public_bytes()
    ss, ct = ours.public_key().encapsulate()
    assert ML_KEM_768.decaps(dk, ct) == ss


def test_we_decapsulate_kyber_py_ciphertext():
    ours = MLKEM768PrivateKey.generate()
    ss, ct = ML_KEM_768.encaps(ours.public_key().public_bytes())
    assert ours.decapsulate(ct) == ss


def test_kyber_py_key_encapsulated_by_us():
    ek, dk = ML_KEM_768.keygen()
    ss, ct = MLKEM768PublicKey.from_bytes(ek).encapsulate()
    assert ML_KEM_768.decaps(dk, ct) == ss
