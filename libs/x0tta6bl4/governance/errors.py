"""Governance error hierarchy.

Every error raised by the governance domain derives from :class:`GovernanceError`
and carries a ``code`` naming the gRPC status it maps to, so the service layer
can translate errors generically (``grpc.StatusCode[err.code]``).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "GovernanceError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
]


class GovernanceError(Exception):
    """Base class of all governance domain errors."""

    code: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(GovernanceError):
    """A request field is malformed or out of range (gRPC INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


class NotFound(GovernanceError):
    """A referenced proposal / voter does not exist (gRPC NOT_FOUND)."""

    code = "NOT_FOUND"


class FailedPrecondition(GovernanceError):
    """The request is well-formed but the current state forbids it
    (gRPC FAILED_PRECONDITION), e.g. voting on a closed proposal."""

    code = "FAILED_PRECONDITION"


class Unauthenticated(GovernanceError):
    """Unknown voter identity or a vote signature that does not verify
    (gRPC UNAUTHENTICATED)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(GovernanceError):
    """A known identity tried something it is not allowed to do, e.g.
    cancelling someone else's proposal (gRPC PERMISSION_DENIED)."""

    code = "PERMISSION_DENIED"


class AlreadyExists(GovernanceError):
    """Duplicate identity / id / nonce (gRPC ALREADY_EXISTS)."""

    code = "ALREADY_EXISTS"


class ResourceExhausted(GovernanceError):
    """A per-identity quota is used up, e.g. too many ACTIVE proposals by one
    proposer (gRPC RESOURCE_EXHAUSTED)."""

    code = "RESOURCE_EXHAUSTED"
