"""Post-quantum crypto for x0tta6bl4: ML-KEM-768 / ML-DSA-65 with classical hybrids.

Public API (see module docstrings for formats):

* backends: :func:`get_backend`, :func:`backend_info`, :func:`available_backends`
* keys: :class:`MLKEM768PrivateKey`, :class:`MLKEM768PublicKey`,
  :class:`MLDSA65PrivateKey`, :class:`MLDSA65PublicKey`,
  :class:`HybridKemPrivateKey`, :class:`HybridKemPublicKey`,
  :class:`HybridSigningKey`, :class:`HybridVerifyKey`, :func:`key_id`
* KDF/handshake: :func:`derive_session_keys`, :func:`transcript_hash`,
  :class:`SessionKeys`, :class:`HandshakeInitiator`, :class:`HandshakeResponder`
* data channel: :class:`SecureChannel`, :class:`ReplayWindow`
* identities/records: :class:`SpiffeId`, :class:`NodeIdentity`, :class:`KeyvaultRoot`,
  :class:`PublicKeyRecord`, :class:`RevocationRecord`, :class:`RotationRequestRecord`, :class:`SignedRecord`,
  :func:`verify_record`, :class:`RecordVerifier`, :func:`records_for_identity`
* storage/rotation: :class:`Keystore`, :class:`MasterKey`, :class:`Keyring`
* export for offline provisioning: :func:`wrap_bundle`, :func:`unwrap_bundle`, :func:`recipient_keygen`
  (a private bundle wrapped to an ML-KEM-768 recipient key, :mod:`.wrap`)
* errors: :class:`PQCError` and subclasses
"""

from .backend import BackendInfo, available_backends, backend_info, get_backend
from .channel import ReplayWindow, SecureChannel
from .errors import (
    BackendUnavailable,
    CorruptKeystore,
    DecryptionError,
    HandshakeError,
    InvalidIdentity,
    InvalidKey,
    InvalidRecord,
    InvalidSignature,
    KeyExpired,
    KeyRevoked,
    KeystoreError,
    PQCError,
    RekeyRequired,
    ReplayError,
    WrongMasterKey,
)
from .handshake import HandshakeInitiator, HandshakeResponder
from .identity import KeyPurpose, NodeIdentity, SpiffeId, validate_node_id, validate_trust_domain
from .kdf import Role, SessionKeys, derive_session_keys, transcript_hash
from .keys import (
    HybridKemPrivateKey,
    HybridKemPublicKey,
    HybridSigningKey,
    HybridVerifyKey,
    MLDSA65PrivateKey,
    MLDSA65PublicKey,
    MLKEM768PrivateKey,
    MLKEM768PublicKey,
    key_id,
)
from .keystore import Keystore, MasterKey
from .records import (
    KeyvaultRoot,
    PublicKeyRecord,
    RecordVerifier,
    RevocationRecord,
    RotationRequestRecord,
    SignedRecord,
    records_for_identity,
    verify_record,
    verify_signed,
)
from .rotation import Keyring
from .wrap import WrappedBundle, recipient_keygen, unwrap_bundle, wrap_bundle

__all__ = [
    "BackendInfo",
    "BackendUnavailable",
    "CorruptKeystore",
    "DecryptionError",
    "HandshakeError",
    "HandshakeInitiator",
    "HandshakeResponder",
    "HybridKemPrivateKey",
    "HybridKemPublicKey",
    "HybridSigningKey",
    "HybridVerifyKey",
    "InvalidIdentity",
    "InvalidKey",
    "InvalidRecord",
    "InvalidSignature",
    "KeyExpired",
    "KeyPurpose",
    "KeyRevoked",
    "Keyring",
    "Keystore",
    "KeystoreError",
    "KeyvaultRoot",
    "MLDSA65PrivateKey",
    "MLDSA65PublicKey",
    "MLKEM768PrivateKey",
    "MLKEM768PublicKey",
    "MasterKey",
    "NodeIdentity",
    "PQCError",
    "PublicKeyRecord",
    "RecordVerifier",
    "RekeyRequired",
    "ReplayError",
    "ReplayWindow",
    "RevocationRecord",
    "Role",
    "RotationRequestRecord",
    "SecureChannel",
    "SessionKeys",
    "SignedRecord",
    "SpiffeId",
    "WrappedBundle",
    "WrongMasterKey",
    "available_backends",
    "backend_info",
    "derive_session_keys",
    "get_backend",
    "key_id",
    "recipient_keygen",
    "records_for_identity",
    "transcript_hash",
    "unwrap_bundle",
    "validate_node_id",
    "validate_trust_domain",
    "verify_record",
    "verify_signed",
    "wrap_bundle",
]
