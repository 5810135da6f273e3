"""Governance stage: plans that need a vote become proposals; passed ones become action requests.

The domain (:mod:`x0tta6bl4.governance`) decides; this module connects it to the bus:

* :func:`on_plan` (consumer ``governance-plans``): an EMERGENCY/STANDARD_VOTE plan opens a proposal
  ``plan-<plan id>`` (idempotent); an AUTO_EXECUTE plan is recorded as auto-approved (``auto-<plan id>``);
  an OBSERVE plan is ignored.
* :func:`on_result` (consumer ``governance-results``): the executor's ActionResult marks the proposal
  EXECUTED (or records the failed attempt); a result for a proposal that cannot take it is audited as
  ``proposal.result_ignored``.
* :func:`on_commit`: what follows every stored commit of the governance log, in commit order: a
  ProposalEvent per changed proposal on ``gov.watch.<kind>`` (core NATS, for WatchProposals), an
  audit event per state change (grouped when one commit holds many of a kind), and the
  :func:`request_action` of every proposal that PASSED.
* :func:`request_action`: the ActionRequest of a PASSED proposal (from a plan, or an operator's own action:
  :func:`operator_request`), with a derived
  event id and action id, so publishing it again (redelivery, restart: :func:`resume`) is harmless;
  signed by governance's key as approved by the proposal (:mod:`x0tta6bl4.mapek.approval`), valid until
  the proposal's execution window ends plus the action's timeout.
* :func:`on_quarantine`: a message of the governance log that replay refused (forged, altered, out of
  chain, undecodable) is audited as ``gov.event.quarantined`` with its stream sequence and the reason.
* :func:`tick` (one iteration of :func:`run_ticker`): closes proposals whose period ended and expires
  passed ones whose execution window ended.

State lives behind :class:`GovernanceStore`: ``execute(command)`` runs a command on the engine and
returns once its events are stored. The service's store is event-sourced on the GOV stream
(``services/governance/store.py``); :class:`MemoryGovStore` is the same contract on the real engine in
memory (handler tests, tools).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import Message

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.ports import Context, Reject
from x0tta6bl4.governance import (
    Action,
    ActionKind,
    Decision,
    DecisionKind,
    DecisionPolicy,
    FailedPrecondition,
    GovernanceEngine,
    GovernanceError,
    InvalidArgument,
    NotFound,
    Proposal,
    ProposalState,
    Severity,
    VoteChoice,
    fold,
)
from x0tta6bl4.governance import events as gev
from x0tta6bl4.governance.events import GovernanceEvent
from x0tta6bl4.ids import derive_id, new_meta
from x0tta6bl4.mapek.approval import sign_approval
from x0tta6bl4.mapek.plan import action_request
from x0tta6bl4.trust import Signer
from x0tta6bl4.v1 import common_pb2, events_pb2
from x0tta6bl4.v1 import governance_pb2 as gpb

log = logging.getLogger("x0tta6bl4.governance")

PRODUCER = "governance"
PLANNER = "planner"            # the proposer of proposals opened from plans
VOTE_DECISIONS = (events_pb2.DECISION_KIND_EMERGENCY_VOTE, events_pb2.DECISION_KIND_STANDARD_VOTE)
MAX_TITLE, MAX_DESCRIPTION, MAX_RESULT_DETAIL = 200, 10_000, 4096

AUDIT_TYPES: dict[type, str] = {
    gev.VoterRegistered: "voter.registered",
    gev.VoterKeyRotated: "voter.key_rotated",
    gev.ProposalCreated: "proposal.created",
    gev.ProposalAutoApproved: "proposal.auto_approved",
    gev.VoteCast: "vote.cast",
    gev.ProposalCanceled: "proposal.canceled",
    gev.ExecutionFailed: "proposal.execution_failed",
    gev.ProposalExecuted: "proposal.executed",
    gev.ProposalExpired: "proposal.expired",
}
AUDIT_QUARANTINED = "gov.event.quarantined"   # a log message replay did not apply (see on_quarantine)
AUDIT_GROUP_ABOVE = 1   # more events of one type in one commit -> one audit event listing them all
AUDIT_HIDDEN = ("type", "schema_version", "signature", "public_key", "nonce", "at", "description")


# ---- the store port -------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a command returns: its reply value (or a callable(engine) evaluated after the commit), its
    events, and its service records (links from a proposal to the plan it came from)."""

    value: Any = None
    events: tuple[GovernanceEvent, ...] = ()
    links: list[dict] = field(default_factory=list)


