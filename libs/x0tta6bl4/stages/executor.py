"""Execute stage: carry out an approved action on the mesh, report each step, verify recovery.

:func:`on_action` first verifies the request's approval (:mod:`x0tta6bl4.mapek.approval`: signed by the
planner or governance with a key of the trust bundle, bound to this action, not expired); a request
that fails is refused: audited ``action.rejected`` with the reason and dead-lettered, nothing is claimed
or sent to the mesh. Then it claims the action id in the ``actions`` bucket (an action runs once,
whichever replica gets it and however often it is delivered), runs its steps
(:func:`x0tta6bl4.execution.actions.plan_steps`: commands to node agents, keyvault calls, a blue-green
deploy), publishes the ActionResult, then verifies (:mod:`x0tta6bl4.mapek.verify`) until the mesh is
recovered -- the flows deliver at least 95 % of their rate before the incident, held ``hold_s``, every
node that should be reachable is, connectivity as the digital twin predicts -- or the verification time
runs out, and publishes the Verification with the MTTR. The delivery before the incident comes from
:class:`~x0tta6bl4.mapek.verify.History`, every node's reports of the last minutes (fed by the telemetry
mirror), never from the degraded state at action time.

Do no harm: once ``harm_after_s`` have passed, a flow that delivers more than ``harm_margin`` worse than just
before the action, or connectivity below the twin's prediction and below what it was, found at every check for
``harm_hold_s`` (a reroute's transient while routes converge is not harm; a mesh still worse at the
verification's end is), rolls the action back (:func:`x0tta6bl4.execution.actions.undo_steps`: un-avoid a rerouted or
isolated node, avoid a reinstated one again), audited ``action.rolled_back``, and escalates: an ``Escalation`` on
``mapek.escalation`` (audited ``incident.escalated``) and a Verification marked ``rolled_back`` and
``escalated`` (the planner then leaves the incident to operators). An action that cannot be undone
(rotation, restart) is escalated the same way. A budget caps the actions per target node and per incident
within ``budget_window_s`` (the ``budget`` bucket; a verified repair resets its incident's; a REINSTATE, the
undo of a REROUTE after its probation, spends no node budget): an action over budget does not run -- its
ActionResult says why, it is audited ``action.over_budget`` and escalated.

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
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.ports import Context, Entry, NoResponders, Reject, Reply, cas_update
from x0tta6bl4.execution.actions import (
    SECURITY_FAULTS,
    Step,
    UnsupportedAction,
    after_verified_steps,
    plan_steps,
    undo_steps,
)
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
    history: verifying.History = field(default_factory=verifying.History)   # every node's recent reports
    hold_s: float = 1.0                  # recovery must hold this long
    min_delivery: float = 0.95           # of each flow's delivery before the incident
    baseline_window_s: float = 5.0       # the window before the incident its delivery is measured over
    baseline_gap_s: float = 1.0          # ... ending this long before the first symptom
    harm_after_s: float = 2.0            # from then on, delivery worse than before the action rolls it back
    harm_margin: float = 0.2             # ... worse by more than this share
    harm_hold_s: float = 1.5             # ... seen at every check for this long (a reroute's transient is not harm)
    budget_window_s: float = 60.0        # actions counted over this window
    budget_per_node: int = 4             # actions against one target node (0: no limit)
    budget_per_incident: int = 3         # actions for one incident until it is repaired (0: no limit)
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
async def run_step(step: Step, ctx: Context, deps: ExecutorDeps,
                   req: events_pb2.ActionRequest | None = None) -> list[events_pb2.ActionStep]:
    """One step (a blue-green deploy reports one ActionStep per phase, the last one the outcome). A command
    to an agent names the mesh generation ``req``'s action is for (a host of another generation refuses it)."""
    t0 = time.perf_counter()
    ok, detail = False, ""
    try:
        if step.kind == "mesh":
            generation = req.action.params.get("generation", "") if req is not None else ""
            cmd = mesh_pb2.MeshCommand(meta=new_meta("executor"), node_id=step.node, kind=step.command,
                                       peer=step.peer, params={**step.params, "generation": generation}
                                       if generation else step.params)
            cmd.command_id = cmd.meta.event_id
            reply = await _request(ctx, deps, subjects.mesh_cmd(step.node), cmd.SerializeToString(),
                                   deps.step_timeout_s)
            ev = mesh_pb2.MeshEvent.FromString(reply.data)
            ok, detail = ev.kind == "command.ok", ev.details.get("detail", ev.kind)
        elif step.kind == "keyvault":
            if step.op == "revoke":
                method, data = "Revoke", keyvault_pb2.RevokeRequest(
                    node_id=step.node, reason="isolated by executor").SerializeToString()
            else:
                nodes = [n for n in step.params.get("nodes", "").split(",") if n]
                # nodes that hold their own keys rotate on a request keyvault publishes: the RELOAD_KEYS phase
                # that follows performs (or confirms) it at each node, so keyvault need not wait here
                method, data = "Rotate", keyvault_pb2.RotateRequest(node_ids=nodes, all=not nodes,
                                                                    wait_s=-1).SerializeToString()
            reply = await _request(ctx, deps, subjects.keyvault_rpc(method), data, deps.step_timeout_s)
            err = reply.headers.get(subjects.HEADER_ERROR)
            ok, detail = err is None, err or "ok"
        elif step.kind == "deploy":
            records = await deps.deploy(step.params)
            return [events_pb2.ActionStep(name=r.name, ok=r.ok, detail=r.detail, duration_ms=r.duration_ms)
                    for r in records]
        else:
            detail = f"step kind {step.kind} is not available on this stack"
    except NoResponders:
        detail = f"nobody answered on its subject within {deps.step_timeout_s}s (its responder is down or away)"
    except TimeoutError:
        detail = f"no reply within {deps.step_timeout_s}s"
    except Exception as e:  # noqa: BLE001 - reported as a failed step
        detail = f"{type(e).__name__}: {e}"
    return [events_pb2.ActionStep(name=step.name, ok=ok, detail=detail, duration_ms=(time.perf_counter() - t0) * 1000)]


