from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyRecord(_message.Message):
    __slots__ = ("spiffe_id", "node_id", "generation", "sig_key_id", "sig_algorithm", "mldsa_public_key", "ed25519_public_key", "kem_key_id", "kem_algorithm", "mlkem_public_key", "x25519_public_key", "not_before_unix", "not_after_unix", "revoked", "root_signature", "root_key_id", "status", "signed_sig_record", "signed_kem_record", "retiring_until_unix", "retired_at_unix", "revoked_at_unix", "revocation_reason", "previous", "signed_rotation_request", "custodial", "exported_at_unix")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SIG_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIG_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    MLDSA_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ED25519_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KEM_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEM_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    MLKEM_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    X25519_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_UNIX_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    ROOT_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ROOT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SIGNED_SIG_RECORD_FIELD_NUMBER: _ClassVar[int]
    SIGNED_KEM_RECORD_FIELD_NUMBER: _ClassVar[int]
    RETIRING_UNTIL_UNIX_FIELD_NUMBER: _ClassVar[int]
    RETIRED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_REASON_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    SIGNED_ROTATION_REQUEST_FIELD_NUMBER: _ClassVar[int]
    CUSTODIAL_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    node_id: str
    generation: int
    sig_key_id: str
    sig_algorithm: str
    mldsa_public_key: bytes
    ed25519_public_key: bytes
    kem_key_id: str
    kem_algorithm: str
    mlkem_public_key: bytes
    x25519_public_key: bytes
    not_before_unix: int
    not_after_unix: int
    revoked: bool
    root_signature: bytes
    root_key_id: str
    status: str
    signed_sig_record: bytes
    signed_kem_record: bytes
    retiring_until_unix: float
    retired_at_unix: int
    revoked_at_unix: int
    revocation_reason: str
    previous: _containers.RepeatedCompositeFieldContainer[KeyRecord]
    signed_rotation_request: bytes
    custodial: bool
    exported_at_unix: int
    def __init__(self, spiffe_id: _Optional[str] = ..., node_id: _Optional[str] = ..., generation: _Optional[int] = ..., sig_key_id: _Optional[str] = ..., sig_algorithm: _Optional[str] = ..., mldsa_public_key: _Optional[bytes] = ..., ed25519_public_key: _Optional[bytes] = ..., kem_key_id: _Optional[str] = ..., kem_algorithm: _Optional[str] = ..., mlkem_public_key: _Optional[bytes] = ..., x25519_public_key: _Optional[bytes] = ..., not_before_unix: _Optional[int] = ..., not_after_unix: _Optional[int] = ..., revoked: _Optional[bool] = ..., root_signature: _Optional[bytes] = ..., root_key_id: _Optional[str] = ..., status: _Optional[str] = ..., signed_sig_record: _Optional[bytes] = ..., signed_kem_record: _Optional[bytes] = ..., retiring_until_unix: _Optional[float] = ..., retired_at_unix: _Optional[int] = ..., revoked_at_unix: _Optional[int] = ..., revocation_reason: _Optional[str] = ..., previous: _Optional[_Iterable[_Union[KeyRecord, _Mapping]]] = ..., signed_rotation_request: _Optional[bytes] = ..., custodial: _Optional[bool] = ..., exported_at_unix: _Optional[int] = ...) -> None: ...

class IssueIdentityRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class IssueIdentityResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: KeyRecord
    def __init__(self, record: _Optional[_Union[KeyRecord, _Mapping]] = ...) -> None: ...

class GetPublicKeysRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class RotateRequest(_message.Message):
    __slots__ = ("node_ids", "all", "overlap_s", "request_id", "include_operators", "wait_s")
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_S_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_OPERATORS_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    overlap_s: float
    request_id: str
    include_operators: bool
    wait_s: float
    def __init__(self, node_ids: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ..., overlap_s: _Optional[float] = ..., request_id: _Optional[str] = ..., include_operators: _Optional[bool] = ..., wait_s: _Optional[float] = ...) -> None: ...

