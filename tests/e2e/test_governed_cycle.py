"""A medium-confidence anomaly goes to a DAO vote: executed only after the vote passes; a rejected vote
executes nothing. Real stack, real mesh agents, real gRPC, ML-DSA-65 signed votes."""
from __future__ import annotations

import secrets

import pytest
from testkit import consistently, eventually, mesh_ready, start_mesh

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.governance import vote_signing_payload
from x0tta6bl4.pqc import MLDSA65PrivateKey
from x0tta6bl4.rpc import svid as svids
from x0tta6bl4.runtime.locate import admin_metadata
from x0tta6bl4.v1 import events_pb2, mesh_pb2
from x0tta6bl4.v1 import governance_pb2 as g
from x0tta6bl4.v1 import governance_pb2_grpc as gg

ENV = {"X0TTA6BL4_WINDOW_S": "1", "X0TTA6BL4_STANDARD_VOTE_S": "30", "X0TTA6BL4_EMERGENCY_VOTE_S": "30"}
SERVICES = ("keyvault", "monitor", "analyzer", "planner", "executor", "governance")   # keyvault: the SVIDs


async def governed_incident(stack_factory, choice: str):
    stack = stack_factory(services=SERVICES, env=ENV)
    me = svids.mint(stack.secrets.root, "operator", "e2e")           # mutual TLS as an operator
    channel = svids.aio_channel(stack.grpc_addr("governance"), me, "governance", me.trust_domain)
    gov = gg.GovernanceStub(channel)
    voters = []
    for i in range(2):
        key = MLDSA65PrivateKey.generate()
        name = f"spiffe://x0tta6bl4.mesh/operator/op{i}"
        await gov.RegisterVoter(g.RegisterVoterRequest(voter=name, balance=100,
                                                       public_key=key.public_key().public_bytes()),
                                metadata=admin_metadata(directory=stack.data_dir))
        voters.append((name, key))
    # hop-count routing: the slow relay stays on the flow's path and the loop, not route choice, must deal with it
    # (with the default ETX metric the mesh routes around a 110 ms relay by itself and nothing needs a vote)
    mesh = start_mesh(stack, extra=("--route-metric", "hops"))
    nc = await stack.connect()
    js = nc.jetstream()
    try:
        await eventually(lambda: mesh_ready(js, 9), 30)
        cmd = mesh_pb2.MeshCommand(meta=new_meta("test"), node_id="n4", kind=mesh_pb2.MeshCommand.KIND_FAULT,
                                   params={"type": "latency", "ms": "110"})
        await nc.request(subjects.mesh_cmd("n4"), cmd.SerializeToString(), timeout=5)

        async def proposal_for_n4():
            r = await gov.ListProposals(g.ListProposalsRequest(state=g.PROPOSAL_STATE_ACTIVE))
            return next((p for p in r.proposals if p.action.target_node == "n4"), None)
        proposal = await eventually(proposal_for_n4, 30, 0.1)
        assert proposal.action.kind == events_pb2.ACTION_KIND_REROUTE

        async def actions_for_n4():
            return [events_pb2.ActionRequest.FromString(m.data) for m in await read_all(js, subjects.MAPEK_ACTION)
                    if events_pb2.ActionRequest.FromString(m.data).action.target_node == "n4"]
        assert await actions_for_n4() == [], "nothing runs before the vote ends"
        for name, key in voters:
            nonce = secrets.token_bytes(16)
            sig = key.sign(vote_signing_payload(proposal.id, name, choice, 100.0, nonce))
            await gov.CastVote(g.CastVoteRequest(proposal_id=proposal.id, voter=name, tokens=100.0, nonce=nonce,
                                                 signature=sig, choice=getattr(g, f"VOTE_CHOICE_{choice}")))
        return stack, gov, js, proposal, actions_for_n4
    except BaseException:
        await nc.close()
        await channel.close()
        mesh.terminate()
        raise
    finally:
        stack._test_cleanup = (nc, channel, mesh)


async def cleanup(stack):
    nc, channel, mesh = stack._test_cleanup
    await nc.close()
    await channel.close()
    mesh.terminate()
    mesh.wait(10)


@pytest.mark.slow
async def test_passed_vote_executes_the_plan_and_marks_the_proposal_executed(stack_factory):
    stack, gov, js, proposal, actions_for_n4 = await governed_incident(stack_factory, "YES")
    try:
        (action,) = await eventually(actions_for_n4, 20, 0.1)
        assert action.approved_by == f"dao:{proposal.id}" and action.proposal_id == proposal.id

        async def executed():
            p = await gov.GetProposal(g.GetProposalRequest(id=proposal.id))
            return p if p.state == g.PROPOSAL_STATE_EXECUTED else None
        await eventually(executed, 20, 0.1)
        results = [events_pb2.ActionResult.FromString(m.data) for m in await read_all(js, subjects.MAPEK_RESULT)]
        assert any(r.action_id == action.action_id and r.success for r in results)
        # the vote, the action and the result belong to the plan's cycle
        plans = [events_pb2.Plan.FromString(m.data) for m in await read_all(js, subjects.MAPEK_PLAN)]
        plan = next(p for p in plans if p.plan_id == action.plan_id)
        assert plan.decision == events_pb2.DECISION_KIND_STANDARD_VOTE
        assert action.meta.cycle_id == plan.meta.cycle_id
    finally:
        await cleanup(stack)


@pytest.mark.slow
async def test_rejected_vote_executes_nothing(stack_factory):
    stack, gov, _js, proposal, actions_for_n4 = await governed_incident(stack_factory, "NO")
    try:
        async def rejected():
            p = await gov.GetProposal(g.GetProposalRequest(id=proposal.id))
            return p if p.state == g.PROPOSAL_STATE_REJECTED else None
        p = await eventually(rejected, 20, 0.1)
        assert "THRESHOLD" in p.close_reason.upper()
        async def no_action_for_n4():
            return await actions_for_n4() == []
        await consistently(no_action_for_n4, 2.0, 0.2)
    finally:
        await cleanup(stack)
