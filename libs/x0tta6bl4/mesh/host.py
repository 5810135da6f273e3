"""A mesh host: runs node agents and connects them to the orchestrator's bus.

    python -m x0tta6bl4.mesh.host --nats nats://127.0.0.1:4222 --topology grid:9 \
        --traffic n0:n8 --rate 20

Each agent's telemetry goes to ``mesh.telemetry.<node>`` and its control and
security events to ``mesh.event.<node>`` (protobuf, with W3C trace context);
commands arrive on ``mesh.cmd.<node>`` (core NATS request/reply) and are
answered with a MeshEvent ``command.ok`` / ``command.failed``. The host is the
node's supervisor: it still answers for a killed agent (so RESTART can revive it).

On a secured bus the host connects as its own mesh-host identity (``X0TTA6BL4_NATS_NKEY_FILE``,
``X0TTA6BL4_NATS_CA_FILE``, ``X0TTA6BL4_NATS_IDENTITY``; ``meshctl mesh up`` and ``Stack.add_mesh_host``
register one for exactly the hosted nodes): it may publish only those nodes' telemetry and events and
receives only their commands.

Keys (``--keyvault HOST:PORT`` or ``--offline-keys``; without either the agents use
the structural verifier as before). With keyvault the host pins the root public key
from ``Info``, loads and then watches the KV bucket ``keys`` into one shared
:class:`~.security.MeshTrust`, and obtains each node's identity with its private keys
over gRPC (``IssueIdentity(return_private)``, or ``GetPrivateBundle`` when the node
already has one). ``RELOAD_KEYS`` fetches the node's current bundle, applies its
root-signed records, switches the signer (the old generation stays usable for
handshakes in flight) and answers once the beacon-signing check passed: every hosted
neighbour has accepted a HELLO signed with the new key (or after
``reload_verify_timeout``, answering with what was verified). A rotation from any other entry point
(``meshctl keys rotate``, the MCP tool, a schedule) reaches the agents too: a newer ``node.<n>.sig``
record in the bucket for a hosted node makes the host reload that node the same way (one reload at a
time per node, shared with RELOAD_KEYS). Audit-like MeshEvents on
``mesh.event.<node>``: ``keys.loaded``, ``keys.reloaded``, ``keys.verified``,
``keys.retired``, ``keys.revoked``, ``channel.established`` (kinds outside
``security.*``, so the monitor does not count them as failed authentication).

Sharding (``--nodes n0,n1,... --addresses FILE``): the host runs only these nodes of the topology,
binds each to its address from FILE (JSON ``{node: [host, port]}`` for every node) and sends to
neighbours hosted by other processes at theirs; :mod:`.cluster` starts and supervises such hosts.
``RELOAD_KEYS`` then counts a neighbour in another process as having accepted the new key once its
HELLO echoes one of the node's HELLOs signed with it (see :mod:`.security`); the node announces its
new key with an immediate HELLO. Host ops ``traffic`` (``flows`` "SRC:DST,...", ``rate``),
``traffic_stop`` and ``stats`` (per-node DATA counts per flow and origin, key ids, session keys, CPU
time) serve benchmarks and tests that drive hosts in other processes.

Blue-green (``--standby``, ``--instance``, ``--version``): a host in standby runs its agents dark
(they bind, exchange HELLOs and converge among themselves, so the set is warm) but publishes no
telemetry or events, sends no DATA and leaves unaddressed commands to the active host. Host-level
commands are MeshCommands of kind ``KIND_HEAL`` (``HOST_OP_KIND``) on any hosted node's ``mesh.cmd.<node>`` with
``params["host_op"]`` = ``status`` | ``standby`` | ``activate`` | ``retire``; a command whose
``params["host"]`` names an instance is handled only by that host (active or not), an unaddressed one
only by the active host. ``retire`` stops the host process after the reply. ``--fail-health`` makes
/health answer 503 (a canary aid to rehearse an automatic rollback; never set in production).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import InvalidMessage, decode, new_meta
from x0tta6bl4.bus.connection import NatsCredentials, connect
from x0tta6bl4.bus.health import HealthServer
from x0tta6bl4.bus.kvwatch import drain_queued, next_update, watch_bucket
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.mesh.core import CoreConfig
from x0tta6bl4.mesh.routing import Event
from x0tta6bl4.mesh.runtime import MeshRuntime
from x0tta6bl4.mesh.security import LocalAuthority, MeshTrust, NodeSecurity
from x0tta6bl4.mesh.topology import Topology, parse_spec
from x0tta6bl4.telemetry.tracing import setup_tracing, tracer
from x0tta6bl4.v1 import events_pb2, mesh_pb2

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.subscription import Subscription
    from nats.js.kv import KeyValue

    from x0tta6bl4.v1.keyvault_pb2_grpc import KeyvaultStub

log = logging.getLogger("x0tta6bl4.mesh.host")
C = mesh_pb2.MeshCommand
# Host-level blue-green commands ride on an existing kind with params["host_op"] (the codec requires a
# non-zero kind); HEAL is the harmless choice should a host without host_op support receive one.
HOST_OP_KIND = C.KIND_HEAL


def to_proto(d: dict[str, Any], share: int, loss_pct: float, p99_ms: float) -> events_pb2.NodeTelemetry:
    """Agent telemetry dict -> NodeTelemetry. CPU and memory are the process's, shared by ``share`` agents."""
    t = events_pb2.NodeTelemetry(
        meta=new_meta("mesh-agent"), node_id=d["node_id"], p99_latency_ms=p99_ms,
        loss_pct=loss_pct, throughput_bps=float(d["throughput_bps"]), peer_count=int(d["peer_count"]),
        route_count=int(d["route_count"]), cpu_pct=float(d["cpu_pct"]) / max(1, share),
        mem_pct=float(d["mem_pct"]) / max(1, share), failed_auth=int(d["failed_auth"]),
        reachable=bool(d.get("reachable", True)), neighbours=list(d.get("neighbours", [])))
    for q in d.get("links") or []:
        t.links.add(peer=q["peer"], rssi_dbm=float(q.get("rssi_dbm", 0)), snr_db=float(q.get("snr_db", 0)),
                    loss_rate=float(q.get("loss_rate", 0)), latency_ms=float(q.get("latency_ms", 0)),
                    link_age_s=float(q.get("link_age_s", 0)))
    for k, v in (d.get("counters") or {}).items():
        t.counters[k] = float(v)
    for k, v in (d.get("rejected_packets") or {}).items():
        t.rejected_packets[k] = int(v)
    for r in d.get("routes") or []:
        if r.get("valid", True):
            t.routes[r["dest"]] = r["next_hop"]
    t.avoided.extend(d.get("avoided") or [])
    for dest, f in sorted((d.get("flows") or {}).items()):
        t.flows.add(dest=dest, sent=int(f["sent"]), acked=int(f["acked"]), idle_s=float(f.get("idle_s", 0.0)))
    return t


