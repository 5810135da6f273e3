"""The keyvault replicas' shared state on JetStream: :class:`x0tta6bl4.keyvault.shared.SharedState`
(the bucket layout, sealing and compare-and-set writes) plus what needs the broker and the disk.

* A watcher keeps each replica's cache equal to the bucket; before answering, a replica waits
  until its watcher has reached the bucket's last sequence (:meth:`SharedVault.refresh`), so it
  answers with every write acknowledged before the request arrived, whichever replica made it.
* Each replica also keeps the entries in its local encrypted keystore (``<data_dir>/keyvault``,
  one atomic fsync'd file per entry) as a cache and backup: the replica that commits a change
  writes its file before replying, the others write theirs when their watcher sees the change.
  At start a replica loads the bucket and copies up any local entry the bucket lacks or holds
  in an older version (migration from a single-machine keystore, or a bucket rebuilt).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from x0tta6bl4.bus.kv import NatsKV
from x0tta6bl4.keyvault.errors import Unavailable
from x0tta6bl4.keyvault.shared import BUCKET, NODE, REQUESTS, SharedState, StateError, Stored, load_root
from x0tta6bl4.keyvault.vault import Entry, Vault
from x0tta6bl4.pqc import Keystore, KeystoreError, MasterKey, PQCError, verify_signed

log = logging.getLogger("x0tta6bl4.keyvault")

LOCAL_ROOT = "root"                # local keystore entry names (as before replication)
LOCAL_REQUESTS = "rotate-requests"
LOCAL_NODE = "node-"
REFRESH_TIMEOUT_S = 10.0

__all__ = ["BUCKET", "SharedVault", "StateError"]


def local_name(key: str) -> str:
    """The local keystore entry of a bucket key."""
    return LOCAL_REQUESTS if key == REQUESTS else LOCAL_NODE + key[len(NODE):]


class SharedVault(SharedState):
    """The shared state followed by a JetStream watcher, with local encrypted copies."""

    def __init__(self, js: Any, kv: NatsKV, vault: Vault, mk: MasterKey, local: Keystore) -> None:
        super().__init__(kv, vault, mk)
        self.js, self.local = js, local
        self.seen = 0                    # highest bucket sequence the watcher has applied
        self._cond = asyncio.Condition()
        self._watcher = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="keyvault-local")
        self._written: dict[str, int] = {}          # local file name -> revision written
        self._write_lock = asyncio.Lock()
        self._pending: dict[str, tuple[bytes, int]] = {}
        self._flush_task: asyncio.Task | None = None

    # ---- opening --------------------------------------------------------------------------
    @classmethod
    async def open(cls, js: Any, mk: MasterKey, local: Keystore, trust_domain: str,  # type: ignore[override]
                   root_key: bytes | None = None, **vault_kw: Any) -> tuple[SharedVault, bool, int]:
        """Load (or create once) the root key and every identity from the bucket, start the
        watcher, copy up local entries the bucket lacks. Returns (state, root_created, copied_up).
        A bucket without a root gets the local keystore's (from before replication), else ``root_key``
        (the deployment's, made with its secrets), else a new one.
        Raises StateError (wrong master key, damaged entry) with one clear line."""
        kv = NatsKV(await js.key_value(BUCKET), BUCKET, js)

        def local_root() -> bytes | None:   # a keystore from before replication: keep its root
            if LOCAL_ROOT not in local:
                return root_key
            try:
                return local.get(LOCAL_ROOT)
            except KeystoreError as e:
                raise KeystoreError(f"local keystore {str(local.directory)!r}: {e}") from None
        root, created = await load_root(kv, mk, local_root=local_root, backend=vault_kw.get("backend"))
        st = cls(js, kv, Vault(root, trust_domain, **vault_kw), mk, local)
        await st.start_watch()
        copied = await st.copy_up()
        return st, created, copied

    # ---- the watcher -------------------------------------------------------------------------
    async def start_watch(self) -> None:
        """Watch the whole bucket; returns once every entry written before the call is applied
        (the stream's last sequence is the barrier: nats-py's end-of-initial-values marker can
        come before the values, see x0tta6bl4.bus.kvwatch)."""
        self._watcher = await self.kv.raw.watchall()
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
                    entry = await asyncio.to_thread(self.decode, node, e.value)
                except (KeystoreError, PQCError, ValueError, KeyError) as ex:
                    self.bad += 1
                    log.error("keyvault state: skipping %s rev %d: %s", key, rev, ex)
                    return
            self.learn(node, entry, rev)
            if entry is not None:
                self._schedule_local(local_name(key), self.vault.encode_entry(entry), rev)
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

    # ---- the local keystore (cache and backup) ------------------------------------------------
    async def stored(self, items: list[Stored]) -> None:
        await self._write_local([(local_name(k), d, r) for k, d, r in items])

    async def _write_local(self, items: list[tuple[str, bytes, int]]) -> None:
        """Write local files (atomic, fsync'd, concurrently) unless a newer revision is written."""
        if not items:
            return
        async with self._write_lock:
            items = [(n, d, r) for n, d, r in items if r > self._written.get(n, 0)]
            loop = asyncio.get_running_loop()
            futs = [loop.run_in_executor(self._pool, self.local.put, n, d) for n, d, _ in items]
            results = await asyncio.gather(*futs, return_exceptions=True)
            for (n, _, r), res in zip(items, results, strict=True):
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
                await self.create_requests(self.vault.decode_requests(self.local.get(LOCAL_REQUESTS)))
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
        await super().close()