class RotateResponse(_message.Message):
    __slots__ = ("records", "pending")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[KeyRecord]
    pending: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, records: _Optional[_Iterable[_Union[KeyRecord, _Mapping]]] = ..., pending: _Optional[_Iterable[str]] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("node_id", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    reason: str
    def __init__(self, node_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListIdentitiesRequest(_message.Message):
    __slots__ = ("include_revoked",)
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    include_revoked: bool
    def __init__(self, include_revoked: _Optional[bool] = ...) -> None: ...

class ListIdentitiesResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[KeyRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[KeyRecord, _Mapping]]] = ...) -> None: ...

class AttestRequest(_message.Message):
    __slots__ = ("node_id", "challenge", "signature")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    challenge: bytes
    signature: bytes
    def __init__(self, node_id: _Optional[str] = ..., challenge: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class AttestResponse(_message.Message):
    __slots__ = ("valid", "reason", "key_id", "generation", "status")
    VALID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    reason: str
    key_id: str
    generation: int
    status: str
    def __init__(self, valid: _Optional[bool] = ..., reason: _Optional[str] = ..., key_id: _Optional[str] = ..., generation: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class ExportIdentityRequest(_message.Message):
    __slots__ = ("node_id", "recipient_kem_public_key")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_KEM_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    recipient_kem_public_key: bytes
    def __init__(self, node_id: _Optional[str] = ..., recipient_kem_public_key: _Optional[bytes] = ...) -> None: ...

class ExportIdentityResponse(_message.Message):
    __slots__ = ("record", "wrapped_bundle", "recipient_key_id", "exported_at_unix")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    record: KeyRecord
    wrapped_bundle: bytes
    recipient_key_id: str
    exported_at_unix: int
    def __init__(self, record: _Optional[_Union[KeyRecord, _Mapping]] = ..., wrapped_bundle: _Optional[bytes] = ..., recipient_key_id: _Optional[str] = ..., exported_at_unix: _Optional[int] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("backend", "backend_version", "algorithms", "root_public_key", "root_key_id", "identities", "classical", "hybrids", "kv_bucket", "default_overlap_s")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    BACKEND_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    ROOT_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ROOT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    CLASSICAL_FIELD_NUMBER: _ClassVar[int]
    HYBRIDS_FIELD_NUMBER: _ClassVar[int]
    KV_BUCKET_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_OVERLAP_S_FIELD_NUMBER: _ClassVar[int]
    backend: str
    backend_version: str
    algorithms: _containers.RepeatedScalarFieldContainer[str]
    root_public_key: bytes
    root_key_id: str
    identities: int
    classical: _containers.RepeatedScalarFieldContainer[str]
    hybrids: _containers.RepeatedScalarFieldContainer[str]
    kv_bucket: str
    default_overlap_s: float
    def __init__(self, backend: _Optional[str] = ..., backend_version: _Optional[str] = ..., algorithms: _Optional[_Iterable[str]] = ..., root_public_key: _Optional[bytes] = ..., root_key_id: _Optional[str] = ..., identities: _Optional[int] = ..., classical: _Optional[_Iterable[str]] = ..., hybrids: _Optional[_Iterable[str]] = ..., kv_bucket: _Optional[str] = ..., default_overlap_s: _Optional[float] = ...) -> None: ...

class SvidRequest(_message.Message):
    __slots__ = ("csr",)
    CSR_FIELD_NUMBER: _ClassVar[int]
    csr: bytes
    def __init__(self, csr: _Optional[bytes] = ...) -> None: ...

class SvidResponse(_message.Message):
    __slots__ = ("spiffe_id", "certificate", "bundle", "not_after_unix")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    certificate: bytes
    bundle: bytes
    not_after_unix: float
    def __init__(self, spiffe_id: _Optional[str] = ..., certificate: _Optional[bytes] = ..., bundle: _Optional[bytes] = ..., not_after_unix: _Optional[float] = ...) -> None: ...

class CertifyKeysRequest(_message.Message):
    __slots__ = ("node_id", "signing_public_key", "kem_public_key", "nonce", "timestamp_unix", "proof", "overlap_s")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNING_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KEM_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_S_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    signing_public_key: bytes
    kem_public_key: bytes
    nonce: bytes
    timestamp_unix: int
    proof: bytes
    overlap_s: float
    def __init__(self, node_id: _Optional[str] = ..., signing_public_key: _Optional[bytes] = ..., kem_public_key: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., timestamp_unix: _Optional[int] = ..., proof: _Optional[bytes] = ..., overlap_s: _Optional[float] = ...) -> None: ...
