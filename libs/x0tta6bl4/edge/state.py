"""Edge state as CRDTs (pycrdt / Yjs), with a Lamport clock for causal order. No I/O.

One document per edge node, merged with every peer it meets and with the broker-side
copy on reconnect. Merges are commutative, associative and idempotent (Yjs updates), and
nothing is ever lost because **every entry has exactly one writer**:

* ``config``   ``"<key>@<node>"``  -> the node's latest value for ``key`` (a multi-value register);
  the effective value is the one with the highest ``(lamport, node)``, the same on every replica.
* ``routes``   ``"<dest>@<node>"`` -> the node's latest routing hint for ``dest`` (next hop, metric, avoid).
* ``keys``     ``"<key_id>"``      -> a public-key record (written by the key's owner), plus
  ``"revoked:<key_id>@<node>"`` revocations.
* ``audit``    ``"<event_id>"``    -> an audit event (node, Lamport time, per-node sequence, signature).
* ``published`` ``"<event_id>"``   -> who put the event on the broker's audit trail (claimed under
  compare-and-set on the broker-side copy, so each event is published once).
* ``clocks``   ``"<node>"``        -> the highest Lamport time the node has used.

Values are JSON strings so ints, floats and nested data keep their types exactly.
Causal order: an event's Lamport time is greater than that of every event its node had
seen when it was recorded, so sorting by ``(lamport, node, seq)`` is a total order that
respects causality.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, Map

MAPS = ("config", "routes", "keys", "audit", "published", "clocks")


def _dumps(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, order=True)
class AuditEntry:
    """One audit event recorded at the edge (sortable in causal order)."""

    lamport: int
    node: str
    seq: int
    event_id: str
    event_type: str
    subject: str
    details: tuple[tuple[str, str], ...]
    ts_ns: int
    signature: str = ""        # base64 hybrid (Ed25519 + ML-DSA-65) signature by the node identity

    @classmethod
    def from_json(cls, s: str) -> AuditEntry:
        d = json.loads(s)
        return cls(int(d["lamport"]), d["node"], int(d["seq"]), d["event_id"], d["event_type"], d.get("subject", ""),
                   tuple(sorted((str(k), str(v)) for k, v in (d.get("details") or {}).items())), int(d["ts_ns"]),
                   d.get("signature", ""))

    def body(self) -> dict[str, Any]:
        """The signed part (everything but the signature)."""
        return {"lamport": self.lamport, "node": self.node, "seq": self.seq, "event_id": self.event_id,
                "event_type": self.event_type, "subject": self.subject, "details": dict(self.details),
                "ts_ns": self.ts_ns}

    def signing_bytes(self) -> bytes:
        return b"x0tta6bl4/edge-audit/v1\x00" + _dumps(self.body()).encode()

    def to_json(self) -> str:
        return _dumps({**self.body(), "signature": self.signature})


class EdgeState:
    """The CRDT document of one edge node."""

    def __init__(self, node: str, update: bytes | None = None):
        self.node = node
        self.doc: Doc[Any] = Doc()
        self.maps: dict[str, Map] = {name: self.doc.get(name, type=Map) for name in MAPS}
        if update:
            self.doc.apply_update(update)
        self.clock = self.max_clock()

    # ---- replication --------------------------------------------------------------------------------
    def update(self, since: bytes | None = None) -> bytes:
        """The whole state (or what a peer with state vector ``since`` lacks) as a Yjs update."""
        return self.doc.get_update(since) if since else self.doc.get_update()

    def state_vector(self) -> bytes:
        return self.doc.get_state()

    def merge(self, update: bytes) -> None:
        """Apply a peer's update (any order, any number of times) and advance the Lamport clock."""
        if update:
            self.doc.apply_update(update)
        self.clock = max(self.clock, self.max_clock())

    def copy(self) -> EdgeState:
        return EdgeState(self.node, self.update())

    # ---- Lamport clock ------------------------------------------------------------------------------
    def max_clock(self) -> int:
        return max((int(v) for v in self.maps["clocks"].values()), default=0)

    def tick(self) -> int:
        self.clock = max(self.clock, self.max_clock()) + 1
        self.maps["clocks"][self.node] = str(self.clock)
        return self.clock

    # ---- configuration (multi-value register, LWW by (lamport, node) on read) ----------------------
    def set_config(self, key: str, value: Any) -> int:
        t = self.tick()
        self.maps["config"][f"{key}@{self.node}"] = _dumps({"key": key, "value": value, "lamport": t,
                                                             "node": self.node})
        return t

    def config_writes(self) -> list[dict[str, Any]]:
        return sorted((json.loads(v) for v in self.maps["config"].values()),
                      key=lambda d: (d["key"], d["lamport"], d["node"]))

    def config(self) -> dict[str, Any]:
        best: dict[str, dict[str, Any]] = {}
        for d in self.config_writes():
            cur = best.get(d["key"])
            if cur is None or (d["lamport"], d["node"]) > (cur["lamport"], cur["node"]):
                best[d["key"]] = d
        return {k: d["value"] for k, d in sorted(best.items())}

    # ---- routing hints -------------------------------------------------------------------------------
    def hint_route(self, dest: str, next_hop: str = "", metric: float = 1.0, avoid: bool = False) -> int:
        t = self.tick()
        self.maps["routes"][f"{dest}@{self.node}"] = _dumps({"dest": dest, "next_hop": next_hop, "metric": metric,
                                                            "avoid": avoid, "lamport": t, "node": self.node})
        return t

    def route_hints(self) -> list[dict[str, Any]]:
        return sorted((json.loads(v) for v in self.maps["routes"].values()),
                      key=lambda d: (d["dest"], d["lamport"], d["node"]))

    def latest_hint(self, dest: str) -> dict[str, Any] | None:
        hs = [h for h in self.route_hints() if h["dest"] == dest]
        return max(hs, key=lambda d: (d["lamport"], d["node"])) if hs else None

    def avoided(self) -> set[str]:
        """Nodes whose latest hint says "avoid"."""
        latest: dict[str, dict[str, Any]] = {}
        for h in self.route_hints():
            cur = latest.get(h["dest"])
            if cur is None or (h["lamport"], h["node"]) > (cur["lamport"], cur["node"]):
                latest[h["dest"]] = h
        return {d for d, h in latest.items() if h["avoid"]}

    # ---- key records ---------------------------------------------------------------------------------
    def put_key_record(self, record: dict[str, Any]) -> int:
        t = self.tick()
        self.maps["keys"][record["key_id"]] = _dumps({**record, "lamport": t, "node": self.node})
        return t

    def key_records(self) -> dict[str, dict[str, Any]]:
        recs = {k: json.loads(v) for k, v in self.maps["keys"].items() if not k.startswith("revoked:")}
        for k, v in self.maps["keys"].items():
            if k.startswith("revoked:"):
                r = json.loads(v)
                if r["key_id"] in recs:
                    recs[r["key_id"]]["revoked"] = True
        return dict(sorted(recs.items()))

    def signing_record(self, node: str) -> dict[str, Any] | None:
        """The node's newest non-revoked signing-key record."""
        cand = [r for r in self.key_records().values()
                if r.get("node_id") == node and r.get("purpose") == "signing" and not r.get("revoked")]
        return max(cand, key=lambda r: r["generation"]) if cand else None

    # ---- audit -------------------------------------------------------------------------------------------
    def next_seq(self) -> int:
        return 1 + max((e.seq for e in self.audit_events() if e.node == self.node), default=0)

    def add_audit(self, entry: AuditEntry) -> None:
        self.maps["audit"][entry.event_id] = entry.to_json()

    def audit_events(self) -> list[AuditEntry]:
        """Every recorded audit event, in causal order."""
        return sorted(AuditEntry.from_json(v) for v in self.maps["audit"].values())

    def claims(self) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self.maps["published"].items()}

    def unpublished(self, me: str) -> list[AuditEntry]:
        """Events not yet on the broker's audit trail (and mine claimed but not confirmed), causal order."""
        claims = self.claims()
        return [e for e in self.audit_events() if e.event_id not in claims
                or (claims[e.event_id]["by"] == me and not claims[e.event_id].get("done"))]

    def claim(self, events: Iterable[AuditEntry], by: str, session: str, done: bool = False) -> None:
        for e in events:
            self.maps["published"][e.event_id] = _dumps({"by": by, "session": session, "done": done})

    # ---- comparison -----------------------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        """Everything that must be equal on two converged replicas."""
        return {"config": self.config(), "config_writes": self.config_writes(), "routes": self.route_hints(),
                "keys": self.key_records(), "audit": [e.to_json() for e in self.audit_events()],
                "published": dict(sorted(self.claims().items()))}
