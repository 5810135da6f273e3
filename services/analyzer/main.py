"""Analyzer service: settings and composition root (the stage: :mod:`x0tta6bl4.stages.analyzer`)."""
from __future__ import annotations

import datetime as dt
import functools
import logging

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import Service, run_service
from x0tta6bl4.bus.reader import subscribe_since
from x0tta6bl4.config import CommonSettings
from x0tta6bl4.stages import analyzer as stage
from x0tta6bl4.v1 import events_pb2

log = logging.getLogger("x0tta6bl4.analyzer")


class AnalyzerSettings(CommonSettings):
    use_model: bool = True            # X0TTA6BL4_USE_MODEL=0: the threshold rules only
    weights_path: str = ""            # weights file; "" = the shipped weights
    history_horizon_s: float = 900.0  # how far back the history cache is rebuilt at start
    history_wait_s: float = 1.0       # how long a handler waits for the cache to reach its window


def build(settings: AnalyzerSettings) -> Service:
    app = Service("analyzer", settings)
    detector, why = stage.learned_detector(settings.use_model, settings.weights_path)
    deps = stage.AnalyzerDeps(settings.threshold_table(), detector, history_wait_s=settings.history_wait_s)

    @app.on_startup
    async def announce() -> None:  # after run() has configured logging
        if detector is None:
            log.warning("analyzer: learned detector not in use (%s); using the threshold rules", why)
        else:
            log.info("analyzer: GraphSAGE detector loaded (threshold %.2f), merged with rules",
                     detector.anomaly_threshold)

    @app.background
    async def follow_windows() -> None:
        """Keep the history equal to the stream's recent windows (JetStream is the source of truth)."""
        start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.history_horizon_s)
        sub = await subscribe_since(app.nc.jetstream(), subjects.MAPEK_TELEMETRY, subjects.STREAM_MAPEK, start)
        try:
            async for m in sub.messages:
                stage.remember(deps, m.data)
        finally:
            await sub.unsubscribe()

    app.subscribe("analyzer", events_pb2.TelemetryWindow, functools.partial(stage.on_window, deps=deps))
    return app


def main() -> None:
    run_service("analyzer", AnalyzerSettings, build)


if __name__ == "__main__":
    main()
