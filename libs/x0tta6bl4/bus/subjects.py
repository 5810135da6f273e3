"""The one table of subjects, streams, key-value buckets and durable consumers.

Every subject the orchestrator uses is named here and nowhere else, with what it carries and who
publishes and reads it. docs/bus.md is generated from the same facts (``describe()``, ``make docs``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# ---- subjects ---------------------------------------------------------------
TELEMETRY = "mesh.telemetry.{node}"      # NodeTelemetry from node agents
TELEMETRY_STORED = "mesh.telemetry.{partition}.{node}"  # how MESH stores it when telemetry is partitioned
MESH_EVENT = "mesh.event.{node}"         # MeshEvent from node agents (neighbour lost, bad signature ...)
MESH_CMD = "mesh.cmd.{node}"             # MeshCommand to node agents (core NATS request/reply)
MAPEK_TELEMETRY = "mapek.telemetry"      # TelemetryWindow: monitor -> analyzer (starts a cycle)
MAPEK_HEALTH = "mapek.health"            # HealthChange: monitor -> anyone
MAPEK_ANOMALY = "mapek.anomaly"          # Anomaly: analyzer -> planner
MAPEK_PLAN = "mapek.plan"                # Plan: planner -> governance / operators
MAPEK_ACTION = "mapek.action"            # ActionRequest: planner (auto) or governance (passed) -> executor
MAPEK_RESULT = "mapek.result"            # ActionResult: executor -> governance, planner
MAPEK_VERIFIED = "mapek.verified"        # Verification: executor -> knowledge, planner
MAPEK_ESCALATION = "mapek.escalation"    # Escalation: executor, planner -> operators (the loop hands over)
AUDIT = "audit.{service}.{event}"        # AuditEvent from every service (and audit.edge.* from edge nodes)
DEAD_LETTER = "dlq.{consumer}"           # DeadLetter: poison messages, parked
GOV_EVENTS = "gov.events.{kind}"         # governance event-sourced state (stream GOV)
GOV_WATCH = "gov.watch.{kind}"           # core NATS, not stored: ProposalEvent fan-out for WatchProposals
KEYVAULT_RPC = "keyvault.rpc.{method}"   # keyvault's gRPC methods over NATS request/reply (queue group)
KEYVAULT_SVID = "keyvault.svid.{identity}"  # X.509 SVID for a CSR: only bus identity X may publish keyvault.svid.X
GOVERNANCE_RPC = "governance.rpc.{method}"  # reserved: governance methods over NATS request/reply
MONITOR_RPC = "monitor.rpc.{method}"     # monitor info over core NATS request/reply

# wildcards of the families above (subscriptions, stream subjects, permissions)
MESH_TELEMETRY_ALL = "mesh.telemetry.*"
MESH_EVENT_ALL = "mesh.event.*"
MESH_CMD_ALL = "mesh.cmd.*"
MAPEK_ALL = "mapek.>"
AUDIT_ALL = "audit.>"
DEAD_LETTER_ALL = "dlq.>"
GOV_EVENTS_ALL = "gov.events.>"
GOV_WATCH_ALL = "gov.watch.>"
KEYVAULT_RPC_ALL = "keyvault.rpc.*"
KEYVAULT_SVID_ALL = "keyvault.svid.*"
MONITOR_INFO = MONITOR_RPC.format(method="Info")
MONITOR_CYCLE = MONITOR_RPC.format(method="Cycle")

# headers every stored event carries
HEADER_MSG_ID = "Nats-Msg-Id"            # JetStream de-duplication: the event id
HEADER_TYPE = "X0-Type"                  # full protobuf name of the payload
HEADER_CYCLE = "X0-Cycle"                # the MAPE-K cycle id, when the event belongs to one
HEADER_ERROR = "X0-Error"                # on a request's reply: what failed
HEADER_ERROR_CODE = "X0-Error-Code"      # on a request's reply: the gRPC status code name
HEADER_SLIM = "X0-Slim"                  # on a keyvault reply: records without key material (too big)

_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def token(value: str) -> str:
    """Make a value safe as one subject token (no dots, spaces or wildcards)."""
    out = _TOKEN.sub("_", value)
    if not out:
        raise ValueError("empty subject token")
    return out


def telemetry(node: str) -> str:
    return TELEMETRY.format(node=token(node))


# ---- telemetry partitioned across monitor replicas -----------------------------------------------------
MAX_MONITOR_PARTITIONS = 16
"""At most this many telemetry partitions (X0TTA6BL4_MONITOR_PARTITIONS): the monitor's permissions name
each partition's durable consumer (a subject wildcard cannot match part of a token)."""


