"""Governance stage on the in-memory bus: the service's own handler bindings (services.governance.main.bind)
over a store backed by the real GovernanceEngine (manual clock, real ML-DSA-65 vote signatures)."""
from __future__ import annotations

import functools
import secrets
import uuid

import pytest
from trustkit import Keys

from services.governance.main import GovernanceSettings, bind
from services.governance.verify import VoteVerifier, ledger_verifier
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import Service
from x0tta6bl4.bus.memory import TestBus
from x0tta6bl4.governance import Action, GovernanceEngine, ManualClock, ProposalState, vote_signing_payload
from x0tta6bl4.ids import derive_id, new_meta
from x0tta6bl4.mapek.approval import verify_approval
from x0tta6bl4.pqc import MLDSA65PrivateKey
from x0tta6bl4.pqc import key_id as pqc_key_id
from x0tta6bl4.stages import governance as stage
from x0tta6bl4.stages.governance import Outcome
from x0tta6bl4.v1 import common_pb2, events_pb2
from x0tta6bl4.v1 import governance_pb2 as gpb

T0 = 1_700_000_000.0
K = events_pb2


class Gov:
    """The governance service's handlers on the in-memory bus, reactions included."""

    def __init__(self, tmp_path, log=None, **settings):
        self.settings = GovernanceSettings(data_dir=tmp_path, standard_vote_s=600, emergency_vote_s=60,
                                           standard_quorum=0.5, emergency_quorum=0.25, execution_window_s=300,
                                           action_timeout_s=12, **settings)
        self.clock = ManualClock(T0)
        engine = GovernanceEngine(ledger_verifier(lambda: self.store.engine, VoteVerifier(threads=0)), self.clock)
        self.store = (stage.MemoryGovStore(engine) if log is None else stage.MemoryGovStore.replay(log, engine))
        self.app = Service("governance", self.settings)
        self.bus = TestBus(self.app)
        self.trust = Keys.make(tmp_path / "trust")      # governance signs the ActionRequests of passed proposals
        self.deps = stage.GovernanceDeps(self.store, self.settings.policy(), self.settings.execution_window_s,
                                         self.settings.action_timeout_s, self.watch,
                                         signer=self.trust.signers["governance"],
                                         clock_ns=lambda: int(self.clock() * 1e9))
        self.ctx = self.bus.context()        # background work (reactions, ticks) has no message
        self.store.on_commit = functools.partial(stage.on_commit, ctx=self.ctx, deps=self.deps)
        bind(self.app, self.deps)
        self.keys: dict[str, MLDSA65PrivateKey] = {}

    async def watch(self, subject: str, msg) -> None:
        await self.bus.emit(subject, msg)

    async def voter(self, name: str, balance: float = 100.0) -> str:
        key = self.keys[name] = MLDSA65PrivateKey.generate()
        pub = key.public_key().public_bytes()
        await self.store.execute(lambda eng: Outcome(None, eng.register_voter(
            name, balance, key_id=pqc_key_id(pub), public_key=pub)))
        return name

    async def vote(self, pid: str, voter: str, choice: str = "YES", tokens: float = 100.0) -> None:
        nonce = secrets.token_bytes(16)
        sig = self.keys[voter].sign(vote_signing_payload(pid, voter, choice, tokens, nonce))
        await self.store.execute(
            lambda eng: Outcome(None, eng.cast_vote(pid, voter, choice, tokens, nonce, sig).events))

    def proposal(self, pid: str):
        return self.store.engine.state.proposals.get(pid)

    def actions(self) -> list[events_pb2.ActionRequest]:
        return self.bus.messages(subjects.MAPEK_ACTION)


def plan(decision=K.DECISION_KIND_STANDARD_VOTE, vote_s: int = 0, kind=K.ACTION_KIND_REROUTE,
         plan_id: str | None = None, cycle: str = "cycle-7") -> events_pb2.Plan:
    return events_pb2.Plan(
        meta=new_meta("planner", cycle), plan_id=plan_id or uuid.uuid4().hex[:24], incident_id="n7.link_loss",
        fault_type="link_loss", root_cause="n7", confidence=0.7, severity=common_pb2.SEVERITY_HIGH,
        decision=decision, action=events_pb2.ActionSpec(kind=kind, target_node="n7", params={"avoid": "n7"}),
        rationale="0.6 <= confidence 0.7 <= 0.8: standard vote", vote_duration_s=vote_s,
        first_symptom_unix_ns=123)