NO_RESPONDERS_RETRY_S = 0.25


async def _request(ctx: Context, deps: ExecutorDeps, subject: str, data: bytes, timeout: float) -> Reply:
    """A request answered within ``timeout``. A responder away for a moment -- a mesh host reconnecting to
    another server after its own died, a restarting keyvault -- is asked again every 0.25 s until then
    (nothing was delivered, so nothing is done twice)."""
    deadline = deps.monotonic() + timeout
    while True:
        try:
            return await ctx.request(subject, data, max(0.05, deadline - deps.monotonic()))
        except NoResponders:
            if deps.monotonic() + NO_RESPONDERS_RETRY_S >= deadline:
                raise
            await deps.sleep(NO_RESPONDERS_RETRY_S)


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
                for steps in await asyncio.gather(*(run_step(s, ctx, deps, req) for s in phase)):
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
        plan_steps(req.action, [], req.fault_type)     # an action that can never run is dead-lettered, not claimed
    except UnsupportedAction as e:
        raise Reject(str(e)) from None
    if not await claim(req, ctx, deps):
        return
    over = await take_budget(req, ctx, deps)
    if over:
        await refuse_over_budget(req, over, approver, ctx, deps)
        return
    acted_ns = deps.clock_ns()
    nodes = list(deps.telemetry.values())
    base = verifying.baseline(deps.history, req.first_symptom_unix_ns or acted_ns, deps.baseline_window_s,
                              deps.baseline_gap_s)
    effect = verifying.expected_effect(req.action, base, deps.min_delivery)
    before = verifying.before_action(deps.history, base, nodes, acted_ns)
    phases = plan_steps(req.action, [t.node_id for t in nodes if t.reachable], req.fault_type)
    result = await execute(req, phases, ctx, deps)
    await ctx.publish(subjects.MAPEK_RESULT, result)
    await done(req, ctx, deps)
    await ctx.audit("action.executed", req.action_id, {
        "action": action_name(req.action.kind), "target": req.action.target_node, "success": result.success,
        "approved_by": req.approved_by, "approver": approver, "key_id": req.approval.key_id,
        "steps": len(result.steps), "error": result.error,
        "duration_ms": round(result.duration_ms, 1)})
    commanded = sorted({st.node for phase in phases for st in phase if st.kind == "mesh"})
    await verify(req, result.success, Verifying(acted_ns, base, effect, before, commanded), ctx, deps)


async def done(req: events_pb2.ActionRequest, ctx: Context, deps: ExecutorDeps) -> None:
    """The action's claim says it ran (a redelivery is a duplicate from now on)."""
    await (await ctx.kv("actions")).put(req.action_id, claim_value(deps.claim_key, req.action_id, DONE,
                                                                   deps.clock_ns(), approval_digest(req)))


# ---- the budget -------------------------------------------------------------------------------------
def budget_key(kind: str, value: str) -> str:
    return f"{kind}.{subjects.token(value)}"


