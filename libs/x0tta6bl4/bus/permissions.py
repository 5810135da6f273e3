"""Who may say what on the bus: one NATS identity per service, mesh host, operator, audit reader, edge node
sync and the provisioner, each with least-privilege subject permissions derived from the subject table
(:mod:`x0tta6bl4.bus.subjects`). The nats-server authorization block and docs/security.md are generated
from here (no I/O in this module).

JetStream is reached through subjects too, so the same permissions decide which streams, consumers and
buckets an identity may touch: ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` pulls a durable consumer's
messages, ``$JS.ACK.<stream>.<durable>.>`` acknowledges them, ``$KV.<bucket>.<key>`` writes a key,
``$JS.API.DIRECT.GET.KV_<bucket>`` reads one. Nobody but the provisioner may create, update, delete or
purge a stream or a bucket; no identity may pull, acknowledge, create or delete a durable consumer it does
not own (a deny that wins over every allow); every identity has its own reply inbox prefix, so nobody reads
another's replies.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from x0tta6bl4.bus import subjects

JS = "$JS.API"
SERVICES = ("monitor", "analyzer", "planner", "governance", "executor", "keyvault")
OPERATOR = "operator"
AUDIT_READER = "audit-reader"
PROVISIONER = "provisioner"
EDGE = "edge"
DASHBOARD = "dashboard"
EDGE_DOC_KEY = "doc"          # the one key of the edge bucket that edge sync merges into (edge/sync.py)
MESH_HOST_PREFIX = "mesh-host-"


def inbox_prefix(identity: str) -> str:
    """The reply inbox prefix of an identity (connect with ``inbox_prefix=``)."""
    return "_INBOX_" + subjects.token(identity)


@dataclass(frozen=True)
class Permissions:
    identity: str
    kind: str                                  # service | mesh-host | operator | audit-reader | edge | dashboard
                                               # | provisioner
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()
    deny_subscribe: tuple[str, ...] = ()
    allow_responses: bool = False              # may answer requests it received (responders)
    doc: str = ""

    def as_nats(self) -> dict:
        """The ``permissions`` block of a nats-server user."""
        pub: dict = {"allow": list(self.publish)}
        if self.deny_publish:
            pub["deny"] = list(self.deny_publish)
        sub: dict = {"allow": list(self.subscribe)}
        if self.deny_subscribe:
            sub["deny"] = list(self.deny_subscribe)
        out: dict = {"publish": pub, "subscribe": sub}
        if self.allow_responses:
            out["allow_responses"] = True
        return out


# ---- building blocks ---------------------------------------------------------------------------------
def _consumer_api(c: subjects.Consumer) -> list[str]:
    """Pull, inspect and acknowledge one durable consumer (it is created by the provisioner)."""
    return [f"{JS}.CONSUMER.INFO.{c.stream}.{c.durable}", f"{JS}.CONSUMER.MSG.NEXT.{c.stream}.{c.durable}",
            f"$JS.ACK.{c.stream}.{c.durable}.>", f"{JS}.STREAM.INFO.{c.stream}"]


def _stream_read(stream: str) -> list[str]:
    """Read a stream with ephemeral or ordered consumers and direct gets (never ack a durable)."""
    return [f"{JS}.STREAM.INFO.{stream}", f"{JS}.CONSUMER.CREATE.{stream}", f"{JS}.CONSUMER.CREATE.{stream}.>",
            f"{JS}.CONSUMER.INFO.{stream}.*", f"{JS}.CONSUMER.DELETE.{stream}.*",
            f"{JS}.CONSUMER.MSG.NEXT.{stream}.*", f"{JS}.STREAM.MSG.GET.{stream}",
            f"{JS}.DIRECT.GET.{stream}", f"{JS}.DIRECT.GET.{stream}.>", f"$JS.FC.{stream}.>"]


def _kv_read(bucket: str) -> list[str]:
    return _stream_read(f"KV_{bucket}")


def _kv_write(bucket: str, keys: str = ">") -> list[str]:
    """Put, create, update and delete keys (``keys``: a subject pattern below the bucket)."""
    return [f"$KV.{bucket}.{keys}"]


def _kv_rw(bucket: str, keys: str = ">") -> list[str]:
    return _kv_read(bucket) + _kv_write(bucket, keys)


def _durables_of(service: str) -> list[subjects.Consumer]:
    """The service's durable consumers (the monitor's: with every telemetry partition's, so a replica of any
    partition may pull its own; which exist is the provisioner's X0TTA6BL4_MONITOR_PARTITIONS)."""
    return [c for c in (*subjects.CONSUMERS, *subjects.PARTITION_CONSUMERS) if c.service == service]


