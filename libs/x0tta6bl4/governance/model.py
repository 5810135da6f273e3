"""Value objects of the governance domain (immutable) and field validation."""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import InvalidArgument

__all__ = [
    "LIMITS",
    "Action",
    "ActionKind",
    "CloseReason",
    "Limits",
    "Proposal",
    "ProposalState",
    "Tally",
    "VoteChoice",
    "VoteRecord",
    "Voter",
    "quadratic_weight",
]


class ActionKind(str, enum.Enum):
    REROUTE = "reroute"
    ROTATE_KEYS = "rotate_keys"
    DEPLOY = "deploy"
    CONFIG_CHANGE = "config_change"
    ISOLATE = "isolate"
    RESTART = "restart"
    REINSTATE = "reinstate"
    TOPOLOGY_UPDATE = "topology_update"


class VoteChoice(str, enum.Enum):
    YES = "YES"
    NO = "NO"
    ABSTAIN = "ABSTAIN"


class ProposalState(str, enum.Enum):
    ACTIVE = "ACTIVE"
    PASSED = "PASSED"
    REJECTED = "REJECTED"
    EXECUTED = "EXECUTED"
    EXPIRED = "EXPIRED"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        return self in (ProposalState.REJECTED, ProposalState.EXECUTED,
                        ProposalState.EXPIRED, ProposalState.CANCELED)


class CloseReason(str, enum.Enum):
    """Why a proposal left ACTIVE (``Proposal.close_reason``)."""

    QUORUM_AND_THRESHOLD_MET = "QUORUM_AND_THRESHOLD_MET"  # PASSED by vote
    AUTO_APPROVED = "AUTO_APPROVED"                        # PASSED by decision matrix
    QUORUM_NOT_REACHED = "QUORUM_NOT_REACHED"              # REJECTED
    THRESHOLD_NOT_MET = "THRESHOLD_NOT_MET"                # REJECTED
    CANCELED_BY_PROPOSER = "CANCELED_BY_PROPOSER"          # CANCELED


@dataclass(frozen=True)
class Limits:
    max_id_len: int = 512
    title_max: int = 200
    description_max: int = 10_000
    max_duration_s: float = 7 * 24 * 3600.0
    max_execution_window_s: float = 30 * 24 * 3600.0
    default_execution_window_s: float = 3600.0
    max_params: int = 32
    max_param_key_len: int = 64
    max_param_value_len: int = 1024
    nonce_min_len: int = 16
    nonce_max_len: int = 64
    max_signature_len: int = 16_384
    max_detail_len: int = 4096


LIMITS = Limits()


# ---------------------------------------------------------------- validators

