"""Domain <-> protobuf conversions for the governance service (no I/O)."""
from __future__ import annotations

from x0tta6bl4.governance import (
    Action,
    GovernanceEngine,
    InvalidArgument,
    Proposal,
    ProposalState,
    Severity,
    VoteChoice,
)
from x0tta6bl4.v1 import common_pb2, events_pb2
from x0tta6bl4.v1 import governance_pb2 as gpb

_ACTION_PREFIX = "ACTION_KIND_"


def action_from_pb(spec: events_pb2.ActionSpec) -> Action:
    if spec.kind == events_pb2.ACTION_KIND_UNSPECIFIED:
        raise InvalidArgument("action.kind is required (reroute, rotate_keys, deploy, config_change, isolate, restart, reinstate)")
    try:
        name = events_pb2.ActionKind.Name(spec.kind)
    except ValueError:
        raise InvalidArgument(f"action.kind {spec.kind} is not a known action kind") from None
    return Action(kind=name[len(_ACTION_PREFIX):].lower(), params=dict(spec.params), target_node=spec.target_node)


def action_to_pb(action: Action) -> events_pb2.ActionSpec:
    return events_pb2.ActionSpec(kind=events_pb2.ActionKind.Value(_ACTION_PREFIX + action.kind.value.upper()),
                                 target_node=action.target_node, params=dict(action.params))


def choice_from_pb(choice: int) -> VoteChoice:
    if choice == gpb.VOTE_CHOICE_YES:
        return VoteChoice.YES
    if choice == gpb.VOTE_CHOICE_NO:
        return VoteChoice.NO
    if choice == gpb.VOTE_CHOICE_ABSTAIN:
        return VoteChoice.ABSTAIN
    raise InvalidArgument(f"choice must be YES, NO or ABSTAIN, got {choice!r}")


def state_to_pb(state: ProposalState) -> int:
    return gpb.ProposalState.Value("PROPOSAL_STATE_" + state.value)


def state_from_pb(state: int) -> ProposalState | None:
    if state == gpb.PROPOSAL_STATE_UNSPECIFIED:
        return None
    try:
        return ProposalState(gpb.ProposalState.Name(state)[len("PROPOSAL_STATE_"):])
    except ValueError:
        raise InvalidArgument(f"state {state!r} is not a proposal state") from None


SEVERITY = {common_pb2.SEVERITY_LOW: Severity.LOW, common_pb2.SEVERITY_MEDIUM: Severity.MEDIUM,
            common_pb2.SEVERITY_HIGH: Severity.HIGH, common_pb2.SEVERITY_CRITICAL: Severity.CRITICAL}


def proposal_to_pb(eng: GovernanceEngine, p: Proposal) -> gpb.Proposal:
    t = eng.tally(p.proposal_id)
    return gpb.Proposal(
        id=p.proposal_id, title=p.title, description=p.description, action=action_to_pb(p.action),
        proposer=p.proposer, duration_s=p.duration_s, quorum=p.quorum, threshold=p.threshold,
        state=state_to_pb(p.state), close_reason=p.close_reason.value if p.close_reason else "",
        tally=gpb.Tally(yes=t.yes, no=t.no, abstain=t.abstain, eligible=t.eligible, turnout=t.turnout,
                        voters=t.voters),
        created_unix_ns=int(p.created_at * 1e9), closes_unix_ns=int(p.closes_at * 1e9),
        execution_window_s=p.execution_window_s, cycle_id=p.cycle_id)
