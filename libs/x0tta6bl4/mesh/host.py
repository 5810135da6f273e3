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
:class:`~.security.MeshTrust`. Private keys never leave the host: it generates each
hosted node's identity itself and keyvault certifies the public keys (``CertifyKeys``
with proof of possession, :mod:`x0tta6bl4.keyvault.certify`). The keys are kept in the
host's key directory (:mod:`.hostkeys`: ``--key-dir``, ``X0TTA6BL4_MESH_KEY_DIR``, default
``<data dir>/mesh-keys/<host>``; 0700, 0600 files written atomically) before they are
certified. At start a kept key is used again when it is keyvault's current record for the
node (same signing key id); otherwise the host generates the next generation and has it
certified (at most ``certify_concurrency`` certifications in flight).

Rotation: keyvault's ``Rotate`` of such a node publishes a root-signed rotation request
``rot.<node>`` (from_generation, overlap_s, request_id) in the bucket. For a hosted node whose
current generation is from_generation the host generates the next generation, keeps it,
certifies it with the requested overlap and switches the agent to it: the old generation stays
usable for handshakes in flight, a HELLO goes out at once, and the answer waits until the
beacon-signing check passed (every hosted neighbour has accepted a HELLO signed with the new
key, or ``reload_verify_timeout``). ``RELOAD_KEYS`` (the executor's ROTATE_KEYS sends it after
keyvault's Rotate) carries out a pending request for the node (read from the bucket if the watch
has not delivered it yet) or answers ``keys current`` when there is none (already carried out);
one rotation at a time per node, so one request never rotates a node twice. Audit-like
MeshEvents on ``mesh.event.<node>``: ``keys.loaded``, ``keys.reloaded``, ``keys.verified``,
``keys.retired``, ``keys.revoked``, ``keys.foreign`` (keyvault published a key for the node that
this host did not generate), ``channel.established`` (kinds outside ``security.*``, so the
monitor does not count them as failed authentication).

Sharding (``--nodes n0,n1,... --addresses FILE``): the host runs only these nodes of the topology,
binds each to its address from FILE (JSON ``{node: [host, port]}`` for every node) and sends to
neighbours hosted by other processes at theirs; :mod:`.cluster` starts and supervises such hosts.
``RELOAD_KEYS`` then counts a neighbour in another process as having accepted the new key once its
HELLO echoes one of the node's HELLOs signed with it (see :mod:`.security`); the node announces its
new key with an immediate HELLO. Host ops ``traffic`` (``flows`` "SRC:DST,...", ``rate``),
``traffic_stop`` and ``stats`` (per-node DATA counts per flow and origin, key ids, session keys, CPU
time) serve benchmarks and tests that drive hosts in other processes.

Mesh generation (``--generation``, default ``<instance>@<start ms>``; ``meshctl mesh up`` and a cluster give
all their host processes one): every report carries it (``NodeTelemetry.mesh_generation``), planned
actions name it (``params["generation"]`` of their commands), and a command for another generation is
refused (``command.failed``) and reported (MeshEvent ``command.refused``): a new mesh started under the same
node names never carries out an old mesh's reroutes.

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
import dataclasses
import functools
import json
import logging
import os
import pathlib
import signal
import socket
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import InvalidMessage, decode, new_meta
from x0tta6bl4.bus.connection import NatsCredentials, connect, install_event_loop
from x0tta6bl4.bus.health import HealthServer
from x0tta6bl4.bus.kvwatch import drain_queued, next_update, watch_bucket
from x0tta6bl4.bus.permissions import MESH_HOST_PREFIX
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.execution import changes
from x0tta6bl4.keyvault.distribution import key_key, node_key, rot_key
from x0tta6bl4.mesh.core import CoreConfig
from x0tta6bl4.mesh.hostkeys import CURRENT, ENV_KEY_DIR, NEXT, HostKeyDir, restamp
from x0tta6bl4.mesh.neighbours import HOP_COUNT
from x0tta6bl4.mesh.routing import AodvConfig, Event
from x0tta6bl4.mesh.runtime import MeshRuntime
from x0tta6bl4.mesh.security import LocalAuthority, MeshTrust, NodeSecurity
from x0tta6bl4.mesh.topology import Topology, parse_spec
from x0tta6bl4.pqc import NodeIdentity
from x0tta6bl4.telemetry.tracing import setup_tracing, tracer
from x0tta6bl4.v1 import events_pb2, mesh_pb2

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.subscription import Subscription
    from nats.js.kv import KeyValue

    from x0tta6bl4.v1.keyvault_pb2_grpc import KeyvaultStub

