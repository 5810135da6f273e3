"""Encrypted keystore for private keys at rest (the only module doing file I/O).

Each entry is one file ``<name>.key`` in the keystore directory::

    magic "X0KS" | version(1)=1 | key_check(16) | salt(16) | nonce(12) | AES-256-GCM(ct||tag)

* entry key = HKDF-SHA256(master, salt, "x0tta6bl4/keystore/entry/v1"); AAD =
  header || entry name, so files cannot be swapped between names.
* ``key_check`` = HKDF(master, info="x0tta6bl4/keystore/check/v1")[:16] tells a
  wrong master key (:class:`WrongMasterKey`) apart from a damaged file
  (:class:`CorruptKeystore`); it reveals nothing usable about the master key.
* :meth:`MasterKey.seal` / :meth:`MasterKey.unseal` produce and open the same sealed
  form for secrets kept elsewhere (keyvault replicas share their sealed bundles
  through a JetStream KV bucket); the name bound into the AAD is the caller's.
* writes are atomic: temp file (O_EXCL, 0600) -> write -> fsync -> rename ->
  fsync(dir). A crash at any point leaves either the old or the new complete
  file; stray ``*.tmp`` files are ignored (and removed by :meth:`Keystore.cleanup`).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from x0tta6bl4.runtime.process import pid_alive

from ._encoding import to_bytes
from .backend import Backend
from .errors import CorruptKeystore, KeystoreError, PQCError, WrongMasterKey
from .identity import NodeIdentity

__all__ = ["ENTRY_NAME_PATTERN", "MASTER_KEY_SIZE", "Keystore", "MasterKey"]

MASTER_KEY_SIZE = 32
ENTRY_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
_MAGIC = b"X0KS"
_VERSION = 1
_HDR = len(_MAGIC) + 1 + 16 + 16 + 12
_SUFFIX = ".key"
_TMP_SUFFIX = ".tmp"


class MasterKey:
    """32-byte keystore master key. Never shown by ``repr``/``str``."""

    __slots__ = ("_check", "_key")

    def __init__(self, key: bytes) -> None:
        key = to_bytes(key, "master key")
        if len(key) != MASTER_KEY_SIZE:
            raise KeystoreError(f"master key must be {MASTER_KEY_SIZE} bytes, got {len(key)}")
        self._key = key
        self._check = HKDF(hashes.SHA256(), 16, None, b"x0tta6bl4/keystore/check/v1").derive(key)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(MASTER_KEY_SIZE))

    @classmethod
    def from_text(cls, value: str) -> MasterKey:
        """Parse 64 hex chars or base64/base64url of 32 bytes (e.g. an env var value)."""
        v = (value or "").strip()
        if len(v) == 2 * MASTER_KEY_SIZE:
            try:
                return cls(bytes.fromhex(v))
            except ValueError:
                pass
        try:
            raw = base64.b64decode(v + "=" * (-len(v) % 4), altchars=b"-_" if ("-" in v or "_" in v) else None,
                                   validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != MASTER_KEY_SIZE:
            raise KeystoreError("master key text must be 64 hex chars or base64 of 32 bytes")
        return cls(raw)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MasterKey:
        """Read 32 raw bytes, or a hex/base64 text line, from ``path``."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise KeystoreError(f"cannot read master key file {os.fspath(path)!r}: {exc.strerror}") from None
        if len(data) == MASTER_KEY_SIZE:
            return cls(data)
        try:
            return cls.from_text(data.decode("ascii"))
        except UnicodeDecodeError:
            raise KeystoreError(f"master key file {os.fspath(path)!r} has an invalid format") from None

    def write_file(self, path: str | os.PathLike[str]) -> None:
        """Create a new master key file (mode 0600, hex text) atomically; never overwrites."""
        path = Path(path)
        try:  # create-only: of two processes creating it at once, exactly one wins
            _atomic_write(path, self._key.hex().encode() + b"\n", create_only=True)
        except FileExistsError:
            raise KeystoreError(f"refusing to overwrite existing master key file {str(path)!r}") from None

    def _derive(self, salt: bytes) -> AESGCM:
        return AESGCM(HKDF(hashes.SHA256(), 32, salt, b"x0tta6bl4/keystore/entry/v1").derive(self._key))

    def seal(self, name: str, secret: bytes) -> bytes:
        """``secret`` encrypted (AES-256-GCM, fresh salt and nonce) and bound to ``name``:
        ``magic | version | key_check | salt | nonce | ct||tag`` (the keystore file format)."""
        secret = to_bytes(secret, "secret")
        salt, nonce = os.urandom(16), os.urandom(12)
        header = _MAGIC + bytes([_VERSION]) + self._check + salt + nonce
        return header + self._derive(salt).encrypt(nonce, secret, header + name.encode())

    def unseal(self, name: str, blob: bytes, what: str = "keystore entry") -> bytes:
        """Open what :meth:`seal` made under ``name``. Raises WrongMasterKey (sealed under another
        master key) or CorruptKeystore (truncated, tampered, or sealed under another name);
        ``what`` names the container in the message, e.g. "JetStream bucket 'keyvault' entry"."""
        blob = bytes(blob or b"")
        if len(blob) < _HDR + 16 or blob[:4] != _MAGIC:
            raise CorruptKeystore(f"{what} {name!r} is truncated or not sealed by a keystore")
        if blob[4] != _VERSION:
            raise CorruptKeystore(f"{what} {name!r} has unsupported version {blob[4]}")
        check, salt, nonce = blob[5:21], blob[21:37], blob[37:49]
        if check != self._check:
            raise WrongMasterKey(f"{what} {name!r} was written under a different master key")
        try:
            return self._derive(salt).decrypt(nonce, blob[_HDR:], blob[:_HDR] + name.encode())
        except InvalidTag:
            raise CorruptKeystore(f"{what} {name!r} is corrupted (authentication failed)") from None

    def __repr__(self) -> str:
        return "<MasterKey (redacted)>"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("MasterKey cannot be pickled")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes, create_only: bool = False) -> None:
    """Write to a temp file, fsync, then rename over ``path`` (or, with ``create_only``, link it to
    ``path`` so that the write fails with FileExistsError when another process created it first)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}{_TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        if create_only:
            os.link(tmp, path)
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_secret_file(path: str | os.PathLike[str], data: bytes, create_only: bool = False) -> None:
    """Write a secret (key seed, private bundle) to its own 0600 file atomically: temp file, fsync,
    rename (or, with ``create_only``, link: FileExistsError when someone created it first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data, create_only=create_only)