def redelivered(p: events_pb2.Plan) -> events_pb2.Plan:
    """The same plan under a new event id (the planner re-published it): idempotency by plan id."""
    again = events_pb2.Plan()
    again.CopyFrom(p)
    again.meta.event_id = uuid.uuid4().hex
    return again


def result(pid: str = "", action_id: str = "", success: bool = True, error: str = "") -> events_pb2.ActionResult:
    return events_pb2.ActionResult(meta=new_meta("executor", "cycle-7"), action_id=action_id or uuid.uuid4().hex,
                                   action=events_pb2.ActionSpec(kind=K.ACTION_KIND_REROUTE, target_node="n7"),
                                   success=success, error=error, proposal_id=pid)


@pytest.fixture
def gov(tmp_path) -> Gov:
    return Gov(tmp_path)


async def passed_plan(gov: Gov, **kw) -> tuple[events_pb2.Plan, str]:
    for name in ("alice", "bob"):
        if name not in gov.keys:
            await gov.voter(name)
    p = plan(**kw)
    await gov.bus.publish(subjects.MAPEK_PLAN, p)
    pid = f"plan-{p.plan_id}"
    for name in ("alice", "bob"):
        await gov.vote(pid, name)             # every eligible voter voted: it closes at once
    assert gov.proposal(pid).state is ProposalState.PASSED
    return p, pid


# ---- plans ---------------------------------------------------------------------------------------------
async def test_a_plan_needing_a_vote_opens_an_audited_proposal_once(gov):
    await gov.voter("alice")
    p = plan(K.DECISION_KIND_STANDARD_VOTE)
    await gov.bus.publish(subjects.MAPEK_PLAN, p)
    pid = f"plan-{p.plan_id}"
    prop = gov.proposal(pid)
    assert prop.state is ProposalState.ACTIVE and prop.proposer == "planner" and prop.cycle_id == "cycle-7"
    # no duration in the plan: the policy's, from the settings
    assert (prop.duration_s, prop.quorum, prop.threshold) == (600, 0.5, 0.5)
    assert prop.closes_at == T0 + 600 and prop.execution_window_s == 300
    assert prop.title == "reroute n7: link_loss n7.link_loss" and prop.action.params == {"avoid": "n7"}
    [audit] = gov.bus.audited("proposal.created")
    assert audit.subject_id == pid and audit.cycle_id == "cycle-7" and audit.details["proposer"] == "planner"
    assert "description" not in audit.details
    [ev] = gov.bus.messages(subjects.gov_watch("created"))
    assert ev.kind == "created" and ev.proposal.id == pid and ev.proposal.state == gpb.PROPOSAL_STATE_ACTIVE
    assert gov.store.links[pid]["plan_id"] == p.plan_id
    assert gov.store.by_action[derive_id("action", p.plan_id, pid)] == pid
    # the plan again (redelivery, or the planner re-published it): still one proposal, nothing new
    await gov.bus.publish(subjects.MAPEK_PLAN, redelivered(p))
    assert len(gov.store.engine.state.proposals) == 1 and len(gov.bus.audited("proposal.created")) == 1
    assert gov.actions() == [] and gov.bus.dead_letters == []


async def test_an_emergency_plan_takes_its_own_duration_and_the_emergency_quorum(gov):
    await gov.voter("alice")
    p = plan(K.DECISION_KIND_EMERGENCY_VOTE, vote_s=30)
    await gov.bus.publish(subjects.MAPEK_PLAN, p)
    prop = gov.proposal(f"plan-{p.plan_id}")
    assert (prop.duration_s, prop.quorum, prop.threshold) == (30, 0.25, 0.5)


