"""Monitor stage: node telemetry and mesh events in, health changes and cycle-starting windows out.

Handlers (bound by ``services/monitor/main.py``, tested on the in-memory bus):

- :func:`on_telemetry` (consumer ``monitor-telemetry``): a node's report, merged with the kernel signals
  of its host process, is stored as the node's latest telemetry and classified with the threshold table;
  a change of health is recorded (compare-and-set in the ``health`` bucket, so one replica wins), published
  as a ``HealthChange`` and audited; a node getting worse starts a MAPE-K cycle (a ``TelemetryWindow``).
- :func:`on_event` (consumer ``monitor-events``): ``neighbour_lost`` reports; enough of them declare the
  node down (unreachable, critical) - but never while the node itself still reports (its own newest report
  younger than ``own_report_fresh_s``; a report newer than a loss report withdraws it). ``security.*``
  events count as failed authentications of the peer. ``maintenance.start`` / ``maintenance.end`` (the
  operator's ``meshctl mesh down`` and ``mesh drain``, or the node's own mesh host) put the node in
  planned maintenance and take it out (see below). Every event is audited.
- Planned maintenance is not a failure: a node in maintenance (``maint.<node>`` in the ``health`` bucket,
  so replicas and a restarted monitor know it) starts no cycle when it gets worse or goes silent, is left
  out of every window (the analyzer never sees it) and out of the mesh's health; its health changes are
  still recorded, with the reason. Maintenance ends with ``maintenance.end`` (a node unhealthy then that
  does not report within ``stale_after_s`` starts a cycle: from now on it is a failure) or when the node
  reports from another mesh generation (a new mesh under the same names).
- Both refuse what a node cannot have sent (:func:`admit`): a ``node_id`` that is not the subject's (the
  bus lets a node agent publish only its own subjects, so that is the sender's identity), a timestamp
  more than ``max_future_s`` ahead or ``max_age_s`` behind the monitor's clock. A refusal is counted
  (``refusals``, Prometheus) and audited (``telemetry.refused`` / ``event.refused`` with the reason; at most
  once per ``refusal_audit_every_s`` per kind and node, with the number suppressed meanwhile, so a flood
  cannot fill the audit trail); the message is acknowledged and changes nothing.
- :func:`stale_tick` (background, :func:`staleness`): a node silent for ``stale_after_s`` is unreachable;
  a node its neighbours reported lost is declared down once its own reports stop too.
- :func:`window_tick` (background, :func:`periodic_windows`): a window every ``window_s`` when configured.
- :func:`on_security`: a kernel security signal of a monitored process (from the monitor's collector).
- :func:`info` and :func:`request_cycle`: the answers of ``monitor.rpc.Info`` and ``monitor.rpc.Cycle``.

The ``health`` bucket holds ``node.<node>`` (the node's Health value), ``mesh`` (the mesh's),
``lost.<node>.<reporter>`` (when a neighbour reported the node lost) and ``maint.<node>`` (JSON: since,
reason, who announced it, the mesh generation; while the node is in planned maintenance). :func:`apply_telemetry` and
:func:`apply_health` keep the per-process caches in :class:`MonitorDeps` equal to the buckets.

Partitions (``partitions`` > 1, X0TTA6BL4_MONITOR_PARTITIONS): the MESH stream stores each node's reports
under its partition (nats-server's ``{{partition(K,1)}}`` of the node's subject token,
:func:`x0tta6bl4.bus.subjects.partition_of`) and each partition has its durable consumer; a replica of
partition ``partition`` handles only its nodes' reports and alone judges their staleness, their neighbours'
loss reports and their kernel signals (:meth:`MonitorDeps.owns`), so no two replicas open a cycle for one node.
Mesh events stay on one shared consumer. The other partitions' nodes come from the ``telemetry`` bucket kept
undecoded until a window or a neighbours' count reads them (:meth:`MonitorDeps.sync_view`): windows still
carry neighbours of every partition.

No broker here: handlers use only the :class:`~x0tta6bl4.bus.ports.Context` they are given.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.ports import CasConflict, Context, Entry, cas_update
from x0tta6bl4.ids import new_id
from x0tta6bl4.mapek import monitor as assessing
from x0tta6bl4.mapek.health import classify_node, mesh_health
from x0tta6bl4.mapek.liveness import Deadlines, Lag
from x0tta6bl4.mapek.state import MeshView
from x0tta6bl4.monitoring.thresholds import Thresholds
from x0tta6bl4.v1 import common_pb2, events_pb2, mesh_pb2

if TYPE_CHECKING:
    from x0tta6bl4.monitoring.feed import SecuritySignal

log = logging.getLogger("x0tta6bl4.monitor")

HEALTHY = common_pb2.HEALTH_HEALTHY
HEALTH_BUCKET = "health"
TELEMETRY_BUCKET = "telemetry"
MESH_KEY = "mesh"
NEIGHBOUR_LOST = "neighbour_lost"
SECURITY_PREFIX = "security."
MAINTENANCE_START, MAINTENANCE_END = "maintenance.start", "maintenance.end"


def node_key(node: str) -> str:
    return f"node.{subjects.token(node)}"


def lost_key(lost: str, reporter: str) -> str:
    return f"lost.{subjects.token(lost)}.{subjects.token(reporter)}"


def maintenance_key(node: str) -> str:
    return f"maint.{subjects.token(node)}"


class Gauges(Protocol):
    """Where the monitor's health gauges go (Prometheus in the service; nothing in tests). ``node`` is
    called for every report: it must be cheap (the service keeps the newest and sets the gauges later)."""

    def node(self, t: events_pb2.NodeTelemetry) -> None: ...

    def node_health(self, node: str, health: int) -> None: ...

    def mesh_health(self, health: int) -> None: ...


class NoGauges:
    def node(self, t: events_pb2.NodeTelemetry) -> None:
        pass

    def node_health(self, node: str, health: int) -> None:
        pass

    def mesh_health(self, health: int) -> None:
        pass


def no_span(name: str, **_: Any) -> AbstractContextManager[Any]:
    return contextlib.nullcontext()


def no_kernel(node: str) -> Mapping[str, float]:
    return {}


@dataclass
class MonitorDeps:
    """What the monitor's handlers need besides the message and the bus."""

    thresholds: Thresholds
    stale_after_s: float = 2.0
    window_s: float = 0.0
    instance: str = ""
    # per-process caches of the buckets (kept equal to them by apply_telemetry / apply_health)
    view: MeshView = field(default_factory=MeshView)
    health: dict[str, int] = field(default_factory=dict)
    losses: assessing.LossReports = field(default_factory=assessing.LossReports)
    seen_ns: dict[str, int] = field(default_factory=dict)
    # the kernel collector (signals per node, and what it is for monitor.rpc.Info)
    kernel_for: Callable[[str], Mapping[str, float]] = no_kernel
    collector_info: Callable[[], Mapping[str, Any]] = dict
    gauges: Gauges = field(default_factory=NoGauges)
    clock_ns: Callable[[], int] = time.time_ns
    span: Callable[..., AbstractContextManager[Any]] = no_span     # span(name, attributes={...}) for background work
    # what a node may claim (see admit) and when its own reports outweigh its neighbours' loss reports
    max_future_s: float = 30.0
    max_age_s: float = 300.0
    own_report_fresh_s: float = 0.5
    refusal_audit_every_s: float = 10.0
    refusals: Counter[str] = field(default_factory=Counter)          # per reason kind (monitor.rpc.Info)
    count_refusal: Callable[[str], None] = lambda kind: None        # Prometheus, in the service
    refusal_audits: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # last audit ns, suppressed
    maintenance: dict[str, dict] = field(default_factory=dict)     # node -> its maint.<node> record
    rechecks: dict[str, int] = field(default_factory=dict)   # node out of maintenance, unhealthy -> look again at
    # liveness against what the monitor has read (mapek.liveness): its lag, and when each node goes stale
    lag: Lag = field(default_factory=Lag)
    deadlines: Deadlines = field(default_factory=Deadlines)
    # a node's report into the ``telemetry`` bucket without waiting for the broker's reply (the service: a
    # plain publish on the bucket's subject; None: an ordinary put). The next report supersedes a lost one.
    write_report: Callable[[str, bytes], Awaitable[None]] | None = None
    # cycles whose window could not be published: node -> (cause id, attempts, next try ns); retried by stale_tick
    unpublished: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    # telemetry partitioned across replicas (see "Partitions" above): this replica's partition of ``partitions``
    partitions: int = 1
    partition: int = 0
    foreign: dict[str, bytes | None] = field(default_factory=dict)   # other partitions' bucket changes, not decoded
    # False while the MESH stream stores telemetry for another partition count than this replica's (its consumer
    # would get none of its nodes' reports: judging their silence would declare healthy nodes dead)
    judging: bool = True
    judged_since_ns: int = 0     # judging resumed then: silence before it does not count (0: always judged)
    # the service estimates its lag from the broker (monitoring.wiring.attach_lag): no silence is judged before
    # the first estimate (a restarted replica's bucket holds reports older than its consumer's backlog)
    judge_after_first_lag: bool = False
    # mass silence: nodes whose reports stopped (no neighbour reported losing them) wait ``silence_hold_s`` past
    # their staleness; when ``mass_silence_min`` or more of them (and ``mass_silence_share`` of this replica's
    # nodes) are silent at once, it is their reporting path that failed - a mesh host stalled or cut off from
    # the bus - not the nodes: none is marked (their neighbours still hear them, or would report them lost)
    silence_hold_s: float = 1.0
    mass_silence_min: int = 8
    mass_silence_share: float = 0.1
    silent: dict[str, int] = field(default_factory=dict)     # node -> since when it is stale (not yet marked)
    mass_silence_since: int = 0                               # an episode under way since (0: none)
    _owned: dict[str, bool] = field(default_factory=dict)

    def owns(self, node: str) -> bool:
        """Whether this replica judges ``node`` (its partition's; every node when telemetry is not partitioned)."""
        if self.partitions <= 1:
            return True
        owned = self._owned.get(node)
        if owned is None:
            if len(self._owned) > 100_000:
                self._owned.clear()
            owned = self._owned[node] = subjects.partition_of(node, self.partitions) == self.partition
        return owned

    def telemetry_subject(self, node: str) -> str:
        """The subject ``node``'s report reaches this replica on (with its partition when partitioned)."""
        return subjects.telemetry_stored(node, self.partitions)

    def sync_view(self) -> int:
        """Decode the other partitions' telemetry changed since the last call into the view (before anything
        reads nodes of other partitions: a window, neighbours' agreement). Returns how many."""
        if not self.foreign:
            return 0
        pending, self.foreign = self.foreign, {}
        for key, value in pending.items():
            _apply(self, key, value)
        return len(pending)

    def in_maintenance(self, node: str) -> bool:
        return subjects.token(node) in self.maintenance

    def horizon_ns(self) -> int:
        """How far in time the monitor has read its telemetry (the clock when it is caught up)."""
        return self.lag.horizon(self.clock_ns())

    def track(self, t: events_pb2.NodeTelemetry) -> None:
        """Keep the node's staleness deadline equal to its newest report in the view (nodes of this replica's
        partition only: another partition's replica judges the others)."""
        if not self.owns(t.node_id):
            return
        if t.reachable:
            self.deadlines.touch(t.node_id, t.meta.ts_unix_ns + int(self.stale_after_s * 1e9))
        else:
            self.deadlines.forget(t.node_id)

    def unhealthy(self) -> list[str]:
        return [n for n, h in self.health.items() if h > HEALTHY]