Command = Callable[[GovernanceEngine], Outcome]
Reaction = Callable[[list, list], Awaitable[None]]


class GovernanceStore(Protocol):
    """The engine behind a single writer: commands run one at a time, replies after the commit."""

    @property
    def engine(self) -> GovernanceEngine:
        """The committed state (read it; change it only through :meth:`execute`)."""
        ...

    @property
    def links(self) -> Mapping[str, dict]:
        """proposal id -> its link: the plan (base64 protobuf), the plan's traceparent, the action id."""
        ...

    @property
    def by_action(self) -> Mapping[str, str]:
        """expected action id -> proposal id."""
        ...

    async def execute(self, fn: Command) -> Any:
        """Run ``fn`` on the engine; return its reply once its events are stored (GovernanceError raised
        by the command reaches the caller)."""
        ...

    def request_catch_up(self) -> None:
        """Apply what other replicas appended before the next command (no-op for a single writer)."""
        ...


def apply_links(links: Iterable[dict], into: MutableMapping[str, dict], by_action: MutableMapping[str, str]) -> None:
    """Index a commit's links by proposal id and by the action id the executor will report."""
    for link in links:
        into[link["proposal_id"]] = link
        if link.get("action_id"):
            by_action[link["action_id"]] = link["proposal_id"]


class MemoryGovStore:
    """:class:`GovernanceStore` on the real engine in memory: the log is a list of commits and the
    post-commit reaction runs inline, after the command, before ``execute`` returns (in order; an
    exception in it propagates, so a test sees it)."""

    def __init__(self, engine: GovernanceEngine, on_commit: Reaction | None = None):
        self.engine = engine
        self.on_commit = on_commit
        self.links: dict[str, dict] = {}
        self.by_action: dict[str, str] = {}
        self.log: list[tuple[list[GovernanceEvent], list[dict]]] = []
        self.catch_ups = 0
        self._lock = asyncio.Lock()

    @classmethod
    def replay(cls, log: Iterable[tuple[list[GovernanceEvent], list[dict]]], engine: GovernanceEngine,
               on_commit: Reaction | None = None) -> MemoryGovStore:
        """A store rebuilt from another's log (a restart): fold the events into ``engine``."""
        store = cls(engine, on_commit)
        for events, links in log:
            fold(events, engine.state)
            apply_links(links, store.links, store.by_action)
            store.log.append((list(events), list(links)))
        return store

    async def execute(self, fn: Command) -> Any:
        async with self._lock:
            out = fn(self.engine)
            events = list(out.events)
            links = list(out.links) if events else []
            if events:
                self.log.append((events, links))
                apply_links(links, self.links, self.by_action)
            reply = out.value(self.engine) if callable(out.value) else out.value
            if events and self.on_commit is not None:
                await self.on_commit(events, links)
        return reply

    async def read(self, fn: Callable[[GovernanceEngine], Any]) -> Any:
        return await self.execute(lambda eng: Outcome(fn(eng)))

    def request_catch_up(self) -> None:
        self.catch_ups += 1


# ---- dependencies ---------------------------------------------------------------------------------------
Watch = Callable[[str, Message], Awaitable[None]]
"""Publish to watchers, not stored (core NATS): ``watch(subject, ProposalEvent)``."""
TraceScope = Callable[[str, Mapping[str, str], Mapping[str, str]], AbstractContextManager[Any]]
"""``scope(span_name, carrier, attributes)``: run the body in the trace of ``carrier`` (W3C headers)."""


def no_trace(name: str, carrier: Mapping[str, str], attributes: Mapping[str, str]) -> AbstractContextManager[Any]:
    return contextlib.nullcontext()


@dataclass
class GovernanceDeps:
    store: GovernanceStore
    policy: DecisionPolicy                  # vote durations, quorum and threshold per decision kind
    execution_window_s: float               # how long a passed proposal may be executed
    action_timeout_s: float                 # the ActionRequest's timeout
    watch: Watch                            # ProposalEvent fan-out for WatchProposals
    tick_interval_s: float = 0.2
    trace: TraceScope = no_trace            # the plan's trace around the ActionRequest (one cycle, one trace)
    signer: Signer | None = None            # governance's key: signs passed proposals' ActionRequests
    clock_ns: Callable[[], int] = time.time_ns   # when an approval is issued (wall clock, as the executor's)


