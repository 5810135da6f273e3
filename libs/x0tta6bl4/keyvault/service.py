"""The keyvault application service: the use cases, on ports (no nats, no grpc here).

    svc = KeyvaultService(state, keys, audit)          # state: SharedState (x0tta6bl4.keyvault.shared)
    entry = await svc.issue("op-alice")                 # custodial: keyvault generates the keys
    entry = await svc.certify(request)                  # node-held: the node generated them (certify.py)
    entries = await svc.rotate(["n1"], overlap_s=60)    # custodial: now; node-held: a request, then a wait
    entry, wrapped, kid = await svc.export_identity("edge1", recipient_public_key)   # single use
    await svc.retire_due()                              # the background tick

Rotation of a node-held identity: keyvault cannot generate its keys, so ``rotate`` records a root-signed
rotation request in the identity's entry (durable in the shared state) and publishes it as ``rot.<node>`` in
the ``keys`` bucket; the node's holder (its mesh host) generates the next generation and certifies it, which
clears the request. ``rotate`` waits for that (outside the lock, at most ``wait_s``, default
``rotation_wait_s``) and returns the new entries; an identity not certified in time is returned unchanged
with its request pending (audited ``key.rotation.pending``).

What it talks to:

* ``state``: the replicas' shared state (:class:`~x0tta6bl4.keyvault.shared.SharedState` or its
  JetStream adapter): the identity cache, changes written by compare-and-set;
* ``keys``: the public bucket ``keys`` (:mod:`.distribution`) behind the key-value port: root-signed
  records node agents verify, kept equal to the state after every change;
* ``audit(event_type, subject_id, details)``: every issue / certify / rotate (request) / retire / revoke /
  attest / export is an audit event;
* the clock: the vault's (deadlines of overlap windows) and a monotonic one (record repairs).

The gRPC servicer and the NATS request/reply routing of the service (``services/keyvault``)
map protobuf to these calls and errors (:class:`~x0tta6bl4.keyvault.errors.KeyvaultError`, each
with its gRPC status code name) to status codes.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from x0tta6bl4.bus.ports import KV, KeyNotFound
from x0tta6bl4.pqc import PQCError, backend_info, wrap_bundle
from x0tta6bl4.pqc.backend import BackendInfo
from x0tta6bl4.pqc.wrap import recipient_key_id

from . import certify as cert
from . import distribution as dist
from .errors import InvalidArgument, KeyvaultError, PermissionDenied
from .vault import AttestResult, Entry, Generation, Vault, check_node_id

log = logging.getLogger("x0tta6bl4.keyvault")

VIA_GRPC, VIA_NATS = "grpc", "nats"
KV_BATCH = 64             # concurrent writes to the keys bucket in flight
AUDIT_CHUNK = 50          # nodes per rotation/retirement audit event
REPAIR_AFTER_S = 2.0      # a change by another replica: its records are checked this long after
DEFAULT_ROTATION_WAIT_S = 10.0   # how long Rotate waits for node-held identities to certify their next generation
MAX_ROTATION_WAIT_S = 300.0
WAIT_POLL_S = 0.5         # while waiting, the state is re-read this often (a missed change notification)

Audit = Callable[[str, str, dict[str, Any]], Awaitable[None]]
Snapshot = Callable[[], Awaitable[dict[str, bytes]]]


class State(Protocol):
    """The shared state port (:class:`x0tta6bl4.keyvault.shared.SharedState`)."""

    vault: Vault
    on_learn: Callable[[str, Entry | None, Entry | None], None] | None

    async def refresh(self) -> None: ...

    async def mutate(self, nodes: list[str], plan: Callable[[str], Any],
                     entry_of: Callable[[Any], Entry | None]) -> dict[str, Any]: ...

    async def record_request(self, request_id: str, targets: list[str]) -> None: ...


@dataclass(frozen=True)
class Info:
    backend: BackendInfo
    root_public_key: bytes
    root_key_id: str
    identities: int
    kv_bucket: str
    default_overlap_s: float


async def read_bucket(kv: KV) -> dict[str, bytes]:
    """Every key and value of a bucket through the port (the JetStream adapter passes a one-watch
    snapshot instead)."""
    out: dict[str, bytes] = {}

    async def one(k: str) -> None:
        with contextlib.suppress(KeyNotFound):
            out[k] = (await kv.get(k)).value
    await asyncio.gather(*(one(k) for k in await kv.keys()))
    return out


def _check_private(via: str) -> None:
    if via != VIA_GRPC:
        raise PermissionDenied("private keys are only exported over gRPC (mutual TLS), not over NATS")


class KeyvaultService:
    """Issue, rotate, revoke, attest, export; keep the ``keys`` bucket equal to the shared state."""

    def __init__(self, state: State, keys: KV, audit: Audit, *, snapshot: Snapshot | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 hosted: Callable[[], frozenset[str]] | None = None,
                 rotation_wait_s: float = DEFAULT_ROTATION_WAIT_S) -> None:
        self.state, self.keys, self._audit = state, keys, audit
        self.rotation_wait_s = float(rotation_wait_s)
        self._changed = asyncio.Event()    # replaced on every learned change (rotate waits on it)
        # the nodes the deployment's mesh hosts run (hosts.json): "rotate all" rotates these, not the
        # identities of operators and voters, unless asked (None or empty: every identity is a node)
        self.hosted = hosted
        self.certify_checker = cert.Checker()
        self.snapshot: Snapshot = snapshot or (lambda: read_bucket(keys))
        self.monotonic = monotonic
        self.lock = asyncio.Lock()         # one change at a time in this replica
        self.learned: dict[str, float] = {}   # node id -> when a change by another replica was seen
        state.on_learn = self.on_learn

    @property
    def vault(self) -> Vault:
        return self.state.vault

    # ---- audit ------------------------------------------------------------------------------
    async def audit(self, event: str, subject_id: str, details: dict[str, Any]) -> None:
        await self._audit(event, subject_id, dict(details))   # typed: x0tta6bl4.audit.chain.detail_value

    async def audit_nodes(self, event: str, items: list[tuple[str, Any]], common: dict[str, Any]) -> None:
        """One audit event per AUDIT_CHUNK nodes: details[<node id>] describes that node's step
        ("gen=2 sig=<id> kem=<id> retiring=1 until=<unix>" for a rotation, "gen=1 sig=<id> kem=<id>"
        for a retirement or an export); subject_id is the node id when there is one node."""
        for i in range(0, len(items), AUDIT_CHUNK):
            chunk = items[i:i + AUDIT_CHUNK]
            details: dict[str, Any] = dict(common)
            for node, x in chunk:
                if isinstance(x, str):
                    details[node] = x
                elif isinstance(x, Generation):
                    details[node] = f"gen={x.generation} sig={x.sig_key_id} kem={x.kem_key_id}"
                else:              # a RotationStep
                    details[node] = (f"gen={x.new.generation} sig={x.new.sig_key_id} kem={x.new.kem_key_id} "
                                     f"retiring={x.old.generation} until={x.old.retiring_until:.3f}")
            subject = chunk[0][0] if len(chunk) == 1 else f"{len(chunk)} nodes"
            await self.audit(event, subject, details)

    # ---- the keys bucket -----------------------------------------------------------------------
    async def _write_kv(self, puts: dict[str, bytes], dels: list[str]) -> None:
        # new records and revocations first, then removals (a revoked key's rev.* lands before its key.* goes)
        items = list(puts.items())
        for i in range(0, len(items), KV_BATCH):
            await asyncio.gather(*(self.keys.put(k, v) for k, v in items[i:i + KV_BATCH]))
        for i in range(0, len(dels), KV_BATCH):
            await asyncio.gather(*(self.keys.delete(k) for k in dels[i:i + KV_BATCH]))

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

    async def resync(self) -> int:
        """At start: make the bucket hold every record of the shared state (puts of what differs,
        deletes of known keys no longer accepted; keys this replica does not know are left alone,
        another replica may have just written them). Returns the number of changes."""
        have = await self.snapshot()
        puts = {k: v for k, v in dist.desired_state(self.vault).items() if have.get(k) != v}
        dels = sorted({k for e in self.vault.list(include_revoked=True) for k in dist.entry_all(e)[1] if k in have})
        await self._write_kv(puts, dels)
        return len(puts) + len(dels)

    async def opened(self, root_created: bool, copied_up: int) -> int:
        """At start, once the shared state is open: resync the keys bucket, audit the opening.
        Returns the number of bucket changes."""
        n = await self.resync()
        await self.audit("keyvault.opened", "keyvault", {
            "identities": len(self.vault.entries), "root_key_id": self.vault.root_key_id,
            "root_created": root_created, "copied_up": copied_up, "kv_resynced": n, "backend": backend_info().name})
        return n

    def on_learn(self, node: str, prev: Entry | None, new: Entry | None) -> None:
        """A change committed by another replica: check its records a little later (repair them if
        that replica died between its commit and its publish). Wakes rotations waiting for certifications."""
        self.learned.setdefault(node, self.monotonic())
        self._notify()

    def _notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def repair_records(self) -> int:
        """Republish the records of identities changed by other replicas whose records in the bucket
        are still not what the identity says, REPAIR_AFTER_S after the change was seen."""
        now = self.monotonic()
        due = [n for n, t in self.learned.items() if now - t >= REPAIR_AFTER_S]
        fixed = 0
        for node in due:
            del self.learned[node]
            e = self.vault.entries.get(node)
            if e is None or await self._records_match(e):
                continue
            async with self.lock:
                await self.publish([(None, e, self.vault.revision(node))], full=True)
            fixed += 1
        if fixed:
            log.warning("repaired the records of %d identities another replica changed but did not publish", fixed)
        return fixed

    async def _records_match(self, e: Entry) -> bool:
        want, dels = dist.entry_all(e)
        for k, v in want.items():
            try:
                if (await self.keys.get(k)).value != v:
                    return False
            except KeyNotFound:
                return False
        for k in dels:
            try:
                await self.keys.get(k)
                return False
            except KeyNotFound:
                pass
        return True

    # ---- use cases -------------------------------------------------------------------------------
    async def issue(self, node_id: str, via: str = VIA_GRPC) -> Entry:
        """A new custodial identity (keyvault generates and keeps its private keys; they leave keyvault only
        through :meth:`export_identity`, once)."""
        vault = self.vault
        async with self.lock:
            await self.state.refresh()
            res = await self.state.mutate([node_id], vault.plan_issue, lambda e: e)
            e, rev = res[node_id]
            await self.publish([(None, e, rev)])
        await self.audit("identity.issued", e.node_id, {
            "spiffe_id": e.spiffe_id, "generation": e.generation, "sig_key_id": e.current.sig_key_id,
            "kem_key_id": e.current.kem_key_id, "custodial": True, "via": via})
        return e

    async def certify(self, req: cert.CertifyRequest, overlap_s: float = 0.0, via: str = VIA_GRPC) -> Entry:
        """Certify public keys the node generated itself (CSR-style, proof of possession checked): its first
        generation or the next one, the previous retiring for ``overlap_s`` (0: the pending rotation request's
        overlap if there is one, else the default). Keyvault never sees the private keys; the records are
        root-signed and published like any others. A pending rotation request is answered (``rot.<node>``
        deleted)."""
        check_node_id(req.node_id)
        vault = self.vault
        try:
            self.certify_checker.check(req, vault.clock())
        except KeyvaultError as err:
            await self.audit("key.certify.refused", req.node_id, {"reason": str(err), "via": via})
            raise
        async with self.lock:
            await self.state.refresh()
            cur = vault.entries.get(req.node_id)
            pending = cur.rotation_request() if cur is not None else None
            overlap = pending.overlap_s if pending is not None and not overlap_s else vault.check_overlap(overlap_s)

            def plan(n: str):
                return vault.plan_certify(n, req.signing_public_key, req.kem_public_key, overlap)

            def entry_of(r):
                return None if r[1] is r[0] else r[1]
            res = await self.state.mutate([req.node_id], plan, entry_of)
            (prev, e, step), rev = res[req.node_id]
            if e is not prev:
                await self.publish([(prev, e, rev)])
        if e is prev:
            return e
        if step is not None and step.retired_early is not None:
            await self.audit_nodes("key.retired", [(e.node_id, step.retired_early)],
                                   {"why": "rotated again during its overlap"})
        answered = prev.rotation_request() if prev is not None else None
        self._notify()
        await self.audit("key.certified", e.node_id, {
            "spiffe_id": e.spiffe_id, "generation": e.generation, "sig_key_id": e.current.sig_key_id,
            "kem_key_id": e.current.kem_key_id, "retiring": step.old.generation if step else "-",
            "overlap_s": overlap if step else "-", "private_held_by_keyvault": False, "via": via,
            "rotation_request": answered.request_id if answered else "-"})
        return e

    async def public_keys(self, node_id: str) -> Entry:
        await self.state.refresh()
        return self.vault.get(node_id)

    async def list_identities(self, include_revoked: bool = False) -> list[Entry]:
        await self.state.refresh()
        return self.vault.list(include_revoked)

    def check_wait(self, wait_s: float | None) -> float:
        """How long Rotate waits for node-held identities: 0/None the default, negative not at all."""
        if wait_s is None or wait_s == 0:
            return self.rotation_wait_s
        if wait_s != wait_s or wait_s > MAX_ROTATION_WAIT_S:      # NaN or too long
            raise InvalidArgument(f"wait_s must be at most {MAX_ROTATION_WAIT_S:g} seconds (0 = default "
                                  f"{self.rotation_wait_s:g} s, negative = do not wait), got {wait_s!r}")
        return max(float(wait_s), 0.0)

    async def rotate(self, node_ids: list[str], all_nodes: bool = False, overlap_s: float = 0.0,
                     request_id: str = "", via: str = VIA_GRPC, include_operators: bool = False,
                     wait_s: float = 0.0) -> list[Entry]:
        """Rotate the given nodes (or all: the nodes mesh hosts run, plus the other identities, such as
        operators' and voters', with ``include_operators``), the old generation retiring for ``overlap_s``
        (0: the default). A custodial identity gets its new generation at once (keyvault generates it); a
        node-held one gets a rotation request (``rot.<node>``) its holder answers by certifying the next
        generation, which this call then waits for (outside the lock, at most ``wait_s``: 0 the default
        ``rotation_wait_s``, negative not at all). A repeated ``request_id`` changes nothing again (and waits
        the same way). Returns each identity as this rotation left it: a node-held one not certified in time
        unchanged, its request still pending (``Entry.rotation_request()``; audited ``key.rotation.pending``
        when the call waited)."""
        for n in node_ids:
            check_node_id(n)
        wait = self.check_wait(wait_s)
        vault = self.vault
        t0 = time.perf_counter()
        steps: list[Any] = []
        requested: list[Entry] = []
        commits: list[tuple[Entry | None, Entry, int]] = []
        async with self.lock:
            await self.state.refresh()
            overlap = vault.check_overlap(overlap_s)
            vault.check_request_id(request_id)
            done = vault.done_request(request_id)
            if done is not None:
                targets = done
            else:
                targets = vault.resolve_targets(node_ids, all_nodes)
                hosted = self.hosted() if self.hosted is not None and all_nodes and not include_operators \
                    else frozenset()
                if hosted:
                    targets = [n for n in targets if n in hosted]
                if targets:
                    rid = request_id or f"rot-{uuid.uuid4().hex[:16]}"
                    held = sum(not vault.entries[n].custodial for n in targets)
                    await self.audit("key.rotation.started", request_id or "-", {
                        "nodes": len(targets), "custodial": len(targets) - held, "node_held": held,
                        "all": all_nodes, "include_operators": include_operators, "overlap_s": overlap,
                        "request_id": rid, "via": via})

                    def plan(n: str):  # a node revoked meanwhile by another replica is left as it is
                        prev = vault.entries[n]
                        if prev.revoked:
                            return prev, None, None
                        if prev.custodial:
                            return prev, vault.plan_rotate(n, overlap), None
                        return prev, None, vault.plan_request_rotation(n, overlap, rid)

                    def entry_of(r):
                        return r[1].entry if r[1] is not None else r[2]
                    res = await self.state.mutate(targets, plan, entry_of)
                    for n in targets:
                        (prev, st, req), rev = res[n]
                        if rev is None:
                            continue
                        if st is not None:
                            steps.append(st)
                            commits.append((prev, st.entry, rev))
                        elif req is not None:
                            requested.append(req)
                            commits.append((prev, req, rev))
                    if request_id:
                        await self.state.record_request(request_id, targets)
            t_gen = time.perf_counter()
            changes = await self.publish(commits) if commits else 0
            t_kv = time.perf_counter()
            early = [(st.node_id, st.retired_early) for st in steps if st.retired_early is not None]
            await self.audit_nodes("key.retired", early, {"why": "rotated again during its overlap"})
            await self.audit_nodes("key.rotated", [(st.node_id, st) for st in steps], {"overlap_s": overlap})
            await self.audit_nodes("key.rotation.requested", [(e.node_id, _request_line(e)) for e in requested],
                                   {"overlap_s": overlap, "key": "rot.<node-id>", "bucket": dist.BUCKET})
            if commits:
                t_end = time.perf_counter()
                timing = {"generate_persist_ms": f"{(t_gen - t0) * 1000:.1f}", "kv_ms": f"{(t_kv - t_gen) * 1000:.1f}",
                          "audit_ms": f"{(t_end - t_kv) * 1000:.1f}"}
                log.info("rotated %d identities, requested %d rotations: %s", len(steps), len(requested), timing)
                await self.audit("key.rotation.published", request_id or "-", {
                    "nodes": len(steps), "requested": len(requested), "kv_changes": changes, "bucket": dist.BUCKET,
                    **timing})
        # outside the lock (the certifications need it): wait for the node-held identities' new generations
        pending = await self.await_certified(targets, wait)
        if pending and wait > 0:           # (a caller that chose not to wait learns it from the reply)
            await self.audit_nodes("key.rotation.pending", [(n, _request_line(self.vault.entries[n]))
                                                            for n in pending],
                                   {"waited_s": f"{wait:g}", "request_id": request_id or "-"})
        # each identity as this rotation left it (a later change by another replica shows on the next read)
        mine = {st.node_id: st.entry for st in steps}
        return [mine.get(n) or vault.entries[n] for n in targets]

    def pending_rotations(self, node_ids: list[str]) -> list[str]:
        """Those of ``node_ids`` with a rotation request still pending."""
        out = []
        for n in node_ids:
            e = self.vault.entries.get(n)
            if e is not None and e.rotation_request() is not None:
                out.append(n)
        return out

    async def await_certified(self, node_ids: list[str], wait_s: float) -> list[str]:
        """Wait up to ``wait_s`` until no node of ``node_ids`` has a pending rotation request (each certified
        its next generation, or was revoked). Returns those still pending."""
        deadline = time.monotonic() + wait_s
        while True:
            pending = self.pending_rotations(node_ids)
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return pending
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, WAIT_POLL_S))
            with contextlib.suppress(KeyvaultError):
                await self.state.refresh()

    async def revoke(self, node_id: str, reason: str = "", via: str = VIA_GRPC) -> Entry:
        """Revoke every key of the node (a revocation record per key in the keys bucket); revoking
        a revoked node changes nothing."""
        vault = self.vault
        async with self.lock:
            await self.state.refresh()

            def plan(n: str):
                return vault.entries.get(n), vault.plan_revoke(n, reason)
            res = await self.state.mutate([node_id], plan, lambda r: r[1])
            (prev, new), rev = res[node_id]
            if new is not None:
                await self.publish([(prev, new, rev)])
        if new is None:
            return vault.get(node_id)
        await self.audit("identity.revoked", new.node_id, {
            "reason": reason, "key_ids": ",".join(sorted(new.revocations)), "via": via})
        return new

    async def attest(self, node_id: str, challenge: bytes, signature: bytes) -> AttestResult:
        await self.state.refresh()
        r = await asyncio.to_thread(self.vault.attest, node_id, challenge, signature)
        await self.audit("identity.attested", node_id, {"valid": r.valid, "key_id": r.key_id, "reason": r.reason})
        return r

    async def info(self) -> Info:
        await self.state.refresh()
        v = self.vault
        return Info(backend_info(), v.root_public.public_bytes(), v.root_key_id, len(v.list()), dist.BUCKET,
                    v.default_overlap_s)

    async def export_identity(self, node_id: str, recipient_public_key: bytes,
                              via: str = VIA_GRPC) -> tuple[Entry, bytes, str]:
        """Offline edge provisioning: the current generation's private bundle of a custodial identity, wrapped
        to the recipient's ML-KEM-768 key (:mod:`x0tta6bl4.pqc.wrap`; AAD: node id, generation, recipient key
        id). Single use: keyvault's copies of the node's private keys are destroyed in the same compare-and-set
        (two replicas cannot both export), the identity is node-held from then on (rotations are requests).
        gRPC only. Returns (entry after the export, wrapped bundle, recipient key id); audited
        ``identity.private_exported`` (recipient key id, never a key)."""
        _check_private(via)
        check_node_id(node_id)
        try:
            kid = recipient_key_id(bytes(recipient_public_key))
        except PQCError as bad:
            raise InvalidArgument(f"recipient_kem_public_key: {bad}") from None
        vault = self.vault
        try:
            async with self.lock:
                await self.state.refresh()

                def plan(n: str):
                    new, ident = vault.plan_export(n, kid)
                    wrapped = wrap_bundle(ident.export_private_unsafe(), bytes(recipient_public_key), n,
                                          new.generation)
                    return new, wrapped
                res = await self.state.mutate([node_id], plan, lambda r: r[0])
        except KeyvaultError as err:
            await self.audit("identity.export.refused", node_id, {"reason": str(err), "recipient_key_id": kid,
                                                                  "via": via})
            raise
        (out, wrapped), _ = res[node_id]
        await self.audit("identity.private_exported", node_id, {
            "generation": out.generation, "sig_key_id": out.current.sig_key_id, "kem_key_id": out.current.kem_key_id,
            "recipient_key_id": kid, "wrapping": "ML-KEM-768+HKDF-SHA256+AES-256-GCM", "single_use": True,
            "private_held_by_keyvault": False, "via": via})
        return out, wrapped, kid

    async def retire_due(self) -> int:
        """Retire generations whose overlap window passed. Every replica tries; the compare-and-set
        lets one retire each generation, the others re-read and find nothing left to do."""
        vault = self.vault
        nd = vault.next_deadline()
        if nd is None or vault.clock() < nd:
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

    async def tick(self) -> tuple[int, int]:
        """One iteration of :func:`retire_loop`: (generations retired, identities repaired)."""
        return await self.retire_due(), await self.repair_records()


def _request_line(e: Entry) -> str:
    r = e.rotation_request()
    return f"from_gen={r.from_generation} overlap_s={r.overlap_s:g} request={r.request_id}" if r else \
        f"gen={e.generation}"


async def retire_loop(service: Callable[[], KeyvaultService], every_s: float) -> None:
    """Retire due keys and repair records every ``every_s`` seconds (``service()``: the service,
    made at start-up); contention or the broker away is logged and tried again on the next tick."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await service().tick()
        except KeyvaultError as e:
            log.warning("retiring keys: %s", e)
