"""An edge node provisioned for crisis mode: works with no broker and no keyvault.

``EdgeNode.setup`` generates the node's PQC identity offline (hybrid ML-DSA-65 + Ed25519 signing,
ML-KEM-768 + X25519 KEM: :class:`x0tta6bl4.pqc.NodeIdentity`), preloads a routing table, records
the operator's offline policy and ``offline=true``, and stores all of it in an encrypted keystore
(AES-256-GCM under a 32-byte master key, file ``master.key`` 0600 or ``$X0TTA6BL4_EDGE_MASTER_KEY``).

While cut off the node keeps working: it routes (preloaded table + routing hints), signs, takes local
decisions within its policy, and records configuration, routing hints, key records and audit events in
its CRDT document (:mod:`x0tta6bl4.edge.state`), which it merges with every peer it meets
(:meth:`EdgeNode.sync_peer`, or files via ``meshctl edge export`` / ``import``) and with the broker on
reconnect (:mod:`x0tta6bl4.edge.sync`).

Layout of ``<data-dir>/<node>/``: ``master.key`` (unless the key comes from the environment) and
``keystore/`` with entries ``identity``, ``audit-seed``, ``meta`` (JSON: node, offline, routes, policy)
and ``state`` (the CRDT document).
"""
from __future__ import annotations

import base64
import json
import os
import pathlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from x0tta6bl4.audit.chain import MLDSASigner
from x0tta6bl4.mesh.topology import parse_spec
from x0tta6bl4.pqc import (
    HybridVerifyKey,
    Keystore,
    MasterKey,
    NodeIdentity,
    records_for_identity,
    validate_node_id,
)
from x0tta6bl4.pqc.errors import InvalidSignature, KeystoreError

from .state import AuditEntry, EdgeState

MASTER_KEY_ENV = "X0TTA6BL4_EDGE_MASTER_KEY"
ACTIONS = ("reroute", "isolate", "restart", "rotate_keys", "config_change", "deploy")
DEFAULT_POLICY = {"allowed_actions": ["reroute", "isolate", "restart"], "min_confidence": 0.9}
SIGN_CONTEXT = b"x0tta6bl4/edge"


class EdgeError(Exception):
    """A problem to report as one line."""


