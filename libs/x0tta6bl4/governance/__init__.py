"""Governance domain: quadratic-voting DAO over mesh actions (event-sourced, no I/O).

* ``engine.GovernanceEngine``  commands (validate -> events -> apply) and queries
* ``state.GovernanceState`` / ``state.fold``  reducer; state = fold(events)
* ``events``   domain event dataclasses + JSON-safe (de)serialisation
* ``tally``    quadratic arithmetic, outcome, early-close rule
* ``decision`` decision matrix (confidence x severity -> how to approve)
* ``signing``  canonical vote, proposal and cancel signing payloads
* ``eventlog`` the signed, hash-chained event log: record encoding, verification, replay verdicts
* ``errors``   GovernanceError hierarchy (each carries its gRPC code)
"""

from .clock import Clock, ManualClock
from .decision import Decision, DecisionKind, DecisionPolicy, Severity, decide
from .engine import GovernanceEngine, ProposalPage, ProposalResult, VoteResult
from .errors import (
    AlreadyExists,
    FailedPrecondition,
    GovernanceError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from .events import (
    EVENT_TYPES,
    ExecutionFailed,
    GovernanceEvent,
    ProposalAutoApproved,
    ProposalCanceled,
    ProposalClosed,
    ProposalCreated,
    ProposalExecuted,
    ProposalExpired,
    VoteCast,
    VoterKeyRotated,
    VoterRegistered,
    event_from_dict,
    event_to_dict,
)
from .model import (
    LIMITS,
    Action,
    ActionKind,
    CloseReason,
    Limits,
    Proposal,
    ProposalState,
    Tally,
    VoteChoice,
    Voter,
    VoteRecord,
    quadratic_weight,
)
from .signing import (
    CANCEL_DOMAIN,
    PROPOSE_DOMAIN,
    VOTE_DOMAIN,
    Verifier,
    cancel_signing_payload,
    default_request_id,
    default_vote_id,
    proposal_signing_payload,
    vote_signing_payload,
)
from .state import EventStreamError, GovernanceState, fold
from .tally import compute_tally, evaluate, is_decided_early

__all__ = [
    "CANCEL_DOMAIN",
    "EVENT_TYPES",
    "LIMITS",
    "PROPOSE_DOMAIN",
    "VOTE_DOMAIN",
    "Action",
    "ActionKind",
    "AlreadyExists",
    "Clock",
    "CloseReason",
    "Decision",
    "DecisionKind",
    "DecisionPolicy",
    "EventStreamError",
    "ExecutionFailed",
    "FailedPrecondition",
    "GovernanceEngine",
    "GovernanceError",
    "GovernanceEvent",
    "GovernanceState",
    "InvalidArgument",
    "Limits",
    "ManualClock",
    "NotFound",
    "PermissionDenied",
    "Proposal",
    "ProposalAutoApproved",
    "ProposalCanceled",
    "ProposalClosed",
    "ProposalCreated",
    "ProposalExecuted",
    "ProposalExpired",
    "ProposalPage",
    "ProposalResult",
    "ProposalState",
    "ResourceExhausted",
    "Severity",
    "Tally",
    "Unauthenticated",
    "Verifier",
    "VoteCast",
    "VoteChoice",
    "VoteRecord",
    "VoteResult",
    "Voter",
    "VoterKeyRotated",
    "VoterRegistered",
    "cancel_signing_payload",
    "compute_tally",
    "decide",
    "default_request_id",
    "default_vote_id",
    "evaluate",
    "event_from_dict",
    "event_to_dict",
    "fold",
    "is_decided_early",
    "proposal_signing_payload",
    "quadratic_weight",
    "vote_signing_payload",
]
