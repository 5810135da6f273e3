from x0tta6bl4.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MeshCommand(_message.Message):
    __slots__ = ("meta", "command_id", "node_id", "kind", "peer", "params")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[MeshCommand.Kind]
        KIND_AVOID_NODE: _ClassVar[MeshCommand.Kind]
        KIND_UNAVOID_NODE: _ClassVar[MeshCommand.Kind]
        KIND_FLUSH_ROUTES: _ClassVar[MeshCommand.Kind]
        KIND_SHUTDOWN: _ClassVar[MeshCommand.Kind]
        KIND_ROTATE_KEYS: _ClassVar[MeshCommand.Kind]
        KIND_FAULT: _ClassVar[MeshCommand.Kind]
        KIND_HEAL: _ClassVar[MeshCommand.Kind]
        KIND_RESTART: _ClassVar[MeshCommand.Kind]
        KIND_RELOAD_KEYS: _ClassVar[MeshCommand.Kind]
        KIND_SET_LINK: _ClassVar[MeshCommand.Kind]
        KIND_SET_CONFIG: _ClassVar[MeshCommand.Kind]
    KIND_UNSPECIFIED: MeshCommand.Kind
    KIND_AVOID_NODE: MeshCommand.Kind
    KIND_UNAVOID_NODE: MeshCommand.Kind
    KIND_FLUSH_ROUTES: MeshCommand.Kind
    KIND_SHUTDOWN: MeshCommand.Kind
    KIND_ROTATE_KEYS: MeshCommand.Kind
    KIND_FAULT: MeshCommand.Kind
    KIND_HEAL: MeshCommand.Kind
    KIND_RESTART: MeshCommand.Kind
    KIND_RELOAD_KEYS: MeshCommand.Kind
    KIND_SET_LINK: MeshCommand.Kind
    KIND_SET_CONFIG: MeshCommand.Kind
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    META_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    command_id: str
    node_id: str
    kind: MeshCommand.Kind
    peer: str
    params: _containers.ScalarMap[str, str]
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., command_id: _Optional[str] = ..., node_id: _Optional[str] = ..., kind: _Optional[_Union[MeshCommand.Kind, str]] = ..., peer: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class MeshEvent(_message.Message):
    __slots__ = ("meta", "node_id", "kind", "peer", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    META_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    node_id: str
    kind: str
    peer: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., node_id: _Optional[str] = ..., kind: _Optional[str] = ..., peer: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...