async def test_an_auto_execute_plan_opens_no_vote_and_requests_no_action(gov):
    await gov.voter("alice")
    p = plan(K.DECISION_KIND_AUTO_EXECUTE)
    await gov.bus.publish(subjects.MAPEK_PLAN, p)
    # recorded as already approved (the planner publishes its ActionRequest itself): nothing to vote on
    prop = gov.proposal(f"auto-{p.plan_id}")
    assert prop.auto_approved and prop.state is ProposalState.PASSED
    assert not gov.store.engine.list_proposals(ProposalState.ACTIVE).proposals
    assert gov.actions() == [] and gov.bus.audited("action.requested") == []
    assert [a.subject_id for a in gov.bus.audited("proposal.auto_approved")] == [prop.proposal_id]
    # a restart does not request it either
    assert await stage.resume(gov.ctx, gov.deps) == 1 and gov.actions() == []
    # the executor's result for the planner's action (no proposal id on it) finds the proposal by action id
    await gov.bus.publish(subjects.MAPEK_RESULT, result(action_id=derive_id("action", p.plan_id, "")))
    assert gov.proposal(prop.proposal_id).state is ProposalState.EXECUTED


async def test_an_observe_plan_is_ignored(gov):
    await gov.voter("alice")
    audits = len(gov.bus.audits)
    await gov.bus.publish(subjects.MAPEK_PLAN, plan(K.DECISION_KIND_OBSERVE))
    assert gov.store.engine.state.proposals == {} and len(gov.bus.audits) == audits and gov.bus.dead_letters == []


async def test_a_plan_that_cannot_become_a_proposal_is_dead_lettered_with_the_reason(gov):
    await gov.bus.publish(subjects.MAPEK_PLAN, plan(kind=K.ACTION_KIND_UNSPECIFIED))
    p = plan()
    await gov.bus.publish(subjects.MAPEK_PLAN, p)       # no voter registered yet
    first, second = (d.reason for d in gov.bus.dead_letters)
    assert "action.kind is required" in first
    assert f"plan {p.plan_id} cannot become a proposal" in second and "no voters are registered" in second
    assert gov.store.engine.state.proposals == {}


# ---- a passed proposal becomes an action request ---------------------------------------------------------
async def test_a_passed_plan_proposal_requests_its_action_once_with_derived_ids(gov):
    p, pid = await passed_plan(gov)
    [req] = gov.actions()
    assert req.approved_by == f"dao:{pid}" and req.proposal_id == pid and req.plan_id == p.plan_id
    assert req.action_id == derive_id("action", p.plan_id, pid)
    assert req.meta.event_id == derive_id("governance-action", pid) and req.meta.cycle_id == "cycle-7"
    assert req.meta.producer == "governance" and req.timeout_s == 12
    assert req.action.target_node == "n7" and req.incident_id == p.incident_id and req.first_symptom_unix_ns == 123
    # approved by governance's key for exactly this action, until the execution window ends (+ the timeout)
    assert verify_approval(req, gov.trust.bundle, int(T0 * 1e9)) == "governance"
    deadline = gov.proposal(pid).execution_deadline
    assert req.approval.expires_unix_ns == pytest.approx((deadline + 12) * 1e9, abs=1e3)
    [passed] = gov.bus.audited("proposal.passed")
    assert passed.subject_id == pid and passed.details["outcome"] == "PASSED"
    [requested] = gov.bus.audited("action.requested")
    assert requested.details == {"action_id": req.action_id, "approved_by": f"dao:{pid}", "plan": p.plan_id}
    assert requested.cycle_id == "cycle-7"
    # vote audits carry no signature material
    votes = gov.bus.audited("vote.cast")
    assert len(votes) == 2 and all(not {"signature", "nonce"} & set(v.details) for v in votes)
    # the plan redelivered: no second proposal, no second request
    await gov.bus.publish(subjects.MAPEK_PLAN, redelivered(p))
    assert len(gov.actions()) == 1


