"""Pluggable backends for the post-quantum primitives (ML-KEM-768, ML-DSA-65).

Two implementations:

* ``cryptography`` (default) -- pyca/cryptography >= 48 (OpenSSL 3.5+ build).
* ``liboqs`` (optional) -- the liboqs C library through :mod:`ctypes`. It is
  considered *only* when the shared library is already on the machine (found by
  ``ctypes.util.find_library('oqs')`` or under ``$OQS_INSTALL_PATH/lib``). The
  ``oqs`` Python package is never imported: its import downloads/builds liboqs.

Classical primitives (X25519, Ed25519, AES-GCM, HKDF) always come from
pyca/cryptography.

Backends deal in opaque key handles; the safe wrappers in :mod:`.keys` validate
lengths before calling them. Raw FIPS 203/204 encodings are used everywhere.
Private keys are in *seed* form where the backend supports it (ML-KEM: 64 bytes
``d || z``; ML-DSA: 32 bytes ``xi``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BackendUnavailable, InvalidKey

__all__ = [
    "BACKEND_ENV",
    "MLDSA65_EXPANDED_PRIVATE_SIZE",
    "MLDSA65_PUBLIC_KEY_SIZE",
    "MLDSA65_SEED_SIZE",
    "MLDSA65_SIGNATURE_SIZE",
    "MLKEM768_CIPHERTEXT_SIZE",
    "MLKEM768_EXPANDED_PRIVATE_SIZE",
    "MLKEM768_PUBLIC_KEY_SIZE",
    "MLKEM768_SEED_SIZE",
    "MLKEM768_SHARED_SECRET_SIZE",
    "Backend",
    "BackendInfo",
    "CryptographyBackend",
    "LibOQSBackend",
    "available_backends",
    "backend_info",
    "find_liboqs",
    "get_backend",
]

MLKEM768_PUBLIC_KEY_SIZE = 1184
MLKEM768_CIPHERTEXT_SIZE = 1088
MLKEM768_SHARED_SECRET_SIZE = 32
MLKEM768_SEED_SIZE = 64
MLKEM768_EXPANDED_PRIVATE_SIZE = 2400
MLDSA65_PUBLIC_KEY_SIZE = 1952
MLDSA65_SIGNATURE_SIZE = 3309
MLDSA65_SEED_SIZE = 32
MLDSA65_EXPANDED_PRIVATE_SIZE = 4032
MAX_CONTEXT = 255

#: Environment variable naming the backend ("cryptography" or "liboqs").
BACKEND_ENV = "X0TTA6BL4_PQC_BACKEND"

ALGORITHMS = ("ML-KEM-768", "ML-DSA-65")
CLASSICAL_ALGORITHMS = ("X25519", "Ed25519", "AES-256-GCM", "HKDF-SHA256")


@dataclass(frozen=True)
class BackendInfo:
    """What ``meshctl keys info`` shows about the crypto in use."""

    name: str
    version: str
    algorithms: tuple[str, ...]
    classical: tuple[str, ...] = CLASSICAL_ALGORITHMS
    hybrids: tuple[str, ...] = ("X25519+ML-KEM-768", "Ed25519+ML-DSA-65")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "algorithms": list(self.algorithms),
            "classical": list(self.classical),
            "hybrids": list(self.hybrids),
        }


class Backend(ABC):
    """Minimal hazardous-layer interface. Inputs are assumed length-checked."""

    name: str

    @abstractmethod
    def version(self) -> str: ...

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, self.version(), ALGORITHMS)

    # -- ML-KEM-768 --------------------------------------------------------
    @abstractmethod
    def mlkem768_generate(self) -> Any:
        """Return an opaque private handle."""

    @abstractmethod
    def mlkem768_load_private(self, data: bytes) -> Any: ...

    @abstractmethod
    def mlkem768_private_bytes(self, priv: Any) -> bytes: ...

    @abstractmethod
    def mlkem768_public_bytes(self, priv: Any) -> bytes: ...

    @abstractmethod
    def mlkem768_load_public(self, data: bytes) -> Any: ...

    @abstractmethod
    def mlkem768_encapsulate(self, pub: Any) -> tuple[bytes, bytes]:
        """Return ``(shared_secret, ciphertext)``."""

    @abstractmethod
    def mlkem768_decapsulate(self, priv: Any, ciphertext: bytes) -> bytes: ...

    # -- ML-DSA-65 ---------------------------------------------------------
    @abstractmethod
    def mldsa65_generate(self) -> Any: ...

    @abstractmethod
    def mldsa65_load_private(self, data: bytes) -> Any: ...

    @abstractmethod
    def mldsa65_private_bytes(self, priv: Any) -> bytes: ...

    @abstractmethod
    def mldsa65_public_bytes(self, priv: Any) -> bytes: ...

    @abstractmethod
    def mldsa65_load_public(self, data: bytes) -> Any: ...

    @abstractmethod
    def mldsa65_sign(self, priv: Any, message: bytes, context: bytes) -> bytes: ...

    @abstractmethod
    def mldsa65_verify(self, pub: Any, signature: bytes, message: bytes, context: bytes) -> bool: ...


# ---------------------------------------------------------------------------
# pyca/cryptography
# ---------------------------------------------------------------------------


class CryptographyBackend(Backend):
    name = "cryptography"

    def __init__(self) -> None:
        try:
            from cryptography.exceptions import InvalidSignature as _CInvalidSignature
            from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
        except ImportError as exc:  # pragma: no cover - depends on install
            raise BackendUnavailable(f"cryptography lacks ML-KEM/ML-DSA: {exc}") from exc
        self._mlkem = mlkem
        self._mldsa = mldsa
        self._cinvalid = _CInvalidSignature
        try:
            probe = mlkem.MLKEM768PrivateKey.generate()
            mldsa.MLDSA65PrivateKey.generate()
        except Exception as exc:  # UnsupportedAlgorithm on old OpenSSL
            raise BackendUnavailable(
                f"cryptography {self.version()} cannot run ML-KEM-768/ML-DSA-65: {exc}"
            ) from exc
        del probe

    def version(self) -> str:
        import cryptography
        from cryptography.hazmat.backends.openssl.backend import backend as ossl

        return f"{cryptography.__version__} ({ossl.openssl_version_text()})"

    def mlkem768_generate(self) -> Any:
        return self._mlkem.MLKEM768PrivateKey.generate()

    def mlkem768_load_private(self, data: bytes) -> Any:
        if len(data) != MLKEM768_SEED_SIZE:
            raise InvalidKey(
                f"ML-KEM-768 private key for backend cryptography must be the "
                f"{MLKEM768_SEED_SIZE}-byte seed, got {len(data)} bytes"
            )
        return self._mlkem.MLKEM768PrivateKey.from_seed_bytes(data)

    def mlkem768_private_bytes(self, priv: Any) -> bytes:
        return priv.private_bytes_raw()

    def mlkem768_public_bytes(self, priv: Any) -> bytes:
        return priv.public_key().public_bytes_raw()

    def mlkem768_load_public(self, data: bytes) -> Any:
        try:
            return self._mlkem.MLKEM768PublicKey.from_public_bytes(data)
        except ValueError as exc:
            raise InvalidKey(f"ML-KEM-768 public key rejected: {exc}") from None

    def mlkem768_encapsulate(self, pub: Any) -> tuple[bytes, bytes]:
        return pub.encapsulate()

    def mlkem768_decapsulate(self, priv: Any, ciphertext: bytes) -> bytes:
        return priv.decapsulate(ciphertext)

    def mldsa65_generate(self) -> Any:
        return self._mldsa.MLDSA65PrivateKey.generate()

    def mldsa65_load_private(self, data: bytes) -> Any:
        if len(data) != MLDSA65_SEED_SIZE:
            raise InvalidKey(
                f"ML-DSA-65 private key for backend cryptography must be the "
                f"{MLDSA65_SEED_SIZE}-byte seed, got {len(data)} bytes"
            )
        return self._mldsa.MLDSA65PrivateKey.from_seed_bytes(data)

    def mldsa65_private_bytes(self, priv: Any) -> bytes:
        return priv.private_bytes_raw()

    def mldsa65_public_bytes(self, priv: Any) -> bytes:
        return priv.public_key().public_bytes_raw()

    def mldsa65_load_public(self, data: bytes) -> Any:
        try:
            return self._mldsa.MLDSA65PublicKey.from_public_bytes(data)
        except ValueError as exc:
            raise InvalidKey(f"ML-DSA-65 public key rejected: {exc}") from None

    def mldsa65_sign(self, priv: Any, message: bytes, context: bytes) -> bytes:
        return priv.sign(message, context or None)

    def mldsa65_verify(self, pub: Any, signature: bytes, message: bytes, context: bytes) -> bool:
        try:
            pub.verify(signature, message, context or None)
        except self._cinvalid:
            return False
        return True


# ---------------------------------------------------------------------------
# liboqs via ctypes (optional)
# ---------------------------------------------------------------------------


def find_liboqs() -> str | None:
    """Return a loadable path/name of the liboqs shared library, or None.

    Looks under ``$OQS_INSTALL_PATH/lib`` (and ``lib64``) first, then the
    system search path. Never downloads or builds anything.
    """
    base = os.environ.get("OQS_INSTALL_PATH")
    if base:
        for sub in ("lib", "lib64", "bin"):
            d = Path(base) / sub
            if d.is_dir():
                for cand in sorted(d.glob("liboqs*.so*")) + sorted(d.glob("liboqs*.dylib")) + sorted(
                    d.glob("oqs*.dll")
                ):
                    return str(cand)
    return ctypes.util.find_library("oqs")


class _OqsKey:
    __slots__ = ("public", "secret")

    def __init__(self, secret: bytes, public: bytes) -> None:
        self.secret = secret
        self.public = public


class LibOQSBackend(Backend):
    """liboqs through ctypes. Private keys are liboqs' expanded secret keys,
    except ML-KEM-768 keys created from a seed when ``keypair_derand`` exists."""

    name = "liboqs"

    def __init__(self, path: str | None = None) -> None:
        path = path or find_liboqs()
        if not path:
            raise BackendUnavailable(
                "liboqs shared library not found (set OQS_INSTALL_PATH or install liboqs)"
            )
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise BackendUnavailable(f"cannot load liboqs from {path}: {exc}") from exc
        self._lib = lib
        self._path = path
        p, sz = ctypes.c_char_p, ctypes.c_size_t
        try:
            lib.OQS_version.restype = ctypes.c_char_p
            lib.OQS_KEM_ml_kem_768_keypair.argtypes = [p, p]
            lib.OQS_KEM_ml_kem_768_encaps.argtypes = [p, p, p]
            lib.OQS_KEM_ml_kem_768_decaps.argtypes = [p, p, p]
            lib.OQS_SIG_ml_dsa_65_keypair.argtypes = [p, p]
            lib.OQS_SIG_ml_dsa_65_sign_with_ctx_str.argtypes = [
                p, ctypes.POINTER(sz), p, sz, p, sz, p,
            ]
            lib.OQS_SIG_ml_dsa_65_verify_with_ctx_str.argtypes = [p, sz, p, sz, p, sz, p]
        except AttributeError as exc:
            raise BackendUnavailable(f"liboqs at {path} lacks ML-KEM-768/ML-DSA-65: {exc}") from exc
        self._derand: Any = getattr(lib, "OQS_KEM_ml_kem_768_keypair_derand", None)   # a ctypes function or None
        if self._derand is not None:
            self._derand.argtypes = [p, p, p]
        self._lock = threading.Lock()

    def version(self) -> str:
        return self._lib.OQS_version().decode()

    @staticmethod
    def _ok(rc: int, what: str) -> None:
        if rc != 0:
            raise InvalidKey(f"liboqs {what} failed (status {rc})")

    # ML-KEM-768
    def mlkem768_generate(self) -> Any:
        pk = ctypes.create_string_buffer(MLKEM768_PUBLIC_KEY_SIZE)
        sk = ctypes.create_string_buffer(MLKEM768_EXPANDED_PRIVATE_SIZE)
        if self._derand is not None:
            seed = os.urandom(MLKEM768_SEED_SIZE)
            self._ok(self._derand(pk, sk, seed), "ML-KEM-768 keygen")
            return _OqsKey(seed, pk.raw)
        self._ok(self._lib.OQS_KEM_ml_kem_768_keypair(pk, sk), "ML-KEM-768 keygen")
        return _OqsKey(sk.raw, pk.raw)

    def _kem_expanded(self, priv: _OqsKey) -> bytes:
        if len(priv.secret) == MLKEM768_EXPANDED_PRIVATE_SIZE:
            return priv.secret
        pk = ctypes.create_string_buffer(MLKEM768_PUBLIC_KEY_SIZE)
        sk = ctypes.create_string_buffer(MLKEM768_EXPANDED_PRIVATE_SIZE)
        self._ok(self._derand(pk, sk, priv.secret), "ML-KEM-768 key expansion")
        return sk.raw

    def mlkem768_load_private(self, data: bytes) -> Any:
        if len(data) == MLKEM768_SEED_SIZE and self._derand is not None:
            pk = ctypes.create_string_buffer(MLKEM768_PUBLIC_KEY_SIZE)
            sk = ctypes.create_string_buffer(MLKEM768_EXPANDED_PRIVATE_SIZE)
            self._ok(self._derand(pk, sk, data), "ML-KEM-768 keygen from seed")
            return _OqsKey(data, pk.raw)
        if len(data) == MLKEM768_EXPANDED_PRIVATE_SIZE:
            # FIPS 203 dk = dk_pke || ek || H(ek) || z
            return _OqsKey(data, data[1152 : 1152 + MLKEM768_PUBLIC_KEY_SIZE])
        raise InvalidKey(
            f"ML-KEM-768 private key for backend liboqs must be {MLKEM768_EXPANDED_PRIVATE_SIZE} "
            f"bytes (or a {MLKEM768_SEED_SIZE}-byte seed with liboqs >= 0.12), got {len(data)}"
        )

    def mlkem768_private_bytes(self, priv: Any) -> bytes:
        return priv.secret

    def mlkem768_public_bytes(self, priv: Any) -> bytes:
        return priv.public

    def mlkem768_load_public(self, data: bytes) -> Any:
        return bytes(data)

    def mlkem768_encapsulate(self, pub: Any) -> tuple[bytes, bytes]:
        ct = ctypes.create_string_buffer(MLKEM768_CIPHERTEXT_SIZE)
        ss = ctypes.create_string_buffer(MLKEM768_SHARED_SECRET_SIZE)
        self._ok(self._lib.OQS_KEM_ml_kem_768_encaps(ct, ss, pub), "ML-KEM-768 encapsulation")
        return ss.raw, ct.raw

    def mlkem768_decapsulate(self, priv: Any, ciphertext: bytes) -> bytes:
        ss = ctypes.create_string_buffer(MLKEM768_SHARED_SECRET_SIZE)
        sk = self._kem_expanded(priv)
        self._ok(self._lib.OQS_KEM_ml_kem_768_decaps(ss, ciphertext, sk), "ML-KEM-768 decapsulation")
        return ss.raw

    # ML-DSA-65
    def mldsa65_generate(self) -> Any:
        pk = ctypes.create_string_buffer(MLDSA65_PUBLIC_KEY_SIZE)
        sk = ctypes.create_string_buffer(MLDSA65_EXPANDED_PRIVATE_SIZE)
        self._ok(self._lib.OQS_SIG_ml_dsa_65_keypair(pk, sk), "ML-DSA-65 keygen")
        return _OqsKey(sk.raw, pk.raw)

    def mldsa65_load_private(self, data: bytes) -> Any:
        # liboqs form: expanded FIPS 204 sk || pk (the public key is not
        # recoverable cheaply from the expanded secret key).
        want = MLDSA65_EXPANDED_PRIVATE_SIZE + MLDSA65_PUBLIC_KEY_SIZE
        if len(data) != want:
            raise InvalidKey(
                f"ML-DSA-65 private key for backend liboqs must be {want} bytes "
                f"(expanded sk || pk), got {len(data)} bytes"
            )
        return _OqsKey(data[:MLDSA65_EXPANDED_PRIVATE_SIZE], data[MLDSA65_EXPANDED_PRIVATE_SIZE:])

    def mldsa65_private_bytes(self, priv: Any) -> bytes:
        return priv.secret + priv.public

    def mldsa65_public_bytes(self, priv: Any) -> bytes:
        return priv.public

    def mldsa65_load_public(self, data: bytes) -> Any:
        return bytes(data)

    def mldsa65_sign(self, priv: Any, message: bytes, context: bytes) -> bytes:
        sig = ctypes.create_string_buffer(MLDSA65_SIGNATURE_SIZE)
        n = ctypes.c_size_t(0)
        rc = self._lib.OQS_SIG_ml_dsa_65_sign_with_ctx_str(
            sig, ctypes.byref(n), message, len(message), context or None, len(context), priv.secret
        )
        self._ok(rc, "ML-DSA-65 signing")
        return sig.raw[: n.value]

    def mldsa65_verify(self, pub: Any, signature: bytes, message: bytes, context: bytes) -> bool:
        rc = self._lib.OQS_SIG_ml_dsa_65_verify_with_ctx_str(
            message, len(message), signature, len(signature), context or None, len(context), pub
        )
        return rc == 0


# ---------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------

_CACHE: dict[str, Backend] = {}
_CACHE_LOCK = threading.Lock()
_FACTORIES = {"cryptography": CryptographyBackend, "liboqs": LibOQSBackend}


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine (never imports ``oqs``)."""
    names = []
    for name in _FACTORIES:
        try:
            get_backend(name)
        except BackendUnavailable:
            continue
        names.append(name)
    return names


