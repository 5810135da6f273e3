"""Analyze: a TelemetryWindow -> Anomaly events with a root cause (no I/O).

``RuleAnalyzer`` applies the spec's threshold table to the latest telemetry of
every node and finds the root cause the way an operator would: an unreachable
node is the cause of its neighbours' symptoms; a node with proven authentication
failures (``failed_auth``: its revoked key still signing, or its key used under
another id -- never packets that merely claim to come from it) is a compromised
node; otherwise the worst node of each connected
group of symptomatic nodes is the source. ``x0tta6bl4.analysis`` provides the
learned detector (GraphSAGE) behind the same ``analyze(window)`` call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from x0tta6bl4.ids import derive_id, new_meta
from x0tta6bl4.mapek.health import as_field_table, classify_node, link_clearly_bad
from x0tta6bl4.monitoring.thresholds import Thresholds
from x0tta6bl4.v1 import common_pb2, events_pb2

METRIC_FAULT = {
    "p99_latency_ms": "congestion",
    "loss_pct": "degrading_link",
    "cpu_pct": "cpu_overload",
    "mem_pct": "memory_leak",
}


class Analyzer(Protocol):
    name: str

    def analyze(self, window: events_pb2.TelemetryWindow) -> list[events_pb2.Anomaly]: ...


def relevant(window: events_pb2.TelemetryWindow, anomalies: list[events_pb2.Anomaly]) -> list[events_pb2.Anomaly]:
    """A cycle started by one node's change reports the incidents that involve that node;
    a periodic window (no trigger) reports all of them."""
    if not window.trigger_node:
        return anomalies
    t = window.trigger_node
    return [a for a in anomalies if t == a.root_cause or t == a.node_id or t in a.affected_nodes]


def _exceedance(t: events_pb2.NodeTelemetry, th: Thresholds | None = None) -> tuple[float, str]:
    """Summed normalised exceedance over the warning thresholds, and the worst metric."""
    total, worst, worst_v = 0.0, "", 0.0
    for metric, (warn, crit) in as_field_table(th).items():
        v = max(getattr(t, metric) - warn, 0.0) / (crit - warn)
        total += v
        if v > worst_v:
            worst, worst_v = metric, v
    return total, worst


END_TO_END = ("loss_pct", "p99_latency_ms")


def _warnings(th: Thresholds | None) -> tuple[float, float]:
    table = as_field_table(th)
    return table["loss_pct"][0], table["p99_latency_ms"][0]


def _links_clean(t: events_pb2.NodeTelemetry, th: Thresholds | None = None) -> bool:
    """The node's own links (measured from HELLO beacons) are within the healthy range."""
    loss_warn, lat_warn = _warnings(th)
    return all(100.0 * q.loss_rate < loss_warn and q.latency_ms < lat_warn for q in t.links)


def _degraded_links_node(nodes: dict[str, events_pb2.NodeTelemetry], exclude: set[str],
                         th: Thresholds | None = None) -> tuple[str, list[str]] | None:
    """The node whose own links (as measured by HELLO beacons from both ends) are all clearly degraded:
    slow (latency at the warning line) or lossy above the critical line; the worst one when there are
    several. Inferred from links alone, so the loss bar is the critical one: one HELLO lost in a window of
    64 is 1.6 %, over the warning line, and a node whose fault ended keeps such a trace on every link for
    a while - it was blamed for the next incident elsewhere (a false action of the loss scenario)."""
    loss_warn, lat_warn = as_field_table(th)["loss_pct"][1], _warnings(th)[1]
    best = None
    for n, t in nodes.items():
        if n in exclude or not t.reachable or not t.links:
            continue
        lat = min(q.latency_ms for q in t.links)
        loss = min(100.0 * q.loss_rate for q in t.links)
        if lat >= lat_warn or loss > loss_warn:
            severity = max(lat / lat_warn, loss / loss_warn)
            why = [f"every link of {n} degraded: latency >= {lat:.1f} ms, loss >= {loss:.2f}%"]
            if best is None or severity > best[0]:
                best = (severity, n, why)
    return (best[1], best[2]) if best else None