def _processed(service: str) -> list[str]:
    """The redelivery memory of the service's own consumers only."""
    out = _kv_read("processed")
    for c in _durables_of(service):
        out += _kv_write("processed", f"{subjects.token(c.durable)}.>")
    return out


def _service_base(service: str) -> list[str]:
    pub = [subjects.audit_of(service), f"{JS}.INFO",     # and /ready checks that the streams it writes exist:
           f"{JS}.STREAM.INFO.{subjects.STREAM_AUDIT}", f"{JS}.STREAM.INFO.{subjects.STREAM_DLQ}"]
    for c in _durables_of(service):
        pub += [*_consumer_api(c), subjects.dead_letter(c.durable)]
    pub += _processed(service)
    return pub


def _protect_durables(owner: str) -> list[str]:
    """Deny every durable consumer API subject of the consumers ``owner`` does not own."""
    out = []
    for c in (*subjects.CONSUMERS, *subjects.PARTITION_CONSUMERS):
        if c.service == owner:
            continue
        out += [f"{JS}.CONSUMER.MSG.NEXT.{c.stream}.{c.durable}", f"$JS.ACK.{c.stream}.{c.durable}.>",
                f"{JS}.CONSUMER.DELETE.{c.stream}.{c.durable}", f"{JS}.CONSUMER.CREATE.{c.stream}.{c.durable}",
                f"{JS}.CONSUMER.CREATE.{c.stream}.{c.durable}.>",
                f"{JS}.CONSUMER.DURABLE.CREATE.{c.stream}.{c.durable}"]
    return out


_NEVER = [f"{JS}.STREAM.CREATE.>", f"{JS}.STREAM.UPDATE.>", f"{JS}.STREAM.DELETE.>", f"{JS}.STREAM.PURGE.>",
          f"{JS}.STREAM.MSG.DELETE.>", f"{JS}.STREAM.RESTORE.>", f"{JS}.STREAM.SNAPSHOT.>",
          f"{JS}.CONSUMER.DURABLE.CREATE.>", f"{JS}.STREAM.PEER.REMOVE.>", f"{JS}.STREAM.LEADER.STEPDOWN.>",
          f"{JS}.META.>", f"{JS}.SERVER.>", f"{JS}.ACCOUNT.>"]
"""JetStream administration: the provisioner's alone."""


def _identity(identity: str, kind: str, publish: Iterable[str], subscribe: Iterable[str] = (), *,
              responses: bool = False, doc: str = "") -> Permissions:
    pub = list(dict.fromkeys(publish))
    if kind in ("service", "mesh-host", "operator"):    # its own X.509 SVID: the subject is the attestation
        pub.append(subjects.keyvault_svid(identity))
    sub = list(dict.fromkeys([f"{inbox_prefix(identity)}.>", *subscribe]))
    return Permissions(identity, kind, tuple(pub), tuple(sub), tuple(_NEVER + _protect_durables(identity)),
                       (), responses, doc)