# ---- caches of the buckets (mirror callbacks) -------------------------------------------------------
def apply_telemetry(deps: MonitorDeps, key: str, value: bytes | None) -> None:
    """A ``telemetry`` bucket change: the mesh view and the newest report time per node. A node of another
    partition is kept undecoded until something reads it (:meth:`MonitorDeps.sync_view`)."""
    if not deps.owns(key):
        deps.foreign[key] = value
        return
    _apply(deps, key, value)


def _apply(deps: MonitorDeps, key: str, value: bytes | None) -> None:
    if value is None:
        deps.view.remove(key)
        deps.deadlines.forget(key)
        return
    t = events_pb2.NodeTelemetry.FromString(value)
    known = deps.view.nodes.get(t.node_id)
    if known is not None and known.meta.ts_unix_ns > t.meta.ts_unix_ns and (known.reachable or not t.reachable):
        return      # the watcher replays an older value (it lags behind our own writes): keep the newer one
    # (a node's report older than our "unreachable" stamp is taken: the node's clock may be behind ours)
    deps.view.update(t)
    deps.track(t)
    ts = t.meta.ts_unix_ns if t.reachable else 0
    if ts > deps.clock_ns() + deps.max_future_s * 1e9:
        ts = 0                    # stored before timestamps were checked: never let it hide newer reports
    deps.seen_ns[t.node_id] = max(deps.seen_ns.get(t.node_id, 0), ts)


