from x0tta6bl4.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_KIND_UNSPECIFIED: _ClassVar[ActionKind]
    ACTION_KIND_REROUTE: _ClassVar[ActionKind]
    ACTION_KIND_ISOLATE: _ClassVar[ActionKind]
    ACTION_KIND_ROTATE_KEYS: _ClassVar[ActionKind]
    ACTION_KIND_RESTART: _ClassVar[ActionKind]
    ACTION_KIND_DEPLOY: _ClassVar[ActionKind]
    ACTION_KIND_CONFIG_CHANGE: _ClassVar[ActionKind]
    ACTION_KIND_REINSTATE: _ClassVar[ActionKind]
    ACTION_KIND_TOPOLOGY_UPDATE: _ClassVar[ActionKind]

class DecisionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_KIND_UNSPECIFIED: _ClassVar[DecisionKind]
    DECISION_KIND_AUTO_EXECUTE: _ClassVar[DecisionKind]
    DECISION_KIND_EMERGENCY_VOTE: _ClassVar[DecisionKind]
    DECISION_KIND_STANDARD_VOTE: _ClassVar[DecisionKind]
    DECISION_KIND_OBSERVE: _ClassVar[DecisionKind]
ACTION_KIND_UNSPECIFIED: ActionKind
ACTION_KIND_REROUTE: ActionKind
ACTION_KIND_ISOLATE: ActionKind
ACTION_KIND_ROTATE_KEYS: ActionKind
ACTION_KIND_RESTART: ActionKind
ACTION_KIND_DEPLOY: ActionKind
ACTION_KIND_CONFIG_CHANGE: ActionKind
ACTION_KIND_REINSTATE: ActionKind
ACTION_KIND_TOPOLOGY_UPDATE: ActionKind
DECISION_KIND_UNSPECIFIED: DecisionKind
DECISION_KIND_AUTO_EXECUTE: DecisionKind
DECISION_KIND_EMERGENCY_VOTE: DecisionKind
DECISION_KIND_STANDARD_VOTE: DecisionKind
DECISION_KIND_OBSERVE: DecisionKind

class LinkQuality(_message.Message):
    __slots__ = ("peer", "rssi_dbm", "snr_db", "loss_rate", "latency_ms", "link_age_s")
    PEER_FIELD_NUMBER: _ClassVar[int]
    RSSI_DBM_FIELD_NUMBER: _ClassVar[int]
    SNR_DB_FIELD_NUMBER: _ClassVar[int]
    LOSS_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    LINK_AGE_S_FIELD_NUMBER: _ClassVar[int]
    peer: str
    rssi_dbm: float
    snr_db: float
    loss_rate: float
    latency_ms: float
    link_age_s: float
    def __init__(self, peer: _Optional[str] = ..., rssi_dbm: _Optional[float] = ..., snr_db: _Optional[float] = ..., loss_rate: _Optional[float] = ..., latency_ms: _Optional[float] = ..., link_age_s: _Optional[float] = ...) -> None: ...

class NodeTelemetry(_message.Message):
    __slots__ = ("meta", "node_id", "p99_latency_ms", "loss_pct", "throughput_bps", "peer_count", "route_count", "cpu_pct", "mem_pct", "links", "failed_auth", "counters", "kernel", "reachable", "neighbours", "routes", "avoided", "rejected_packets", "flows", "mesh_generation")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class KernelEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class RoutesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class RejectedPacketsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    META_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    P99_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    LOSS_PCT_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_BPS_FIELD_NUMBER: _ClassVar[int]
    PEER_COUNT_FIELD_NUMBER: _ClassVar[int]
    ROUTE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CPU_PCT_FIELD_NUMBER: _ClassVar[int]
    MEM_PCT_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    FAILED_AUTH_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    AVOIDED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_PACKETS_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    MESH_GENERATION_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    node_id: str
    p99_latency_ms: float
    loss_pct: float
    throughput_bps: float
    peer_count: int
    route_count: int
    cpu_pct: float
    mem_pct: float
    links: _containers.RepeatedCompositeFieldContainer[LinkQuality]
    failed_auth: int
    counters: _containers.ScalarMap[str, float]
    kernel: _containers.ScalarMap[str, float]
    reachable: bool
    neighbours: _containers.RepeatedScalarFieldContainer[str]
    routes: _containers.ScalarMap[str, str]
    avoided: _containers.RepeatedScalarFieldContainer[str]
    rejected_packets: _containers.ScalarMap[str, int]
    flows: _containers.RepeatedCompositeFieldContainer[FlowCounters]
    mesh_generation: str
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., node_id: _Optional[str] = ..., p99_latency_ms: _Optional[float] = ..., loss_pct: _Optional[float] = ..., throughput_bps: _Optional[float] = ..., peer_count: _Optional[int] = ..., route_count: _Optional[int] = ..., cpu_pct: _Optional[float] = ..., mem_pct: _Optional[float] = ..., links: _Optional[_Iterable[_Union[LinkQuality, _Mapping]]] = ..., failed_auth: _Optional[int] = ..., counters: _Optional[_Mapping[str, float]] = ..., kernel: _Optional[_Mapping[str, float]] = ..., reachable: _Optional[bool] = ..., neighbours: _Optional[_Iterable[str]] = ..., routes: _Optional[_Mapping[str, str]] = ..., avoided: _Optional[_Iterable[str]] = ..., rejected_packets: _Optional[_Mapping[str, int]] = ..., flows: _Optional[_Iterable[_Union[FlowCounters, _Mapping]]] = ..., mesh_generation: _Optional[str] = ...) -> None: ...

