"""The NATS API as an AsyncAPI 3.0 document, built from the one subject table (:mod:`.subjects`), the one
permission table (:mod:`.permissions`), the required fields (:data:`.codec.REQUIRED`) and the protobuf
descriptors (no I/O: ``tools/gen_docs.py`` writes it to docs/asyncapi.yaml, a test fails when they differ).

What the document holds:

* one channel per subject family (``mesh.telemetry.{node}`` ...), per keyvault and monitor method
  (``keyvault.rpc.Rotate`` ...), and one reply channel (address ``null``: the requester's inbox) per
  request/reply subject;
* one message per protobuf type with its headers (``Nats-Msg-Id``, ``X0-Type``, ``X0-Cycle``,
  ``traceparent``, ``tracestate``; ``X0-Error``/``X0-Error-Code``/``X0-Slim`` on replies) and its payload
  as a JSON Schema of the protobuf message (field names, numbers and protobuf types; the payload on the
  wire is the protobuf binary encoding, content type ``application/x-protobuf``);
* per channel a ``send`` and a ``receive`` operation whose ``x-identities`` list which bus identity may
  publish / read it and how (``publish`` permission, ``subscribe`` permission, a ``durable`` consumer, or
  ``stream`` reads with ephemeral consumers), with ``scope`` ``own`` when the permission covers only part
  of the family (a mesh host's own nodes, a service's own audit subjects).
"""
from __future__ import annotations

import re
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from x0tta6bl4.bus import codec, permissions, subjects
from x0tta6bl4.ids import SCHEMA_VERSION
from x0tta6bl4.v1 import common_pb2, events_pb2, governance_pb2, govlog_pb2, keyvault_pb2, mesh_pb2

VERSION = "1.0.0"
PACKAGE = "x0tta6bl4.v1"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MESH_HOST = permissions.MESH_HOST_PREFIX + "<host>"
_EXAMPLE_HOST = "h1"
_MODULES = (common_pb2, events_pb2, mesh_pb2, governance_pb2, keyvault_pb2, govlog_pb2)
GOV_LOG_RECORD, GOV_LOG_BODY = f"{PACKAGE}.GovLogRecord", f"{PACKAGE}.GovLogBody"

# ---- NATS subject patterns -----------------------------------------------------------------------------


def wildcard(pattern: str) -> str:
    """A subject pattern of the table as a NATS wildcard (``{x}`` one token; the audit event: the rest)."""
    if pattern == subjects.AUDIT:
        return subjects.AUDIT_ALL
    return re.sub(r"\{[a-z_]+\}", "*", pattern)


def covers(a: str, b: str) -> bool:
    """Every subject ``b`` matches is matched by ``a`` (NATS wildcards on both sides)."""
    at, bt = a.split("."), b.split(".")
    for i, x in enumerate(at):
        if x == ">":
            return len(bt) > i
        if i >= len(bt) or bt[i] == ">":
            return False
        if x == "*":
            continue
        if bt[i] == "*" or bt[i] != x:
            return False
    return len(at) == len(bt)


def overlaps(a: str, b: str) -> bool:
    """Some subject is matched by both patterns."""
    at, bt = a.split("."), b.split(".")
    for x, y in zip(at, bt, strict=False):
        if ">" in (x, y):
            return True
        if "*" not in (x, y) and x != y:
            return False
    return len(at) == len(bt)


def _name(identity: str) -> str:
    return MESH_HOST if identity.startswith(permissions.MESH_HOST_PREFIX) else identity


def _access(allow: tuple[str, ...], deny: tuple[str, ...], subject: str) -> str:
    """"all" when ``allow`` covers the whole family, "own" when part of it, "" when none."""
    if any(covers(d, subject) for d in deny):
        return ""
    if any(covers(a, subject) for a in allow):
        return "all"
    return "own" if any(overlaps(a, subject) for a in allow) else ""


def publishers(subject: str, table: permissions.Table) -> list[dict[str, str]]:
    out = []
    for p in table.identities:
        if p.kind == "provisioner":
            continue            # JetStream administration, never an application message
        scope = _access(p.publish, p.deny_publish, subject)
        if scope:
            out.append({"identity": _name(p.identity), "kind": p.kind, "via": "publish", "scope": scope})
    return out


