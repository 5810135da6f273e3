"""The attack suite (issues #16 and #17): every measured attack, against ONE real secured stack (TLS, nkeys,
the permission table of x0tta6bl4.bus.permissions, the six services, a 9-node mesh host), each made with the
credentials an attacker may hold, each asserted refused (by the broker: a permissions violation sent back to
the attacker's connection; or by the service: a denial, a quarantine, an audited refusal) and, last, a real
fault still healed. Attacks covered in depth by an integration test are thin, fast versions here that reuse
that test's helpers (named beside each test).

Attack (as measured) -> test
  no credentials
    anonymous / plaintext / wrong-CA NATS connection, keyvault.rpc.* over NATS unauthenticated
                                                       -> test_no_credentials_no_bus
    keyvault / governance gRPC without an SVID or with another CA's -> test_no_svid_no_grpc
  a node agent's (mesh host) credential
    publish mapek.action; gov.events.*; keyvault.rpc.Revoke/Rotate; `done` in the actions bucket; a voter key
    in the keys bucket                                 -> test_node_agent_cannot_publish_control_subjects
    MeshCommand (FAULT kill, host_op=retire/status) on mesh.cmd.<another host's node>
                                                       -> test_node_agent_cannot_command_other_nodes
    delete MAPEK / AUDIT / the keyvault and keys buckets, purge GOV / AUDIT
                                                       -> test_node_agent_cannot_delete_or_purge
    NodeTelemetry of another host's node (broker), node_id not matching its subject and a timestamp ten
    years ahead (monitor)                              -> test_forged_telemetry_is_refused
    forged neighbour_lost from two neighbours about a healthy node, repeated
                                                       -> test_forged_neighbour_lost_does_not_take_a_node_down
    answer keyvault.rpc.Info to become governance's keyvault root (rogue root)
                                                       -> test_node_agent_cannot_answer_as_keyvault
  the audit reader's credential: reads AUDIT, cannot read MAPEK, cannot publish
                                                       -> test_audit_reader_reads_audit_only
  an operator's credential: no mapek.action, no gov.events, no stream delete/purge
                                                       -> test_operator_cannot_act_for_the_loop
  a leaked service credential without the service's signing key
    forged ActionRequest (unsigned; signed by a key of the attacker) on mapek.action (planner's)
                                                       -> test_forged_action_requests_are_rejected
      (in depth: integration/executor/test_executor_approvals.py)
    `done` planted under an action id (executor's)     -> test_planted_claim_does_not_drop_an_action
    forged VoterRegistered / ProposalCreated+Closed(PASSED) / garbage on gov.events.* (governance's)
                                                       -> test_forged_and_garbage_gov_events_are_quarantined
      (in depth: integration/governance/test_gov_log_forgery.py)
    a forged audit chain and garbage on audit.* (governance's) -> test_forged_audit_chain_is_reported
      (in depth: integration/bus/test_audit_verify.py)
  issue #17, over mutual TLS with SVIDs from the deployment CA
    private-key export of another node (a node's SVID, another host's SVID, the node's own host, the executor;
    the removed GetPrivateBundle(s))                   -> test_private_key_export_by_another_identity_is_denied
      (in depth: integration/keyvault/test_keyvault_rotation_requests.py)
    a forged rotation request planted in the keys bucket (rot.<node>), one signed by a rogue root
                                                       -> test_a_forged_rotation_request_is_refused
    IssueIdentity / Rotate / Revoke without the role  -> test_issue_rotate_revoke_without_the_role_are_denied
    a vote with a stolen key (cast as another voter)  -> test_a_vote_in_another_identitys_name_is_denied
      (in depth: integration/keyvault/test_keyvault_mtls.py)
    a replayed HELLO; packets spoofed to frame a node -> test_replayed_hello_is_dropped,
                                                         test_spoofed_packets_frame_nobody
      (the real UDP agents of integration/meshsec/test_meshsec_replay.py, run from here)
  legitimate traffic after all of it: a real node kill healed and verified, and every permission violation the
  broker logged came from an attacker's connection -> test_zz_legitimate_traffic_still_flows
"""
from __future__ import annotations