class BundleBatcher:
    """Coalesces this host's private-bundle fetches into one keyvault ``GetPrivateBundles`` call.

    A "rotate all" makes the executor send every node a RELOAD_KEYS at nearly the same moment;
    fetches that arrive within ``window_s`` of the first one share a call (50 nodes: one call
    instead of 50). When the batch call fails for one node (revoked meanwhile, unknown), every
    node of the batch is fetched on its own, so each gets its own answer; a keyvault without the
    batch call (UNIMPLEMENTED) is asked one node at a time from then on."""

    def __init__(self, stub: Any, window_s: float = 0.005, timeout_s: float = 15.0, batched: bool = True) -> None:
        self.stub, self.window_s, self.timeout_s = stub, window_s, timeout_s
        self.batched = batched
        self.calls = 0                      # keyvault calls made (batch or single), for tests and logs
        self._pending: dict[str, list[asyncio.Future]] = {}
        self._flushing: asyncio.Task | None = None

    async def get(self, node: str):
        fut = asyncio.get_running_loop().create_future()
        self._pending.setdefault(node, []).append(fut)
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="keyvault-bundles")
        return await fut

    async def _flush(self) -> None:
        await asyncio.sleep(self.window_s)
        batch, self._pending, self._flushing = self._pending, {}, None
        nodes = list(batch)
        results: dict[str, Any] = {}
        if self.batched and len(nodes) > 1:
            results = await self._fetch_batch(nodes)
        missing = [n for n in nodes if n not in results]
        if missing:
            singles = await asyncio.gather(*(self._fetch_one(n) for n in missing), return_exceptions=True)
            results.update(zip(missing, singles, strict=True))
        for n, futs in batch.items():
            for f in futs:
                if f.done():
                    continue
                if isinstance(results[n], BaseException):
                    f.set_exception(results[n])
                else:
                    f.set_result(results[n])

    async def _fetch_batch(self, nodes: list[str]) -> dict[str, Any]:
        import grpc

        from x0tta6bl4.v1 import keyvault_pb2 as kpb
        self.calls += 1
        try:
            resp = await self.stub.GetPrivateBundles(kpb.GetPrivateBundlesRequest(node_ids=nodes),
                                                     timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.batched = False
            log.info("keyvault GetPrivateBundles for %d nodes: %s; fetching one by one", len(nodes), e.code().name)
            return {}
        return dict(zip(nodes, resp.bundles, strict=False))  # fewer bundles: the rest one by one

    async def _fetch_one(self, node: str):
        from x0tta6bl4.v1 import keyvault_pb2 as kpb
        self.calls += 1
        return await self.stub.GetPrivateBundle(kpb.GetPrivateBundleRequest(node_id=node), timeout=self.timeout_s)


class MeshHost:
    """Node agents of one topology (or a subset) bridged to NATS."""

    def __init__(self, nats_url: str, topology: Topology, nodes: Iterable[str] | None = None,
                 config: CoreConfig | None = None, telemetry_interval: float = 0.25, seed: int = 0,
                 ack_timeout: float = 0.4, latency_window_s: float = 0.5, keyvault: str | None = None,
                 offline_keys: bool = False, security_options: dict[str, Any] | None = None,
                 max_skew_s: float = 10.0, reload_verify_timeout: float = 2.0, instance: str | None = None,
                 version: str = "", standby: bool = False, fail_health: bool = False,
                 addresses: dict[str, tuple[str, int]] | None = None, creds: NatsCredentials | None = None,
                 svid_identity: str = ""):
        self.nats_url = nats_url
        self.creds = creds   # its mesh-host identity on a secured bus (default: X0TTA6BL4_NATS_* settings)
        self.topology = topology
        self.latency_window_ns = int(latency_window_s * 1e9)
        hosted = set(nodes) if nodes is not None else set(topology.nodes)
        self.nodes = [n for n in topology.nodes if n in hosted]
        self.runtime = MeshRuntime(topology, config=config, seed=seed, telemetry_sink=self._on_telemetry,
                                   event_sink=self._on_event, telemetry_interval=telemetry_interval,
                                   ack_timeout=ack_timeout, nodes=self.nodes, addresses=addresses)
        self._last_outcomes: dict[str, tuple[float, float]] = {}
        self.nc: Client | None = None
        self.name = "mesh-host"
        self.started_at = time.time()
        self.publisher: Publisher | None = None
        self._subs: list[Subscription] = []
        self._traffic: list[asyncio.Task] = []
        self.keyvault_addr = keyvault
        self.offline_keys = offline_keys
        self.security_options = dict(security_options or {})
        self.max_skew_s = max_skew_s
        self.reload_verify_timeout = reload_verify_timeout
        self.trust: MeshTrust | None = None
        self.authority: LocalAuthority | None = None
        self.security: dict[str, NodeSecurity] = {}
        self._grpc: Any = None   # RenewingChannel to keyvault (grpc is imported only with a keyvault)
        self._svid: Any = None   # this host's SvidSource (with a keyvault)
        self.svid_identity = svid_identity   # bus identity whose SVID it asks for (default: its credentials')
        self._stub: KeyvaultStub | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._watch_task: asyncio.Task | None = None
        # rotation from any entry point reaches the agents: a newer node.<n>.sig record in the bucket
        # reloads the node's keys (one reload at a time per node; RELOAD_KEYS takes the same lock)
        self._reload_locks: dict[str, asyncio.Lock] = {}
        self._wanted_gen: dict[str, int] = {}
        self._auto_reloads: dict[str, asyncio.Task] = {}
        # blue-green: identity, standby/active, retirement
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self.version = version
        self.active = not standby
        self.fail_health = fail_health
        self.retired = asyncio.Event()
        self.topology_spec = ""
        self.health_port = 0
        self.telemetry_interval = telemetry_interval
        self._flows: list[tuple[str, str, float]] = []
        self.flow_sent: dict[tuple[str, str], int] = {}

    @property
    def ready(self) -> bool:
        """Readiness for /ready: connected to the broker and every hosted agent running."""
        return bool(self.nc and self.nc.is_connected and self.runtime.started
                    and all(self.runtime.agents[n].running or self.runtime.agents[n].killed for n in self.nodes))

    # ---- lifecycle ------------------------------------------------------------
    async def start(self) -> MeshHost:
        nc = self.nc = await connect(self.nats_url, "mesh-host", creds=self.creds)
        self.publisher = Publisher(nc, "mesh-agent")
        if self.keyvault_addr or self.offline_keys:
            await self._setup_keys()
        for n in self.nodes:
            self._subs.append(await nc.subscribe(subjects.mesh_cmd(n), cb=self._on_command))
        await nc.flush()   # the server knows our command subscriptions before start() returns
        await self.runtime.start()
        return self

    async def stop(self) -> None:
        for t in self._traffic:
            t.cancel()
        await self.runtime.stop()
        if self._watch_task:
            self._watch_task.cancel()
        for t in self._auto_reloads.values():
            t.cancel()
        if self._watcher is not None:
            with contextlib.suppress(Exception):  # the watcher's connection may be gone already
                await self._watcher.stop()
        if self._grpc is not None:
            await self._grpc.close()
        if self._svid is not None:
            await self._svid.stop()
        if self.nc:
            await self.nc.close()

    def traffic(self, src: str, dst: str, rate: float) -> None:
        if src not in self.runtime.agents:
            raise KeyError(f"node {src!r} is not hosted here")
        self._flows.append((src, dst, rate))
        self.flow_sent.setdefault((src, dst), 0)

        async def loop():
            while True:
                a = self.runtime.agents[src]
                if a.running and self.active:
                    try:
                        if a.send(dst, b"x" * 64, ack=True) is not None:
                            self.flow_sent[(src, dst)] += 1
                    except ValueError:
                        pass
                await asyncio.sleep(1 / rate)
        self._traffic.append(asyncio.create_task(loop()))

    def stop_traffic(self) -> None:
        for t in self._traffic:
            t.cancel()
        self._traffic.clear()
        self._flows.clear()

    # ---- keys ---------------------------------------------------------------------
    async def _setup_keys(self) -> None:
        opts = self.security_options
        if self.offline_keys:
            authority = self.authority = LocalAuthority()
            idents = {n: authority.issue(n) for n in self.nodes}
            trust = self.trust = authority.trust(max_skew_s=self.max_skew_s)
        else:
            from x0tta6bl4.rpc import svid as svids
            from x0tta6bl4.v1 import keyvault_pb2 as kpb
            from x0tta6bl4.v1 import keyvault_pb2_grpc as kpb_grpc
            assert self.nc is not None and self.keyvault_addr, "start() connects first, with a keyvault"
            # mutual TLS as spiffe://<td>/host/<host>: keyvault lets this host act only for its assigned nodes
            self._svid = await self._host_svid(svids)
            self._grpc = svids.RenewingChannel(self.keyvault_addr, self._svid, "keyvault",
                                               self._svid.current.trust_domain)
            stub = self._stub = self._grpc.stub(kpb_grpc.KeyvaultStub)
            window = float(os.environ.get("X0TTA6BL4_KEY_RELOAD_BATCH_S", "0.005"))
            self._bundles = BundleBatcher(stub, window_s=max(window, 0.0), batched=window > 0)
            info = await stub.Info(kpb.InfoRequest(), timeout=15)
            trust = self.trust = MeshTrust.pinned(self._pinned_root(info.root_public_key), max_skew_s=self.max_skew_s)
            self._watcher, initial = await watch_bucket(self.nc.jetstream(), info.kv_bucket or "keys")
            for e in initial:
                trust.apply(e.key, e.value, deleted=e.operation in ("DEL", "PURGE"))
            self._watch_task = asyncio.create_task(self._watch_keys(), name="mesh-keys-watch")
            fetched = await asyncio.gather(*(self._fetch_identity(n, issue=True) for n in self.nodes))
            idents = dict(zip(self.nodes, fetched, strict=True))
        trust.listeners.append(self._on_key_change)
        for n in self.nodes:
            remote = [p for p in self.topology.neighbours(n) if self.runtime.remote(p)]
            sec = NodeSecurity(n, idents[n], trust, remote_peers=remote, **opts)
            self.security[n] = sec
            self.runtime.agents[n].attach_security(sec)
            self._key_event(n, "keys.loaded", {"generation": idents[n].generation,
                                               "sig_key_id": idents[n].signing.key_id,
                                               "kem_key_id": idents[n].kem.key_id,
                                               "source": "offline" if self.offline_keys else "keyvault"})

    async def _host_svid(self, svids: Any) -> Any:
        """This host's X.509 SVID from keyvault (``keyvault.svid.<bus identity>``), renewed at half-life."""
        identity = self.svid_identity or (self.creds.identity if self.creds else "") \
            or os.environ.get("X0TTA6BL4_NATS_IDENTITY", "")
        if not identity:
            raise ValueError("mesh host: keyvault needs this host's identity (its NATS credentials, or "
                             "X0TTA6BL4_NATS_IDENTITY=mesh-host-<name> on an open bus)")
        assert self.nc is not None
        source = svids.SvidSource(functools.partial(svids.obtain_over_bus, self.nc, identity), name=identity)
        try:
            await source.start(timeout_s=30)
        except svids.SvidError as e:
            raise ValueError(f"mesh host: {e}") from None
        return source

    @staticmethod
    def _pinned_root(offered: bytes) -> bytes:
        """Keyvault's root key, checked against the pinned fingerprint (X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT)
        when one is set; without one the key from the mutually authenticated keyvault is used (logged)."""
        from x0tta6bl4.keyvault import pin
        fp = os.environ.get(pin.ENV_FINGERPRINT, "")
        if not fp:
            log.warning("keyvault root %s is not pinned (set %s)", pin.fingerprint(offered), pin.ENV_FINGERPRINT)
            return offered
        try:
            return pin.check(offered, fp).public_bytes()
        except pin.RootPinError as e:
            raise ValueError(f"mesh host: {e}") from None

    async def _fetch_identity(self, node: str, issue: bool = False):
        """The node's current identity from keyvault (gRPC); its root-signed records are applied
        to the trust at once, so the new key is known here before the KV watch delivers it."""
        import grpc

        from x0tta6bl4.keyvault.distribution import key_key, node_key
        from x0tta6bl4.pqc import NodeIdentity
        from x0tta6bl4.v1 import keyvault_pb2 as kpb
        assert self._stub is not None and self.trust is not None, "only with a keyvault, after _setup_keys()"
        resp = None
        if issue:
            try:
                resp = await self._stub.IssueIdentity(kpb.IssueIdentityRequest(node_id=node, return_private=True),
                                                      timeout=15)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
        if resp is None:
            resp = await self._bundles.get(node)
        r = resp.record
        self.trust.apply_many([(key_key(r.sig_key_id), r.signed_sig_record), (key_key(r.kem_key_id),
                               r.signed_kem_record), (node_key(node, "sig"), r.signed_sig_record),
                               (node_key(node, "kem"), r.signed_kem_record)])
        return await asyncio.to_thread(NodeIdentity.import_private, resp.private_bundle)

    async def _watch_keys(self) -> None:
        watcher, trust = self._watcher, self.trust
        assert watcher is not None and trust is not None, "started by _setup_keys()"
        while True:
            e = await next_update(watcher, timeout=60)
            if e is None:
                continue
            # drain what is already queued in one go: one entry per loop iteration falls far
            # behind a busy loop during a rotation (hundreds of entries at once)
            for entry in [e, *drain_queued(watcher)]:
                trust.apply(entry.key, entry.value, deleted=entry.operation in ("DEL", "PURGE"))

    def _on_key_change(self, key: str, verified, deleted: bool) -> None:
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "node" and parts[2] == "sig" and not deleted:
            rec = getattr(verified, "record", None)
            if rec is not None and not getattr(rec, "revoked", False):
                self._want_generation(parts[1], int(rec.generation), rec.key_id)
            return
        if len(parts) != 2:
            return
        kid = parts[1]
        for n, sec in self.security.items():
            prev = sec.previous
            if parts[0] == "key" and deleted and prev is not None and prev.signing.key_id == kid:
                sec.drop_previous()
                self._key_event(n, "keys.retired", {"generation": prev.generation, "sig_key_id": kid})
            elif parts[0] == "rev" and not deleted and kid in (sec.key_id, sec.identity.kem.key_id):
                self._key_event(n, "keys.revoked", {"key_id": kid})

    def _key_event(self, node: str, kind: str, details: dict) -> None:
        agent = self.runtime.agents[node]
        agent._emit_event(Event(kind, "", details))

    def beacon_verified(self, node: str, key_id: str) -> tuple[list[str], list[str]]:
        """(neighbours that accepted a HELLO of ``node`` signed with ``key_id``, those that did not yet).
        A running neighbour hosted here is asked directly; a neighbour hosted by another process
        counts once its HELLO echoes one of ``node``'s HELLOs signed with the new key
        (:meth:`NodeSecurity.peer_accepted`); remote neighbours that are not live links are skipped."""
        ok: list[str] = []
        wait: list[str] = []
        mine = self.security.get(node)
        links = self.runtime.agents[node].core.neighbours.links if node in self.runtime.agents else {}
        for p in self.topology.neighbours(node):
            if self.runtime.remote(p):
                if mine is None or p not in links:
                    continue
                (ok if mine.key_id == key_id and mine.peer_accepted(p) else wait).append(p)
                continue
            sec, agent = self.security.get(p), self.runtime.agents.get(p)
            if sec is None or agent is None or not agent.running:
                continue
            (ok if sec.peer_key(node) == key_id else wait).append(p)
        return ok, wait

    def _want_generation(self, node: str, generation: int, key_id: str) -> None:
        """Keyvault published a new current signing key for ``node`` (whoever asked for the rotation:
        meshctl, MCP, the executor, a schedule): reload the hosted node's keys unless it already has them."""
        sec = self.security.get(node)
        if sec is None or self.authority is not None or self._stub is None:
            return
        if generation <= sec.identity.generation or key_id == sec.key_id:
            return
        self._wanted_gen[node] = max(self._wanted_gen.get(node, 0), generation)
        t = self._auto_reloads.get(node)
        if t is None or t.done():
            self._auto_reloads[node] = asyncio.get_running_loop().create_task(
                self._auto_reload(node), name=f"mesh-keys-reload-{node}")

    async def _auto_reload(self, node: str) -> None:
        for _ in range(5):      # a rotation published while reloading: once more (bounded)
            sec = self.security.get(node)
            if sec is None or self._wanted_gen.get(node, 0) <= sec.identity.generation:
                return
            try:
                msg = await self.reload_keys(node)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - keyvault unreachable meanwhile: the next record or RELOAD_KEYS retries
                log.warning("node %s: automatic key reload failed: %s", node, e)
                self._key_event(node, "keys.reload_failed", {"error": str(e)[:200]})
                return
            log.info("node %s: %s (automatic, on the new record in the keys bucket)", node, msg)

    async def reload_keys(self, node: str) -> str:
        if node not in self.security:
            return "agent uses the structural verifier: no keys to reload"
        async with self._reload_locks.setdefault(node, asyncio.Lock()):
            return await self._reload_keys(node)

    async def _reload_keys(self, node: str) -> str:
        sec = self.security.get(node)
        if sec is None:
            return "agent uses the structural verifier: no keys to reload"
        t0 = time.monotonic()
        old = sec.identity
        if self.authority is not None:
            ident = self.authority.identities[node]
        else:
            ident = await self._fetch_identity(node)
        sec.reload(ident)
        new_kid = sec.key_id
        self.runtime.agents[node].hello_soon(0)        # announce the new key now, not at the next interval
        self._key_event(node, "keys.reloaded", {"generation": ident.generation, "sig_key_id": new_kid,
                                                "previous_generation": old.generation,
                                                "previous_sig_key_id": old.signing.key_id})
        agent = self.runtime.agents[node]
        deadline = t0 + self.reload_verify_timeout
        ok, wait = self.beacon_verified(node, new_kid)
        while wait and agent.running and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            ok, wait = self.beacon_verified(node, new_kid)
        ms = (time.monotonic() - t0) * 1000
        verdict = "verified" if not wait else "unverified"
        self._key_event(node, f"keys.{verdict}", {"generation": ident.generation, "sig_key_id": new_kid,
                                                  "neighbours_ok": ",".join(ok), "neighbours_waiting": ",".join(wait),
                                                  "ms": f"{ms:.1f}"})
        return (f"keys reloaded: generation {ident.generation} sig {new_kid}; beacon {verdict} by "
                f"{len(ok)}/{len(ok) + len(wait)} neighbours in {ms:.0f} ms")

    # ---- agent -> bus ---------------------------------------------------------
    def _loss(self, d: dict) -> float:
        """Loss over the last report interval (acked vs timed-out DATA), else the link loss."""
        c = d.get("counters") or {}
        acked, lost = float(c.get("acked", 0)), float(c.get("ack_timeouts", 0))
        pa, pl = self._last_outcomes.get(d["node_id"], (0.0, 0.0))
        self._last_outcomes[d["node_id"]] = (acked, lost)
        da, dl = acked - pa, lost - pl
        if da + dl > 0:
            return 100.0 * dl / (da + dl)
        links = d.get("links") or []
        return 100.0 * sum(float(q.get("loss_rate", 0)) for q in links) / len(links) if links else 0.0

    def _p99_ms(self, node: str) -> float:
        """p99 of DATA round-trip (acks) and one-way (deliveries) latency over the recent window."""
        agent = self.runtime.agents[node]
        now = agent.clock()
        cutoff = now - self.latency_window_ns
        samples = [t_rx - ts for (t_rx, _, _, ts) in reversed(agent.acks) if t_rx >= cutoff]
        samples += [t_rx - ts for (t_rx, _, _, ts) in reversed(agent.deliveries) if t_rx >= cutoff]
        if not samples:
            return 0.0
        samples.sort()
        return samples[min(len(samples) - 1, int(0.99 * len(samples)))] / 1e6

    async def _on_telemetry(self, d: dict) -> None:
        if not self.active:
            return
        assert self.publisher is not None, "agents run after start()"
        try:
            t = to_proto(d, len(self.runtime.agents), self._loss(d), self._p99_ms(d["node_id"]))
            await self.publisher.emit(subjects.telemetry(t.node_id), t)
        except (InvalidMessage, KeyError, TypeError, ValueError) as e:
            log.warning("telemetry of %s not sent: %s", d.get("node_id"), e)

    async def _on_event(self, rec: dict) -> None:
        if not self.active:
            return
        assert self.publisher is not None, "agents run after start()"
        if rec["kind"] not in ("neighbour_lost", "route_broken", "route_repaired") and \
                not rec["kind"].startswith(("security", "keys.", "channel.")):
            return
        with tracer().start_as_current_span(f"agent.{rec['kind']}", attributes={"x0.node": rec["node_id"]}):
            ev = mesh_pb2.MeshEvent(meta=new_meta("mesh-agent"), node_id=rec["node_id"], kind=rec["kind"],
                                    peer=rec.get("peer") or "", details=rec.get("details") or {})
            ev.meta.ts_unix_ns = rec.get("ts_ns") or ev.meta.ts_unix_ns
            await self.publisher.publish(subjects.mesh_event(ev.node_id), ev)

    # ---- bus -> agent ---------------------------------------------------------
    async def _on_command(self, msg) -> None:
        node = msg.subject.rsplit(".", 1)[-1]
        ok, detail = True, "ok"
        try:
            cmd = decode(mesh_pb2.MeshCommand, msg.data)
            addressed = cmd.params.get("host", "")
            if (addressed and addressed != self.instance) or (not addressed and not self.active):
                return          # another host's command, or a standby host leaving it to the active one
            if cmd.kind == HOST_OP_KIND and cmd.params.get("host_op"):
                detail = await self.host_op(cmd.params["host_op"], dict(cmd.params))
            else:
                detail = await self.apply(node, cmd.kind, cmd.peer, dict(cmd.params))
        except (InvalidMessage, KeyError, ValueError) as e:
            ok, detail = False, str(e)
        reply = mesh_pb2.MeshEvent(meta=new_meta("mesh-agent"), node_id=node,
                                   kind="command.ok" if ok else "command.failed", details={"detail": detail})
        if msg.reply and self.nc is not None:   # commands arrive only through self.nc
            await self.nc.publish(msg.reply, reply.SerializeToString())

    # ---- blue-green ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        keys = "offline" if self.offline_keys else f"keyvault:{self.keyvault_addr}" if self.keyvault_addr else ""
        return {"instance": self.instance, "version": self.version, "active": self.active, "pid": os.getpid(),
                "nodes": self.nodes, "topology": self.topology_spec, "health_port": self.health_port,
                "traffic": [f"{s}:{d}" for s, d, _ in self._flows],
                "rate": self._flows[0][2] if self._flows else 0.0, "telemetry_interval": self.telemetry_interval,
                "keys": keys, "ready": self.ready, "converged": self.runtime.started and self.runtime.converged(),
                "bus_identity": self.creds.identity if self.creds else os.environ.get("X0TTA6BL4_NATS_IDENTITY", "")}

    def stats(self) -> dict[str, Any]:
        """Per hosted node: DATA sent per flow and delivered per origin, security state (key id,
        key id of each neighbour's current send session, last accepted HELLO key), selected
        counters; plus the process's CPU time and the trust's verification counters."""
        ru = os.times()
        nodes = {}
        for n in self.nodes:
            a = self.runtime.agents[n]
            c = a.counters
            delivered: dict[str, int] = {}
            for d in a.deliveries:
                delivered[d[1]] = delivered.get(d[1], 0) + 1
            rec: dict[str, Any] = {
                "running": a.running, "delivered_from": delivered,
                "sent_to": {d: k for (s_, d), k in self.flow_sent.items() if s_ == n},
                "counters": {k: v for k, v in c.items() if k.startswith(("dropped.", "hs.", "channels.", "hello.",
                                                                          "events.keys", "keys."))
                             or k in ("sent", "delivered", "acked", "forwarded", "ack_timeouts", "signed")}}
            sec = self.security.get(n)
            if sec is not None:
                rec["key_id"] = sec.key_id
                rec["sessions"] = {p: list(sec.session_keys(p) or ("", "")) for p in self.topology.neighbours(n)}
                rec["hello_keys"] = {p: sec.peer_key(p) or "" for p in self.topology.neighbours(n)}
            nodes[n] = rec
        return {"instance": self.instance, "pid": os.getpid(), "cpu_s": ru.user + ru.system,
                "trust": dict(self.trust.stats) if self.trust is not None else {}, "nodes": nodes}

    async def host_op(self, op: str, params: dict[str, str] | None = None) -> str:
        """Host-level command; answers with JSON: the host's status (blue-green ops ``status``,
        ``standby``, ``activate``, ``retire``; ``traffic`` with ``flows`` = "SRC:DST,..." of hosted
        sources and ``rate``; ``traffic_stop``) or its :meth:`stats` (``stats``)."""
        params = params or {}
        if op == "stats":
            return json.dumps(self.stats())
        if op == "traffic":
            rate = float(params.get("rate", "20"))
            for spec in filter(None, params.get("flows", "").split(",")):
                src, _, dst = spec.partition(":")
                self.traffic(src, dst, rate)
        elif op == "traffic_stop":
            self.stop_traffic()
        elif op == "standby":
            self.active = False
        elif op == "activate":
            self._last_outcomes.clear()
            self.active = True
        elif op == "retire":
            self.active = False
            asyncio.get_running_loop().call_later(0.05, self.retired.set)
        elif op != "status":
            raise ValueError(f"unknown host_op {op!r}")
        if op in ("standby", "activate", "retire"):
            log.info("host %s (version %s): %s", self.instance, self.version or "-", op)
        return json.dumps(self.status())

    async def apply(self, node: str, kind: int, peer: str = "", params: dict | None = None) -> str:
        params = params or {}
        agent = self.runtime.agents.get(node)
        if agent is None:
            raise KeyError(f"node {node!r} is not hosted here")
        if kind == C.KIND_AVOID_NODE:
            agent.avoid(peer)
        elif kind == C.KIND_UNAVOID_NODE:
            agent.unavoid(peer)
        elif kind == C.KIND_FLUSH_ROUTES:
            agent.flush_routes()
        elif kind == C.KIND_SHUTDOWN:
            await agent.shutdown()
        elif kind == C.KIND_RESTART:
            if agent.running:
                agent.kill()
            await agent.revive()
            return "agent restarted"
        elif kind == C.KIND_FAULT:
            t = params.get("type")
            if t == "kill":
                agent.kill()
            elif t == "revive":
                await agent.revive()
            else:
                agent.apply_fault(params)
            return f"fault {t} applied"
        elif kind == C.KIND_HEAL:
            agent.impair.clear()
            if agent.killed:
                await agent.revive()
                return "impairments cleared, agent revived"
        elif kind == C.KIND_RELOAD_KEYS:
            return await self.reload_keys(node)
        else:
            raise ValueError(f"unknown command kind {kind}")
        return "ok"


class HostHealthServer(HealthServer):
    """/health answers 503 when the host was started with --fail-health (canary aid)."""

    def route(self, path: str) -> tuple[str, str, bytes]:
        if path == "/health" and getattr(self.target, "fail_health", False):
            return ("503 Service Unavailable", "application/json",
                    json.dumps({"service": self.target.name, "status": "failing", "reason": "--fail-health"}).encode())
        return super().route(path)


def load_addresses(path: str) -> dict[str, tuple[str, int]]:
    """The ``--addresses`` file: JSON ``{node: [host, port]}``."""
    with open(path, encoding="utf-8") as f:
        return {n: (a[0], int(a[1])) for n, a in json.load(f).items()}


async def _main(args: argparse.Namespace) -> int:
    setup_tracing("mesh-agent", args.data_dir, None)
    topo = parse_spec(args.topology, seed=args.seed)
    nodes = [n for n in args.nodes.split(",") if n] if args.nodes else None
    addresses = load_addresses(args.addresses) if args.addresses else None
    config = CoreConfig(hello_interval=args.hello_interval) if args.hello_interval else None
    sec_opts = {"rekey_spread_s": args.rekey_spread} if args.rekey_spread else None
    host = MeshHost(args.nats, topo, nodes=nodes, addresses=addresses, config=config,
                    telemetry_interval=args.telemetry_interval, seed=args.seed,
                    keyvault=args.keyvault or None, offline_keys=args.offline_keys, max_skew_s=args.max_skew,
                    instance=args.instance or None, version=args.version, standby=args.standby,
                    fail_health=args.fail_health, security_options=sec_opts)
    host.topology_spec, host.health_port = args.topology, args.health_port
    await host.start()
    health = None
    if args.health_port:
        health = HostHealthServer(host, args.health_port)
        await health.start()
    for spec in args.traffic:
        src, _, dst = spec.partition(":")
        host.traffic(src, dst, args.rate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"ready": True, "nodes": host.nodes, "instance": host.instance,
                      "links": sorted(sorted(link) for link in topo.links)}), flush=True)
    retired = asyncio.create_task(host.retired.wait())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([retired, stopped], return_when=asyncio.FIRST_COMPLETED)
    retired.cancel()
    stopped.cancel()
    await host.stop()
    if health:
        await health.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nats", required=True)
    p.add_argument("--topology", default="grid:9", help="grid:N, line:N, ring:N, rgg:N, ba:N or a YAML/TOML file")
    p.add_argument("--nodes", default="", help="host only these nodes of the topology (comma-separated; "
                   "the others run in other host processes, see x0tta6bl4.mesh.cluster)")
    p.add_argument("--addresses", default="", help="JSON file {node: [host, port]} for every node: where each "
                   "hosted agent binds and where remote neighbours listen (required with --nodes)")
    p.add_argument("--hello-interval", type=float, default=0.0, help="HELLO period in s (default 0.2)")
    p.add_argument("--rekey-spread", type=float, default=0.0,
                   help="with keys: spread each link's re-key after a rotation over [0, S) s")
    p.add_argument("--traffic", action="append", default=[], help="SRC:DST DATA flow (repeatable)")
    p.add_argument("--rate", type=float, default=20.0, help="packets per second per flow")
    p.add_argument("--telemetry-interval", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--keyvault", default=os.environ.get("X0TTA6BL4_KEYVAULT_ADDR", ""),
                   help="keyvault gRPC HOST:PORT: signed control packets and encrypted DATA channels "
                        "(env X0TTA6BL4_KEYVAULT_ADDR)")
    p.add_argument("--offline-keys", action="store_true",
                   help="locally generated identities under an in-process root (no keyvault)")
    p.add_argument("--max-skew", type=float, default=10.0, help="accepted control-packet timestamp skew (s)")
    p.add_argument("--health-port", type=int, default=0, help="serve /health and /ready here (8080 in containers)")
    p.add_argument("--standby", action="store_true",
                   help="blue-green: run the agents dark until a host_op=activate command")
    p.add_argument("--instance", default="", help="host instance id for addressed host commands (default host-pid)")
    p.add_argument("--version", default="", help="node-agent version label reported by host_op=status")
    p.add_argument("--fail-health", action="store_true",
                   help="canary aid: /health answers 503 (rehearses a blue-green rollback)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mesh-host %(levelname)s %(message)s")
    try:
        return asyncio.run(_main(args))
    except (ValueError, OSError) as e:
        print(f"mesh host: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