class FlowCounters(_message.Message):
    __slots__ = ("dest", "sent", "acked", "idle_s")
    DEST_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    IDLE_S_FIELD_NUMBER: _ClassVar[int]
    dest: str
    sent: int
    acked: int
    idle_s: float
    def __init__(self, dest: _Optional[str] = ..., sent: _Optional[int] = ..., acked: _Optional[int] = ..., idle_s: _Optional[float] = ...) -> None: ...

class HealthChange(_message.Message):
    __slots__ = ("meta", "node_id", "previous", "current", "reasons")
    META_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    node_id: str
    previous: _common_pb2.Health
    current: _common_pb2.Health
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., node_id: _Optional[str] = ..., previous: _Optional[_Union[_common_pb2.Health, str]] = ..., current: _Optional[_Union[_common_pb2.Health, str]] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class TelemetryWindow(_message.Message):
    __slots__ = ("meta", "trigger_node", "trigger_reasons", "nodes", "first_symptom_unix_ns")
    META_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_NODE_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_REASONS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    FIRST_SYMPTOM_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    trigger_node: str
    trigger_reasons: _containers.RepeatedScalarFieldContainer[str]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeTelemetry]
    first_symptom_unix_ns: int
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., trigger_node: _Optional[str] = ..., trigger_reasons: _Optional[_Iterable[str]] = ..., nodes: _Optional[_Iterable[_Union[NodeTelemetry, _Mapping]]] = ..., first_symptom_unix_ns: _Optional[int] = ...) -> None: ...

class Anomaly(_message.Message):
    __slots__ = ("meta", "node_id", "root_cause", "fault_type", "anomaly_score", "confidence", "severity", "top_features", "affected_nodes", "detector", "first_symptom_unix_ns", "incident_id")
    META_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROOT_CAUSE_FIELD_NUMBER: _ClassVar[int]
    FAULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_SCORE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    TOP_FEATURES_FIELD_NUMBER: _ClassVar[int]
    AFFECTED_NODES_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    FIRST_SYMPTOM_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    node_id: str
    root_cause: str
    fault_type: str
    anomaly_score: float
    confidence: float
    severity: _common_pb2.Severity
    top_features: _containers.RepeatedScalarFieldContainer[str]
    affected_nodes: _containers.RepeatedScalarFieldContainer[str]
    detector: str
    first_symptom_unix_ns: int
    incident_id: str
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., node_id: _Optional[str] = ..., root_cause: _Optional[str] = ..., fault_type: _Optional[str] = ..., anomaly_score: _Optional[float] = ..., confidence: _Optional[float] = ..., severity: _Optional[_Union[_common_pb2.Severity, str]] = ..., top_features: _Optional[_Iterable[str]] = ..., affected_nodes: _Optional[_Iterable[str]] = ..., detector: _Optional[str] = ..., first_symptom_unix_ns: _Optional[int] = ..., incident_id: _Optional[str] = ...) -> None: ...