async def test_without_a_signing_key_a_passed_proposal_requests_nothing_and_says_so(gov):
    gov.deps.signer = None                # the executor would refuse an unsigned request: none is published
    _, pid = await passed_plan(gov)
    assert gov.actions() == []
    [audit] = gov.bus.audited("action.not_requested")
    assert audit.subject_id == pid and audit.details["reason"] == "no signing key"


async def test_a_restart_requests_passed_actions_again_under_the_same_ids(gov, tmp_path):
    _, pid = await passed_plan(gov)
    [before] = gov.actions()
    restarted = Gov(tmp_path, log=gov.store.log)        # a new process replaying the log
    assert restarted.proposal(pid).state is ProposalState.PASSED
    assert await stage.resume(restarted.ctx, restarted.deps) == 1
    [again] = restarted.actions()
    # same event id (JetStream drops the copy) and same action id (the executor runs it once)
    assert (again.meta.event_id, again.action_id) == (before.meta.event_id, before.action_id)
    # once executed, a restart has nothing to request
    await restarted.bus.publish(subjects.MAPEK_RESULT, result(pid, before.action_id))
    assert await stage.resume(restarted.ctx, restarted.deps) == 0


async def test_a_rejected_proposal_requests_nothing(gov):
    for name in ("alice", "bob"):
        await gov.voter(name)
    p = plan()
    await gov.bus.publish(subjects.MAPEK_PLAN, p)
    pid = f"plan-{p.plan_id}"
    for name in ("alice", "bob"):
        await gov.vote(pid, name, "NO")
    assert gov.proposal(pid).state is ProposalState.REJECTED
    assert gov.actions() == [] and [a.subject_id for a in gov.bus.audited("proposal.rejected")] == [pid]


# ---- results -----------------------------------------------------------------------------------------------
async def test_an_action_result_marks_the_proposal_executed(gov):
    _, pid = await passed_plan(gov)
    [req] = gov.actions()
    await gov.bus.publish(subjects.MAPEK_RESULT, result(pid, req.action_id, success=False, error="agent n7 away"))
    assert gov.proposal(pid).state is ProposalState.PASSED           # a failed attempt: may be retried
    [failed] = gov.bus.audited("proposal.execution_failed")
    assert failed.subject_id == pid and failed.details["detail"] == "agent n7 away"
    await gov.bus.publish(subjects.MAPEK_RESULT, result("", req.action_id))   # found by its action id
    assert gov.proposal(pid).state is ProposalState.EXECUTED
    [done] = gov.bus.audited("proposal.executed")
    assert done.subject_id == pid and done.cycle_id == "cycle-7"
    [ev] = gov.bus.messages(subjects.gov_watch("executed"))
    assert ev.proposal.state == gpb.PROPOSAL_STATE_EXECUTED


async def test_a_result_no_proposal_can_take_is_audited_as_ignored(gov):
    await gov.voter("alice")
    p = plan()
    await gov.bus.publish(subjects.MAPEK_PLAN, p)
    active = f"plan-{p.plan_id}"
    await gov.bus.publish(subjects.MAPEK_RESULT, result("plan-unknown", "a1"))
    await gov.bus.publish(subjects.MAPEK_RESULT, result(active, "a2"))      # still voting: not PASSED
    await gov.bus.publish(subjects.MAPEK_RESULT, result("", "an-operators-action"))   # no proposal: none of ours
    unknown, early = gov.bus.audited("proposal.result_ignored")
    assert unknown.subject_id == "plan-unknown" and unknown.details["action_id"] == "a1"
    assert "plan-unknown" in unknown.details["reason"]
    assert early.subject_id == active and "not PASSED" in early.details["reason"]
    assert gov.proposal(active).state is ProposalState.ACTIVE and gov.bus.dead_letters == []