import asyncio
import json
import ssl
import time
import types
import uuid

import grpc
import nats
import pytest
from testkit import consistently, consistently_sync, eventually, eventually_sync, scaled, violations

from tests.integration.bus.test_audit_verify import meshctl
from tests.integration.executor.test_executor_approvals import audits as executor_audits
from tests.integration.executor.test_executor_approvals import isolate
from tests.integration.governance import test_gov_log_forgery as govforge
from tests.integration.meshsec import test_meshsec_replay as replay
from tests.integration.monitor.test_monitor_forgery import DECADE_NS, monitor_audits
from x0tta6bl4.audit.chain import AuditChain, MLDSASigner
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.permissions import AUDIT_READER, MESH_HOST_PREFIX, OPERATOR
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.bus.reader import mesh_telemetry, read_all
from x0tta6bl4.governance.eventlog import encode_legacy
from x0tta6bl4.keyvault.svid import SvidIssuer, spiffe_id
from x0tta6bl4.mapek.approval import sign_approval
from x0tta6bl4.mesh.host import HOST_OP_KIND
from x0tta6bl4.rpc import svid as svids
from x0tta6bl4.runtime.secrets import make_ca
from x0tta6bl4.trust import Signer
from x0tta6bl4.v1 import events_pb2, mesh_pb2
from x0tta6bl4.v1 import governance_pb2 as g
from x0tta6bl4.v1 import governance_pb2_grpc as gg
from x0tta6bl4.v1 import keyvault_pb2 as kpb
from x0tta6bl4.v1 import keyvault_pb2_grpc as kg

pytestmark = pytest.mark.timeout(300)
TD = "x0tta6bl4.mesh"
NODE_AGENT = MESH_HOST_PREFIX + "mesh"      # the mesh host running n0..n8
OTHER_HOST = MESH_HOST_PREFIX + "other"     # another host's credential (owns x0 only)
ATTACKERS = (NODE_AGENT, OTHER_HOST, AUDIT_READER, OPERATOR, "planner", "executor", "governance")
C = grpc.StatusCode


# ---- the attacker's connection: what the broker sends back is the evidence ---------------------------------
class Attacker:
    def __init__(self, identity: str):
        self.identity = identity
        self.errors: list[str] = []
        self.nc: nats.NATS | None = None

    async def __aenter__(self) -> Attacker:
        async def on_error(e: Exception) -> None:
            self.errors.append(str(e))
        self.nc = await STACK.connect(self.identity, name=f"attacker-{self.identity}", error_cb=on_error)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.nc is not None
        await self.nc.close()

    async def refused(self, subject: str, data: bytes = b"x", what: str = "Publish") -> None:
        """Publish ``data`` on ``subject``: the broker must answer with a permissions violation for it."""
        assert self.nc is not None
        await self.nc.publish(subject, data)
        await self.nc.flush()
        await self.violation(subject, what)

    async def violation(self, subject: str, what: str = "Publish") -> None:
        needle = f"permissions violation for {what.lower()} to \"{subject.lower()}\""
        await eventually(lambda: any(needle in e.lower() for e in self.errors), scaled(5), 0.05,
                         what=f"the broker refuses {self.identity}: {what} to {subject}")


STACK = None   # the module's stack (set by the autouse fixture: Attacker is used inside async tests)


@pytest.fixture(autouse=True)
def _stack(stack):
    global STACK
    STACK = stack
    yield


async def op_js(stack):
    nc = await stack.connect()
    return nc, nc.jetstream()


def kv_stub(stack, svid) -> kg.KeyvaultStub:
    return kg.KeyvaultStub(svids.secure_channel(stack.grpc_addr("keyvault"), svid, "keyvault", TD))


def gov_stub(stack, svid) -> gg.GovernanceStub:
    return gg.GovernanceStub(svids.secure_channel(stack.grpc_addr("governance"), svid, "governance", TD))