def readers(sj: subjects.Subject, subject: str, table: permissions.Table) -> list[dict[str, str]]:
    out = []
    for p in table.identities:
        if p.kind == "provisioner":
            continue
        scope = _access(p.subscribe, p.deny_subscribe, subject)
        if scope:
            out.append({"identity": _name(p.identity), "kind": p.kind, "via": "subscribe", "scope": scope})
        for c in subjects.CONSUMERS:
            if c.service == p.identity and c.stream == sj.stream and overlaps(c.subject, subject):
                out.append({"identity": p.identity, "kind": p.kind, "via": f"durable {c.durable}",
                            "scope": "all" if covers(c.subject, subject) else "own"})
        if sj.stream and f"{permissions.JS}.CONSUMER.CREATE.{sj.stream}" in p.publish:
            out.append({"identity": _name(p.identity), "kind": p.kind, "via": f"stream {sj.stream}",
                        "scope": "all"})
    return out


# ---- protobuf messages as JSON Schema -----------------------------------------------------------------
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
    FieldDescriptor.TYPE_INT64: {"type": "integer", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "integer", "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "integer", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "integer", "format": "uint64", "minimum": 0},
    FieldDescriptor.TYPE_FIXED64: {"type": "integer", "format": "uint64", "minimum": 0},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_PROTO_TYPE = {v: k.lower()[5:] for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_")}


def schema_ref(full_name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{full_name}"}


def _value_schema(fd: FieldDescriptor) -> dict[str, Any]:
    if fd.message_type is not None:
        return schema_ref(fd.message_type.full_name)
    et = fd.enum_type
    if et is not None:
        return {"type": "string", "enum": [v.name for v in et.values], "x-protobuf-enum": et.full_name}
    return dict(_SCALARS[fd.type])


def _field_schema(fd: FieldDescriptor) -> dict[str, Any]:
    mt = fd.message_type
    if mt is not None and mt.GetOptions().map_entry:
        key, value = mt.fields_by_name["key"], mt.fields_by_name["value"]
        out: dict[str, Any] = {"type": "object", "additionalProperties": _value_schema(value),
                               "x-protobuf-type": f"map<{_PROTO_TYPE[key.type]}, {_type_name(value)}>"}
    elif fd.is_repeated:
        out = {"type": "array", "items": _value_schema(fd), "x-protobuf-type": "repeated " + _type_name(fd)}
    else:
        out = {**_value_schema(fd), "x-protobuf-type": _type_name(fd)} if "$ref" not in _value_schema(fd) \
            else {"allOf": [_value_schema(fd)], "x-protobuf-type": _type_name(fd)}
    out["x-field-number"] = fd.number
    return out


def _type_name(fd: FieldDescriptor) -> str:
    if fd.message_type is not None:
        return fd.message_type.full_name
    if fd.enum_type is not None:
        return fd.enum_type.full_name
    return _PROTO_TYPE[fd.type]


def message_schema(d: Descriptor) -> dict[str, Any]:
    required = codec.REQUIRED.get(d.full_name)
    paths = ["meta", "meta.event_id", "meta.producer", "meta.ts_unix_ns", *required] \
        if required is not None else []
    out: dict[str, Any] = {"type": "object", "x-protobuf-message": d.full_name,
                           "properties": {fd.name: _field_schema(fd) for fd in d.fields}}
    top = sorted({p.split(".")[0] for p in paths}, key=lambda n: d.fields_by_name[n].number)
    if top:
        out["required"] = top
        out["x-required-paths"] = paths
    return out


def all_messages() -> dict[str, Descriptor]:
    """Every message type of the protos (nested types too, map entries not), by full name."""
    out: dict[str, Descriptor] = {}

    def add(d: Descriptor) -> None:
        if d.GetOptions().map_entry:
            return
        out[d.full_name] = d
        for n in d.nested_types:
            add(n)

    for mod in _MODULES:
        for d in mod.DESCRIPTOR.message_types_by_name.values():
            add(d)
    return dict(sorted(out.items()))


# ---- the governance log (gov.events.*): v3 is protobuf (govlog.proto); the v2 JSON records an earlier version
# wrote (still read): their schema from the event dataclasses ----------------------------------------------
def _gov_value_schema(hint: object) -> dict[str, Any]:
    import enum as _enum

    from x0tta6bl4.governance.model import Action, ActionKind, Tally
    if isinstance(hint, type) and issubclass(hint, _enum.Enum):
        return {"type": "string", "enum": [m.value for m in hint]}
    if hint is bytes:
        return {"type": "string", "pattern": "^([0-9a-f]{2})*$", "description": "hex"}
    if hint is Action:
        return {"type": "object", "required": ["kind"], "additionalProperties": False, "properties": {
            "kind": {"type": "string", "enum": [k.value for k in ActionKind]},
            "params": {"type": "object", "additionalProperties": {"type": "string"}},
            "target_node": {"type": "string"}}}
    if hint is Tally:
        return {"type": "object", "additionalProperties": False, "properties": {
            k: {"type": "integer" if k in ("voters", "eligible_voters") else "number"}
            for k in ("yes", "no", "abstain", "eligible", "voters", "eligible_voters")}}
    return {str: {"type": "string"}, float: {"type": "number"}, int: {"type": "integer"},
            bool: {"type": "boolean"}}[hint]  # type: ignore[index]


def governance_schemas() -> dict[str, Any]:
    """JSON Schemas of a v2 (JSON) governance log record's header and body and of every governance event in it
    (``x0tta6bl4.governance.events.event_to_dict``; the record formats: ``x0tta6bl4.governance.eventlog``)."""
    import dataclasses
    import typing

    from x0tta6bl4.governance import eventlog
    from x0tta6bl4.governance import events as gev
    out: dict[str, Any] = {
        "GovernanceLogHeader": {
            "type": "object", "additionalProperties": False,
            "required": ["v", "seq", "prev", "hash", "key_id", "sig"],
            "description": "the first line of a v2 record (read, no longer written): hash = SHA-256(field(\""
                           + eventlog.HASH_DOMAINS[eventlog.JSON_VERSION].decode()
                           + "\") || uint64_be(seq) || field(prev bytes) || field(key_id) || field(body bytes)), "
                           "field(x) = uint32_be(len(x)) || x; sig = ML-DSA-65 (FIPS 204 context "
                           "\"x0tta6bl4/gov-event/v1\") over the 32 hash bytes by the governance log key",
            "properties": {"v": {"type": "integer", "const": eventlog.JSON_VERSION},
                           "seq": {"type": "integer", "minimum": 1},
                           "prev": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                           "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                           "key_id": {"type": "string"}, "sig": {"type": "string", "contentEncoding": "base64"}}},
        "GovernanceLogBody": {
            "type": "object", "required": ["events", "links"],
            "description": "the rest of a v2 record after the first newline (its exact bytes are hashed)",
            "properties": {
                "events": {"type": "array", "items": {"oneOf": [
                    {"$ref": f"#/components/schemas/{cls.TYPE}"} for cls in gev.EVENT_TYPES.values()]}},
                "links": {"type": "array", "items": {"type": "object", "required": ["proposal_id"],
                                                     "additionalProperties": {"type": "string"},
                                                     "description": "a proposal's link to the plan (base64 "
                                                                    "protobuf Plan), its trace and action id"}},
                "legacy": {"type": "object", "properties": {"records": {"type": "integer"},
                                                            "sha256": {"type": "string"}}}}},
    }
    for cls in gev.EVENT_TYPES.values():
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        out[cls.TYPE] = {
            "type": "object", "additionalProperties": False,
            "required": ["type", "schema_version", *(f.name for f in fields
                                                     if f.default is dataclasses.MISSING
                                                     and f.default_factory is dataclasses.MISSING)],
            "properties": {"type": {"type": "string", "const": cls.TYPE},
                           "schema_version": {"type": "integer", "const": gev.SCHEMA_VERSION},
                           **{f.name: _gov_value_schema(hints[f.name]) for f in fields}}}
    return out


# ---- headers ----------------------------------------------------------------------------------------------
_TRACE = {
    "traceparent": {"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                    "description": "W3C trace context of the span that published the message"},
    "tracestate": {"type": "string", "description": "W3C trace state (when the trace has one)"},
}
HEADERS: dict[str, dict[str, Any]] = {
    "EventHeaders": {
        "type": "object", "required": [subjects.HEADER_MSG_ID, subjects.HEADER_TYPE],
        "description": "set by every publisher of a protobuf event (x0tta6bl4.bus.publisher)",
        "properties": {
            subjects.HEADER_MSG_ID: {"type": "string", "description": "the event's meta.event_id: JetStream "
                                     "de-duplication within the stream's duplicate window"},
            subjects.HEADER_TYPE: {"type": "string", "description": "full protobuf name of the payload "
                                   "(x0tta6bl4.v1.<Message>); a receiver refuses a message whose header names "
                                   "another type than the subject carries"},
            subjects.HEADER_CYCLE: {"type": "string", "description": "the MAPE-K cycle id (meta.cycle_id), when "
                                    "the event belongs to a cycle"},
            **_TRACE,
        },
    },
    "GovLogHeaders": {
        "type": "object", "required": [subjects.HEADER_MSG_ID, "Nats-Expected-Last-Sequence"],
        "description": "set by the governance log writer on every record it appends",
        "properties": {
            subjects.HEADER_MSG_ID: {"type": "string", "description": "random per record: a retried publish is "
                                     "de-duplicated"},
            "Nats-Expected-Last-Sequence": {"type": "string", "description": "the last stream sequence the "
                                            "writer read: JetStream refuses the append if another replica "
                                            "appended first"},
            subjects.HEADER_TYPE: {"type": "string", "const": GOV_LOG_RECORD, "description": "on v3 records "
                                   "(absent on the v2 JSON records an earlier version wrote)"},
        },
    },
    "RequestHeaders": {
        "type": "object", "description": "a request may carry the W3C trace context", "properties": dict(_TRACE),
    },
    "ReplyHeaders": {
        "type": "object",
        "description": "an error is an empty reply with X0-Error and X0-Error-Code",
        "properties": {
            subjects.HEADER_ERROR: {"type": "string", "description": "\"<CODE>: <message>\": what failed"},
            subjects.HEADER_ERROR_CODE: {"type": "string", "description": "a gRPC status code name "
                                         "(INVALID_ARGUMENT, PERMISSION_DENIED, NOT_FOUND, ...)"},
            subjects.HEADER_SLIM: {"type": "string", "enum": ["1"], "description": "keyvault reply too big for "
                                   "one NATS message: records without key material (the keys are in the keys "
                                   "bucket)"},
        },
    },
}


# ---- the document -------------------------------------------------------------------------------------
_PARAMS = {
    "node": "a node id (one subject token: characters other than A-Z a-z 0-9 _ - become _)",
    "service": "the publishing service: monitor, analyzer, planner, governance, executor, keyvault, or edge",
    "event": "the audit event type, its dots kept as subject tokens (docs/audit-events.md)",
    "consumer": "the durable consumer that parked the message",
    "kind": "the event kind (created, voted, passed, rejected, executed, expired, canceled, ...)",
    "method": "the method name",
    "identity": "the bus identity requesting an SVID (only that identity may publish it)",
}


def _channel_id(address: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", address).strip("_")


def _message_id(full_name: str) -> str:
    return full_name.removeprefix(PACKAGE + ".")


def _types_in(text: str) -> list[str]:
    names = re.findall(r"(?:x0tta6bl4\.v1\.)?\b([A-Z][A-Za-z]+)\b", text)
    return [f"{PACKAGE}.{n}" for n in names if f"{PACKAGE}.{n}" in all_messages()]


def _kv_methods() -> list[tuple[str, str, str]]:
    svc = keyvault_pb2.DESCRIPTOR.services_by_name["Keyvault"]
    return [(m.name, m.input_type.full_name, m.output_type.full_name) for m in svc.methods]


def build() -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a plain dict, stable order)."""
    table = permissions.table({_EXAMPLE_HOST: ["n0", "n1"]})
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    used: set[str] = set()

    def message(full_name: str, headers: str) -> dict[str, str]:
        mid = _message_id(full_name) + ("" if headers == "EventHeaders" else f"_{headers[:-7]}")
        if mid not in messages:
            messages[mid] = {"name": full_name, "title": _message_id(full_name), "contentType": PROTOBUF,
                             "headers": schema_ref(headers), "payload": schema_ref(full_name)}
            used.add(full_name)
        return {"$ref": f"#/components/messages/{mid}"}

    def json_message(mid: str, title: str, description: str, payload: dict[str, Any],
                     headers: str = "EventHeaders") -> dict[str, str]:
        messages[mid] = {"name": mid, "title": title, "contentType": JSON, "description": description,
                         "headers": schema_ref(headers), "payload": payload}
        return {"$ref": f"#/components/messages/{mid}"}

    def add_channel(sj: subjects.Subject, address: str | None, msgs: dict[str, dict[str, str]],
                    description: str, reply: tuple[str, dict[str, dict[str, str]]] | None = None) -> None:
        cid = _channel_id(address or "")
        ch: dict[str, Any] = {"address": address, "title": address, "description": description, "messages": msgs}
        params = re.findall(r"\{([a-z_]+)\}", address or "")
        if params:
            ch["parameters"] = {p: {"description": _PARAMS[p]} for p in params}
        ch["x-stream"] = sj.stream or None
        ch["x-table"] = {"publishers": list(sj.publishers), "readers": list(sj.subscribers)}
        channels[cid] = ch
        subject = wildcard(address or sj.pattern)
        refs = [{"$ref": f"#/channels/{cid}/messages/{m}"} for m in msgs]
        send: dict[str, Any] = {"action": "send", "channel": {"$ref": f"#/channels/{cid}"}, "messages": refs,
                                "x-identities": publishers(subject, table)}
        if reply is not None:
            rid = cid + "_reply"
            channels[rid] = {"address": None, "title": f"reply to {address}",
                             "description": "the requester's reply inbox (_INBOX_<identity>.>)",
                             "messages": reply[1]}
            send["reply"] = {"channel": {"$ref": f"#/channels/{rid}"},
                             "messages": [{"$ref": f"#/channels/{rid}/messages/{m}"} for m in reply[1]]}
        operations[f"{cid}_send"] = send
        recv = readers(sj, subject, table)
        if reply is not None:     # a responder answers requests it subscribes to
            recv = [r for r in recv if r["via"] == "subscribe"]
        operations[f"{cid}_receive"] = {"action": "receive", "channel": {"$ref": f"#/channels/{cid}"},
                                        "messages": refs, "x-identities": recv}

    for sj in subjects.SUBJECTS:
        if sj.pattern == subjects.KEYVAULT_RPC:
            for method, req, resp in _kv_methods():
                address = subjects.keyvault_rpc(method)
                add_channel(sj, address, {_message_id(req): message(req, "RequestHeaders")},
                            f"keyvault's gRPC method {method} over NATS request/reply (queue group keyvault)",
                            (address, {_message_id(resp): message(resp, "ReplyHeaders")}))
            continue
        if sj.pattern == subjects.MONITOR_RPC:
            obj = {"type": "object", "additionalProperties": True}
            for method, text in (("Info", "the monitor's collector and hosts (JSON object)"),
                                 ("Cycle", "starts a MAPE-K cycle now; request: empty or a JSON object "
                                           "{\"trigger\": <node>}; reply: the cycle (JSON object)")):
                address = subjects.MONITOR_RPC.format(method=method)
                mreq = json_message(f"Monitor{method}Request", f"monitor.rpc.{method} request",
                                    "empty, or a JSON object", obj, "RequestHeaders")
                mrep = json_message(f"Monitor{method}Reply", f"monitor.rpc.{method} reply", text, obj,
                                    "ReplyHeaders")
                add_channel(sj, address, {f"Monitor{method}Request": mreq}, f"{sj.doc}: {text}",
                            (address, {f"Monitor{method}Reply": mrep}))
            continue
        if sj.pattern == subjects.GOVERNANCE_RPC:
            add_channel(sj, sj.pattern, {}, "reserved for governance methods over NATS request/reply: no "
                        "identity may publish it and nothing answers it (use the gRPC API)")
            continue
        if sj.pattern == subjects.GOV_EVENTS:
            messages["GovLogRecord"] = {
                "name": GOV_LOG_RECORD, "title": "GovLogRecord", "contentType": PROTOBUF,
                "description": "one group commit of the governance event log (format v3, what governance writes): "
                               "a GovLogRecord whose body is a serialized GovLogBody (the events, each a typed "
                               "message of the GovEvent oneof; the plan links); signed and hash-chained, the hash "
                               "over the exact body bytes (x0tta6bl4.governance.eventlog; docs/governance-log.md)",
                "headers": schema_ref("GovLogHeaders"), "payload": schema_ref(GOV_LOG_RECORD)}
            used.update((GOV_LOG_RECORD, GOV_LOG_BODY))
            v2 = json_message("GovernanceLogRecord", "governance log record v2 (JSON, read only)",
                              "the format before v3, still in logs an earlier version wrote (replay reads it, "
                              "governance no longer writes it), UTF-8: a header line (JSON, schema "
                              "GovernanceLogHeader), a newline, the body (JSON, schema GovernanceLogBody: the "
                              "events, each one of the governance.* schemas); a chain may go on from v2 records "
                              "to v3 ones", {"type": "string", "contentMediaType": "text/plain",
                                             "x-header": schema_ref("GovernanceLogHeader"),
                                             "x-body": schema_ref("GovernanceLogBody")}, "GovLogHeaders")
            messages["GovernanceLogRecord"]["contentType"] = "text/plain"
            add_channel(sj, sj.pattern, {"GovLogRecord": {"$ref": "#/components/messages/GovLogRecord"},
                                         "GovernanceLogRecord": v2}, sj.doc)
            channels[_channel_id(sj.pattern)]["parameters"]["kind"] = {
                "description": "the record's events' kind when they share one (voter_registered, vote_cast, "
                               "proposal_created, ...: the GovEvent member), mixed otherwise, log for a record "
                               "without events"}
            continue
        types = _types_in(sj.message)
        if "->" in sj.message:
            req, resp = types[0], types[-1]
            add_channel(sj, sj.pattern, {_message_id(req): message(req, "EventHeaders")}, sj.doc,
                        (sj.pattern, {_message_id(resp) + "_Reply": message(resp, "ReplyHeaders")}))
            continue
        add_channel(sj, sj.pattern, {_message_id(t): message(t, "EventHeaders") for t in types}, sj.doc)

    schemas: dict[str, Any] = dict(HEADERS)
    todo = sorted(used)
    seen: set[str] = set()
    every = all_messages()
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        d = every[name]
        schemas[name] = message_schema(d)
        for fd in d.fields:
            mt = fd.message_type
            if mt is not None and mt.GetOptions().map_entry:
                mt = mt.fields_by_name["value"].message_type
            if mt is not None and mt.full_name not in seen:
                todo.append(mt.full_name)
    schemas[GOV_LOG_RECORD]["properties"]["body"]["x-protobuf-payload"] = GOV_LOG_BODY   # bytes of a GovLogBody
    schemas.update(governance_schemas())
    schemas = {k: schemas[k] for k in [*HEADERS, *sorted(k for k in schemas if k not in HEADERS)]}

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "x0tta6bl4 NATS API",
            "version": VERSION,
            "description": (
                "Every subject of the x0tta6bl4 bus: what it carries, its headers, and which bus identity may "
                "publish or read it. Generated by tools/gen_docs.py from x0tta6bl4.bus.subjects, "
                "x0tta6bl4.bus.permissions and the protos (proto/x0tta6bl4/v1, include path proto/); "
                "do not edit. Payloads are protobuf binary (schema_version "
                f"{SCHEMA_VERSION} in meta); each payload schema lists the protobuf fields by name, number "
                "and type. Mesh-host identities are one per host (mesh-host-<host>), allowed only their own "
                "nodes' subjects (scope own)."),
        },
        "defaultContentType": PROTOBUF,
        "servers": {
            "bus": {
                "host": "127.0.0.1:4222", "protocol": "nats", "protocolVersion": "2.10",
                "description": "NATS with JetStream; the secured stack requires TLS (server certificate from the "
                               "deployment CA) and an nkey per identity; subject permissions per identity "
                               "(docs/security.md)",
                "security": [{"$ref": "#/components/securitySchemes/nkey"},
                             {"$ref": "#/components/securitySchemes/tls"}],
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": dict(sorted(messages.items())),
            "securitySchemes": {
                "nkey": {"type": "asymmetricEncryption",
                         "description": "NATS nkey (Ed25519): the server sends a nonce, the client signs it; "
                                        "one nkey per bus identity (creds/<identity>.nk in the secrets directory)"},
                "tls": {"type": "X509", "description": "TLS to the server; the server certificate is "
                                                       "checked against the deployment CA"},
            },
        },
    }
