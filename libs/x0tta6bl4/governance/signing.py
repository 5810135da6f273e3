"""Canonical, deterministic encoding of a vote for signing.

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
from typing import Callable

from .errors import InvalidArgument
from .model import VoteChoice

__all__ = ["CANCEL_DOMAIN", "VOTE_DOMAIN", "Verifier", "cancel_signing_payload", "default_vote_id",
           "vote_signing_payload"]

VOTE_DOMAIN = b"x0tta6bl4/vote/v1"
CANCEL_DOMAIN = b"x0tta6bl4/cancel/v1"

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


def default_vote_id(payload: bytes) -> str:
    """Vote id used when the caller supplies none: a digest of the signed
    payload, so re-sending the same signed vote is naturally idempotent."""
    return "v-" + hashlib.sha256(payload).hexdigest()[:32]
