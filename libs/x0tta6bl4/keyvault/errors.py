"""Keyvault domain errors. Each carries the gRPC status code name it maps to,
so the gRPC and NATS adapters report the same code and message."""
from __future__ import annotations


class KeyvaultError(Exception):
    """Base class; ``code`` is a grpc.StatusCode name."""

    code = "INTERNAL"

    def __str__(self) -> str:  # one clear line
        return super().__str__()


class InvalidArgument(KeyvaultError):
    code = "INVALID_ARGUMENT"


class NotFound(KeyvaultError):
    code = "NOT_FOUND"


class AlreadyExists(KeyvaultError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(KeyvaultError):
    code = "FAILED_PRECONDITION"


class PermissionDenied(KeyvaultError):
    code = "PERMISSION_DENIED"


class Unimplemented(KeyvaultError):
    code = "UNIMPLEMENTED"


class Unavailable(KeyvaultError):
    """The shared state cannot be reached now (NATS away, a watcher behind); worth a retry."""

    code = "UNAVAILABLE"


class Aborted(KeyvaultError):
    """Too many concurrent changes of one key in a row; worth a retry."""

    code = "ABORTED"
