"""The policy engine (the seed's PolicyEngine / ZeroTrustValidator): every keyvault and governance call is
decided from the caller's SPIFFE ID (the URI SAN of its X.509 SVID, proven by mutual TLS) and the request.

    engine = PolicyEngine("x0tta6bl4.mesh", assignments=lambda: {"h1": {"n0", "n1"}})
    d = engine.decide("spiffe://x0tta6bl4.mesh/host/h1", "x0tta6bl4.v1.Keyvault/CertifyKeys", request)
    d.allowed, d.reason          # False, "host h1 may act only for its nodes n0, n1; not n5"

Pure: no I/O, no grpc (the interceptor in :mod:`x0tta6bl4.rpc.server` calls :meth:`PolicyEngine.decide`
and audits every decision). Default deny: a method without a rule is refused.

Principals (kinds of SPIFFE ID, see :mod:`x0tta6bl4.keyvault.svid`):

* ``service/<name>``: a MAPE-K service; ``operator/<name>``: meshctl, MCP, skill scripts;
* ``host/<host>``: a mesh host, acting only for the nodes assigned to it (``<secrets>/hosts.json``);
* ``node/<id>``: a node (in governance: the voter ``spiffe://<td>/node/<id>``), acting only for itself.

A rule grants a method to principals with a scope: ``ALL`` (any target) or ``OWN`` (the request's targets -
node ids, a voter or a proposer - must be the caller's own node, or nodes assigned to the calling host).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

KEYVAULT = "x0tta6bl4.v1.Keyvault"
GOVERNANCE = "x0tta6bl4.v1.Governance"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
ALL, OWN = "all", "own"


@dataclass(frozen=True)
class Principal:
    spiffe_id: str
    kind: str                      # service | operator | host | node
    name: str

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    method: str
    caller: str                    # the SPIFFE ID (or what identified the caller)
    audit: bool = True             # False: infrastructure (health, reflection) - decided, not audited
    sampled: bool = False          # an allowed high-volume call may be sampled in the audit trail (never a denial)


class PolicyError(ValueError):
    """A caller that is not a SPIFFE ID of this trust domain."""


def parse_principal(spiffe_id: str, trust_domain: str) -> Principal:
    """The principal of ``spiffe://<trust_domain>/<kind>/<name>``; PolicyError otherwise."""
    prefix = f"spiffe://{trust_domain}/"
    if not spiffe_id:
        raise PolicyError("no SPIFFE ID: the caller presented no X.509 SVID")
    if not spiffe_id.startswith("spiffe://"):
        raise PolicyError(f"{spiffe_id[:120]!r} is not a SPIFFE ID")
    if not spiffe_id.startswith(prefix):
        raise PolicyError(f"{spiffe_id[:120]!r} is not in trust domain {trust_domain!r}")
    kind, _, name = spiffe_id[len(prefix):].partition("/")
    if kind not in ("service", "operator", "host", "node") or not name or "/" in name:
        raise PolicyError(f"{spiffe_id[:120]!r}: expected spiffe://{trust_domain}/<service|operator|host|node>/<name>")
    return Principal(spiffe_id, kind, name)


# ---- what a request targets -----------------------------------------------------------------------------
Targets = Callable[[Any], tuple[str, ...] | None]
"""The node ids (or identities) a request acts on; None: every node (``Rotate all``)."""


def _node(req: Any) -> tuple[str, ...] | None:
    return (req.node_id,)


def _nodes(req: Any) -> tuple[str, ...] | None:
    return None if getattr(req, "all", False) else tuple(req.node_ids)


def _field(name: str) -> Targets:
    def get(req: Any) -> tuple[str, ...] | None:
        return (getattr(req, name),)
    return get


def _none(req: Any) -> tuple[str, ...] | None:
    return ()


@dataclass(frozen=True)
class Grant:
    who: str                       # "operator", "service", "service:<name>", "host", "node", "any"
    scope: str = ALL               # ALL or OWN

    def matches(self, p: Principal) -> bool:
        if self.who == "any":
            return True
        kind, _, name = self.who.partition(":")
        return p.kind == kind and (not name or p.name == name)


