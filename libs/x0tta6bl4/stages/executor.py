"""Execute stage: carry out an approved action on the mesh, report each step, verify recovery.

:func:`on_action` first verifies the request's approval (:mod:`x0tta6bl4.mapek.approval`: signed by the
planner or governance with a key of the trust bundle, bound to this action, not expired); a request
that fails is refused: audited ``action.rejected`` with the reason and dead-lettered, nothing is claimed
or sent to the mesh. Then it claims the action id in the ``actions`` bucket (an action runs once,
whichever replica gets it and however often it is delivered), runs its steps
(:func:`x0tta6bl4.execution.actions.plan_steps`: commands to node agents, keyvault calls, a blue-green
deploy), publishes the ActionResult, then polls the telemetry until the mesh is back to normal by the
deployment's threshold table or the verification time runs out, and publishes the Verification with the
MTTR.

The claim is a lease: while another replica holds a live claim, wait for its outcome; a claim older
than the lease belongs to an executor that died mid-way, so take it over (every step is idempotent);
a ``done`` claim means the action already ran (audited ``action.duplicate``).

Claims are the executor's own word: each value is ``<state> <unix ns> <approval digest> <mac>``, the MAC
an HMAC-SHA256 (key derived from the executor's signing seed, which no other service holds) over the
action id, state, time and :func:`~x0tta6bl4.mapek.approval.approval_digest`. A value that is not such a
claim for this very approved action -- a ``done`` planted by anyone else who can write the bucket, a
claim of an older format, a claim for other content under the same action id -- does not count: it is
audited ``action.claim_invalid`` and replaced by this executor's claim, so nobody can make the executor
skip (or wait for) an approved action by writing the bucket.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.ports import Context, Entry, Reject, cas_update
from x0tta6bl4.execution.actions import Step, UnsupportedAction, plan_steps
from x0tta6bl4.ids import new_meta
from x0tta6bl4.mapek import verify as verifying
from x0tta6bl4.mapek.approval import ApprovalError, approval_digest, verify_approval
from x0tta6bl4.mapek.plan import action_name
from x0tta6bl4.trust import Signer, TrustBundle
from x0tta6bl4.v1 import events_pb2, keyvault_pb2, mesh_pb2

DEFAULT_ACTION_TIMEOUT_S = 30.0
LEASE_MARGIN_S = 5.0
STARTED, DONE = "started", "done"
CLAIM_KEY_INFO = b"x0tta6bl4/executor-claim/v1"

Deploy = Callable[[dict[str, str]], Awaitable[list[Any]]]
"""Blue-green deploy with the step's params; returns the phase records (``name, ok, detail, duration_ms``)."""


async def no_deploy(params: dict[str, str]) -> list[Any]:
    raise RuntimeError("blue-green deploy is not available on this stack")


@dataclass
class ExecutorDeps:
    telemetry: Mapping[str, events_pb2.NodeTelemetry]     # the `telemetry` bucket's mirror (latest per node)
    classify: Callable[[events_pb2.NodeTelemetry], tuple[int, list[str]]]  # classify_node with the table bound
    trust: TrustBundle                   # whose approvals count (the planner's and governance's keys)
    claim_key: bytes                     # MAC key of the claims (claim_key_of(the executor's signer))
    deploy: Deploy = no_deploy
    step_timeout_s: float = 3.0
    verify_timeout_s: float = 10.0
    verify_poll_s: float = 0.05
    fresh_telemetry_s: float = 0.0       # > 0: only telemetry newer than the action counts
    claim_poll_s: float = 0.1
    clock_ns: Callable[[], int] = time.time_ns          # wall clock (claims are compared across replicas)
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


# ---- the claim --------------------------------------------------------------------------------------
def claim_key_of(signer: Signer) -> bytes:
    """The claims' MAC key: derived from the executor's signing seed (every executor replica has it)."""
    return hmac.new(CLAIM_KEY_INFO, signer.seed_bytes_unsafe(), hashlib.sha256).digest()


def _mac(key: bytes, action_id: str, state: str, ns: int, digest: str) -> str:
    return hmac.new(key, "\0".join((action_id, state, str(ns), digest)).encode(), hashlib.sha256).hexdigest()


def claim_value(key: bytes, action_id: str, state: str, ns: int, digest: str) -> bytes:
    """A claim of ``action_id`` (``started`` or ``done`` at ``ns``) for the approved action ``digest``."""
    return f"{state} {ns} {digest} {_mac(key, action_id, state, ns, digest)}".encode()


