"""Approvals the executor can verify: who approved an action, bound to exactly that action (pure, no I/O).

The executor carries out an :class:`~x0tta6bl4.v1.events_pb2.ActionRequest` only when its ``approval`` is
signed by an approver the trust bundle names for the role ``approve``: the **planner** for what it
auto-approved (``approved_by == "auto"``, no proposal) or **governance** for a passed proposal
(``approved_by == "dao:<proposal_id>"``). Anyone who can publish on ``mapek.action`` can forge a request,
but not a signature of a key whose seed only the approver holds.

Canonical payload (version 1). Encodings: a *str* is its UTF-8 bytes preceded by their length as an
unsigned 32-bit big-endian integer; an *int* is a signed 64-bit big-endian integer; a *float* is an
IEEE 754 binary64, big-endian. Nothing is omitted when empty (an empty str is its 4-byte zero length).

``action_bytes(req)`` -- what was approved::

    str  "x0tta6bl4/approved-action/v1"     domain tag
    str  action_id
    str  plan_id
    int  action.kind                        the ActionKind enum number
    str  action.target_node
    u32  number of parameters, then for each parameter, sorted by its key's UTF-8 bytes:
         str key, str value
    str  approved_by                        "auto" or "dao:<proposal_id>"
    str  proposal_id
    str  incident_id
    str  fault_type
    float timeout_s
    int  first_symptom_unix_ns

``signing_payload(req)`` -- the bytes the approver signs (ML-DSA-65, role ``approve``, FIPS 204 context
``x0tta6bl4/approval/v1``)::

    str  "x0tta6bl4/approval/v1"            domain tag
    str  approval.approver
    str  approval.key_id
    int  approval.issued_unix_ns
    int  approval.expires_unix_ns
         action_bytes(req)

The request's ``meta`` (event id, producer, cycle, time) is not covered: it names the message, not the
action; a copy of a genuine request under another event id is the same action and runs once (the
executor's claim on the action id). :func:`approval_digest` (SHA-256 of ``action_bytes``) names what was
approved independently of which signature approved it (governance may sign the same action again after a
restart); the executor binds its claims to it.
"""
from __future__ import annotations

import hashlib
import struct

from x0tta6bl4.trust import ROLE_APPROVE, Signer, TrustBundle, TrustError
from x0tta6bl4.v1 import events_pb2

ACTION_TAG = "x0tta6bl4/approved-action/v1"
PAYLOAD_TAG = "x0tta6bl4/approval/v1"
PLANNER, GOVERNANCE = "planner", "governance"
APPROVERS = (PLANNER, GOVERNANCE)
AUTO = "auto"
DAO_PREFIX = "dao:"

# why a request is refused (ApprovalError.code)
UNSIGNED, NOT_APPROVER, MISMATCH, UNTRUSTED, EXPIRED = "unsigned", "not_approver", "mismatch", "untrusted", "expired"


class ApprovalError(Exception):
    """The request's approval cannot be trusted; ``code`` says which check failed, str() says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# ---- the canonical encoding -------------------------------------------------------------------------
def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">I", len(b)) + b


def _int(i: int) -> bytes:
    return struct.pack(">q", i)


def action_bytes(req: events_pb2.ActionRequest) -> bytes:
    """What was approved (see the module docstring for the exact encoding)."""
    a = req.action
    params = sorted(a.params.items(), key=lambda kv: kv[0].encode())
    return b"".join([
        _str(ACTION_TAG), _str(req.action_id), _str(req.plan_id), _int(a.kind), _str(a.target_node),
        struct.pack(">I", len(params)), *(_str(k) + _str(v) for k, v in params),
        _str(req.approved_by), _str(req.proposal_id), _str(req.incident_id), _str(req.fault_type),
        struct.pack(">d", req.timeout_s), _int(req.first_symptom_unix_ns)])


def approval_digest(req: events_pb2.ActionRequest) -> str:
    """SHA-256 (hex) of :func:`action_bytes`: the approved action, whichever signature approved it."""
    return hashlib.sha256(action_bytes(req)).hexdigest()


def signing_payload(req: events_pb2.ActionRequest) -> bytes:
    """The bytes the approver signs: the approval's own fields but the signature, then the action."""
    ap = req.approval
    return b"".join([_str(PAYLOAD_TAG), _str(ap.approver), _str(ap.key_id), _int(ap.issued_unix_ns),
                     _int(ap.expires_unix_ns), action_bytes(req)])


# ---- who may approve what ---------------------------------------------------------------------------
def check_attribution(approver: str, req: events_pb2.ActionRequest) -> None:
    """The planner approves only ``auto`` actions, governance only its own passed proposals' actions, so an
    approval can never be recorded as somebody else's decision."""
    if approver == PLANNER:
        if req.approved_by != AUTO or req.proposal_id:
            raise ApprovalError(MISMATCH, f"the planner approves only auto-approved actions, not approved_by="
                                          f"{req.approved_by!r} proposal_id={req.proposal_id!r}")
    elif approver == GOVERNANCE:
        if not req.proposal_id or req.approved_by != DAO_PREFIX + req.proposal_id:
            raise ApprovalError(MISMATCH, f"governance approves only a passed proposal's action "
                                          f"(approved_by 'dao:<proposal_id>'), not approved_by={req.approved_by!r} "
                                          f"proposal_id={req.proposal_id!r}")
    else:
        raise ApprovalError(NOT_APPROVER, f"{approver or '(nobody)'} may not approve actions "
                                          f"(only {' or '.join(APPROVERS)})")


# ---- signing and verifying ----------------------------------------------------------------------------
def sign_approval(req: events_pb2.ActionRequest, signer: Signer, ttl_s: float,
                  now_ns: int) -> events_pb2.ActionRequest:
    """Sign ``req`` as approved by ``signer``'s service, valid for ``ttl_s`` from ``now_ns``; returns ``req``
    (changed in place). Refuses (ApprovalError) to sign what its owner may not approve."""
    if ttl_s <= 0:
        raise ValueError(f"approval ttl_s must be positive, got {ttl_s!r}")
    check_attribution(signer.owner, req)
    req.approval.CopyFrom(events_pb2.Approval(approver=signer.owner, key_id=signer.key_id, issued_unix_ns=now_ns,
                                              expires_unix_ns=now_ns + int(ttl_s * 1e9)))
    req.approval.signature = signer.sign(ROLE_APPROVE, signing_payload(req))
    return req


def verify_approval(req: events_pb2.ActionRequest, bundle: TrustBundle, now_ns: int) -> str:
    """The approver (``planner`` or ``governance``) whose trusted key signed exactly this action and whose
    approval has not expired at ``now_ns``; otherwise :class:`ApprovalError` naming what is wrong."""
    if not req.HasField("approval") or not req.approval.signature:
        raise ApprovalError(UNSIGNED, f"action {req.action_id} carries no signed approval")
    ap = req.approval
    check_attribution(ap.approver, req)
    try:
        bundle.verify(ROLE_APPROVE, ap.key_id, signing_payload(req), ap.signature, owners=[ap.approver])
    except TrustError as e:   # unknown key, another service's key, a key not trusted to approve, or altered
        raise ApprovalError(UNTRUSTED, f"approval of action {req.action_id} by {ap.approver}: {e}") from None
    if now_ns >= ap.expires_unix_ns:
        ago = (now_ns - ap.expires_unix_ns) / 1e9
        raise ApprovalError(EXPIRED, f"approval of action {req.action_id} by {ap.approver} expired {ago:.1f}s ago")
    return ap.approver