def _writer_alive(tmp_name: str) -> bool:
    """Temp files are named .<entry>.<pid>.<random>.tmp: is that writer still running?"""
    parts = tmp_name.split(".")
    try:
        pid = int(parts[-3])
    except (IndexError, ValueError):
        return False
    return pid == os.getpid() or pid_alive(pid)


class Keystore:
    """Directory of AES-256-GCM encrypted secrets, one atomic file per entry."""

    def __init__(self, directory: str | os.PathLike[str], master_key: MasterKey) -> None:
        if not isinstance(master_key, MasterKey):
            raise TypeError("master_key must be a MasterKey")
        self.directory = Path(directory)
        self._mk = master_key
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeystoreError(f"cannot create keystore directory {str(self.directory)!r}: {exc.strerror}") from None

    def __repr__(self) -> str:
        return f"<Keystore {str(self.directory)!r}>"

    @staticmethod
    def _check_name(name: str) -> str:
        if not isinstance(name, str) or not ENTRY_NAME_PATTERN.fullmatch(name) or ".." in name:
            raise KeystoreError(f"invalid keystore entry name {name!r:.80}: use [a-z0-9][a-z0-9._-]{{0,127}}")
        return name

    def _path(self, name: str) -> Path:
        return self.directory / (self._check_name(name) + _SUFFIX)

    # -- raw secrets -------------------------------------------------------
    def put(self, name: str, secret: bytes, create_only: bool = False) -> None:
        """Encrypt and atomically (re)write entry ``name``; with ``create_only`` raise
        FileExistsError when the entry exists (another process created it first)."""
        path = self._path(name)
        sealed = self._mk.seal(name, secret)
        try:
            _atomic_write(path, sealed, create_only=create_only)
        except FileExistsError:
            if create_only:
                raise
            raise KeystoreError(f"cannot write keystore entry {name!r}: exists") from None
        except OSError as exc:
            raise KeystoreError(f"cannot write keystore entry {name!r}: {exc.strerror}") from None

    def get(self, name: str) -> bytes:
        path = self._path(name)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise KeystoreError(f"keystore entry {name!r} does not exist") from None
        except OSError as exc:
            raise KeystoreError(f"cannot read keystore entry {name!r}: {exc.strerror}") from None
        return self._decrypt(name, blob)

    def _decrypt(self, name: str, blob: bytes) -> bytes:
        try:
            return self._mk.unseal(name, blob)
        except CorruptKeystore as e:
            if "not sealed by a keystore" in str(e):
                raise CorruptKeystore(f"keystore entry {name!r} is truncated or not a keystore file") from None
            raise

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise KeystoreError(f"keystore entry {name!r} does not exist") from None
        _fsync_dir(self.directory)

    def names(self) -> list[str]:
        """Entry names on disk (temp files of interrupted writes are skipped)."""
        out = []
        for p in self.directory.iterdir():
            n = p.name
            if n.endswith(_SUFFIX) and not n.startswith(".") and ENTRY_NAME_PATTERN.fullmatch(n[: -len(_SUFFIX)]):
                out.append(n[: -len(_SUFFIX)])
        return sorted(out)

    def __contains__(self, name: str) -> bool:
        return self._path(name).exists()

    def load_all(self) -> dict[str, bytes]:
        """Decrypt every entry (e.g. on restart); raises on the first bad one."""
        return {n: self.get(n) for n in self.names()}

    def cleanup(self) -> list[str]:
        """Remove leftover temp files of interrupted writes (whose writer is gone; another process
        sharing the keystore may be writing right now); return their names."""
        removed = []
        for p in self.directory.iterdir():
            if p.name.startswith(".") and p.name.endswith(_TMP_SUFFIX) and not _writer_alive(p.name):
                p.unlink(missing_ok=True)
                removed.append(p.name)
        if removed:
            _fsync_dir(self.directory)
        return removed

    # -- identities ----------------------------------------------------------
    def put_identity(self, name: str, identity: NodeIdentity) -> None:
        self.put(name, identity.export_private_unsafe())

    def get_identity(self, name: str, *, backend: Backend | None = None) -> NodeIdentity:
        data = self.get(name)
        try:
            return NodeIdentity.import_private(data, backend=backend)
        except PQCError as exc:
            raise CorruptKeystore(f"keystore entry {name!r} is not a node identity: {exc}") from None
