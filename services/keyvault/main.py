"""Keyvault: PQC identities and keys (gRPC for people, NATS request/reply for services).

A thin adapter over :mod:`x0tta6bl4.keyvault` (the domain):

* gRPC ``x0tta6bl4.v1.Keyvault`` on ``X0TTA6BL4_GRPC_HOST:X0TTA6BL4_GRPC_PORT``
  (default 127.0.0.1:50052; port 0 = random, logged), with gRPC health and reflection;
* the same methods over core NATS request/reply on ``keyvault.rpc.<Method>``
  (queue group ``keyvault``); an error is an empty reply with header
  ``X0-Error: "<CODE>: <message>"`` (and ``X0-Error-Code: <CODE>``);
* root-signed records in the JetStream KV bucket ``keys`` (see
  :mod:`x0tta6bl4.keyvault.distribution`), kept in sync after every change;
* a background tick retiring keys whose overlap window passed;
* every issue / rotate / retire / revoke / attest / private export is an audit event.

Replicas (any number, on any machines sharing NATS and the master key) share one
state: the JetStream KV bucket ``keyvault`` holds every identity and the root key,
sealed under the master key, written by compare-and-set (see :mod:`.state`).
Each replica also keeps encrypted local copies in ``<data_dir>/keyvault``.
The master key comes from ``X0TTA6BL4_MASTER_KEY`` (hex or base64 of 32 bytes) or
``X0TTA6BL4_MASTER_KEY_FILE``; with neither, a key file
``<data_dir>/keys/keyvault-master.key`` (0600) is created on first start (then
copy it to every other replica). The master key is never logged.
"""
from __future__ import annotations

import asyncio
import logging
import pathlib
import sys
import time
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.js.api import KeyValueConfig
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    NotFoundError,
)
from pydantic import Field, SecretStr

from services.keyvault.state import BUCKET as STATE_BUCKET
from services.keyvault.state import SharedVault, StateError
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import Service
from x0tta6bl4.bus.reader import kv_snapshot
from x0tta6bl4.config import CommonSettings, ConfigError, load_settings
from x0tta6bl4.keyvault import distribution as dist
from x0tta6bl4.keyvault.errors import InvalidArgument, KeyvaultError
from x0tta6bl4.keyvault.vault import (
    RETIRED,
    REVOKED,
    Entry,
    Generation,
    Vault,
    check_node_id,
)
from x0tta6bl4.pqc import Keystore, KeystoreError, MasterKey, SignedRecord, backend_info
from x0tta6bl4.pqc.backend import MLKEM768_PUBLIC_KEY_SIZE
from x0tta6bl4.v1 import keyvault_pb2 as pb
from x0tta6bl4.v1 import keyvault_pb2_grpc as pb_grpc

log = logging.getLogger("x0tta6bl4.keyvault")
SERVICE_NAME = "x0tta6bl4.v1.Keyvault"
RPC_QUEUE = "keyvault"
MASTER_KEY_FILE_NAME = "keyvault-master.key"
GRPC_MAX_MESSAGE = 64 * 1024 * 1024
KV_BATCH = 64            # concurrent KV writes in flight
AUDIT_CHUNK = 50          # nodes per rotation/retirement audit event
MAX_BUNDLES_PER_CALL = 1000
REPAIR_AFTER_S = 2.0      # a change by another replica: its records are checked this long after


class KeyvaultSettings(CommonSettings):
    grpc_host: str = Field("127.0.0.1", description="gRPC listen address (no TLS: keep it on loopback or a private net)")
    grpc_port: int = Field(50052, ge=0, le=65535, description="gRPC port (0 = random, logged)")
    master_key: SecretStr | None = Field(None, description="keystore master key: 64 hex chars or base64 of 32 bytes")
    master_key_file: pathlib.Path | None = Field(None, description="file holding the master key (raw 32 bytes or text)")
    rotation_overlap_s: float = Field(30.0, gt=0, le=7 * 86400, description="default overlap window of a rotation")
    key_validity_s: int = Field(90 * 86400, ge=60, description="validity of issued keys")
    retire_tick_s: float = Field(0.2, gt=0, le=60, description="how often retiring keys are checked")


