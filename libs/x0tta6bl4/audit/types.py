"""Every audit event type, who writes it, what its subject names and what its details mean (no I/O).

docs/audit-events.md is generated from :data:`TYPES` (``make docs``); a test checks that every
``audit(...)`` call in libs/ and services/ writes a type listed here, with the detail keys listed for it.

How a detail is encoded (:func:`x0tta6bl4.audit.chain.detail_value`): ``AuditEvent.details`` is a
``map<string, string>``; a string value is stored as it is, any other value as its JSON text (``true``,
``false``, ``null``, ``42``, ``0.873``, ``["a","b"]``, ``{"k":1}``; objects with sorted keys, no spaces).
The type given for each key below says how to read it: ``string`` as is, anything else with a JSON parser.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass

from x0tta6bl4.governance import events as gev

STRING, INTEGER, NUMBER, BOOLEAN, OBJECT, ARRAY = "string", "integer", "number", "boolean", "object", "array"
JSON_TYPES = (STRING, INTEGER, NUMBER, BOOLEAN, OBJECT, ARRAY)

SERVICES = ("monitor", "analyzer", "planner", "governance", "executor", "keyvault")


@dataclass(frozen=True)
class Detail:
    key: str
    type: str            # one of JSON_TYPES (with "or string" alternatives written in doc)
    doc: str


@dataclass(frozen=True)
class EventType:
    name: str                           # the event type, or a pattern with {placeholders} (one or more tokens)
    services: tuple[str, ...]           # who writes it (the audit subject's service token)
    subject: str                        # what AuditEvent.subject_id names
    doc: str
    details: tuple[Detail, ...] = ()
    open: bool = False                  # more keys than listed may appear (say which in doc)

    def matches(self, event_type: str) -> bool:
        return re.fullmatch(_pattern(self.name), event_type) is not None

    def key(self, key: str) -> Detail | None:
        return next((d for d in self.details if d.key == key), None)


def _pattern(name: str) -> str:
    parts = re.split(r"(\{[a-z_]+\})", name)
    return "".join("[A-Za-z0-9_.-]+" if p.startswith("{") else re.escape(p) for p in parts)


def D(key: str, type_: str, doc: str) -> Detail:
    assert type_ in JSON_TYPES, type_
    return Detail(key, type_, doc)


# ---- governance: the audit record of a governance log event (x0tta6bl4.stages.governance.audit_fields) ----
GOV_HIDDEN = ("type", "schema_version", "signature", "public_key", "nonce", "at", "description")
"""Fields of a governance event never copied into its audit record (keys, signatures, nonces, long text)."""

_GOV_AUDIT_TYPES: tuple[tuple[str, type, str], ...] = (
    ("voter.registered", gev.VoterRegistered, "a voter registered with a balance and a vote key"),
    ("voter.key_rotated", gev.VoterKeyRotated, "a voter's vote key replaced"),
    ("proposal.created", gev.ProposalCreated, "a proposal opened for votes"),
    ("proposal.auto_approved", gev.ProposalAutoApproved, "a plan approved without a vote (policy)"),
    ("vote.cast", gev.VoteCast, "a signed vote counted"),
    ("proposal.passed", gev.ProposalClosed, "a proposal closed as passed (its action is requested)"),
    ("proposal.rejected", gev.ProposalClosed, "a proposal closed as rejected"),
    ("proposal.canceled", gev.ProposalCanceled, "a proposal canceled by its proposer or an operator"),
    ("proposal.execution_failed", gev.ExecutionFailed, "a passed proposal's action failed"),
    ("proposal.executed", gev.ProposalExecuted, "a passed proposal's action succeeded"),
    ("proposal.expired", gev.ProposalExpired, "a passed proposal's action was not carried out in its window"),
)


def _gov_type(hint: object) -> str:
    if hint is str or (isinstance(hint, type) and issubclass(hint, str)):
        return STRING                          # str and str enums (choice, outcome, reason, severity)
    if hint is bool:
        return BOOLEAN
    if hint is int:
        return INTEGER
    if hint is float:
        return NUMBER
    return OBJECT                              # Action, Tally


def _gov_details(cls: type) -> tuple[Detail, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(D(f.name, _gov_type(hints[f.name]), f"the governance event's {f.name}")
                 for f in dataclasses.fields(cls) if f.name not in GOV_HIDDEN)


def _gov_types() -> tuple[EventType, ...]:
    return tuple(EventType(name, ("governance",), "the proposal id (voter events: the voter id)",
                           f"{doc}: the fields of the governance log event {cls.__name__} (docs/governance.md) "
                           f"but {', '.join(GOV_HIDDEN)}; several events of one type in one commit are one audit "
                           "event with the details count (integer) and ids (string, comma-separated ids), subject "
                           "\"<n> events\"",
                           (*_gov_details(cls), D("count", INTEGER, "grouped: how many events"),
                            D("ids", STRING, "grouped: their ids, comma-separated")))
                 for name, cls, doc in _GOV_AUDIT_TYPES)


_REASON = D("reason", STRING, "why, for a human")
_VIA = D("via", STRING, "how the call came: grpc or nats")
_ACTION = D("action", STRING, "the action kind (reroute, isolate, restart, reinstate, ...)")
_TARGET = D("target", STRING, "the target node")
_APPROVED_BY = D("approved_by", STRING, "\"auto\" or \"dao:<proposal id>\"")
_APPROVER = D("approver", STRING, "the service whose key signed the approval (planner or governance)")
_ERROR = D("error", STRING, "the error, \"\" if none")
_EDGE_SYNC = (
    D("edge_event_id", STRING, "the entry's id on the edge node"),
    D("origin_node", STRING, "the edge node that recorded it"),
    D("lamport", STRING, "its Lamport time (decimal)"),
    D("origin_seq", STRING, "its sequence number on the node (decimal)"),
    D("origin_ts_ns", STRING, "when the node recorded it (Unix ns, decimal)"),
    D("origin_signature", STRING, "the node's signature of the entry (base64)"),
    D("published_by", STRING, "the node whose sync published it (its keyvault record signs the chain)"),
)
_EDGE_DOC = "; published on reconnect by edge sync with the edge_* / origin_* / published_by details"

TYPES: tuple[EventType, ...] = (
    # ---- every service (the runtime, x0tta6bl4.bus.app) ----
    EventType("service.started", SERVICES, "the service name", "a service instance started",
              (D("instance", STRING, "the instance id"), D("pid", INTEGER, "its process id"))),
    EventType("service.stopped", SERVICES, "the service name", "a service instance stopped",
              (D("instance", STRING, "the instance id"),)),
    EventType("message.dead_lettered", SERVICES[:5], "the message's subject",
              "a message parked on dlq.<consumer> (does not parse, fails validation, or failed too often)",
              (D("consumer", STRING, "the durable consumer"), _REASON,
               D("stream_seq", INTEGER, "the message's stream sequence"))),
    EventType("policy.allowed", ("governance", "keyvault"), "the caller (SPIFFE ID, or bus:<identities>)",
              "a gRPC or NATS call allowed by the policy (sampled per the policy's rules)",
              (D("method", STRING, "the full method name"), D("caller", STRING, "the caller"), _REASON,
               D("via", STRING, "nats (absent on gRPC)"), D("peer", STRING, "gRPC: the peer address"),
               D("tls_group", STRING, "gRPC: the TLS key-exchange group"),
               D("suppressed", INTEGER, "calls of the same decision not audited since the last one"))),
    EventType("policy.denied", ("governance", "keyvault"), "the caller (SPIFFE ID, or bus:<identities>)",
              "a gRPC or NATS call refused by the policy (audited before the caller hears of it)",
              (D("method", STRING, "the full method name"), D("caller", STRING, "the caller"), _REASON,
               D("via", STRING, "nats (absent on gRPC)"), D("peer", STRING, "gRPC: the peer address"),
               D("tls_group", STRING, "gRPC: the TLS key-exchange group"),
               D("suppressed", INTEGER, "denials of the same kind not audited since the last one"))),
    # ---- monitor ----
    EventType("{what}.refused", ("monitor",), "the NATS subject it came on",
              "a node's report refused (what: telemetry or event); at most one per kind and subject per interval",
              (D("kind", STRING, "subject_mismatch, future_timestamp or stale_timestamp"), _REASON,
               D("suppressed_since_last", INTEGER, "refusals not audited since the last one"),
               D("node_id", STRING, "the node the report claims to come from"))),
    EventType("mesh.{kind}", ("monitor",), "the node", "a node agent's MeshEvent of that kind (neighbour_lost, "
              "security.*, keys.*, maintenance.start, ...): its details (strings) as they came, and:",
              (D("peer", STRING, "the event's peer"),
               D("verdict", STRING, "what the monitor did with it (when it did something)")), open=True),
    EventType("maintenance.ended", ("monitor",), "the node", "a node's planned maintenance ended",
              (_REASON,)),
    EventType("security.{kind}", ("monitor",), "the nodes, comma-separated",
              "a kernel (eBPF) security signal on a node's processes (privilege_change, sensitive_open, ...)",
              (D("pid", STRING, "process id (decimal)"), D("comm", STRING, "process name"),
               D("uid", STRING, "user id (decimal)"), D("host_pid", STRING, "the mesh host's pid (decimal)"),
               D("nodes", STRING, "the nodes, comma-separated"),
               D("kernel_to_monitor_ms", STRING, "delay kernel -> monitor in ms (decimal, 3 places)"),
               D("path", STRING, "the file opened (sensitive_open)"), D("watch_prefix", STRING, "the watched prefix"),
               D("syscall", STRING, "the system call"), D("escalation", STRING, "true or false (privilege_change)"),
               D("target_ids", STRING, "the ids it changed to, comma-separated (privilege_change)"))),
    EventType("cycle.requested", ("monitor",), "the cycle id", "a MAPE-K cycle started on request",
              (D("nodes", INTEGER, "nodes in its telemetry window"),)),
    EventType("health.changed", ("monitor",), "the node", "a node's health changed",
              (D("from", STRING, "HEALTH_* before"), D("to", STRING, "HEALTH_* now"),
               D("reasons", STRING, "the thresholds crossed, ; separated"), D("cycle", STRING, "the cycle it starts"))),
    EventType("cycle.publish_failed", ("monitor",), "the node", "a cycle's telemetry window could not be published",
              (D("cause", STRING, "the event that caused the cycle"), D("attempt", INTEGER, "attempts made"),
               _ERROR)),
    EventType("health.mass_silence", ("monitor",), "\"mesh\"",
              "many nodes stopped reporting at once with no neighbour reporting them lost: their reporting path "
              "failed (a mesh host, its bus connection), not the nodes; none is marked unreachable (once per episode)",
              (D("nodes", INTEGER, "nodes silent at once"), D("sample", ARRAY, "up to 20 of them"),
               D("stale_after_s", NUMBER, "the silence that makes a node stale"))),
    EventType("health.mesh_changed", ("monitor",), "\"mesh\"", "the mesh's health changed",
              (D("from", STRING, "HEALTH_* before"), D("to", STRING, "HEALTH_* now"),
               D("reasons", STRING, "why, ; separated"))),
    # ---- analyzer ----
    EventType("telemetry.rejected", ("analyzer",), "the node", "a node's telemetry left out of a window",
              (_REASON, D("window", STRING, "the window's key"))),
    EventType("telemetry.unknown_neighbour", ("analyzer",), "the trigger node or \"mesh\"",
              "links to nodes not in the window were dropped before the model ran",
              (D("links", STRING, "a->b, comma-separated (at most 20)"), D("window", STRING, "the window's key"))),
    EventType("analyzer.model_failed", ("analyzer",), "the window's key", "the model failed; the rules decided",
              (_ERROR,)),
    EventType("anomaly.detected", ("analyzer",), "the incident id", "an anomaly published",
              (D("root_cause", STRING, "the failing node"), D("fault", STRING, "the fault type"),
               D("confidence", NUMBER, "0..1"), D("detector", STRING, "rules, graphsage or tree"),
               D("affected", STRING, "the affected nodes, comma-separated"))),
    # ---- planner ----
    EventType("anomaly.stale", ("planner",), "the incident id", "an anomaly too old to act on",
              (D("node", STRING, "the node showing the symptom"),)),
    EventType("anomaly.duplicate", ("planner",), "the incident id", "an anomaly of an incident already handled",
              (D("node", STRING, "the node showing the symptom"),)),
    EventType("anomaly.maintenance", ("planner",), "the incident id", "an anomaly of a node in planned maintenance",
              (D("node", STRING, "the root cause"), D("fault", STRING, "the fault type"), _REASON,
               D("since_ns", STRING, "maintenance start (Unix ns, decimal)"))),
    EventType("decision", ("planner",), "the plan id", "the planner's decision on an incident",
              (D("decision", STRING, "auto_execute, emergency_vote, standard_vote or observe"), _REASON,
               D("incident", STRING, "the incident id"), _ACTION, _TARGET,
               D("confidence", NUMBER, "the anomaly's confidence, 0..1 (absent for a reinstatement)"),
               D("auto_approved", BOOLEAN, "the planner approved (signed) the action itself"))),
    EventType("incident.escalated", ("planner", "executor"), "the incident id (or the action id)",
              "an incident handed to operators",
              (D("reason", STRING, "rolled_back, irreversible, rollback_failed, live_endpoint, flow_cut, "
                                   "actions_failed or over_budget"),
               D("plan", STRING, "planner: the plan id"), D("action_id", STRING, "executor: the action id"),
               _ACTION, _TARGET, D("rolled_back", BOOLEAN, "executor: the action was undone"),
               D("detail", STRING, "what happened (at most 1000 characters)"))),
    EventType("avoided.dropped", ("planner",), "the node", "a routed-around node forgotten: its mesh was replaced",
              (_REASON, D("was", STRING, "the mesh generation it was avoided in"),
               D("now", STRING, "the current generation"))),
    EventType("knowledge.recorded", ("planner",), "the knowledge key (fault type / action)",
              "a verified outcome added to the knowledge base",
              (D("recovered", BOOLEAN, "the mesh recovered"), D("mttr_ms", NUMBER, "time to recovery (ms)"),
               D("success_rate", NUMBER, "the key's success rate now, 0..1"),
               D("topology_size", INTEGER, "nodes in the mesh"), D("action_id", STRING, "the action id"))),
    EventType("knowledge.duplicate", ("planner",), "the knowledge key", "an outcome already counted",
              (D("action_id", STRING, "the action id"), D("recovered", BOOLEAN, "the mesh recovered"))),
    # ---- executor ----
    EventType("action.claim_invalid", ("executor",), "the action id", "an unreadable action claim replaced",
              (_REASON, D("note", STRING, "what was done"))),
    EventType("action.duplicate", ("executor",), "the action id", "an action already executed, not repeated",
              (D("note", STRING, "what was done"),)),
    EventType("action.rejected", ("executor",), "the action id", "an action refused before it ran",
              (_REASON, D("check", STRING, "the check that failed (approval, expired, kind, ...)"), _ACTION,
               _TARGET, _APPROVED_BY, _APPROVER, D("key_id", STRING, "the approval's signing key"))),
    EventType("action.executed", ("executor",), "the action id", "an action carried out",
              (_ACTION, _TARGET, D("success", BOOLEAN, "every step succeeded"), _APPROVED_BY, _APPROVER,
               D("key_id", STRING, "the approval's signing key"), D("steps", INTEGER, "steps run"), _ERROR,
               D("duration_ms", NUMBER, "how long it took (ms)"))),
    EventType("action.over_budget", ("executor",), "the action id", "an action not run: over its action budget",
              (_ACTION, _TARGET, D("incident", STRING, "the incident id"), _APPROVED_BY, _APPROVER, _REASON)),
    EventType("verification", ("executor",), "the action id", "an action's effect verified",
              (D("recovered", BOOLEAN, "the mesh recovered"), D("mttr_ms", NUMBER, "first symptom -> recovery (ms)"),
               D("failed", STRING, "the checks that failed, ; separated"),
               D("rolled_back", BOOLEAN, "the action was undone"), D("escalated", BOOLEAN, "handed to operators"))),
    EventType("action.completed", ("executor",), "the action id", "an action's steps, when it did not verify",
              (D("steps", STRING, "name: ok or detail, ; separated"), D("success", BOOLEAN, "every step succeeded"))),
    EventType("action.rolled_back", ("executor",), "the action id", "a harmful action undone",
              (_ACTION, _TARGET, D("incident", STRING, "the incident id"), D("ok", BOOLEAN, "the rollback worked"),
               D("steps", INTEGER, "rollback steps"), _ERROR, D("harm", STRING, "what got worse, ; separated"))),
    # ---- governance ----
    *_gov_types(),
    EventType("action.requested", ("governance",), "the proposal id", "a passed proposal's action published",
              (D("action_id", STRING, "the action id"), _APPROVED_BY, D("plan", STRING, "the plan id (\"\": an "
                                                                                       "operator's proposal)"),
               D("proposer", STRING, "an operator's proposal: who proposed it"))),
    EventType("action.not_requested", ("governance",), "the proposal id", "a passed proposal's action not published",
              (D("action_id", STRING, "the action id"), _REASON)),
    EventType("proposal.result_ignored", ("governance",), "the proposal id", "an action result that changes nothing",
              (D("action_id", STRING, "the action id"), _REASON)),
    EventType("gov.event.quarantined", ("governance",), "the stream sequence (decimal)",
              "a governance log message not applied (forged, altered, out of chain, undecodable)",
              (D("stream_seq", INTEGER, "its stream sequence"), D("subject", STRING, "its subject"), _REASON)),
    EventType("identity.revoked_refused", ("governance",), "the identity",
              "a call by an identity keyvault revoked, refused",
              (D("method", STRING, "the method"), D("identity", STRING, "the identity"), _REASON)),
    # ---- keyvault ----
    EventType("keyvault.opened", ("keyvault",), "\"keyvault\"", "keyvault opened its shared state",
              (D("identities", INTEGER, "identities held"), D("root_key_id", STRING, "the root key id"),
               D("root_created", BOOLEAN, "the root key was created now"),
               D("copied_up", INTEGER, "records copied from a local store"),
               D("kv_resynced", INTEGER, "keys-bucket changes made"), D("backend", STRING, "the PQC backend"))),
    EventType("identity.issued", ("keyvault",), "the node id", "an identity issued (custodial)",
              (D("spiffe_id", STRING, "its SPIFFE ID"), D("generation", INTEGER, "its key generation"),
               D("sig_key_id", STRING, "signing key id"), D("kem_key_id", STRING, "KEM key id"),
               D("custodial", BOOLEAN, "keyvault holds its private keys"), _VIA)),
    EventType("key.certify.refused", ("keyvault",), "the node id", "public keys not certified",
              (_REASON, _VIA)),
    EventType("key.certified", ("keyvault",), "the node id", "public keys a node generated, certified",
              (D("spiffe_id", STRING, "its SPIFFE ID"), D("generation", INTEGER, "the new generation"),
               D("sig_key_id", STRING, "signing key id"), D("kem_key_id", STRING, "KEM key id"),
               D("retiring", INTEGER, "the generation retiring, or the string \"-\""),
               D("overlap_s", NUMBER, "its overlap (s), or the string \"-\""),
               D("private_held_by_keyvault", BOOLEAN, "always false"), _VIA,
               D("rotation_request", STRING, "the rotation request answered, or \"-\""))),
    EventType("key.rotation.started", ("keyvault",), "the request id, or \"-\"", "a rotation started",
              (D("nodes", INTEGER, "identities rotated or asked to"), D("custodial", INTEGER, "custodial ones"),
               D("node_held", INTEGER, "node-held ones (asked to rotate)"), D("all", BOOLEAN, "every node"),
               D("include_operators", BOOLEAN, "operators too"), D("overlap_s", NUMBER, "overlap (s)"),
               D("request_id", STRING, "the request id"), _VIA)),
    EventType("key.rotation.published", ("keyvault",), "the request id, or \"-\"", "a rotation's records published",
              (D("nodes", INTEGER, "identities rotated"), D("requested", INTEGER, "rotations requested"),
               D("kv_changes", INTEGER, "keys-bucket changes"), D("bucket", STRING, "the bucket"),
               D("generate_persist_ms", STRING, "ms (decimal)"), D("kv_ms", STRING, "ms (decimal)"),
               D("audit_ms", STRING, "ms (decimal)"))),
    EventType("key.retired", ("keyvault",), "the node id, or \"<n> nodes\"",
              "generations retired; per node one detail <node id> (string: the generation)",
              (D("why", STRING, "why (when not at the end of its overlap)"),), open=True),
    EventType("key.rotated", ("keyvault",), "the node id, or \"<n> nodes\"",
              "custodial identities rotated; per node one detail <node id> (string: \"gen=<n> sig=<id> kem=<id> "
              "retiring=<n> until=<unix s>\")",
              (D("overlap_s", NUMBER, "overlap (s)"),), open=True),
    EventType("key.rotation.requested", ("keyvault",), "the node id, or \"<n> nodes\"",
              "node-held identities asked to rotate; per node one detail <node id> (string: the request)",
              (D("overlap_s", NUMBER, "overlap (s)"), D("key", STRING, "the bucket key of the requests"),
               D("bucket", STRING, "the bucket")), open=True),
    EventType("key.rotation.pending", ("keyvault",), "the node id, or \"<n> nodes\"",
              "node-held identities that did not certify new keys in time; per node one detail <node id>",
              (D("waited_s", STRING, "seconds waited (decimal)"), D("request_id", STRING, "the request id")),
              open=True),
    EventType("identity.revoked", ("keyvault",), "the node id", "an identity revoked",
              (_REASON, D("key_ids", STRING, "its revoked key ids, comma-separated"), _VIA)),
    EventType("identity.attested", ("keyvault",), "the node id", "an attestation checked",
              (D("valid", BOOLEAN, "the signature over the challenge verified"), D("key_id", STRING, "the key"),
               _REASON)),
    EventType("identity.export.refused", ("keyvault",), "the node id", "a private export refused",
              (_REASON, D("recipient_key_id", STRING, "the recipient's ML-KEM key id"), _VIA)),
    EventType("identity.private_exported", ("keyvault",), "the node id",
              "a custodial identity's private bundle exported once, wrapped to the recipient (then node-held)",
              (D("generation", INTEGER, "the generation"), D("sig_key_id", STRING, "signing key id"),
               D("kem_key_id", STRING, "KEM key id"), D("recipient_key_id", STRING, "the recipient's key id"),
               D("wrapping", STRING, "ML-KEM-768+HKDF-SHA256+AES-256-GCM"), D("single_use", BOOLEAN, "always true"),
               D("private_held_by_keyvault", BOOLEAN, "always false after an export"), _VIA)),
    EventType("svid.issued", ("keyvault",), "the SPIFFE ID issued", "an X.509 SVID issued to a bus identity "
              "(keyvault.svid.<identity>)",
              (D("identity", STRING, "the bus identity"), D("spiffe_id", STRING, "the SPIFFE ID"),
               D("serial", STRING, "the certificate's serial (hex)"),
               D("not_after", STRING, "expiry (Unix s, decimal)"),
               D("bus_secured", BOOLEAN, "the bus runs with permissions (the subject attests the identity)"))),
    EventType("svid.refused", ("keyvault",), "the bus identity", "an SVID request refused",
              (D("identity", STRING, "the bus identity"), D("spiffe_id", STRING, "the SPIFFE ID, or \"-\""),
               _REASON, D("bus_secured", BOOLEAN, "the bus runs with permissions"))),
    # ---- edge nodes (service edge, recorded offline) ----
    EventType("edge.provisioned", ("edge",), "the node", "an edge node provisioned" + _EDGE_DOC,
              (D("offline", STRING, "true or false"), D("routes", STRING, "preloaded routes (decimal)"),
               D("sig_key", STRING, "signing key id"), D("kem_key", STRING, "KEM key id"),
               D("allowed_actions", STRING, "actions it may take offline, comma-separated"), *_EDGE_SYNC)),
    EventType("edge.offline", ("edge",), "the node", "the node went offline" + _EDGE_DOC, _EDGE_SYNC),
    EventType("edge.online", ("edge",), "the node", "the node came back online" + _EDGE_DOC, _EDGE_SYNC),
    EventType("config.set", ("edge",), "the config key", "a local setting changed" + _EDGE_DOC,
              (D("value", STRING, "the new value as JSON text"), *_EDGE_SYNC)),
    EventType("route.hint", ("edge",), "the destination", "a routing hint recorded" + _EDGE_DOC,
              (D("next_hop", STRING, "the next hop"), D("avoid", STRING, "true or false"),
               D("metric", STRING, "the metric (decimal)"), *_EDGE_SYNC)),
    EventType("decision.local", ("edge",), "the target node", "a decision taken offline" + _EDGE_DOC,
              (_ACTION, D("confidence", STRING, "0..1 (decimal, 3 places)"), D("allowed", STRING, "true or false"),
               D("why", STRING, "why allowed or not"), _REASON, *_EDGE_SYNC)),
    EventType("keys.rotated", ("edge",), "the node", "the node rotated its own keys offline" + _EDGE_DOC,
              (D("from_generation", STRING, "old generation"), D("to_generation", STRING, "new generation"),
               D("old_sig_key", STRING, "old signing key id"), D("sig_key", STRING, "new signing key id"),
               *_EDGE_SYNC)),
    EventType("edge.merged", ("edge",), "the source (\"file\" or a peer)", "a peer's state merged" + _EDGE_DOC,
              (D("bytes", STRING, "bytes merged (decimal)"), *_EDGE_SYNC)),
)


def find(event_type: str) -> EventType | None:
    """The entry of an event type (exact names first, then patterns)."""
    exact = next((t for t in TYPES if t.name == event_type), None)
    return exact or next((t for t in TYPES if "{" in t.name and t.matches(event_type)), None)


def describe() -> str:
    """docs/audit-events.md's generated region: one section per event type."""
    lines = ["| event type | written by | subject_id | what | details (key: type - meaning) |",
             "|---|---|---|---|---|"]
    for t in TYPES:
        details = "<br>".join(f"`{d.key}`: {d.type} - {d.doc}" for d in t.details)
        if t.open:
            details += "<br>(and more keys, see what)"
        lines.append(f"| `{t.name}` | {', '.join(t.services)} | {t.subject} | {t.doc} | {details or '-'} |")
    return "\n".join(lines)
