"""Reconnect: merge an edge node's CRDT document with the broker-side copy and put the offline
period's audit events on the audit trail, in causal order.

The broker-side copy is one entry (``doc``) of the JetStream key-value bucket ``edge``; it is
updated with compare-and-set, so concurrent syncs from several nodes serialise and none is lost.
Audit events that no one has published yet are *claimed* in the same compare-and-set write, then
published by the claimer on ``audit.edge.<event>`` (sorted by Lamport time, node, sequence), as a
hash-chained chain of service ``edge`` signed (ML-DSA-65) by the claimer's node signing key; ``meshctl audit
verify`` trusts it only through that key's keyvault-signed public-key record (never a key found on the bus).
The original event's node, Lamport time, sequence, time and its node-identity signature travel in the
event's details.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from x0tta6bl4.audit.chain import EDGE_SERVICE, AuditChain, NodeAuditSigner
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.connection import NatsCredentials, connect_once
from x0tta6bl4.bus.permissions import EDGE_DOC_KEY
from x0tta6bl4.bus.publisher import Publisher

from .node import EdgeNode
from .state import AuditEntry, EdgeState

log = logging.getLogger("x0tta6bl4.edge")

BUCKET = "edge"            # broker-side CRDT document (one key: DOC_KEY)
DOC_KEY = EDGE_DOC_KEY     # the only key the ``edge`` bus identity may write
AUDIT_SERVICE = EDGE_SERVICE  # audit.edge.<event>


@dataclass
class SyncReport:
    node: str
    merged_bytes: int = 0
    published: list[str] = field(default_factory=list)   # edge event ids, in publish order
    attempts: int = 0
    chain_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "merged_bytes": self.merged_bytes, "published": len(self.published),
                "published_ids": self.published, "attempts": self.attempts, "chain_id": self.chain_id}


async def _bucket(js):
    from nats.js.api import KeyValueConfig
    from nats.js.errors import BucketNotFoundError
    try:
        return await js.key_value(BUCKET)
    except BucketNotFoundError:
        try:
            return await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1,
                                                            description="edge nodes' merged CRDT document"))
        except Exception:  # noqa: BLE001 - created concurrently by another node
            return await js.key_value(BUCKET)


async def _cas_merge(kv, local: EdgeState, claim_for: str | None, session: str, report: SyncReport,
                     done: list[AuditEntry] | None = None) -> list[AuditEntry]:
    """Merge local <-> broker copy under compare-and-set; optionally claim every unpublished event."""
    from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
    for attempt in range(1, 51):
        report.attempts += 1
        try:
            entry = await kv.get(DOC_KEY)
            remote, rev = entry.value or b"", entry.revision
        except KeyNotFoundError:
            remote, rev = b"", 0
        trial = local.copy()
        trial.merge(remote)
        claimed: list[AuditEntry] = []
        if claim_for is not None:
            claimed = trial.unpublished(claim_for)
            trial.claim(claimed, claim_for, session)
        if done:
            trial.claim(done, claim_for or local.node, session, done=True)
        data = trial.update()
        try:
            if rev:
                await kv.update(DOC_KEY, data, last=rev)
            else:
                await kv.create(DOC_KEY, data)
        except KeyWrongLastSequenceError:
            await asyncio.sleep(0.01 * attempt)
            continue
        report.merged_bytes += len(remote)
        local.merge(trial.update(local.state_vector()))
        return claimed
    raise RuntimeError("edge sync: the broker-side document kept changing (50 compare-and-set attempts)")


def audit_details(e: AuditEntry, publisher: str) -> dict[str, str]:
    return {**dict(e.details), "edge_event_id": e.event_id, "origin_node": e.node, "lamport": str(e.lamport),
            "origin_seq": str(e.seq), "origin_ts_ns": str(e.ts_ns), "origin_signature": e.signature,
            "published_by": publisher}


async def sync_with_broker(en: EdgeNode, nc) -> SyncReport:
    """One reconnect: merge, claim, publish the claimed audit events in causal order, confirm."""
    js = nc.jetstream()
    kv = await _bucket(js)
    report = SyncReport(en.node)
    session = uuid.uuid4().hex[:12]
    claimed = await _cas_merge(kv, en.state, en.node, session, report)
    if claimed:
        # signed by this node's signing key: a verifier trusts it through its keyvault-signed record
        chain = AuditChain(AUDIT_SERVICE, NodeAuditSigner(en.identity), chain_id=f"edge-{en.node}-{session}")
        report.chain_id = chain.chain_id
        pub = Publisher(nc, AUDIT_SERVICE, retry_for_s=5.0)
        for e in sorted(claimed):
            ev = chain.next(e.event_type, e.subject, audit_details(e, en.node))
            await pub.publish(subjects.audit(AUDIT_SERVICE, e.event_type), ev)
            report.published.append(e.event_id)
        await _cas_merge(kv, en.state, None, session, report, done=claimed)
    en.save()
    return report


class EdgeAgent:
    """``meshctl edge serve``: an edge node that keeps working offline and syncs whenever the broker
    is reachable. Serves /health (always, while the process lives) and /ready (provisioned and its
    state loaded - an offline node is ready: it is doing its job)."""

    def __init__(self, en: EdgeNode, nats_url: str | None, interval_s: float = 2.0, connect_timeout_s: float = 3.0,
                 creds: NatsCredentials | None = None):
        self.connect_timeout_s = connect_timeout_s
        self.creds = creds   # the ``edge`` identity on a secured bus (default: X0TTA6BL4_NATS_* settings)
        self.en = en
        self.nats_url = nats_url
        self.interval_s = interval_s
        self.name = f"edge-{en.node}"
        self.started_at = time.time()
        self.connected = False
        self.last_sync: SyncReport | None = None

    @property
    def ready(self) -> bool:
        return self.en.state is not None

    async def try_sync(self) -> SyncReport | None:
        if not self.nats_url:
            return None
        try:
            nc = await connect_once(self.nats_url, self.name, timeout_s=self.connect_timeout_s,
                                    connect_timeout_s=1, creds=self.creds)
        except Exception:  # noqa: BLE001 - no broker: stay offline
            if self.connected:
                self.en.set_offline(True)
                self.en.save()
            self.connected = False
            return None
        try:
            self.en.set_offline(False)
            self.connected = True
            self.last_sync = await sync_with_broker(self.en, nc)
            return self.last_sync
        except Exception as e:  # noqa: BLE001 - cut off mid-sync: the next round retries
            log.warning("edge %s: sync failed: %s", self.en.node, e)
            self.connected = False
            self.en.set_offline(True)
            self.en.save()
            return None
        finally:
            with contextlib.suppress(Exception):  # closing a broken connection
                await nc.close()

    async def run(self, stop: asyncio.Event, health_port: int = 0) -> None:
        health = None
        if health_port:
            from x0tta6bl4.bus.health import HealthServer
            health = HealthServer(self, health_port)
            await health.start()
        try:
            while not stop.is_set():
                r = await self.try_sync()
                if r is not None and r.published:
                    log.info("edge %s: synced, %d audit events published", self.en.node, len(r.published))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
        finally:
            self.en.save()
            if health:
                await health.stop()