# ---- master key and vault (before the service starts) ---------------------------------
def load_master_key(s: KeyvaultSettings) -> tuple[MasterKey, str]:
    """The master key and a one-line note on where it came from (never the key)."""
    if s.master_key is not None and s.master_key_file is not None:
        raise ConfigError("set X0TTA6BL4_MASTER_KEY or X0TTA6BL4_MASTER_KEY_FILE, not both")
    if s.master_key is not None:
        try:
            return MasterKey.from_text(s.master_key.get_secret_value()), "master key from X0TTA6BL4_MASTER_KEY"
        except KeystoreError as e:
            raise ConfigError(f"X0TTA6BL4_MASTER_KEY: {e}") from None
    path = s.master_key_file
    generated = False
    if path is None:
        path = pathlib.Path(s.data_dir) / "keys" / MASTER_KEY_FILE_NAME
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                MasterKey.generate().write_file(path)
                generated = True
            except KeystoreError:
                if not path.exists():
                    raise
                # another replica sharing this data dir created it a moment ago: use theirs
    try:
        mk = MasterKey.from_file(path)
    except KeystoreError as e:
        raise ConfigError(f"X0TTA6BL4_MASTER_KEY_FILE: {e}") from None
    if generated:
        return mk, (f"generated a new master key file {path} (mode 0600); back it up: without it the keystore "
                    f"cannot be decrypted")
    mode = path.stat().st_mode & 0o777
    note = f"master key from file {path}"
    if mode & 0o077:
        note += f" (WARNING: mode {mode:o} lets others read it; chmod 600)"
    return mk, note


def open_keystore(s: KeyvaultSettings) -> tuple[MasterKey, Keystore, str]:
    """The master key and the local keystore (the shared state is opened once NATS is up)."""
    mk, note = load_master_key(s)
    try:
        ks = Keystore(pathlib.Path(s.data_dir) / "keyvault", mk)
        ks.cleanup()
    except (KeystoreError, OSError) as e:
        raise ConfigError(f"cannot open the keystore {pathlib.Path(s.data_dir) / 'keyvault'}: {e}") from None
    return mk, ks, note


# ---- protobuf views ---------------------------------------------------------------------
def key_record(vault: Vault, e: Entry, g: Generation, with_previous: bool = False) -> pb.KeyRecord:
    s, k = g.sig_record, g.kem_record
    r = pb.KeyRecord(
        spiffe_id=e.spiffe_id, node_id=e.node_id, generation=g.generation,
        sig_key_id=s.key_id, sig_algorithm=s.algorithm,
        ed25519_public_key=s.public_key[:32], mldsa_public_key=s.public_key[32:],
        kem_key_id=k.key_id, kem_algorithm=k.algorithm,
        mlkem_public_key=k.public_key[:MLKEM768_PUBLIC_KEY_SIZE], x25519_public_key=k.public_key[MLKEM768_PUBLIC_KEY_SIZE:],
        not_before_unix=s.not_before, not_after_unix=s.not_after, revoked=g.status == REVOKED,
        root_signature=SignedRecord.from_bytes(g.signed_sig).signature, root_key_id=vault.root_key_id,
        status=g.status, signed_sig_record=g.signed_sig, signed_kem_record=g.signed_kem,
        retiring_until_unix=g.retiring_until if g.status == "retiring" else 0.0,
        retired_at_unix=g.retired_at if g.status == RETIRED else 0,
        revoked_at_unix=e.revoked_at if g.status == REVOKED else 0,
        revocation_reason=e.revocation_reason if g.status == REVOKED else "",
    )
    if with_previous:
        r.previous.extend(key_record(vault, e, p) for p in e.previous())
    return r


def slim(r: pb.KeyRecord) -> pb.KeyRecord:
    """The record without key material or signatures (ids, generations, status only)."""
    for f in ("ed25519_public_key", "mldsa_public_key", "mlkem_public_key", "x25519_public_key",
              "signed_sig_record", "signed_kem_record", "root_signature"):
        r.ClearField(f)
    for p in r.previous:
        slim(p)
    return r


def with_slim_previous(r: pb.KeyRecord) -> pb.KeyRecord:
    for p in r.previous:
        slim(p)
    return r


class PermissionDenied(KeyvaultError):
    code = "PERMISSION_DENIED"


class Unimplemented(KeyvaultError):
    code = "UNIMPLEMENTED"


