"""The keyvault replicas' shared state, over the key-value port (no broker here).

Bucket ``keyvault`` (in :mod:`x0tta6bl4.bus.subjects`); every value is sealed with
AES-256-GCM under the master key (:meth:`MasterKey.seal`, bound to ``keyvault/<key>``),
so the bus never carries a private key in the clear and a value cannot be moved
to another key::

    root            the root ML-DSA-65 private key (created once, create-only)
    node.<node-id>  the identity's entry (private exports of the active and
                    retiring generations, signed records, history, revocation)
    requests        recent rotate request ids -> target nodes (idempotent retries)

Concurrency: every write goes through :func:`x0tta6bl4.bus.ports.cas_update` on the key's
revision. A change is planned on the cache (key generation and root signatures, on a small
thread pool); when the bucket holds a newer revision than the one the plan started from
(another replica wrote first), the winner's entry is learned and the change planned again on
it, so two replicas never fork an identity.

:class:`SharedState` keeps the :class:`~x0tta6bl4.keyvault.vault.Vault` cache current by
reading the bucket (:meth:`SharedState.refresh`); the JetStream adapter of the keyvault
service (``services/keyvault/state.py``) follows it with a watcher instead and keeps local
encrypted copies (:meth:`SharedState.stored`).
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from x0tta6bl4.bus.ports import KV, CasConflict, KeyNotFound, cas_update
from x0tta6bl4.bus.ports import Entry as KVEntry
from x0tta6bl4.bus.ports import Unavailable as KVUnavailable
from x0tta6bl4.pqc import KeystoreError, KeyvaultRoot, MasterKey, MLDSA65PrivateKey
from x0tta6bl4.pqc.backend import Backend

from .errors import Aborted, Unavailable
from .vault import Entry, Vault

log = logging.getLogger("x0tta6bl4.keyvault")

BUCKET = "keyvault"
ROOT = "root"
REQUESTS = "requests"
NODE = "node."
CAS_ATTEMPTS = 16

Stored = tuple[str, bytes, int]
"""(bucket key, unsealed value, revision) of a write this replica made."""


class StateError(Exception):
    """The shared state cannot be opened (wrong master key, damaged entry): one clear line."""


def _what() -> str:
    return f"JetStream bucket {BUCKET!r} entry"


def seal(mk: MasterKey, key: str, data: bytes) -> bytes:
    return mk.seal(f"{BUCKET}/{key}", data)


def unseal(mk: MasterKey, key: str, blob: bytes) -> bytes:
    return mk.unseal(f"{BUCKET}/{key}", blob, what=_what())


async def load_root(kv: KV, mk: MasterKey, *, local_root: Callable[[], bytes | None] = lambda: None,
                    backend: Backend | None = None) -> tuple[KeyvaultRoot, bool]:
    """The root key from the bucket, or (once, create-only) a new one: ``local_root()`` (a keystore
    from before replication keeps its root and its identities) or a generated key. Returns (root,
    created). Raises StateError naming the problem (another master key, a damaged entry)."""
    def load(blob: bytes) -> KeyvaultRoot:
        return KeyvaultRoot(MLDSA65PrivateKey.from_private_bytes(unseal(mk, ROOT, blob), backend=backend))

    try:
        try:
            return load((await kv.get(ROOT)).value), False
        except KeyNotFound:
            pass
        local = local_root()
        raw = local or KeyvaultRoot.generate(backend=backend).private_key.private_bytes_unsafe()
        try:
            await kv.create(ROOT, seal(mk, ROOT, raw))
        except CasConflict:   # another replica created it a moment ago: use theirs
            return load((await kv.get(ROOT)).value), False
        return KeyvaultRoot(MLDSA65PrivateKey.from_private_bytes(raw, backend=backend)), local is None
    except KeystoreError as e:
        raise StateError(f"{e} (every keyvault replica needs the same master key: "
                         f"X0TTA6BL4_MASTER_KEY or X0TTA6BL4_MASTER_KEY_FILE)") from None
    except KVUnavailable as e:
        raise StateError(f"cannot read bucket {BUCKET!r}: {e}") from None


class SharedState:
    """A :class:`Vault` cache of the ``keyvault`` bucket; changes written by compare-and-set."""

    def __init__(self, kv: KV, vault: Vault, mk: MasterKey, *, plan_threads: int | None = None) -> None:
        self.kv, self.vault, self.mk = kv, vault, mk
        self.bad = 0                     # bucket values that did not open (counted, skipped)
        # planning = key generation + root ML-DSA-65 signatures; OpenSSL releases the GIL, so a
        # "rotate all" plans on every core (50 identities: 270 ms on one thread, 145 ms on two)
        self._plan_pool = ThreadPoolExecutor(max_workers=plan_threads or min(4, os.cpu_count() or 1),
                                             thread_name_prefix="keyvault-plan")
        self.on_learn: Callable[[str, Entry | None, Entry | None], None] | None = None

    @classmethod
    async def open(cls, kv: KV, mk: MasterKey, trust_domain: str, **vault_kw: Any) -> tuple[SharedState, bool]:
        """Load (or create once) the root key, then every identity of the bucket. Returns (state,
        root_created); StateError when the bucket was sealed under another master key."""
        root, created = await load_root(kv, mk, backend=vault_kw.get("backend"))
        st = cls(kv, Vault(root, trust_domain, **vault_kw), mk)
        await st.refresh()
        return st, created

    # ---- sealing ----------------------------------------------------------------------------
    def seal(self, key: str, data: bytes) -> bytes:
        return seal(self.mk, key, data)

    def unseal(self, key: str, blob: bytes) -> bytes:
        return unseal(self.mk, key, blob)

    def decode(self, node: str, blob: bytes) -> Entry:
        return self.vault.decode_entry(self.unseal(NODE + node, blob))

    # ---- the cache ----------------------------------------------------------------------------
    def learn(self, node: str, entry: Entry | None, rev: int) -> bool:
        """Take ``entry`` at bucket revision ``rev`` unless the cache holds that one or newer;
        ``on_learn`` hears of every change that was not this replica's own write."""
        prev = self.vault.entries.get(node)
        changed = self.vault.learn(node, entry, rev)
        if changed and self.on_learn is not None:
            self.on_learn(node, prev, entry)
        return changed

    async def refresh(self) -> None:
        """Return once the cache holds every write the bucket acknowledged before this call (here:
        read the bucket; the JetStream adapter waits for its watcher instead)."""
        try:
            keys = await self.kv.keys()
            await asyncio.gather(*(self.reread(k[len(NODE):]) for k in keys if k.startswith(NODE)))
            if REQUESTS in keys:
                await self.reread_requests()
        except KVUnavailable as e:
            raise Unavailable(f"keyvault state: cannot reach bucket {BUCKET!r}: {e}") from None

    async def reread(self, node: str) -> None:
        """Read one identity straight from the bucket."""
        try:
            e = await self.kv.get(NODE + node)
        except KeyNotFound:
            return
        if e.revision > self.vault.revision(node):
            self.learn(node, await asyncio.to_thread(self.decode, node, e.value), e.revision)

    async def reread_requests(self) -> None:
        try:
            e = await self.kv.get(REQUESTS)
        except KeyNotFound:
            return
        self._learn_requests(e)

    def _learn_requests(self, e: KVEntry) -> None:
        if e.revision > self.vault.requests_revision:
            self.vault.learn_requests(self.vault.decode_requests(self.unseal(REQUESTS, e.value)), e.revision)

    async def stored(self, items: list[Stored]) -> None:
        """Called with what this replica wrote, before the change is answered (the JetStream adapter
        keeps local encrypted copies). Nothing here."""

    # ---- writes ---------------------------------------------------------------------------------
    async def _cas(self, key: str, change: Callable[[KVEntry | None], bytes | None]):
        try:
            return await cas_update(self.kv, key, change, tries=CAS_ATTEMPTS)
        except KVUnavailable as e:
            raise Unavailable(f"keyvault state: cannot reach bucket {BUCKET!r}: {e}") from None

    async def commit(self, entries: list[tuple[Entry, int]]) -> list[int | None]:
        """Write each (entry, bucket revision it was made from) if the bucket still holds that revision
        (0: no entry); learn and store the ones written. Returns each new revision, None where another
        replica wrote first (nothing is planned again)."""
        async def one(e: Entry, last: int) -> int | None:
            data = self.vault.encode_entry(e)

            def change(cur: KVEntry | None) -> bytes | None:
                return self.seal(NODE + e.node_id, data) if (cur.revision if cur else 0) == last else None
            res = await self._cas(NODE + e.node_id, change)
            return res.revision if res.written else None
        revs = await asyncio.gather(*(one(e, last) for e, last in entries))
        done = []
        for (e, _), rev in zip(entries, revs, strict=True):
            if rev is not None:
                self.learn(e.node_id, e, rev)
                done.append((NODE + e.node_id, self.vault.encode_entry(e), rev))
        await self.stored(done)
        return revs

    async def mutate(self, nodes: list[str], plan: Callable[[str], Any],
                     entry_of: Callable[[Any], Entry | None]) -> dict[str, Any]:
        """Plan a change of each node on the cache (``plan(node)``, on the planning threads;
        ``entry_of(result)`` is the new entry, None for no change) and write it by compare-and-set.
        Where another replica wrote first, its entry is learned and the change planned again on it.
        Returns node -> (result of the plan that was written, its revision), or (result, None) for a
        plan that changed nothing. Aborted after CAS_ATTEMPTS lost races on one node."""
        loop = asyncio.get_running_loop()
        base = {n: self.vault.revision(n) for n in nodes}
        first = await asyncio.gather(*(loop.run_in_executor(self._plan_pool, plan, n) for n in nodes))
        lost: list[str] = []

        async def one(node: str, result: Any) -> tuple[Any, Entry | None, int | None]:
            at = base[node]

            def change(cur: KVEntry | None) -> bytes | None:
                nonlocal result, at
                rev = cur.revision if cur else 0
                if rev != at:    # another replica wrote since this plan was made: plan again on its entry
                    if cur is not None:
                        self.learn(node, self.decode(node, cur.value), rev)
                    lost.append(node)
                    result, at = plan(node), rev
                new = entry_of(result)
                return None if new is None else self.seal(NODE + node, self.vault.encode_entry(new))
            try:
                res = await self._cas(NODE + node, change)
            except CasConflict:
                raise Aborted(f"could not update {node}: {CAS_ATTEMPTS} concurrent changes in a row; "
                              f"try again") from None
            return result, entry_of(result), (res.revision if res.written else None)

        done = await asyncio.gather(*(one(n, r) for n, r in zip(nodes, first, strict=True)), return_exceptions=True)
        if lost:
            log.info("keyvault state: %d write(s) lost to another replica (%s); planned again on theirs",
                     len(lost), ", ".join(sorted(set(lost))[:5]))
        out: dict[str, Any] = {}
        stored: list[Stored] = []
        for n, d in zip(nodes, done, strict=True):
            if isinstance(d, BaseException):
                continue
            result, entry, rev = d
            out[n] = (result, rev)
            if rev is not None and entry is not None:
                self.learn(n, entry, rev)
                stored.append((NODE + n, self.vault.encode_entry(entry), rev))
        await self.stored(stored)
        for d in done:
            if isinstance(d, BaseException):
                raise d
        return out

    async def record_request(self, request_id: str, targets: list[str]) -> None:
        """Add a rotate request id to the shared request log (idempotent retries)."""
        reqs: dict[str, list[str]] = {}

        def change(cur: KVEntry | None) -> bytes:
            nonlocal reqs
            if cur is not None:
                self._learn_requests(cur)
            reqs = self.vault.with_request(request_id, targets)
            return self.seal(REQUESTS, self.vault.encode_requests(reqs))
        try:
            res = await self._cas(REQUESTS, change)
        except CasConflict:
            raise Aborted("could not record the rotate request id: too many concurrent changes; try again") from None
        self.vault.learn_requests(reqs, res.revision)
        await self.stored([(REQUESTS, self.vault.encode_requests(reqs), res.revision)])

    async def create_requests(self, reqs: dict[str, list[str]]) -> bool:
        """Write the request log if the bucket has none (a local log copied up). Whether it was written."""
        data = self.vault.encode_requests(reqs)
        res = await self._cas(REQUESTS, lambda cur: self.seal(REQUESTS, data) if cur is None else None)
        if res.written:
            self.vault.learn_requests(reqs, res.revision)
        return res.written

    async def close(self) -> None:
        self._plan_pool.shutdown(wait=True)