def _bad_link_hub(nodes: dict[str, events_pb2.NodeTelemetry], exclude: set[str],
                  th: Thresholds | None = None) -> tuple[str, list[str], float, float] | None:
    """The node at the centre of the degraded links: every link reported out of the healthy range (by
    either end) is a pair; the node in the most such pairs, at least two, and in more than any other node,
    is where they meet - the slow, lossy or congested node, not its neighbours (each of which shares only
    its one link with it). Returns (node, why, its bad links' mean latency, mean loss %) or None."""
    bad: dict[frozenset[str], list[events_pb2.LinkQuality]] = {}
    for n, t in nodes.items():
        if not t.reachable:
            continue
        for q in t.links:
            if q.peer != n and link_clearly_bad(q, th):
                bad.setdefault(frozenset((n, q.peer)), []).append(q)
    count: dict[str, int] = {}
    for pair in bad:
        for n in pair:
            count[n] = count.get(n, 0) + 1
    ranked = sorted(((c, n) for n, c in count.items() if n in nodes and n not in exclude
                     and nodes[n].reachable), reverse=True)
    if not ranked or ranked[0][0] < 2 or (len(ranked) > 1 and ranked[1][0] == ranked[0][0]):
        return None
    c, hub = ranked[0]
    qs = [q for pair, ql in bad.items() if hub in pair for q in ql]
    lat = sum(q.latency_ms for q in qs) / len(qs)
    loss = 100.0 * sum(q.loss_rate for q in qs) / len(qs)
    peers = sorted(n for pair in bad if hub in pair for n in pair - {hub})
    return hub, [f"{c} degraded links meet at {hub} ({', '.join(peers)}): latency {lat:.1f} ms, "
                 f"loss {loss:.2f}% on average"], lat, loss


def _bad_peers(n: str, nodes: dict[str, events_pb2.NodeTelemetry], th: Thresholds | None = None) -> set[str]:
    """The peers whose link with ``n`` either end reports out of the healthy range."""
    out = {q.peer for q in nodes[n].links if q.peer != n and link_clearly_bad(q, th)}
    out |= {o for o, t in nodes.items() if o != n and t.reachable and any(q.peer == n and link_clearly_bad(q, th)
                                                                          for q in t.links)}
    return out


def _link_source(n: str, nodes: dict[str, events_pb2.NodeTelemetry], exclude: set[str],
                 th: Thresholds | None = None) -> tuple[str, list[str]] | None:
    """When ``n``'s trouble is on its links to a neighbour that is in trouble on its other links too, that
    neighbour: ``n`` has a clean link besides its bad ones, and the neighbour has at least two bad links and more
    than ``n``. A lossy node's neighbours each share one bad link with it and see the loss; blaming them
    (instead of the node their bad links meet at) was the loss scenario's false action. The worst such
    neighbour when there are several; None when the links say nothing more."""
    bad = _bad_peers(n, nodes, th)
    peers = {q.peer for q in nodes[n].links} | bad
    if not bad or len(peers) <= len(bad):
        return None
    ranked = sorted(((len(pb), p) for p in bad if p in nodes and p not in exclude and nodes[p].reachable
                     and len(pb := _bad_peers(p, nodes, th)) >= 2 and len(pb) > len(bad)), reverse=True)
    if not ranked:
        return None
    c, p = ranked[0]
    return p, [f"{n}'s degraded link{'s' if len(bad) > 1 else ''} lead{'' if len(bad) > 1 else 's'} to {p}, "
               f"which has {c} degraded links; {n}'s other links are clean"]