def apply_health(deps: MonitorDeps, key: str, value: bytes | None) -> None:
    """A ``health`` bucket change: node health, mesh health gauge, neighbour loss reports."""
    kind, _, rest = key.partition(".")
    if kind == "node":
        deps.health[rest] = int(value) if value else HEALTHY
        deps.gauges.node_health(rest, deps.health[rest])
    elif kind == MESH_KEY:
        deps.gauges.mesh_health(int(value or 0))
    elif kind == "lost":
        lost, _, reporter = rest.partition(".")
        if value:
            deps.losses.report(lost, reporter, int(value))
        else:
            _withdraw(deps, lost, [reporter])
    elif kind == "maint":
        record = _record(value) if value else None
        if record is None:
            deps.maintenance.pop(rest, None)
        else:
            deps.maintenance[rest] = record


def _record(value: bytes) -> dict | None:
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _withdraw(deps: MonitorDeps, lost: str, reporters: list[str]) -> None:
    got = deps.losses.reporters.get(lost, {})
    for r in reporters:
        got.pop(r, None)
    if not got:
        deps.losses.clear(lost)


# ---- what a node can have sent --------------------------------------------------------------------------
REFUSED_SUBJECT, REFUSED_FUTURE, REFUSED_STALE = "subject_mismatch", "future_timestamp", "stale_timestamp"


async def admit(what: str, node_id: str, ts_ns: int, subject: str, ctx: Context, deps: MonitorDeps) -> bool:
    """Whether a report (``what``: "telemetry" or "event") of ``node_id`` stamped ``ts_ns`` and received on
    ``ctx.subject`` (which should be ``subject``) is believable; a refusal is counted and audited."""
    if ctx.subject != subject:
        await refuse(what, REFUSED_SUBJECT, f"node_id {node_id!r} does not match subject {ctx.subject!r}",
                     ctx, deps, node_id=node_id)
        return False
    now = deps.clock_ns()
    if ts_ns > now + deps.max_future_s * 1e9:
        await refuse(what, REFUSED_FUTURE, f"timestamp {(ts_ns - now) / 1e9:.1f} s in the future "
                                           f"(at most {deps.max_future_s:g} s)", ctx, deps, node_id=node_id)
        return False
    if ts_ns < now - deps.max_age_s * 1e9:
        await refuse(what, REFUSED_STALE, f"timestamp {(now - ts_ns) / 1e9:.1f} s in the past "
                                          f"(at most {deps.max_age_s:g} s)", ctx, deps, node_id=node_id)
        return False
    return True


