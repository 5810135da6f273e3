"""The keyvault domain: node identities, rotation with overlap, revocation,
attestation (:mod:`.vault`) and the signed-record distribution format node
agents verify (:mod:`.distribution`). No I/O: the service stores what the domain plans."""
from .distribution import BUCKET, KeyDirectory, VerifiedEntry, desired_state, verify_entry
from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, KeyvaultError, NotFound
from .vault import (
                    ACTIVE,
                    ATTEST_CONTEXT,
                    DEFAULT_OVERLAP_S,
                    RETIRED,
                    RETIRING,
                    REVOKED,
                    AttestResult,
                    Entry,
                    Generation,
                    Retirement,
                    RotationStep,
                    Vault,
                    check_node_id,
                    sign_attestation,
)

__all__ = [
                    "ACTIVE",
                    "ATTEST_CONTEXT",
                    "BUCKET",
                    "DEFAULT_OVERLAP_S",
                    "RETIRED",
                    "RETIRING",
                    "REVOKED",
                    "AlreadyExists",
                    "AttestResult",
                    "Entry",
                    "FailedPrecondition",
                    "Generation",
                    "InvalidArgument",
                    "KeyDirectory",
                    "KeyvaultError",
                    "NotFound",
                    "Retirement",
                    "RotationStep",
                    "Vault",
                    "VerifiedEntry",
                    "check_node_id",
                    "desired_state",
                    "sign_attestation",
                    "verify_entry",
]
