"""The executor carries out only actions approved by the planner or governance with a key of its trust bundle,
bound to the action and not expired (x0tta6bl4.mapek.approval). Everything else is refused: audited
``action.rejected`` with the reason, dead-lettered, nothing claimed, nothing asked of the mesh or keyvault.

Runs the executor service's own composition root on the in-memory bus (its clock is the wall clock)."""
from __future__ import annotations

import time

import pytest
from trustkit import Keys

from services.executor.main import ExecutorSettings, build
from services.planner.main import PlannerSettings
from services.planner.main import build as build_planner
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.memory import TestBus
from x0tta6bl4.bus.ports import Reply
from x0tta6bl4.ids import new_meta
from x0tta6bl4.mapek import approval
from x0tta6bl4.mapek.approval import ApprovalError, sign_approval, signing_payload, verify_approval
from x0tta6bl4.trust import ROLE_APPROVE, ROLE_AUDIT, Signer, TrustBundle
from x0tta6bl4.v1 import common_pb2, events_pb2, mesh_pb2

K = events_pb2
S = 10**9


def request(kind: int = K.ACTION_KIND_ISOLATE, node: str = "n3", approved_by: str = "auto", proposal_id: str = "",
            action_id: str = "act-1", **params: str) -> events_pb2.ActionRequest:
    return events_pb2.ActionRequest(
        meta=new_meta("planner", "cycle-1"), action_id=action_id, plan_id="plan-1", approved_by=approved_by,
        proposal_id=proposal_id, action=events_pb2.ActionSpec(kind=kind, target_node=node, params=params),
        timeout_s=5.0, incident_id=f"{node}.node_down", first_symptom_unix_ns=900 * S,
        fault_type="compromised" if kind == K.ACTION_KIND_ISOLATE else "node_down")   # an isolation revokes at once


