"""docs/asyncapi.yaml is generated from the subject table, the permission table and the protos (run `make docs`
after changing any of them); what it says about subjects, messages, headers and identities is checked against
those sources here (the AsyncAPI validator runs in tests/integration/contracts/test_contracts.py)."""
from __future__ import annotations

import functools
import json
import pathlib

import pytest
import yaml
from testkit import load_tool

from x0tta6bl4.bus import asyncapi, codec, permissions, subjects
from x0tta6bl4.v1 import keyvault_pb2

ROOT = pathlib.Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "asyncapi.yaml"

gen_docs = load_tool("gen_docs")


@functools.cache
def _parsed() -> str:
    return json.dumps(yaml.load(DOC.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def doc() -> dict:
    """The checked-in document (parsed once; a fresh copy per call)."""
    return json.loads(_parsed())


def test_the_checked_in_document_is_the_generated_one():
    assert DOC.read_text(encoding="utf-8") == gen_docs.render_asyncapi(), (
        "docs/asyncapi.yaml differs from x0tta6bl4.bus.asyncapi.build(): run `make docs` "
        "(python tools/gen_docs.py) and commit docs/asyncapi.yaml")


def test_a_hand_edit_is_detected_by_the_check(tmp_path, capsys):
    edited = tmp_path / "asyncapi.yaml"
    edited.write_text(DOC.read_text(encoding="utf-8").replace("mesh.telemetry.{node}", "mesh.telemetry.x", 1))
    assert gen_docs.regenerate(edited, check=True) == 1
    assert "run `make docs`" in capsys.readouterr().err
    assert gen_docs.regenerate(edited, check=False) == 0
    assert edited.read_text(encoding="utf-8") == gen_docs.render_asyncapi()


def test_every_subject_of_the_table_has_a_channel():
    addresses = {c["address"] for c in doc()["channels"].values()}
    for sj in subjects.SUBJECTS:
        if sj.pattern == subjects.KEYVAULT_RPC:
            for m in keyvault_pb2.DESCRIPTOR.services_by_name["Keyvault"].methods:
                assert subjects.keyvault_rpc(m.name) in addresses
        elif sj.pattern == subjects.MONITOR_RPC:
            assert {subjects.MONITOR_INFO, subjects.MONITOR_CYCLE} <= addresses
        else:
            assert sj.pattern in addresses, sj.pattern
    for wanted in (subjects.GOV_WATCH, subjects.GOVERNANCE_RPC, subjects.GOV_EVENTS, subjects.AUDIT):
        assert wanted in addresses


def test_every_message_type_the_table_names_is_a_message_with_its_fields():
    d = doc()
    schemas, messages = d["components"]["schemas"], d["components"]["messages"]
    named = {m["name"] for m in messages.values()}
    for full in ("x0tta6bl4.v1.NodeTelemetry", "x0tta6bl4.v1.AuditEvent", "x0tta6bl4.v1.ProposalEvent",
                 "x0tta6bl4.v1.MeshCommand", "x0tta6bl4.v1.RotateRequest", "x0tta6bl4.v1.SvidResponse"):
        assert full in named
        cls = codec.message_class(full) if full in codec.REQUIRED else None
        props = schemas[full]["properties"]
        if cls is not None:
            assert {f.name: f.number for f in cls.DESCRIPTOR.fields} == \
                   {k: v["x-field-number"] for k, v in props.items()}
    # required fields come from codec.REQUIRED
    assert "meta.cycle_id" in schemas["x0tta6bl4.v1.Plan"]["x-required-paths"]
    assert schemas["x0tta6bl4.v1.AuditEvent"]["properties"]["details"]["type"] == "object"
    # nested messages are there too (Meta, ActionSpec, Proposal ...)
    for full in ("x0tta6bl4.v1.Meta", "x0tta6bl4.v1.ActionSpec", "x0tta6bl4.v1.Proposal", "x0tta6bl4.v1.Tally"):
        assert full in schemas


def test_event_headers_are_documented():
    headers = doc()["components"]["schemas"]["EventHeaders"]["properties"]
    for h in (subjects.HEADER_MSG_ID, subjects.HEADER_TYPE, subjects.HEADER_CYCLE, "traceparent"):
        assert h in headers
    reply = doc()["components"]["schemas"]["ReplyHeaders"]["properties"]
    assert {subjects.HEADER_ERROR, subjects.HEADER_ERROR_CODE, subjects.HEADER_SLIM} <= set(reply)


def _ids(op: dict) -> set[tuple[str, str]]:
    return {(i["identity"], i["via"]) for i in op["x-identities"]}


def test_who_may_publish_and_read_follows_the_permission_table():
    ops = doc()["operations"]
    assert _ids(ops["mapek_plan_send"]) == {("planner", "publish")}
    assert ("governance", "durable governance-plans") in _ids(ops["mapek_plan_receive"])
    assert _ids(ops["gov_watch_kind_send"]) == {("governance", "publish")}
    assert _ids(ops["keyvault_rpc_Rotate_send"]) == {("executor", "publish"), ("operator", "publish")}
    assert _ids(ops["keyvault_rpc_Rotate_receive"]) == {("keyvault", "subscribe")}
    assert ("audit-reader", "subscribe") in _ids(ops["audit_service_event_receive"])
    assert not ops["governance_rpc_method_send"]["x-identities"]      # reserved: nobody may publish
    telemetry = ops["mesh_telemetry_node_send"]["x-identities"]
    assert telemetry == [{"identity": asyncapi.MESH_HOST, "kind": "mesh-host", "via": "publish", "scope": "own"}]
    # the same answer as the permission table, for every operation and identity that publishes
    table = permissions.table({"h1": ["n0", "n1"]})
    for name, op in ops.items():
        if op["action"] != "send":
            continue
        address = doc()["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]["address"]
        for p in table.identities:
            if p.kind == "provisioner":
                continue
            whole = any(asyncapi.covers(a, asyncapi.wildcard(address)) for a in p.publish)
            listed = {i["identity"]: i["scope"] for i in op["x-identities"]}
            if whole:
                assert listed.get(asyncapi._name(p.identity)) == "all", (name, p.identity)


def test_wildcards():
    assert asyncapi.covers("mesh.cmd.*", "mesh.cmd.*") and asyncapi.covers("audit.>", "audit.>")
    assert not asyncapi.covers("mesh.cmd.n0", "mesh.cmd.*") and asyncapi.overlaps("mesh.cmd.n0", "mesh.cmd.*")
    assert not asyncapi.covers("audit.monitor.>", "audit.>") and asyncapi.overlaps("audit.monitor.>", "audit.>")
    assert not asyncapi.overlaps("mapek.plan", "mapek.action") and not asyncapi.overlaps("a.b", "a.b.c")


def test_governance_log_records_match_their_schemas():
    """A sealed v2 (JSON) governance log record with every event type validates against the document's schemas
    (and a record with a field of the wrong type does not); the v3 record is the GovLogRecord protobuf."""
    import jsonschema

    from x0tta6bl4.governance import Action, ActionKind, CloseReason, ProposalState, Tally, VoteChoice
    from x0tta6bl4.governance import events as gev
    from x0tta6bl4.governance.decision import Severity
    from x0tta6bl4.governance.eventlog import GENESIS, seal
    from x0tta6bl4.trust import Signer

    act = Action(ActionKind.REROUTE, {"peer": "n2"}, "n1")
    events = [
        gev.VoterRegistered("v1", 100.0, 1.0, "k1", b"\x01\x02"),
        gev.VoterKeyRotated("v1", "k2", b"\x03", 1.5),
        gev.ProposalCreated("p1", "t", "d", act, "alice", 60.0, 0.1, 0.5, 600.0, 2.0, "c1", "r1"),
        gev.ProposalAutoApproved("p2", "t", "d", act, "planner", 600.0, 0.9, Severity.HIGH, "auto", 2.5),
        gev.VoteCast("vote1", "p1", "v1", VoteChoice.YES, 100.0, 10.0, b"\x00" * 16, b"\x05", 3.0),
        gev.ProposalClosed("p1", ProposalState.PASSED, CloseReason.QUORUM_AND_THRESHOLD_MET,
                           Tally(10, 0, 0, 10, 1, 1), True, 4.0),
        gev.ProposalCanceled("p3", "alice", 5.0), gev.ExecutionFailed("p1", "boom", 6.0),
        gev.ProposalExecuted("p1", "ok", 7.0), gev.ProposalExpired("p2", 8.0)]
    assert {type(e) for e in events} == set(gev.EVENT_TYPES.values())
    data, _ = seal(GENESIS, events, [{"proposal_id": "p1", "action_id": "a1", "plan": "", "traceparent": ""}],
                   Signer.generate("governance"), version=2)
    header_line, body = data.split(b"\n", 1)
    schemas = doc()["components"]["schemas"]
    resolver = {"components": {"schemas": schemas}}

    def validate(instance, name):
        jsonschema.validate(instance, {"$ref": f"#/components/schemas/{name}", **resolver})

    validate(json.loads(header_line), "GovernanceLogHeader")
    validate(json.loads(body), "GovernanceLogBody")
    bad = json.loads(body)
    bad["events"][4]["tokens"] = "a hundred"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad, "GovernanceLogBody")

    # v3: the channel's first message is the protobuf record; its body field names the GovLogBody schema, whose
    # events are one message per event type
    d = doc()
    channel = d["channels"]["gov_events_kind"]["messages"]
    assert list(channel) == ["GovLogRecord", "GovernanceLogRecord"]
    v3 = d["components"]["messages"]["GovLogRecord"]
    assert v3["contentType"] == "application/x-protobuf"
    assert v3["payload"] == {"$ref": "#/components/schemas/x0tta6bl4.v1.GovLogRecord"}
    record = schemas["x0tta6bl4.v1.GovLogRecord"]["properties"]
    assert list(record) == ["version", "seq", "prev", "hash", "key_id", "sig", "body"]
    assert record["body"]["x-protobuf-payload"] == "x0tta6bl4.v1.GovLogBody"
    members = schemas["x0tta6bl4.v1.GovEvent"]["properties"]
    assert {m.split(".", 1)[1] for m in gev.EVENT_TYPES} == set(members)
    assert all(f"x0tta6bl4.v1.{type(e).__name__}" in schemas for e in events)