ENV_ROUTE_METRIC = "X0TTA6BL4_ROUTE_METRIC"
log = logging.getLogger("x0tta6bl4.mesh.host")
C = mesh_pb2.MeshCommand
# Host-level blue-green commands ride on an existing kind with params["host_op"] (the codec requires a
# non-zero kind); HEAL is the harmless choice should a host without host_op support receive one.
HOST_OP_KIND = C.KIND_HEAL
ROT_PREFIX = "rot"      # keys bucket: rot.<node> = keyvault's root-signed request for the node's next generation


def _matching(held: list[NodeIdentity], cur: tuple[str, int, bool] | None) -> NodeIdentity | None:
    """The kept identity whose signing key is keyvault's current (not revoked) one for the node."""
    if cur is None or cur[2]:
        return None
    return next((i for i in held if i.signing.key_id == cur[0]), None)


def _rotation_of(verified: Any) -> Any:
    """The rotation request (a :class:`~x0tta6bl4.pqc.RotationRequestRecord`: node_id, from_generation, overlap_s,
    request_id) of a verified ``rot.`` entry."""
    return getattr(verified, "rotation", None)


def _rpc_error(e: BaseException) -> str:
    """A gRPC error as "CODE: details", anything else as its message."""
    code, details = getattr(e, "code", None), getattr(e, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return str(e) or type(e).__name__


def link_loss_pct(d: dict[str, Any]) -> float:
    """A node that sends no DATA of its own: the mean loss of the links it routes over, measured by HELLO beacons.
    Links to nodes it was told to route around carry none of its traffic and are left out: a neighbour of a lossy
    node that everyone avoids is not lossy itself (counting that link made the neighbours look critical, drew
    false actions against them and failed the repair's verification)."""
    avoided = set(d.get("avoided") or ())
    links = [q for q in d.get("links") or [] if q.get("peer") not in avoided]
    return 100.0 * sum(float(q.get("loss_rate", 0)) for q in links) / len(links) if links else 0.0


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


class MeshHost:
    """Node agents of one topology (or a subset) bridged to NATS."""

    def __init__(self, nats_url: str, topology: Topology, nodes: Iterable[str] | None = None,
                 config: CoreConfig | None = None, telemetry_interval: float = 0.25, seed: int = 0,
                 ack_timeout: float = 0.4, latency_window_s: float = 0.5, keyvault: str | None = None,
                 offline_keys: bool = False, security_options: dict[str, Any] | None = None,
                 max_skew_s: float = 10.0, reload_verify_timeout: float = 2.0, instance: str | None = None,
                 version: str = "", standby: bool = False, fail_health: bool = False,
                 addresses: dict[str, tuple[str, int]] | None = None, creds: NatsCredentials | None = None,
                 svid_identity: str = "", key_dir: str | os.PathLike[str] | None = None,
                 data_dir: str | os.PathLike[str] | None = None, certify_concurrency: int = 8,
                 generation: str = ""):
        self.nats_url = nats_url
        self.creds = creds   # its mesh-host identity on a secured bus (default: X0TTA6BL4_NATS_* settings)
        self.topology = topology
        self.latency_window_ns = int(latency_window_s * 1e9)
        hosted = set(nodes) if nodes is not None else set(topology.nodes)
        self.nodes = [n for n in topology.nodes if n in hosted]
        self._hosted = frozenset(self.nodes)
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
        self._bucket = "keys"
        # the nodes' private keys: generated here, kept in the key directory, certified by keyvault
        self.key_dir = key_dir          # default: $X0TTA6BL4_MESH_KEY_DIR, else <data dir>/mesh-keys/<identity>
        self.data_dir = data_dir
        self.keys: HostKeyDir | None = None
        self.certify_concurrency = certify_concurrency   # certifications in flight at start (50 nodes: fast)
        self._trust_domain = ""
        self._held: dict[str, set[str]] = {}     # node -> signing key ids generated here (kept or certified)
        self._certified = 0                      # generations generated here and certified (tests, logs)
        # rotation from any entry point reaches the agents: keyvault's rotation request (rot.<node> in the
        # bucket) makes the host generate and certify the node's next generation and switch to it (one
        # rotation at a time per node; RELOAD_KEYS takes the same lock)
        self._reload_locks: dict[str, asyncio.Lock] = {}
        self._rotations: dict[str, Any] = {}     # node -> pending rotation request (from the bucket)
        self._auto_reloads: dict[str, asyncio.Task] = {}
        self._background: set[asyncio.Task] = set()    # following another host's rotation, taking over
        # blue-green: identity, standby/active, retirement
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        # the mesh generation its telemetry carries; a command for another generation is refused (a new mesh
        # never carries out an old one's reroutes): one id per started mesh (meshctl mesh up, a cluster)
        self.generation = generation or f"{self.instance}@{int(self.started_at * 1000)}"
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
        for t in [*self._auto_reloads.values(), *self._background]:
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
        source: dict[str, str] = {}
        if self.offline_keys:
            authority = self.authority = LocalAuthority()
            idents = {n: authority.issue(n) for n in self.nodes}
            source = dict.fromkeys(self.nodes, "offline")
            trust = self.trust = authority.trust(max_skew_s=self.max_skew_s)
            trust.listeners.append(self._on_key_change)
        else:
            from x0tta6bl4.rpc import svid as svids
            from x0tta6bl4.v1 import keyvault_pb2 as kpb
            from x0tta6bl4.v1 import keyvault_pb2_grpc as kpb_grpc
            assert self.nc is not None and self.keyvault_addr, "start() connects first, with a keyvault"
            identity = self._bus_identity()
            # the nodes' private keys live here, generated on this machine; keyvault only certifies them
            self.keys = HostKeyDir(self._key_dir_path(identity))
            # mutual TLS as spiffe://<td>/host/<host>: keyvault lets this host act only for its assigned nodes
            self._svid = await self._host_svid(svids, identity)
            self._trust_domain = self._svid.current.trust_domain
            self._grpc = svids.RenewingChannel(self.keyvault_addr, self._svid, "keyvault", self._trust_domain)
            stub = self._stub = self._grpc.stub(kpb_grpc.KeyvaultStub)
            info = await stub.Info(kpb.InfoRequest(), timeout=15)
            trust = self.trust = MeshTrust.pinned(self._pinned_root(info.root_public_key), max_skew_s=self.max_skew_s)
            trust.listeners.append(self._on_key_change)     # rotation requests in the initial state count too
            self._bucket = info.kv_bucket or "keys"
            self._watcher, initial = await watch_bucket(self.nc.jetstream(), self._bucket)
            for e in initial:
                trust.apply(e.key, e.value, deleted=e.operation in ("DEL", "PURGE"))
            self._watch_task = asyncio.create_task(self._watch_keys(), name="mesh-keys-watch")
            t0 = time.monotonic()
            gate = asyncio.Semaphore(max(1, self.certify_concurrency))
            results = await asyncio.gather(*(self._enrol(n, gate) for n in self.nodes), return_exceptions=True)
            idents = {}
            for n, r in zip(self.nodes, results, strict=True):
                if isinstance(r, BaseException):
                    raise ValueError(f"mesh host: keys of node {n}: {_rpc_error(r)}") from None
                idents[n], source[n] = r
            kept = sum(1 for s in source.values() if s == "kept")
            log.info("keys of %d nodes in %s: %d kept, %d generated and certified by keyvault in %.2f s",
                     len(self.nodes), self.keys.path, kept, len(self.nodes) - kept, time.monotonic() - t0)
        for n in self.nodes:
            remote = [p for p in self.topology.neighbours(n) if self.runtime.remote(p)]
            sec = NodeSecurity(n, idents[n], trust, remote_peers=remote, **opts)
            self.security[n] = sec
            self.runtime.agents[n].attach_security(sec)
            self._key_event(n, "keys.loaded", {"generation": idents[n].generation,
                                               "sig_key_id": idents[n].signing.key_id,
                                               "kem_key_id": idents[n].kem.key_id,
                                               "source": "offline" if self.offline_keys else "keyvault",
                                               "key": source[n]})
        for n in self.nodes:        # a rotation requested while this host was down
            self._schedule_rotation(n)

    def _bus_identity(self) -> str:
        identity = self.svid_identity or (self.creds.identity if self.creds else "") \
            or os.environ.get("X0TTA6BL4_NATS_IDENTITY", "")
        if not identity:
            raise ValueError("mesh host: keyvault needs this host's identity (its NATS credentials, or "
                             "X0TTA6BL4_NATS_IDENTITY=mesh-host-<name> on an open bus)")
        return identity

    def _key_dir_path(self, identity: str) -> pathlib.Path:
        """``key_dir`` (--key-dir), else $X0TTA6BL4_MESH_KEY_DIR, else <data dir>/mesh-keys/<host> (the bus
        identity mesh-host-<host>)."""
        if self.key_dir:
            return pathlib.Path(self.key_dir)
        if os.environ.get(ENV_KEY_DIR):
            return pathlib.Path(os.environ[ENV_KEY_DIR])
        data = self.data_dir or os.environ.get("X0TTA6BL4_DATA_DIR", "")
        if data:
            return pathlib.Path(data) / "mesh-keys" / subjects.token(identity.removeprefix(MESH_HOST_PREFIX))
        raise ValueError(f"mesh host: keys from keyvault need a directory for the nodes' private keys "
                         f"(--key-dir, {ENV_KEY_DIR} or --data-dir)")

    async def _host_svid(self, svids: Any, identity: str) -> Any:
        """This host's X.509 SVID from keyvault (``keyvault.svid.<bus identity>``), renewed at half-life."""
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

    async def _enrol(self, node: str, gate: asyncio.Semaphore) -> tuple[NodeIdentity, str]:
        """The node's identity at start: the key kept in the key directory when it is keyvault's current
        record for the node ("kept"), else a new generation generated here and certified ("generated")."""
        assert self.keys is not None and self.trust is not None
        kept, pending = await asyncio.gather(asyncio.to_thread(self.keys.load, node, CURRENT),
                                             asyncio.to_thread(self.keys.load, node, NEXT))
        held = [i for i in (kept, pending) if i is not None]
        self._held[node] = {i.signing.key_id for i in held}
        cur = self._record_of(self.trust.directory.current(node, "sig"))
        match = _matching(held, cur)
        if match is None and held:          # the bucket may lag behind keyvault: ask it
            cur = await self._public_record(node)
            match = _matching(held, cur)
        if match is not None and cur is not None:
            ident = restamp(match, cur[1])
            # the certified one becomes <node>.key; a next generation never certified is dropped, unless this
            # host is a standby sharing the directory with the active host (it may be that host's rotation)
            if match is not kept or ident is not match or (pending is not None and self.active):
                await asyncio.to_thread(self.keys.promote, ident)
            return ident, "kept"
        if cur is not None and cur[2]:
            raise ValueError(f"node {node} is revoked in keyvault (node ids are never reused)")
        async with gate:
            ident = await self._certify_new(node, cur[1] + 1 if cur is not None else 1)
        return ident, "generated"

    @staticmethod
    def _record_of(rec: Any) -> tuple[str, int, bool] | None:
        """(signing key id, generation, revoked) of a verified record from the bucket."""
        return None if rec is None else (rec.key_id, int(rec.generation), bool(rec.revoked))

    async def _public_record(self, node: str) -> tuple[str, int, bool] | None:
        """Keyvault's current record for ``node`` (:meth:`_get_public_keys`) as (key id, generation, revoked)."""
        r = await self._get_public_keys(node)
        return None if r is None else (r.sig_key_id, int(r.generation), bool(r.revoked))

    async def _get_public_keys(self, node: str) -> Any:
        """Keyvault's current record for ``node`` (GetPublicKeys), None when it has none. Its signed records and
        a pending rotation request go through the trust (verified against the pinned root) at once."""
        import grpc

        from x0tta6bl4.v1 import keyvault_pb2 as kpb
        assert self._stub is not None and self.trust is not None
        try:
            r = await self._stub.GetPublicKeys(kpb.GetPublicKeysRequest(node_id=node), timeout=15)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        self._apply_record(node, r)
        if r.signed_rotation_request:
            self.trust.apply(rot_key(node), r.signed_rotation_request)
        return r

    def _apply_record(self, node: str, r: Any) -> None:
        """Keyvault's signed records of ``node`` into the trust at once (before the KV watch delivers them)."""
        assert self.trust is not None
        entries = [(node_key(node, "sig"), r.signed_sig_record), (node_key(node, "kem"), r.signed_kem_record)]
        if not r.revoked:
            entries += [(key_key(r.sig_key_id), r.signed_sig_record), (key_key(r.kem_key_id), r.signed_kem_record)]
        self.trust.apply_many([(k, v) for k, v in entries if v])

    def _generate(self, node: str, generation: int) -> tuple[NodeIdentity, Any]:
        """A new identity for ``node``, kept in the key directory (slot "next") before anyone certifies it,
        and its certification request (proof of possession). Runs in a worker thread (key generation,
        signing and fsync stay off the agents' event loop)."""
        from x0tta6bl4.keyvault.certify import certify_request
        assert self.keys is not None
        ident = NodeIdentity.generate(self._trust_domain, node, now=time.time(), generation=generation)
        self.keys.save(ident, NEXT)
        return ident, certify_request(ident, nonce=os.urandom(16))

    async def _certify_new(self, node: str, generation: int, overlap_s: float = 0.0) -> NodeIdentity:
        """Generate ``node``'s next identity here, keep it, have keyvault certify its public keys
        (``CertifyKeys`` with proof of possession; the previous generation stays accepted for ``overlap_s``,
        0: keyvault's default) and make it the node's current key in the key directory."""
        from x0tta6bl4.v1 import keyvault_pb2 as kpb
        assert self._stub is not None and self.keys is not None
        ident, req = await asyncio.to_thread(self._generate, node, generation)
        self._held.setdefault(node, set()).add(ident.signing.key_id)
        r = await self._stub.CertifyKeys(kpb.CertifyKeysRequest(
            node_id=node, signing_public_key=req.signing_public_key, kem_public_key=req.kem_public_key,
            nonce=req.nonce, timestamp_unix=req.timestamp, proof=req.proof, overlap_s=overlap_s), timeout=15)
        if r.sig_key_id != ident.signing.key_id:
            raise ValueError(f"keyvault certified key {r.sig_key_id} for node {node}, not ours "
                             f"({ident.signing.key_id})")
        ident = restamp(ident, int(r.generation))
        self._apply_record(node, r)
        await asyncio.to_thread(self.keys.promote, ident)
        self._certified += 1
        return ident

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
        if len(parts) == 2 and parts[0] == ROT_PREFIX:
            self._on_rotation_request(parts[1], verified, deleted)
            return
        if len(parts) == 3 and parts[0] == "node" and parts[2] == "sig" and not deleted:
            rec = getattr(verified, "record", None)
            if rec is not None and not getattr(rec, "revoked", False):
                self._check_current(parts[1], rec)
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

    def _check_current(self, node: str, rec: Any) -> None:
        """Keyvault published a current signing key for a hosted node that this host did not generate: another
        host running the same nodes (blue-green) rotated them. When that host shares this key directory the
        node follows (:meth:`_follow`); otherwise it is logged and reported and the node keeps its own keys."""
        sec = self.security.get(node)
        if sec is None or self.authority is not None or rec.key_id in self._held.get(node, ()):
            return
        if int(rec.generation) <= sec.identity.generation:
            return
        self._spawn(self._follow(node, rec.key_id, int(rec.generation)), f"mesh-keys-follow-{node}")

    def _spawn(self, coro: Any, name: str) -> None:
        t = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    async def _follow(self, node: str, key_id: str, generation: int) -> None:
        """Switch ``node`` to keyvault's current key ``key_id`` if the key directory holds it."""
        assert self.keys is not None
        async with self._reload_locks.setdefault(node, asyncio.Lock()):
            sec = self.security[node]
            if sec.key_id == key_id or generation <= sec.identity.generation:
                return
            held = await asyncio.to_thread(self.keys.held, node)
            match = next((i for i in held if i.signing.key_id == key_id), None)
            if match is None:
                log.warning("node %s: keyvault's current key %s (generation %d) was not generated by this host; "
                            "the node keeps its key %s (generation %d)", node, key_id, generation, sec.key_id,
                            sec.identity.generation)
                self._key_event(node, "keys.foreign", {"sig_key_id": key_id, "generation": generation,
                                                       "own_sig_key_id": sec.key_id})
                return
            self._held.setdefault(node, set()).add(key_id)
            msg = await self._switch(node, restamp(match, generation), time.monotonic())
        log.info("node %s: %s (another host sharing the key directory rotated it)", node, msg)

    async def _take_over(self) -> None:
        """On activation (blue-green): every node whose keyvault record is not the key it signs with gets the
        current key from the key directory (shared with the host it replaces) or, if this host does not hold
        it, a new generation certified here; then pending rotation requests are carried out by this host."""
        trust, keys = self.trust, self.keys
        assert trust is not None and keys is not None
        gate = asyncio.Semaphore(max(1, self.certify_concurrency))

        async def one(node: str) -> None:
            async with gate, self._reload_locks.setdefault(node, asyncio.Lock()):
                rec, sec = trust.directory.current(node, "sig"), self.security[node]
                if rec is None or rec.revoked or rec.key_id == sec.key_id:
                    return
                held = await asyncio.to_thread(keys.held, node)
                match = next((i for i in held if i.signing.key_id == rec.key_id), None)
                t0 = time.monotonic()
                if match is not None:
                    self._held.setdefault(node, set()).add(rec.key_id)
                    ident = restamp(match, int(rec.generation))
                else:
                    ident = await self._certify_new(node, int(rec.generation) + 1)
                log.info("node %s: %s (taken over on activation)", node, await self._switch(node, ident, t0))
        results = await asyncio.gather(*(one(n) for n in self.nodes), return_exceptions=True)
        for n, r in zip(self.nodes, results, strict=True):
            if isinstance(r, Exception):
                log.warning("node %s: keys not taken over on activation: %s", n, _rpc_error(r))
                self._key_event(n, "keys.reload_failed", {"error": _rpc_error(r)[:200]})
        for n in self.nodes:
            self._schedule_rotation(n)

    # ---- rotation: the node generates, keyvault certifies ---------------------------------
    def _on_rotation_request(self, node: str, verified: Any, deleted: bool) -> None:
        """A ``rot.<node>`` entry: keyvault asks for the node's next generation (deleted: none pending)."""
        if node not in self._hosted:
            return
        req = None if deleted or verified is None else _rotation_of(verified)
        if req is None:
            self._rotations.pop(node, None)
            return
        self._rotations[node] = req
        self._schedule_rotation(node)

    def _schedule_rotation(self, node: str) -> None:
        """Start the node's rotation in the background when a request for its current generation is pending."""
        sec, req = self.security.get(node), self._rotations.get(node)
        if sec is None or req is None or self._stub is None or req.from_generation != sec.identity.generation:
            return
        if not self.active:     # a standby host (blue-green) leaves rotations to the active one
            return
        t = self._auto_reloads.get(node)
        if t is None or t.done():
            self._auto_reloads[node] = asyncio.get_running_loop().create_task(
                self._auto_rotate(node), name=f"mesh-keys-rotate-{node}")

    async def _auto_rotate(self, node: str) -> None:
        for _ in range(5):      # another request arrived while rotating: once more (bounded)
            sec, req = self.security.get(node), self._rotations.get(node)
            if sec is None or req is None or req.from_generation != sec.identity.generation or not self.active:
                return
            try:
                async with self._reload_locks.setdefault(node, asyncio.Lock()):
                    req = self._rotations.get(node)
                    if req is None or req.from_generation != self.security[node].identity.generation:
                        return          # RELOAD_KEYS did it meanwhile
                    msg = await self._rotate_locked(node, req)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - keyvault unreachable meanwhile: RELOAD_KEYS or a restart retries
                log.warning("node %s: key rotation failed: %s", node, _rpc_error(e))
                self._key_event(node, "keys.reload_failed", {"error": _rpc_error(e)[:200]})
                return
            log.info("node %s: %s (on keyvault's rotation request in the keys bucket)", node, msg)

    async def _fetch_rotation(self, node: str) -> Any:
        """The node's pending rotation request from keyvault's public record (when the watch has not delivered
        it yet), verified against the pinned root through the trust; None when there is none."""
        r = await self._get_public_keys(node)
        return self._rotations.get(node) if r is not None and r.signed_rotation_request else None

    async def reload_keys(self, node: str) -> str:
        """RELOAD_KEYS: carry out the node's pending rotation request (generate, keep, certify, switch, verify
        the beacon), or answer that its keys are current (the request was already carried out, or there is
        none). One at a time per node, shared with the rotations started from the bucket."""
        if node not in self.security:
            return "agent uses the structural verifier: no keys to reload"
        async with self._reload_locks.setdefault(node, asyncio.Lock()):
            return await self._reload_keys(node)

    async def _reload_keys(self, node: str) -> str:
        sec = self.security.get(node)
        if sec is None:
            return "agent uses the structural verifier: no keys to reload"
        t0 = time.monotonic()
        if self.authority is not None:
            ident = self.authority.identities[node]
            if ident.signing.key_id != sec.key_id:
                return await self._switch(node, ident, t0)
            return await self._current(node, t0)
        if not self.active:     # a standby host (blue-green) leaves rotations to the active one
            return await self._current(node, t0)
        gen = sec.identity.generation
        req = self._rotations.get(node)
        if req is None or req.from_generation != gen:
            req = await self._fetch_rotation(node) or req
        if req is not None and req.from_generation == gen:
            return await self._rotate_locked(node, req)
        return await self._current(node, t0)

    async def _rotate_locked(self, node: str, req: Any) -> str:
        """The node's next generation for rotation request ``req`` (caller holds the node's lock)."""
        t0 = time.monotonic()
        old = self.security[node].identity
        ident = await self._certify_new(node, old.generation + 1, overlap_s=float(req.overlap_s))
        return await self._switch(node, ident, t0, request_id=str(req.request_id))

    async def _switch(self, node: str, ident: NodeIdentity, t0: float, request_id: str = "") -> str:
        """Sign with ``ident`` from now on (the old generation stays usable for handshakes in flight), announce
        it with an immediate HELLO and wait until every neighbour accepted a beacon signed with it."""
        sec = self.security[node]
        old = sec.identity
        sec.reload(ident)
        new_kid = sec.key_id
        self.runtime.agents[node].hello_soon(0)        # announce the new key now, not at the next interval
        details = {"generation": ident.generation, "sig_key_id": new_kid, "previous_generation": old.generation,
                   "previous_sig_key_id": old.signing.key_id}
        if request_id:
            details["request_id"] = request_id
        self._key_event(node, "keys.reloaded", details)
        ok, wait, ms = await self._await_beacon(node, new_kid, t0)
        verdict = "verified" if not wait else "unverified"
        self._key_event(node, f"keys.{verdict}", {"generation": ident.generation, "sig_key_id": new_kid,
                                                  "neighbours_ok": ",".join(ok), "neighbours_waiting": ",".join(wait),
                                                  "ms": f"{ms:.1f}"})
        return (f"keys reloaded: generation {ident.generation} sig {new_kid}; beacon {verdict} by "
                f"{len(ok)}/{len(ok) + len(wait)} neighbours in {ms:.0f} ms")

    async def _current(self, node: str, t0: float) -> str:
        """The answer to RELOAD_KEYS for a node with no rotation pending: its keys, and whether its neighbours
        accept its beacon (the rotation that brought them is usually just done)."""
        sec = self.security[node]
        ok, wait, ms = await self._await_beacon(node, sec.key_id, t0)
        verdict = "verified" if not wait else "unverified"
        return (f"keys current: generation {sec.identity.generation} sig {sec.key_id} (no rotation request "
                f"pending); beacon {verdict} by {len(ok)}/{len(ok) + len(wait)} neighbours in {ms:.0f} ms")

    async def _await_beacon(self, node: str, key_id: str, t0: float) -> tuple[list[str], list[str], float]:
        agent = self.runtime.agents[node]
        deadline = t0 + self.reload_verify_timeout
        ok, wait = self.beacon_verified(node, key_id)
        while wait and agent.running and time.monotonic() < deadline:
            await asyncio.sleep(0.02)     # polls the neighbours' tables (no event to wait on)
            ok, wait = self.beacon_verified(node, key_id)
        return ok, wait, (time.monotonic() - t0) * 1000

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
        return link_loss_pct(d)

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
            t.mesh_generation = self.generation
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
            wanted = cmd.params.get("generation", "")
            if wanted and wanted != self.generation:
                await self._refused(node, cmd, wanted)
                raise ValueError(f"refused: the command is for mesh generation {wanted!r}, this mesh is "
                                 f"{self.generation!r}")
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

    async def _refused(self, node: str, cmd: mesh_pb2.MeshCommand, wanted: str) -> None:
        """Report a command of another mesh generation (MeshEvent ``command.refused``, audited by the monitor)."""
        log.warning("refused %s for %s: generation %s, this mesh is %s", C.Kind.Name(cmd.kind), node, wanted,
                    self.generation)
        if self.publisher is not None:
            ev = mesh_pb2.MeshEvent(meta=new_meta("mesh-agent"), node_id=node, kind="command.refused", peer=cmd.peer,
                                    details={"reason": "another mesh generation", "command": C.Kind.Name(cmd.kind),
                                             "command_id": cmd.command_id, "generation": wanted,
                                             "current": self.generation})
            await self.publisher.publish(subjects.mesh_event(node), ev)

    # ---- blue-green ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        keys = "offline" if self.offline_keys else f"keyvault:{self.keyvault_addr}" if self.keyvault_addr else ""
        key_dir = str(self.keys.path) if self.keys is not None else ""
        return {"instance": self.instance, "generation": self.generation, "version": self.version,
                "active": self.active, "pid": os.getpid(),
                "nodes": self.nodes, "topology": self.topology_spec, "health_port": self.health_port,
                "traffic": [f"{s}:{d}" for s, d, _ in self._flows],
                "rate": self._flows[0][2] if self._flows else 0.0, "telemetry_interval": self.telemetry_interval,
                "keys": keys, "key_dir": key_dir, "ready": self.ready,
                "converged": self.runtime.started and self.runtime.converged(),
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
            was, self.active = self.active, True
            if not was and self.keys is not None:
                self._spawn(self._take_over(), "mesh-keys-take-over")
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
        elif kind == C.KIND_SET_LINK:
            return agent.set_link(peer, str(params.get("state", "")))
        elif kind == C.KIND_SET_CONFIG:
            return self.set_config(node, params)
        else:
            raise ValueError(f"unknown command kind {kind}")
        return "ok"


    def set_config(self, node: str, params: dict) -> str:
        """KIND_SET_CONFIG at ``node``: ``hello_interval`` / ``miss_count`` (checked by
        :func:`x0tta6bl4.execution.changes.config_values`), or ``restore=previous``."""
        agent = self.runtime.agents[node]
        if params.get(changes.RESTORE) == changes.PREVIOUS:
            return agent.restore_config()
        values = changes.config_values({k: v for k, v in params.items() if k != "generation"})
        if not values:
            raise ValueError("set config: no parameter (hello_interval, miss_count)")
        miss = values.get(changes.MISS_COUNT)
        return agent.set_config(values.get(changes.HELLO_INTERVAL), int(miss) if miss is not None else None)


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
    config = None
    if args.hello_interval or args.route_metric != "etx":
        config = CoreConfig()
        if args.hello_interval:
            config = dataclasses.replace(config, hello_interval=args.hello_interval)
        if args.route_metric == "hops":   # hop count: routes are kept until they break (nothing to re-measure)
            config = dataclasses.replace(config, metric=HOP_COUNT, aodv=AodvConfig(refresh_interval_ms=0))
    sec_opts = {"rekey_spread_s": args.rekey_spread} if args.rekey_spread else None
    host = MeshHost(args.nats, topo, nodes=nodes, addresses=addresses, config=config,
                    telemetry_interval=args.telemetry_interval, seed=args.seed,
                    keyvault=args.keyvault or None, offline_keys=args.offline_keys, max_skew_s=args.max_skew,
                    instance=args.instance or None, version=args.version, standby=args.standby,
                    fail_health=args.fail_health, security_options=sec_opts, key_dir=args.key_dir or None,
                    data_dir=args.data_dir, generation=args.generation)
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
    print(json.dumps({"ready": True, "nodes": host.nodes, "instance": host.instance, "generation": host.generation,
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
    p.add_argument("--route-metric", choices=("etx", "hops"), default=os.environ.get(ENV_ROUTE_METRIC) or "etx",
                   help="route choice: etx (default: measured loss both ways plus delay, paths re-measured every "
                        "second, docs/mesh.md) or hops (hop count, routes kept until they break: slow or lossy "
                        f"links are left to the loop; env {ENV_ROUTE_METRIC})")
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
    p.add_argument("--key-dir", default=os.environ.get(ENV_KEY_DIR, ""),
                   help="with --keyvault: the directory keeping the hosted nodes' private keys, generated here and "
                        "certified by keyvault (0700; env X0TTA6BL4_MESH_KEY_DIR; default "
                        "DATA_DIR/mesh-keys/<host>)")
    p.add_argument("--offline-keys", action="store_true",
                   help="locally generated identities under an in-process root (no keyvault)")
    p.add_argument("--max-skew", type=float, default=10.0, help="accepted control-packet timestamp skew (s)")
    p.add_argument("--health-port", type=int, default=0, help="serve /health and /ready here (8080 in containers)")
    p.add_argument("--standby", action="store_true",
                   help="blue-green: run the agents dark until a host_op=activate command")
    p.add_argument("--instance", default="", help="host instance id for addressed host commands (default host-pid)")
    p.add_argument("--generation", default="", help="the mesh generation its telemetry names and its commands must "
                   "name (default: instance@start ms; meshctl mesh up and a cluster give all their hosts one)")
    p.add_argument("--version", default="", help="node-agent version label reported by host_op=status")
    p.add_argument("--fail-health", action="store_true",
                   help="canary aid: /health answers 503 (rehearses a blue-green rollback)")
    args = p.parse_args(argv)
    if args.route_metric not in ("etx", "hops"):          # argparse does not check a default from the environment
        p.error(f"{ENV_ROUTE_METRIC}={args.route_metric!r}: expected etx or hops")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mesh-host %(levelname)s %(message)s")
    try:
        install_event_loop()           # uvloop when installed (X0TTA6BL4_EVENT_LOOP=asyncio: the standard loop)
        return asyncio.run(_main(args))
    except (ValueError, OSError) as e:
        print(f"mesh host: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