@dataclass(frozen=True)
class Rule:
    grants: tuple[Grant, ...]
    targets: Targets = _none
    identity_targets: bool = False   # targets are SPIFFE IDs (voter, proposer), not node ids
    sampled: bool = False            # allowed calls sampled in the audit trail (reads; votes, see CastVote)
    audit: bool = True
    doc: str = ""


def _g(*spec: str) -> tuple[Grant, ...]:
    out = []
    for s in spec:
        who, _, scope = s.partition("/")
        out.append(Grant(who, scope or ALL))
    return tuple(out)


_READERS = _g("operator", "service", "node", "host")
RULES: dict[str, Rule] = {
    # keyvault: public facts
    f"{KEYVAULT}/Info": Rule(_g("any"), sampled=True, doc="backend and root key: every authenticated caller"),
    f"{KEYVAULT}/Attest": Rule(_g("any"), sampled=True, doc="checks a signature; reveals nothing secret"),
    f"{KEYVAULT}/GetPublicKeys": Rule(_g("operator", "service", "host/own", "node/own"), _node, sampled=True,
                                      doc="a node reads only its own records, a host its nodes'"),
    f"{KEYVAULT}/ListIdentities": Rule(_g("operator", "service"), sampled=True, doc="operators and services"),
    # keyvault: private keys - nobody gets them but an operator provisioning an offline edge node, wrapped to
    # a recipient key, once (GetPrivateBundle / GetPrivateBundles no longer exist: nodes hold their own keys)
    f"{KEYVAULT}/ExportIdentity": Rule(_g("operator"), _node,
                                       doc="a custodial identity's private keys, wrapped, once: operators only"),
    # keyvault: changes - the operator role or the executor's identity (a host certifies its own nodes' keys)
    f"{KEYVAULT}/IssueIdentity": Rule(_g("operator", "service:executor"), _node,
                                      doc="custodial identities (keyvault makes the keys): operators, the executor"),
    f"{KEYVAULT}/CertifyKeys": Rule(_g("operator", "host/own", "node/own"), _node,
                                    doc="a node's own keys: the node, its mesh host or an operator"),
    f"{KEYVAULT}/Rotate": Rule(_g("operator", "service:executor"), _nodes, doc="operators and the executor"),
    f"{KEYVAULT}/Revoke": Rule(_g("operator", "service:executor"), _node, doc="operators and the executor"),
    # governance: reading the DAO
    f"{GOVERNANCE}/GetProposal": Rule(_READERS, sampled=True),
    f"{GOVERNANCE}/ListProposals": Rule(_READERS, sampled=True),
    f"{GOVERNANCE}/GetBalance": Rule(_READERS, sampled=True),
    f"{GOVERNANCE}/WatchProposals": Rule(_READERS, sampled=True),
    # governance: acting in it (the signatures and the admin token are still checked by the service)
    # a vote storm is the governance hot path; every vote is in the signed governance log, so allowed votes
    # are sampled like reads (each audited one counts the ones left out since: ``suppressed``)
    f"{GOVERNANCE}/CastVote": Rule(_g("operator", "node/own"), _field("voter"), identity_targets=True,
                                   sampled=True, doc="a node votes as itself; an operator relays signed votes"),
    f"{GOVERNANCE}/CreateProposal": Rule(_g("operator", "node/own"), _field("proposer"),
                                         identity_targets=True, doc="a node proposes as itself"),
    f"{GOVERNANCE}/CancelProposal": Rule(_g("operator", "node/own"), _field("proposer"), identity_targets=True,
                                         doc="a node cancels its own proposals"),
    f"{GOVERNANCE}/RegisterVoter": Rule(_g("operator"), doc="minting voting power: operators (with the admin token)"),
    # infrastructure: any authenticated caller, not audited
    f"{HEALTH}/Check": Rule(_g("any"), audit=False),
    f"{HEALTH}/Watch": Rule(_g("any"), audit=False),
    f"{REFLECTION}/ServerReflectionInfo": Rule(_g("operator", "service"), audit=False),
}
"""method (``<package.Service>/<Method>``) -> who may call it. Anything not here is denied."""


def short(method: str) -> str:
    """``/x0tta6bl4.v1.Keyvault/Rotate`` -> ``x0tta6bl4.v1.Keyvault/Rotate``."""
    return method.lstrip("/")


