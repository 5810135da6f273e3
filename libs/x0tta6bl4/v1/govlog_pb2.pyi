from x0tta6bl4.v1 import common_pb2 as _common_pb2
from x0tta6bl4.v1 import events_pb2 as _events_pb2
from x0tta6bl4.v1 import governance_pb2 as _governance_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CloseReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLOSE_REASON_UNSPECIFIED: _ClassVar[CloseReason]
    CLOSE_REASON_QUORUM_AND_THRESHOLD_MET: _ClassVar[CloseReason]
    CLOSE_REASON_AUTO_APPROVED: _ClassVar[CloseReason]
    CLOSE_REASON_QUORUM_NOT_REACHED: _ClassVar[CloseReason]
    CLOSE_REASON_THRESHOLD_NOT_MET: _ClassVar[CloseReason]
    CLOSE_REASON_CANCELED_BY_PROPOSER: _ClassVar[CloseReason]
CLOSE_REASON_UNSPECIFIED: CloseReason
CLOSE_REASON_QUORUM_AND_THRESHOLD_MET: CloseReason
CLOSE_REASON_AUTO_APPROVED: CloseReason
CLOSE_REASON_QUORUM_NOT_REACHED: CloseReason
CLOSE_REASON_THRESHOLD_NOT_MET: CloseReason
CLOSE_REASON_CANCELED_BY_PROPOSER: CloseReason

class GovLogRecord(_message.Message):
    __slots__ = ("version", "seq", "prev", "hash", "key_id", "sig", "body")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PREV_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIG_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    version: int
    seq: int
    prev: bytes
    hash: bytes
    key_id: str
    sig: bytes
    body: bytes
    def __init__(self, version: _Optional[int] = ..., seq: _Optional[int] = ..., prev: _Optional[bytes] = ..., hash: _Optional[bytes] = ..., key_id: _Optional[str] = ..., sig: _Optional[bytes] = ..., body: _Optional[bytes] = ...) -> None: ...

class GovLogBody(_message.Message):
    __slots__ = ("events", "links", "legacy")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    LEGACY_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[GovEvent]
    links: _containers.RepeatedCompositeFieldContainer[GovLogLink]
    legacy: GovLegacySeal
    def __init__(self, events: _Optional[_Iterable[_Union[GovEvent, _Mapping]]] = ..., links: _Optional[_Iterable[_Union[GovLogLink, _Mapping]]] = ..., legacy: _Optional[_Union[GovLegacySeal, _Mapping]] = ...) -> None: ...

class GovEvent(_message.Message):
    __slots__ = ("voter_registered", "voter_key_rotated", "proposal_created", "proposal_auto_approved", "vote_cast", "proposal_closed", "proposal_canceled", "execution_failed", "proposal_executed", "proposal_expired")
    VOTER_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    VOTER_KEY_ROTATED_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_CREATED_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_AUTO_APPROVED_FIELD_NUMBER: _ClassVar[int]
    VOTE_CAST_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_CLOSED_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_CANCELED_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FAILED_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_EXECUTED_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    voter_registered: VoterRegistered
    voter_key_rotated: VoterKeyRotated
    proposal_created: ProposalCreated
    proposal_auto_approved: ProposalAutoApproved
    vote_cast: VoteCast
    proposal_closed: ProposalClosed
    proposal_canceled: ProposalCanceled
    execution_failed: ExecutionFailed
    proposal_executed: ProposalExecuted
    proposal_expired: ProposalExpired
    def __init__(self, voter_registered: _Optional[_Union[VoterRegistered, _Mapping]] = ..., voter_key_rotated: _Optional[_Union[VoterKeyRotated, _Mapping]] = ..., proposal_created: _Optional[_Union[ProposalCreated, _Mapping]] = ..., proposal_auto_approved: _Optional[_Union[ProposalAutoApproved, _Mapping]] = ..., vote_cast: _Optional[_Union[VoteCast, _Mapping]] = ..., proposal_closed: _Optional[_Union[ProposalClosed, _Mapping]] = ..., proposal_canceled: _Optional[_Union[ProposalCanceled, _Mapping]] = ..., execution_failed: _Optional[_Union[ExecutionFailed, _Mapping]] = ..., proposal_executed: _Optional[_Union[ProposalExecuted, _Mapping]] = ..., proposal_expired: _Optional[_Union[ProposalExpired, _Mapping]] = ...) -> None: ...

