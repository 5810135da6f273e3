"""Decision matrix: how an analysed incident is approved.

=====================================  ==============================
confidence (c) and severity            decision
=====================================  ==============================
c > 0.9 and severity == CRITICAL       AUTO_EXECUTE (recorded as auto-approved)
c > 0.9 and severity != CRITICAL       EMERGENCY_VOTE (default 300 s)
0.8 < c <= 0.9                         EMERGENCY_VOTE (default 300 s)
0.6 <= c <= 0.8                        STANDARD_VOTE (default 3600 s)
0 <= c < 0.6                           OBSERVE (no action)
=====================================  ==============================

Boundaries: exactly 0.9 -> EMERGENCY_VOTE, exactly 0.8 -> STANDARD_VOTE,
exactly 0.6 -> STANDARD_VOTE, anything below 0.6 -> OBSERVE.  The comparisons
are on the float as given (no rounding).  Confidence must be a finite number
in [0, 1]; NaN, infinities, bools and out-of-range values raise
InvalidArgument.  Vote durations / quorum / threshold come from
:class:`DecisionPolicy`; the confidence boundaries are fixed by the spec.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import InvalidArgument
from .model import LIMITS, check_finite, check_fraction, check_positive

__all__ = [
    "AUTO_EXECUTE_ABOVE",
    "EMERGENCY_ABOVE",
    "STANDARD_FROM",
    "Decision",
    "DecisionKind",
    "DecisionPolicy",
    "Severity",
    "decide",
]

AUTO_EXECUTE_ABOVE = 0.9   # c > 0.9 (and critical)
EMERGENCY_ABOVE = 0.8      # 0.8 < c <= 0.9
STANDARD_FROM = 0.6        # 0.6 <= c <= 0.8


class Severity(str, enum.Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class DecisionKind(str, enum.Enum):
    AUTO_EXECUTE = "AUTO_EXECUTE"
    EMERGENCY_VOTE = "EMERGENCY_VOTE"
    STANDARD_VOTE = "STANDARD_VOTE"
    OBSERVE = "OBSERVE"


@dataclass(frozen=True)
class DecisionPolicy:
    emergency_vote_duration_s: float = 300.0
    emergency_quorum: float = 0.25
    emergency_threshold: float = 0.5
    standard_vote_duration_s: float = 3600.0
    standard_quorum: float = 0.5
    standard_threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("emergency_vote_duration_s", "standard_vote_duration_s"):
            check_positive(f"policy.{name}", getattr(self, name), LIMITS.max_duration_s)
        for name in ("emergency_quorum", "emergency_threshold", "standard_quorum", "standard_threshold"):
            check_fraction(f"policy.{name}", getattr(self, name))


@dataclass(frozen=True)
class Decision:
    """``vote_duration_s``, ``quorum`` and ``threshold`` are 0.0 for decisions
    that do not open a vote (AUTO_EXECUTE, OBSERVE)."""

    kind: DecisionKind
    vote_duration_s: float
    quorum: float
    threshold: float
    reason: str
    confidence: float = 0.0
    severity: Severity = Severity.LOW

    @property
    def requires_vote(self) -> bool:
        return self.kind in (DecisionKind.EMERGENCY_VOTE, DecisionKind.STANDARD_VOTE)


def decide(confidence: float, severity: Severity | str, policy: DecisionPolicy = DecisionPolicy()) -> Decision:
    c = check_finite("confidence", confidence)
    if not 0.0 <= c <= 1.0:
        raise InvalidArgument(f"confidence must be in [0, 1], got {c!r}")
    try:
        sev = Severity(severity)
    except ValueError:
        allowed = ", ".join(s.value for s in Severity)
        raise InvalidArgument(f"severity must be one of {{{allowed}}}, got {severity!r}") from None

    if c > AUTO_EXECUTE_ABOVE and sev is Severity.CRITICAL:
        return Decision(DecisionKind.AUTO_EXECUTE, 0.0, 0.0, 0.0,
                        f"confidence {c} > {AUTO_EXECUTE_ABOVE} and severity critical: auto-execute", c, sev)
    if c > EMERGENCY_ABOVE:
        why = (f"confidence {c} > {AUTO_EXECUTE_ABOVE} but severity {sev.value} is not critical"
               if c > AUTO_EXECUTE_ABOVE else f"{EMERGENCY_ABOVE} < confidence {c} <= {AUTO_EXECUTE_ABOVE}")
        return Decision(DecisionKind.EMERGENCY_VOTE, policy.emergency_vote_duration_s, policy.emergency_quorum,
                        policy.emergency_threshold, f"{why}: emergency vote", c, sev)
    if c >= STANDARD_FROM:
        return Decision(DecisionKind.STANDARD_VOTE, policy.standard_vote_duration_s, policy.standard_quorum,
                        policy.standard_threshold,
                        f"{STANDARD_FROM} <= confidence {c} <= {EMERGENCY_ABOVE}: standard vote", c, sev)
    return Decision(DecisionKind.OBSERVE, 0.0, 0.0, 0.0, f"confidence {c} < {STANDARD_FROM}: observe only", c, sev)