def partition_of(node: str, partitions: int) -> int:
    """The partition of ``node``'s telemetry: nats-server's ``{{partition(K,1)}}`` of the subject token
    (FNV-1a, 32 bits, modulo K), so a monitor knows which nodes the stream gives its consumer."""
    h = 0x811C9DC5
    for b in token(node).encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % partitions if partitions > 1 else 0


def telemetry_stored(node: str, partitions: int) -> str:
    """The subject MESH stores ``node``'s report under: ``mesh.telemetry.<node>`` as published, or with
    ``partitions`` > 1 ``mesh.telemetry.<partition>.<node>`` (the stream's subject transform)."""
    if partitions <= 1:
        return telemetry(node)
    return TELEMETRY_STORED.format(partition=partition_of(node, partitions), node=token(node))


def telemetry_transform(partitions: int) -> tuple[str, str] | None:
    """MESH's subject transform for ``partitions`` (source, destination); None for one partition (as
    published). Publishers and core NATS subscribers keep ``mesh.telemetry.<node>``: only what the stream
    stores, and so what its consumers filter, carries the partition."""
    if partitions <= 1:
        return None
    return MESH_TELEMETRY_ALL, f"mesh.telemetry.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}"


def monitor_telemetry_consumer(partition: int, partitions: int) -> str:
    """The durable consumer of a monitor replica of ``partition`` (of ``partitions``): ``monitor-telemetry``
    when telemetry is not partitioned, ``monitor-telemetry-p<partition>`` when it is."""
    return "monitor-telemetry" if partitions <= 1 else f"monitor-telemetry-p{partition}"


def mesh_event(node: str) -> str:
    return MESH_EVENT.format(node=token(node))


def mesh_cmd(node: str) -> str:
    return MESH_CMD.format(node=token(node))


def audit(service: str, event: str) -> str:
    return AUDIT.format(service=token(service), event=".".join(token(p) for p in event.split(".")))


def dead_letter(consumer: str) -> str:
    return DEAD_LETTER.format(consumer=token(consumer))


def audit_of(service: str) -> str:
    """Every audit event of one service."""
    return f"audit.{token(service)}.>"


def gov_event(kind: str) -> str:
    return GOV_EVENTS.format(kind=token(kind))


def gov_watch(kind: str) -> str:
    return GOV_WATCH.format(kind=token(kind))


def keyvault_rpc(method: str) -> str:
    return KEYVAULT_RPC.format(method=token(method))


def keyvault_svid(identity: str) -> str:
    return KEYVAULT_SVID.format(identity=token(identity))


# ---- streams ----------------------------------------------------------------
@dataclass(frozen=True)
class Stream:
    name: str
    subjects: tuple[str, ...]
    max_age_s: float
    max_bytes: int
    duplicate_window_s: float = 120.0
    deny_delete: bool = False
    discard_new: bool = False     # refuse new messages when full instead of dropping the oldest
    doc: str = ""