def grpc_error(call, req) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as ei:
        call(req, timeout=scaled(10))
    return ei.value.code(), ei.value.details() or ""


def host_svid(stack, identity: str) -> svids.Svid:
    async def go():
        nc = await stack.connect(identity)
        try:
            return await svids.obtain_over_bus(nc, identity)
        finally:
            await nc.close()
    return asyncio.run(go())


# ---- no credentials -----------------------------------------------------------------------------------------
async def test_no_credentials_no_bus(stack):
    host_port = stack.url.split("://", 1)[1]
    ca = ssl.create_default_context(cafile=str(stack.secrets.ca_cert))
    rogue_ca = ssl.create_default_context()          # the system CAs: not the deployment's CA
    attempts = {"plaintext, anonymous": {"servers": [f"nats://{host_port}"]},
                "TLS with another CA": {"servers": [f"tls://{host_port}"], "tls": rogue_ca},
                "TLS, the right CA, no nkey": {"servers": [f"tls://{host_port}"], "tls": ca}}
    for what, opts in attempts.items():
        try:
            nc = await nats.connect(**opts, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)
        except Exception:   # noqa: BLE001 - refused (TLS handshake, authorization): no connection at all
            continue
        await nc.close()
        pytest.fail(f"{what}: the broker accepted the connection")


def test_no_svid_no_grpc(stack):
    rogue_key, rogue_ca = make_ca(TD)
    rogue = svids.obtain_local(SvidIssuer(rogue_key, rogue_ca, TD), spiffe_id(TD, "operator", "mallory"))
    bundle = svids.mint(stack.secrets.root, "operator", "probe").bundle
    rogue = svids.Svid(rogue.spiffe_id, rogue.key, rogue.certificate, bundle, rogue.not_before, rogue.not_after)
    for service in ("keyvault", "governance"):
        addr = stack.grpc_addr(service)
        for what, ch in {"plaintext": grpc.insecure_channel(addr),
                         "another CA's SVID": svids.secure_channel(addr, rogue, service, TD)}.items():
            if service == "keyvault":
                code, _ = grpc_error(kg.KeyvaultStub(ch).ExportIdentity,
                                     kpb.ExportIdentityRequest(node_id="n0", recipient_kem_public_key=b"\0" * 1184))
            else:
                code, _ = grpc_error(gg.GovernanceStub(ch).ListProposals, g.ListProposalsRequest())
            ch.close()
            assert code == C.UNAVAILABLE, (service, what, code)


# ---- a node agent's credential ------------------------------------------------------------------------------
async def test_node_agent_cannot_publish_control_subjects(stack):
    req = isolate("n4", "sec-agent-isolate", "dao:never-existed", "never-existed").SerializeToString()
    async with Attacker(NODE_AGENT) as a:
        await a.refused(subjects.MAPEK_ACTION, req)
        await a.refused(subjects.gov_event("voter_registered"), b'{"voter_id":"evil","balance":1e6}')
        await a.refused(subjects.keyvault_rpc("Revoke"))
        await a.refused(subjects.keyvault_rpc("Rotate"))
        await a.refused("$KV.actions.sec-agent-isolate", b"done")
        await a.refused("$KV.keys.evil-voter-key", b"planted")
    nc, js = await op_js(stack)
    try:
        results = [events_pb2.ActionResult.FromString(m.data) for m in await read_all(js, subjects.MAPEK_RESULT)]
        assert not [r for r in results if r.action_id == "sec-agent-isolate"]
    finally:
        await nc.close()


