"""Governance events as protobuf messages (``x0tta6bl4.v1.GovEvent``, proto/x0tta6bl4/v1/govlog.proto): the
encoding of the v3 governance log (:mod:`.eventlog`). Pure: no I/O.

Each event dataclass of :mod:`.events` is the message of the same name, its fields by the same names; the
``GovEvent`` oneof member is the event's ``TYPE`` without ``governance.`` (``voter_registered`` ...). Values:
strings, floats (double), bools and bytes as they are; ``Action`` as ``ActionSpec`` (kind
``ACTION_KIND_<NAME>``, params, target_node); ``Tally`` as ``GovTally``; the enums by name
(``VOTE_CHOICE_YES``, ``PROPOSAL_STATE_PASSED``, ``CLOSE_REASON_AUTO_APPROVED``, ``SEVERITY_HIGH``).

A link (a proposal's link to its plan, a dict of strings) is a ``GovLogLink``: ``proposal_id``,
``action_id``, ``plan_id`` and ``traceparent`` when present, ``plan`` (in the dict: base64 of the serialized
``Plan``) as the ``Plan`` message, any other entry in ``extra``.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import typing
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import DecodeError

from x0tta6bl4.v1 import events_pb2, govlog_pb2

from .decision import Severity
from .events import EVENT_TYPES, GovernanceEvent
from .model import Action, ActionKind, CloseReason, ProposalState, Tally, VoteChoice

__all__ = ["event_from_pb", "event_to_pb", "link_from_pb", "link_to_pb", "oneof_name"]

_ENUM_PREFIX: dict[type[enum.Enum], str] = {
    VoteChoice: "VOTE_CHOICE_", ProposalState: "PROPOSAL_STATE_", CloseReason: "CLOSE_REASON_",
    Severity: "SEVERITY_", ActionKind: "ACTION_KIND_",
}
_LINK_FIELDS = ("proposal_id", "action_id", "plan_id", "traceparent")


def oneof_name(cls: type) -> str:
    """The ``GovEvent`` oneof member of an event class: its TYPE without ``governance.``."""
    return str(cls.TYPE).split(".", 1)[1]   # type: ignore[attr-defined]


_BY_ONEOF: dict[str, type] = {oneof_name(cls): cls for cls in EVENT_TYPES.values()}


def _enum_number(pb_enum: Any, value: enum.Enum) -> int:
    return int(pb_enum.values_by_name[_ENUM_PREFIX[type(value)] + value.name].number)


def _enum_value(pb_enum: Any, number: int, cls: type[enum.Enum]) -> enum.Enum:
    v = pb_enum.values_by_number.get(number)
    prefix = _ENUM_PREFIX[cls]
    if v is None or not v.name.startswith(prefix) or v.name[len(prefix):] not in cls.__members__:
        raise ValueError(f"{pb_enum.name} {v.name if v is not None else number} is not a {cls.__name__}")
    return cls[v.name[len(prefix):]]


def _set(msg: Any, name: str, value: Any) -> None:
    fd = msg.DESCRIPTOR.fields_by_name[name]
    if isinstance(value, Action):
        spec = getattr(msg, name)
        spec.SetInParent()
        spec.kind = _enum_number(events_pb2.ActionKind.DESCRIPTOR, value.kind)
        spec.target_node = value.target_node
        spec.params.update(dict(value.params))
    elif isinstance(value, Tally):
        t = getattr(msg, name)
        t.SetInParent()
        t.yes, t.no, t.abstain, t.eligible = value.yes, value.no, value.abstain, value.eligible
        t.voters, t.eligible_voters = value.voters, value.eligible_voters
    elif isinstance(value, enum.Enum):
        setattr(msg, name, _enum_number(fd.enum_type, value))
    elif isinstance(value, (bytes, bytearray)):
        setattr(msg, name, bytes(value))
    else:
        setattr(msg, name, value)


def event_to_pb(event: GovernanceEvent) -> govlog_pb2.GovEvent:
    out = govlog_pb2.GovEvent()
    msg = getattr(out, oneof_name(type(event)))
    msg.SetInParent()
    for f in dataclasses.fields(event):
        _set(msg, f.name, getattr(event, f.name))
    return out


def _get(msg: Any, name: str, hint: Any) -> Any:
    fd = msg.DESCRIPTOR.fields_by_name[name]
    if hint is Action or hint is Tally:
        if not msg.HasField(name):
            raise ValueError(f"missing field {name!r}")
        sub = getattr(msg, name)
        if hint is Tally:
            return Tally(sub.yes, sub.no, sub.abstain, sub.eligible, sub.voters, sub.eligible_voters)
        kind = typing.cast(ActionKind, _enum_value(events_pb2.ActionKind.DESCRIPTOR, sub.kind, ActionKind))
        return Action(kind, dict(sub.params), sub.target_node)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_value(fd.enum_type, getattr(msg, name), hint)
    return getattr(msg, name)


def event_from_pb(pb: govlog_pb2.GovEvent) -> GovernanceEvent:
    """The event a ``GovEvent`` carries; ValueError when it carries none we know or does not decode."""
    which = pb.WhichOneof("event")
    if which is None:
        raise ValueError("empty or unknown governance event (no known member of GovEvent set)")
    cls = _BY_ONEOF[which]
    msg = getattr(pb, which)
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _get(msg, f.name, hints[f.name]) for f in dataclasses.fields(cls)}
    return typing.cast(GovernanceEvent, cls(**kwargs))


def link_to_pb(link: Mapping[str, Any]) -> govlog_pb2.GovLogLink:
    """A link dict as a ``GovLogLink``; ValueError when it is not one (values must be strings)."""
    out = govlog_pb2.GovLogLink()
    for k, v in link.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"link entry {k!r}: {type(v).__name__}, expected a string")
        if k in _LINK_FIELDS:
            setattr(out, k, v)
        elif k == "plan":
            try:
                out.plan.CopyFrom(events_pb2.Plan.FromString(base64.b64decode(v, validate=True)))
            except (binascii.Error, ValueError, DecodeError) as e:
                raise ValueError(f"link 'plan' is not base64 of a Plan: {e}") from None
            out.plan.SetInParent()
        else:
            out.extra[k] = v
    if "proposal_id" not in link:
        raise ValueError("link without proposal_id")
    return out


def link_from_pb(pb: govlog_pb2.GovLogLink) -> dict[str, str]:
    out: dict[str, str] = {"proposal_id": pb.proposal_id}
    for k in _LINK_FIELDS[1:]:
        if pb.HasField(k):
            out[k] = getattr(pb, k)
    if pb.HasField("plan"):
        out["plan"] = base64.b64encode(pb.plan.SerializeToString(deterministic=True)).decode()
    for k, v in sorted(pb.extra.items()):
        if k in out or k == "plan":
            raise ValueError(f"link: extra entry {k!r} repeats a field")
        out[k] = v
    return out
