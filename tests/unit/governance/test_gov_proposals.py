"""Proposal fields, ids, idempotent creation and listing."""

import math

import pytest

from x0tta6bl4.governance import (
    Action,
    ActionKind,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ProposalCreated,
    ProposalState,
)


@pytest.fixture
def hv(h):
    h.register_many(2, 100)
    return h


def test_created_event_and_read_model(hv):
    h = hv
    res = h.engine.create_proposal(title="  Rotate keys  ", description="quarterly",
                                   action=Action("rotate_keys", {"scope": "mesh"}), proposer="ops",
                                   duration_s=60, quorum=0.3, threshold=0.6, execution_window_s=120,
                                   cycle_id="c-9")
    (ev,) = res.events
    assert isinstance(ev, ProposalCreated) and ev.watch_kind == "created"
    assert ev.proposal_id == "prop-1" and ev.title == "Rotate keys" and ev.at == h.T0
    p = res.proposal
    assert (p.proposal_id, p.title, p.proposer, p.duration_s, p.quorum, p.threshold) == \
        ("prop-1", "Rotate keys", "ops", 60.0, 0.3, 0.6)
    assert p.action.kind is ActionKind.ROTATE_KEYS and dict(p.action.params) == {"scope": "mesh"}
    assert p.created_at == h.T0 and p.closes_at == h.T0 + 60 and p.execution_deadline is None
    assert p.state is ProposalState.ACTIVE and p.cycle_id == "c-9"
    assert h.engine.get_proposal("prop-1") == p


def test_caller_provided_id_and_duplicate(hv):
    h = hv
    p = h.propose(proposal_id="5a3f0c1e-0000-4000-8000-000000000001")
    assert p.proposal_id == "5a3f0c1e-0000-4000-8000-000000000001"
    with pytest.raises(AlreadyExists, match="5a3f0c1e"):
        h.propose(proposal_id=p.proposal_id)


def test_default_id_factory_is_uuid(hv):
    import uuid

    from x0tta6bl4.governance import GovernanceEngine
    eng = GovernanceEngine(hv.verify, hv.clock)
    eng.register_voter("v", 1)
    p = eng.create_proposal(title="t", description="", action=Action(ActionKind.DEPLOY), proposer="p",
                            duration_s=1, quorum=1, threshold=1).proposal
    assert str(uuid.UUID(p.proposal_id)) == p.proposal_id


def test_no_voters_means_no_proposal(h):
    with pytest.raises(FailedPrecondition, match="no voters"):
        h.propose()


def test_request_id_makes_creation_idempotent(hv):
    h = hv
    first = h.engine.create_proposal(title="t", description="d", action=Action(ActionKind.RESTART), proposer="p",
                                     duration_s=10, quorum=0.5, threshold=0.5, request_id="req-1")
    again = h.engine.create_proposal(title="t ", description="d", action=Action(ActionKind.RESTART), proposer="p",
                                     duration_s=10, quorum=0.5, threshold=0.5, request_id="req-1")
    assert again.duplicate and again.events == () and again.proposal == first.proposal
    with pytest.raises(AlreadyExists, match="req-1"):
        h.engine.create_proposal(title="other", description="d", action=Action(ActionKind.RESTART), proposer="p",
                                 duration_s=10, quorum=0.5, threshold=0.5, request_id="req-1")
    # request ids are scoped per proposer
    other = h.engine.create_proposal(title="t", description="d", action=Action(ActionKind.RESTART), proposer="q",
                                     duration_s=10, quorum=0.5, threshold=0.5, request_id="req-1")
    assert not other.duplicate and other.proposal.proposal_id != first.proposal.proposal_id