def _links_only(n: str, nodes: dict[str, events_pb2.NodeTelemetry], th: Thresholds | None,
                reasons: list[str]) -> tuple[str, float, bool, list[str]]:
    """A node whose only trouble is that every link of it is clearly degraded as it measures them: (fault,
    confidence, critical, reasons). Its neighbours' measurements corroborate it when every neighbour that
    reports a link to it sees that link degraded too (then the node is the common end: it is the source);
    at the critical line (latency at the p99 critical line, or loss above the critical line on every link) that
    is an automatic action (0.95, critical), below it a vote (0.7); not corroborated, it is observed (0.5)."""
    t = nodes[n]
    table = as_field_table(th)
    seen_by = [q for o, ot in nodes.items() if o != n and ot.reachable for q in ot.links if q.peer == n]
    corroborated = bool(seen_by) and all(link_clearly_bad(q, th) for q in seen_by)
    qs = [*t.links, *seen_by]
    lat = min(q.latency_ms for q in qs)
    loss = min(100.0 * q.loss_rate for q in qs)
    fault = "congestion" if lat >= table["p99_latency_ms"][0] else "degrading_link"
    severe = lat > table["p99_latency_ms"][1] or loss > table["loss_pct"][1]
    confidence = (0.95 if severe else 0.7) if corroborated else 0.5
    why = [*reasons, f"seen from {len(seen_by)} neighbour(s): "
                     + ("every one measures its link to it degraded too" if corroborated else "not all agree")]
    return fault, confidence, corroborated and severe, why


FLAP_AGE_S = 3.0
"""A link re-established this recently after an outage (it kept its loss history: ``loss_rate`` > 0;
a restarted node's links start clean) is evidence of a flap."""


def _reborn(q: events_pb2.LinkQuality) -> bool:
    return q.link_age_s < FLAP_AGE_S and q.loss_rate > 0.0


def _flapping(nodes: dict[str, events_pb2.NodeTelemetry], exclude: set[str]) -> list[tuple[str, list[str]]]:
    """Nodes whose links all went down and came back together, seen from both sides: two or more of
    its neighbours report their link to it re-established after an outage within ``FLAP_AGE_S``, and
    its own links are all such (or it has none at the moment: down again)."""
    out = []
    for n, t in nodes.items():
        if n in exclude or not t.reachable:
            continue
        seen = [(o, q) for o, ot in nodes.items() if o != n and ot.reachable for q in ot.links if q.peer == n]
        reborn = sorted(o for o, q in seen if _reborn(q))
        own = list(t.links)
        if len(reborn) >= 2 and len(reborn) == len(seen) and all(_reborn(q) for q in own):
            ages = ", ".join(f"{q.peer} {q.link_age_s:.1f} s" for q in own) or "none up"
            out.append((n, [f"links of {n} re-established after outages by {', '.join(reborn)}; "
                            f"its own: {ages}"]))
    return out


def _only_end_to_end(t: events_pb2.NodeTelemetry, th: Thresholds | None = None) -> bool:
    _, reasons = classify_node(t, th)
    return bool(reasons) and all(r.startswith(END_TO_END) for r in reasons) and _links_clean(t, th)


def anomaly(window: events_pb2.TelemetryWindow, node: str, root: str, fault: str, score: float,
            confidence: float, severity: common_pb2.Severity, features: list[str], affected: list[str],
            detector: str, symptom_since_ns: int = 0) -> events_pb2.Anomaly:
    """``symptom_since_ns``: when the evidence itself dates from (e.g. the time a node was marked
    unreachable); the first symptom is the earlier of that and the window's."""
    incident = f"{root}.{fault}"
    first = window.first_symptom_unix_ns or window.meta.ts_unix_ns
    if symptom_since_ns > 0:
        first = min(first, symptom_since_ns) if first else symptom_since_ns
    return events_pb2.Anomaly(
        meta=new_meta("analyzer", window.meta.cycle_id, event_id=derive_id("anomaly", window.meta.event_id, incident)),
        node_id=node, root_cause=root, fault_type=fault, anomaly_score=score, confidence=confidence,
        severity=severity, top_features=features, affected_nodes=affected, detector=detector,
        first_symptom_unix_ns=first, incident_id=incident)


