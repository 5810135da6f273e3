"""Analyzer: telemetry windows -> anomalies with a root cause.

The learned detector (GraphSAGE, shipped weights, ``x0tta6bl4.analysis.load_detector``) runs on
a rolling per-node history of the windows, merged with the threshold rules
(``x0tta6bl4.mapek.analyze.HybridAnalyzer``: hard facts such as an unreachable node win). If the
model cannot load, the spec's rules alone are used (one log line says so).

The history is a cache of the MAPEK stream: a background ordered consumer reads every
``mapek.telemetry`` window (from ``history_horizon_s`` back at start), so each replica holds the
same history and the detector's input for a window -- the windows stored before it -- does not
depend on which replica handles it.

Bad telemetry never crashes the analyzer: a node with impossible values (negative, out of range,
no id, link to itself) is left out of the analysis and audited (``telemetry.rejected``); a window
whose trigger node is bad or unknown, or with no valid node, is dead-lettered with the reason.
NaN/inf are dead-lettered by the bus codec on decode.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from nats.js.api import ConsumerConfig, DeliverPolicy

from x0tta6bl4.analysis import load_detector
from x0tta6bl4.analysis.live import LIVE_STEPS, History, to_window
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import Context, Reject, Service, run_service
from x0tta6bl4.bus.codec import InvalidMessage, decode
from x0tta6bl4.config import CommonSettings
from x0tta6bl4.mapek.analyze import HybridAnalyzer, RuleAnalyzer, relevant
from x0tta6bl4.v1 import events_pb2

log = logging.getLogger("x0tta6bl4.analyzer")


class AnalyzerSettings(CommonSettings):
    use_model: bool = True            # X0TTA6BL4_USE_MODEL=0: the spec's rules only
    weights_path: str = ""            # weights file; "" = the shipped weights
    history_horizon_s: float = 900.0  # how far back the history cache is rebuilt at start
    history_wait_s: float = 1.0       # how long a handler waits for the cache to reach its window


def build(settings: AnalyzerSettings) -> Service:
    app = Service("analyzer", settings)
    rules = RuleAnalyzer()
    hybrid = HybridAnalyzer()
    why = ""
    detector = load_detector(settings.weights_path or None) if settings.use_model else None
    if detector is not None and detector.name == "graphsage":
        import torch
        # one intra-op thread: a 1,000-node window is ~20 ms on one core, while two spinning
        # OpenMP threads on a busy 2-core host take seconds (measured)
        torch.set_num_threads(1)
    if detector is None or detector.name != "graphsage":
        why = "disabled by configuration" if detector is None else "model could not load"
        detector = None

    @app.on_startup
    async def announce() -> None:  # after run() has configured logging
        if detector is None:
            log.warning("analyzer: learned detector not in use (%s); using the spec's threshold rules", why)
        else:
            log.info("analyzer: GraphSAGE detector loaded (threshold %.2f), merged with rules",
                     detector.anomaly_threshold)

    history = History()

    @app.background
    async def follow_windows() -> None:
        """Keep the history equal to the stream's recent windows (JetStream is the source of truth)."""
        js = app.nc.jetstream()
        start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.history_horizon_s)
        sub = await js.subscribe(subjects.MAPEK_TELEMETRY, ordered_consumer=True,
                                 config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                                       opt_start_time=start))
        try:
            async for m in sub.messages:
                try:
                    w = decode(events_pb2.TelemetryWindow, m.data)
                except InvalidMessage:
                    continue  # the consumer dead-letters it
                history.add(w.meta.event_id, w.nodes)
        finally:
            await sub.unsubscribe()

    async def cached(key: str, window: events_pb2.TelemetryWindow) -> None:
        deadline = time.monotonic() + settings.history_wait_s
        while key not in history and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if key not in history:  # the follower lags: never block the pipeline
            history.add(key, window.nodes)

    def infer(key: str, clean: events_pb2.TelemetryWindow):
        snap = history.snaps[key]
        conv = to_window(history.before(key, LIVE_STEPS - 1), snap)
        return conv, detector.detect(conv.window)

    @app.subscriber("analyzer", events_pb2.TelemetryWindow)
    async def on_window(window: events_pb2.TelemetryWindow, ctx: Context) -> None:
        key = window.meta.event_id
        await cached(key, window)
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
        if detector is not None:
            try:
                conv, incidents = infer(key, clean)
                if conv.dropped_links:
                    await ctx.audit("telemetry.unknown_neighbour", trigger or "mesh", {
                        "links": ",".join(f"{a}->{b}" for a, b in conv.dropped_links[:20]), "window": key})
                anomalies = hybrid.merge(clean, incidents)
            except Exception as e:  # the model must never take the analyzer down
                log.exception("analyzer: model inference failed; rules for this window")
                await ctx.audit("analyzer.model_failed", key, {"error": f"{type(e).__name__}: {e}"})
        if anomalies is None:
            anomalies = rules.analyze(clean)
        for a in relevant(window, anomalies):
            await app.publisher.publish(subjects.MAPEK_ANOMALY, a, event_id=a.meta.event_id)
            await ctx.audit("anomaly.detected", a.incident_id, {
                "root_cause": a.root_cause, "fault": a.fault_type, "confidence": f"{a.confidence:.3f}",
                "detector": a.detector, "affected": ",".join(a.affected_nodes)})

    return app


def main() -> None:
    run_service("analyzer", AnalyzerSettings, build)


if __name__ == "__main__":
    main()