def read_claim(key: bytes, action_id: str, value: bytes, digest: str) -> tuple[str, int]:
    """(state, ns) of a genuine claim of this approved action; ValueError saying why a value is not one."""
    try:
        state, ns_text, claimed, mac = value.decode().split(" ")
        ns = int(ns_text)
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"not a claim of this executor ({value[:40]!r})") from None
    if state not in (STARTED, DONE) or not hmac.compare_digest(mac, _mac(key, action_id, state, ns, claimed)):
        raise ValueError("claim not made by this executor (bad MAC)")
    if claimed != digest:
        raise ValueError(f"claim for another approved action (digest {claimed[:16]}, not {digest[:16]})")
    return state, ns


async def claim(req: events_pb2.ActionRequest, ctx: Context, deps: ExecutorDeps) -> bool:
    """Claim the action (True: run it). False: it already ran (audited as a duplicate)."""
    claims = await ctx.kv("actions")
    digest = approval_digest(req)
    # How long one execution may hold the claim; past that, its executor is presumed dead.
    lease_s = (req.timeout_s or DEFAULT_ACTION_TIMEOUT_S) + deps.verify_timeout_s + LEASE_MARGIN_S
    deadline = deps.monotonic() + lease_s      # our own clock too, should the other replica's be ahead
    done = False
    invalid = ""

    def change(entry: Entry | None) -> bytes | None:
        nonlocal done, invalid
        now = deps.clock_ns()
        done, invalid = False, ""
        mine = claim_value(deps.claim_key, req.action_id, STARTED, now, digest)
        if entry is None:
            return mine
        try:
            state, since_ns = read_claim(deps.claim_key, req.action_id, entry.value, digest)
        except ValueError as e:
            invalid = str(e)
            return mine              # not a claim of ours for this action: it does not count
        if state == DONE:
            done = True
            return None
        if now - since_ns > lease_s * 1e9 or deps.monotonic() > deadline:
            return mine              # the executor that claimed it died mid-way: take over
        return None                  # another replica is executing it right now

    while True:
        out = await cas_update(claims, req.action_id, change)
        if invalid:
            await ctx.audit("action.claim_invalid", req.action_id, {"reason": invalid, "note": "replaced"})
        if out.written:
            return True
        if done:
            await ctx.audit("action.duplicate", req.action_id, {"note": "already executed; not repeated"})
            return False
        await deps.sleep(deps.claim_poll_s)    # wait for the other replica's outcome


# ---- the steps --------------------------------------------------------------------------------------
async def run_step(step: Step, ctx: Context, deps: ExecutorDeps) -> list[events_pb2.ActionStep]:
    """One step (a blue-green deploy reports one ActionStep per phase, the last one the outcome)."""
    t0 = time.perf_counter()
    ok, detail = False, ""
    try:
        if step.kind == "mesh":
            cmd = mesh_pb2.MeshCommand(meta=new_meta("executor"), node_id=step.node, kind=step.command,
                                       peer=step.peer, params=step.params)
            cmd.command_id = cmd.meta.event_id
            reply = await ctx.request(subjects.mesh_cmd(step.node), cmd.SerializeToString(), deps.step_timeout_s)
            ev = mesh_pb2.MeshEvent.FromString(reply.data)
            ok, detail = ev.kind == "command.ok", ev.details.get("detail", ev.kind)
        elif step.kind == "keyvault":
            if step.op == "revoke":
                method, data = "Revoke", keyvault_pb2.RevokeRequest(
                    node_id=step.node, reason="isolated by executor").SerializeToString()
            else:
                nodes = [n for n in step.params.get("nodes", "").split(",") if n]
                method, data = "Rotate", keyvault_pb2.RotateRequest(node_ids=nodes, all=not nodes).SerializeToString()
            reply = await ctx.request(subjects.keyvault_rpc(method), data, deps.step_timeout_s)
            err = reply.headers.get(subjects.HEADER_ERROR)
            ok, detail = err is None, err or "ok"
        elif step.kind == "deploy":
            records = await deps.deploy(step.params)
            return [events_pb2.ActionStep(name=r.name, ok=r.ok, detail=r.detail, duration_ms=r.duration_ms)
                    for r in records]
        else:
            detail = f"step kind {step.kind} is not available on this stack"
    except TimeoutError:
        detail = f"no reply within {deps.step_timeout_s}s"
    except Exception as e:  # noqa: BLE001 - reported as a failed step
        detail = f"{type(e).__name__}: {e}"
    return [events_pb2.ActionStep(name=step.name, ok=ok, detail=detail, duration_ms=(time.perf_counter() - t0) * 1000)]