async def test_node_agent_cannot_command_other_nodes(stack):
    kill = mesh_pb2.MeshCommand(meta=new_meta("attacker"), node_id="n4", kind=mesh_pb2.MeshCommand.KIND_FAULT,
                                params={"type": "kill"})
    retire = mesh_pb2.MeshCommand(meta=new_meta("attacker"), node_id="n4", kind=HOST_OP_KIND,
                                  params={"host_op": "retire"})
    status = mesh_pb2.MeshCommand(meta=new_meta("attacker"), node_id="n0", kind=HOST_OP_KIND,
                                  params={"host_op": "status"})
    for identity in (OTHER_HOST, NODE_AGENT):        # another host's agent, and the host's own agent
        async with Attacker(identity) as a:
            await a.refused(subjects.mesh_cmd("n4"), kill.SerializeToString())
            await a.refused(subjects.mesh_cmd("n4"), retire.SerializeToString())
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):   # no answer
                await a.nc.request(subjects.mesh_cmd("n0"), status.SerializeToString(), timeout=1)
            await a.violation(subjects.mesh_cmd("n0"))
    assert stack.mesh.poll() is None, "the mesh host process was stopped"
    nc, js = await op_js(stack)
    try:
        async def n4_alive():
            t = (await mesh_telemetry(js)).get("n4")
            return t is not None and t.reachable
        await consistently(n4_alive, 1.0, 0.2)
    finally:
        await nc.close()


async def test_node_agent_cannot_delete_or_purge(stack):
    api = "$JS.API"
    targets = {f"{api}.STREAM.DELETE.{subjects.STREAM_MAPEK}", f"{api}.STREAM.DELETE.{subjects.STREAM_AUDIT}",
               f"{api}.STREAM.DELETE.KV_keyvault", f"{api}.STREAM.DELETE.KV_keys",
               f"{api}.STREAM.PURGE.{subjects.STREAM_GOV}", f"{api}.STREAM.PURGE.{subjects.STREAM_AUDIT}"}
    async with Attacker(NODE_AGENT) as a:
        for subject in sorted(targets):
            await a.refused(subject, b"{}")
    nc, js = await op_js(stack)
    try:
        names = {s.config.name for s in await js.streams_info()}
        assert {subjects.STREAM_MAPEK, subjects.STREAM_AUDIT, subjects.STREAM_GOV, "KV_keyvault", "KV_keys"} <= names
        assert (await js.stream_info(subjects.STREAM_AUDIT)).state.messages > 0
        assert (await js.stream_info(subjects.STREAM_GOV)).state.messages > 0
    finally:
        await nc.close()


async def test_forged_telemetry_is_refused(stack):
    forged = events_pb2.NodeTelemetry(meta=new_meta("mesh-host"), node_id="n4", reachable=False, cpu_pct=99)
    async with Attacker(OTHER_HOST) as a:            # another host's agent speaks for n4: the broker refuses
        await a.refused(subjects.telemetry("n4"), forged.SerializeToString())
    now = time.time_ns()
    future = events_pb2.NodeTelemetry(meta=new_meta("mesh-host"), node_id="n3", reachable=True, cpu_pct=99)
    future.meta.ts_unix_ns = now + DECADE_NS
    mismatch = events_pb2.NodeTelemetry(meta=new_meta("mesh-host"), node_id="n3", reachable=True, cpu_pct=99)
    async with Attacker(NODE_AGENT) as a:            # the node agent's own credential: the monitor refuses
        await a.nc.publish(subjects.telemetry("n3"), future.SerializeToString())
        await a.nc.publish(subjects.telemetry("n0"), mismatch.SerializeToString())
        await a.nc.flush()
    nc, js = await op_js(stack)
    try:
        async def refused():
            kinds = {x.details["kind"] for x in await monitor_audits(js, "telemetry.refused")}
            return kinds >= {"future_timestamp", "subject_mismatch"}
        await eventually(refused, scaled(10), 0.2, what="the monitor audits both forged reports as refused")

        async def n3_real_reports_count():
            kv = await js.key_value("telemetry")
            t = events_pb2.NodeTelemetry.FromString((await kv.get(subjects.token("n3"))).value)
            return t.meta.ts_unix_ns > now and t.cpu_pct < 99
        await eventually(n3_real_reports_count, scaled(10), 0.1)
    finally:
        await nc.close()