@dataclass
class RuleAnalyzer:
    """The spec's threshold rules on one window (``thresholds``: the deployment's table; None: the spec's)."""
    name: str = "rules"
    thresholds: Thresholds | None = None

    def analyze(self, window: events_pb2.TelemetryWindow) -> list[events_pb2.Anomaly]:
        nodes = {t.node_id: t for t in window.nodes}
        th = self.thresholds
        out: list[events_pb2.Anomaly] = []
        explained: set[str] = set()
        # 1. unreachable nodes are the root cause of their neighbours' trouble
        for t in window.nodes:
            if not t.reachable:
                # its neighbours: those still listing it, and those it listed in its last report (they
                # may have dropped it from their tables already)
                victims = sorted({n for n, o in nodes.items() if t.node_id in o.neighbours}
                                 | {n for n in t.neighbours if n in nodes} - {t.node_id})
                # the mark's time is when the node was declared lost: a window opened later (by another
                # node) still dates this symptom from then, so a repaired incident is not re-opened
                out.append(anomaly(window, t.node_id, t.node_id, "node_down", 1.0, 0.95,
                                   common_pb2.SEVERITY_CRITICAL, ["reachable=false"], victims, self.name,
                                   symptom_since_ns=t.meta.ts_unix_ns))
                explained |= {t.node_id, *victims}
        # 1b. a node every other reachable node routes around has an action in force (or an operator's): its
        # trouble is being handled, and planning another action against it would be a second one
        reporters = [t for t in window.nodes if t.reachable]
        for t in reporters:
            others = [o for o in reporters if o.node_id != t.node_id]
            if others and all(t.node_id in o.avoided for o in others):
                explained.add(t.node_id)
        if any(not t.reachable for t in window.nodes):
            # while a node is down, end-to-end loss/latency anywhere is its doing (routes through it broke)
            explained |= {n for n, t in nodes.items() if t.reachable and _only_end_to_end(t, th)}
        # 2. failed authentication -> compromised node. failed_auth is evidence about the node itself (set
        # from verified, fresh signatures its neighbours refused); the packets a node refused
        # (rejected_packets: replayed, unsigned, bad signature, ...) prove nothing about anyone: anybody can
        # forge a sender id or replay a capture, so they never make the receiver or the claimed sender
        # "compromised"
        for t in window.nodes:
            if t.failed_auth and t.node_id not in explained:
                out.append(anomaly(window, t.node_id, t.node_id, "compromised", 0.9, 0.85,
                                   common_pb2.SEVERITY_HIGH, [f"failed_auth={t.failed_auth}"], [], self.name))
                explained.add(t.node_id)
        # 3. flapping: a node whose links all went down and came back together (both ends saw it)
        for n, why in _flapping(nodes, explained):
            victims = sorted({o for o, ot in nodes.items() if n in ot.neighbours or any(
                q.peer == n for q in ot.links)} - {n})
            out.append(anomaly(window, n, n, "flapping", 0.9, 0.95, common_pb2.SEVERITY_HIGH, why, victims,
                               self.name))
            explained |= {n, *victims}
        # 4. threshold symptoms grouped by adjacency; the worst node of a group is its source, unless the
        # degraded links of the mesh meet at one node (then that node is: its neighbours only share a link
        # with it)
        hub = _bad_link_hub(nodes, explained, th)
        health = {n: classify_node(t, th) for n, t in nodes.items() if n not in explained and t.reachable}
        sick = {n: h for n, h in health.items() if h[0] != common_pb2.HEALTH_HEALTHY}
        seen: set[str] = set()
        for start in sorted(sick):
            if start in seen:
                continue
            group, stack = [], [start]
            while stack:
                n = stack.pop()
                if n in seen:
                    continue
                seen.add(n)
                group.append(n)
                stack.extend(p for p in nodes[n].neighbours if p in sick and p not in seen)
            root = max(group, key=lambda n: (_exceedance(nodes[n], th)[0], n))
            level, reasons = sick[root]
            score, metric = _exceedance(nodes[root], th)
            critical = level == common_pb2.HEALTH_CRITICAL
            fault = METRIC_FAULT.get(metric, "degraded")
            confidence = 0.95 if critical else 0.7
            victims = sorted(set(group) - {root})
            node = root
            if not metric and reasons and all(r.startswith("links_degraded=") for r in reasons):
                # the root is a warning for its links alone (every one clearly degraded as it measures them)
                fault, confidence, critical, reasons = _links_only(root, nodes, th, reasons)
                victims = sorted(set(group) - {root})
                if any(a.incident_id == f"{root}.{fault}" for a in out):
                    continue
                out.append(anomaly(window, root, root, fault, 0.5 + confidence / 2, confidence,
                                   common_pb2.SEVERITY_CRITICAL if critical else common_pb2.SEVERITY_MEDIUM,
                                   reasons, victims, self.name))
                continue
            near = hub is not None and (hub[0] in group or any(hub[0] in nodes[n].neighbours or any(
                q.peer == hub[0] for q in nodes[n].links) for n in group))
            if hub is not None and near and hub[0] != root and metric in END_TO_END:
                # the group's end-to-end symptoms run through the node where the degraded links meet
                bad, why, lat, _loss = hub
                fault = "congestion" if lat >= _warnings(th)[1] else "degrading_link"   # queueing delay
                confidence = 0.95 if bad in sick else 0.7
                victims = sorted(set(group) - {bad})
                root, reasons = bad, [*why, f"seen end to end by {', '.join(sorted(group))}"]
            elif metric in END_TO_END and (src := _link_source(root, nodes, explained, th)) is not None:
                # the root's trouble is its link(s) to a neighbour in trouble on its other links too
                bad, why = src
                fault = "congestion" if metric == "p99_latency_ms" else "degrading_link"
                confidence = 0.95 if bad in sick else 0.7
                victims = sorted(set(group) - {bad})
                root, reasons = bad, [*why, f"seen by {', '.join(sorted(group))}"]
            elif metric in END_TO_END and (far_set := _bad_peers(root, nodes, th)) and len(far_set) < len(
                    {q.peer for q in nodes[root].links} | far_set):
                # some of the root's links are degraded, the others clean, and nothing shows the trouble at the
                # other end of the bad ones: either end may be at fault (a lossy node's neighbour sees its one
                # bad link before the node's other neighbours do). Observe until the evidence points at a node.
                far = sorted(far_set)
                fault, confidence = METRIC_FAULT.get(metric, "degraded"), 0.5
                reasons = [*reasons, f"only its link{'s' if len(far) > 1 else ''} to {', '.join(far)} degraded: "
                                     "either end may be at fault"]
            elif metric in END_TO_END and not critical and not nodes[root].flows and not _links_clean(nodes[root], th):
                # a node that sends no DATA of its own reports the loss and latency of its links: in the warning
                # band, with none of them clearly degraded, that is too little to act on (a congested node's
                # neighbour losing 1-2 % of its HELLOs was rerouted by a vote). Observe.
                fault, confidence = METRIC_FAULT.get(metric, "degraded"), 0.5
                reasons = [*reasons, "its links lose or delay a little, none clearly degraded: observed"]
            elif metric in END_TO_END and _links_clean(nodes[root], th):
                # end-to-end loss/latency seen by a node whose own links are clean: the trouble is
                # further along the path. A node whose own links are all degraded is the source;
                # without one, observe until a node-level cause shows up.
                culprit = _degraded_links_node(nodes, explained, th)
                if culprit is None:
                    fault, confidence = "path_degraded", 0.5
                    reasons = [*reasons, "own links clean"]
                else:
                    bad, why = culprit
                    fault = "congestion" if metric == "p99_latency_ms" else "degrading_link"
                    confidence = 0.7  # inferred from links, not measured at the node: a person decides
                    victims = sorted(set(group))
                    root, reasons = bad, [*why, f"seen end to end by {', '.join(victims)}"]
            same = next((a for a in out if a.incident_id == f"{root}.{fault}"), None)
            if same is not None:        # another group whose symptoms lead to the same node: one incident
                same.affected_nodes[:] = sorted({*same.affected_nodes, *victims} - {root})
                continue
            out.append(anomaly(window, node, root, fault, min(1.0, 0.5 + score / 2), confidence,
                               common_pb2.SEVERITY_CRITICAL if critical and confidence > 0.9 else
                               common_pb2.SEVERITY_MEDIUM, reasons, victims, self.name))
        # 5. a node whose every link is clearly degraded (slow, or lossy above the critical line, as either end
        # measures it) while nothing suffers end to end: routing already carries the traffic around it. Said,
        # observed (an operator sees it), never acted on: there is nothing to repair that routing has not.
        blamed = {a.root_cause for a in out}
        lat_warn = _warnings(th)[1]
        for n, t in sorted(nodes.items()):
            if n in explained or n in blamed or not t.reachable:
                continue
            slow_peers = _bad_peers(n, nodes, th)
            peers = {q.peer for q in t.links} | slow_peers
            if len(peers) < 2 or slow_peers != peers:
                continue
            qs = [q for q in t.links if q.peer in slow_peers]
            qs += [q for o in slow_peers if o in nodes for q in nodes[o].links if q.peer == n]
            lat = sum(q.latency_ms for q in qs) / len(qs)
            loss = 100.0 * sum(q.loss_rate for q in qs) / len(qs)
            fault = "congestion" if lat >= lat_warn else "degrading_link"
            out.append(anomaly(window, n, n, fault, 0.5, 0.5, common_pb2.SEVERITY_LOW,
                               [f"every link of {n} degraded ({', '.join(sorted(slow_peers))}): latency {lat:.1f} ms, "
                                f"loss {loss:.2f}% on average", "nothing suffers end to end: routing carries the "
                                "traffic around it; observed"], sorted(slow_peers), self.name))
        return out