def forge(req: events_pb2.ActionRequest, signer: Signer, approver: str, *, ttl_s: float = 60.0,
          now_ns: int | None = None) -> events_pb2.ActionRequest:
    """Sign ``req`` with ``signer``'s key but name ``approver`` (sign_approval refuses to do that)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    req.approval.CopyFrom(events_pb2.Approval(approver=approver, key_id=signer.key_id, issued_unix_ns=now_ns,
                                              expires_unix_ns=now_ns + int(ttl_s * S)))
    req.approval.signature = signer.sign(ROLE_APPROVE, signing_payload(req))
    return req


class Executor:
    """The executor service on the in-memory bus, with a mesh and a keyvault that record what they are asked."""

    def __init__(self, keys: Keys, trust: TrustBundle | None = None):
        settings = ExecutorSettings(**keys.settings("executor"))
        if trust is not None:      # another bundle than the deployment's
            path = keys.root / "other-trust.json"
            path.write_text(trust.to_json())
            settings = ExecutorSettings(signing_key_file=keys.signing_file("executor"), trust_file=path)
        self.bus = TestBus(build(settings))
        self.bus.responder(subjects.MESH_CMD_ALL)(self.agent)
        self.bus.responder(subjects.KEYVAULT_RPC_ALL)(self.keyvault)

    @staticmethod
    async def agent(subject: str, data: bytes) -> Reply:
        return Reply(mesh_pb2.MeshEvent(kind="command.ok").SerializeToString(), {})

    @staticmethod
    async def keyvault(subject: str, data: bytes) -> Reply:
        return Reply(b"", {})

    async def start(self) -> None:
        for n in ("n1", "n2", "n3", "n4"):
            t = events_pb2.NodeTelemetry(meta=new_meta("monitor"), node_id=n, reachable=True, cpu_pct=5.0,
                                         mem_pct=20.0)
            await self.bus.kv("telemetry").put(n, t.SerializeToString())

    def refused(self, check: str) -> str:
        """Assert the one request was refused for ``check`` and nothing happened; the reason."""
        [rejected] = self.bus.audited("action.rejected")
        assert rejected.subject_id == "act-1" and rejected.details["check"] == check, rejected.details
        [dl] = self.bus.dead_letters
        assert dl.reason.startswith("rejected by executor: action act-1 refused: "), dl.reason
        assert self.bus.requests == []                       # not one command to the mesh, nor to keyvault
        assert self.bus.published == [] and self.bus.kv("actions").value("act-1") is None
        assert self.bus.audited("action.executed") == []
        return rejected.details["reason"]

    def executed(self) -> events_pb2.ActionResult:
        [result] = self.bus.messages(subjects.MAPEK_RESULT)
        assert result.success and self.bus.audited("action.rejected") == [] and self.bus.dead_letters == []
        return result


@pytest.fixture
def keys(tmp_path) -> Keys:
    return Keys.make(tmp_path)


@pytest.fixture
async def executor(keys) -> Executor:
    ex = Executor(keys)
    await ex.start()
    return ex


# ---- refused ------------------------------------------------------------------------------------
async def test_an_unsigned_request_naming_a_proposal_that_never_existed_is_refused(executor):
    """The measured attack: ISOLATE of a healthy node, approved_by a made-up proposal, published on mapek.action."""
    await executor.bus.publish(subjects.MAPEK_ACTION, request(approved_by="dao:never-existed", proposal_id="p0"))
    reason = executor.refused(approval.UNSIGNED)
    assert reason == "action act-1 carries no signed approval"
    rejected = executor.bus.audited("action.rejected")[0].details
    assert (rejected["action"], rejected["target"], rejected["approved_by"]) == ("isolate", "n3", "dao:never-existed")


async def test_a_request_signed_by_a_key_outside_the_trust_bundle_is_refused(executor):
    attacker = Signer.generate("planner")                 # calls itself the planner; its key is nobody's
    await executor.bus.publish(subjects.MAPEK_ACTION, sign_approval(request(), attacker, 60, time.time_ns()))
    assert executor.refused(approval.UNTRUSTED).endswith(f"key {attacker.key_id!r} is not in the trust bundle")


@pytest.mark.parametrize("change", ["target", "kind", "params", "action_id", "timeout", "expiry", "approved_by"])
async def test_a_genuine_approval_altered_after_signing_is_refused(keys, executor, change):
    req = request(K.ACTION_KIND_REROUTE, node="n3")
    sign_approval(req, keys.signers["planner"], 60, time.time_ns())
    if change == "target":
        req.action.target_node = "n2"                     # a healthy node instead
    elif change == "kind":
        req.action.kind = K.ACTION_KIND_ISOLATE
    elif change == "params":
        req.action.params["nodes"] = "n1,n2"
    elif change == "action_id":
        req.action_id = "act-1"
        req.plan_id = "plan-2"
    elif change == "timeout":
        req.timeout_s = 3600.0
    elif change == "expiry":
        req.approval.expires_unix_ns += 3600 * S
    else:
        req.approved_by, req.proposal_id = "auto", ""
        req.incident_id = "n9.node_down"
    await executor.bus.publish(subjects.MAPEK_ACTION, req)
    reason = executor.refused(approval.UNTRUSTED)
    assert reason.endswith(f"bad approve signature for key {keys.signers['planner'].key_id} of planner"), reason


async def test_an_expired_approval_is_refused(keys, executor):
    issued = time.time_ns() - 120 * S
    await executor.bus.publish(subjects.MAPEK_ACTION, sign_approval(request(), keys.signers["planner"], 60, issued))
    reason = executor.refused(approval.EXPIRED)
    assert reason.startswith("approval of action act-1 by planner expired ") and reason.endswith("s ago")
    assert 59 < float(reason.split("expired ")[1].removesuffix("s ago")) < 120


async def test_an_approval_signed_by_the_monitor_is_refused(keys, executor):
    monitor = keys.signers["monitor"]
    with pytest.raises(ApprovalError, match="monitor may not approve actions"):
        sign_approval(request(), monitor, 60, time.time_ns())
    await executor.bus.publish(subjects.MAPEK_ACTION, forge(request(), monitor, "monitor"))
    assert executor.refused(approval.NOT_APPROVER) == "monitor may not approve actions (only planner or governance)"


async def test_the_monitors_key_passing_for_the_planner_is_refused(keys, executor):
    await executor.bus.publish(subjects.MAPEK_ACTION, forge(request(), keys.signers["monitor"], "planner"))
    reason = executor.refused(approval.UNTRUSTED)
    assert reason.endswith(f"key {keys.signers['monitor'].key_id} belongs to monitor, not to planner")


async def test_a_planner_key_not_trusted_to_approve_is_refused(keys):
    """The bundle decides what a key may do: a planner key listed for auditing only approves nothing."""
    roles = {"planner": (ROLE_AUDIT,)}
    bundle = TrustBundle("x0tta6bl4.mesh", tuple(s.trusted(roles.get(n)) for n, s in keys.signers.items()))
    ex = Executor(keys, trust=bundle)
    await ex.start()
    await ex.bus.publish(subjects.MAPEK_ACTION, sign_approval(request(), keys.signers["planner"], 60, time.time_ns()))
    assert ex.refused(approval.UNTRUSTED).endswith("of planner is not trusted to approve")


async def test_the_planner_cannot_pass_off_its_approval_as_a_dao_decision(keys, executor):
    planner = keys.signers["planner"]
    with pytest.raises(ApprovalError, match="the planner approves only auto-approved actions"):
        sign_approval(request(approved_by="dao:p1", proposal_id="p1"), planner, 60, time.time_ns())
    await executor.bus.publish(subjects.MAPEK_ACTION, forge(request(approved_by="dao:p1", proposal_id="p1"),
                                                            planner, "planner"))
    assert executor.refused(approval.MISMATCH).startswith("the planner approves only auto-approved actions")


async def test_governance_approves_only_the_proposal_it_names(keys, executor):
    gov = keys.signers["governance"]
    await executor.bus.publish(subjects.MAPEK_ACTION, forge(request(approved_by="dao:p2", proposal_id="p1"),
                                                            gov, "governance"))
    assert "approved_by 'dao:<proposal_id>'" in executor.refused(approval.MISMATCH)


# ---- carried out ---------------------------------------------------------------------------------
async def test_a_genuine_planner_approval_is_executed(keys, executor):
    await executor.bus.publish(subjects.MAPEK_ACTION, sign_approval(request(K.ACTION_KIND_REROUTE),
                                                                    keys.signers["planner"], 60, time.time_ns()))
    result = executor.executed()
    assert sorted(s.name for s in result.steps) == ["avoid n3 at n1", "avoid n3 at n2", "avoid n3 at n4"]
    [audit] = executor.bus.audited("action.executed")
    assert (audit.details["approver"], audit.details["key_id"]) == ("planner", keys.signers["planner"].key_id)


async def test_a_genuine_governance_approval_is_executed(keys, executor):
    req = sign_approval(request(K.ACTION_KIND_ISOLATE, approved_by="dao:p1", proposal_id="p1"),
                        keys.signers["governance"], 3600, time.time_ns())
    await executor.bus.publish(subjects.MAPEK_ACTION, req)
    result = executor.executed()
    assert result.proposal_id == "p1" and "revoke identity of n3" in [s.name for s in result.steps]
    assert [s for s, _ in executor.bus.requests if s.startswith("keyvault")] == [subjects.keyvault_rpc("Revoke")]
    assert executor.bus.audited("action.executed")[0].details["approver"] == "governance"


async def test_what_the_planner_publishes_the_executor_carries_out(keys, executor):
    """The planner service's own composition root signs with its key from its settings."""
    planner = TestBus(build_planner(PlannerSettings(action_timeout_s=7.0, **keys.settings("planner"))))
    anomaly = events_pb2.Anomaly(meta=new_meta("analyzer", "c1"), node_id="n3", root_cause="n3",
                                 fault_type="node_down", anomaly_score=1.0, confidence=0.97,
                                 severity=common_pb2.SEVERITY_CRITICAL, detector="rules",
                                 first_symptom_unix_ns=time.time_ns(), incident_id="n3.node_down")
    await planner.publish(subjects.MAPEK_ANOMALY, anomaly)
    [req] = planner.messages(subjects.MAPEK_ACTION)
    assert req.approval.approver == "planner" and req.approval.key_id == keys.signers["planner"].key_id
    lifetime_s = (req.approval.expires_unix_ns - req.approval.issued_unix_ns) / S
    assert lifetime_s == pytest.approx(7.0 + PlannerSettings().approval_ttl_s)
    await executor.bus.publish(subjects.MAPEK_ACTION, req)
    assert executor.executed().action_id == req.action_id