async def refuse(what: str, kind: str, reason: str, ctx: Context, deps: MonitorDeps, **details: Any) -> None:
    """Count a refusal and audit it: at most once per ``refusal_audit_every_s`` per kind and subject, with
    how many were refused meanwhile."""
    deps.refusals[kind] += 1
    deps.count_refusal(kind)
    key, now = (kind, ctx.subject), deps.clock_ns()
    last, suppressed = deps.refusal_audits.get(key, (0, 0))
    if last and now - last < deps.refusal_audit_every_s * 1e9:
        deps.refusal_audits[key] = (last, suppressed + 1)
        return
    if len(deps.refusal_audits) > 10_000:      # many subjects: forget the oldest records
        deps.refusal_audits.clear()
    deps.refusal_audits[key] = (now, 0)
    log.warning("monitor: %s on %s refused: %s", what, ctx.subject, reason)
    await ctx.audit(f"{what}.refused", ctx.subject, {"kind": kind, "reason": reason,
                                                     "suppressed_since_last": suppressed, **details})


# ---- handlers ---------------------------------------------------------------------------------------
async def on_telemetry(t: events_pb2.NodeTelemetry, ctx: Context, deps: MonitorDeps) -> None:
    """A node's report: keep the newest, merge its kernel signals, store it, re-evaluate the node.

    Telemetry is state, not a command: handling a redelivered report again is harmless (the newest report
    wins), so the service binds this handler without the per-event idempotency record, and wide."""
    if not await admit("telemetry", t.node_id, t.meta.ts_unix_ns, deps.telemetry_subject(t.node_id), ctx, deps):
        return
    deps.lag.handled(t.meta.ts_unix_ns, deps.clock_ns())
    if t.meta.ts_unix_ns < deps.seen_ns.get(t.node_id, 0):
        return  # older than what we have (out of order); keep the newest
    deps.seen_ns[t.node_id] = t.meta.ts_unix_ns
    deps.rechecks.pop(t.node_id, None)      # it reports: evaluated as any report is
    t.reachable = True
    t.kernel.update(deps.kernel_for(t.node_id))
    await store(t, ctx, deps, report=True)
    maint = deps.maintenance.get(subjects.token(t.node_id))
    if maint and maint.get("generation") and t.mesh_generation and t.mesh_generation != maint["generation"]:
        await end_maintenance(t.node_id, ctx, deps, f"reports from a new mesh generation {t.mesh_generation} "
                                                    f"(maintenance was for {maint['generation']})", recheck=False)
    await evaluate(t, ctx, deps, ctx.event_id)
    await withdraw_older_losses(t, ctx, deps)


async def on_event(ev: mesh_pb2.MeshEvent, ctx: Context, deps: MonitorDeps) -> None:
    """An agent's event: loss reports may declare a node down; security events count against the peer."""
    if not await admit("event", ev.node_id, ev.meta.ts_unix_ns, subjects.mesh_event(ev.node_id), ctx, deps):
        return
    deps.sync_view()
    verdict: dict[str, str] = {}
    if ev.kind == NEIGHBOUR_LOST and ev.peer:
        at = min(ev.meta.ts_unix_ns, deps.clock_ns())        # a report is never newer than its arrival
        await (await ctx.kv(HEALTH_BUCKET)).put(lost_key(ev.peer, ev.node_id), str(at).encode())
        deps.losses.report(ev.peer, ev.node_id, at)
        if deps.owns(ev.peer):
            verdict["verdict"] = await declare_if_down(ev.peer, ctx, deps, ctx.event_id)
        else:    # the replica of its partition knows its own reports: it declares it (health bucket: lost.*)
            verdict["verdict"] = f"left to the monitor of partition {subjects.partition_of(ev.peer, deps.partitions)}"
    elif ev.kind == MAINTENANCE_START:
        verdict["verdict"] = await start_maintenance(ev, ctx, deps)
    elif ev.kind == MAINTENANCE_END:
        verdict["verdict"] = await end_maintenance(ev.node_id, ctx, deps, ev.details.get("reason", "announced"))
    elif ev.kind.startswith(SECURITY_PREFIX) and ev.peer in deps.view.nodes:
        t = events_pb2.NodeTelemetry()
        t.CopyFrom(deps.view.nodes[ev.peer])
        t.failed_auth += 1
        await store(t, ctx, deps)
        await evaluate(t, ctx, deps, ctx.event_id)
    await ctx.audit(f"mesh.{ev.kind}", ev.node_id, {**dict(ev.details), "peer": ev.peer, **verdict})


