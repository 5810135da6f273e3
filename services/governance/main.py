"""Governance: the quadratic-voting DAO (gRPC for people, the bus for the planner and executor)."""
from __future__ import annotations

import sys

from x0tta6bl4.bus.app import Context, Service
from x0tta6bl4.config import CommonSettings, ConfigError, load_settings
from x0tta6bl4.v1 import events_pb2


class GovernanceSettings(CommonSettings):
    pass


def build(settings: GovernanceSettings) -> Service:
    app = Service("governance", settings)

    @app.subscriber("governance-plans", events_pb2.Plan)
    async def on_plan(plan: events_pb2.Plan, ctx: Context) -> None:
        if plan.decision in (events_pb2.DECISION_KIND_EMERGENCY_VOTE, events_pb2.DECISION_KIND_STANDARD_VOTE):
            await ctx.audit("proposal.requested", plan.plan_id, {"incident": plan.incident_id})

    @app.subscriber("governance-results", events_pb2.ActionResult)
    async def on_result(result: events_pb2.ActionResult, ctx: Context) -> None:
        if result.proposal_id:
            await ctx.audit("proposal.result", result.proposal_id, {"success": result.success})

    return app


def main() -> None:
    try:
        settings = load_settings(GovernanceSettings)
    except ConfigError as e:
        print(f"governance: config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    build(settings).run()


if __name__ == "__main__":
    main()
