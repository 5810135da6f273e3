from x0tta6bl4.v1 import common_pb2 as _common_pb2
from x0tta6bl4.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProposalState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROPOSAL_STATE_UNSPECIFIED: _ClassVar[ProposalState]
    PROPOSAL_STATE_ACTIVE: _ClassVar[ProposalState]
    PROPOSAL_STATE_PASSED: _ClassVar[ProposalState]
    PROPOSAL_STATE_REJECTED: _ClassVar[ProposalState]
    PROPOSAL_STATE_EXECUTED: _ClassVar[ProposalState]
    PROPOSAL_STATE_EXPIRED: _ClassVar[ProposalState]
    PROPOSAL_STATE_CANCELED: _ClassVar[ProposalState]

class VoteChoice(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VOTE_CHOICE_UNSPECIFIED: _ClassVar[VoteChoice]
    VOTE_CHOICE_YES: _ClassVar[VoteChoice]
    VOTE_CHOICE_NO: _ClassVar[VoteChoice]
    VOTE_CHOICE_ABSTAIN: _ClassVar[VoteChoice]
PROPOSAL_STATE_UNSPECIFIED: ProposalState
PROPOSAL_STATE_ACTIVE: ProposalState
PROPOSAL_STATE_PASSED: ProposalState
PROPOSAL_STATE_REJECTED: ProposalState
PROPOSAL_STATE_EXECUTED: ProposalState
PROPOSAL_STATE_EXPIRED: ProposalState
PROPOSAL_STATE_CANCELED: ProposalState
VOTE_CHOICE_UNSPECIFIED: VoteChoice
VOTE_CHOICE_YES: VoteChoice
VOTE_CHOICE_NO: VoteChoice
VOTE_CHOICE_ABSTAIN: VoteChoice

class Tally(_message.Message):
    __slots__ = ("yes", "no", "abstain", "eligible", "turnout", "voters")
    YES_FIELD_NUMBER: _ClassVar[int]
    NO_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    TURNOUT_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    yes: float
    no: float
    abstain: float
    eligible: float
    turnout: float
    voters: int
    def __init__(self, yes: _Optional[float] = ..., no: _Optional[float] = ..., abstain: _Optional[float] = ..., eligible: _Optional[float] = ..., turnout: _Optional[float] = ..., voters: _Optional[int] = ...) -> None: ...

class Proposal(_message.Message):
    __slots__ = ("id", "title", "description", "action", "proposer", "duration_s", "quorum", "threshold", "state", "close_reason", "tally", "created_unix_ns", "closes_unix_ns", "execution_window_s", "cycle_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CLOSE_REASON_FIELD_NUMBER: _ClassVar[int]
    TALLY_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    CLOSES_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    CYCLE_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    description: str
    action: _events_pb2.ActionSpec
    proposer: str
    duration_s: float
    quorum: float
    threshold: float
    state: ProposalState
    close_reason: str
    tally: Tally
    created_unix_ns: int
    closes_unix_ns: int
    execution_window_s: float
    cycle_id: str
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., action: _Optional[_Union[_events_pb2.ActionSpec, _Mapping]] = ..., proposer: _Optional[str] = ..., duration_s: _Optional[float] = ..., quorum: _Optional[float] = ..., threshold: _Optional[float] = ..., state: _Optional[_Union[ProposalState, str]] = ..., close_reason: _Optional[str] = ..., tally: _Optional[_Union[Tally, _Mapping]] = ..., created_unix_ns: _Optional[int] = ..., closes_unix_ns: _Optional[int] = ..., execution_window_s: _Optional[float] = ..., cycle_id: _Optional[str] = ...) -> None: ...

class CreateProposalRequest(_message.Message):
    __slots__ = ("title", "description", "action", "proposer", "duration_s", "quorum", "threshold", "request_id", "execution_window_s", "nonce", "signature")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    title: str
    description: str
    action: _events_pb2.ActionSpec
    proposer: str
    duration_s: float
    quorum: float
    threshold: float
    request_id: str
    execution_window_s: float
    nonce: bytes
    signature: bytes
    def __init__(self, title: _Optional[str] = ..., description: _Optional[str] = ..., action: _Optional[_Union[_events_pb2.ActionSpec, _Mapping]] = ..., proposer: _Optional[str] = ..., duration_s: _Optional[float] = ..., quorum: _Optional[float] = ..., threshold: _Optional[float] = ..., request_id: _Optional[str] = ..., execution_window_s: _Optional[float] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class CastVoteRequest(_message.Message):
    __slots__ = ("proposal_id", "voter", "choice", "tokens", "nonce", "signature", "vote_id")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    VOTER_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    VOTE_ID_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    voter: str
    choice: VoteChoice
    tokens: float
    nonce: bytes
    signature: bytes
    vote_id: str
    def __init__(self, proposal_id: _Optional[str] = ..., voter: _Optional[str] = ..., choice: _Optional[_Union[VoteChoice, str]] = ..., tokens: _Optional[float] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., vote_id: _Optional[str] = ...) -> None: ...

class CastVoteResponse(_message.Message):
    __slots__ = ("vote_id", "weight", "proposal", "duplicate")
    VOTE_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    vote_id: str
    weight: float
    proposal: Proposal
    duplicate: bool
    def __init__(self, vote_id: _Optional[str] = ..., weight: _Optional[float] = ..., proposal: _Optional[_Union[Proposal, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class GetProposalRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListProposalsRequest(_message.Message):
    __slots__ = ("state", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: ProposalState
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[ProposalState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListProposalsResponse(_message.Message):
    __slots__ = ("proposals", "next_page_token")
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    proposals: _containers.RepeatedCompositeFieldContainer[Proposal]
    next_page_token: str
    def __init__(self, proposals: _Optional[_Iterable[_Union[Proposal, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelProposalRequest(_message.Message):
    __slots__ = ("id", "proposer", "nonce", "signature")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    id: str
    proposer: str
    nonce: bytes
    signature: bytes
    def __init__(self, id: _Optional[str] = ..., proposer: _Optional[str] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class WatchProposalsRequest(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ProposalState
    def __init__(self, state: _Optional[_Union[ProposalState, str]] = ...) -> None: ...

class ProposalEvent(_message.Message):
    __slots__ = ("meta", "kind", "proposal")
    META_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    kind: str
    proposal: Proposal
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., kind: _Optional[str] = ..., proposal: _Optional[_Union[Proposal, _Mapping]] = ...) -> None: ...

class RegisterVoterRequest(_message.Message):
    __slots__ = ("voter", "balance", "public_key")
    VOTER_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    voter: str
    balance: float
    public_key: bytes
    def __init__(self, voter: _Optional[str] = ..., balance: _Optional[float] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("voter",)
    VOTER_FIELD_NUMBER: _ClassVar[int]
    voter: str
    def __init__(self, voter: _Optional[str] = ...) -> None: ...

class Voter(_message.Message):
    __slots__ = ("voter", "balance", "key_id")
    VOTER_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    voter: str
    balance: float
    key_id: str
    def __init__(self, voter: _Optional[str] = ..., balance: _Optional[float] = ..., key_id: _Optional[str] = ...) -> None: ...
