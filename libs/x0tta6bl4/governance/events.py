"""Domain events. Every state change is one of these; state = fold(events).

Events are immutable facts: the reducer never re-validates or recomputes an
outcome, it records what the event says (e.g. ProposalClosed carries the
outcome and the tally it was decided on).

``event_to_dict`` / ``event_from_dict`` give a JSON-safe, versioned encoding
(bytes as hex, enums by value) for persisting the stream (e.g. JetStream).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .decision import Severity
from .model import Action, CloseReason, ProposalState, Tally, VoteChoice

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "ExecutionFailed",
    "GovernanceEvent",
    "ProposalAutoApproved",
    "ProposalCanceled",
    "ProposalClosed",
    "ProposalCreated",
    "ProposalExecuted",
    "ProposalExpired",
    "VoteCast",
    "VoterKeyRotated",
    "VoterRegistered",
    "event_from_dict",
    "event_to_dict",
]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class VoterRegistered:
    TYPE: ClassVar[str] = "governance.voter_registered"
    voter_id: str
    balance: float
    at: float
    key_id: str = ""
    public_key: bytes = b""     # ML-DSA-65 public key the voter signs votes with ("" = looked up elsewhere)

    @property
    def watch_kind(self) -> str:
        return "voter_registered"


@dataclass(frozen=True)
class VoterKeyRotated:
    """The voter's identity key changed (keyvault rotated it): later votes are checked
    against the new key. Balance and ledger entry are unchanged."""

    TYPE: ClassVar[str] = "governance.voter_key_rotated"
    voter_id: str
    key_id: str
    public_key: bytes
    at: float

    @property
    def watch_kind(self) -> str:
        return "voter_key_rotated"


@dataclass(frozen=True)
class ProposalCreated:
    """A proposal opened for voting. The eligible-voter snapshot is *not*
    carried: it is, by definition, the voters registered earlier in the
    stream, which the reducer has at hand."""

    TYPE: ClassVar[str] = "governance.proposal_created"
    proposal_id: str
    title: str
    description: str
    action: Action
    proposer: str
    duration_s: float
    quorum: float
    threshold: float
    execution_window_s: float
    at: float
    cycle_id: str = ""
    request_id: str = ""

    @property
    def watch_kind(self) -> str:
        return "created"


@dataclass(frozen=True)
class ProposalAutoApproved:
    """Decision matrix said AUTO_EXECUTE: the proposal is recorded directly as
    PASSED (close_reason AUTO_APPROVED) without a vote."""

    TYPE: ClassVar[str] = "governance.proposal_auto_approved"
    proposal_id: str
    title: str
    description: str
    action: Action
    proposer: str
    execution_window_s: float
    confidence: float
    severity: Severity
    reason: str
    at: float
    cycle_id: str = ""
    request_id: str = ""

    @property
    def watch_kind(self) -> str:
        return "passed"


@dataclass(frozen=True)
class VoteCast:
    """A (possibly replacing) vote. ``weight`` = sqrt(tokens), recorded for audit."""

    TYPE: ClassVar[str] = "governance.vote_cast"
    vote_id: str
    proposal_id: str
    voter_id: str
    choice: VoteChoice
    tokens: float
    weight: float
    nonce: bytes
    signature: bytes
    at: float

    @property
    def watch_kind(self) -> str:
        return "voted"


@dataclass(frozen=True)
class ProposalClosed:
    """Voting ended (period over, or early close): PASSED or REJECTED."""

    TYPE: ClassVar[str] = "governance.proposal_closed"
    proposal_id: str
    outcome: ProposalState
    reason: CloseReason
    tally: Tally
    early: bool
    at: float

    @property
    def watch_kind(self) -> str:
        return "passed" if self.outcome is ProposalState.PASSED else "rejected"


@dataclass(frozen=True)
class ProposalCanceled:
    TYPE: ClassVar[str] = "governance.proposal_canceled"
    proposal_id: str
    by: str
    at: float

    @property
    def watch_kind(self) -> str:
        return "canceled"


@dataclass(frozen=True)
class ExecutionFailed:
    """The executor reported a failed attempt; the proposal stays PASSED and
    may be retried until its execution window ends."""

    TYPE: ClassVar[str] = "governance.execution_failed"
    proposal_id: str
    detail: str
    at: float

    @property
    def watch_kind(self) -> str:
        return "execution_failed"


@dataclass(frozen=True)
class ProposalExecuted:
    TYPE: ClassVar[str] = "governance.proposal_executed"
    proposal_id: str
    detail: str
    at: float

    @property
    def watch_kind(self) -> str:
        return "executed"


@dataclass(frozen=True)
class ProposalExpired:
    """A PASSED proposal was not executed within its execution window."""

    TYPE: ClassVar[str] = "governance.proposal_expired"
    proposal_id: str
    at: float

    @property
    def watch_kind(self) -> str:
        return "expired"


GovernanceEvent = (
    VoterRegistered | ProposalCreated | ProposalAutoApproved | VoteCast | ProposalClosed
    | ProposalCanceled | ExecutionFailed | ProposalExecuted | ProposalExpired | VoterKeyRotated
)

EVENT_TYPES: dict[str, type[GovernanceEvent]] = {cls.TYPE: cls for cls in typing.get_args(GovernanceEvent)}


# ----------------------------------------------------------- serialization

def _encode(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, (Action, Tally)):
        return value.to_dict()
    if isinstance(value, (VoteChoice, ProposalState, CloseReason, Severity)):
        return value.value
    return value


_DECODERS: dict[Any, Any] = {
    bytes: bytes.fromhex,
    Action: Action.from_dict,
    Tally: Tally.from_dict,
    VoteChoice: VoteChoice,
    ProposalState: ProposalState,
    CloseReason: CloseReason,
    Severity: Severity,
    float: float,
    int: int,
    bool: bool,
    str: str,
}


def event_to_dict(event: GovernanceEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"type": event.TYPE, "schema_version": SCHEMA_VERSION}
    for f in dataclasses.fields(event):
        out[f.name] = _encode(getattr(event, f.name))
    return out


def event_from_dict(data: Mapping[str, Any]) -> GovernanceEvent:
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"unsupported governance event schema_version {version!r} (expected {SCHEMA_VERSION})")
    cls = EVENT_TYPES.get(data.get("type", ""))
    if cls is None:
        raise ValueError(f"unknown governance event type {data.get('type')!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"{cls.TYPE}: missing field {f.name!r}")
            continue
        kwargs[f.name] = _DECODERS[hints[f.name]](data[f.name])
    return cls(**kwargs)
