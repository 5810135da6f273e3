"""Analyze stage: telemetry windows -> anomalies with a root cause.

The learned detector (GraphSAGE, shipped weights, :func:`x0tta6bl4.analysis.load_detector`) runs on
a rolling per-node history of the windows, merged with the threshold rules
(:class:`~x0tta6bl4.mapek.analyze.HybridAnalyzer`: hard facts such as an unreachable node win). If the
model cannot load, the threshold rules alone are used. Both classify with the deployment's one
threshold table (``settings.threshold_table()``).

The history is a cache of the MAPEK stream: the service follows every ``mapek.telemetry`` window (an
ordered consumer in the composition root feeds :func:`remember`), so each replica holds the same
history and the detector's input for a window -- the windows stored before it -- does not depend on
which replica handles it. The handler waits up to ``history_wait_s`` for the follower to reach its
window, then adds the window itself (the pipeline never blocks on the cache).

Bad telemetry never crashes the analyzer: a node with impossible values (negative, out of range, no
id, link to itself) is left out of the analysis and audited (``telemetry.rejected``); a window whose
trigger node is bad or unknown, or with no valid node, is dead-lettered with the reason. NaN/inf are
dead-lettered by the bus codec on decode.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from x0tta6bl4.analysis.live import LIVE_STEPS, History, to_window
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import InvalidMessage, decode
from x0tta6bl4.bus.ports import Context, Reject
from x0tta6bl4.mapek.analyze import HybridAnalyzer, RuleAnalyzer, common_mode, relevant
from x0tta6bl4.monitoring.thresholds import Thresholds
from x0tta6bl4.v1 import events_pb2

log = logging.getLogger("x0tta6bl4.analyzer")


@dataclass
class AnalyzerDeps:
    """What the analyze stage needs: the threshold rules, the learned detector (None: rules only) and
    the history cache, with the clock the cache wait uses."""
    thresholds: Thresholds
    detector: Any | None = None              # x0tta6bl4.analysis GraphSAGE detector (``detect(window)``)
    history: History = field(default_factory=History)
    history_wait_s: float = 1.0
    history_poll_s: float = 0.01
    followed: int = 0                        # windows the follower (the stream) has delivered so far
    stalled_at: int | None = None            # ``followed`` when the follower was last found behind
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rules: RuleAnalyzer = field(init=False)
    hybrid: HybridAnalyzer = field(init=False)

    def __post_init__(self) -> None:
        self.rules = RuleAnalyzer(thresholds=self.thresholds)
        self.hybrid = HybridAnalyzer(rules=self.rules)


def learned_detector(use_model: bool, weights_path: str = "") -> tuple[Any | None, str]:
    """The GraphSAGE detector (None when not in use) and, when None, why."""
    if not use_model:
        return None, "disabled by configuration"
    from x0tta6bl4.analysis import load_detector
    detector = load_detector(weights_path or None)
    if detector.name != "graphsage":
        return None, "model could not load"
    import torch
    # one intra-op thread: a 1,000-node window is ~20 ms on one core, while two spinning OpenMP
    # threads on a busy 2-core host take seconds (measured)
    torch.set_num_threads(1)
    return detector, ""


def remember(deps: AnalyzerDeps, data: bytes) -> None:
    """Add one ``mapek.telemetry`` message (raw bytes from the stream) to the history; an invalid one
    is skipped here (the analyzer's consumer dead-letters it)."""
    deps.followed += 1
    try:
        w = decode(events_pb2.TelemetryWindow, data)
    except InvalidMessage:
        return
    deps.history.add(w.meta.event_id, w.nodes)


async def cached(key: str, window: events_pb2.TelemetryWindow, deps: AnalyzerDeps) -> None:
    """Wait (at most ``history_wait_s``) for the follower to store the window; then store it ourselves.
    A follower found behind that has delivered nothing since is not waited for again (its consumer may be
    re-created after a broker restart, ~10 s: waiting a second on every window would put the whole loop
    that far behind)."""
    if deps.stalled_at is not None and deps.followed == deps.stalled_at:
        wait = 0.0
    else:
        deps.stalled_at, wait = None, deps.history_wait_s
    deadline = deps.monotonic() + wait
    while key not in deps.history and deps.monotonic() < deadline:
        await deps.sleep(deps.history_poll_s)
    if key not in deps.history:  # the follower lags: never block the pipeline
        deps.stalled_at = deps.followed
        deps.history.add(key, window.nodes)


async def on_window(window: events_pb2.TelemetryWindow, ctx: Context, deps: AnalyzerDeps) -> None:
    """One telemetry window: validate its nodes, find the incidents, publish those involving the trigger."""
    key = window.meta.event_id
    history = deps.history
    await cached(key, window, deps)
    rejected = history.rejected.get(key, {})
    trigger = window.trigger_node
    if trigger and trigger in rejected:
        raise Reject(f"trigger node telemetry invalid: {rejected[trigger]}")
    if trigger and trigger not in {t.node_id for t in window.nodes}:
        raise Reject(f"trigger node {trigger!r} is unknown: no telemetry for it in the window")
    if not history.snaps[key].samples:
        raise Reject("no valid node telemetry in the window: " + "; ".join(rejected.values()))
    for node, reason in sorted(rejected.items()):
        await ctx.audit("telemetry.rejected", node, {"reason": reason, "window": key})
    clean = events_pb2.TelemetryWindow()
    clean.CopyFrom(window)
    if rejected:
        del clean.nodes[:]
        clean.nodes.extend(t for t in window.nodes if t.node_id and t.node_id not in rejected)
    anomalies = None
    if deps.detector is not None:
        try:
            conv = to_window(history.before(key, LIVE_STEPS - 1), history.snaps[key])
            incidents = deps.detector.detect(conv.window)
            if conv.dropped_links:
                await ctx.audit("telemetry.unknown_neighbour", trigger or "mesh", {
                    "links": ",".join(f"{a}->{b}" for a, b in conv.dropped_links[:20]), "window": key})
            anomalies = deps.hybrid.merge(clean, incidents)
        except Exception as e:  # the model must never take the analyzer down
            log.exception("analyzer: model inference failed; rules for this window")
            await ctx.audit("analyzer.model_failed", key, {"error": f"{type(e).__name__}: {e}"})
    if anomalies is None:
        anomalies = deps.rules.analyze(clean)
    anomalies = common_mode(clean, anomalies, deps.thresholds)
    for a in relevant(window, anomalies):
        await ctx.publish(subjects.MAPEK_ANOMALY, a)     # its id derives from the window and the incident
        await ctx.audit("anomaly.detected", a.incident_id, {
            "root_cause": a.root_cause, "fault": a.fault_type, "confidence": round(a.confidence, 3),
            "detector": a.detector, "affected": ",".join(a.affected_nodes)})