def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_finite(name: str, value: Any) -> float:
    if not _is_real(value):
        raise InvalidArgument(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise InvalidArgument(f"{name} must be finite, got {v!r}")
    return v


def check_positive(name: str, value: Any, maximum: float | None = None) -> float:
    v = check_finite(name, value)
    if v <= 0:
        raise InvalidArgument(f"{name} must be > 0, got {v!r}")
    if maximum is not None and v > maximum:
        raise InvalidArgument(f"{name} must be <= {maximum!r}, got {v!r}")
    return v


def check_fraction(name: str, value: Any) -> float:
    """A value in the half-open interval (0, 1]."""
    v = check_finite(name, value)
    if not 0.0 < v <= 1.0:
        raise InvalidArgument(f"{name} must be in (0, 1], got {v!r}")
    return v


def check_identity(name: str, value: Any) -> str:
    """Identity / id strings: non-empty, bounded, no whitespace or control chars."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidArgument(f"{name} must not be empty")
    if len(value) > LIMITS.max_id_len:
        raise InvalidArgument(f"{name} must be at most {LIMITS.max_id_len} characters, got {len(value)}")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidArgument(f"{name} must not contain whitespace or control characters: {value!r}")
    return value


def check_text(name: str, value: Any, *, max_len: int, min_len: int = 0, strip: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, got {type(value).__name__}")
    v = value.strip() if strip else value
    if len(v) < min_len:
        raise InvalidArgument(f"{name} must be at least {min_len} character(s)" + (" after strip" if strip else ""))
    if len(v) > max_len:
        raise InvalidArgument(f"{name} must be at most {max_len} characters, got {len(v)}")
    return v


def quadratic_weight(tokens: float) -> float:
    """Quadratic voting: committing ``tokens`` yields ``sqrt(tokens)`` weight."""
    return math.sqrt(tokens)


# ------------------------------------------------------------- value objects

@dataclass(frozen=True)
class Action:
    """Typed payload of a proposal: what the executor will do if it passes."""

    kind: ActionKind
    params: Mapping[str, str] = field(default_factory=dict)
    target_node: str = ""

    def __post_init__(self) -> None:
        kind = self.kind
        if not isinstance(kind, ActionKind):
            try:
                kind = ActionKind(kind)
            except ValueError:
                allowed = ", ".join(k.value for k in ActionKind)
                raise InvalidArgument(f"action.kind must be one of {{{allowed}}}, got {self.kind!r}") from None
        object.__setattr__(self, "kind", kind)
        if not isinstance(self.params, Mapping):
            raise InvalidArgument(f"action.params must be a mapping of str to str, got {type(self.params).__name__}")
        if len(self.params) > LIMITS.max_params:
            raise InvalidArgument(
                f"action.params must have at most {LIMITS.max_params} entries, got {len(self.params)}")
        clean: dict[str, str] = {}
        for k, v in self.params.items():
            if not isinstance(k, str) or not k or len(k) > LIMITS.max_param_key_len:
                raise InvalidArgument(
                    f"action.params key must be a non-empty string of at most {LIMITS.max_param_key_len} chars, "
                    f"got {k!r}")
            if not isinstance(v, str) or len(v) > LIMITS.max_param_value_len:
                raise InvalidArgument(
                    f"action.params[{k!r}] must be a string of at most {LIMITS.max_param_value_len} chars, got {v!r}")
            clean[k] = v
        object.__setattr__(self, "params", MappingProxyType(dict(sorted(clean.items()))))
        if self.target_node != "":
            check_identity("action.target_node", self.target_node)

    def __hash__(self) -> int:
        return hash((self.kind, tuple(self.params.items()), self.target_node))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "params": dict(self.params), "target_node": self.target_node}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Action:
        return cls(kind=d["kind"], params=dict(d.get("params", {})), target_node=d.get("target_node", ""))


@dataclass(frozen=True)
class Voter:
    voter_id: str
    balance: float
    registered_at: float
    key_id: str = ""
    public_key: bytes = b""

    @property
    def max_weight(self) -> float:
        return quadratic_weight(self.balance)


@dataclass(frozen=True)
class VoteRecord:
    vote_id: str
    proposal_id: str
    voter_id: str
    choice: VoteChoice
    tokens: float
    weight: float
    nonce: bytes
    signature: bytes
    cast_at: float

    def same_content(self, proposal_id: str, voter_id: str, choice: VoteChoice, tokens: float, nonce: bytes) -> bool:
        return (self.proposal_id, self.voter_id, self.choice, self.tokens, self.nonce) == (
            proposal_id, voter_id, choice, tokens, nonce)


@dataclass(frozen=True)
class Tally:
    """Weights are already quadratic (sqrt of committed tokens).

    ``eligible`` is the sum of sqrt(balance) over the proposal's eligible
    voters, ``turnout`` = (yes + no + abstain) / eligible, ``voters`` is the
    number of eligible voters that currently have a vote on record.
    """

    yes: float = 0.0
    no: float = 0.0
    abstain: float = 0.0
    eligible: float = 0.0
    voters: int = 0
    eligible_voters: int = 0

    @property
    def cast(self) -> float:
        return math.fsum((self.yes, self.no, self.abstain))

    @property
    def turnout(self) -> float:
        return self.cast / self.eligible if self.eligible > 0 else 0.0

    @property
    def approval(self) -> float:
        """YES / (YES + NO); 0 when nobody voted YES or NO."""
        decisive = self.yes + self.no
        return self.yes / decisive if decisive > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"yes": self.yes, "no": self.no, "abstain": self.abstain, "eligible": self.eligible,
                "voters": self.voters, "eligible_voters": self.eligible_voters}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Tally:
        return cls(yes=float(d["yes"]), no=float(d["no"]), abstain=float(d["abstain"]),
                   eligible=float(d["eligible"]), voters=int(d["voters"]),
                   eligible_voters=int(d["eligible_voters"]))


@dataclass(frozen=True)
class Proposal:
    """Read model of one proposal. ``eligible`` is the snapshot voter -> balance
    taken when the proposal was created; only those voters may vote on it."""

    proposal_id: str
    title: str
    description: str
    action: Action
    proposer: str
    created_at: float
    duration_s: float
    quorum: float
    threshold: float
    execution_window_s: float
    eligible: Mapping[str, float]
    state: ProposalState = ProposalState.ACTIVE
    close_reason: CloseReason | None = None
    closed_at: float | None = None
    closed_early: bool = False
    final_tally: Tally | None = None
    finished_at: float | None = None   # executed / expired / canceled time
    execution_attempts: int = 0
    last_execution_detail: str = ""
    cycle_id: str = ""
    request_id: str = ""

    @property
    def closes_at(self) -> float:
        """End of the voting period: votes are accepted while ``now < closes_at``."""
        return self.created_at + self.duration_s

    @property
    def execution_deadline(self) -> float | None:
        """A PASSED proposal must be executed while ``now < execution_deadline``."""
        if self.closed_at is None or self.state not in (ProposalState.PASSED, ProposalState.EXECUTED,
                                                          ProposalState.EXPIRED):
            return None
        return self.closed_at + self.execution_window_s

    @property
    def auto_approved(self) -> bool:
        return self.close_reason is CloseReason.AUTO_APPROVED

    @functools.cached_property
    def eligible_weight(self) -> float:
        """Sum of sqrt(balance) over the eligible snapshot (exactly rounded,
        so independent of dict order)."""
        return math.fsum(quadratic_weight(b) for b in self.eligible.values())
