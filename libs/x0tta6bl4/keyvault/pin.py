"""Keyvault's root public key, pinned by configuration: never learnt over the bus.

Every record keyvault signs (public keys, revocations) is verified against keyvault's root ML-DSA-65 public
key. Whoever verifies them (governance, mesh hosts, ``meshctl audit verify``) pins that key by its
**fingerprint**, ``sha256:<64 hex>`` of the raw public key (its first 16 hex characters are the root's key
id), given as ``X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT``. A root key that arrives from anywhere (keyvault's
``Info``, a file) is accepted only when its fingerprint matches; a verifier without a pinned fingerprint
refuses to start (:func:`check`).

The root is made with the deployment's secrets (``meshctl secrets init``): ``<secrets>/keyvault/root.key``
(the ML-DSA-65 seed, 0600, given to keyvault only as ``X0TTA6BL4_KEYVAULT_ROOT_KEY_FILE``; keyvault seals it
into its shared state on first start) and ``<secrets>/keyvault/root.pub``, so the fingerprint is known
before anything starts and ``make demo`` stays one command. A deployment whose keyvault made its own root
before this existed pins the fingerprint keyvault logs at start (``meshctl keys info`` shows it too).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import pathlib
import re

from x0tta6bl4.pqc import MLDSA65PrivateKey, MLDSA65PublicKey
from x0tta6bl4.pqc.keystore import write_secret_file

ROOT_KEY_FILE = "keyvault/root.key"
ROOT_PUB_FILE = "keyvault/root.pub"
ENV_FINGERPRINT = "X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT"
ENV_ROOT_KEY_FILE = "X0TTA6BL4_KEYVAULT_ROOT_KEY_FILE"
ENV_CA_CERT_FILE = "X0TTA6BL4_CA_CERT_FILE"
ENV_CA_KEY_FILE = "X0TTA6BL4_CA_KEY_FILE"
ENV_HOSTS_FILE = "X0TTA6BL4_HOSTS_FILE"
_FP = re.compile(r"^(sha256:)?([0-9a-f]{64})$")


class RootPinError(Exception):
    """A root key that does not match the pinned fingerprint, or a malformed fingerprint; one line."""


def fingerprint(public_key: bytes | MLDSA65PublicKey) -> str:
    """``sha256:<hex>`` of the raw ML-DSA-65 public key."""
    raw = public_key.public_bytes() if isinstance(public_key, MLDSA65PublicKey) else bytes(public_key)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def normalize(value: str) -> str:
    """A fingerprint setting in canonical form (``sha256:`` + lower-case hex); RootPinError if malformed."""
    m = _FP.match(value.strip().lower())
    if m is None:
        raise RootPinError(f"{ENV_FINGERPRINT}={value.strip()[:80]!r} is not a fingerprint: expected "
                           f"sha256:<64 hex digits> (meshctl keys info shows keyvault's)")
    return "sha256:" + m.group(2)


def check(public_key: bytes | MLDSA65PublicKey, pinned: str, *, source: str = "keyvault") -> MLDSA65PublicKey:
    """The root key if its fingerprint is ``pinned``; RootPinError naming both otherwise."""
    key = public_key if isinstance(public_key, MLDSA65PublicKey) else MLDSA65PublicKey.from_bytes(bytes(public_key))
    want, got = normalize(pinned), fingerprint(key)
    if not hmac.compare_digest(want, got):
        raise RootPinError(f"the keyvault root key from {source} has fingerprint {got}, but {want} is pinned "
                           f"({ENV_FINGERPRINT}): refused (a rogue keyvault, or a root that was replaced)")
    return key


# ---- the secrets directory -------------------------------------------------------------------------------
def ensure_root(secrets_root: str | os.PathLike[str], *, force: bool = False) -> list[str]:
    """Make the keyvault root key of a deployment (``keyvault/root.key`` 0600 and ``keyvault/root.pub``)
    unless it exists; returns the files made (relative paths)."""
    root = pathlib.Path(secrets_root)
    key_file, pub_file = root / ROOT_KEY_FILE, root / ROOT_PUB_FILE
    made: list[str] = []
    if force or not key_file.is_file():
        key = MLDSA65PrivateKey.generate()
        key_file.unlink(missing_ok=True)
        write_secret_file(key_file, key.private_bytes_unsafe())
        made.append(ROOT_KEY_FILE)
    pub = MLDSA65PrivateKey.from_private_bytes(key_file.read_bytes()).public_key().public_bytes()
    if not pub_file.is_file() or pub_file.read_bytes() != pub:
        tmp = pub_file.with_name(pub_file.name + ".tmp")
        tmp.write_bytes(pub)
        os.replace(tmp, pub_file)
        made.append(ROOT_PUB_FILE)
    return made


def pinned_fingerprint(secrets_root: str | os.PathLike[str]) -> str | None:
    """The fingerprint of the deployment's keyvault root (from ``keyvault/root.pub``), None without one."""
    pub = pathlib.Path(secrets_root) / ROOT_PUB_FILE
    return fingerprint(pub.read_bytes()) if pub.is_file() else None


def identity_env(secrets_root: str | os.PathLike[str], identity: str, service: str | None = None) -> dict[str, str]:
    """The identity settings of one process of a deployment: the CA certificate (trust bundle of the X.509
    SVIDs) and the pinned root fingerprint for everyone; the CA key, the root key and the mesh-host
    assignments for keyvault only."""
    root = pathlib.Path(secrets_root)
    env: dict[str, str] = {}
    if (root / "ca" / "ca.pem").is_file():
        env[ENV_CA_CERT_FILE] = str(root / "ca" / "ca.pem")
    fp = pinned_fingerprint(root)
    if fp:
        env[ENV_FINGERPRINT] = fp
    if service == "keyvault":
        env[ENV_CA_KEY_FILE] = str(root / "ca" / "ca.key")
        env[ENV_HOSTS_FILE] = str(root / "hosts.json")
        if (root / ROOT_KEY_FILE).is_file():
            env[ENV_ROOT_KEY_FILE] = str(root / ROOT_KEY_FILE)
    return env
