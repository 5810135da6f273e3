"""The one table of subjects, streams, key-value buckets and durable consumers.

Every subject the orchestrator uses is named here and nowhere else. The README's
"Bus" section is generated from the same facts (see ``describe()``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# ---- subjects ---------------------------------------------------------------
TELEMETRY = "mesh.telemetry.{node}"      # NodeTelemetry from node agents
MESH_EVENT = "mesh.event.{node}"         # MeshEvent from node agents (neighbour lost, bad signature ...)
MESH_CMD = "mesh.cmd.{node}"             # MeshCommand to node agents (core NATS request/reply)
MAPEK_TELEMETRY = "mapek.telemetry"      # TelemetryWindow: monitor -> analyzer (starts a cycle)
MAPEK_HEALTH = "mapek.health"            # HealthChange: monitor -> anyone
MAPEK_ANOMALY = "mapek.anomaly"          # Anomaly: analyzer -> planner
MAPEK_PLAN = "mapek.plan"                # Plan: planner -> governance / operators
MAPEK_ACTION = "mapek.action"            # ActionRequest: planner (auto) or governance (passed) -> executor
MAPEK_RESULT = "mapek.result"            # ActionResult: executor -> governance, planner
MAPEK_VERIFIED = "mapek.verified"        # Verification: executor -> knowledge, planner
AUDIT = "audit.{service}.{event}"        # AuditEvent from every service (and audit.edge.* from edge nodes)
DEAD_LETTER = "dlq.{consumer}"           # DeadLetter: poison messages, parked
GOV_EVENTS = "gov.events.{kind}"         # governance event-sourced state
KEYVAULT_RPC = "keyvault.rpc.{method}"   # keyvault's gRPC methods over NATS request/reply (queue group)
GOVERNANCE_RPC = "governance.rpc.{method}"
MONITOR_RPC = "monitor.rpc.{method}"     # monitor info over core NATS request/reply

_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def token(value: str) -> str:
    """Make a value safe as one subject token (no dots, spaces or wildcards)."""
    out = _TOKEN.sub("_", value)
    if not out:
        raise ValueError("empty subject token")
    return out


def telemetry(node: str) -> str:
    return TELEMETRY.format(node=token(node))


def mesh_event(node: str) -> str:
    return MESH_EVENT.format(node=token(node))


def mesh_cmd(node: str) -> str:
    return MESH_CMD.format(node=token(node))


def audit(service: str, event: str) -> str:
    return AUDIT.format(service=token(service), event=".".join(token(p) for p in event.split(".")))


def dead_letter(consumer: str) -> str:
    return DEAD_LETTER.format(consumer=token(consumer))


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
STREAMS: tuple[Stream, ...] = (
    Stream("MESH", ("mesh.telemetry.*", "mesh.event.*"), 3600, 256 * MB, 30,
           doc="node agents' telemetry and control events"),
    Stream("MAPEK", ("mapek.>",), 7 * 86400, 512 * MB, 120,
           doc="one MAPE-K cycle's events, stage to stage"),
    Stream("AUDIT", ("audit.>",), 365 * 86400, 1024 * MB, 120, deny_delete=True, discard_new=True,
           doc="hash-chained, signed audit trail"),
    Stream("DLQ", ("dlq.>",), 30 * 86400, 128 * MB, 120,
           doc="dead letters: poison or repeatedly failing messages, parked"),
    Stream("GOV", ("gov.events.>",), 0, 4096 * MB, 300, deny_delete=True, discard_new=True,
           doc="governance event log (source of truth for proposals, votes, ledger)"),
)


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
    Bucket("knowledge", 0, history=5, doc="repair outcomes aggregated per fault type and action"),
    Bucket("audit_keys", 0, doc="pinned audit signing public key per service"),
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
    Consumer("monitor-telemetry", "MESH", "mesh.telemetry.*", "monitor", "node telemetry"),
    Consumer("monitor-events", "MESH", "mesh.event.*", "monitor", "agents' control/security events"),
    Consumer("analyzer", "MAPEK", MAPEK_TELEMETRY, "analyzer", "telemetry windows"),
    Consumer("planner", "MAPEK", MAPEK_ANOMALY, "planner", "anomalies"),
    Consumer("governance-plans", "MAPEK", MAPEK_PLAN, "governance", "plans needing a vote"),
    Consumer("governance-results", "MAPEK", MAPEK_RESULT, "governance", "mark proposals executed"),
    Consumer("executor", "MAPEK", MAPEK_ACTION, "executor", "actions to carry out"),
    Consumer("planner-knowledge", "MAPEK", MAPEK_VERIFIED, "planner", "verified outcomes -> knowledge"),
)


def consumer(durable: str) -> Consumer:
    for c in CONSUMERS:
        if c.durable == durable:
            return c
    raise KeyError(f"no consumer named {durable!r} in bus.subjects.CONSUMERS")


def describe() -> str:
    """A markdown table of streams and consumers (used by the README and `meshctl bus`)."""
    lines = ["| stream | subjects | retention | purpose |", "|---|---|---|---|"]
    for s in STREAMS:
        age = "unlimited" if not s.max_age_s else f"{s.max_age_s / 86400:g} d" if s.max_age_s >= 86400 else f"{s.max_age_s / 3600:g} h"
        lines.append(f"| {s.name} | {', '.join(s.subjects)} | {age}, {s.max_bytes // MB} MiB | {s.doc} |")
    lines += ["", "| durable consumer | stream | subject | service |", "|---|---|---|---|"]
    for c in CONSUMERS:
        lines.append(f"| {c.durable} | {c.stream} | {c.subject} | {c.service} |")
    return "\n".join(lines)