# ---- protobuf <-> domain (no I/O; the gRPC servicer uses these too) ---------------------------------------
_ACTION_PREFIX = "ACTION_KIND_"
SEVERITY = {common_pb2.SEVERITY_LOW: Severity.LOW, common_pb2.SEVERITY_MEDIUM: Severity.MEDIUM,
            common_pb2.SEVERITY_HIGH: Severity.HIGH, common_pb2.SEVERITY_CRITICAL: Severity.CRITICAL}


def action_from_pb(spec: events_pb2.ActionSpec) -> Action:
    if spec.kind == events_pb2.ACTION_KIND_UNSPECIFIED:
        raise InvalidArgument("action.kind is required "
                              "(reroute, rotate_keys, deploy, config_change, isolate, restart, reinstate, "
                              "topology_update)")
    try:
        name = events_pb2.ActionKind.Name(spec.kind)
        kind = ActionKind(name[len(_ACTION_PREFIX):].lower())
    except ValueError:
        allowed = ", ".join(k.value for k in ActionKind)
        raise InvalidArgument(f"action.kind {spec.kind} is not a governance action kind ({allowed})") from None
    return Action(kind=kind, params=dict(spec.params), target_node=spec.target_node)


def action_to_pb(action: Action) -> events_pb2.ActionSpec:
    return events_pb2.ActionSpec(kind=_ACTION_PREFIX + action.kind.value.upper(), target_node=action.target_node,
                                 params=dict(action.params))


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


def proposal_to_pb(eng: GovernanceEngine, p: Proposal) -> gpb.Proposal:
    t = eng.tally(p.proposal_id)
    return gpb.Proposal(
        id=p.proposal_id, title=p.title, description=p.description, action=action_to_pb(p.action),
        proposer=p.proposer, duration_s=p.duration_s, quorum=p.quorum, threshold=p.threshold,
        state="PROPOSAL_STATE_" + p.state.value, close_reason=p.close_reason.value if p.close_reason else "",
        tally=gpb.Tally(yes=t.yes, no=t.no, abstain=t.abstain, eligible=t.eligible, turnout=t.turnout,
                        voters=t.voters),
        created_unix_ns=int(p.created_at * 1e9), closes_unix_ns=int(p.closes_at * 1e9),
        execution_window_s=p.execution_window_s, cycle_id=p.cycle_id)


# ---- handlers -------------------------------------------------------------------------------------------
def plan_proposal_id(plan: events_pb2.Plan) -> str:
    auto = plan.decision == events_pb2.DECISION_KIND_AUTO_EXECUTE
    return f"{'auto' if auto else 'plan'}-{plan.plan_id}"


async def on_plan(plan: events_pb2.Plan, ctx: Context, deps: GovernanceDeps) -> None:
    """Open the proposal a plan asks for (idempotent: a redelivered plan finds its proposal)."""
    if plan.decision not in (*VOTE_DECISIONS, events_pb2.DECISION_KIND_AUTO_EXECUTE):
        return  # OBSERVE: nothing to approve
    try:
        action = action_from_pb(plan.action)
    except GovernanceError as e:
        raise Reject(f"plan {plan.plan_id}: {e}") from None
    node = plan.action.target_node or plan.root_cause
    title = f"{action.kind.value} {node}: {plan.fault_type or 'incident'} {plan.incident_id}".strip()[:MAX_TITLE]
    description = (plan.rationale or "")[:MAX_DESCRIPTION]
    pid = plan_proposal_id(plan)
    link = {"plan": base64.b64encode(plan.SerializeToString(deterministic=True)).decode(),
            "traceparent": ctx.headers.get("traceparent", ""), "plan_id": plan.plan_id, "proposal_id": pid}
    if plan.decision == events_pb2.DECISION_KIND_AUTO_EXECUTE:
        link["action_id"] = derive_id("action", plan.plan_id, "")   # the planner's own ActionRequest
        decision = Decision(DecisionKind.AUTO_EXECUTE, 0.0, 0.0, 0.0, plan.rationale or "auto-execute",
                            plan.confidence, SEVERITY.get(plan.severity, Severity.LOW))

        def cmd(eng: GovernanceEngine) -> Outcome:
            res = eng.create_from_decision(decision, title=title, description=description, action=action,
                                           proposer=PLANNER, execution_window_s=deps.execution_window_s,
                                           proposal_id=pid, request_id=plan.plan_id, cycle_id=plan.meta.cycle_id)
            return Outcome(res.duplicate, res.events, [] if res.duplicate else [link])
    else:
        link["action_id"] = derive_id("action", plan.plan_id, pid)
        policy = deps.policy
        emergency = plan.decision == events_pb2.DECISION_KIND_EMERGENCY_VOTE
        duration = float(plan.vote_duration_s) or (policy.emergency_vote_duration_s if emergency
                                                   else policy.standard_vote_duration_s)
        quorum = policy.emergency_quorum if emergency else policy.standard_quorum
        threshold = policy.emergency_threshold if emergency else policy.standard_threshold

        def cmd(eng: GovernanceEngine) -> Outcome:
            res = eng.create_proposal(title=title, description=description, action=action, proposer=PLANNER,
                                      duration_s=duration, quorum=quorum, threshold=threshold,
                                      execution_window_s=deps.execution_window_s, proposal_id=pid,
                                      request_id=plan.plan_id, cycle_id=plan.meta.cycle_id)
            return Outcome(res.duplicate, res.events, [] if res.duplicate else [link])
    try:
        await deps.store.execute(cmd)
    except (InvalidArgument, FailedPrecondition) as e:
        raise Reject(f"plan {plan.plan_id} cannot become a proposal: {e}") from None