async def start_maintenance(ev: mesh_pb2.MeshEvent, ctx: Context, deps: MonitorDeps) -> str:
    """``maintenance.start`` for ``ev.node_id``: recorded in the ``health`` bucket (replicas, restarts)."""
    node = ev.node_id
    known = deps.view.nodes.get(node)
    record = {"since_ns": ev.meta.ts_unix_ns, "reason": ev.details.get("reason", ""), "by": ev.meta.producer,
              "generation": ev.details.get("generation") or (known.mesh_generation if known else "")}
    await (await ctx.kv(HEALTH_BUCKET)).put(maintenance_key(node), json.dumps(record).encode())
    deps.maintenance[subjects.token(node)] = record
    await mesh_transition(ctx, deps)
    return "in maintenance: no repair"


async def end_maintenance(node: str, ctx: Context, deps: MonitorDeps, why: str, recheck: bool = True) -> str:
    """Take ``node`` out of maintenance. With ``recheck``, a node that is unhealthy now (say, stopped for a
    drain) gets ``stale_after_s`` to report again: if it has not by then, that is a failure from now on and
    starts a cycle (:func:`due_rechecks`). A node reporting from a new mesh is evaluated as any report is."""
    if subjects.token(node) not in deps.maintenance:
        return "not in maintenance"
    await (await ctx.kv(HEALTH_BUCKET)).delete(maintenance_key(node))
    deps.maintenance.pop(subjects.token(node), None)
    await ctx.audit("maintenance.ended", node, {"reason": why})
    t = deps.view.nodes.get(node)
    if recheck and t is not None and classify_node(t, deps.thresholds)[0] > HEALTHY:
        deps.rechecks[node] = deps.clock_ns() + int(deps.stale_after_s * 1e9)
    await mesh_transition(ctx, deps)
    return f"maintenance ended: {why}"


async def due_rechecks(ctx: Context, deps: MonitorDeps) -> list[str]:
    """Nodes out of maintenance that were unhealthy then and have not reported since: each starts a cycle.
    Returns them."""
    now, started = deps.clock_ns(), []
    for node, at in list(deps.rechecks.items()):
        if now < at:
            continue
        del deps.rechecks[node]
        deps.sync_view()          # the node may be another partition's (the event came on the shared consumer)
        t = deps.view.nodes.get(node)
        if t is None or deps.in_maintenance(node):
            continue
        level, reasons = classify_node(t, deps.thresholds)
        if level > HEALTHY:
            w = assessing.window(deps.view, f"maintenance-end:{node}:{at}", node,
                                 [*reasons, "not back after its maintenance"], now, exclude=set(deps.maintenance))
            with deps.span("monitor.recheck", attributes={"x0.node": node}):   # the cycle is traced
                await ctx.publish(subjects.MAPEK_TELEMETRY, w)
            started.append(node)
    return started


async def declare_if_down(node: str, ctx: Context, deps: MonitorDeps, cause_id: str) -> str:
    """Declare ``node`` down (unreachable) when enough neighbours reported it lost and it does not report
    itself any more; returns the verdict (audited with the loss report)."""
    peer = deps.view.nodes.get(node)
    if peer is None or not peer.reachable:
        return "not reachable already" if peer is not None else "unknown node"
    if not deps.losses.declared_down(node, deps.view):
        return "not enough neighbours agree yet"
    now = deps.clock_ns()
    own_age_s = (deps.horizon_ns() - deps.seen_ns.get(node, 0)) / 1e9
    if own_age_s < deps.own_report_fresh_s:
        return f"not down: {node} itself reported {own_age_s:.2f} s ago"
    t = assessing.mark_unreachable(deps.view, node, now)
    await store(t, ctx, deps)
    await evaluate(t, ctx, deps, cause_id)
    return "declared down"


async def withdraw_older_losses(t: events_pb2.NodeTelemetry, ctx: Context, deps: MonitorDeps) -> None:
    """The node reported after its neighbours said it was lost: those reports are contradicted, withdraw them."""
    older = [r for r, at in deps.losses.reporters.get(t.node_id, {}).items() if at < t.meta.ts_unix_ns]
    if not older:
        return
    kv = await ctx.kv(HEALTH_BUCKET)
    for reporter in older:
        await kv.delete(lost_key(t.node_id, reporter))
    _withdraw(deps, t.node_id, older)


async def on_security(sig: SecuritySignal, ctx: Context, deps: MonitorDeps) -> None:
    """A monitored process touched a sensitive path or tried to change privileges: audit it at once,
    then re-evaluate its nodes (the kernel map now holds the count, so they become a warning)."""
    await ctx.audit(f"security.{sig.kind}", ",".join(sig.nodes), sig.details())
    for node in sig.nodes:
        if node not in deps.view.nodes or not deps.owns(node):    # another partition's replica judges it
            continue
        t = events_pb2.NodeTelemetry()
        t.CopyFrom(deps.view.nodes[node])
        t.kernel.update(deps.kernel_for(node))
        await store(t, ctx, deps)
        await evaluate(t, ctx, deps, f"kernel:{sig.kind}:{node}:{sig.event.pid}:{sig.event.ts_ns}")


