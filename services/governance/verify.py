"""Vote signature checks for the governance service, off the writer's critical path.

The engine verifies every vote inside the single writer (it must: a vote is only
valid against the ledger's key for that voter). An ML-DSA-65 verification costs
~0.3 ms of CPU, and OpenSSL releases the GIL while it runs, so the gRPC handler
checks the signature first in a small thread pool (``precheck``) and remembers
the verdict; the engine's call then finds it (``verify``) instead of verifying
again on the event loop. The verdict is keyed by the exact (public key, signed
payload, signature) bytes, so it can only ever answer for the same check; a miss
(evicted, or never pre-checked) simply verifies inline. Nothing here trusts the
caller: both paths run the real verification.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import OrderedDict
from collections.abc import Callable

from x0tta6bl4.governance import GovernanceEngine, Verifier
from x0tta6bl4.pqc import InvalidKey, InvalidSignature, MLDSA65PublicKey

__all__ = ["VoteVerifier", "ledger_verifier"]


class VoteVerifier:
    """ML-DSA-65 verification with parsed keys cached and verdicts pre-computed in threads."""

    def __init__(self, threads: int = 2, memo_size: int = 4096) -> None:
        self._keys: dict[bytes, MLDSA65PublicKey] = {}
        self._memo: OrderedDict[tuple[bytes, bytes, bytes], bool] = OrderedDict()
        self._memo_size = memo_size
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads,
                                                           thread_name_prefix="vote-verify") if threads else None
        self.prechecked = 0
        self.memo_hits = 0

    def _check(self, public_key: bytes, payload: bytes, signature: bytes) -> bool:
        if not public_key:
            return False
        key = self._keys.get(public_key)
        if key is None:
            try:
                key = MLDSA65PublicKey.from_bytes(public_key)
            except (InvalidKey, ValueError):
                return False
            self._keys[public_key] = key
        try:
            key.verify(signature, payload)
        except InvalidSignature:
            return False
        return True

    def _precheck_sync(self, public_key: bytes, payload: bytes, signature: bytes) -> bool:
        ok = self._check(public_key, payload, signature)
        with self._lock:
            self._memo[(public_key, payload, signature)] = ok
            while len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
        return ok

    async def precheck(self, public_key: bytes, payload: bytes, signature: bytes) -> bool:
        """Verify now (in a worker thread when there is a pool) and return the verdict; the engine's
        ``verify`` of the same bytes then costs nothing."""
        self.prechecked += 1
        if self._pool is None:
            return self._precheck_sync(public_key, payload, signature)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._precheck_sync,
                                                                public_key, payload, signature)

    def verify(self, public_key: bytes, payload: bytes, signature: bytes) -> bool:
        """The verdict for exactly these bytes (pre-computed when available, else computed now)."""
        with self._lock:
            ok = self._memo.pop((public_key, payload, signature), None)
        if ok is not None:
            self.memo_hits += 1
            return ok
        return self._check(public_key, payload, signature)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def ledger_verifier(engine: Callable[[], GovernanceEngine], keys: VoteVerifier) -> Verifier:
    """The engine's vote verifier: a voter's signature checks against the voter's key in the ledger
    (``engine()`` is the store's current engine, which a rebuild from the log replaces)."""
    def verify(voter: str, payload: bytes, signature: bytes) -> bool:
        v = engine().state.voters.get(voter)
        return v is not None and keys.verify(v.public_key, payload, signature)
    return verify