async def on_result(result: events_pb2.ActionResult, ctx: Context, deps: GovernanceDeps) -> None:
    """The executor's outcome for a proposal's action: EXECUTED, or a failed attempt recorded."""
    pid = result.proposal_id or deps.store.by_action.get(result.action_id, "")
    if not pid:
        return  # an action no proposal asked for (e.g. an operator's)
    detail = (result.error or ("ok" if result.success else "failed"))[:MAX_RESULT_DETAIL]
    try:
        await deps.store.execute(lambda eng: Outcome(None, eng.report_execution(pid, result.success, detail)))
    except (NotFound, FailedPrecondition) as e:
        await ctx.audit("proposal.result_ignored", pid, {"action_id": result.action_id, "reason": str(e)})


async def request_action(pid: str, ctx: Context, deps: GovernanceDeps) -> None:
    """Publish the ActionRequest of a PASSED proposal, from a plan or an operator's (same ids every time)."""
    store = deps.store
    link = store.links.get(pid)
    p = store.engine.state.proposals.get(pid)
    if p is None or p.auto_approved:
        return
    if link is not None and link.get("plan"):
        plan = events_pb2.Plan.FromString(base64.b64decode(link["plan"]))
        req = action_request(plan, f"dao:{pid}", pid, timeout_s=deps.action_timeout_s)
        plan_id, cycle_id = plan.plan_id, plan.meta.cycle_id
    else:   # an operator's proposal: the action is the proposal's own
        req = operator_request(p, deps.action_timeout_s)
        plan_id, cycle_id = "", req.meta.cycle_id
    req.meta.event_id = derive_id("governance-action", pid)
    if deps.signer is None:   # the executor runs nothing unsigned: say so rather than publish it
        log.error("governance: no signing key: the action of passed proposal %s is not requested", pid)
        await ctx.audit("action.not_requested", pid, {"action_id": req.action_id, "reason": "no signing key"},
                        cycle_id=cycle_id)
        return
    now_ns = deps.clock_ns()
    deadline_s = p.execution_deadline if p.execution_deadline is not None else now_ns / 1e9 + p.execution_window_s
    sign_approval(req, deps.signer, max(deadline_s - now_ns / 1e9, 0.0) + deps.action_timeout_s, now_ns)
    carrier = {"traceparent": link["traceparent"]} if link is not None and link.get("traceparent") else {}
    with deps.trace("governance.action_requested", carrier,
                    {"x0.cycle_id": cycle_id, "x0.proposal": pid}):
        await ctx.publish(subjects.MAPEK_ACTION, req, cycle_id=cycle_id)
        details = {"action_id": req.action_id, "approved_by": req.approved_by, "plan": plan_id}
        if not plan_id:
            details["proposer"] = p.proposer      # an operator's proposal
        await ctx.audit("action.requested", pid, details, cycle_id=cycle_id)


def operator_request(p: Proposal, timeout_s: float) -> events_pb2.ActionRequest:
    """The ActionRequest of a passed proposal an operator made (not from a plan): its own action, the same ids
    every time (a redelivery or a restart publishes the same request); its cycle is the proposal's, or one derived
    from the proposal id (an operator's change is a cycle of its own: execution, verification)."""
    cycle_id = p.cycle_id or derive_id("cycle", "operator", p.proposal_id)
    return events_pb2.ActionRequest(
        meta=new_meta(PRODUCER, cycle_id), action_id=derive_id("action", "operator", p.proposal_id),
        action=action_to_pb(p.action), approved_by=f"dao:{p.proposal_id}", proposal_id=p.proposal_id,
        timeout_s=timeout_s)