# ---- background work ----------------------------------------------------------------------------------
async def stale_tick(ctx: Context, deps: MonitorDeps) -> list[str]:
    """Nodes that stopped reporting are unreachable (the fallback when no neighbour reports them): silent
    for ``stale_after_s`` before the monitor's horizon (how far it has read, :mod:`x0tta6bl4.mapek.liveness`),
    found through their deadlines (no scan of every node). Cycles whose window could not be published are
    tried again. Returns the nodes marked in this tick (none while ``deps.judging`` is off)."""
    if not deps.judging or (deps.judge_after_first_lag and not deps.lag.horizon_ns):
        return []
    now = deps.clock_ns()
    horizon = deps.horizon_ns()
    stale_ns = int(deps.stale_after_s * 1e9)
    marked = []
    await retry_unpublished(ctx, deps)
    await due_rechecks(ctx, deps)
    lost = [n for n in deps.losses.reporters if deps.owns(n) and n in deps.view.nodes]   # reported lost, silent too?
    if lost:
        deps.sync_view()        # its neighbours (maybe of other partitions): how many must agree
    for node in lost:
        try:
            with deps.span("monitor.lost", attributes={"x0.node": node}):    # the cycle it may start is traced
                verdict = await declare_if_down(node, ctx, deps, f"lost:{node}:{deps.losses.first_report_ns(node)}")
            if verdict == "declared down":
                marked.append(node)
        except CasConflict as e:
            log.warning("monitor: %s reported lost, its health not recorded: %s", node, e)
    for node in deps.deadlines.due(horizon):
        t = deps.view.nodes.get(node)
        if t is None or not t.reachable:
            continue
        last = last_heard(t, deps)
        if horizon - last <= stale_ns:   # it reported since (or judging resumed since)
            if deps.judged_since_ns > t.meta.ts_unix_ns:
                deps.deadlines.touch(node, last + stale_ns)
            else:
                deps.track(t)
            continue
        if deps.in_maintenance(node):     # planned: marked at once, starts no cycle, counts in no mass silence
            await mark_stale(node, t, ctx, deps, now)
            marked.append(node)
            continue
        deps.silent.setdefault(node, last + stale_ns)     # stale since
    if deps.silent:
        marked += await judge_silent(ctx, deps, now, horizon)
    return marked


def last_heard(t: events_pb2.NodeTelemetry, deps: MonitorDeps) -> int:
    """When the node last counted as heard: its newest report, or the resumption of judging if later."""
    return max(t.meta.ts_unix_ns, deps.seen_ns.get(t.node_id, 0), deps.judged_since_ns)


def mass_silence(deps: MonitorDeps) -> bool:
    """Whether the nodes silent now (unmarked) are too many to be failures of their own."""
    owned = sum(1 for n in deps.view.nodes if deps.owns(n)) if deps.partitions > 1 else len(deps.view.nodes)
    n = len(deps.silent)
    return n >= deps.mass_silence_min and n >= deps.mass_silence_share * owned


async def mark_stale(node: str, t: events_pb2.NodeTelemetry, ctx: Context, deps: MonitorDeps, now: int) -> None:
    """``node`` is unreachable from now on: stored, and evaluated (a cycle unless it is in maintenance)."""
    with deps.span("monitor.stale", attributes={"x0.node": node}):
        u = assessing.mark_unreachable(deps.view, node, now)
        await store(u, ctx, deps)
        try:
            await evaluate(u, ctx, deps, f"stale:{node}:{t.meta.event_id}")
        except CasConflict as e:
            log.warning("monitor: %s stale, its health not recorded: %s", node, e)


async def judge_silent(ctx: Context, deps: MonitorDeps, now: int, horizon: int) -> list[str]:
    """Mark the silent nodes held for ``silence_hold_s`` unreachable (each starts a cycle), unless their silence
    is a mass silence: then none is, once per episode an audit event names them, and they are looked at again
    (the ones that report again leave it; a node its neighbours report lost is declared down by that path)."""
    stale_ns = int(deps.stale_after_s * 1e9)
    for node in [n for n in deps.silent if n not in deps.view.nodes or not deps.view.nodes[n].reachable
                 or horizon - last_heard(deps.view.nodes[n], deps) <= stale_ns]:
        del deps.silent[node]          # reported again (or judging resumed since), or marked by another path
    marked = []
    for node in [n for n in deps.silent if deps.in_maintenance(n)]:    # planned since it went silent
        del deps.silent[node]
        await mark_stale(node, deps.view.nodes[node], ctx, deps, now)
        marked.append(node)
    if mass_silence(deps):
        if not deps.mass_silence_since:
            deps.mass_silence_since = now
            sample = sorted(deps.silent)[:20]
            log.warning("monitor: %d nodes went silent at once (%s...): their reporting path, not the nodes - "
                        "none is marked unreachable", len(deps.silent), ", ".join(sample[:5]))
            with contextlib.suppress(Exception):      # the audit is a record, not a condition of holding
                await ctx.audit("health.mass_silence", "mesh", {"nodes": len(deps.silent), "sample": sample,
                                                             "stale_after_s": deps.stale_after_s})
        return marked
    deps.mass_silence_since = 0
    hold = int(deps.silence_hold_s * 1e9)
    for node, since in list(deps.silent.items()):
        if now - since < hold:
            continue
        del deps.silent[node]
        t = deps.view.nodes.get(node)
        if t is None or not t.reachable:
            continue
        await mark_stale(node, t, ctx, deps, now)
        marked.append(node)
    return marked