@dataclass
class PolicyEngine:
    """Decides calls from the rules table; ``assignments()`` -> {host: node ids} (read per decision, so a
    host added to the deployment is known at once)."""

    trust_domain: str
    assignments: Callable[[], Mapping[str, Iterable[str]]] = field(default=lambda: {})
    rules: Mapping[str, Rule] = field(default_factory=lambda: RULES)

    def decide(self, caller: str, method: str, request: Any = None) -> Decision:
        m = short(method)
        rule = self.rules.get(m)
        try:
            p = parse_principal(caller, self.trust_domain)
        except PolicyError as e:
            return Decision(False, str(e), m, caller or "-")
        if rule is None:
            return Decision(False, f"no policy rule for {m}: denied by default", m, caller)
        grants = [g for g in rule.grants if g.matches(p)]
        if not grants:
            return Decision(False, f"{p.label} may not call {m.rsplit('/', 1)[-1]} ({rule.doc or 'not granted'})",
                            m, caller, rule.audit)
        if any(g.scope == ALL for g in grants):
            return Decision(True, f"{p.label}: granted", m, caller, rule.audit, rule.sampled)
        try:
            targets = rule.targets(request) if request is not None else ()
        except (AttributeError, TypeError):
            return Decision(False, f"{m}: the request does not say what it acts on", m, caller, rule.audit)
        ok, why = self._own(p, targets, rule.identity_targets)
        return Decision(ok, why if ok else f"{m.rsplit('/', 1)[-1]}: {why}", m, caller, rule.audit,
                        rule.sampled and ok)

    def _own(self, p: Principal, targets: tuple[str, ...] | None, identities: bool) -> tuple[bool, str]:
        if targets is None:
            return False, f"{p.label} may act only for its own nodes, not for all nodes"
        if identities:
            others = sorted({t for t in targets if t != p.spiffe_id})
            if p.kind == "host":
                return False, f"{p.label} acts for nodes, not as a ledger identity"
            if others:
                return False, f"{p.label} may act only as {p.spiffe_id}, not as {', '.join(others)[:200]}"
            return True, f"{p.label}: acts as itself"
        if not targets:
            return False, f"{p.label}: the request names no node"
        if p.kind == "node":
            others = sorted({t for t in targets if t != p.name})
            if others:
                return False, f"{p.label} reads only its own records; not {', '.join(others)[:200]}"
            return True, f"{p.label}: its own records"
        if p.kind == "host":
            mine = set(self.assignments().get(p.name, ()))
            others = sorted({t for t in targets if t not in mine})
            if others:
                have = ", ".join(sorted(mine))[:200] or "no nodes"
                return False, f"{p.label} may act only for its nodes ({have}); not {', '.join(others)[:200]}"
            return True, f"{p.label}: its assigned nodes"
        return False, f"{p.label}: no own-scope for this kind"


ZeroTrustValidator = PolicyEngine
"""The seed's name for the same engine."""


class AuditSampler:
    """Which decisions go to the audit trail: every denial and every allowed write; allowed sampled calls
    (reads, votes) up to ``reads_per_s`` per (caller, method) each second, the ones left out counted in the
    next one audited (``suppressed``). Thread-safe."""

    def __init__(self, reads_per_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.reads_per_s, self.clock = reads_per_s, clock
        self._windows: dict[tuple[str, str], tuple[float, int, int]] = {}   # key -> (window start, audited, skipped)
        self._lock = threading.Lock()

    def admit(self, d: Decision) -> tuple[bool, int]:
        """(audit this one?, how many were left out before it)."""
        if not d.audit:
            return False, 0
        if not d.allowed or not d.sampled:
            return True, 0
        key, now = (d.caller, d.method), self.clock()
        with self._lock:
            start, n, skipped = self._windows.get(key, (now, 0, 0))
            if now - start >= 1.0:
                start, n = now, 0
            if n < self.reads_per_s:
                self._windows[key] = (start, n + 1, 0)
                if len(self._windows) > 10_000:          # many callers: forget the oldest windows
                    for k in sorted(self._windows, key=lambda k: self._windows[k][0])[:5_000]:
                        del self._windows[k]
                return True, skipped
            self._windows[key] = (start, n, skipped + 1)
            return False, 0