# ---- the identities --------------------------------------------------------------------------------------
def service(name: str) -> Permissions:
    """A MAPE-K service's least privilege."""
    base = _service_base(name)
    s = subjects
    if name == "monitor":
        pub = [*base, s.MAPEK_TELEMETRY, s.MAPEK_HEALTH, f"{JS}.STREAM.INFO.{s.STREAM_MAPEK}", *_kv_rw("telemetry"),
               *_kv_rw("health"), *_kv_read("incidents")]
        return _identity(name, "service", pub, [s.MONITOR_RPC.format(method="*")], responses=True,
                         doc="reads node telemetry and events; starts cycles; answers monitor.rpc.*")
    if name == "analyzer":
        pub = [*base, s.MAPEK_ANOMALY, *_stream_read(s.STREAM_MAPEK)]
        return _identity(name, "service", pub, doc="reads telemetry windows; publishes anomalies")
    if name == "planner":
        pub = [*base, s.MAPEK_PLAN, s.MAPEK_ACTION, s.MAPEK_ESCALATION, *_kv_rw("incidents"), *_kv_rw("avoided"),
               *_kv_rw("knowledge"), *_kv_read("telemetry"), *_kv_read("health")]
        return _identity(name, "service", pub, doc="plans; auto-approved actions (signed)")
    if name == "governance":
        pub = base + [s.GOV_EVENTS_ALL, s.GOV_WATCH_ALL, s.MAPEK_ACTION] + _stream_read(s.STREAM_GOV) \
            + [s.keyvault_rpc(m) for m in ("Info", "PublicKeys", "ListIdentities")] + _kv_read("keys")
        return _identity(name, "service", pub, [s.GOV_WATCH_ALL],
                         doc="the DAO: governance event log, passed proposals' actions (signed)")
    if name == "executor":
        pub = base + [s.MAPEK_RESULT, s.MAPEK_VERIFIED, s.MAPEK_ESCALATION, s.MESH_CMD_ALL] + _kv_rw("actions") \
            + _kv_rw("budget") + _kv_read("telemetry") + [s.keyvault_rpc(m) for m in ("Revoke", "Rotate")]
        return _identity(name, "service", pub, [s.MESH_TELEMETRY_ALL],
                         doc="carries out signed, approved actions on the mesh")
    if name == "keyvault":
        pub = base + _kv_rw("keyvault") + _kv_rw("keys")
        return _identity(name, "service", pub, [s.KEYVAULT_RPC_ALL, s.KEYVAULT_SVID_ALL], responses=True,
                         doc="keys and identities; answers keyvault.rpc.*")
    raise ValueError(f"unknown service {name!r}: one of {', '.join(SERVICES)}")


def mesh_host(host: str, nodes: Iterable[str]) -> Permissions:
    """A mesh host (or node agent): telemetry and events of its own nodes, commands to them only."""
    nodes = list(nodes)
    if not nodes:
        raise ValueError(f"mesh host {host!r} has no nodes")
    pub = [f"{JS}.INFO", *_kv_read("keys")]
    sub = []
    for n in nodes:
        pub += [subjects.telemetry(n), subjects.mesh_event(n)]
        sub.append(subjects.mesh_cmd(n))
    pub.append(f"{JS}.STREAM.INFO.{subjects.STREAM_MESH}")
    return _identity(MESH_HOST_PREFIX + subjects.token(host), "mesh-host", pub, sub, responses=True,
                     doc="its own nodes' telemetry and events; answers its own nodes' commands")


def operator() -> Permissions:
    """meshctl, the MCP server and the skill scripts: read everything, command the mesh, call the services'
    request subjects; never administer JetStream, never publish MAPE-K or governance events."""
    s = subjects
    pub = [f"{JS}.INFO", f"{JS}.STREAM.NAMES", f"{JS}.STREAM.LIST", s.MESH_CMD_ALL, s.KEYVAULT_RPC_ALL,
           s.MESH_EVENT_ALL,      # maintenance.start, .end announcements (meshctl mesh down, drain)
           s.MONITOR_RPC.format(method="*"), subjects.audit_of("edge")]
    for st in s.STREAMS:
        pub += _stream_read(st.name)
    for b in s.BUCKETS:
        pub += _kv_read(b.name)
    pub += _kv_rw("edge")
    return _identity(OPERATOR, "operator", pub,
                     [s.MAPEK_ALL, s.MESH_TELEMETRY_ALL, s.MESH_EVENT_ALL, s.AUDIT_ALL, s.GOV_WATCH_ALL],
                     doc="operators' tools: read all, command nodes, ask services")


def audit_reader() -> Permissions:
    """A third-party audit subscriber: the AUDIT stream and nothing else."""
    return _identity(AUDIT_READER, "audit-reader", [f"{JS}.INFO", *_stream_read(subjects.STREAM_AUDIT)],
                     [subjects.AUDIT_ALL], doc="reads the audit trail only")