# ---------------------------------------------------------------------------------------------
# Learned detector + rules
# ---------------------------------------------------------------------------------------------
HARD_FACTS = ("node_down", "compromised")
"""Rule findings that are facts (the monitor declared the node lost; the node's own key signed what
it must not): they keep their root cause and fault type whatever the model says."""

SEVERITY_BY_FAULT: dict[str, common_pb2.Severity] = {
    "node_down": common_pb2.SEVERITY_CRITICAL,      # routes through it are broken now
    "compromised": common_pb2.SEVERITY_CRITICAL,
    "flapping": common_pb2.SEVERITY_HIGH,
    "degrading_link": common_pb2.SEVERITY_HIGH,
    "memory_leak": common_pb2.SEVERITY_HIGH,        # ends in a crash
    "congestion": common_pb2.SEVERITY_MEDIUM,
    "cpu_overload": common_pb2.SEVERITY_MEDIUM,
}
MODEL_ONLY_MAX_CONFIDENCE = 0.9
"""A model finding no rule corroborates goes to a vote at most (the planner auto-executes only
above 0.9): the model's calibration was measured on twin data, not on live incidents."""
OBSERVE_BELOW = 0.6


def model_severity(fault: str, confidence: float) -> common_pb2.Severity:
    """Severity of a model finding: by fault type; below the planner's vote threshold it is low."""
    if confidence < OBSERVE_BELOW:
        return common_pb2.SEVERITY_LOW
    return SEVERITY_BY_FAULT.get(fault, common_pb2.SEVERITY_MEDIUM)