def audit_type(e: GovernanceEvent) -> str:
    if isinstance(e, gev.ProposalClosed):
        return "proposal.passed" if e.outcome is ProposalState.PASSED else "proposal.rejected"
    return AUDIT_TYPES.get(type(e), "governance.event")


def audit_fields(eng: GovernanceEngine, e: GovernanceEvent) -> tuple[str, dict, str]:
    """(subject id, details, cycle id) of one event's audit record (no signatures, keys or nonces)."""
    d = gev.event_to_dict(e)
    for k in AUDIT_HIDDEN:
        d.pop(k, None)
    if "tally" in d:
        d["tally"] = {k: round(v, 6) if isinstance(v, float) else v for k, v in d["tally"].items()}
    pid = getattr(e, "proposal_id", "")
    cycle = eng.state.proposals[pid].cycle_id if pid in eng.state.proposals else ""
    return (pid or getattr(e, "voter_id", ""), d, cycle)


async def on_commit(events: list, links: list[dict], ctx: Context, deps: GovernanceDeps) -> None:
    """React to stored commits (in commit order): watch events, the audit trail, action requests."""
    eng = deps.store.engine
    seen: set[tuple[str, str]] = set()
    for e in events:
        pid = getattr(e, "proposal_id", "")
        if not pid or (pid, e.watch_kind) in seen or pid not in eng.state.proposals:
            continue
        seen.add((pid, e.watch_kind))
        p = eng.state.proposals[pid]
        ev = gpb.ProposalEvent(meta=new_meta(PRODUCER, p.cycle_id), kind=e.watch_kind,
                               proposal=proposal_to_pb(eng, p))
        try:
            await deps.watch(subjects.gov_watch(e.watch_kind), ev)
        except Exception as exc:  # noqa: BLE001 - watchers are best effort
            log.warning("governance: watch publish failed: %s", exc)
    groups: dict[str, list] = defaultdict(list)
    for e in events:
        groups[audit_type(e)].append(e)
    for kind, evs in groups.items():
        if len(evs) <= AUDIT_GROUP_ABOVE:
            for e in evs:
                subject_id, details, cycle = audit_fields(eng, e)
                await ctx.audit(kind, subject_id, details, cycle_id=cycle)
        else:
            ids = [getattr(e, "vote_id", "") or getattr(e, "proposal_id", "") or getattr(e, "voter_id", "")
                   for e in evs]
            await ctx.audit(kind, f"{len(evs)} events", {"count": len(evs), "ids": ",".join(ids)}, cycle_id="")
    for e in events:
        if isinstance(e, gev.ProposalClosed) and e.outcome is ProposalState.PASSED:
            await request_action(e.proposal_id, ctx, deps)


async def on_quarantine(stream_seq: int, subject: str, reason: str, ctx: Context, deps: GovernanceDeps) -> None:
    """A governance log message that was not applied (forged, altered, out of chain, undecodable): audited
    once, with its stream sequence and the reason (the store counts it and shows it in /ready)."""
    await ctx.audit(AUDIT_QUARANTINED, str(stream_seq), {"stream_seq": stream_seq, "subject": subject,
                                                        "reason": reason[:MAX_RESULT_DETAIL]})


async def resume(ctx: Context, deps: GovernanceDeps) -> int:
    """At start: publish again the ActionRequest of every PASSED proposal (it may have been lost in a
    crash; the same event id is de-duplicated by JetStream, the same action id runs once). Returns how many."""
    store = deps.store
    pids = [pid for pid, p in list(store.engine.state.proposals.items())
            if p.state is ProposalState.PASSED and (pid in store.links or not p.auto_approved)]
    for pid in pids:
        await request_action(pid, ctx, deps)
    return len(pids)


async def tick(ctx: Context, deps: GovernanceDeps) -> None:
    """One tick: catch up with other replicas, close proposals whose period ended, expire passed ones whose
    execution window ended (the reactions to those events follow the commit)."""
    deps.store.request_catch_up()
    try:
        await deps.store.execute(lambda eng: Outcome(None, eng.tick()))
    except GovernanceError as e:
        log.warning("governance: tick failed: %s", e)


async def run_ticker(ctx: Context, deps: GovernanceDeps) -> None:
    """The background loop: :func:`tick` every ``tick_interval_s``."""
    while True:
        await asyncio.sleep(deps.tick_interval_s)
        await tick(ctx, deps)