async def test_forged_neighbour_lost_does_not_take_a_node_down(stack):
    nc, js = await op_js(stack)
    changes: list[events_pb2.HealthChange] = []

    async def on_change(m) -> None:
        changes.append(events_pb2.HealthChange.FromString(m.data))
    await nc.subscribe(subjects.MAPEK_HEALTH, cb=on_change)
    await nc.flush()
    try:
        async with Attacker(NODE_AGENT) as a:
            for _ in range(3):
                for reporter in ("n1", "n3"):            # two of n4's neighbours "lose" it
                    ev = mesh_pb2.MeshEvent(meta=new_meta("mesh-host"), node_id=reporter, kind="neighbour_lost",
                                            peer="n4", details={"silent_ms": "600"})
                    await a.nc.publish(subjects.mesh_event(reporter), ev.SerializeToString())
                await a.nc.flush()
                await consistently(lambda: not [c for c in changes if c.node_id == "n4"], 1.0, 0.1)

        async def verdicts():
            got = [x.details.get("verdict", "") for x in await monitor_audits(js, "mesh.neighbour_lost")
                   if x.details.get("peer") == "n4"]
            return got if len(got) >= 6 else []
        got = await eventually(verdicts, scaled(10), 0.2)
        assert all(v.startswith(("not down: n4 itself reported", "not enough neighbours")) for v in got), got
        actions = [events_pb2.ActionRequest.FromString(m.data) for m in await read_all(js, subjects.MAPEK_ACTION)]
        assert not [r for r in actions if r.action.target_node == "n4"]
    finally:
        await nc.close()


async def test_node_agent_cannot_answer_as_keyvault(stack):
    async with Attacker(NODE_AGENT) as a:              # a rogue root must first answer keyvault.rpc.Info
        await a.nc.subscribe(subjects.keyvault_rpc("Info"))
        await a.nc.flush()
        await a.violation(subjects.keyvault_rpc("Info"), "Subscription")
        await a.nc.subscribe(subjects.KEYVAULT_RPC_ALL)
        await a.nc.flush()
        await a.violation(subjects.KEYVAULT_RPC_ALL, "Subscription")


# ---- the audit reader's credential --------------------------------------------------------------------------
async def test_audit_reader_reads_audit_only(stack):
    async with Attacker(AUDIT_READER) as a:
        js = a.nc.jetstream()
        assert await read_all(js, subjects.AUDIT_ALL, stream=subjects.STREAM_AUDIT)   # its job: the trail
        await a.nc.subscribe(subjects.MAPEK_ALL)
        await a.nc.flush()
        await a.violation(subjects.MAPEK_ALL, "Subscription")
        await a.refused(f"$JS.API.STREAM.INFO.{subjects.STREAM_MAPEK}")
        await a.refused(f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_MAPEK}", b"{}")
        await a.refused(subjects.audit("governance", "proposal.passed"))
        await a.refused(subjects.MAPEK_ACTION)
        await a.refused(subjects.mesh_cmd("n4"))
        await a.refused(f"$JS.API.STREAM.PURGE.{subjects.STREAM_AUDIT}", b"{}")


# ---- an operator's credential -------------------------------------------------------------------------------
async def test_operator_cannot_act_for_the_loop(stack):
    req = isolate("n4", "sec-op-isolate", "auto").SerializeToString()
    async with Attacker(OPERATOR) as a:
        await a.refused(subjects.MAPEK_ACTION, req)
        await a.refused(subjects.gov_event("proposal_closed"))
        for verb, stream in (("DELETE", subjects.STREAM_MAPEK), ("DELETE", subjects.STREAM_AUDIT),
                             ("PURGE", subjects.STREAM_GOV), ("PURGE", subjects.STREAM_AUDIT),
                             ("DELETE", "KV_keyvault")):
            await a.refused(f"$JS.API.STREAM.{verb}.{stream}", b"{}")


