from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_LOW: _ClassVar[Severity]
    SEVERITY_MEDIUM: _ClassVar[Severity]
    SEVERITY_HIGH: _ClassVar[Severity]
    SEVERITY_CRITICAL: _ClassVar[Severity]

class Health(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_UNSPECIFIED: _ClassVar[Health]
    HEALTH_HEALTHY: _ClassVar[Health]
    HEALTH_WARNING: _ClassVar[Health]
    HEALTH_CRITICAL: _ClassVar[Health]
SEVERITY_UNSPECIFIED: Severity
SEVERITY_LOW: Severity
SEVERITY_MEDIUM: Severity
SEVERITY_HIGH: Severity
SEVERITY_CRITICAL: Severity
HEALTH_UNSPECIFIED: Health
HEALTH_HEALTHY: Health
HEALTH_WARNING: Health
HEALTH_CRITICAL: Health

class Meta(_message.Message):
    __slots__ = ("event_id", "cycle_id", "producer", "ts_unix_ns", "schema_version")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CYCLE_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    TS_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    cycle_id: str
    producer: str
    ts_unix_ns: int
    schema_version: int
    def __init__(self, event_id: _Optional[str] = ..., cycle_id: _Optional[str] = ..., producer: _Optional[str] = ..., ts_unix_ns: _Optional[int] = ..., schema_version: _Optional[int] = ...) -> None: ...