class ActionSpec(_message.Message):
    __slots__ = ("kind", "target_node", "params", "expected")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    kind: ActionKind
    target_node: str
    params: _containers.ScalarMap[str, str]
    expected: ExpectedEffect
    def __init__(self, kind: _Optional[_Union[ActionKind, str]] = ..., target_node: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., expected: _Optional[_Union[ExpectedEffect, _Mapping]] = ...) -> None: ...

class ExpectedEffect(_message.Message):
    __slots__ = ("summary", "removed", "rejoins", "connectivity", "min_delivery", "reversible")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    REJOINS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIVITY_FIELD_NUMBER: _ClassVar[int]
    MIN_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    REVERSIBLE_FIELD_NUMBER: _ClassVar[int]
    summary: str
    removed: _containers.RepeatedScalarFieldContainer[str]
    rejoins: _containers.RepeatedScalarFieldContainer[str]
    connectivity: float
    min_delivery: float
    reversible: bool
    def __init__(self, summary: _Optional[str] = ..., removed: _Optional[_Iterable[str]] = ..., rejoins: _Optional[_Iterable[str]] = ..., connectivity: _Optional[float] = ..., min_delivery: _Optional[float] = ..., reversible: _Optional[bool] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("meta", "plan_id", "incident_id", "fault_type", "root_cause", "confidence", "severity", "decision", "action", "alternatives", "expected_effect", "predicted_connectivity", "cascade_risk", "rationale", "vote_duration_s", "first_symptom_unix_ns", "escalation")
    META_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    FAULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ROOT_CAUSE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ALTERNATIVES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_EFFECT_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CONNECTIVITY_FIELD_NUMBER: _ClassVar[int]
    CASCADE_RISK_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    VOTE_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    FIRST_SYMPTOM_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    plan_id: str
    incident_id: str
    fault_type: str
    root_cause: str
    confidence: float
    severity: _common_pb2.Severity
    decision: DecisionKind
    action: ActionSpec
    alternatives: _containers.RepeatedCompositeFieldContainer[ActionSpec]
    expected_effect: str
    predicted_connectivity: float
    cascade_risk: _containers.RepeatedScalarFieldContainer[str]
    rationale: str
    vote_duration_s: int
    first_symptom_unix_ns: int
    escalation: str
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., plan_id: _Optional[str] = ..., incident_id: _Optional[str] = ..., fault_type: _Optional[str] = ..., root_cause: _Optional[str] = ..., confidence: _Optional[float] = ..., severity: _Optional[_Union[_common_pb2.Severity, str]] = ..., decision: _Optional[_Union[DecisionKind, str]] = ..., action: _Optional[_Union[ActionSpec, _Mapping]] = ..., alternatives: _Optional[_Iterable[_Union[ActionSpec, _Mapping]]] = ..., expected_effect: _Optional[str] = ..., predicted_connectivity: _Optional[float] = ..., cascade_risk: _Optional[_Iterable[str]] = ..., rationale: _Optional[str] = ..., vote_duration_s: _Optional[int] = ..., first_symptom_unix_ns: _Optional[int] = ..., escalation: _Optional[str] = ...) -> None: ...

class ActionRequest(_message.Message):
    __slots__ = ("meta", "action_id", "plan_id", "action", "approved_by", "proposal_id", "timeout_s", "first_symptom_unix_ns", "incident_id", "fault_type", "approval")
    META_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    APPROVED_BY_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    FIRST_SYMPTOM_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    FAULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    action_id: str
    plan_id: str
    action: ActionSpec
    approved_by: str
    proposal_id: str
    timeout_s: float
    first_symptom_unix_ns: int
    incident_id: str
    fault_type: str
    approval: Approval
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., action_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., action: _Optional[_Union[ActionSpec, _Mapping]] = ..., approved_by: _Optional[str] = ..., proposal_id: _Optional[str] = ..., timeout_s: _Optional[float] = ..., first_symptom_unix_ns: _Optional[int] = ..., incident_id: _Optional[str] = ..., fault_type: _Optional[str] = ..., approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("approver", "key_id", "signature", "issued_unix_ns", "expires_unix_ns")
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    approver: str
    key_id: str
    signature: bytes
    issued_unix_ns: int
    expires_unix_ns: int
    def __init__(self, approver: _Optional[str] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., issued_unix_ns: _Optional[int] = ..., expires_unix_ns: _Optional[int] = ...) -> None: ...

