"""The audit event types: every ``audit(...)`` call in libs/ and services/ writes a type of
x0tta6bl4.audit.types.TYPES with detail keys listed for it, docs/audit-events.md is generated from the table,
and details are typed (a string as it is, anything else JSON)."""
from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import pathlib
import re

import pytest
from testkit import load_tool

from x0tta6bl4.audit import types
from x0tta6bl4.audit.chain import AuditChain, MLDSASigner, canonical_bytes, detail_value, verify_chains
from x0tta6bl4.governance import events as gev
from x0tta6bl4.stages import governance as gov_stage

ROOT = pathlib.Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "audit-events.md"
AUDIT_FUNCS = {"audit": 0, "_audit": 0, "audit_nodes": 0, "_audit_quietly": 1}

gen_docs = load_tool("gen_docs")


def _pattern(node: ast.expr, consts: dict[str, str]) -> list[str] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in consts:
        return [consts[node.id]]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else "{x}" for v in node.values)]
    if isinstance(node, ast.IfExp):
        a, b = _pattern(node.body, consts), _pattern(node.orelse, consts)
        return a + b if a is not None and b is not None else None
    return None


@functools.cache
def audit_calls() -> list[tuple[str, str, list[str] | None]]:
    """(where, event type or pattern, literal detail keys or None) of every audit call with a literal type."""
    out = []
    for root in ("libs", "services"):
        for path in sorted((ROOT / root).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                      and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                      for t in n.targets if isinstance(t, ast.Name)}
            for n in ast.walk(tree):
                if not isinstance(n, ast.Call):
                    continue
                name = n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                i = AUDIT_FUNCS.get(name)
                if i is None or len(n.args) <= i:
                    continue
                names = _pattern(n.args[i], consts)
                if names is None:
                    continue
                d = n.args[i + 2] if len(n.args) > i + 2 else None
                keys = [k.value for k in d.keys if isinstance(k, ast.Constant)] if isinstance(d, ast.Dict) else None
                where = f"{path.relative_to(ROOT)}:{n.lineno}"
                out += [(where, t, keys) for t in names]
    return out


def test_the_scan_finds_the_audit_calls():
    found = {t for _, t, _ in audit_calls()}
    assert {"action.executed", "decision", "service.started", "svid.issued", "key.rotated", "{x}.refused",
            "mesh.{x}", "edge.provisioned", "policy.denied"} <= found


def _norm(name: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "{x}", name)


def _entry(name: str) -> types.EventType | None:
    if "{x}" in name:
        return next((t for t in types.TYPES if _norm(t.name) == name), None)
    return types.find(name)


def test_every_audited_type_is_documented_with_its_detail_keys():
    problems = []
    for where, name, keys in audit_calls():
        t = _entry(name)
        if t is None:
            problems.append(f"{where}: audit type {name!r} is not in x0tta6bl4.audit.types.TYPES")
            continue
        for k in keys or ():
            if t.key(k) is None:
                problems.append(f"{where}: {name} detail {k!r} is not documented in x0tta6bl4.audit.types")
    assert not problems, "\n".join(problems)


def test_governance_audit_types_are_the_stage_s():
    assert types.GOV_HIDDEN == gov_stage.AUDIT_HIDDEN
    closed = {gev.ProposalClosed: ("proposal.passed", "proposal.rejected")}
    for cls in [*gov_stage.AUDIT_TYPES, gev.ProposalClosed]:
        for name in closed.get(cls, (gov_stage.AUDIT_TYPES.get(cls, ""),)):
            t = types.find(name)
            assert t is not None and t.services == ("governance",), name
            fields = {f.name for f in dataclasses.fields(cls)} - set(types.GOV_HIDDEN)
            assert {d.key for d in t.details} == fields | {"count", "ids"}, name
    assert types.find(gov_stage.AUDIT_QUARANTINED) is not None


def test_every_documented_type_is_written_somewhere():
    written = {_norm(name) for _, name, _ in audit_calls()}
    gov = set(gov_stage.AUDIT_TYPES.values()) | {"proposal.passed", "proposal.rejected"}
    for t in types.TYPES:
        if t.name not in gov:
            assert _norm(t.name) in written, f"{t.name} is documented but no audit call writes it"


def test_types_are_json_types_and_names_unique():
    names = [t.name for t in types.TYPES]
    assert len(names) == len(set(names))
    for t in types.TYPES:
        assert t.services and t.subject and t.doc
        assert all(d.type in types.JSON_TYPES for d in t.details)


@pytest.mark.parametrize(("value", "stored"), [
    ("node-1", "node-1"), (True, "true"), (False, "false"), (None, "null"), (3, "3"), (0.5, "0.5"),
    (["a", 1], '["a",1]'), ({"b": 1, "a": {"c": None}}, '{"a":{"c":null},"b":1}'), (float("nan"), "null"),
    (gev.VoteChoice.YES, gev.VoteChoice.YES.value)])
def test_detail_values_are_strings_or_json(value, stored):
    assert detail_value(value) == stored
    if not isinstance(value, str):
        assert json.loads(stored) == json.loads(detail_value(value))


def test_a_chain_with_typed_details_verifies():
    chain = AuditChain("planner", MLDSASigner())
    ev = chain.next("knowledge.recorded", "node_down.reroute",
                    {"recovered": True, "mttr_ms": 812, "success_rate": 0.67, "topology_size": 5, "action_id": "a1"})
    assert dict(ev.details) == {"recovered": "true", "mttr_ms": "812", "success_rate": "0.67", "topology_size": "5",
                                "action_id": "a1"}
    t = types.find(ev.event_type)
    assert t is not None
    for k, v in ev.details.items():
        d = t.key(k)
        assert d is not None
        parsed = v if d.type == types.STRING else json.loads(v)
        wanted = {types.BOOLEAN: bool, types.INTEGER: int, types.NUMBER: (int, float), types.STRING: str}[d.type]
        assert isinstance(parsed, wanted), (k, v, d.type)
    report = verify_chains([ev, chain.next("verification", "a1", {"recovered": False})])
    assert report.ok and report.verified == 2
    # the canonical bytes are the published (deterministic) bytes without the records of fields 9-12
    assert canonical_bytes(ev) == strip_fields(ev.SerializeToString(deterministic=True), {9, 10, 11, 12})
    assert hashlib.sha256(canonical_bytes(ev)).digest() == ev.hash


def strip_fields(data: bytes, drop: set[int]) -> bytes:
    """A protobuf message's bytes without the top-level records of the fields ``drop`` (wire level)."""
    out, i = bytearray(), 0

    def varint(j: int) -> tuple[int, int]:
        v, shift = 0, 0
        while True:
            b = data[j]
            v |= (b & 0x7F) << shift
            j, shift = j + 1, shift + 7
            if not b & 0x80:
                return v, j
    while i < len(data):
        start = i
        tag, i = varint(i)
        wire = tag & 7
        if wire == 0:
            _, i = varint(i)
        elif wire == 2:
            n, i = varint(i)
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
        if tag >> 3 not in drop:
            out += data[start:i]
    return bytes(out)


def test_the_doc_is_generated_from_the_table():
    current = DOC.read_text(encoding="utf-8")
    assert current == gen_docs.render(current, types.describe(), "docs/audit-events.md"), (
        "docs/audit-events.md differs from x0tta6bl4.audit.types.describe(): run `make docs`")