MB = 1024 * 1024
STREAM_MESH, STREAM_MAPEK, STREAM_AUDIT, STREAM_DLQ, STREAM_GOV = "MESH", "MAPEK", "AUDIT", "DLQ", "GOV"
STREAMS: tuple[Stream, ...] = (
    Stream(STREAM_MESH, (MESH_TELEMETRY_ALL, MESH_EVENT_ALL), 3600, 256 * MB, 30,
           doc="node agents' telemetry and control events"),
    Stream(STREAM_MAPEK, (MAPEK_ALL,), 7 * 86400, 512 * MB, 120,
           doc="one MAPE-K cycle's events, stage to stage"),
    Stream(STREAM_AUDIT, (AUDIT_ALL,), 365 * 86400, 1024 * MB, 120, deny_delete=True, discard_new=True,
           doc="hash-chained, signed audit trail"),
    Stream(STREAM_DLQ, (DEAD_LETTER_ALL,), 30 * 86400, 128 * MB, 120,
           doc="dead letters: poison or repeatedly failing messages, parked"),
    Stream(STREAM_GOV, (GOV_EVENTS_ALL,), 0, 4096 * MB, 300, deny_delete=True, discard_new=True,
           doc="governance event log (source of truth for proposals, votes, ledger)"),
)
STORE_RESERVED = sum(s.max_bytes for s in STREAMS)
"""What the streams' byte limits reserve on every server that holds a replica of each."""
STORE_LIMIT = STORE_RESERVED + 4096 * MB
"""The JetStream file-store limit every nats-server of ours is configured with (``max_file_store``): the
streams' reservations plus room for the key-value buckets. Configured, not left to nats-server's default
(75 % of the disk space free when the server starts), so that declaring the topology does not depend on how
full the disk happens to be: with that default, a server started on a disk with under 8 GB free refused
the streams with 'insufficient storage resources available'."""


# ---- key-value buckets ------------------------------------------------------
@dataclass(frozen=True)
class Bucket:
    name: str
    ttl_s: float
    history: int = 1
    doc: str = ""


BUCKETS: tuple[Bucket, ...] = (
    Bucket("telemetry", 600, doc="latest NodeTelemetry per node (monitor replicas share it)"),
    Bucket("health", 0, doc="health state per node, so only changes are published"),
    Bucket("processed", 3600, doc="handled event ids per consumer (redelivery without double handling)"),
    Bucket("incidents", 300, doc="incidents being handled (planner de-duplication)"),
    Bucket("avoided", 0, doc="nodes routed around after a verified REROUTE, until the planner reinstates them"),
    Bucket("actions", 7 * 86400, doc="executor action claims and outcomes (idempotent actions)"),
    Bucket("budget", 3600, doc="actions taken per node and per incident (the executor's action budget)"),
    Bucket("knowledge", 0, history=5, doc="repair outcomes aggregated per fault type and action"),
    Bucket("keys", 0, doc="root-signed public-key and revocation records (keyvault -> node agents)"),
    Bucket("keyvault", 0, doc="keyvault replicas' shared state: identities with private keys and the root key, "
                              "sealed (AES-256-GCM) under the master key; compare-and-set on revisions"),
    Bucket("edge", 0, doc="edge nodes' merged CRDT document (offline work lands here on reconnect)"),
)


# ---- durable consumers ------------------------------------------------------
@dataclass(frozen=True)
class Consumer:
    durable: str
    stream: str
    subject: str
    service: str
    doc: str = ""
    extra: dict = field(default_factory=dict)


CONSUMERS: tuple[Consumer, ...] = (
    Consumer("monitor-telemetry", "MESH", MESH_TELEMETRY_ALL, "monitor", "node telemetry"),
    Consumer("monitor-events", "MESH", MESH_EVENT_ALL, "monitor", "agents' control/security events"),
    Consumer("analyzer", "MAPEK", MAPEK_TELEMETRY, "analyzer", "telemetry windows"),
    Consumer("planner", "MAPEK", MAPEK_ANOMALY, "planner", "anomalies"),
    Consumer("governance-plans", "MAPEK", MAPEK_PLAN, "governance", "plans needing a vote"),
    Consumer("governance-results", "MAPEK", MAPEK_RESULT, "governance", "mark proposals executed"),
    Consumer("executor", "MAPEK", MAPEK_ACTION, "executor", "actions to carry out"),
    Consumer("planner-knowledge", "MAPEK", MAPEK_VERIFIED, "planner", "verified outcomes -> knowledge"),
)