@pytest.mark.parametrize("kw, field", [
    (dict(title=""), "title"), (dict(title="   "), "title"), (dict(title="x" * 201), "title"),
    (dict(title=None), "title"), (dict(description="x" * 10_001), "description"),
    (dict(description=None), "description"),
    (dict(duration_s=0), "duration_s"), (dict(duration_s=-5), "duration_s"),
    (dict(duration_s=math.nan), "duration_s"), (dict(duration_s=math.inf), "duration_s"),
    (dict(duration_s=7 * 24 * 3600 + 1), "duration_s"),
    (dict(quorum=0), "quorum"), (dict(quorum=1.0001), "quorum"), (dict(quorum=math.nan), "quorum"),
    (dict(threshold=0), "threshold"), (dict(threshold=-0.5), "threshold"), (dict(threshold=math.inf), "threshold"),
    (dict(execution_window_s=0), "execution_window_s"), (dict(execution_window_s=math.nan), "execution_window_s"),
    (dict(proposer=""), "proposer"), (dict(proposal_id="has space"), "proposal_id"),
    (dict(action={"kind": "reroute"}), "action"),
])
def test_invalid_fields(hv, kw, field):
    with pytest.raises(InvalidArgument, match=field):
        hv.propose(**kw)
    assert hv.engine.state.proposals == {}


def test_field_limits_inclusive(hv):
    p = hv.propose(title="x" * 200, description="y" * 10_000, duration_s=7 * 24 * 3600, quorum=1.0, threshold=1.0)
    assert len(p.title) == 200 and p.duration_s == 604800.0


@pytest.mark.parametrize("kind", ["reroute", "rotate_keys", "deploy", "config_change", "isolate", "restart"])
def test_action_kinds(kind):
    assert Action(kind).kind.value == kind


@pytest.mark.parametrize("kwargs, field", [
    (dict(kind="reboot_universe"), "action.kind"),
    (dict(kind="restart", params={"k": 1}), "action.params"),
    (dict(kind="restart", params={1: "v"}), "action.params"),
    (dict(kind="restart", params={"": "v"}), "action.params"),
    (dict(kind="restart", params={f"k{i}": "v" for i in range(33)}), "action.params"),
    (dict(kind="restart", params=["k", "v"]), "action.params"),
    (dict(kind="restart", target_node="node 1"), "action.target_node"),
])
def test_invalid_action(kwargs, field):
    with pytest.raises(InvalidArgument, match=field):
        Action(**kwargs)


def test_action_params_are_immutable_and_hashable():
    a = Action("deploy", {"b": "2", "a": "1"}, target_node="node-1")
    with pytest.raises(TypeError):
        a.params["c"] = "3"
    assert list(a.params) == ["a", "b"]
    assert a == Action(ActionKind.DEPLOY, {"a": "1", "b": "2"}, "node-1")
    assert hash(a) == hash(Action(ActionKind.DEPLOY, {"a": "1", "b": "2"}, "node-1"))
    assert Action.from_dict(a.to_dict()) == a


def test_get_unknown_proposal(hv):
    with pytest.raises(NotFound, match="missing"):
        hv.engine.get_proposal("missing")
    with pytest.raises(NotFound):
        hv.engine.tally("missing")
    with pytest.raises(NotFound, match="vote"):
        hv.engine.get_vote("missing")


# ---------------------------------------------------------------- listing

def _make(h, n):
    return [h.propose(title=f"p{i}", duration_s=10 + i).proposal_id for i in range(n)]


def test_list_pages_through_everything_in_creation_order(hv):
    ids = _make(hv, 7)
    seen, token, pages = [], "", 0
    while True:
        page = hv.engine.list_proposals(page_size=3, page_token=token)
        seen += [p.proposal_id for p in page.proposals]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == ids and pages == 3


def test_list_filters_by_state(hv):
    ids = _make(hv, 4)
    hv.clock.advance(11.5)                          # proposals 0 and 1 close (rejected: no votes)
    hv.tick()
    rejected = hv.engine.list_proposals(ProposalState.REJECTED)
    active = hv.engine.list_proposals("ACTIVE")
    assert [p.proposal_id for p in rejected.proposals] == ids[:2] and rejected.next_page_token == ""
    assert [p.proposal_id for p in active.proposals] == ids[2:]
    assert hv.engine.list_proposals(ProposalState.EXECUTED).proposals == ()
    assert len(hv.engine.list_proposals().proposals) == 4


