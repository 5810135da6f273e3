"""Analyzer: telemetry windows -> anomalies with a root cause."""
from __future__ import annotations

import logging
import sys

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import Context, Service
from x0tta6bl4.config import CommonSettings, ConfigError, load_settings
from x0tta6bl4.mapek.analyze import RuleAnalyzer, relevant
from x0tta6bl4.v1 import events_pb2

log = logging.getLogger("x0tta6bl4.analyzer")


class AnalyzerSettings(CommonSettings):
    pass


def build(settings: AnalyzerSettings) -> Service:
    app = Service("analyzer", settings)
    analyzer = RuleAnalyzer()

    @app.subscriber("analyzer", events_pb2.TelemetryWindow)
    async def on_window(window: events_pb2.TelemetryWindow, ctx: Context) -> None:
        for a in relevant(window, analyzer.analyze(window)):
            await app.publisher.publish(subjects.MAPEK_ANOMALY, a, event_id=a.meta.event_id)
            await ctx.audit("anomaly.detected", a.incident_id, {
                "root_cause": a.root_cause, "fault": a.fault_type, "confidence": f"{a.confidence:.3f}",
                "detector": a.detector, "affected": ",".join(a.affected_nodes)})

    return app


def main() -> None:
    try:
        settings = load_settings(AnalyzerSettings)
    except ConfigError as e:
        print(f"analyzer: config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    build(settings).run()


if __name__ == "__main__":
    main()