def _features(inc) -> list[str]:
    return [f"{name} ({w:+.2f})" for name, w in inc.top_features]


@dataclass
class HybridAnalyzer:
    """GraphSAGE incidents merged with the rule findings on the same window.

    * A rule hard fact (unreachable -> node_down with its neighbours as victims; failed
      authentication -> compromised) always stands. A model incident that involves the same nodes
      is folded into it: detector ``rules+graphsage`` when the model names the same root cause
      (confidence = the higher of the two), ``rules`` otherwise.
    * A rule threshold finding and a model incident that share nodes are one incident. Same root:
      ``rules+graphsage``, confidence = max. Different roots: the model's root cause wins when the
      model is confident (>= 0.9, its measured root-cause accuracy is 0.91 against the rules' 0.40
      on held-out twin data), as a vote (confidence capped at 0.9); else the rule finding stands.
    * A model incident with no rule finding: detector ``graphsage``, confidence = calibrated
      probability capped at 0.9 (vote), severity by fault type (:data:`SEVERITY_BY_FAULT`).

    ``incidents`` are :class:`x0tta6bl4.analysis.types.Incident` from ``detector.detect``.
    """
    rules: RuleAnalyzer = field(default_factory=RuleAnalyzer)
    name: str = "graphsage"

    def merge(self, window: events_pb2.TelemetryWindow, incidents: list) -> list[events_pb2.Anomaly]:
        found = self.rules.analyze(window)
        model = [i for i in incidents if i.fault_type != "normal"]
        used: set[int] = set()
        out: list[events_pb2.Anomaly] = []
        order = sorted(range(len(found)), key=lambda k: found[k].fault_type not in HARD_FACTS)
        for k in order:
            a = found[k]
            involved = {a.root_cause, a.node_id, *a.affected_nodes}
            match = [j for j, inc in enumerate(model) if j not in used and
                     (inc.root_cause in involved or involved & set(inc.members))]
            if not match:
                out.append(a)
                continue
            used.update(match)
            same = [model[j] for j in match if model[j].root_cause == a.root_cause]
            if same:
                inc = max(same, key=lambda i: i.confidence)
                a.detector = f"{a.detector}+{self.name}"
                a.confidence = max(a.confidence, inc.confidence)
                a.anomaly_score = max(a.anomaly_score, inc.score)
                a.top_features.extend([*_features(inc), f"{self.name}: {inc.fault_type} p={inc.confidence:.3f}"])
                if a.fault_type not in HARD_FACTS and a.confidence > 0.9:
                    a.severity = max(a.severity, model_severity(a.fault_type, a.confidence))
                out.append(a)
                continue
            inc = max((model[j] for j in match), key=lambda i: i.confidence)
            if a.fault_type in HARD_FACTS or inc.confidence < MODEL_ONLY_MAX_CONFIDENCE:
                a.top_features.append(f"{self.name} disagrees: {inc.root_cause} {inc.fault_type} "
                                      f"p={inc.confidence:.3f}")
                out.append(a)
                continue
            affected = sorted((set(inc.members) | involved) - {inc.root_cause})
            conf = min(inc.confidence, MODEL_ONLY_MAX_CONFIDENCE)
            out.append(anomaly(window, inc.root_cause, str(inc.root_cause), inc.fault_type, inc.score, conf,
                               model_severity(inc.fault_type, conf),
                               [*_features(inc), f"rules blamed {a.root_cause} ({a.fault_type})", *a.top_features],
                               affected, self.name))
        for j, inc in enumerate(model):
            if j in used:
                continue
            conf = min(inc.confidence, MODEL_ONLY_MAX_CONFIDENCE)
            out.append(anomaly(window, str(inc.root_cause), str(inc.root_cause), inc.fault_type, inc.score, conf,
                               model_severity(inc.fault_type, conf), _features(inc),
                               sorted(set(map(str, inc.members)) - {str(inc.root_cause)}), self.name))
        seen: set[str] = set()
        unique = []
        for a in out:  # one anomaly per incident
            if a.incident_id not in seen:
                seen.add(a.incident_id)
                unique.append(a)
        return unique