def _budget_entries(entry: Entry | None) -> list[list]:
    try:
        doc = json.loads(entry.value) if entry is not None else {}
        rows = doc.get("actions", []) if isinstance(doc, dict) else []
        return [[str(r[0]), int(r[1])] for r in rows if isinstance(r, list) and len(r) == 2]
    except (ValueError, TypeError):
        return []               # unreadable: counts as empty (the window refills it)


async def take_budget(req: events_pb2.ActionRequest, ctx: Context, deps: ExecutorDeps) -> str:
    """Count the action against its incident's and its target node's budget; why it is over budget ("": it is
    not). An action already counted (a takeover, a redelivery) is not counted twice."""
    kv = await ctx.kv("budget")
    now = deps.clock_ns()
    window_ns = int(deps.budget_window_s * 1e9)
    checks = (("incident", req.incident_id, deps.budget_per_incident),
              # a REINSTATE undoes the loop's own REROUTE after a probation of clean health: it does not spend
              # the node's budget (counted, two repairs of one node and their two reinstatements within the
              # window left a third, real fault of that node over budget; the probation paces reinstatements)
              ("node", "" if req.action.kind == events_pb2.ACTION_KIND_REINSTATE else req.action.target_node or "mesh",
               deps.budget_per_node))
    for kind, value, limit in checks:
        if not value or limit <= 0:
            continue
        over = ""

        def change(entry: Entry | None, kind: str = kind, value: str = value, limit: int = limit) -> bytes | None:
            nonlocal over
            over = ""
            rows = [r for r in _budget_entries(entry) if now - r[1] <= window_ns]
            if any(r[0] == req.action_id for r in rows):
                return None
            if len(rows) >= limit:
                over = (f"{kind} {value} has had {len(rows)} action(s) in the last {deps.budget_window_s:g} s "
                        f"(budget {limit}): {', '.join(r[0] for r in rows)[:300]}")
                return None
            return json.dumps({"actions": [*rows, [req.action_id, now]]}).encode()
        await cas_update(kv, budget_key(kind, value), change)
        if over:
            return over
    return ""


async def refuse_over_budget(req: events_pb2.ActionRequest, over: str, approver: str, ctx: Context,
                             deps: ExecutorDeps) -> None:
    """Nothing runs: the result says why, the action is marked done, the incident goes to operators."""
    result = events_pb2.ActionResult(meta=new_meta("executor"), action_id=req.action_id, action=req.action,
                                     proposal_id=req.proposal_id, incident_id=req.incident_id,
                                     fault_type=req.fault_type, first_symptom_unix_ns=req.first_symptom_unix_ns,
                                     success=False, error=f"not run: over the action budget: {over}")
    await ctx.publish(subjects.MAPEK_RESULT, result)
    await done(req, ctx, deps)
    await ctx.audit("action.over_budget", req.action_id, {
        "action": action_name(req.action.kind), "target": req.action.target_node, "incident": req.incident_id,
        "approved_by": req.approved_by, "approver": approver, "reason": over})
    await escalate(req, "over_budget", f"{action_name(req.action.kind)} {req.action.target_node} not run: {over}",
                   [over], False, ctx)


# ---- verification, rollback, escalation -------------------------------------------------------------
@dataclass
class Verifying:
    """What an action is verified against (taken before it ran)."""
    acted_ns: int
    base: verifying.Baseline
    effect: events_pb2.ExpectedEffect
    before: verifying.BeforeAction
    commanded: list[str]             # the nodes the action sent mesh commands to (where an undo goes)


async def verify(req: events_pb2.ActionRequest, steps_ok: bool, v: Verifying, ctx: Context,
                 deps: ExecutorDeps) -> None:
    """Check until recovered, harmed (from ``harm_after_s`` on, held ``harm_hold_s``) or out of time; a failed
    action fails at once. Harm rolls the action back and escalates."""
    t0 = deps.monotonic()
    deadline = t0 + deps.verify_timeout_s
    harmed: list[str] = []
    harm_since: float | None = None          # since when every check found the mesh worse than before the action
    while True:
        nodes = list(deps.telemetry.values())
        if deps.fresh_telemetry_s:
            nodes = [t for t in nodes if t.meta.ts_unix_ns >= v.acted_ns]
        outcome = verifying.check(req.action, nodes, deps.classify, steps_ok, v.base, v.effect, deps.history,
                                  v.acted_ns, deps.hold_s)
        if outcome.recovered or not steps_ok or outcome.final:
            harmed = []
            break
        now = deps.monotonic()
        timed_out = now > deadline
        if timed_out or now - t0 >= deps.harm_after_s:
            harmed = verifying.harm(v.before, v.base, v.effect, deps.history, nodes, v.acted_ns, deps.hold_s,
                                    deps.harm_margin)
            harm_since = (harm_since if harm_since is not None else now) if harmed else None
            if timed_out or (harm_since is not None and now - harm_since >= deps.harm_hold_s):
                break
        await deps.sleep(deps.verify_poll_s)
    rolled_back = escalated = False
    if harmed:
        outcome.recovered = False
        outcome.failed.extend(f"worse since the action: {h}" for h in harmed)
        rolled_back = await rollback(req, v, outcome, harmed, ctx, deps)
        escalated = True
    elif outcome.recovered:
        await after_verified(req, ctx, deps)
    mttr_ms = (deps.clock_ns() - (req.first_symptom_unix_ns or v.acted_ns)) / 1e6
    await ctx.publish(subjects.MAPEK_VERIFIED, verifying.verification(req, outcome, mttr_ms, v.effect, rolled_back,
                                                                      escalated))
    await ctx.audit("verification", req.action_id, {
        "recovered": outcome.recovered, "mttr_ms": round(mttr_ms), "failed": "; ".join(outcome.failed)[:1000],
        "rolled_back": rolled_back, "escalated": escalated})