async def retry_unpublished(ctx: Context, deps: MonitorDeps) -> list[str]:
    """Evaluate again the nodes whose cycle could not be published (their health was put back, so the
    change is seen again and its window published, under the same cause: the same ids). Returns them."""
    now, tried = deps.clock_ns(), []
    for node, (cause, _, at) in list(deps.unpublished.items()):
        t = deps.view.nodes.get(node)
        if now < at:
            continue
        if t is None:
            del deps.unpublished[node]
            continue
        tried.append(node)
        try:
            await evaluate(t, ctx, deps, cause)
        except CasConflict as e:
            log.warning("monitor: %s: retrying its cycle, health not recorded: %s", node, e)
        if node in deps.unpublished and deps.unpublished[node][0] == cause and deps.unpublished[node][2] == at:
            del deps.unpublished[node]       # published (or nothing to publish any more)
    return tried


async def staleness(ctx: Context, deps: MonitorDeps) -> None:
    """The staleness task: never ends on an error (a tick that fails is logged; the next one runs)."""
    while True:
        await asyncio.sleep(min(0.1, deps.stale_after_s / 4))
        try:
            await stale_tick(ctx, deps)
        except asyncio.CancelledError:
            raise
        except Exception:  # the broker away, a bucket missing: the next tick tries again
            log.exception("monitor: staleness tick failed; next tick in %.2f s", min(0.1, deps.stale_after_s / 4))