# ---------------------------------------------------------------------------------------------
# Common mode: the whole mesh degraded at once
# ---------------------------------------------------------------------------------------------
COMMON_MODE_SHARE = 0.5
COMMON_MODE_MIN = 4
GRAY_FAULTS = frozenset({"congestion", "degrading_link", "high_latency", "packet_loss", "path_degraded",
                         "degraded", "flapping"})
"""What a common cause (a loaded host, the network under the mesh) shows as; a dead or compromised node is a
fact about that node whatever else happens."""


def common_mode(window: events_pb2.TelemetryWindow, anomalies: list[events_pb2.Anomaly],
                th: Thresholds | None = None) -> list[events_pb2.Anomaly]:
    """Gray findings while half or more of the reachable nodes (at least ``COMMON_MODE_MIN``) are degraded at
    once, and no one node's neighbourhood holds them all, are observed, not acted on: when everything is
    slow no node is the culprit, and routing around one only moves traffic onto others as slow (a busy host
    made the soak reroute seven nodes in one minute). A node whose neighbours suffer with it still is the
    culprit: its neighbourhood holds every degraded node."""
    reachable = [t for t in window.nodes if t.reachable]
    sick = {t.node_id for t in reachable if classify_node(t, th)[0] != common_pb2.HEALTH_HEALTHY}
    if len(sick) < max(COMMON_MODE_MIN, COMMON_MODE_SHARE * len(reachable)):
        return anomalies
    for t in reachable:
        if sick <= {t.node_id, *t.neighbours}:
            return anomalies
    why = (f"{len(sick)} of {len(reachable)} nodes degraded at once with no node in common: a common cause, "
           "not this node; observed")
    for a in anomalies:
        if a.fault_type in GRAY_FAULTS and a.confidence >= OBSERVE_BELOW:
            a.confidence = 0.5
            a.severity = common_pb2.SEVERITY_LOW
            a.top_features.append(why)
    return anomalies