def test_list_defaults_and_clamps(hv):
    _make(hv, 60)
    assert len(hv.engine.list_proposals().proposals) == 50           # default page size
    assert len(hv.engine.list_proposals(page_size=10_000).proposals) == 60


def test_page_token_is_opaque_not_a_bare_number(hv):
    _make(hv, 3)
    token = hv.engine.list_proposals(page_size=1).next_page_token
    assert token and not token.isdigit()


@pytest.mark.parametrize("token", ["garbage!", "1", "b2Zmc2V0Oi0x", "b2Zmc2V0OjEwMDA"])
def test_bad_page_token(hv, token):
    _make(hv, 2)
    with pytest.raises(InvalidArgument, match="page_token"):
        hv.engine.list_proposals(page_token=token)


@pytest.mark.parametrize("size", [-1, 1.5, True, "10"])
def test_bad_page_size(hv, size):
    with pytest.raises(InvalidArgument, match="page_size"):
        hv.engine.list_proposals(page_size=size)


def test_bad_state_filter(hv):
    with pytest.raises(InvalidArgument, match="state"):
        hv.engine.list_proposals("OPEN")


def test_active_proposals_per_proposer_are_capped(hv):
    from x0tta6bl4.governance import ResourceExhausted
    h = hv
    ps = [h.propose(title=f"p{i}", duration_s=60.0, max_active_for_proposer=3, request_id=f"r{i}") for i in range(3)]
    with pytest.raises(ResourceExhausted, match=r"already has 3 active proposals \(the limit is 3\)") as ei:
        h.propose(title="one too many", max_active_for_proposer=3)
    assert ei.value.code == "RESOURCE_EXHAUSTED"
    # a retry of an existing one is not a new proposal; other proposers have their own count
    assert h.propose(title="p0", duration_s=60.0, max_active_for_proposer=3, request_id="r0") == ps[0]
    assert h.propose(title="theirs", proposer="someone-else", max_active_for_proposer=3).proposer == "someone-else"
    # without a limit (the planner's path) nothing is capped
    assert h.propose(title="unlimited").state is ProposalState.ACTIVE
    # a canceled or closed proposal frees its slot
    h.cancel(ps[0].proposal_id, by=ps[0].proposer)
    h.cancel(h.engine.list_proposals(ProposalState.ACTIVE, 1000, "").proposals[-1].proposal_id, by=ps[0].proposer)
    assert h.propose(title="after cancel", max_active_for_proposer=3).state is ProposalState.ACTIVE
    with pytest.raises(ResourceExhausted):
        h.propose(title="full again", max_active_for_proposer=3)
    h.tick(h.T0 + 61)                          # the 60 s ones close
    assert h.propose(title="after close", max_active_for_proposer=3).state is ProposalState.ACTIVE


@pytest.mark.parametrize(("kind", "target", "params", "says"), [
    ("topology_update", "", {"link": "n1,n2"}, "state must be down or up"),
    ("topology_update", "", {"state": "down"}, "needs link=A,B"),
    ("config_change", "", {"hello_interval": "0"}, "hello_interval must be between 0.05 and 2"),
    ("config_change", "", {"retries": "3"}, "unknown parameter 'retries'"),
])
def test_an_operator_change_that_could_never_run_is_refused(hv, kind, target, params, says):
    with pytest.raises(InvalidArgument, match=says):
        hv.engine.create_proposal(title="t", description="", action=Action(kind, params, target), proposer="ops",
                                  duration_s=60, quorum=0.5, threshold=0.5)
    p = hv.engine.create_proposal(title="t", description="", proposer="ops", duration_s=60, quorum=0.5,
                                  threshold=0.5, action=Action("topology_update", {"link": "n1,n2", "state": "down"}))
    assert p.proposal.action.kind is ActionKind.TOPOLOGY_UPDATE
