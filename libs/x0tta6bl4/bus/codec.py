"""Protobuf encoding and validation of bus messages.

``decode`` turns bytes into a message or raises :class:`InvalidMessage` with a
reason a human can act on; the subscriber parks such messages on the
dead-letter subject. Validation is declarative: every message has a ``meta``,
the fields listed in ``REQUIRED`` must be set, and no float may be NaN or
infinite.

Protobuf parses almost any bytes as almost any message: a ``MeshEvent`` published on a telemetry
subject parses as a ``NodeTelemetry`` (same ``meta`` and ``node_id`` numbers; the rest lands in the
unknown fields) and would become a phantom node. ``decode`` is strict about the type:

* the ``X0-Type`` header (set by every publisher, :mod:`x0tta6bl4.bus.publisher`), when the message
  carries one, must name the expected type;
* a field number the expected type defines must arrive with that field's wire type (a newer version
  of the same message never changes a field's type: another wire type means another message), at
  any depth. Field numbers the type does not define are tolerated and kept (fields a newer producer
  appended, or an older one still sends).

With the header every bus type sent as another is refused (a unit test checks every pair). Without
it, a message whose fields line up with the expected type's by number and wire type cannot be told
from one (an ``AuditEvent`` read as a ``MeshEvent``: string, string, string, map); no such pair ends
in a type the loop acts on (a report, anomaly, plan, action, result or verification), and the
handlers' own checks (the monitor's subject and timestamp checks) remain.

The check walks the message, so it runs only when the message has unknown fields at all (its size
changes when they are discarded): the usual message pays for two ``ByteSize`` calls.
"""
from __future__ import annotations

import functools
import math
from typing import Any, TypeVar, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from x0tta6bl4.bus.subjects import HEADER_TYPE
from x0tta6bl4.ids import SCHEMA_VERSION, new_meta  # noqa: F401 - re-exported
from x0tta6bl4.v1 import common_pb2, events_pb2, governance_pb2, mesh_pb2

M = TypeVar("M", bound=Message)


class InvalidMessage(ValueError):
    """A message that does not parse or misses required fields."""


REQUIRED: dict[str, tuple[str, ...]] = {
    "x0tta6bl4.v1.NodeTelemetry": ("node_id",),
    "x0tta6bl4.v1.TelemetryWindow": ("meta.cycle_id",),
    "x0tta6bl4.v1.HealthChange": (),
    "x0tta6bl4.v1.Anomaly": ("meta.cycle_id", "node_id", "root_cause", "fault_type", "incident_id"),
    "x0tta6bl4.v1.Plan": ("meta.cycle_id", "plan_id", "incident_id", "action"),
    "x0tta6bl4.v1.ActionRequest": ("meta.cycle_id", "action_id", "action"),
    "x0tta6bl4.v1.ActionResult": ("meta.cycle_id", "action_id"),
    "x0tta6bl4.v1.Verification": ("meta.cycle_id", "action_id"),
    "x0tta6bl4.v1.AuditEvent": ("service", "event_type", "chain_id"),
    "x0tta6bl4.v1.DeadLetter": ("original_subject", "reason"),
    "x0tta6bl4.v1.MeshEvent": ("node_id", "kind"),
    "x0tta6bl4.v1.MeshCommand": ("node_id", "kind"),
    "x0tta6bl4.v1.ProposalEvent": ("kind", "proposal"),
}

_BY_NAME: dict[str, type[Message]] = {}
for _mod in (events_pb2, mesh_pb2, governance_pb2, common_pb2):
    for _name in _mod.DESCRIPTOR.message_types_by_name:
        _cls = getattr(_mod, _name)
        _BY_NAME[_cls.DESCRIPTOR.full_name] = _cls


def message_class(full_name: str) -> type[Message]:
    try:
        return _BY_NAME[full_name]
    except KeyError:
        raise InvalidMessage(f"unknown message type {full_name!r}") from None


def _get(msg: Message, path: str):
    obj = msg
    for part in path.split("."):
        fd = obj.DESCRIPTOR.fields_by_name[part]
        if fd.message_type is not None and not fd.is_repeated and not obj.HasField(part):
            return None
        obj = getattr(obj, part)
    return obj


