"""Canonical, deterministic encodings of what voters and proposers sign (votes, proposals, cancels).

    payload = DOMAIN || field(proposal_id) || field(voter) || field(choice)
                     || field(tokens) || field(nonce)

    field(x) = uint32_be(len(x)) || x

* DOMAIN is ``b"x0tta6bl4/vote/v1"`` length-prefixed like any field, so a vote
  signature can never be confused with a signature over another message type.
* strings are UTF-8; ``choice`` is the enum name (``YES``/``NO``/``ABSTAIN``);
* ``tokens`` is the IEEE-754 binary64 big-endian encoding of ``float(tokens)``
  (so 100 and 100.0 encode identically);
* ``nonce`` is raw bytes (16..64 random bytes chosen by the voter).

The signature algorithm itself (ML-DSA-65) lives in the pqc package; the
engine only receives a ``verify(voter_id, payload, signature) -> bool``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

from .errors import InvalidArgument
from .model import Action, VoteChoice

__all__ = ["CANCEL_DOMAIN", "PROPOSE_DOMAIN", "VOTE_DOMAIN", "Verifier", "cancel_signing_payload",
           "default_request_id", "default_vote_id", "proposal_signing_payload", "vote_signing_payload"]

VOTE_DOMAIN = b"x0tta6bl4/vote/v1"
CANCEL_DOMAIN = b"x0tta6bl4/cancel/v1"
PROPOSE_DOMAIN = b"x0tta6bl4/propose/v1"

Verifier = Callable[[str, bytes, bytes], bool]
"""verify(voter_id, payload, signature) -> bool"""


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def vote_signing_payload(proposal_id: str, voter: str, choice: VoteChoice | str, tokens: float,
                         nonce: bytes) -> bytes:
    if not isinstance(proposal_id, str) or not isinstance(voter, str):
        raise InvalidArgument("proposal_id and voter must be strings")
    try:
        choice = VoteChoice(choice)
    except ValueError:
        raise InvalidArgument(f"choice must be one of YES, NO, ABSTAIN, got {choice!r}") from None
    if isinstance(tokens, bool) or not isinstance(tokens, (int, float)):
        raise InvalidArgument(f"tokens must be a number, got {type(tokens).__name__}")
    if not isinstance(nonce, (bytes, bytearray)):
        raise InvalidArgument(f"nonce must be bytes, got {type(nonce).__name__}")
    return b"".join((
        _field(VOTE_DOMAIN),
        _field(proposal_id.encode("utf-8")),
        _field(voter.encode("utf-8")),
        _field(choice.value.encode("ascii")),
        _field(struct.pack(">d", float(tokens))),
        _field(bytes(nonce)),
    ))


def cancel_signing_payload(proposal_id: str, proposer: str, nonce: bytes) -> bytes:
    """The bytes a proposer signs to cancel its proposal (same framing as votes, its own domain)."""
    if not isinstance(proposal_id, str) or not isinstance(proposer, str):
        raise InvalidArgument("proposal_id and proposer must be strings")
    if not isinstance(nonce, (bytes, bytearray)):
        raise InvalidArgument(f"nonce must be bytes, got {type(nonce).__name__}")
    return b"".join((_field(CANCEL_DOMAIN), _field(proposal_id.encode("utf-8")),
                     _field(proposer.encode("utf-8")), _field(bytes(nonce))))


def proposal_signing_payload(*, title: str, description: str, action: Action, proposer: str, duration_s: float,
                             quorum: float, threshold: float, execution_window_s: float, request_id: str,
                             nonce: bytes) -> bytes:
    """The bytes a proposer signs to open a proposal: every field of the request, so a signed
    proposal cannot be replayed with another title, action or rule.

        DOMAIN || title || description || kind || target_node || count || (key || value)* || proposer
               || duration_s || quorum || threshold || execution_window_s || request_id || nonce

    each a length-prefixed field; numbers as IEEE-754 binary64 big-endian (``execution_window_s``
    0 means "the service's default" and is signed as 0); ``count`` is uint32 big-endian and the
    action's params come sorted by key (the order a client built them in does not matter)."""
    for name, v in (("title", title), ("description", description), ("proposer", proposer),
                    ("request_id", request_id)):
        if not isinstance(v, str):
            raise InvalidArgument(f"{name} must be a string, got {type(v).__name__}")
    if not isinstance(action, Action):
        raise InvalidArgument(f"action must be an Action, got {type(action).__name__}")
    nums: list[bytes] = []
    for name, num in (("duration_s", duration_s), ("quorum", quorum), ("threshold", threshold),
                      ("execution_window_s", execution_window_s)):
        if isinstance(num, bool) or not isinstance(num, (int, float)):
            raise InvalidArgument(f"{name} must be a number, got {type(num).__name__}")
        nums.append(_field(struct.pack(">d", float(num))))
    if not isinstance(nonce, (bytes, bytearray)):
        raise InvalidArgument(f"nonce must be bytes, got {type(nonce).__name__}")
    params = sorted(action.params.items())
    return b"".join((
        _field(PROPOSE_DOMAIN), _field(title.encode("utf-8")), _field(description.encode("utf-8")),
        _field(action.kind.value.encode("ascii")), _field(action.target_node.encode("utf-8")),
        _field(struct.pack(">I", len(params))),
        *(_field(k.encode("utf-8")) + _field(v.encode("utf-8")) for k, v in params),
        _field(proposer.encode("utf-8")), *nums, _field(request_id.encode("utf-8")), _field(bytes(nonce)),
    ))


def default_request_id(payload: bytes) -> str:
    """Idempotency key of a signed proposal sent without one: a digest of the signed payload, so a
    re-sent (or replayed) signed proposal opens one proposal, not two."""
    return "p-" + hashlib.sha256(payload).hexdigest()[:32]


def default_vote_id(payload: bytes) -> str:
    """Vote id used when the caller supplies none: a digest of the signed
    payload, so re-sending the same signed vote is naturally idempotent."""
    return "v-" + hashlib.sha256(payload).hexdigest()[:32]
