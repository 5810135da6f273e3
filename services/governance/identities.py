"""Voter identities from keyvault, and the ledger admin credential.

A voter is an identity issued by keyvault (``spiffe://<trust-domain>/node/<id>``).
``KeyvaultIdentities.signing_key(voter)`` returns the ML-DSA-65 half of the voter's
current (Ed25519 + ML-DSA-65) identity signing key, from keyvault's root-signed records in the JetStream KV bucket
``keys`` (entry ``node.<id>.sig``), checked against the keyvault root key. That key is pinned by
configuration, never learnt over the bus: its fingerprint (``X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT``,
:mod:`x0tta6bl4.keyvault.pin`) is set, and a root key keyvault's ``Info`` (``keyvault.rpc.Info``) offers is
taken only when it has that fingerprint - whoever answers Info (a rogue responder on the bus) cannot plant
another root. A record that does not verify, belongs to another identity, is revoked or expired is refused
with a clear error.

Revocations are followed as they happen: ``start()`` watches the ``keys`` bucket and keeps, for every
keyvault identity, its current signing key id (``node.<id>.sig``) and the root-signed revocation records
(``rev.<key-id>``). ``revocation(identity)`` answers from that view with no I/O (so the check costs a
vote nothing): an identity whose current key is revoked gets its :class:`RevocationRecord`, and
governance refuses its votes, proposals and cancels with PERMISSION_DENIED naming it. Until the view
holds the bucket's initial values (keyvault not reachable yet, or the watch being re-established), the
identity's record is read directly (fail closed: records that cannot be read refuse the call as
UNAVAILABLE).

The ledger admin token: RegisterVoter mints voting power, so it needs
``authorization: Bearer <token>`` metadata. The token comes from
``X0TTA6BL4_ADMIN_TOKEN_FILE`` (default ``<data dir>/governance-admin.token``),
created once (0600, create-only, 32 random bytes, url-safe base64) when absent;
it is never logged.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import os
import pathlib
import time

import nats
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.kvwatch import WatchError, next_update, watch_bucket
from x0tta6bl4.governance import (
    FailedPrecondition,
    GovernanceError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from x0tta6bl4.keyvault import distribution as dist
from x0tta6bl4.keyvault import pin
from x0tta6bl4.pqc import MLDSA65PublicKey, PQCError, PublicKeyRecord, RevocationRecord, SpiffeId
from x0tta6bl4.pqc.keystore import write_secret_file
from x0tta6bl4.v1 import keyvault_pb2 as kpb

from .store import Unavailable

__all__ = ["TOKEN_FILE_NAME", "AdminToken", "KeyvaultIdentities", "revocation_message"]

TOKEN_FILE_NAME = "governance-admin.token"

log = logging.getLogger("x0tta6bl4.governance.identities")


class AdminToken:
    """The ledger admin bearer token, checked in constant time."""

    def __init__(self, token: str, path: pathlib.Path | None = None) -> None:
        if len(token) < 16:
            raise ValueError(f"admin token in {path or 'the configuration'} is too short (at least 16 characters)")
        self._token = token.encode()
        self.path = path

    @classmethod
    def load_or_create(cls, path: pathlib.Path) -> AdminToken:
        path = pathlib.Path(path)
        if not path.exists():
            token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=")
            with contextlib.suppress(FileExistsError):   # another replica sharing the data dir created it
                write_secret_file(path, token + b"\n", create_only=True)
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the admin token file {path}: {e}") from None
        return cls(text, path)

    def check(self, metadata: dict[str, str], why: str = "this call changes the voter ledger") -> None:
        """Raise Unauthenticated (no credential) or PermissionDenied (wrong one)."""
        where = f" (the token is in {self.path} on the governance host)" if self.path else ""
        value = metadata.get("authorization", "")
        if not value:
            raise Unauthenticated(f"{why}: send the ledger admin token as metadata "
                                  f"'authorization: Bearer <token>'{where}")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        if not hmac.compare_digest(token.strip().encode(), self._token):
            raise PermissionDenied("the admin token does not match this governance service's")


class KeyvaultIdentities:
    """Current signing keys of keyvault identities, verified against the pinned keyvault root."""

    def __init__(self, nc, *, root_fingerprint: str, root_public_key: bytes | None = None,
                 timeout_s: float = 5.0) -> None:
        """``root_fingerprint``: the pinned ``sha256:<hex>`` (ValueError when malformed); ``root_public_key``:
        the key itself when the caller has it (checked against the fingerprint too)."""
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout_s)
        self.timeout_s = timeout_s
        try:
            self.fingerprint = pin.normalize(root_fingerprint)
            self._root = pin.check(root_public_key, self.fingerprint, source="the configuration") \
                if root_public_key else None
        except pin.RootPinError as e:
            raise ValueError(str(e)) from None
        self.refused_roots = 0
        self._lock = asyncio.Lock()
        # the revocation view (see the module's doc), fed by the bucket watch
        self._sig_key: dict[str, str] = {}                       # identity -> current signing key id
        self._sig_revoked: set[str] = set()                       # identities whose current record is flagged
        self._revocations: dict[str, RevocationRecord] = {}      # revoked key id -> its record
        self._by_identity: dict[str, list[RevocationRecord]] = {}
        self.synced = asyncio.Event()
        self.rejected_entries = 0
        self._task: asyncio.Task | None = None

    async def root(self) -> MLDSA65PublicKey:
        async with self._lock:
            if self._root is None:
                try:
                    msg = await self.nc.request(subjects.keyvault_rpc("Info"),
                                                kpb.InfoRequest().SerializeToString(), timeout=self.timeout_s)
                except (TimeoutError, nats.errors.Error) as e:
                    raise Unavailable(f"keyvault did not answer Info ({type(e).__name__}); is it running?") from None
                err = (msg.headers or {}).get(subjects.HEADER_ERROR)
                if err:
                    raise Unavailable(f"keyvault Info failed: {err}")
                offered = kpb.InfoResponse.FromString(msg.data).root_public_key
                try:
                    self._root = pin.check(offered, self.fingerprint, source="keyvault.rpc.Info")
                except (pin.RootPinError, PQCError, ValueError) as e:
                    self.refused_roots += 1      # asked again next time: the real keyvault may answer then
                    raise FailedPrecondition(f"keyvault root refused: {e}") from None
            return self._root

    async def record(self, voter: str) -> PublicKeyRecord:
        """The voter's current ML-DSA-65 public-key record, root-verified, not revoked, valid now."""
        try:
            sid = SpiffeId.parse(voter)
        except PQCError as e:
            raise InvalidArgument(f"voter must be a keyvault identity spiffe://<trust-domain>/node/<id> "
                                  f"when no public_key is given: {e}") from None
        root = await self.root()
        key = dist.node_key(sid.node_id, "sig")
        try:
            kv = await self.js.key_value(dist.BUCKET)
            entry = await kv.get(key)
        except (KeyNotFoundError, BucketNotFoundError):
            raise NotFound(f"keyvault has no identity {voter!r} (issue it first: meshctl keys issue "
                           f"{sid.node_id})") from None
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as e:
            raise Unavailable(f"cannot read keyvault records: {type(e).__name__}: {e}") from None
        try:
            rec = dist.verify_entry(key, entry.value or b"", root).record
        except PQCError as e:
            raise FailedPrecondition(f"keyvault record of {voter!r} is not valid: {e}") from None
        if not isinstance(rec, PublicKeyRecord) or rec.spiffe_id != voter:
            raise FailedPrecondition(f"keyvault record under {key!r} belongs to "
                                     f"{getattr(rec, 'spiffe_id', '?')!r}, not {voter!r}")
        if rec.revoked:
            raise FailedPrecondition(f"identity {voter!r} is revoked in keyvault")
        now = int(time.time())
        if not rec.not_before <= now < rec.not_after:
            raise FailedPrecondition(f"the keyvault key of {voter!r} is not valid now "
                                     f"(valid {rec.not_before}..{rec.not_after})")
        return rec

    async def signing_key(self, voter: str) -> bytes:
        """The raw ML-DSA-65 public key votes of ``voter`` are checked against (see ``record``)."""
        rec = await self.record(voter)
        try:
            return rec.verify_key().mldsa.public_bytes()
        except PQCError as e:
            raise FailedPrecondition(f"keyvault record of {voter!r} holds no usable signing key: {e}") from None

    # ---- revocations -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Follow the ``keys`` bucket in the background (revocations and current keys)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow(), name="governance-keys-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        delay = 0.2
        while True:
            watcher = None
            try:
                root = await self.root()
                watcher, initial = await watch_bucket(self.js, dist.BUCKET, timeout=self.timeout_s)
                for entry in initial:
                    self._apply(entry, root)
                self.synced.set()
                log.info("following keyvault revocations: %d revoked keys", len(self._revocations))
                delay = 0.2
                while True:
                    update = await next_update(watcher, timeout=60)
                    if update is not None:
                        self._apply(update, root)
            except asyncio.CancelledError:
                raise
            except (GovernanceError, Unavailable, WatchError, TimeoutError, nats.errors.Error,
                    nats.js.errors.Error) as e:
                log.warning("keyvault records: cannot follow the %r bucket (%s: %s); retrying in %.1f s",
                            dist.BUCKET, type(e).__name__, e, delay)
            finally:
                self.synced.clear()     # until the watch is back, revocations are checked by direct reads
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _apply(self, e, root: MLDSA65PublicKey) -> None:
        key, value = e.key, e.value or b""
        parts = key.split(".")
        if e.operation in ("DEL", "PURGE") or not (parts[0] == "rev" or (parts[0] == "node" and parts[-1] == "sig")):
            return                   # key.* entries and KEM records say nothing about who may vote
        try:
            rec = dist.verify_entry(key, value, root).record
        except PQCError as err:
            self.rejected_entries += 1
            log.warning("keyvault record %r refused: %s", key, err)
            return
        if isinstance(rec, RevocationRecord):
            if rec.key_id not in self._revocations:
                self._revocations[rec.key_id] = rec
                self._by_identity.setdefault(rec.spiffe_id, []).append(rec)
                log.info("keyvault revoked key %s of %s at %d (%s)", rec.key_id, rec.spiffe_id, rec.revoked_at,
                         rec.reason or "no reason given")
        elif isinstance(rec, PublicKeyRecord):
            self._sig_key[rec.spiffe_id] = rec.key_id
            if rec.revoked:
                self._sig_revoked.add(rec.spiffe_id)
            else:
                self._sig_revoked.discard(rec.spiffe_id)

    def _revoked_now(self, identity: str) -> RevocationRecord | None:
        recs = self._by_identity.get(identity)
        if not recs:
            return None
        current = self._sig_key.get(identity)
        if current is None:              # no current record (never issued here, or deleted): any revocation counts
            return max(recs, key=lambda r: r.revoked_at)
        rec = self._revocations.get(current)
        if rec is not None:
            return rec
        if identity in self._sig_revoked:
            return max(recs, key=lambda r: r.revoked_at)
        return None                      # an older key was revoked; the identity was re-issued since

    async def revocation(self, identity: str) -> RevocationRecord | None:
        """The revocation of ``identity``'s current key, or None (not revoked, or not a keyvault identity).
        Answered from the followed bucket; before it is followed, from a direct read of the identity's record
        (Unavailable when keyvault's records cannot be read)."""
        try:
            SpiffeId.parse(identity)
        except PQCError:
            return None                  # not a keyvault identity (an explicit-key voter): keyvault cannot revoke it
        if self.synced.is_set():
            return self._revoked_now(identity)
        try:
            await self.record(identity)
        except NotFound:
            return None
        except FailedPrecondition as e:
            if "revoked" not in str(e):
                return None              # its record is odd (expired...): the ledger key decides, as before
            rec = self._revoked_now(identity)
            return rec or RevocationRecord(identity, "0" * 16, 0, "revoked in keyvault")
        return None

    async def refuse_if_revoked(self, identity: str, what: str) -> None:
        """PermissionDenied naming the revocation when ``identity``'s current key is revoked."""
        rec = await self.revocation(identity)
        if rec is not None:
            raise PermissionDenied(revocation_message(identity, rec, what))


def revocation_message(identity: str, rec: RevocationRecord, what: str) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.revoked_at)) if rec.revoked_at else "?"
    return (f"{what}: identity {identity!r} is revoked in keyvault (key {rec.key_id} revoked at {when}, "
            f"reason: {rec.reason or 'none given'}); it may not vote, propose or cancel")