# ---- the API (shared by gRPC and NATS) ------------------------------------------------------
class KeyvaultApi:
    def __init__(self, app: Service, settings: KeyvaultSettings):
        self.app, self.settings = app, settings
        self.state: SharedVault | None = None
        self.lock = asyncio.Lock()
        self.kv = None
        self.learned: dict[str, float] = {}   # node id -> when a change by another replica was seen

    def on_learn(self, node: str, prev: Entry | None, new: Entry | None) -> None:
        """A change committed by another replica: check its records a little later (repair them if
        that replica died between its commit and its publish)."""
        self.learned.setdefault(node, time.monotonic())

    async def repair_records(self) -> int:
        """Republish the records of identities changed by other replicas whose records in the bucket
        are still not what the identity says, REPAIR_AFTER_S after the change was seen."""
        now = time.monotonic()
        due = [n for n, t in self.learned.items() if now - t >= REPAIR_AFTER_S]
        fixed = 0
        for node in due:
            del self.learned[node]
            e = self.vault.entries.get(node)
            if e is None:
                continue
            want, dels = dist.entry_all(e)
            bad = False
            for k, v in want.items():
                try:
                    bad = (await self.kv.get(k)).value != v
                except KeyNotFoundError:
                    bad = True
                if bad:
                    break
            if not bad:
                for k in dels:
                    try:
                        await self.kv.get(k)
                        bad = True
                        break
                    except KeyNotFoundError:
                        pass
            if bad:
                async with self.lock:
                    await self.publish([(None, e, self.vault.revision(node))], full=True)
                fixed += 1
        if fixed:
            log.warning("repaired the records of %d identities another replica changed but did not publish", fixed)
        return fixed

    @property
    def vault(self) -> Vault:
        return self.state.vault

    # KV -------------------------------------------------------------------------------
    async def open_kv(self) -> None:
        js = self.app.nc.jetstream()
        try:
            self.kv = await js.key_value(dist.BUCKET)
        except (NotFoundError, BucketNotFoundError):
            try:
                self.kv = await js.create_key_value(KeyValueConfig(
                    bucket=dist.BUCKET, history=dist.BUCKET_HISTORY, replicas=self.settings.stream_replicas,
                    description=dist.BUCKET_DOC))
            except BadRequestError:
                self.kv = await js.key_value(dist.BUCKET)

    async def _write_kv(self, puts: dict[str, bytes], dels: list[str]) -> None:
        # new records and revocations first, then removals (a revoked key's rev.* lands before its key.* goes)
        items = list(puts.items())
        for i in range(0, len(items), KV_BATCH):
            await asyncio.gather(*(self.kv.put(k, v) for k, v in items[i:i + KV_BATCH]))
        for i in range(0, len(dels), KV_BATCH):
            await asyncio.gather(*(self.kv.delete(k) for k in dels[i:i + KV_BATCH]))

    async def resync_kv(self) -> int:
        """At start: make the bucket hold every record of the shared state (puts of what differs,
        deletes of known keys no longer accepted; keys this replica does not know are left alone,
        another replica may have just written them). Returns the number of changes."""
        have = await kv_snapshot(self.app.nc.jetstream(), dist.BUCKET)
        puts = {k: v for k, v in dist.desired_state(self.vault).items() if have.get(k) != v}
        dels = sorted({k for e in self.vault.list(include_revoked=True) for k in dist.entry_all(e)[1] if k in have})
        await self._write_kv(puts, dels)
        return len(puts) + len(dels)

    async def publish(self, changes: list[tuple[Entry | None, Entry, int]], full: bool = False) -> int:
        """Publish the records of committed changes (prev entry, new entry, its revision). When another
        replica changed one of these identities meanwhile, our writes may have landed after theirs:
        then publish the latest state in full, until no newer revision shows up."""
        puts: dict[str, bytes] = {}
        dels: list[str] = []
        for prev, new, _ in changes:
            p, d = dist.entry_all(new) if full else dist.entry_changes(prev, new)
            puts.update(p)
            dels += d
        await self._write_kv(puts, dels)
        n = len(puts) + len(dels)
        done = {new.node_id: rev for _, new, rev in changes}
        for _ in range(5):
            if not done:
                break
            await self.state.refresh()
            stale = [node for node, rev in done.items() if self.vault.revision(node) > rev]
            if not stale:
                break
            puts, dels = {}, []
            for node in stale:
                p, d = dist.entry_all(self.vault.entries[node])
                puts.update(p)
                dels += d
            done = {node: self.vault.revision(node) for node in stale}
            log.info("records of %d identities changed by another replica meanwhile; republished", len(stale))
            await self._write_kv(puts, dels)
            n += len(puts) + len(dels)
        return n

    async def audit(self, event: str, subject_id: str, details: dict[str, Any]) -> None:
        await self.app.audit(event, subject_id, {k: str(v) for k, v in details.items()})

    async def audit_nodes(self, event: str, items: list[tuple[str, Any]], common: dict[str, Any]) -> None:
        """One audit event per AUDIT_CHUNK nodes: details[<node id>] describes that node's step
        ("gen=2 sig=<id> kem=<id> retiring=1 until=<unix>" for a rotation, "gen=1 sig=<id> kem=<id>"
        for a retirement); subject_id is the node id when there is one node."""
        for i in range(0, len(items), AUDIT_CHUNK):
            chunk = items[i:i + AUDIT_CHUNK]
            details: dict[str, Any] = dict(common)
            for node, x in chunk:
                if hasattr(x, "new"):  # a RotationStep
                    details[node] = (f"gen={x.new.generation} sig={x.new.sig_key_id} kem={x.new.kem_key_id} "
                                     f"retiring={x.old.generation} until={x.old.retiring_until:.3f}")
                else:                  # a Generation
                    details[node] = f"gen={x.generation} sig={x.sig_key_id} kem={x.kem_key_id}"
            subject = chunk[0][0] if len(chunk) == 1 else f"{len(chunk)} nodes"
            await self.audit(event, subject, details)

    # RPCs -------------------------------------------------------------------------------
    async def IssueIdentity(self, req: pb.IssueIdentityRequest, via: str) -> pb.IssueIdentityResponse:
        if req.return_private and via != "grpc":
            raise PermissionDenied("private keys are only returned over gRPC, not over NATS")
        vault = self.vault
        async with self.lock:
            await self.state.refresh()
            res = await self.state.mutate([req.node_id], lambda n: vault.plan_issue(n), lambda e: e)
            e, rev = res[req.node_id]
            await self.publish([(None, e, rev)])
        await self.audit("identity.issued", e.node_id, {
            "spiffe_id": e.spiffe_id, "generation": e.generation, "sig_key_id": e.current.sig_key_id,
            "kem_key_id": e.current.kem_key_id, "private_returned": req.return_private, "via": via})
        resp = pb.IssueIdentityResponse(record=key_record(vault, e, e.current))
        if req.return_private:
            resp.private_bundle = e.current.identity.export_private_unsafe()
        return resp

    async def GetPublicKeys(self, req: pb.GetPublicKeysRequest, via: str) -> pb.KeyRecord:
        await self.state.refresh()
        e = self.vault.get(req.node_id)
        return key_record(self.vault, e, e.current, with_previous=True)

    async def ListIdentities(self, req: pb.ListIdentitiesRequest, via: str) -> pb.ListIdentitiesResponse:
        await self.state.refresh()
        return pb.ListIdentitiesResponse(records=[with_slim_previous(key_record(self.vault, e, e.current, True))
                                                  for e in self.vault.list(req.include_revoked)])

    async def Rotate(self, req: pb.RotateRequest, via: str) -> pb.RotateResponse:
        for n in req.node_ids:
            check_node_id(n)
        vault = self.vault
        t0 = time.perf_counter()
        async with self.lock:
            await self.state.refresh()
            overlap = vault.check_overlap(req.overlap_s)
            vault.check_request_id(req.request_id)
            steps, commits = [], []
            done = vault.done_request(req.request_id)
            if done is not None:
                targets = done
            else:
                targets = vault.resolve_targets(req.node_ids, req.all)
                if targets:
                    await self.audit("key.rotation.started", req.request_id or "-", {
                        "nodes": len(targets), "all": req.all, "overlap_s": overlap, "via": via})

                    def plan(n: str):  # a node revoked meanwhile by another replica is left as it is
                        prev = vault.entries[n]
                        return prev, (None if prev.revoked else vault.plan_rotate(n, overlap))
                    res = await self.state.mutate(targets, plan, lambda r: r[1].entry if r[1] else None)
                    commits = [(r[0], r[1], rev) for r, rev in (res[n] for n in targets) if r[1] is not None]
                    steps = [st for _, st, _ in commits]
                    if req.request_id:
                        await self.state.record_request(req.request_id, targets)
            t_gen = time.perf_counter()
            changes = await self.publish([(prev, st.entry, rev) for prev, st, rev in commits]) if steps else 0
            t_kv = time.perf_counter()
            early = [(st.node_id, st.retired_early) for st in steps if st.retired_early is not None]
            await self.audit_nodes("key.retired", early, {"why": "rotated again during its overlap"})
            await self.audit_nodes("key.rotated", [(st.node_id, st) for st in steps], {"overlap_s": overlap})
            if steps:
                t_end = time.perf_counter()
                timing = {"generate_persist_ms": f"{(t_gen - t0) * 1000:.1f}", "kv_ms": f"{(t_kv - t_gen) * 1000:.1f}",
                          "audit_ms": f"{(t_end - t_kv) * 1000:.1f}"}
                log.info("rotated %d identities: %s", len(steps), timing)
                await self.audit("key.rotation.published", req.request_id or "-", {
                    "nodes": len(steps), "kv_changes": changes, "bucket": dist.BUCKET, **timing})
        # each identity as this rotation left it (a later change by another replica shows on the next read)
        mine = {st.node_id: st.entry for st in steps}
        return pb.RotateResponse(records=[with_slim_previous(key_record(vault, e, e.current, True))
                                          for e in (mine.get(n) or vault.entries[n] for n in targets)])

    async def Revoke(self, req: pb.RevokeRequest, via: str) -> pb.KeyRecord:
        vault = self.vault
        async with self.lock:
            await self.state.refresh()

            def plan(n: str):
                prev = vault.entries.get(n)
                return prev, vault.plan_revoke(n, req.reason)
            res = await self.state.mutate([req.node_id], plan, lambda r: r[1])
            (prev, new), rev = res[req.node_id]
            changed = new is not None
            if changed:
                await self.publish([(prev, new, rev)])
        e = new if changed else vault.get(req.node_id)
        if changed:
            await self.audit("identity.revoked", e.node_id, {
                "reason": req.reason, "key_ids": ",".join(sorted(e.revocations)), "via": via})
        return key_record(vault, e, e.current, with_previous=True)

    async def Attest(self, req: pb.AttestRequest, via: str) -> pb.AttestResponse:
        await self.state.refresh()
        r = await asyncio.to_thread(self.vault.attest, req.node_id, req.challenge, req.signature)
        await self.audit("identity.attested", req.node_id, {"valid": r.valid, "key_id": r.key_id, "reason": r.reason})
        return pb.AttestResponse(valid=r.valid, reason=r.reason, key_id=r.key_id, generation=r.generation,
                                 status=r.status)

    async def Info(self, req: pb.InfoRequest, via: str) -> pb.InfoResponse:
        await self.state.refresh()
        b = backend_info()
        return pb.InfoResponse(backend=b.name, backend_version=b.version, algorithms=list(b.algorithms),
                               classical=list(b.classical), hybrids=list(b.hybrids),
                               root_public_key=self.vault.root_public.public_bytes(),
                               root_key_id=self.vault.root_key_id, identities=len(self.vault.list()),
                               kv_bucket=dist.BUCKET, default_overlap_s=self.vault.default_overlap_s)

    async def GetPrivateBundle(self, req: pb.GetPrivateBundleRequest, via: str) -> pb.IssueIdentityResponse:
        return (await self._export_private([req.node_id], via))[0]

    async def GetPrivateBundles(self, req: pb.GetPrivateBundlesRequest, via: str) -> pb.GetPrivateBundlesResponse:
        ids = list(req.node_ids)
        if not ids:
            raise InvalidArgument("GetPrivateBundles: node_ids is empty")
        if len(ids) > MAX_BUNDLES_PER_CALL:
            raise InvalidArgument(f"GetPrivateBundles: {len(ids)} node_ids, at most {MAX_BUNDLES_PER_CALL} per call")
        if len(set(ids)) != len(ids):
            dup = sorted({n for n in ids if ids.count(n) > 1})
            raise InvalidArgument(f"GetPrivateBundles: node_ids repeats {', '.join(map(repr, dup[:5]))}")
        return pb.GetPrivateBundlesResponse(bundles=await self._export_private(ids, via))

    async def _export_private(self, ids: list[str], via: str) -> list[pb.IssueIdentityResponse]:
        """The current private bundles of ``ids`` (gRPC only; one state refresh; audited, one event
        per AUDIT_CHUNK nodes); all or nothing: an unknown or revoked node fails the call, named."""
        if via != "grpc":
            raise PermissionDenied("private keys are only returned over gRPC, not over NATS")
        await self.state.refresh()
        entries = [self.vault.get(n) for n in ids]
        out = [pb.IssueIdentityResponse(record=key_record(self.vault, e, e.current),
                                        private_bundle=self.vault.private_bundle(e.node_id)) for e in entries]
        await self.audit_nodes("identity.private_exported", [(e.node_id, e.current) for e in entries], {"via": via})
        return out

    async def retire_due(self) -> int:
        """Retire generations whose overlap window passed. Every replica tries; the compare-and-set
        lets one retire each generation, the others re-read and find nothing left to do."""
        vault = self.vault
        nd = vault.next_deadline()
        if nd is None or time.time() < nd:
            return 0
        async with self.lock:
            due = vault.due()
            if not due:
                return 0

            def plan(n: str):
                return vault.entries.get(n), vault.plan_retire(n)
            res = await self.state.mutate(due, plan, lambda r: r[1].entry if r[1] else None)
            commits = [(r[0], r[1], rev) for r, rev in res.values() if r[1] is not None]
            if commits:
                await self.publish([(prev, ret.entry, rev) for prev, ret, rev in commits])
        await self.audit_nodes("key.retired", [(ret.node_id, ret.generation) for _, ret, _ in commits],
                               {"why": "overlap window elapsed"})
        return len(commits)


