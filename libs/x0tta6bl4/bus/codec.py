"""Protobuf encoding and validation of bus messages.

``decode`` turns bytes into a message or raises :class:`InvalidMessage` with a
reason a human can act on; the subscriber parks such messages on the
dead-letter subject. Validation is declarative: every message has a ``meta``,
the fields listed in ``REQUIRED`` must be set, and no float may be NaN or
infinite.
"""
from __future__ import annotations

import functools
import math
from typing import Any, TypeVar, cast

from google.protobuf.message import DecodeError, Message

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


def decode(cls: type[M], data: bytes) -> M:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InvalidMessage(f"{cls.DESCRIPTOR.full_name}: does not parse ({e})") from None
    return validate(msg)  # type: ignore[return-value]


def encode(msg: Message) -> bytes:
    validate(msg)
    return msg.SerializeToString(deterministic=True)