# ---- leaked service credentials without the service's signing key ------------------------------------------
async def test_forged_action_requests_are_rejected(stack):
    ids = ("sec-forged-1", "sec-forged-2")
    attacker_key = Signer.generate("planner")
    nc, js = await op_js(stack)
    leaked = await stack.connect("planner", name="attacker-planner")
    try:
        await leaked.jetstream().publish(subjects.MAPEK_ACTION, isolate("n2", ids[0], "dao:never-existed",
                                                                        "never-existed").SerializeToString())
        forged = sign_approval(isolate("n2", ids[1], "auto"), attacker_key, 300, time.time_ns())
        await leaked.jetstream().publish(subjects.MAPEK_ACTION, forged.SerializeToString())

        async def rejected():
            found = {x.subject_id: x for x in await executor_audits(js) if x.event_type == "action.rejected"}
            return found if set(ids) <= set(found) else None
        found = await eventually(rejected, scaled(20), 0.1, what="action.rejected for both forged requests")
        assert found[ids[0]].details["check"] == "unsigned"
        assert found[ids[1]].details["check"] == "untrusted"
        assert not [x for x in await executor_audits(js) if x.event_type == "action.executed"
                    and x.subject_id in ids]
        tel = await mesh_telemetry(js)
        assert tel["n2"].reachable and not [n for n, t in tel.items() if "n2" in t.avoided]
    finally:
        await leaked.close()
        await nc.close()


async def test_planted_claim_does_not_drop_an_action(stack):
    action_id = "sec-planted-" + uuid.uuid4().hex[:6]
    nc, js = await op_js(stack)
    planner = await stack.connect("planner")
    leaked = await stack.connect("executor", name="attacker-executor")   # may write the `actions` bucket
    try:
        req = events_pb2.ActionRequest(
            meta=new_meta("planner", f"cycle-{action_id}"), action_id=action_id, plan_id=f"plan-{action_id}",
            approved_by="auto", timeout_s=2.0,
            action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_CONFIG_CHANGE, target_node="x9"))
        sign_approval(req, Signer.load("planner", stack.secrets.signing_file("planner")), 300, time.time_ns())
        await (await leaked.jetstream().key_value("actions")).put(action_id, b"done")
        await planner.jetstream().publish(subjects.MAPEK_ACTION, req.SerializeToString())

        async def executed():
            evs = [x for x in await executor_audits(js) if x.subject_id == action_id]
            return evs if any(x.event_type == "action.executed" for x in evs) else None
        evs = await eventually(executed, scaled(20), 0.1, what=f"action.executed for {action_id}")
        assert [x.event_type for x in evs if x.event_type == "action.claim_invalid"] == ["action.claim_invalid"]
        assert not [x for x in evs if x.event_type == "action.duplicate"]
    finally:
        for c in (leaked, planner, nc):
            await c.close()


def test_forged_and_garbage_gov_events_are_quarantined(stack):
    gov = types.SimpleNamespace(stack=stack)        # what test_gov_log_forgery's helpers need
    before = govforge.log_check(gov)
    pid = "plan-sec-forged-" + uuid.uuid4().hex[:6]
    events, links = govforge.forged_passed_proposal(pid, "n2")
    seqs = {govforge.inject(gov, encode_legacy([govforge.forged_voter("evil-sec")], [])),
            govforge.inject(gov, encode_legacy(events, links), "mixed"),
            govforge.inject(gov, b"\x00\x01 definitely not JSON {")}
    eventually_sync(lambda: seqs <= govforge.quarantined_seqs(gov), scaled(15), 0.2,
                    what="the three forgeries audited as quarantined")
    check = govforge.log_check(gov)
    assert check["ready"] and check["writer"] == "ok" and check["quarantined"] >= before["quarantined"] + 3
    consistently_sync(lambda: govforge.action_requests(gov, pid) == [], 1.0, 0.25)
    # the writer is not wedged: a genuine write (the ledger admin registers a voter over mutual TLS) goes through
    from x0tta6bl4.pqc import MLDSA65PrivateKey
    stub = gov_stub(stack, svids.mint(stack.secrets.root, "operator", "sec"))
    admin = (("authorization", f"Bearer {(stack.data_dir / 'governance-admin.token').read_text().strip()}"),)
    voter = f"spiffe://{TD}/voter/sec-{uuid.uuid4().hex[:6]}"
    stub.RegisterVoter(g.RegisterVoterRequest(voter=voter, balance=25.0, public_key=MLDSA65PrivateKey.generate()
                                              .public_key().public_bytes()), metadata=admin, timeout=scaled(10))
    assert stub.GetBalance(g.GetBalanceRequest(voter=voter), timeout=scaled(10)).balance == 25.0
    assert govforge.no_such(lambda: stub.GetBalance(g.GetBalanceRequest(voter="evil-sec"), timeout=scaled(10)))