METHODS: dict[str, type] = {
    "IssueIdentity": pb.IssueIdentityRequest, "GetPublicKeys": pb.GetPublicKeysRequest,
    "Rotate": pb.RotateRequest, "Revoke": pb.RevokeRequest, "ListIdentities": pb.ListIdentitiesRequest,
    "Attest": pb.AttestRequest, "Info": pb.InfoRequest, "GetPrivateBundle": pb.GetPrivateBundleRequest,
    "GetPrivateBundles": pb.GetPrivateBundlesRequest,
}


def _servicer(api: KeyvaultApi) -> pb_grpc.KeyvaultServicer:
    def method(name: str):
        async def call(self, request, context: grpc.aio.ServicerContext):
            try:
                return await getattr(api, name)(request, "grpc")
            except KeyvaultError as e:
                await context.abort(getattr(grpc.StatusCode, e.code), str(e))
        call.__name__ = name
        return call
    cls = type("KeyvaultServicer", (pb_grpc.KeyvaultServicer,), {n: method(n) for n in METHODS})
    return cls()


class KeyvaultService(Service):
    """The Service runtime plus readiness of the gRPC server."""

    grpc_ready = False

    @property
    def ready(self) -> bool:
        return super().ready and self.grpc_ready


def build(settings: KeyvaultSettings, mk: MasterKey, keystore: Keystore) -> KeyvaultService:
    app = KeyvaultService("keyvault", settings)
    api = KeyvaultApi(app, settings)
    app.api = api  # type: ignore[attr-defined]
    state: dict[str, Any] = {}

    async def on_rpc(msg) -> None:
        method = msg.subject.rsplit(".", 1)[-1]
        data, headers = b"", None
        try:
            req_type = METHODS.get(method)
            if req_type is None:
                raise Unimplemented(f"unknown keyvault method {method!r}; known: {', '.join(METHODS)}")
            try:
                req = req_type.FromString(msg.data)
            except DecodeError as e:
                raise InvalidArgument(f"{method}: request is not a valid {req_type.__name__}: {e}") from None
            resp = await getattr(api, method)(req, "nats")
            data = resp.SerializeToString()
            if len(data) > app.nc.max_payload - 4096 and hasattr(resp, "records"):
                # too big for one NATS message: ids and status only (the keys are in the KV bucket)
                for r in resp.records:
                    slim(r)
                data, headers = resp.SerializeToString(), {"X0-Slim": "1"}
            if len(data) > app.nc.max_payload - 4096:
                raise KeyvaultError(f"{method}: reply of {len(data)} bytes exceeds the NATS max payload; use gRPC")
        except KeyvaultError as e:
            headers = {"X0-Error": f"{e.code}: {e}", "X0-Error-Code": e.code}
        except Exception as e:
            log.exception("keyvault.rpc.%s failed", method)
            headers = {"X0-Error": f"INTERNAL: {type(e).__name__}: {e}", "X0-Error-Code": "INTERNAL"}
        if msg.reply:
            try:
                await app.nc.publish(msg.reply, data, headers=headers)
            except Exception as e:  # noqa: BLE001
                log.error("keyvault.rpc.%s: cannot send the reply: %s", method, e)
                await app.nc.publish(msg.reply, b"", headers={"X0-Error": f"INTERNAL: cannot send the reply: {e}",
                                                              "X0-Error-Code": "INTERNAL"})

    @app.on_startup
    async def start() -> None:
        t0 = time.perf_counter()
        try:
            api.state, created, copied = await SharedVault.open(
                app.nc.jetstream(), mk, keystore, settings.trust_domain, validity_s=settings.key_validity_s,
                default_overlap_s=settings.rotation_overlap_s)
        except StateError as e:
            print(f"keyvault: config error: cannot open the shared keyvault state: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        vault = api.vault
        api.state.on_learn = api.on_learn
        await api.open_kv()
        n = await api.resync_kv()
        log.info("shared state: %d identities, root key %s%s, %d copied up from %s (%.0f ms)", len(vault.entries),
                 vault.root_key_id, " (new)" if created else "", copied, keystore.directory,
                 (time.perf_counter() - t0) * 1000)
        await api.audit("keyvault.opened", "keyvault", {
            "identities": len(vault.entries), "root_key_id": vault.root_key_id, "root_created": created,
            "copied_up": copied, "kv_resynced": n, "backend": backend_info().name})
        server = grpc.aio.server(options=[("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                                          ("grpc.max_receive_message_length", 4 * 1024 * 1024)])
        pb_grpc.add_KeyvaultServicer_to_server(_servicer(api), server)
        hs = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        try:
            port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
        except RuntimeError as e:
            raise SystemExit(f"keyvault: cannot listen for gRPC on {settings.grpc_host}:{settings.grpc_port}: {e}")
        await server.start()
        await hs.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await hs.set("", health_pb2.HealthCheckResponse.SERVING)
        state["grpc"], state["health"] = server, hs
        state["sub"] = await app.nc.subscribe(subjects.KEYVAULT_RPC.format(method="*"), queue=RPC_QUEUE, cb=on_rpc)
        app.grpc_port = port  # type: ignore[attr-defined]
        app.grpc_ready = True
        log.info("keyvault gRPC listening on %s:%d (%d identities, root key %s, backend %s); NATS rpc on %s",
                 settings.grpc_host, port, len(api.vault.entries), api.vault.root_key_id, backend_info().name,
                 subjects.KEYVAULT_RPC.format(method="*"))

    @app.background
    async def retire_loop() -> None:
        while True:
            await asyncio.sleep(settings.retire_tick_s)
            try:
                await api.retire_due()
                await api.repair_records()
            except KeyvaultError as e:   # contention or NATS away: next tick
                log.warning("retiring keys: %s", e)

    @app.on_shutdown
    async def stop() -> None:
        app.grpc_ready = False
        if "sub" in state:
            await state["sub"].unsubscribe()
        if "health" in state:
            await state["health"].enter_graceful_shutdown()
        if "grpc" in state:
            await state["grpc"].stop(1.0)
        if api.state is not None:
            await api.state.close()

    return app


def main() -> None:
    try:
        settings = load_settings(KeyvaultSettings)
    except ConfigError as e:
        print(f"keyvault: config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s keyvault %(levelname)s %(message)s")
    try:
        mk, keystore, note = open_keystore(settings)
    except ConfigError as e:
        print(f"keyvault: config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    log.info("%s; local keystore %s; shared state in JetStream bucket %s", note, keystore.directory, STATE_BUCKET)
    build(settings, mk, keystore).run()


if __name__ == "__main__":
    main()