def routing_table(node: str, topology: str | None = None, routes: dict[str, str] | None = None,
                  attach: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """Preloaded next hops: shortest paths over a known topology, overridden by explicit routes.

    A node of the topology routes along its shortest paths. A new node (an edge node deployed into a mesh it is
    not part of yet, e.g. ``edge-7`` next to ``grid:9``) joins it through ``attach`` -- the mesh nodes it will
    be a neighbour of (default: the topology's first node): every mesh node is reached through the attachment
    node nearest to it. Naming ``attach`` for a node of the topology is an error (its links are known)."""
    table: dict[str, str] = {}
    if topology:
        topo = parse_spec(topology)
        if node in topo.nodes:
            if attach:
                raise EdgeError(f"--attach is for a node new to the mesh; {node!r} is in topology {topology!r} "
                                "(its links are known)")
            for dest in topo.nodes:
                if dest != node:
                    path = topo.shortest_path(node, dest)
                    if path and len(path) > 1:
                        table[dest] = path[1]
        else:
            gates = list(dict.fromkeys(attach)) or topo.nodes[:1]
            unknown = [g for g in gates if g not in topo.nodes]
            if unknown:
                raise EdgeError(f"--attach {', '.join(unknown)}: not in topology {topology!r} "
                                f"({', '.join(topo.nodes[:8])}{' ...' if len(topo.nodes) > 8 else ''})")
            for dest in topo.nodes:
                hops = [(len(p), g) for g in gates if (p := topo.shortest_path(g, dest)) is not None]
                if hops:
                    table[dest] = min(hops)[1]
    elif attach:
        table.update({g: g for g in attach})      # no topology: the attachment nodes are the known neighbours
    for dest, hop in (routes or {}).items():
        table[str(dest)] = str(hop)
    return dict(sorted(table.items()))


def load_routes_file(path: pathlib.Path) -> dict[str, str]:
    import yaml
    try:
        data = yaml.safe_load(pathlib.Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise EdgeError(f"cannot read routes file {path}: {e}") from None
    data = data.get("routes", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise EdgeError(f"{path}: expected a mapping destination -> next hop")
    return {str(k): str(v) for k, v in data.items()}


def _master_key(node_dir: pathlib.Path, create: bool) -> MasterKey:
    env = os.environ.get(MASTER_KEY_ENV)
    if env:
        return MasterKey.from_text(env)
    path = node_dir / "master.key"
    if not path.exists():
        if not create:
            raise EdgeError(f"no master key: {path} missing and ${MASTER_KEY_ENV} unset")
        node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        MasterKey.generate().write_file(path)
    return MasterKey.from_file(path)


@dataclass
class Decision:
    action: str
    target: str
    confidence: float
    allowed: bool
    reason: str
    event_id: str = ""


@dataclass
class EdgeNode:
    node: str
    directory: pathlib.Path
    keystore: Keystore
    identity: NodeIdentity
    audit_signer: MLDSASigner
    meta: dict[str, Any]
    state: EdgeState
    trust_domain: str = "x0tta6bl4.mesh"
    peers_seen: set[str] = field(default_factory=set)

    # ---- provisioning --------------------------------------------------------------------------------
    @classmethod
    def setup(cls, data_dir: pathlib.Path | str, node: str, *, offline: bool = True, topology: str | None = None,
              routes: dict[str, str] | None = None, policy: dict[str, Any] | None = None,
              trust_domain: str = "x0tta6bl4.mesh", validity_s: int = 90 * 86400, force: bool = False,
              attach: list[str] | tuple[str, ...] = ()) -> EdgeNode:
        """Provision ``node`` with no network at all: keys, routing table, policy, offline flag."""
        try:
            validate_node_id(node)
        except Exception as e:  # noqa: BLE001 - one line for the operator
            raise EdgeError(str(e)) from None
        node_dir = pathlib.Path(data_dir) / node
        ks_dir = node_dir / "keystore"
        if (ks_dir / "identity.key").exists() and not force:
            raise EdgeError(f"{node} is already provisioned in {node_dir} (use --force to replace it)")
        pol = {**DEFAULT_POLICY, **(policy or {})}
        bad = [a for a in pol["allowed_actions"] if a not in ACTIONS]
        if bad:
            raise EdgeError(f"unknown action(s) in policy: {', '.join(bad)} (known: {', '.join(ACTIONS)})")
        if not 0.0 <= float(pol["min_confidence"]) <= 1.0:
            raise EdgeError("policy min_confidence must be in [0, 1]")
        table = routing_table(node, topology, routes, attach)
        ks = Keystore(ks_dir, _master_key(node_dir, create=True))
        identity = NodeIdentity.generate(trust_domain, node, now=time.time(), validity_seconds=validity_s)
        ks.put_identity("identity", identity)
        signer = MLDSASigner()
        ks.put("audit-seed", signer.seed_bytes_unsafe())
        meta = {"node": node, "offline": bool(offline), "routes": table, "policy": pol, "trust_domain": trust_domain,
                "provisioned_at": time.time()}
        ks.put("meta", json.dumps(meta, sort_keys=True).encode())
        en = cls(node, node_dir, ks, identity, signer, meta, EdgeState(node), trust_domain)
        en._publish_identity()
        en.audit("edge.provisioned", node, {"offline": str(bool(offline)).lower(), "routes": str(len(table)),
                                           "sig_key": identity.signing.key_id, "kem_key": identity.kem.key_id,
                                           "allowed_actions": ",".join(pol["allowed_actions"])})
        return en

    @classmethod
    def open(cls, data_dir: pathlib.Path | str, node: str) -> EdgeNode:
        node_dir = pathlib.Path(data_dir) / node
        ks_dir = node_dir / "keystore"
        if not (ks_dir / "identity.key").exists():
            raise EdgeError(f"{node} is not provisioned in {node_dir} (meshctl edge setup {node} --offline)")
        try:
            ks = Keystore(ks_dir, _master_key(node_dir, create=False))
            identity = ks.get_identity("identity")
            signer = MLDSASigner.from_seed(ks.get("audit-seed"))
            meta = json.loads(ks.get("meta"))
            state = EdgeState(node, ks.get("state") if "state" in ks else None)
        except KeystoreError as e:
            raise EdgeError(f"cannot open {node}'s keystore: {e}") from None
        return cls(node, node_dir, ks, identity, signer, meta, state, meta.get("trust_domain", "x0tta6bl4.mesh"))

    def save(self) -> None:
        """Persist the CRDT document (encrypted, atomic)."""
        self.keystore.put("state", self.state.update())
        self.keystore.put("meta", json.dumps(self.meta, sort_keys=True).encode())

    @property
    def offline(self) -> bool:
        return bool(self.meta.get("offline"))

    def set_offline(self, offline: bool) -> None:
        if self.offline != offline:
            self.meta["offline"] = offline
            self.audit("edge.offline" if offline else "edge.online", self.node)

    def _publish_identity(self) -> None:
        for r in records_for_identity(self.identity):
            self.state.put_key_record({
                "key_id": r.key_id, "node_id": self.node, "spiffe_id": r.spiffe_id, "purpose": r.purpose.value,
                "algorithm": r.algorithm, "public_key": base64.b64encode(r.public_key).decode(),
                "generation": r.generation, "not_before": r.not_before, "not_after": r.not_after,
                "origin": "edge-offline"})

    # ---- working offline ------------------------------------------------------------------------------
    def audit(self, event_type: str, subject: str = "", details: dict[str, Any] | None = None) -> AuditEntry:
        """Record an audit event locally: Lamport-stamped, signed by the node identity."""
        t = self.state.tick()
        e = AuditEntry(t, self.node, self.state.next_seq(), f"edge-{self.node}-{uuid.uuid4().hex[:16]}", event_type,
                       subject, tuple(sorted((str(k), str(v)) for k, v in (details or {}).items())), time.time_ns())
        sig = self.identity.sign(e.signing_bytes(), SIGN_CONTEXT)
        e = AuditEntry(**{**e.__dict__, "signature": base64.b64encode(sig).decode()})
        self.state.add_audit(e)
        return e

    def verify_audit(self, e: AuditEntry) -> bool:
        """Check an event's signature against its node's signing-key records (known offline via the CRDT):
        any generation whose validity covers the event's time (a rotated key still vouches for what it
        signed before the rotation)."""
        if not e.signature:
            return False
        t = e.ts_ns / 1e9
        for rec in self.state.key_records().values():
            if rec.get("node_id") != e.node or rec.get("purpose") != "signing":
                continue
            if not rec["not_before"] - 300 <= t < rec["not_after"]:
                continue
            try:
                HybridVerifyKey.from_bytes(base64.b64decode(rec["public_key"])).verify(
                    base64.b64decode(e.signature), e.signing_bytes(), SIGN_CONTEXT)
                return True
            except (InvalidSignature, ValueError):
                continue
            except Exception:  # noqa: BLE001 - any backend failure means "not verified" by this key
                continue
        return False

    def sign(self, data: bytes) -> bytes:
        return self.identity.sign(data, SIGN_CONTEXT, now=time.time())

    def set_config(self, key: str, value: Any) -> None:
        self.state.set_config(key, value)
        self.audit("config.set", key, {"value": json.dumps(value)})

    def hint_route(self, dest: str, next_hop: str = "", avoid: bool = False, metric: float = 1.0) -> None:
        self.state.hint_route(dest, next_hop, metric, avoid)
        self.audit("route.hint", dest, {"next_hop": next_hop, "avoid": str(avoid).lower(), "metric": metric})

    def next_hop(self, dest: str) -> str | None:
        """Route offline: the latest routing hint for ``dest`` if any, else the preloaded table;
        never through a node hinted as avoided."""
        avoided = self.state.avoided()
        if dest in avoided:
            return None
        hint = self.state.latest_hint(dest)
        if hint and hint["next_hop"] and not hint["avoid"] and hint["next_hop"] not in avoided:
            return hint["next_hop"]
        hop = self.meta["routes"].get(dest)
        return hop if hop and hop not in avoided else None

    def decide(self, action: str, target: str, confidence: float, reason: str = "") -> Decision:
        """A local decision within the operator's policy (no DAO reachable): allowed actions above
        the policy's confidence floor are taken, everything else waits for the broker."""
        pol = self.meta["policy"]
        if action not in ACTIONS:
            raise EdgeError(f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
        ok = action in pol["allowed_actions"] and confidence >= float(pol["min_confidence"])
        why = ("within offline policy" if ok else
               f"needs the DAO: {action} not allowed offline" if action not in pol["allowed_actions"] else
               f"needs the DAO: confidence {confidence:g} < {pol['min_confidence']:g}")
        if ok and action == "isolate":
            self.state.hint_route(target, "", 1.0, True)
        e = self.audit("decision.local", target, {"action": action, "confidence": f"{confidence:.3f}",
                                                  "allowed": str(ok).lower(), "why": why, "reason": reason})
        return Decision(action, target, confidence, ok, why, e.event_id)

    def rotate_keys(self, validity_s: int = 90 * 86400) -> NodeIdentity:
        """Offline rotation: a new generation, its records in the CRDT, the old signing key revoked."""
        old = self.identity
        new = NodeIdentity.generate(self.trust_domain, self.node, now=time.time(), validity_seconds=validity_s,
                                    generation=old.generation + 1)
        self.keystore.put_identity("identity", new)
        self.identity = new
        self._publish_identity()
        self.audit("keys.rotated", self.node, {"from_generation": old.generation, "to_generation": new.generation,
                                               "old_sig_key": old.signing.key_id, "sig_key": new.signing.key_id})
        return new

    # ---- peer-to-peer (no broker) --------------------------------------------------------------------
    def sync_peer(self, other: EdgeNode) -> None:
        """Exchange CRDT deltas with a neighbour (state vector -> missing updates, both ways)."""
        a_sv, b_sv = self.state.state_vector(), other.state.state_vector()
        to_other, to_self = self.state.update(b_sv), other.state.update(a_sv)
        other.state.merge(to_other)
        self.state.merge(to_self)
        self.peers_seen.add(other.node)
        other.peers_seen.add(self.node)

    def export_update(self) -> bytes:
        return self.state.update()

    def import_update(self, update: bytes, source: str = "") -> None:
        self.state.merge(update)
        self.audit("edge.merged", source or "file", {"bytes": len(update)})

    def status(self) -> dict[str, Any]:
        evs = self.state.audit_events()
        return {"node": self.node, "spiffe_id": self.identity.uri, "offline": self.offline,
                "generation": self.identity.generation, "sig_key": self.identity.signing.key_id,
                "kem_key": self.identity.kem.key_id, "routes": len(self.meta["routes"]),
                "route_hints": len(self.state.route_hints()), "config": self.state.config(),
                "key_records": len(self.state.key_records()), "audit_events": len(evs),
                "unpublished": len(self.state.unpublished(self.node)), "lamport": self.state.clock,
                "policy": self.meta["policy"]}