@functools.cache
def _float_plan(descriptor) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Per message type: scalar float fields, repeated float fields, float-valued maps, message fields."""
    scalars: list[str] = []
    repeated: list[str] = []
    maps: list[str] = []
    messages: list[str] = []
    for fd in descriptor.fields:
        is_float = fd.cpp_type == fd.CPPTYPE_DOUBLE or fd.cpp_type == fd.CPPTYPE_FLOAT
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vf = fd.message_type.fields_by_name["value"]
            if vf.cpp_type in (vf.CPPTYPE_DOUBLE, vf.CPPTYPE_FLOAT):
                maps.append(fd.name)
            elif vf.message_type is not None:
                messages.append(fd.name)
        elif is_float:
            (repeated if fd.is_repeated else scalars).append(fd.name)
        elif fd.message_type is not None:
            messages.append(fd.name)
    return tuple(scalars), tuple(repeated), tuple(maps), tuple(messages)


def _check_floats(msg: Message, prefix: str = "") -> None:
    scalars, repeated, maps, messages = _float_plan(msg.DESCRIPTOR)
    isfinite = math.isfinite
    for name in scalars:
        v = getattr(msg, name)
        if not isfinite(v):
            raise InvalidMessage(f"field {prefix}{name} is not a finite number ({v})")
    for name in repeated:
        for i, v in enumerate(getattr(msg, name)):
            if not isfinite(v):
                raise InvalidMessage(f"field {prefix}{name}[{i}] is not a finite number ({v})")
    for name in maps:
        for k, v in getattr(msg, name).items():
            if not isfinite(v):
                raise InvalidMessage(f"field {prefix}{name}[{k}] is not a finite number ({v})")
    for name in messages:
        value = getattr(msg, name)
        if isinstance(value, Message):
            if value.ByteSize():
                _check_floats(value, f"{prefix}{name}.")
        elif hasattr(value, "items"):
            for k, v in value.items():
                _check_floats(v, f"{prefix}{name}[{k}].")
        else:
            for i, v in enumerate(value):
                _check_floats(v, f"{prefix}{name}[{i}].")


def validate(msg: Message) -> Message:
    """Raise InvalidMessage unless ``msg`` has its meta, required fields and finite numbers."""
    full = msg.DESCRIPTOR.full_name
    if "meta" in msg.DESCRIPTOR.fields_by_name:
        if not msg.HasField("meta"):
            raise InvalidMessage(f"{full}: missing required field meta")
        meta = cast(Any, msg).meta
        if not meta.event_id:
            raise InvalidMessage(f"{full}: missing required field meta.event_id")
        if not meta.producer:
            raise InvalidMessage(f"{full}: missing required field meta.producer")
        if meta.ts_unix_ns <= 0:
            raise InvalidMessage(f"{full}: missing required field meta.ts_unix_ns")
        if meta.schema_version != SCHEMA_VERSION:
            raise InvalidMessage(
                f"{full}: unsupported schema_version {meta.schema_version} (this build speaks {SCHEMA_VERSION})")
    for path in REQUIRED.get(full, ()):
        value = _get(msg, path)
        if value is None or value == "" or value == 0:
            raise InvalidMessage(f"{full}: missing required field {path}")
    _check_floats(msg)
    return msg


# ---- strict typing: is it really this message? ------------------------------------------------------
WIRE_NAMES = {0: "VARINT", 1: "I64", 2: "LEN", 3: "SGROUP", 4: "EGROUP", 5: "I32"}
_FIXED64 = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64)
_FIXED32 = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32)
_LENGTH = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE)


def wire_types(fd: Any) -> tuple[int, ...]:
    """The wire types a field may arrive with (a repeated scalar: packed or not)."""
    if fd.type in _LENGTH:
        return (2,)
    if fd.type == FieldDescriptor.TYPE_GROUP:
        return (3,)
    own = 1 if fd.type in _FIXED64 else 5 if fd.type in _FIXED32 else 0
    return (own, 2) if fd.is_repeated else (own,)


def _foreign_field(msg: Message, path: str = "") -> str:
    """Why ``msg`` (parsed from bytes) is not of its type: "" when nothing says so."""
    desc = msg.DESCRIPTOR
    for u in cast(Any, UnknownFieldSet(msg)):        # (iterable; its stub says otherwise)
        fd = desc.fields_by_number.get(u.field_number)
        if fd is not None:
            want = "/".join(WIRE_NAMES[w] for w in wire_types(fd))
            return (f"{path}field {u.field_number} ({path}{fd.name}) arrived as "
                    f"{WIRE_NAMES.get(u.wire_type, u.wire_type)}, but {desc.full_name} declares it {want}")
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].message_type is None:
                continue
            items = [(f"{fd.name}[{k}]", v) for k, v in value.items()]
        elif fd.is_repeated:
            items = [(f"{fd.name}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(fd.name, value)]
        for name, sub in items:
            why = _foreign_field(sub, f"{path}{name}.")
            if why:
                return why
    return ""


def decode(cls: type[M], data: bytes, type_name: str | None = None) -> M:
    """Parse and validate ``data`` as a ``cls``; ``type_name``: the message's ``X0-Type`` header, if any.

    Raises :class:`InvalidMessage` naming what is wrong: another type named in the header, bytes that
    do not parse, fields of another message (see the module doc), missing fields, non-finite numbers."""
    full = cls.DESCRIPTOR.full_name
    if type_name and type_name != full:
        raise InvalidMessage(f"{full} expected, but the message is a {type_name} (header {HEADER_TYPE})")
    msg = cls()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InvalidMessage(f"{full}: does not parse ({e})") from None
    size = msg.ByteSize()
    msg.DiscardUnknownFields()
    if msg.ByteSize() != size:           # it had unknown fields: whose are they?
        msg = cls.FromString(data)
        why = _foreign_field(msg)
        if why:
            raise InvalidMessage(f"{full}: not a {cls.DESCRIPTOR.name}: {why}")
    return validate(msg)  # type: ignore[return-value]


def encode(msg: Message) -> bytes:
    validate(msg)
    return msg.SerializeToString(deterministic=True)
