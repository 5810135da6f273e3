"""Planner service: settings and composition root (the stage: :mod:`x0tta6bl4.stages.planner`)."""
from __future__ import annotations

import functools
from collections.abc import Mapping

from pydantic import Field

from x0tta6bl4.bus.app import Service, run_service
from x0tta6bl4.config import CommonSettings
from x0tta6bl4.governance.decision import DecisionPolicy
from x0tta6bl4.stages import planner as stage
from x0tta6bl4.v1 import events_pb2


class PlannerSettings(CommonSettings):
    emergency_vote_s: float = Field(300.0, gt=0, le=7 * 86400)
    standard_vote_s: float = Field(3600.0, gt=0, le=7 * 86400)
    action_timeout_s: float = Field(30.0, gt=0, le=3600)
    approval_ttl_s: float = Field(300.0, gt=0, le=86400, description=(
        "an auto-approved action's signed approval is valid for action_timeout_s plus this long"))
    reinstate_after_s: float = Field(10.0, ge=0, le=86400, description=(
        "a node routed around is reinstated after it has been reachable and healthy this long (0: never)"))
    reinstate_tick_s: float = Field(1.0, gt=0, le=60)


def deps(settings: PlannerSettings, telemetry: Mapping[str, events_pb2.NodeTelemetry],
         health: Mapping[str, bytes] | None = None) -> stage.PlannerDeps:
    return stage.PlannerDeps(
        policy=DecisionPolicy(emergency_vote_duration_s=settings.emergency_vote_s,
                              standard_vote_duration_s=settings.standard_vote_s),
        thresholds=settings.threshold_table(), telemetry=telemetry, signer=settings.signer("planner"),
        action_timeout_s=settings.action_timeout_s, approval_ttl_s=settings.approval_ttl_s,
        reinstate_after_s=settings.reinstate_after_s, reinstate_tick_s=settings.reinstate_tick_s,
        health=health if health is not None else {})


def build(settings: PlannerSettings) -> Service:
    app = Service("planner", settings)
    d = deps(settings, app.mirror("telemetry", events_pb2.NodeTelemetry.FromString), app.mirror("health"))

    @app.background
    async def reinstate_healthy_nodes() -> None:
        await stage.reinstate_loop(app.context(), d)

    app.subscribe("planner", events_pb2.Anomaly, functools.partial(stage.on_anomaly, deps=d))
    app.subscribe("planner-knowledge", events_pb2.Verification, functools.partial(stage.on_verified, deps=d))
    return app


def main() -> None:
    run_service("planner", PlannerSettings, build)


if __name__ == "__main__":
    main()