def get_backend(name: str | None = None) -> Backend:
    """Return the backend ``name``, or the configured default.

    Default (chosen on the first call, then kept for the process): ``$X0TTA6BL4_PQC_BACKEND``
    if set, else ``cryptography``; falls back to ``liboqs`` only when cryptography cannot run
    ML-KEM/ML-DSA and the liboqs shared library is present.
    """
    if name is None:
        # the fast path (every key generation asks for the default): chosen once per process, so
        # $X0TTA6BL4_PQC_BACKEND is read on first use -- reading the environment costs ~1 us a call
        backend = _DEFAULT
        if backend is None:
            backend = _resolve(os.environ.get(BACKEND_ENV) or None)
            globals()["_DEFAULT"] = backend
        return backend
    return _resolve(name)


_DEFAULT: Backend | None = None


def _resolve(explicit: str | None) -> Backend:
    if explicit is not None and explicit not in _FACTORIES:
        raise BackendUnavailable(f"unknown PQC backend {explicit!r}; choose from {sorted(_FACTORIES)}")
    order = [explicit] if explicit else ["cryptography", "liboqs"]
    errors = []
    with _CACHE_LOCK:
        for n in order:
            if n in _CACHE:
                return _CACHE[n]
            try:
                b = _FACTORIES[n]()
            except BackendUnavailable as exc:
                errors.append(str(exc))
                continue
            _CACHE[n] = b
            return b
    raise BackendUnavailable("; ".join(errors))


def backend_info(name: str | None = None) -> BackendInfo:
    """Name, version and algorithms of the backend in use (``meshctl keys info``)."""
    return get_backend(name).info()