async def window_tick(ctx: Context, deps: MonitorDeps) -> events_pb2.TelemetryWindow | None:
    """A periodic window over every node (replicas derive the same ids for the same period)."""
    if not deps.view.nodes or not deps.window_s:
        return None
    idx = int(deps.clock_ns() / 1e9 // deps.window_s)
    deps.sync_view()
    with deps.span("monitor.window"):
        w = assessing.window(deps.view, f"window:{idx}", exclude=set(deps.maintenance), focus=deps.unhealthy())
        await ctx.publish(subjects.MAPEK_TELEMETRY, w)
    return w


async def periodic_windows(ctx: Context, deps: MonitorDeps) -> None:
    if not deps.window_s:
        return
    while True:
        await asyncio.sleep(deps.window_s)
        await window_tick(ctx, deps)


# ---- requests -----------------------------------------------------------------------------------------
def info(deps: MonitorDeps) -> dict[str, Any]:
    """The answer of ``monitor.rpc.Info`` (``meshctl monitor info``): collector, hosts, thresholds."""
    deps.sync_view()
    return {"service": "monitor", "instance": deps.instance, **deps.collector_info(),
            **({"partition": deps.partition, "partitions": deps.partitions,
                "nodes_judged": sum(1 for n in deps.view.nodes if deps.owns(n))} if deps.partitions > 1 else {}),
            "thresholds": deps.thresholds.as_dict(), "nodes": len(deps.view.nodes), "refused": dict(deps.refusals)}


async def request_cycle(ctx: Context, deps: MonitorDeps, trigger: str = "",
                        reasons: list[str] | None = None) -> dict[str, Any]:
    """``meshctl cycle run`` (and the MCP server's cycle tools): start a MAPE-K cycle now over the latest
    telemetry of every node; ``trigger``: the node the operator asks about (one the monitor knows)."""
    deps.sync_view()
    if trigger and trigger not in deps.view.nodes:
        return {"error": f"unknown node {trigger!r}; known: {', '.join(sorted(deps.view.nodes)) or 'none'}"}
    with deps.span("monitor.cycle_request"):
        w = assessing.window(deps.view, f"operator:{new_id()}", trigger, reasons or ["operator request"],
                             first_symptom_ns=deps.clock_ns(), exclude=set(deps.maintenance) - {trigger},
                             focus=deps.unhealthy())
        await ctx.publish(subjects.MAPEK_TELEMETRY, w)
        await ctx.audit("cycle.requested", w.meta.cycle_id, {"nodes": len(w.nodes)}, cycle_id=w.meta.cycle_id)
    return {"cycle_id": w.meta.cycle_id, "nodes": len(w.nodes)}


# ---- decisions ----------------------------------------------------------------------------------------
async def store(t: events_pb2.NodeTelemetry, ctx: Context, deps: MonitorDeps, report: bool = False) -> None:
    """The node's latest telemetry: in the view, in the gauges and in the ``telemetry`` bucket (a node's own
    ``report`` through ``deps.write_report`` when set: no wait for the broker's reply per message; what the
    monitor decides - unreachable, a failed authentication - always with an acknowledged put)."""
    deps.view.update(t)
    deps.track(t)
    deps.gauges.node(t)
    if report and deps.write_report is not None:
        await deps.write_report(subjects.token(t.node_id), t.SerializeToString())
        return
    await (await ctx.kv(TELEMETRY_BUCKET)).put(subjects.token(t.node_id), t.SerializeToString())


async def transition(ctx: Context, key: str, new: int) -> int | None:
    """Compare-and-set a health key to ``new``; the previous value if this call changed it, else None
    (it already had that value: another replica recorded the change)."""
    previous: list[int] = []

    def change(entry: Entry | None) -> bytes | None:
        prev = int(entry.value) if entry is not None else HEALTHY
        previous[:] = [prev]
        return None if prev == new else str(new).encode()

    result = await cas_update(await ctx.kv(HEALTH_BUCKET), key, change)
    return previous[0] if result.written else None


async def evaluate(t: events_pb2.NodeTelemetry, ctx: Context, deps: MonitorDeps, cause_id: str) -> None:
    """Classify the node; on a change of health record it, start a cycle if it got worse, publish and audit
    the change, then the mesh's."""
    a = assessing.assess(t, deps.health.get(t.node_id, HEALTHY), deps.thresholds)
    if not a.changed:
        return
    prev = await transition(ctx, node_key(t.node_id), a.current)
    if prev is None:
        return  # another replica already recorded this change
    deps.health[t.node_id] = a.current
    a.previous = prev
    cycle_id = ""
    if deps.in_maintenance(t.node_id):
        a.reasons = [*a.reasons, "in planned maintenance: no repair"]
    elif a.starts_cycle:
        first = deps.losses.first_report_ns(t.node_id) or t.meta.ts_unix_ns
        deps.sync_view()
        w = assessing.window(deps.view, cause_id, t.node_id, a.reasons, first, exclude=set(deps.maintenance))
        cycle_id = w.meta.cycle_id
        try:
            await ctx.publish(subjects.MAPEK_TELEMETRY, w)
        except Exception as e:   # noqa: BLE001 - never leave the node recorded worse with no cycle
            await unpublished(t.node_id, cause_id, prev, a.current, e, ctx, deps)
            return
        deps.unpublished.pop(t.node_id, None)
    await ctx.publish(subjects.MAPEK_HEALTH, assessing.health_change(a, cycle_id))
    await ctx.audit("health.changed", t.node_id, {
        "from": common_pb2.Health.Name(a.previous), "to": common_pb2.Health.Name(a.current),
        "reasons": "; ".join(a.reasons), "cycle": cycle_id}, cycle_id=cycle_id)
    await mesh_transition(ctx, deps, cycle_id)
    if a.current == HEALTHY and t.reachable:
        kv = await ctx.kv(HEALTH_BUCKET)
        for reporter in list(deps.losses.reporters.get(t.node_id, {})):
            await kv.delete(lost_key(t.node_id, reporter))
        deps.losses.clear(t.node_id)


async def unpublished(node: str, cause_id: str, prev: int, current: int, error: Exception, ctx: Context,
                      deps: MonitorDeps) -> None:
    """A cycle's window could not be published (the publisher already retried a broker away): put the
    node's health back, so the change is seen again, and retry it from :func:`stale_tick` with back-off;
    escalated in the log and the audit trail (the audit, too, may fail: logged)."""
    attempts = deps.unpublished.get(node, ("", 0, 0))[1] + 1
    delay_ns = int(min(0.25 * 2 ** attempts, 30.0) * 1e9)
    deps.unpublished[node] = (cause_id, attempts, deps.clock_ns() + delay_ns)
    reverted = False
    with contextlib.suppress(Exception):
        kv = await ctx.kv(HEALTH_BUCKET)
        entry = await kv.get(node_key(node))
        if int(entry.value) == current:
            await kv.update(node_key(node), str(prev).encode(), entry.revision)
            reverted = True
    deps.health[node] = prev
    log.error("monitor: the cycle for %s could not be published (attempt %d, %s: %s); health %s, retried in "
              "%.2f s", node, attempts, type(error).__name__, error, "put back" if reverted else "NOT put back",
              delay_ns / 1e9)
    try:
        await ctx.audit("cycle.publish_failed", node, {"cause": cause_id, "attempt": attempts,
                                                       "error": f"{type(error).__name__}: {error}"})
    except Exception as e:  # noqa: BLE001 - the bus may be what failed
        log.error("monitor: auditing the failed cycle of %s failed too: %s", node, e)


async def mesh_transition(ctx: Context, deps: MonitorDeps, cycle_id: str = "") -> None:
    """The mesh's health (worst node not in maintenance) changed? Publish a HealthChange with node_id ""
    and audit it."""
    current, reasons = mesh_health({n: h for n, h in deps.health.items() if n not in deps.maintenance})
    prev = await transition(ctx, MESH_KEY, current)
    if prev is None:
        return
    deps.gauges.mesh_health(current)
    a = assessing.Assessment("", prev, current, reasons)
    await ctx.publish(subjects.MAPEK_HEALTH, assessing.health_change(a, cycle_id))
    await ctx.audit("health.mesh_changed", "mesh", {
        "from": common_pb2.Health.Name(a.previous), "to": common_pb2.Health.Name(current),
        "reasons": "; ".join(reasons)}, cycle_id=cycle_id)
