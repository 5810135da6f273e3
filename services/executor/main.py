"""Executor: carry out an approved action on the real mesh, report each step, verify recovery."""
from __future__ import annotations

import asyncio
import sys
import time

from nats.js.errors import KeyWrongLastSequenceError
from pydantic import Field

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import Context, Reject, Service
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.config import CommonSettings, ConfigError, load_settings
from x0tta6bl4.execution import bluegreen_local
from x0tta6bl4.execution.actions import Step, UnsupportedAction, plan_steps
from x0tta6bl4.mapek import verify as verifying
from x0tta6bl4.mapek.health import classify_node
from x0tta6bl4.mapek.plan import action_name
from x0tta6bl4.v1 import events_pb2, keyvault_pb2, mesh_pb2


class ExecutorSettings(CommonSettings):
    step_timeout_s: float = Field(3.0, gt=0, le=600)
    verify_timeout_s: float = Field(10.0, gt=0, le=600)
    verify_poll_s: float = Field(0.05, gt=0, le=10)
    fresh_telemetry_s: float = Field(0.0, ge=0, le=60, description="only telemetry newer than the action counts")


def build(settings: ExecutorSettings) -> Service:
    app = Service("executor", settings)

    telemetry = app.mirror("telemetry", events_pb2.NodeTelemetry.FromString)

    def nodes_now() -> list[events_pb2.NodeTelemetry]:
        return list(telemetry.values())

    async def run_step(step: Step) -> events_pb2.ActionStep | list[events_pb2.ActionStep]:
        t0 = time.perf_counter()
        ok, detail = False, ""
        try:
            if step.kind == "mesh":
                cmd = mesh_pb2.MeshCommand(meta=new_meta("executor"), node_id=step.node, kind=step.command,
                                           peer=step.peer, params=step.params)
                cmd.command_id = cmd.meta.event_id
                reply = await app.nc.request(subjects.mesh_cmd(step.node), cmd.SerializeToString(),
                                             timeout=settings.step_timeout_s)
                ev = mesh_pb2.MeshEvent.FromString(reply.data)
                ok, detail = ev.kind == "command.ok", ev.details.get("detail", ev.kind)
            elif step.kind == "keyvault":
                if step.op == "revoke":
                    req = keyvault_pb2.RevokeRequest(node_id=step.node, reason="isolated by executor")
                    reply = await app.nc.request(subjects.KEYVAULT_RPC.format(method="Revoke"),
                                                 req.SerializeToString(), timeout=settings.step_timeout_s)
                else:
                    nodes = [n for n in step.params.get("nodes", "").split(",") if n]
                    req = keyvault_pb2.RotateRequest(node_ids=nodes, all=not nodes)
                    reply = await app.nc.request(subjects.KEYVAULT_RPC.format(method="Rotate"),
                                                 req.SerializeToString(), timeout=settings.step_timeout_s)
                err = (reply.headers or {}).get("X0-Error")
                ok, detail = err is None, err or "ok"
            elif step.kind == "deploy":       # blue-green: one ActionStep per phase, the last one the outcome
                records = await bluegreen_local.deploy(app.nc, step.params, settings.nats_url, settings.data_dir)
                return [events_pb2.ActionStep(name=r.name, ok=r.ok, detail=r.detail, duration_ms=r.duration_ms)
                        for r in records]
            else:
                detail = f"step kind {step.kind} is not available on this stack"
        except asyncio.TimeoutError:
            detail = f"no reply within {settings.step_timeout_s}s"
        except Exception as e:  # noqa: BLE001 - reported as a failed step
            detail = f"{type(e).__name__}: {e}"
        return events_pb2.ActionStep(name=step.name, ok=ok, detail=detail,
                                     duration_ms=(time.perf_counter() - t0) * 1000)

    @app.subscriber("executor", events_pb2.ActionRequest, concurrency=4)
    async def on_action(req: events_pb2.ActionRequest, ctx: Context) -> None:
        claims = await app.kv("actions")
        # How long one execution may hold the claim; past that, its executor is presumed dead.
        lease_s = (req.timeout_s or 30.0) + settings.verify_timeout_s + 5.0
        try:
            await claims.create(req.action_id, f"started {time.time_ns()}".encode())
        except KeyWrongLastSequenceError:
            deadline = time.monotonic() + lease_s
            while True:
                value = (await claims.get(req.action_id)).value
                if value == b"done":
                    await ctx.audit("action.duplicate", req.action_id, {"note": "already executed; not repeated"})
                    return
                started_ns = int(value.split()[1]) if value.startswith(b"started ") else 0
                if time.time_ns() - started_ns > lease_s * 1e9 or time.monotonic() > deadline:
                    break  # the executor that claimed it died mid-way: take over (every step is idempotent)
                await asyncio.sleep(0.1)  # another replica is executing it right now: wait for its outcome
        t0 = time.perf_counter()
        try:
            phases = plan_steps(req.action, [t.node_id for t in nodes_now() if t.reachable])
            baseline = verifying.traffic_baseline(nodes_now())
        except UnsupportedAction as e:
            raise Reject(str(e)) from None
        result = events_pb2.ActionResult(meta=new_meta("executor"), action_id=req.action_id, action=req.action,
                                         proposal_id=req.proposal_id, incident_id=req.incident_id,
                                         fault_type=req.fault_type,
                                         first_symptom_unix_ns=req.first_symptom_unix_ns)
        deadline = req.timeout_s or 30.0
        try:
            async with asyncio.timeout(deadline):
                for phase in phases:
                    for done in await asyncio.gather(*(run_step(s) for s in phase)):
                        result.steps.extend(done if isinstance(done, list) else [done])
        except TimeoutError:
            result.error = f"action timed out after {deadline}s"
        result.success = not result.error and all(s.ok for s in result.steps)
        if not result.success and not result.error:
            result.error = "; ".join(f"{s.name}: {s.detail}" for s in result.steps if not s.ok)[:2000]
        result.duration_ms = (time.perf_counter() - t0) * 1000
        await ctx.publish(subjects.MAPEK_RESULT, result)
        await claims.put(req.action_id, b"done")
        await ctx.audit("action.executed", req.action_id, {
            "action": action_name(req.action.kind), "target": req.action.target_node, "success": result.success,
            "approved_by": req.approved_by, "steps": len(result.steps), "error": result.error,
            "duration_ms": f"{result.duration_ms:.1f}"})

        # Verify: poll telemetry until the checks pass or time runs out (a failed action fails at once).
        acted_ns = time.time_ns()
        loop_deadline = time.monotonic() + (settings.verify_timeout_s if result.success else 0)
        while True:
            nodes = nodes_now()
            if settings.fresh_telemetry_s:
                nodes = [t for t in nodes if t.meta.ts_unix_ns >= acted_ns]
            outcome = verifying.check(req.action, nodes, classify_node, result.success, baseline)
            if outcome.recovered or time.monotonic() > loop_deadline:
                break
            await asyncio.sleep(settings.verify_poll_s)
        mttr_ms = (time.time_ns() - (req.first_symptom_unix_ns or acted_ns)) / 1e6
        await ctx.publish(subjects.MAPEK_VERIFIED, verifying.verification(req, outcome, mttr_ms))
        await ctx.audit("verification", req.action_id, {
            "recovered": outcome.recovered, "mttr_ms": f"{mttr_ms:.0f}",
            "failed": "; ".join(outcome.failed)[:1000]})

    return app


def main() -> None:
    try:
        settings = load_settings(ExecutorSettings)
    except ConfigError as e:
        print(f"executor: config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    build(settings).run()


if __name__ == "__main__":
    main()
