"""The keyvault replicas' shared state in JetStream (the I/O half of the domain in
:mod:`x0tta6bl4.keyvault.vault`).

Bucket ``keyvault`` (in :mod:`x0tta6bl4.bus.subjects`); every value is sealed with
AES-256-GCM under the master key (:meth:`MasterKey.seal`, bound to ``keyvault/<key>``),
so the bus never carries a private key in the clear and a value cannot be moved
to another key::

    root            the root ML-DSA-65 private key (created once, create-only)
    node.<node-id>  the identity's entry (private exports of the active and
                    retiring generations, signed records, history, revocation)
    requests        recent rotate request ids -> target nodes (idempotent retries)

Concurrency: every write is a compare-and-set on the key's revision (``create``
for a new key, ``update(last=revision)`` otherwise). A replica whose write is
refused re-reads the key and plans the change again on the winner's state, so
two replicas never fork an identity. A watcher keeps each replica's cache equal
to the bucket; before answering, a replica waits until its watcher has reached
the bucket's last sequence (:meth:`SharedVault.refresh`), so it answers with
every write acknowledged before the request arrived, whichever replica made it.

Each replica also keeps the entries in its local encrypted keystore
(``<data_dir>/keyvault``, one atomic fsync'd file per entry) as a cache and
backup: the replica that commits a change writes its file before replying, the
others write theirs when their watcher sees the change. At start a replica loads
the bucket and copies up any local entry the bucket lacks or holds in an older
version (migration from a single-machine keystore, or a bucket rebuilt).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from x0tta6bl4.keyvault.errors import KeyvaultError
from x0tta6bl4.keyvault.vault import Entry, Vault
from x0tta6bl4.pqc import (
    Keystore,
    KeystoreError,
    KeyvaultRoot,
    MasterKey,
    MLDSA65PrivateKey,
    PQCError,
    verify_signed,
)

log = logging.getLogger("x0tta6bl4.keyvault")

BUCKET = "keyvault"
ROOT = "root"
REQUESTS = "requests"
NODE = "node."
LOCAL_ROOT = "root"                # local keystore entry names (as before replication)
LOCAL_REQUESTS = "rotate-requests"
LOCAL_NODE = "node-"
CAS_ATTEMPTS = 16
REFRESH_TIMEOUT_S = 10.0


class Unavailable(KeyvaultError):
    code = "UNAVAILABLE"


class Aborted(KeyvaultError):
    code = "ABORTED"


class StateError(Exception):
    """The shared state cannot be opened (wrong master key, damaged entry): one clear line."""


def _what() -> str:
    return f"JetStream bucket {BUCKET!r} entry"


class SharedVault:
    """A :class:`Vault` cache kept equal to the ``keyvault`` bucket; writes by compare-and-set."""

    def __init__(self, js: Any, kv: Any, vault: Vault, mk: MasterKey, local: Keystore) -> None:
        self.js, self.kv, self.vault, self.mk, self.local = js, kv, vault, mk, local
        self.seen = 0                    # highest bucket sequence the watcher has applied
        self.bad = 0                     # bucket values that did not open (counted, skipped)
        self._cond = asyncio.Condition()
        self._watcher = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="keyvault-local")
        # planning = key generation + root ML-DSA-65 signatures; OpenSSL releases the GIL, so a
        # "rotate all" plans on every core (50 identities: 270 ms on one thread, 145 ms on two)
        self._plan_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                             thread_name_prefix="keyvault-plan")
        self._written: dict[str, int] = {}          # local file name -> revision written
        self._write_lock = asyncio.Lock()
        self._pending: dict[str, tuple[bytes, int]] = {}
        self._flush_task: asyncio.Task | None = None
        self.on_learn: Callable[[str, Entry | None, Entry | None], None] | None = None

    # ---- sealing ------------------------------------------------------------------------
    def seal(self, key: str, data: bytes) -> bytes:
        return self.mk.seal(f"{BUCKET}/{key}", data)

    def unseal(self, key: str, blob: bytes) -> bytes:
        return self.mk.unseal(f"{BUCKET}/{key}", blob, what=_what())

    # ---- opening --------------------------------------------------------------------------
    @classmethod
    async def open(cls, js: Any, mk: MasterKey, local: Keystore, trust_domain: str, **vault_kw) -> tuple[
            SharedVault, bool, int]:
        """Load (or create once) the root key and every identity from the bucket, start the
        watcher, copy up local entries the bucket lacks. Returns (state, root_created, copied_up).
        Raises StateError (wrong master key, damaged entry) with one clear line."""
        kv = await js.key_value(BUCKET)
        backend = vault_kw.get("backend")
        try:
            root, created = await cls._root(kv, mk, local, backend)
        except KeystoreError as e:
            raise StateError(f"{e} (every keyvault replica needs the same master key: "
                             f"X0TTA6BL4_MASTER_KEY or X0TTA6BL4_MASTER_KEY_FILE)") from None
        st = cls(js, kv, Vault(root, trust_domain, **vault_kw), mk, local)
        await st.start_watch()
        copied = await st.copy_up()
        return st, created, copied

    @staticmethod
    async def _root(kv: Any, mk: MasterKey, local: Keystore, backend) -> tuple[KeyvaultRoot, bool]:
        def load(blob: bytes) -> KeyvaultRoot:
            raw = mk.unseal(f"{BUCKET}/{ROOT}", blob, what=_what())
            return KeyvaultRoot(MLDSA65PrivateKey.from_private_bytes(raw, backend=backend))

        try:
            return load((await kv.get(ROOT)).value), False
        except KeyNotFoundError:
            pass
        local_root = None
        if LOCAL_ROOT in local:    # a keystore from before replication: keep its root (and its identities)
            try:
                local_root = local.get(LOCAL_ROOT)
            except KeystoreError as e:
                raise KeystoreError(f"local keystore {str(local.directory)!r}: {e}") from None
        raw = local_root or KeyvaultRoot.generate(backend=backend).private_key.private_bytes_unsafe()
        try:
            await kv.create(ROOT, mk.seal(f"{BUCKET}/{ROOT}", raw))
        except KeyWrongLastSequenceError:   # another replica created it a moment ago: use theirs
            return load((await kv.get(ROOT)).value), False
        return KeyvaultRoot(MLDSA65PrivateKey.from_private_bytes(raw, backend=backend)), local_root is None

    # ---- the watcher -------------------------------------------------------------------------
    async def start_watch(self) -> None:
        """Watch the whole bucket; returns once every entry written before the call is applied
        (the stream's last sequence is the barrier: nats-py's end-of-initial-values marker can
        come before the values, see x0tta6bl4.bus.kvwatch)."""
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._watch(), name="keyvault-state-watch")
        await self._wait_seen(await self.last_seq())

    async def _watch(self) -> None:
        async for e in self._watcher:
            if e is None:
                continue
            try:
                await self._apply(e)
            except Exception:
                log.exception("keyvault state: cannot apply %s rev %s", e.key, e.revision)
            async with self._cond:
                self.seen = max(self.seen, e.revision or 0)
                self._cond.notify_all()

    async def _apply(self, e) -> None:
        key, rev = e.key, e.revision or 0
        deleted = e.operation in ("DEL", "PURGE") or e.value is None
        if key.startswith(NODE):
            node = key[len(NODE):]
            if rev <= self.vault.revision(node):
                return           # our own write (already learned) or older
            entry = None
            if not deleted:
                try:
                    data = self.unseal(key, e.value)
                    entry = await asyncio.to_thread(self.vault.decode_entry, data)
                except (KeystoreError, PQCError, ValueError, KeyError) as ex:
                    self.bad += 1
                    log.error("keyvault state: skipping %s rev %d: %s", key, rev, ex)
                    return
            self.learn(node, entry, rev)
            if entry is not None:
                self._schedule_local(LOCAL_NODE + node, self.vault.encode_entry(entry), rev)
        elif key == REQUESTS and not deleted:
            if rev <= self.vault.requests_revision:
                return
            try:
                reqs = self.vault.decode_requests(self.unseal(key, e.value))
            except (KeystoreError, ValueError) as ex:
                self.bad += 1
                log.error("keyvault state: skipping %s rev %d: %s", key, rev, ex)
                return
            self.vault.learn_requests(reqs, rev)
            self._schedule_local(LOCAL_REQUESTS, self.vault.encode_requests(reqs), rev)

    def learn(self, node: str, entry: Entry | None, rev: int) -> bool:
        prev = self.vault.entries.get(node)
        changed = self.vault.learn(node, entry, rev)
        if changed and self.on_learn is not None:
            self.on_learn(node, prev, entry)
        return changed

    async def last_seq(self) -> int:
        info = await self.js.stream_info(f"KV_{BUCKET}")
        return info.state.last_seq if info.state.messages else 0

    async def _wait_seen(self, seq: int) -> None:
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: self.seen >= seq), REFRESH_TIMEOUT_S)
            except TimeoutError:
                raise Unavailable(f"keyvault state: the watcher of bucket {BUCKET!r} is behind "
                                  f"(at {self.seen}, need {seq}); try again") from None

    async def refresh(self) -> None:
        """Return once the cache holds every write the bucket acknowledged before this call."""
        try:
            seq = await self.last_seq()
        except Exception as e:  # noqa: BLE001 - NATS down: answer UNAVAILABLE, not INTERNAL
            raise Unavailable(f"keyvault state: cannot reach JetStream bucket {BUCKET!r}: {e}") from None
        if self.seen < seq:
            await self._wait_seen(seq)

    async def reread(self, node: str) -> None:
        """Read one identity straight from the bucket (after a lost compare-and-set)."""
        key = NODE + node
        try:
            e = await self.kv.get(key)
        except KeyNotFoundError:
            return
        if e.revision > self.vault.revision(node):
            entry = await asyncio.to_thread(self.vault.decode_entry, self.unseal(key, e.value))
            self.learn(node, entry, e.revision)

    async def reread_requests(self) -> None:
        try:
            e = await self.kv.get(REQUESTS)
        except KeyNotFoundError:
            return
        if e.revision > self.vault.requests_revision:
            self.vault.learn_requests(self.vault.decode_requests(self.unseal(REQUESTS, e.value)), e.revision)

    # ---- writes --------------------------------------------------------------------------------
    async def _cas(self, key: str, data: bytes, last: int) -> int | None:
        """Write ``data`` under ``key`` if its revision is still ``last`` (0: create). The new
        revision, or None when another replica wrote first."""
        sealed = self.seal(key, data)
        try:
            if last:
                return await self.kv.update(key, sealed, last=last)
            return await self.kv.create(key, sealed)
        except KeyWrongLastSequenceError:
            return None

    async def commit(self, entries: list[tuple[Entry, int]]) -> list[int | None]:
        """Compare-and-set each (entry, revision it was planned from); learn and locally store the
        ones written. Returns each new revision, None for a write another replica won."""
        revs = await asyncio.gather(*(self._cas(NODE + e.node_id, self.vault.encode_entry(e), last)
                                      for e, last in entries))
        done = []
        for (e, _), rev in zip(entries, revs):
            if rev is not None:
                self.learn(e.node_id, e, rev)
                done.append((LOCAL_NODE + e.node_id, self.vault.encode_entry(e), rev))
        await self._write_local(done)
        return revs

    async def mutate(self, nodes: list[str], plan: Callable[[str], Any], entry_of: Callable[[Any], Entry | None]
                     ) -> dict[str, Any]:
        """Plan a change of each node on the cache (``plan(node)`` in a thread; ``entry_of(result)``
        is the new entry, None for no change) and compare-and-set it; a node whose write was
        refused is re-read and planned again. Returns node -> (result of the plan that was written, its
        revision), or (result, None) for a plan that changed nothing."""
        out: dict[str, Any] = {}
        todo = list(nodes)
        for _ in range(CAS_ATTEMPTS):
            if not todo:
                return out
            base = {n: self.vault.revision(n) for n in todo}

            loop = asyncio.get_running_loop()
            # plans only read the cache, so nodes are planned concurrently
            planned = dict(zip(todo, await asyncio.gather(*(loop.run_in_executor(self._plan_pool, plan, n)
                                                            for n in todo))))
            writes = [(n, r, entry_of(r)) for n, r in planned.items()]
            for n, r, e in writes:
                if e is None:
                    out[n] = (r, None)
            writes = [(n, r, e) for n, r, e in writes if e is not None]
            revs = await self.commit([(e, base[n]) for n, _, e in writes])
            todo = []
            for (n, r, _), rev in zip(writes, revs):
                if rev is None:
                    todo.append(n)
                else:
                    out[n] = (r, rev)
            if todo:
                log.info("keyvault state: %d write(s) lost to another replica (%s); re-reading",
                         len(todo), ", ".join(todo[:5]))
                await asyncio.gather(*(self.reread(n) for n in todo))
        if todo:
            raise Aborted(f"could not update {', '.join(todo[:5])}: {CAS_ATTEMPTS} concurrent changes in a row; "
                          f"try again")
        return out

    async def record_request(self, request_id: str, targets: list[str]) -> None:
        for _ in range(CAS_ATTEMPTS):
            reqs = self.vault.with_request(request_id, targets)
            last = self.vault.requests_revision
            rev = await self._cas(REQUESTS, self.vault.encode_requests(reqs), last)
            if rev is not None:
                self.vault.learn_requests(reqs, rev)
                await self._write_local([(LOCAL_REQUESTS, self.vault.encode_requests(reqs), rev)])
                return
            await self.reread_requests()
        raise Aborted("could not record the rotate request id: too many concurrent changes; try again")

    # ---- the local keystore (cache and backup) ------------------------------------------------
    def _put_local(self, name: str, data: bytes) -> None:
        self.local.put(name, data)

    async def _write_local(self, items: list[tuple[str, bytes, int]]) -> None:
        """Write local files (atomic, fsync'd, concurrently) unless a newer revision is written."""
        if not items:
            return
        async with self._write_lock:
            items = [(n, d, r) for n, d, r in items if r > self._written.get(n, 0)]
            loop = asyncio.get_running_loop()
            futs = [loop.run_in_executor(self._pool, self._put_local, n, d) for n, d, _ in items]
            results = await asyncio.gather(*futs, return_exceptions=True)
            for (n, _, r), res in zip(items, results):
                if isinstance(res, BaseException):
                    log.error("keyvault: cannot write the local copy %s: %s", n, res)
                else:
                    self._written[n] = r

    def _schedule_local(self, name: str, data: bytes, rev: int) -> None:
        """A local copy of another replica's write, written in the background (newest wins)."""
        if rev <= self._written.get(name, 0) or rev <= self._pending.get(name, (b"", 0))[1]:
            return
        self._pending[name] = (data, rev)
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush(), name="keyvault-local-flush")

    async def _flush(self) -> None:
        while self._pending:
            batch = [(n, d, r) for n, (d, r) in self._pending.items()]
            self._pending.clear()
            await self._write_local(batch)

    async def copy_up(self) -> int:
        """Copy local entries the bucket lacks (or holds in an older version) into the bucket."""
        t0 = time.perf_counter()
        names = await asyncio.to_thread(self.local.names)
        up: list[tuple[Entry, int]] = []
        local_version: dict[str, int] = {}
        for name in names:
            if not name.startswith(LOCAL_NODE):
                continue
            try:
                e = await asyncio.to_thread(lambda n=name: self.vault.decode_entry(self.local.get(n)))
            except KeystoreError as ex:
                raise StateError(f"local keystore {str(self.local.directory)!r}: {ex}") from None
            except (PQCError, ValueError, KeyError) as ex:
                log.error("keyvault: local entry %s is not an identity (%s); ignored", name, ex)
                continue
            local_version[e.node_id] = e.version
            cached = self.vault.entries.get(e.node_id)
            if cached is not None and cached.version >= e.version:
                continue
            if not self._signed_by_root(e):
                log.error("keyvault: local entry %s was signed by another root key; not copied up", name)
                continue
            up.append((e, self.vault.revision(e.node_id)))
        n = 0
        if up:
            n = sum(r is not None for r in await self.commit(up))
        if LOCAL_REQUESTS in self.local and not self.vault.requests_revision:
            try:
                reqs = self.vault.decode_requests(self.local.get(LOCAL_REQUESTS))
                rev = await self._cas(REQUESTS, self.vault.encode_requests(reqs), 0)
                if rev is not None:
                    self.vault.learn_requests(reqs, rev)
            except (KeystoreError, ValueError) as ex:
                log.error("keyvault: local rotate request log ignored: %s", ex)
        # a local copy of the root (a replica on a new machine gets one; a different one is kept)
        root_raw = self.vault.root.private_key.private_bytes_unsafe()
        if LOCAL_ROOT not in self.local:
            await asyncio.to_thread(self.local.put, LOCAL_ROOT, root_raw)
        elif await asyncio.to_thread(self.local.get, LOCAL_ROOT) != root_raw:
            log.warning("keyvault: the local keystore %s holds another root key than bucket %s; the bucket's "
                        "root is used, the local file is left as it is", self.local.directory, BUCKET)
        # a current local copy of every identity of the bucket
        await self._write_local([(LOCAL_NODE + node, self.vault.encode_entry(e), self.vault.revision(node))
                                 for node, e in self.vault.entries.items()
                                 if local_version.get(node, 0) < e.version])
        if n:
            log.info("keyvault: copied %d local identities up to bucket %s (%.0f ms)", n, BUCKET,
                     (time.perf_counter() - t0) * 1000)
        return n

    def _signed_by_root(self, e: Entry) -> bool:
        try:
            verify_signed(e.current.signed_sig, self.vault.root_public)
            return True
        except PQCError:
            return False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._flush_task is not None:
            await asyncio.gather(self._flush_task, return_exceptions=True)
        self._pool.shutdown(wait=True)
        self._plan_pool.shutdown(wait=True)