def test_the_canonical_payload_is_what_the_docstring_says():
    """The encoding is a contract (another implementation may sign or verify): pin it byte for byte."""
    req = events_pb2.ActionRequest(action_id="a", plan_id="p", approved_by="auto", timeout_s=1.5,
                                   first_symptom_unix_ns=7, incident_id="i", fault_type="f",
                                   action=events_pb2.ActionSpec(kind=K.ACTION_KIND_RESTART, target_node="n",
                                                                params={"z": "1", "b": "2"}))
    req.approval.CopyFrom(events_pb2.Approval(approver="planner", key_id="k", issued_unix_ns=1, expires_unix_ns=2))

    def s(x: str) -> bytes:
        return len(x.encode()).to_bytes(4, "big") + x.encode()

    def i(x: int) -> bytes:
        return x.to_bytes(8, "big", signed=True)
    action = (s("x0tta6bl4/approved-action/v1") + s("a") + s("p") + i(K.ACTION_KIND_RESTART) + s("n")
              + (2).to_bytes(4, "big") + s("b") + s("2") + s("z") + s("1")
              + s("auto") + s("") + s("i") + s("f") + bytes.fromhex("3ff8000000000000") + i(7))
    assert approval.action_bytes(req) == action
    assert signing_payload(req) == s("x0tta6bl4/approval/v1") + s("planner") + s("k") + i(1) + i(2) + action
    # the message's meta is not part of it: the same action under another event id is the same approval
    again = events_pb2.ActionRequest()
    again.CopyFrom(req)
    again.meta.CopyFrom(new_meta("planner", "c9"))
    assert signing_payload(again) == signing_payload(req)


def test_verify_names_the_approver(keys):
    now = time.time_ns()
    req = sign_approval(request(), keys.signers["planner"], 10, now)
    assert verify_approval(req, keys.bundle, now + 9 * S) == "planner"
    with pytest.raises(ApprovalError, match=r"expired 0\.0s ago") as e:
        verify_approval(req, keys.bundle, now + 10 * S)
    assert e.value.code == approval.EXPIRED
