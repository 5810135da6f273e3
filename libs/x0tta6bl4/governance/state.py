"""Governance state and its reducer: ``state = fold(events)``.

``GovernanceState.apply(event)`` is the only way state changes.  It performs
no validation of business rules (events are facts already decided by the
engine) but refuses events that cannot belong to a consistent stream
(unknown proposal, duplicate voter, ...), raising :class:`EventStreamError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import MappingProxyType

from .events import (
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
)
from .model import CloseReason, Proposal, ProposalState, Voter, VoteRecord
from .tally import RunningTally

__all__ = ["EventStreamError", "GovernanceState", "fold"]


class EventStreamError(ValueError):
    """The event stream is inconsistent (corrupted or out of order)."""


@dataclass
class GovernanceState:
    voters: dict[str, Voter] = field(default_factory=dict)
    proposals: dict[str, Proposal] = field(default_factory=dict)          # creation order
    votes: dict[str, dict[str, VoteRecord]] = field(default_factory=dict)  # proposal -> voter -> latest vote
    votes_by_id: dict[str, VoteRecord] = field(default_factory=dict)      # every vote ever cast
    running: dict[str, RunningTally] = field(default_factory=dict)        # proposal -> tally of `votes`
    nonces: dict[tuple[str, bytes], str] = field(default_factory=dict)    # (voter, nonce) -> vote_id
    requests: dict[tuple[str, str], str] = field(default_factory=dict)    # (proposer, request_id) -> proposal
    version: int = 0            # number of events applied
    last_event_at: float | None = None

    # ------------------------------------------------------------ reducer
    def apply(self, event: GovernanceEvent) -> None:
        handler = getattr(self, "_on_" + type(event).__name__, None)
        if handler is None:
            raise EventStreamError(f"unknown event type {type(event).__name__}")
        handler(event)
        self.version += 1
        self.last_event_at = event.at

    def _proposal(self, proposal_id: str) -> Proposal:
        try:
            return self.proposals[proposal_id]
        except KeyError:
            raise EventStreamError(f"event refers to unknown proposal {proposal_id!r}") from None

    def _replace(self, p: Proposal, **changes) -> None:
        self.proposals[p.proposal_id] = dataclasses.replace(p, **changes)

    def _add_proposal(self, p: Proposal) -> None:
        if p.proposal_id in self.proposals:
            raise EventStreamError(f"proposal {p.proposal_id!r} created twice")
        self.proposals[p.proposal_id] = p
        self.votes[p.proposal_id] = {}
        self.running[p.proposal_id] = RunningTally()
        if p.request_id:
            self.requests[(p.proposer, p.request_id)] = p.proposal_id

    def _on_VoterRegistered(self, e: VoterRegistered) -> None:
        if e.voter_id in self.voters:
            raise EventStreamError(f"voter {e.voter_id!r} registered twice")
        self.voters[e.voter_id] = Voter(e.voter_id, e.balance, e.at, e.key_id, e.public_key)

    def _on_VoterKeyRotated(self, e: VoterKeyRotated) -> None:
        v = self.voters.get(e.voter_id)
        if v is None:
            raise EventStreamError(f"key rotation for unknown voter {e.voter_id!r}")
        self.voters[e.voter_id] = dataclasses.replace(v, key_id=e.key_id, public_key=e.public_key)

    def _on_ProposalCreated(self, e: ProposalCreated) -> None:
        snapshot = MappingProxyType({v.voter_id: v.balance for v in self.voters.values()})
        self._add_proposal(Proposal(
            proposal_id=e.proposal_id, title=e.title, description=e.description, action=e.action,
            proposer=e.proposer, created_at=e.at, duration_s=e.duration_s, quorum=e.quorum,
            threshold=e.threshold, execution_window_s=e.execution_window_s, eligible=snapshot,
            cycle_id=e.cycle_id, request_id=e.request_id))

    def _on_ProposalAutoApproved(self, e: ProposalAutoApproved) -> None:
        self._add_proposal(Proposal(
            proposal_id=e.proposal_id, title=e.title, description=e.description, action=e.action,
            proposer=e.proposer, created_at=e.at, duration_s=0.0, quorum=0.0, threshold=0.0,
            execution_window_s=e.execution_window_s, eligible=MappingProxyType({}),
            state=ProposalState.PASSED, close_reason=CloseReason.AUTO_APPROVED, closed_at=e.at,
            closed_early=False, cycle_id=e.cycle_id, request_id=e.request_id))

    def _on_VoteCast(self, e: VoteCast) -> None:
        p = self._proposal(e.proposal_id)
        if p.state is not ProposalState.ACTIVE:
            raise EventStreamError(f"vote {e.vote_id!r} on non-active proposal {p.proposal_id!r}")
        if e.voter_id not in p.eligible:
            raise EventStreamError(f"vote {e.vote_id!r} by non-eligible voter {e.voter_id!r}")
        if e.vote_id in self.votes_by_id:
            raise EventStreamError(f"vote id {e.vote_id!r} applied twice")
        record = VoteRecord(e.vote_id, e.proposal_id, e.voter_id, e.choice, e.tokens, e.weight,
                            e.nonce, e.signature, e.at)
        votes = self.votes[e.proposal_id]
        self.running[e.proposal_id].replace(votes.get(e.voter_id), record)
        votes[e.voter_id] = record   # replaces any earlier vote: never both
        self.votes_by_id[e.vote_id] = record
        self.nonces[(e.voter_id, e.nonce)] = e.vote_id

    def _on_ProposalClosed(self, e: ProposalClosed) -> None:
        p = self._proposal(e.proposal_id)
        if p.state is not ProposalState.ACTIVE:
            raise EventStreamError(f"closing non-active proposal {p.proposal_id!r} ({p.state.value})")
        self._replace(p, state=e.outcome, close_reason=e.reason, closed_at=e.at, closed_early=e.early,
                      final_tally=e.tally)

    def _on_ProposalCanceled(self, e: ProposalCanceled) -> None:
        p = self._proposal(e.proposal_id)
        if p.state is not ProposalState.ACTIVE:
            raise EventStreamError(f"canceling non-active proposal {p.proposal_id!r} ({p.state.value})")
        self._replace(p, state=ProposalState.CANCELED, close_reason=CloseReason.CANCELED_BY_PROPOSER,
                      closed_at=e.at, finished_at=e.at)

    def _on_ExecutionFailed(self, e: ExecutionFailed) -> None:
        p = self._proposal(e.proposal_id)
        if p.state is not ProposalState.PASSED:
            raise EventStreamError(f"execution report for non-passed proposal {p.proposal_id!r}")
        self._replace(p, execution_attempts=p.execution_attempts + 1, last_execution_detail=e.detail)

    def _on_ProposalExecuted(self, e: ProposalExecuted) -> None:
        p = self._proposal(e.proposal_id)
        if p.state is not ProposalState.PASSED:
            raise EventStreamError(f"executing non-passed proposal {p.proposal_id!r} ({p.state.value})")
        self._replace(p, state=ProposalState.EXECUTED, finished_at=e.at,
                      execution_attempts=p.execution_attempts + 1, last_execution_detail=e.detail)

    def _on_ProposalExpired(self, e: ProposalExpired) -> None:
        p = self._proposal(e.proposal_id)
        if p.state is not ProposalState.PASSED:
            raise EventStreamError(f"expiring non-passed proposal {p.proposal_id!r} ({p.state.value})")
        self._replace(p, state=ProposalState.EXPIRED, finished_at=e.at)


def fold(events: Iterable[GovernanceEvent], state: GovernanceState | None = None) -> GovernanceState:
    """Rebuild (or advance) state from a stream of events."""
    st = state if state is not None else GovernanceState()
    for event in events:
        st.apply(event)
    return st