async def after_verified(req: events_pb2.ActionRequest, ctx: Context, deps: ExecutorDeps) -> None:
    """A verified repair resets its incident's budget and runs what waits for the verification."""
    if req.incident_id:
        await (await ctx.kv("budget")).delete(budget_key("incident", req.incident_id))
    for phase in after_verified_steps(req.action, req.fault_type):
        steps = [s for r in await asyncio.gather(*(run_step(st, ctx, deps, req) for st in phase)) for s in r]
        await ctx.audit("action.completed", req.action_id, {
            "steps": "; ".join(f"{s.name}: {'ok' if s.ok else s.detail}" for s in steps)[:1000],
            "success": all(s.ok for s in steps)})


async def rollback(req: events_pb2.ActionRequest, v: Verifying, outcome: verifying.Outcome, harmed: list[str],
                   ctx: Context, deps: ExecutorDeps) -> bool:
    """Undo the action (when it can be undone) and escalate; True when it was rolled back."""
    name = f"{action_name(req.action.kind)} {req.action.target_node}".strip()
    undo = undo_steps(req.action, v.commanded)
    if undo is None:
        await escalate(req, "irreversible", f"{name} made delivery worse and cannot be undone: "
                       + "; ".join(harmed), outcome.failed, False, ctx)
        return False
    steps: list[events_pb2.ActionStep] = []
    for phase in undo:
        for r in await asyncio.gather(*(run_step(st, ctx, deps, req) for st in phase)):
            steps.extend(r)
    ok = all(s.ok for s in steps)
    errors = "; ".join(f"{s.name}: {s.detail}" for s in steps if not s.ok)[:1000]
    await ctx.audit("action.rolled_back", req.action_id, {
        "action": action_name(req.action.kind), "target": req.action.target_node, "incident": req.incident_id,
        "ok": ok, "steps": len(steps), "error": errors, "harm": "; ".join(harmed)[:1000]})
    outcome.failed.append(f"rolled back ({len(steps)} step(s))" if ok else f"rollback failed: {errors}")
    keys = ""
    if req.action.kind == events_pb2.ACTION_KIND_ISOLATE:
        keys = (f"; {req.action.target_node}'s identity stays revoked ({req.fault_type or 'security fault'})"
                if req.fault_type in SECURITY_FAULTS or not req.fault_type
                else f"; {req.action.target_node}'s identity was not revoked (re-admitted)")
    await escalate(req, "rolled_back" if ok else "rollback_failed",
                   f"{name} made delivery worse: {'; '.join(harmed)}; "
                   + ("undone" if ok else f"undoing it failed: {errors}") + keys, outcome.failed, ok, ctx)
    return ok


async def escalate(req: events_pb2.ActionRequest, reason: str, detail: str, failed: list[str], rolled_back: bool,
                   ctx: Context) -> None:
    """Hand the incident to operators: an Escalation on mapek.escalation and the audit event."""
    esc = events_pb2.Escalation(meta=new_meta("executor", req.meta.cycle_id), incident_id=req.incident_id,
                                action_id=req.action_id, action=req.action, fault_type=req.fault_type,
                                reason=reason, detail=detail[:2000], checks_failed=failed[:50],
                                rolled_back=rolled_back)
    await ctx.publish(subjects.MAPEK_ESCALATION, esc)
    await ctx.audit("incident.escalated", req.incident_id or req.action_id, {
        "reason": reason, "action_id": req.action_id, "action": action_name(req.action.kind),
        "target": req.action.target_node, "rolled_back": rolled_back, "detail": detail[:1000]})