class ActionStep(_message.Message):
    __slots__ = ("name", "ok", "detail", "duration_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    detail: str
    duration_ms: float
    def __init__(self, name: _Optional[str] = ..., ok: _Optional[bool] = ..., detail: _Optional[str] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class ActionResult(_message.Message):
    __slots__ = ("meta", "action_id", "action", "success", "steps", "error", "duration_ms", "proposal_id", "first_symptom_unix_ns", "incident_id", "fault_type")
    META_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SYMPTOM_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    FAULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    action_id: str
    action: ActionSpec
    success: bool
    steps: _containers.RepeatedCompositeFieldContainer[ActionStep]
    error: str
    duration_ms: float
    proposal_id: str
    first_symptom_unix_ns: int
    incident_id: str
    fault_type: str
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., action_id: _Optional[str] = ..., action: _Optional[_Union[ActionSpec, _Mapping]] = ..., success: _Optional[bool] = ..., steps: _Optional[_Iterable[_Union[ActionStep, _Mapping]]] = ..., error: _Optional[str] = ..., duration_ms: _Optional[float] = ..., proposal_id: _Optional[str] = ..., first_symptom_unix_ns: _Optional[int] = ..., incident_id: _Optional[str] = ..., fault_type: _Optional[str] = ...) -> None: ...

class Verification(_message.Message):
    __slots__ = ("meta", "action_id", "recovered", "mttr_ms", "checks_failed", "checks_passed", "incident_id", "fault_type", "action", "rolled_back", "escalated")
    META_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    MTTR_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    CHECKS_PASSED_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    FAULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    action_id: str
    recovered: bool
    mttr_ms: float
    checks_failed: _containers.RepeatedScalarFieldContainer[str]
    checks_passed: _containers.RepeatedScalarFieldContainer[str]
    incident_id: str
    fault_type: str
    action: ActionSpec
    rolled_back: bool
    escalated: bool
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., action_id: _Optional[str] = ..., recovered: _Optional[bool] = ..., mttr_ms: _Optional[float] = ..., checks_failed: _Optional[_Iterable[str]] = ..., checks_passed: _Optional[_Iterable[str]] = ..., incident_id: _Optional[str] = ..., fault_type: _Optional[str] = ..., action: _Optional[_Union[ActionSpec, _Mapping]] = ..., rolled_back: _Optional[bool] = ..., escalated: _Optional[bool] = ...) -> None: ...

class Escalation(_message.Message):
    __slots__ = ("meta", "incident_id", "action_id", "action", "fault_type", "reason", "detail", "checks_failed", "rolled_back")
    META_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FAULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    incident_id: str
    action_id: str
    action: ActionSpec
    fault_type: str
    reason: str
    detail: str
    checks_failed: _containers.RepeatedScalarFieldContainer[str]
    rolled_back: bool
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., incident_id: _Optional[str] = ..., action_id: _Optional[str] = ..., action: _Optional[_Union[ActionSpec, _Mapping]] = ..., fault_type: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., checks_failed: _Optional[_Iterable[str]] = ..., rolled_back: _Optional[bool] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("meta", "original_subject", "consumer", "reason", "data", "headers", "deliveries", "stream_sequence")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    META_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    STREAM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    original_subject: str
    consumer: str
    reason: str
    data: bytes
    headers: _containers.ScalarMap[str, str]
    deliveries: int
    stream_sequence: int
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., original_subject: _Optional[str] = ..., consumer: _Optional[str] = ..., reason: _Optional[str] = ..., data: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., deliveries: _Optional[int] = ..., stream_sequence: _Optional[int] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("meta", "service", "event_type", "subject_id", "details", "chain_id", "chain_seq", "prev_hash", "hash", "signature", "key_id", "public_key", "trace_id")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    META_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    meta: _common_pb2.Meta
    service: str
    event_type: str
    subject_id: str
    details: _containers.ScalarMap[str, str]
    chain_id: str
    chain_seq: int
    prev_hash: bytes
    hash: bytes
    signature: bytes
    key_id: str
    public_key: bytes
    trace_id: str
    def __init__(self, meta: _Optional[_Union[_common_pb2.Meta, _Mapping]] = ..., service: _Optional[str] = ..., event_type: _Optional[str] = ..., subject_id: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ..., chain_id: _Optional[str] = ..., chain_seq: _Optional[int] = ..., prev_hash: _Optional[bytes] = ..., hash: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., trace_id: _Optional[str] = ...) -> None: ...