async def execute(req: events_pb2.ActionRequest, phases: list[list[Step]], ctx: Context,
                  deps: ExecutorDeps) -> events_pb2.ActionResult:
    """Run the phases in order (the steps of a phase concurrently) within the action's timeout."""
    t0 = time.perf_counter()
    result = events_pb2.ActionResult(meta=new_meta("executor"), action_id=req.action_id, action=req.action,
                                     proposal_id=req.proposal_id, incident_id=req.incident_id,
                                     fault_type=req.fault_type, first_symptom_unix_ns=req.first_symptom_unix_ns)
    deadline = req.timeout_s or DEFAULT_ACTION_TIMEOUT_S
    try:
        async with asyncio.timeout(deadline):
            for phase in phases:
                for steps in await asyncio.gather(*(run_step(s, ctx, deps) for s in phase)):
                    result.steps.extend(steps)
    except TimeoutError:
        result.error = f"action timed out after {deadline}s"
    result.success = not result.error and all(s.ok for s in result.steps)
    if not result.success and not result.error:
        result.error = "; ".join(f"{s.name}: {s.detail}" for s in result.steps if not s.ok)[:2000]
    result.duration_ms = (time.perf_counter() - t0) * 1000
    return result


# ---- the handler ------------------------------------------------------------------------------------
async def check_approval(req: events_pb2.ActionRequest, ctx: Context, deps: ExecutorDeps) -> str:
    """The approver of ``req``; a request without a valid approval is audited ``action.rejected`` and
    dead-lettered (Reject)."""
    try:
        return verify_approval(req, deps.trust, deps.clock_ns())
    except ApprovalError as e:
        await ctx.audit("action.rejected", req.action_id, {
            "reason": str(e), "check": e.code, "action": action_name(req.action.kind),
            "target": req.action.target_node, "approved_by": req.approved_by,
            "approver": req.approval.approver, "key_id": req.approval.key_id})
        raise Reject(f"action {req.action_id} refused: {e}") from None


async def on_action(req: events_pb2.ActionRequest, ctx: Context, deps: ExecutorDeps) -> None:
    approver = await check_approval(req, ctx, deps)
    try:
        plan_steps(req.action, [])        # an action that can never run is dead-lettered, not claimed
    except UnsupportedAction as e:
        raise Reject(str(e)) from None
    if not await claim(req, ctx, deps):
        return
    nodes = list(deps.telemetry.values())
    phases = plan_steps(req.action, [t.node_id for t in nodes if t.reachable])
    baseline = verifying.traffic_baseline(nodes)
    result = await execute(req, phases, ctx, deps)
    await ctx.publish(subjects.MAPEK_RESULT, result)
    await (await ctx.kv("actions")).put(req.action_id, claim_value(deps.claim_key, req.action_id, DONE,
                                                                   deps.clock_ns(), approval_digest(req)))
    await ctx.audit("action.executed", req.action_id, {
        "action": action_name(req.action.kind), "target": req.action.target_node, "success": result.success,
        "approved_by": req.approved_by, "approver": approver, "key_id": req.approval.key_id,
        "steps": len(result.steps), "error": result.error,
        "duration_ms": f"{result.duration_ms:.1f}"})
    await verify(req, result.success, baseline, ctx, deps)


async def verify(req: events_pb2.ActionRequest, steps_ok: bool, baseline: dict[str, tuple[float, float]],
                 ctx: Context, deps: ExecutorDeps) -> None:
    """Poll the telemetry until the checks pass or time runs out (a failed action fails at once)."""
    acted_ns = deps.clock_ns()
    deadline = deps.monotonic() + deps.verify_timeout_s
    while True:
        nodes = list(deps.telemetry.values())
        if deps.fresh_telemetry_s:
            nodes = [t for t in nodes if t.meta.ts_unix_ns >= acted_ns]
        outcome = verifying.check(req.action, nodes, deps.classify, steps_ok, baseline)
        if outcome.recovered or not steps_ok or deps.monotonic() > deadline:
            break
        await deps.sleep(deps.verify_poll_s)
    mttr_ms = (deps.clock_ns() - (req.first_symptom_unix_ns or acted_ns)) / 1e6
    await ctx.publish(subjects.MAPEK_VERIFIED, verifying.verification(req, outcome, mttr_ms))
    await ctx.audit("verification", req.action_id, {
        "recovered": outcome.recovered, "mttr_ms": f"{mttr_ms:.0f}", "failed": "; ".join(outcome.failed)[:1000]})