def edge() -> Permissions:
    """Edge nodes' sync on reconnect (``meshctl edge sync|serve``, :mod:`x0tta6bl4.edge.sync`): read the edge
    bucket and compare-and-set its one document, publish the offline period's audit events on
    ``audit.edge.*`` (each chain signed by the node's own key); nothing else - no MAPE-K, governance, mesh
    commands or other buckets."""
    return _identity(EDGE, "edge", [f"{JS}.INFO", *_kv_read("edge"), *_kv_write("edge", EDGE_DOC_KEY),
                                    subjects.audit_of("edge")],
                     doc="edge nodes' sync: the edge bucket's document, audit.edge.*")


def dashboard() -> Permissions:
    """The web dashboard (:mod:`x0tta6bl4.dashboard`): reads the telemetry and avoided buckets, the MAPEK and
    AUDIT streams (ordered consumers of its own), governance's proposal fan-out; the one request it may make
    is monitor.rpc.Cycle (run a cycle now, for an operator who gave the dashboard's token). No mesh commands,
    no keyvault, no KV writes, no MAPE-K, audit or governance events."""
    s = subjects
    pub = [f"{JS}.INFO", *_kv_read("telemetry"), *_kv_read("avoided"), *_stream_read(s.STREAM_MAPEK),
           *_stream_read(s.STREAM_AUDIT), s.MONITOR_CYCLE]
    return _identity(DASHBOARD, "dashboard", pub, [s.GOV_WATCH_ALL],
                     doc="the web dashboard: reads mesh state, cycles, audit, proposals; asks for a cycle")


def provisioner() -> Permissions:
    """Creates the streams, buckets and durable consumers of the subject table (at stack start)."""
    return Permissions(PROVISIONER, "provisioner", (f"{JS}.>", "$KV.>", "$JS.FC.>"),
                       (f"{inbox_prefix(PROVISIONER)}.>",),
                       tuple(f"{JS}.STREAM.{op}.{st}" for op in ("DELETE", "PURGE")
                             for st in (subjects.STREAM_AUDIT, subjects.STREAM_GOV)),
                       doc="declares streams, buckets and consumers; cannot delete or purge AUDIT or GOV")


@dataclass(frozen=True)
class Table:
    """Every identity of one deployment."""
    identities: tuple[Permissions, ...] = field(default_factory=tuple)

    def get(self, identity: str) -> Permissions:
        for p in self.identities:
            if p.identity == identity:
                return p
        raise KeyError(f"no bus identity {identity!r}")


def table(mesh_hosts: Mapping[str, Iterable[str]] | None = None) -> Table:
    """The identities of a deployment: the six services, operator, audit reader, edge, dashboard, provisioner,
    mesh hosts."""
    ids = [service(n) for n in SERVICES] + [operator(), audit_reader(), edge(), dashboard(), provisioner()]
    ids += [mesh_host(h, nodes) for h, nodes in sorted((mesh_hosts or {}).items())]
    return Table(tuple(ids))


def _one_for_partitions(subject: str) -> str:
    """``dlq.monitor-telemetry-p0`` stands for every partition's in the table (``-p<0..15>``)."""
    return subject[:-1] + f"<0..{subjects.MAX_MONITOR_PARTITIONS - 1}>" if subject.endswith("-p0") else subject


def describe() -> str:
    """A markdown table of who may publish and subscribe what (docs/security.md is generated from it)."""
    lines = ["| identity | kind | publishes (besides JetStream API and its own inbox) | subscribes | "
             "answers requests |", "|---|---|---|---|---|"]
    example = table({"h1": ["n0", "n1"]})
    for p in example.identities:
        pubs = [_one_for_partitions(x) for x in p.publish if not x.startswith(("$JS", "$KV"))
                 and not any(x.endswith(f"-p{i}") for i in range(1, subjects.MAX_MONITOR_PARTITIONS))]
        kvw = sorted({x.split(".")[1] for x in p.publish if x.startswith("$KV.")})
        if kvw:
            pubs.append("writes KV " + ", ".join(kvw))
        subs = [x for x in p.subscribe if not x.startswith("_INBOX")]
        lines.append(f"| {p.identity} | {p.kind} | {', '.join(f'`{x}`' for x in pubs) or '-'} | "
                     f"{', '.join(f'`{x}`' for x in subs) or '-'} | {'yes' if p.allow_responses else 'no'} |")
    return "\n".join(lines)
