"""Executor service: settings and composition root (the stage: :mod:`x0tta6bl4.stages.executor`)."""
from __future__ import annotations

import functools
from collections.abc import Mapping

from pydantic import Field

from x0tta6bl4.bus.app import Service, run_service
from x0tta6bl4.config import CommonSettings
from x0tta6bl4.execution import bluegreen_local
from x0tta6bl4.mapek.health import classify_node
from x0tta6bl4.stages import executor as stage
from x0tta6bl4.v1 import events_pb2


class ExecutorSettings(CommonSettings):
    step_timeout_s: float = Field(3.0, gt=0, le=600)
    verify_timeout_s: float = Field(10.0, gt=0, le=600)
    verify_poll_s: float = Field(0.05, gt=0, le=10)
    fresh_telemetry_s: float = Field(0.0, ge=0, le=60, description="only telemetry newer than the action counts")


def deps(settings: ExecutorSettings, telemetry: Mapping[str, events_pb2.NodeTelemetry],
         deploy: stage.Deploy = stage.no_deploy) -> stage.ExecutorDeps:
    return stage.ExecutorDeps(
        telemetry=telemetry, classify=functools.partial(classify_node, thresholds=settings.threshold_table()),
        trust=settings.trust_bundle(), claim_key=stage.claim_key_of(settings.signer("executor")), deploy=deploy,
        step_timeout_s=settings.step_timeout_s, verify_timeout_s=settings.verify_timeout_s,
        verify_poll_s=settings.verify_poll_s, fresh_telemetry_s=settings.fresh_telemetry_s)


def build(settings: ExecutorSettings) -> Service:
    app = Service("executor", settings)

    async def deploy(params: dict[str, str]) -> list:
        """Blue-green deploy needs the broker connection (it starts and watches agent processes)."""
        return await bluegreen_local.deploy(app.nc, params, settings.nats_url, settings.data_dir)

    d = deps(settings, app.mirror("telemetry", events_pb2.NodeTelemetry.FromString), deploy)
    app.subscribe("executor", events_pb2.ActionRequest, functools.partial(stage.on_action, deps=d), concurrency=4)
    return app


def main() -> None:
    run_service("executor", ExecutorSettings, build)


if __name__ == "__main__":
    main()
