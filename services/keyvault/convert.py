"""Protobuf (x0tta6bl4.v1 keyvault messages) <-> the keyvault domain."""
from __future__ import annotations

from x0tta6bl4.keyvault.service import Info
from x0tta6bl4.keyvault.vault import RETIRED, RETIRING, REVOKED, ROTATION_PENDING, AttestResult, Entry, Generation
from x0tta6bl4.pqc import SignedRecord
from x0tta6bl4.pqc.backend import MLKEM768_PUBLIC_KEY_SIZE
from x0tta6bl4.v1 import keyvault_pb2 as pb

KEY_MATERIAL = ("ed25519_public_key", "mldsa_public_key", "mlkem_public_key", "x25519_public_key",
                "signed_sig_record", "signed_kem_record", "root_signature", "signed_rotation_request")


def key_record(root_key_id: str, e: Entry, g: Generation, with_previous: bool = False) -> pb.KeyRecord:
    """One generation of an identity (``with_previous``: the retiring and retired ones under it)."""
    s, k = g.sig_record, g.kem_record
    r = pb.KeyRecord(
        spiffe_id=e.spiffe_id, node_id=e.node_id, generation=g.generation,
        sig_key_id=s.key_id, sig_algorithm=s.algorithm,
        ed25519_public_key=s.public_key[:32], mldsa_public_key=s.public_key[32:],
        kem_key_id=k.key_id, kem_algorithm=k.algorithm,
        mlkem_public_key=k.public_key[:MLKEM768_PUBLIC_KEY_SIZE],
        x25519_public_key=k.public_key[MLKEM768_PUBLIC_KEY_SIZE:],
        not_before_unix=s.not_before, not_after_unix=s.not_after, revoked=g.status == REVOKED,
        root_signature=SignedRecord.from_bytes(g.signed_sig).signature, root_key_id=root_key_id,
        status=g.status, signed_sig_record=g.signed_sig, signed_kem_record=g.signed_kem,
        retiring_until_unix=g.retiring_until if g.status == RETIRING else 0.0,
        retired_at_unix=g.retired_at if g.status == RETIRED else 0,
        revoked_at_unix=e.revoked_at if g.status == REVOKED else 0,
        revocation_reason=e.revocation_reason if g.status == REVOKED else "",
        custodial=g.identity is not None, exported_at_unix=g.exported_at,
    )
    if g is e.current and e.rotation_request() is not None and e.rotation is not None:
        r.signed_rotation_request = e.rotation
    if with_previous:
        r.previous.extend(key_record(root_key_id, e, p) for p in e.previous())
    return r


def identity(root_key_id: str, e: Entry) -> pb.KeyRecord:
    """The identity's current generation with its previous ones in full (GetPublicKeys, Revoke)."""
    return key_record(root_key_id, e, e.current, with_previous=True)


def listed(root_key_id: str, e: Entry) -> pb.KeyRecord:
    """The current generation in full, the previous ones without key material (lists)."""
    return with_slim_previous(identity(root_key_id, e))


def slim(r: pb.KeyRecord) -> pb.KeyRecord:
    """The record without key material or signatures (ids, generations, status only)."""
    for f in KEY_MATERIAL:
        r.ClearField(f)
    for p in r.previous:
        slim(p)
    return r


def with_slim_previous(r: pb.KeyRecord) -> pb.KeyRecord:
    for p in r.previous:
        slim(p)
    return r


def issued(root_key_id: str, e: Entry) -> pb.IssueIdentityResponse:
    return pb.IssueIdentityResponse(record=key_record(root_key_id, e, e.current))


def rotated(root_key_id: str, entries: list[Entry]) -> pb.RotateResponse:
    """Rotate's reply: each identity as listed; one whose rotation request is still pending (a node-held
    identity that did not certify its next generation in time) has status ``rotation_pending`` and is named in
    ``pending``."""
    out = pb.RotateResponse()
    for e in entries:
        r = listed(root_key_id, e)
        if e.rotation_request() is not None:
            r.status = ROTATION_PENDING
            out.pending.append(e.node_id)
        out.records.append(r)
    return out


def attest_response(r: AttestResult) -> pb.AttestResponse:
    return pb.AttestResponse(valid=r.valid, reason=r.reason, key_id=r.key_id, generation=r.generation,
                             status=r.status)


def info_response(i: Info) -> pb.InfoResponse:
    b = i.backend
    return pb.InfoResponse(backend=b.name, backend_version=b.version, algorithms=list(b.algorithms),
                           classical=list(b.classical), hybrids=list(b.hybrids), root_public_key=i.root_public_key,
                           root_key_id=i.root_key_id, identities=i.identities, kv_bucket=i.kv_bucket,
                           default_overlap_s=i.default_overlap_s)
