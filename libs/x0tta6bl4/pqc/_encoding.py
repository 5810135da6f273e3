"""Canonical length-prefixed encoding helpers (internal).

Fields are concatenated as ``u32-big-endian length || bytes``. The encoding is
deterministic and unambiguous, so it is safe to hash and sign.
"""

from __future__ import annotations

import struct

from .errors import PQCError

_U32 = struct.Struct(">I")
MAX_FIELD = 1 << 24


def pack(*fields: bytes) -> bytes:
    out = bytearray()
    for f in fields:
        out += _U32.pack(len(f))
        out += f
    return bytes(out)


def unpack(data: bytes, count: int, *, what: str, error: type[PQCError]) -> list[bytes]:
    """Split ``data`` into exactly ``count`` fields or raise ``error``."""
    view = memoryview(data)
    fields: list[bytes] = []
    pos = 0
    for i in range(count):
        if len(view) - pos < 4:
            raise error(f"{what}: truncated before field {i}")
        (n,) = _U32.unpack_from(view, pos)
        pos += 4
        if n > MAX_FIELD or len(view) - pos < n:
            raise error(f"{what}: field {i} is truncated (needs {n} bytes)")
        fields.append(bytes(view[pos : pos + n]))
        pos += n
    if pos != len(view):
        raise error(f"{what}: {len(view) - pos} unexpected trailing bytes")
    return fields


def u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def from_u64(b: bytes, *, what: str, error: type[PQCError]) -> int:
    if len(b) != 8:
        raise error(f"{what}: expected an 8-byte integer, got {len(b)} bytes")
    return int.from_bytes(b, "big")


def to_bytes(data: object, what: str) -> bytes:
    """Accept bytes-like input only (no str), returning immutable bytes."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be bytes, not {type(data).__name__}")