# ---- the ticker -----------------------------------------------------------------------------------------------
async def test_a_tick_closes_proposals_whose_period_ended(gov):
    await gov.voter("alice")
    await gov.voter("bob")
    plans = [plan(vote_s=60), plan(vote_s=60), plan(vote_s=600)]
    for p in plans:
        await gov.bus.publish(subjects.MAPEK_PLAN, p)
    first, second, later = (f"plan-{p.plan_id}" for p in plans)
    await gov.vote(first, "alice")         # half the weight, YES: quorum and threshold met, not closed early
    assert gov.proposal(first).state is ProposalState.ACTIVE
    gov.clock.advance(59)
    await stage.tick(gov.ctx, gov.deps)
    assert all(gov.proposal(pid).state is ProposalState.ACTIVE for pid in (first, second, later))
    gov.clock.advance(1)
    await stage.tick(gov.ctx, gov.deps)
    assert gov.proposal(first).state is ProposalState.PASSED
    assert gov.proposal(second).state is ProposalState.REJECTED and gov.proposal(later).state is ProposalState.ACTIVE
    assert gov.store.catch_ups == 2                  # each tick first catches up with other replicas
    [req] = gov.actions()
    assert req.proposal_id == first
    # the passed one is never executed: the tick after its execution window expires it
    gov.clock.advance(300)
    await stage.tick(gov.ctx, gov.deps)
    assert gov.proposal(first).state is ProposalState.EXPIRED
    assert [a.subject_id for a in gov.bus.audited("proposal.expired")] == [first]
    await gov.bus.publish(subjects.MAPEK_RESULT, result(first, req.action_id))   # too late
    assert gov.proposal(first).state is ProposalState.EXPIRED and gov.bus.audited("proposal.result_ignored")


async def test_many_events_of_one_kind_in_one_commit_make_one_audit_event(gov):
    await gov.voter("alice")
    plans = [plan(vote_s=60) for _ in range(3)]
    for p in plans:
        await gov.bus.publish(subjects.MAPEK_PLAN, p)
    gov.clock.advance(60)
    await stage.tick(gov.ctx, gov.deps)            # one commit closes all three (no votes: rejected)
    [grouped] = gov.bus.audited("proposal.rejected")
    assert grouped.subject_id == "3 events" and grouped.details["count"] == 3
    assert grouped.details["ids"].split(",") == [f"plan-{p.plan_id}" for p in plans]
    # watchers still get one event per proposal
    assert len(gov.bus.messages(subjects.gov_watch("rejected"))) == 3


# ---- an operator's proposal (not from a plan) --------------------------------------------------------------
async def test_a_passed_operator_proposal_requests_its_own_action_signed(gov, tmp_path):
    for name in ("alice", "bob"):
        await gov.voter(name)
    action = Action("topology_update", {"link": "n1,n2", "state": "down"})
    def create(eng):
        r = eng.create_proposal(title="n1-n2 down", description="", action=action, proposer="alice",
                                duration_s=60, quorum=0.5, threshold=0.5)
        return Outcome(r.proposal.proposal_id, r.events)
    pid = await gov.store.execute(create)
    assert gov.actions() == []                      # nothing before the vote
    for name in ("alice", "bob"):
        await gov.vote(pid, name)
    [req] = gov.actions()
    assert req.approved_by == f"dao:{pid}" and req.proposal_id == pid and req.plan_id == ""
    assert req.action_id == derive_id("action", "operator", pid)
    assert req.meta.cycle_id == derive_id("cycle", "operator", pid)      # a cycle of its own
    assert req.action.kind == K.ACTION_KIND_TOPOLOGY_UPDATE
    assert dict(req.action.params) == {"link": "n1,n2", "state": "down"}
    assert verify_approval(req, gov.trust.bundle, int(T0 * 1e9)) == "governance"
    [requested] = gov.bus.audited("action.requested")
    assert requested.details["proposer"] == "alice" and requested.details["plan"] == ""
    # a restart requests it again under the same ids; the executor's result marks it executed
    restarted = Gov(tmp_path / "again", log=gov.store.log)
    assert await stage.resume(restarted.ctx, restarted.deps) == 1
    [again] = restarted.actions()
    assert (again.action_id, again.meta.event_id) == (req.action_id, req.meta.event_id)
    await gov.bus.publish(subjects.MAPEK_RESULT, result(pid, req.action_id))
    assert gov.proposal(pid).state is ProposalState.EXECUTED