# ---- the subjects, what they carry, who speaks ----------------------------------------------------
@dataclass(frozen=True)
class Subject:
    pattern: str
    message: str                 # protobuf message (full name) or a short description of the payload
    publishers: tuple[str, ...]
    subscribers: tuple[str, ...]
    stream: str = ""             # the stream that stores it ("": core NATS, not stored)
    doc: str = ""


SUBJECTS: tuple[Subject, ...] = (
    Subject(TELEMETRY, "x0tta6bl4.v1.NodeTelemetry", ("node agent",), ("monitor",), STREAM_MESH,
            "a node's periodic report (1 per HELLO interval)"),
    Subject(MESH_EVENT, "x0tta6bl4.v1.MeshEvent", ("node agent", "operator"), ("monitor",), STREAM_MESH,
            "neighbour lost, bad signature, key events; planned maintenance (maintenance.start, maintenance.end)"),
    Subject(MESH_CMD, "x0tta6bl4.v1.MeshCommand -> MeshEvent", ("executor", "operator"), ("node agent",), "",
            "commands to a node agent, request/reply"),
    Subject(MAPEK_TELEMETRY, "x0tta6bl4.v1.TelemetryWindow", ("monitor",), ("analyzer",), STREAM_MAPEK,
            "starts a cycle"),
    Subject(MAPEK_HEALTH, "x0tta6bl4.v1.HealthChange", ("monitor",), ("operator",), STREAM_MAPEK,
            "a node's or the mesh's health changed"),
    Subject(MAPEK_ANOMALY, "x0tta6bl4.v1.Anomaly", ("analyzer",), ("planner",), STREAM_MAPEK,
            "an incident with its root cause"),
    Subject(MAPEK_PLAN, "x0tta6bl4.v1.Plan", ("planner",), ("governance", "operator"), STREAM_MAPEK,
            "the decision and the action chosen"),
    Subject(MAPEK_ACTION, "x0tta6bl4.v1.ActionRequest", ("planner", "governance"), ("executor",), STREAM_MAPEK,
            "an approved action"),
    Subject(MAPEK_RESULT, "x0tta6bl4.v1.ActionResult", ("executor",), ("governance", "planner"), STREAM_MAPEK,
            "each step's outcome"),
    Subject(MAPEK_VERIFIED, "x0tta6bl4.v1.Verification", ("executor",), ("planner",), STREAM_MAPEK,
            "recovered or not, MTTR"),
    Subject(MAPEK_ESCALATION, "x0tta6bl4.v1.Escalation", ("executor", "planner"), ("operator",), STREAM_MAPEK,
            "an incident handed to operators: harmful action rolled back, live endpoint, over budget"),
    Subject(AUDIT, "x0tta6bl4.v1.AuditEvent", ("every service", "edge node"), ("audit reader", "operator"),
            STREAM_AUDIT, "hash-chained, signed audit trail"),
    Subject(DEAD_LETTER, "x0tta6bl4.v1.DeadLetter", ("every service",), ("operator",), STREAM_DLQ,
            "a message parked with the reason"),
    Subject(GOV_EVENTS, "x0tta6bl4.v1.GovLogRecord (signed, hash-chained)", ("governance",), ("governance",),
            STREAM_GOV, "the governance event log (source of truth)"),
    Subject(GOV_WATCH, "x0tta6bl4.v1.ProposalEvent", ("governance",), ("governance",), "",
            "fan-out to WatchProposals streams of every replica"),
    Subject(KEYVAULT_RPC, "keyvault request -> reply (x0tta6bl4.v1 keyvault messages)", ("executor", "operator",
            "governance", "mesh host"), ("keyvault",), "", "keyvault's gRPC methods over NATS (queue group)"),
    Subject(KEYVAULT_SVID, "x0tta6bl4.v1.SvidRequest -> SvidResponse", ("every service", "operator", "mesh host"),
            ("keyvault",), "", "an X.509 SVID for the publisher's own bus identity (attested by the subject)"),
    Subject(MONITOR_RPC, "empty -> JSON", ("operator",), ("monitor",), "", "monitor info (collector, hosts)"),
    Subject(GOVERNANCE_RPC, "reserved", (), (), "",
            "reserved for governance methods over NATS: nobody may publish it, nothing answers (use gRPC)"),
)