def test_forged_audit_chain_is_reported(stack):
    forger = AuditChain("governance", MLDSASigner())

    async def attack() -> int:
        nc = await stack.connect("governance", name="attacker-governance")
        try:
            pub = Publisher(nc, "governance")
            for ev in (forger.next("proposal.created", "p-evil"),
                       forger.next("proposal.closed", "p-evil", {"state": "PASSED"})):
                await pub.publish(subjects.audit("governance", ev.event_type), ev)
            return (await nc.jetstream().publish(subjects.audit("governance", "noise"), b"\x08\xff\xff garbage")).seq
        finally:
            await nc.close()
    seq = asyncio.run(attack())
    r = meshctl(stack, "audit", "verify", "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert report["ok"] is False and report["counts"].get("garbage", 0) >= 1
    assert any(x.startswith(f"stream seq {seq} on audit.governance.noise")
               for x in report["unreadable"]["examples"]["garbage"])
    forged = {c["chain_id"]: c for c in report["results"]}[forger.chain_id]
    assert forged["verified"] == 0 and forged["counts"] == {"unknown_key": 2}
    assert report["verified"] > 0                   # the rest of the trail is still verified


# ---- issue #17: identities over mutual TLS -------------------------------------------------------------------
def test_private_key_export_by_another_identity_is_denied(stack):
    """Private keys leave keyvault only through ExportIdentity, an operator's: not to a node (for itself or
    another), not to another host, not to the node's own mesh host, not to a service; the old export methods are
    gone (nothing answers them)."""
    from x0tta6bl4.pqc import recipient_keygen
    _, pub = recipient_keygen()
    for who, svid, node in (("node n0 for n4", svids.mint(stack.secrets.root, "node", "n0"), "n4"),
                            ("node n4 for itself", svids.mint(stack.secrets.root, "node", "n4"), "n4"),
                            ("another host", host_svid(stack, OTHER_HOST), "n4"),
                            ("n4's own host", host_svid(stack, NODE_AGENT), "n4"),
                            ("the executor", svids.mint(stack.secrets.root, "service", "executor"), "n4")):
        code, msg = grpc_error(kv_stub(stack, svid).ExportIdentity,
                               kpb.ExportIdentityRequest(node_id=node, recipient_kem_public_key=pub))
        assert code == C.PERMISSION_DENIED and "ExportIdentity" in msg, (who, code, msg)
    ch = svids.secure_channel(stack.grpc_addr("keyvault"), host_svid(stack, NODE_AGENT), "keyvault", TD)
    try:
        for gone in ("GetPrivateBundle", "GetPrivateBundles"):
            call = ch.unary_unary(f"/x0tta6bl4.v1.Keyvault/{gone}", request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
            code, msg = grpc_error(call, kpb.GetPublicKeysRequest(node_id="n4").SerializeToString())
            assert code in (C.PERMISSION_DENIED, C.UNIMPLEMENTED), (gone, code, msg)
    finally:
        ch.close()


def test_issue_rotate_revoke_without_the_role_are_denied(stack):
    calls = {"IssueIdentity": kpb.IssueIdentityRequest(node_id="zz"), "Rotate": kpb.RotateRequest(node_ids=["n4"]),
             "Revoke": kpb.RevokeRequest(node_id="n4", reason="attack")}
    for who, svid in {"node": svids.mint(stack.secrets.root, "node", "n0"),
                      "host": host_svid(stack, NODE_AGENT)}.items():
        stub = kv_stub(stack, svid)
        for method, req in calls.items():
            code, msg = grpc_error(getattr(stub, method), req)
            assert code == C.PERMISSION_DENIED and method in msg, (who, method, code, msg)


def test_a_vote_in_another_identitys_name_is_denied(stack):
    """Holding n4's key (stolen) is not enough: governance takes a vote only from the voter's own SVID."""
    from x0tta6bl4.governance import vote_signing_payload
    from x0tta6bl4.pqc import MLDSA65PrivateKey
    stolen = MLDSA65PrivateKey.generate()
    voter, nonce = f"spiffe://{TD}/node/n4", b"\x01" * 16
    req = g.CastVoteRequest(proposal_id="p-any", voter=voter, choice=g.VOTE_CHOICE_YES, tokens=1.0, nonce=nonce,
                            signature=stolen.sign(vote_signing_payload("p-any", voter, "YES", 1.0, nonce)))
    attacker = gov_stub(stack, svids.mint(stack.secrets.root, "node", "n0"))
    code, msg = grpc_error(attacker.CastVote, req)
    assert code == C.PERMISSION_DENIED and f"only as spiffe://{TD}/node/n0" in msg, (code, msg)


def test_replayed_hello_is_dropped():
    replay.test_a_replayed_hello_is_dropped_and_counted_at_the_receiver_and_changes_nothing()


def test_spoofed_packets_frame_nobody():
    replay.test_packets_spoofed_in_a_nodes_name_do_not_frame_it()

async def test_a_forged_rotation_request_is_refused(stack):
    """A rotation request makes a node's holder generate and certify new keys: a node agent cannot plant one in
    the keys bucket (broker), and one signed by anyone but keyvault's root does not verify (a mesh host's
    KeyDirectory drops it)."""
    from x0tta6bl4.keyvault.distribution import KeyDirectory, rot_key
    from x0tta6bl4.pqc import InvalidSignature, KeyvaultRoot, MLDSA65PublicKey, RotationRequestRecord
    rogue = KeyvaultRoot.generate().sign(RotationRequestRecord("n4", 1, 1.0, "evil", int(time.time()))).to_bytes()
    async with Attacker(NODE_AGENT) as a:
        await a.refused(f"$KV.keys.{rot_key('n4')}", rogue)
    root = kv_stub(stack, svids.mint(stack.secrets.root, "operator", "probe")).Info(kpb.InfoRequest(),
                                                                                  timeout=scaled(10)).root_public_key
    with pytest.raises(InvalidSignature):
        KeyDirectory(MLDSA65PublicKey.from_bytes(root)).apply(rot_key("n4"), rogue)



# ---- and the legitimate loop still works ---------------------------------------------------------------------
async def test_zz_legitimate_traffic_still_flows(stack):
    nc, js = await op_js(stack)
    try:
        cmd = mesh_pb2.MeshCommand(meta=new_meta("test"), node_id="n4", kind=mesh_pb2.MeshCommand.KIND_FAULT,
                                   params={"type": "kill"})
        reply = await nc.request(subjects.mesh_cmd("n4"), cmd.SerializeToString(), timeout=scaled(5))
        assert mesh_pb2.MeshEvent.FromString(reply.data).kind == "command.ok"

        async def healed():
            for m in await read_all(js, subjects.MAPEK_VERIFIED):
                v = events_pb2.Verification.FromString(m.data)
                if v.action.target_node == "n4" and v.recovered:
                    return v
        v = await eventually(healed, scaled(40), 0.2, what="the verified repair of n4")
        executed = [x for x in await executor_audits(js) if x.event_type == "action.executed"
                    and x.subject_id == v.action_id]
        assert executed and executed[0].details["approver"] in ("planner", "governance")
    finally:
        await nc.close()
    legit = [line for line in violations(stack) if not any(f"attacker-{i}" in line for i in ATTACKERS)]
    assert not legit, "nats-server refused a legitimate flow:\n" + "\n".join(legit[:10])

