"""liboqs cross-checked against our cryptography backend, both ways.

liboqs-python cannot run here (see docs/keyvault-and-pqc.md: PyPI's liboqs-python downloads and builds liboqs at
import, and no registry ships a compiled liboqs it can load offline), so liboqs itself is exercised through the
Open Quantum Safe project's WebAssembly build (npm ``@oqs/liboqs-js``, installed by ``make setup`` with
``npm ci`` in tools/liboqs-interop/) run by node. Every check crosses the implementations on the raw FIPS 203 /
FIPS 204 encodings: ML-KEM-768 encapsulated by one and decapsulated by the other, ML-DSA-65 signed by one and
verified by the other, in both directions."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import pytest

from x0tta6bl4.pqc import InvalidSignature, MLDSA65PrivateKey, MLDSA65PublicKey, MLKEM768PrivateKey, MLKEM768PublicKey
from x0tta6bl4.pqc.backend import get_backend

ROOT = pathlib.Path(__file__).resolve().parents[3]
INTEROP = ROOT / "tools" / "liboqs-interop"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None or shutil.which("npm") is None,
                       reason="node/npm absent: the liboqs WebAssembly build cannot run (apt-get install nodejs npm)"),
]

CRYPTO = get_backend("cryptography")


@pytest.fixture(scope="module", autouse=True)
def installed():
    pkg = INTEROP / "node_modules" / "@oqs" / "liboqs-js" / "package.json"
    assert pkg.exists(), f"{pkg} missing: run `make setup` (npm ci in {INTEROP})"
    return json.loads(pkg.read_text())["version"]


def oqs(op: str, **args: bytes) -> dict:
    """One liboqs operation in node; bytes in and out as hex."""
    req = json.dumps({"op": op, **{k: v.hex() for k, v in args.items()}})
    r = subprocess.run([NODE, str(INTEROP / "oqs.mjs")], input=req, capture_output=True, text=True, timeout=60,
                       cwd=INTEROP, env=dict(os.environ, NODE_NO_WARNINGS="1"))
    assert r.returncode == 0, f"liboqs {op} failed: {r.stderr.strip()}"
    return {k: bytes.fromhex(v) if isinstance(v, str) else v for k, v in json.loads(r.stdout).items()}


def test_mlkem768_liboqs_encapsulates_to_ours_and_we_to_liboqs():
    # liboqs encapsulates to our key; we decapsulate
    ours = MLKEM768PrivateKey.generate(backend=CRYPTO)
    pk = ours.public_key().public_bytes()
    assert len(pk) == 1184
    enc = oqs("kem_encaps", pk=pk)
    assert len(enc["ct"]) == 1088 and len(enc["ss"]) == 32
    assert ours.decapsulate(enc["ct"]) == enc["ss"]
    # we encapsulate to liboqs's key; liboqs decapsulates
    theirs = oqs("kem_keygen")
    ss, ct = MLKEM768PublicKey.from_bytes(theirs["pk"], backend=CRYPTO).encapsulate()   # (secret, ciphertext)
    assert oqs("kem_decaps", ct=ct, sk=theirs["sk"])["ss"] == ss
    # a tampered ciphertext gives another secret (implicit rejection) on both sides
    bad = bytes([ct[0] ^ 1]) + ct[1:]
    assert oqs("kem_decaps", ct=bad, sk=theirs["sk"])["ss"] != ss
    bad_enc = bytes([enc["ct"][0] ^ 1]) + enc["ct"][1:]
    assert ours.decapsulate(bad_enc) != enc["ss"]


def test_mldsa65_liboqs_verifies_ours_and_we_verify_liboqs():
    msg = b"x0tta6bl4 liboqs cross-check \x00\xff" * 3
    # we sign (empty FIPS 204 context, as liboqs's OQS_SIG_sign); liboqs verifies
    ours = MLDSA65PrivateKey.generate(backend=CRYPTO)
    sig = ours.sign(msg)
    pk = ours.public_key().public_bytes()
    assert (len(pk), len(sig)) == (1952, 3309)
    assert oqs("verify", msg=msg, sig=sig, pk=pk)["ok"] is True
    assert oqs("verify", msg=msg + b"!", sig=sig, pk=pk)["ok"] is False
    # liboqs signs; we verify
    theirs = oqs("sig_keygen")
    their_sig = oqs("sign", msg=msg, sk=theirs["sk"])["sig"]
    their_pk = MLDSA65PublicKey.from_bytes(theirs["pk"], backend=CRYPTO)
    their_pk.verify(their_sig, msg)
    with pytest.raises(InvalidSignature):
        their_pk.verify(their_sig, msg + b"!")
    with pytest.raises(InvalidSignature):
        their_pk.verify(their_sig, msg, context=b"x0tta6bl4")   # a context is part of what is signed
