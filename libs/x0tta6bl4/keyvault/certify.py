"""Certification of a node's own public keys (a CSR-style request with proof of possession), as SPIRE does.

The node (or its mesh host) generates its signing and KEM keys itself and keeps the private halves; it asks
keyvault to certify the public halves:

    req = certify_request(identity, nonce=os.urandom(16))     # signed with identity's own new signing key
    # -> keyvault CertifyKeys(node_id, signing_public_key, kem_public_key, nonce, timestamp_unix, proof)

The proof of possession is the node's hybrid (Ed25519 + ML-DSA-65) signature, with the FIPS 204 context
:data:`CERTIFY_CONTEXT`, over :func:`payload` (node id, both public keys, nonce, time): only the holder of the
new signing key can make it, and it binds the KEM key to it. Keyvault checks it (:meth:`Checker.check`: the
signature, the time within :data:`MAX_SKEW_S`, the nonce not seen within that window) and then signs the
records with its root; no private key ever reaches keyvault. Nothing here does I/O.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from x0tta6bl4.pqc import HybridVerifyKey, KeyPurpose, NodeIdentity, PQCError, PublicKeyRecord
from x0tta6bl4.pqc._encoding import pack

from .errors import InvalidArgument, PermissionDenied

CERTIFY_CONTEXT = b"x0tta6bl4/keyvault/certify/v1"
MAGIC = b"x0tta6bl4/certify-request/v1"
MAX_SKEW_S = 300.0
MIN_NONCE, MAX_NONCE = 16, 64


def payload(node_id: str, signing_public_key: bytes, kem_public_key: bytes, nonce: bytes, timestamp: int) -> bytes:
    """The bytes the proof of possession signs."""
    return pack(MAGIC, node_id.encode(), bytes(signing_public_key), bytes(kem_public_key), bytes(nonce),
                int(timestamp).to_bytes(8, "big", signed=True))


@dataclass(frozen=True)
class CertifyRequest:
    node_id: str
    signing_public_key: bytes
    kem_public_key: bytes
    nonce: bytes
    timestamp: int
    proof: bytes


def certify_request(identity: NodeIdentity, nonce: bytes, now: float | None = None) -> CertifyRequest:
    """The request a node sends for its (locally generated) ``identity``: public keys and proof only."""
    ts = int(time.time() if now is None else now)
    node = identity.spiffe_id.node_id
    sig_pub = identity.signing.public_key.public_bytes()
    kem_pub = identity.kem.public_key.public_bytes()
    proof = identity.signing.private.sign(payload(node, sig_pub, kem_pub, nonce, ts), CERTIFY_CONTEXT)
    return CertifyRequest(node, sig_pub, kem_pub, bytes(nonce), ts, proof)


def check_public_key(purpose: KeyPurpose, data: bytes, what: str) -> None:
    """InvalidArgument unless ``data`` is a well-formed public key for ``purpose``."""
    try:
        PublicKeyRecord(spiffe_id="spiffe://check.invalid/node/check", purpose=purpose, public_key=bytes(data),
                        not_before=0, not_after=1, generation=1)
    except PQCError as e:
        raise InvalidArgument(f"{what}: {e}") from None


class Checker:
    """Checks requests and remembers their nonces for the skew window (a replayed request is refused)."""

    def __init__(self, max_skew_s: float = MAX_SKEW_S) -> None:
        self.max_skew_s = max_skew_s
        self._seen: dict[bytes, float] = {}

    def check(self, req: CertifyRequest, now: float) -> None:
        """InvalidArgument for a malformed request, PermissionDenied for a proof that does not hold, a
        stale time or a replayed nonce."""
        if not (MIN_NONCE <= len(req.nonce) <= MAX_NONCE):
            raise InvalidArgument(f"nonce must be {MIN_NONCE}..{MAX_NONCE} bytes, got {len(req.nonce)}")
        check_public_key(KeyPurpose.SIGNING, req.signing_public_key, "signing_public_key")
        check_public_key(KeyPurpose.KEM, req.kem_public_key, "kem_public_key")
        if not req.proof:
            raise InvalidArgument("proof is empty (the new signing key's signature over the request)")
        if abs(now - req.timestamp) > self.max_skew_s:
            raise PermissionDenied(f"request time {req.timestamp} is more than {self.max_skew_s:g} s from keyvault's "
                                   f"clock ({int(now)}): check the node's clock")
        try:
            HybridVerifyKey.from_bytes(req.signing_public_key).verify(
                req.proof, payload(req.node_id, req.signing_public_key, req.kem_public_key, req.nonce, req.timestamp),
                CERTIFY_CONTEXT)
        except PQCError:
            raise PermissionDenied("proof of possession does not verify: the request must be signed by the "
                                   "signing key it asks to certify") from None
        for n, t in list(self._seen.items()):
            if now - t > 2 * self.max_skew_s:
                del self._seen[n]
        if req.nonce in self._seen:
            raise PermissionDenied("nonce already used: a replayed certification request")
        self._seen[req.nonce] = now