PARTITION_CONSUMERS: tuple[Consumer, ...] = tuple(
    Consumer(monitor_telemetry_consumer(i, MAX_MONITOR_PARTITIONS), "MESH",
             TELEMETRY_STORED.format(partition=i, node="*"), "monitor", f"node telemetry of partition {i}")
    for i in range(MAX_MONITOR_PARTITIONS))
"""One durable consumer per telemetry partition (declared for the partitions in use only)."""


def partition_consumers(partitions: int) -> tuple[Consumer, ...]:
    """The consumers the provisioner declares for ``partitions`` (none for one: ``monitor-telemetry``)."""
    return PARTITION_CONSUMERS[:partitions] if partitions > 1 else ()


def consumer(durable: str) -> Consumer:
    for c in (*CONSUMERS, *PARTITION_CONSUMERS):
        if c.durable == durable:
            return c
    raise KeyError(f"no consumer named {durable!r} in bus.subjects.CONSUMERS")


def describe() -> str:
    """Markdown tables of subjects, streams, key-value buckets and durable consumers (docs/bus.md and
    `meshctl bus` are generated from this)."""
    lines = ["| subject | message | published by | read by | stored in | purpose |", "|---|---|---|---|---|---|"]
    for sj in SUBJECTS:
        lines.append(f"| `{sj.pattern}` | {sj.message} | {', '.join(sj.publishers)} | {', '.join(sj.subscribers)} "
                     f"| {sj.stream or 'not stored'} | {sj.doc} |")
    lines += ["", "| stream | subjects | retention | purpose |", "|---|---|---|---|"]
    for s in STREAMS:
        age = ("unlimited" if not s.max_age_s else f"{s.max_age_s / 86400:g} d" if s.max_age_s >= 86400
               else f"{s.max_age_s / 3600:g} h")
        lines.append(f"| {s.name} | {', '.join(s.subjects)} | {age}, {s.max_bytes // MB} MiB | {s.doc} |")
    lines += ["", f"Every nats-server is configured with a JetStream file store of {STORE_LIMIT // MB} MiB "
                  f"(`max_file_store`): the streams' limits reserve {STORE_RESERVED // MB} MiB of it on each server "
                  f"that holds their replicas, the rest is room for the key-value buckets."]
    lines += ["", "| key-value bucket | TTL | history | purpose |", "|---|---|---|---|"]
    for b in BUCKETS:
        ttl = "none" if not b.ttl_s else f"{b.ttl_s / 86400:g} d" if b.ttl_s >= 86400 else f"{b.ttl_s:g} s"
        lines.append(f"| {b.name} | {ttl} | {b.history} | {b.doc} |")
    lines += ["", "| durable consumer | stream | subject | service |", "|---|---|---|---|"]
    for c in CONSUMERS:
        lines.append(f"| {c.durable} | {c.stream} | {c.subject} | {c.service} |")
    first, last = PARTITION_CONSUMERS[0], PARTITION_CONSUMERS[-1]
    lines.append(f"| {first.durable} .. {last.durable.rpartition('-')[2]} (X0TTA6BL4_MONITOR_PARTITIONS > 1) | "
                 f"{first.stream} | mesh.telemetry.<partition>.* | {first.service} |")
    return "\n".join(lines)
