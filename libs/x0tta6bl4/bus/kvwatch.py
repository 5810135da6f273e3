"""Watching a JetStream key-value bucket with a reliable end of its initial values.

nats-py's ``KeyValue.watch`` signals "initial values done" with a ``None`` update, but that marker
can come *before* the initial values: it is decided from ``consumer_info().num_pending`` while the
callback that would count delivered messages is still parked, so when the server has already
pushed everything it reads 0 pending, 0 delivered and queues ``None`` first. A reader that stops
at the first ``None`` then sees an empty bucket (a flaky CI failure of ours).

``watch_bucket`` instead reads the bucket stream's last sequence right *after* subscribing: the
snapshot is complete once an entry at or beyond that sequence has arrived (delivery is in sequence
order, and with the last-per-subject policy the stream's last message is always delivered, or a
newer one of its key). ``None`` markers are skipped everywhere.

    watcher, initial = await watch_bucket(js, "keys")
    for e in initial: apply(e)
    while True:
        e = await next_update(watcher, timeout=60)   # None on timeout
"""
from __future__ import annotations

import time
from typing import Any

from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue


class WatchError(RuntimeError):
    """The initial values of a bucket did not arrive in time, or the bucket does not exist."""


class BucketNotFound(WatchError):
    """The key-value bucket does not exist."""


async def watch_bucket(js: Any, bucket: str,
                       timeout: float = 10.0) -> tuple[KeyValue.KeyWatcher, list[KeyValue.Entry]]:
    """Start watching every key of ``bucket``; return the watcher and every current entry.

    Deleted and purged keys come back as entries with ``operation`` "DEL"/"PURGE" (the caller
    decides what a deletion means). Later changes are read from the watcher with ``next_update``.
    """
    try:
        kv = await js.key_value(bucket)
    except NotFoundError:
        raise BucketNotFound(f"key-value bucket {bucket!r} does not exist") from None
    watcher = await kv.watchall()
    # The stream's last sequence read AFTER the watch consumer exists: every key's value at that moment
    # has a sequence at or below it, and delivery is in sequence order, so once an entry at or past it has
    # arrived, no current key is missing. (Read before subscribing, a key rewritten in between could be
    # delivered after the first entry past the old last sequence and be cut off.)
    try:
        info = await js.stream_info(f"KV_{bucket}")
    except NotFoundError:
        await watcher.stop()
        raise BucketNotFound(f"key-value bucket {bucket!r} does not exist") from None
    last = info.state.last_seq if info.state.messages else 0
    initial: list[KeyValue.Entry] = []
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < last:
        left = deadline - time.monotonic()
        if left <= 0:
            await watcher.stop()
            raise WatchError(f"key-value bucket {bucket!r}: initial values up to revision {last} did not "
                             f"arrive within {timeout:g} s (got up to {seen})")
        e = await next_update(watcher, timeout=left)
        if e is None:
            continue
        initial.append(e)
        seen = max(seen, e.revision or 0)
    return watcher, initial


async def next_update(watcher: KeyValue.KeyWatcher, timeout: float) -> KeyValue.Entry | None:
    """The next entry from ``watcher``; None when nothing arrived within ``timeout``.
    nats-py's end-of-initial-values markers are skipped."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            e = await watcher.updates(timeout=left)
        except TimeoutError:    # nats.errors.TimeoutError is one too
            return None
        if e is not None and hasattr(e, "key"):
            return e


def drain_queued(watcher: KeyValue.KeyWatcher, limit: int = 1024) -> list[KeyValue.Entry]:
    """Entries already queued in ``watcher`` (no waiting): a busy reader applies a rotation's
    hundreds of entries in one go instead of one per loop iteration."""
    out: list[KeyValue.Entry] = []
    q = getattr(watcher, "_updates", None)
    while q is not None and not q.empty() and len(out) < limit:
        e = q.get_nowait()
        if e is not None and hasattr(e, "key"):
            out.append(e)
    return out
