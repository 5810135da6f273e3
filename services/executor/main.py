"""Executor service: settings and composition root (the stage: :mod:`x0tta6bl4.stages.executor`)."""
from __future__ import annotations

import functools
from collections.abc import Mapping

from pydantic import Field

from x0tta6bl4.bus.app import Service, run_service
from x0tta6bl4.config import CommonSettings
from x0tta6bl4.execution import bluegreen_local
from x0tta6bl4.mapek.health import classify_node
from x0tta6bl4.mapek.verify import History
from x0tta6bl4.stages import executor as stage
from x0tta6bl4.v1 import events_pb2


class ExecutorSettings(CommonSettings):
    step_timeout_s: float = Field(3.0, gt=0, le=600)
    verify_timeout_s: float = Field(10.0, gt=0, le=600)
    verify_poll_s: float = Field(0.05, gt=0, le=10)
    fresh_telemetry_s: float = Field(0.0, ge=0, le=60, description="only telemetry newer than the action counts")
    verify_hold_s: float = Field(1.0, gt=0, le=60, description="a recovery counts once it has held this long")
    min_delivery: float = Field(0.95, gt=0, le=1, description=(
        "share of each flow's delivery before the incident it must deliver again"))
    baseline_window_s: float = Field(5.0, gt=0, le=60, description="the delivery before an incident: over this")
    baseline_gap_s: float = Field(1.0, ge=0, le=60, description="... ending this long before its first symptom")
    harm_after_s: float = Field(2.0, gt=0, le=600, description=(
        "from this long after an action, delivery worse than before it rolls the action back"))
    harm_margin: float = Field(0.2, gt=0, le=1, description=(
        "an action is harmful when a flow delivers this share less than just before it"))
    harm_hold_s: float = Field(1.5, ge=0, le=600, description=(
        "... at every check for this long (a reroute's transient while routes converge is not harm)"))
    history_s: float = Field(120.0, ge=10, le=3600, description="every node's reports are kept this long")
    budget_window_s: float = Field(60.0, gt=0, le=86400, description="actions are counted over this window")
    budget_per_node: int = Field(4, ge=0, le=1000, description="actions against one node per window (0: no limit)")
    budget_per_incident: int = Field(3, ge=0, le=1000, description=(
        "actions for one incident per window until it is repaired (0: no limit)"))


def deps(settings: ExecutorSettings, telemetry: Mapping[str, events_pb2.NodeTelemetry],
         deploy: stage.Deploy = stage.no_deploy, history: History | None = None) -> stage.ExecutorDeps:
    return stage.ExecutorDeps(
        telemetry=telemetry, classify=functools.partial(classify_node, thresholds=settings.threshold_table()),
        trust=settings.trust_bundle(), claim_key=stage.claim_key_of(settings.signer("executor")), deploy=deploy,
        step_timeout_s=settings.step_timeout_s, verify_timeout_s=settings.verify_timeout_s,
        verify_poll_s=settings.verify_poll_s, fresh_telemetry_s=settings.fresh_telemetry_s,
        history=history if history is not None else History(settings.history_s), hold_s=settings.verify_hold_s,
        min_delivery=settings.min_delivery, baseline_window_s=settings.baseline_window_s,
        baseline_gap_s=settings.baseline_gap_s, harm_after_s=settings.harm_after_s, harm_margin=settings.harm_margin,
        harm_hold_s=settings.harm_hold_s,
        budget_window_s=settings.budget_window_s, budget_per_node=settings.budget_per_node,
        budget_per_incident=settings.budget_per_incident)


def build(settings: ExecutorSettings) -> Service:
    app = Service("executor", settings)

    async def deploy(params: dict[str, str]) -> list:
        """Blue-green deploy needs the broker connection (it starts and watches agent processes)."""
        return await bluegreen_local.deploy(app.nc, params, settings.nats_url, settings.data_dir)

    history = History(settings.history_s)     # every node's recent reports: delivery before an incident
    d = deps(settings, app.mirror("telemetry", events_pb2.NodeTelemetry.FromString, history.on_change), deploy,
             history)
    app.subscribe("executor", events_pb2.ActionRequest, functools.partial(stage.on_action, deps=d), concurrency=4)
    return app


def main() -> None:
    run_service("executor", ExecutorSettings, build)


if __name__ == "__main__":
    main()