class VoterRegistered(_message.Message):
    __slots__ = ("voter_id", "balance", "at", "key_id", "public_key")
    VOTER_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    voter_id: str
    balance: float
    at: float
    key_id: str
    public_key: bytes
    def __init__(self, voter_id: _Optional[str] = ..., balance: _Optional[float] = ..., at: _Optional[float] = ..., key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class VoterKeyRotated(_message.Message):
    __slots__ = ("voter_id", "key_id", "public_key", "at")
    VOTER_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    voter_id: str
    key_id: str
    public_key: bytes
    at: float
    def __init__(self, voter_id: _Optional[str] = ..., key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., at: _Optional[float] = ...) -> None: ...

class ProposalCreated(_message.Message):
    __slots__ = ("proposal_id", "title", "description", "action", "proposer", "duration_s", "quorum", "threshold", "execution_window_s", "at", "cycle_id", "request_id")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    CYCLE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    title: str
    description: str
    action: _events_pb2.ActionSpec
    proposer: str
    duration_s: float
    quorum: float
    threshold: float
    execution_window_s: float
    at: float
    cycle_id: str
    request_id: str
    def __init__(self, proposal_id: _Optional[str] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., action: _Optional[_Union[_events_pb2.ActionSpec, _Mapping]] = ..., proposer: _Optional[str] = ..., duration_s: _Optional[float] = ..., quorum: _Optional[float] = ..., threshold: _Optional[float] = ..., execution_window_s: _Optional[float] = ..., at: _Optional[float] = ..., cycle_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ProposalAutoApproved(_message.Message):
    __slots__ = ("proposal_id", "title", "description", "action", "proposer", "execution_window_s", "confidence", "severity", "reason", "at", "cycle_id", "request_id")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    CYCLE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    title: str
    description: str
    action: _events_pb2.ActionSpec
    proposer: str
    execution_window_s: float
    confidence: float
    severity: _common_pb2.Severity
    reason: str
    at: float
    cycle_id: str
    request_id: str
    def __init__(self, proposal_id: _Optional[str] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., action: _Optional[_Union[_events_pb2.ActionSpec, _Mapping]] = ..., proposer: _Optional[str] = ..., execution_window_s: _Optional[float] = ..., confidence: _Optional[float] = ..., severity: _Optional[_Union[_common_pb2.Severity, str]] = ..., reason: _Optional[str] = ..., at: _Optional[float] = ..., cycle_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class VoteCast(_message.Message):
    __slots__ = ("vote_id", "proposal_id", "voter_id", "choice", "tokens", "weight", "nonce", "signature", "at")
    VOTE_ID_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    VOTER_ID_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    vote_id: str
    proposal_id: str
    voter_id: str
    choice: _governance_pb2.VoteChoice
    tokens: float
    weight: float
    nonce: bytes
    signature: bytes
    at: float
    def __init__(self, vote_id: _Optional[str] = ..., proposal_id: _Optional[str] = ..., voter_id: _Optional[str] = ..., choice: _Optional[_Union[_governance_pb2.VoteChoice, str]] = ..., tokens: _Optional[float] = ..., weight: _Optional[float] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., at: _Optional[float] = ...) -> None: ...

class GovTally(_message.Message):
    __slots__ = ("yes", "no", "abstain", "eligible", "voters", "eligible_voters")
    YES_FIELD_NUMBER: _ClassVar[int]
    NO_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_VOTERS_FIELD_NUMBER: _ClassVar[int]
    yes: float
    no: float
    abstain: float
    eligible: float
    voters: int
    eligible_voters: int
    def __init__(self, yes: _Optional[float] = ..., no: _Optional[float] = ..., abstain: _Optional[float] = ..., eligible: _Optional[float] = ..., voters: _Optional[int] = ..., eligible_voters: _Optional[int] = ...) -> None: ...

class ProposalClosed(_message.Message):
    __slots__ = ("proposal_id", "outcome", "reason", "tally", "early", "at")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TALLY_FIELD_NUMBER: _ClassVar[int]
    EARLY_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    outcome: _governance_pb2.ProposalState
    reason: CloseReason
    tally: GovTally
    early: bool
    at: float
    def __init__(self, proposal_id: _Optional[str] = ..., outcome: _Optional[_Union[_governance_pb2.ProposalState, str]] = ..., reason: _Optional[_Union[CloseReason, str]] = ..., tally: _Optional[_Union[GovTally, _Mapping]] = ..., early: _Optional[bool] = ..., at: _Optional[float] = ...) -> None: ...

class ProposalCanceled(_message.Message):
    __slots__ = ("proposal_id", "by", "at")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    by: str
    at: float
    def __init__(self, proposal_id: _Optional[str] = ..., by: _Optional[str] = ..., at: _Optional[float] = ...) -> None: ...

class ExecutionFailed(_message.Message):
    __slots__ = ("proposal_id", "detail", "at")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    detail: str
    at: float
    def __init__(self, proposal_id: _Optional[str] = ..., detail: _Optional[str] = ..., at: _Optional[float] = ...) -> None: ...

class ProposalExecuted(_message.Message):
    __slots__ = ("proposal_id", "detail", "at")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    detail: str
    at: float
    def __init__(self, proposal_id: _Optional[str] = ..., detail: _Optional[str] = ..., at: _Optional[float] = ...) -> None: ...

class ProposalExpired(_message.Message):
    __slots__ = ("proposal_id", "at")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    at: float
    def __init__(self, proposal_id: _Optional[str] = ..., at: _Optional[float] = ...) -> None: ...

class GovLogLink(_message.Message):
    __slots__ = ("proposal_id", "action_id", "plan_id", "traceparent", "plan", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    action_id: str
    plan_id: str
    traceparent: str
    plan: _events_pb2.Plan
    extra: _containers.ScalarMap[str, str]
    def __init__(self, proposal_id: _Optional[str] = ..., action_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., traceparent: _Optional[str] = ..., plan: _Optional[_Union[_events_pb2.Plan, _Mapping]] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GovLegacySeal(_message.Message):
    __slots__ = ("records", "sha256")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    records: int
    sha256: bytes
    def __init__(self, records: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...
