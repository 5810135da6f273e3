"""Governance: the quadratic-voting DAO (gRPC for people, the bus for the planner and executor).

* gRPC ``x0tta6bl4.v1.Governance`` on X0TTA6BL4_GRPC_HOST:X0TTA6BL4_GRPC_PORT
  (0 = a free port, logged and written to ``<data_dir>/run/governance-<instance>.grpc``),
  with grpc.health.v1 and server reflection.
* state: event-sourced in the GOV stream (``store.GovStore``); replayed at start.
* ``governance-plans``: EMERGENCY/STANDARD_VOTE plans open a proposal (id ``plan-<plan id>``,
  idempotent); AUTO_EXECUTE plans are recorded as auto-approved (``auto-<plan id>``).
* a ticker closes proposals; a PASSED proposal that came from a plan publishes an
  ActionRequest on mapek.action (approved_by ``dao:<id>``, the plan's cycle and trace).
* ``governance-results``: the executor's ActionResult marks the proposal EXECUTED.
* every state change: an audit event ``audit.governance.<type>`` and a ProposalEvent on
  ``gov.watch.<kind>`` (core NATS) for WatchProposals.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import pathlib
import sys
import time
from collections import defaultdict

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import SpanKind
from pydantic import Field

from services.governance.api import GOV_WATCH, SERVICE_NAME, Governance
from services.governance.convert import SEVERITY, action_from_pb, proposal_to_pb
from services.governance.identities import TOKEN_FILE_NAME, AdminToken, KeyvaultIdentities
from services.governance.store import GovStore, Outcome
from services.governance.verify import VoteVerifier
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import Context, Reject, Service, run_service
from x0tta6bl4.bus.codec import encode, new_meta
from x0tta6bl4.bus.publisher import derive_id
from x0tta6bl4.config import CommonSettings
from x0tta6bl4.governance import (
    Decision,
    DecisionKind,
    DecisionPolicy,
    FailedPrecondition,
    GovernanceEngine,
    GovernanceError,
    InvalidArgument,
    NotFound,
    ProposalState,
    Severity,
)
from x0tta6bl4.governance import events as gev
from x0tta6bl4.mapek.plan import action_request
from x0tta6bl4.telemetry.tracing import extract_context, tracer
from x0tta6bl4.v1 import events_pb2
from x0tta6bl4.v1 import governance_pb2 as gpb
from x0tta6bl4.v1 import governance_pb2_grpc as gpb_grpc

log = logging.getLogger("x0tta6bl4.governance")

AUDIT_TYPES = {
    gev.VoterRegistered: "voter.registered",
    gev.VoterKeyRotated: "voter.key_rotated",
    gev.ProposalCreated: "proposal.created",
    gev.ProposalAutoApproved: "proposal.auto_approved",
    gev.VoteCast: "vote.cast",
    gev.ProposalCanceled: "proposal.canceled",
    gev.ExecutionFailed: "proposal.execution_failed",
    gev.ProposalExecuted: "proposal.executed",
    gev.ProposalExpired: "proposal.expired",
}
AUDIT_GROUP_ABOVE = 1   # more events of one type in one commit -> one audit event listing them all


class GovernanceSettings(CommonSettings):
    grpc_host: str = Field("127.0.0.1", description="gRPC bind address")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 = any free port, logged)")
    tick_interval_s: float = Field(0.2, gt=0, le=60, description="how often proposals are closed / expired")
    emergency_vote_s: float = Field(300.0, gt=0, le=7 * 86400, description="used when a plan carries no duration")
    standard_vote_s: float = Field(3600.0, gt=0, le=7 * 86400)
    emergency_quorum: float = Field(0.25, gt=0, le=1)
    emergency_threshold: float = Field(0.5, gt=0, le=1)
    standard_quorum: float = Field(0.5, gt=0, le=1)
    standard_threshold: float = Field(0.5, gt=0, le=1)
    execution_window_s: float = Field(3600.0, gt=0, le=30 * 86400, description="default execution window")
    action_timeout_s: float = Field(30.0, gt=0, le=3600)
    rpc_root_span_sample: float = Field(0.05, ge=0, le=1, description=(
        "fraction of gRPC calls WITHOUT trace context that start a trace (calls with traceparent always do)"))
    admin_token_file: pathlib.Path | None = Field(None, description=(
        "ledger admin token for RegisterVoter (default <data dir>/governance-admin.token, created when absent)"))
    verify_threads: int = Field(2, ge=0, le=64, description="threads checking vote signatures before the writer")
    max_active_per_proposer: int = Field(20, ge=0, le=1_000_000, description=(
        "ACTIVE proposals one proposer may have open through gRPC CreateProposal (0 = no limit; "
        "the planner's proposals from plans are not counted against it)"))


def build(settings: GovernanceSettings) -> Service:
    app = Service("governance", settings)
    policy = DecisionPolicy(emergency_vote_duration_s=settings.emergency_vote_s,
                            emergency_quorum=settings.emergency_quorum,
                            emergency_threshold=settings.emergency_threshold,
                            standard_vote_duration_s=settings.standard_vote_s,
                            standard_quorum=settings.standard_quorum,
                            standard_threshold=settings.standard_threshold)
    keys = VoteVerifier(threads=settings.verify_threads)
    token_path = settings.admin_token_file or settings.data_dir / TOKEN_FILE_NAME
    try:
        admin = AdminToken.load_or_create(token_path)
    except (ValueError, OSError) as e:
        print(f"governance: config error: admin_token_file: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    holder: dict = {}

    def verify(voter: str, payload: bytes, signature: bytes) -> bool:
        v = holder["store"].engine.state.voters.get(voter)
        return v is not None and keys.verify(v.public_key, payload, signature)

    def make_engine() -> GovernanceEngine:
        return GovernanceEngine(verify, time.time)

    # ---- reactions to a stored commit: watch events, audit trail, actions -------------
    async def on_commit(events: list, links: list[dict]) -> None:
        store: GovStore = holder["store"]
        eng = store.engine
        seen: set[tuple[str, str]] = set()
        for e in events:
            pid = getattr(e, "proposal_id", "")
            if not pid or (pid, e.watch_kind) in seen or pid not in eng.state.proposals:
                continue
            seen.add((pid, e.watch_kind))
            ev = gpb.ProposalEvent(meta=new_meta("governance", eng.state.proposals[pid].cycle_id),
                                   kind=e.watch_kind, proposal=proposal_to_pb(eng, eng.state.proposals[pid]))
            try:
                await app.nc.publish(GOV_WATCH.format(kind=subjects.token(e.watch_kind)), encode(ev))
            except Exception as exc:  # noqa: BLE001 - watchers are best effort
                log.warning("governance: watch publish failed: %s", exc)
        groups: dict[str, list] = defaultdict(list)
        for e in events:
            if isinstance(e, gev.ProposalClosed):
                kind = "proposal.passed" if e.outcome is ProposalState.PASSED else "proposal.rejected"
            else:
                kind = AUDIT_TYPES.get(type(e), "governance.event")
            groups[kind].append(e)
        for kind, evs in groups.items():
            if len(evs) <= AUDIT_GROUP_ABOVE:
                for e in evs:
                    await app.audit(kind, *audit_fields(eng, e))
            else:
                ids = [getattr(e, "vote_id", "") or getattr(e, "proposal_id", "") or getattr(e, "voter_id", "")
                       for e in evs]
                await app.audit(kind, f"{len(evs)} events", {"count": len(evs), "ids": ",".join(ids)})
        for e in events:
            if isinstance(e, gev.ProposalClosed) and e.outcome is ProposalState.PASSED:
                await request_action(e.proposal_id)

    def audit_fields(eng: GovernanceEngine, e) -> tuple[str, dict, str]:
        d = gev.event_to_dict(e)
        for k in ("type", "schema_version", "signature", "public_key", "nonce", "at", "description"):
            d.pop(k, None)
        if "tally" in d:
            d["tally"] = {k: round(v, 6) if isinstance(v, float) else v for k, v in d["tally"].items()}
        pid = getattr(e, "proposal_id", "")
        cycle = eng.state.proposals[pid].cycle_id if pid in eng.state.proposals else ""
        return (pid or getattr(e, "voter_id", ""), d, cycle)

    async def request_action(pid: str) -> None:
        """Publish the ActionRequest of a PASSED proposal that came from a plan (idempotent)."""
        store: GovStore = holder["store"]
        link = store.links.get(pid)
        p = store.engine.state.proposals.get(pid)
        if link is None or p is None or p.auto_approved or not link.get("plan"):
            return
        plan = events_pb2.Plan.FromString(base64.b64decode(link["plan"]))
        req = action_request(plan, f"dao:{pid}", pid, timeout_s=settings.action_timeout_s)
        req.meta.event_id = derive_id("governance-action", pid)
        carrier = {"traceparent": link["traceparent"]} if link.get("traceparent") else {}
        with tracer().start_as_current_span("governance.action_requested", context=extract_context(carrier),
                                            kind=SpanKind.PRODUCER,
                                            attributes={"x0.cycle_id": plan.meta.cycle_id, "x0.proposal": pid}):
            await app.publish(subjects.MAPEK_ACTION, req, cycle_id=plan.meta.cycle_id)
            await app.audit("action.requested", pid, {"action_id": req.action_id, "approved_by": req.approved_by,
                                                      "plan": plan.plan_id}, cycle_id=plan.meta.cycle_id)

    # ---- the bus ----------------------------------------------------------------------------
    @app.subscriber("governance-plans", events_pb2.Plan)
    async def on_plan(plan: events_pb2.Plan, ctx: Context) -> None:
        store: GovStore = holder["store"]
        if plan.decision not in (events_pb2.DECISION_KIND_EMERGENCY_VOTE, events_pb2.DECISION_KIND_STANDARD_VOTE,
                                 events_pb2.DECISION_KIND_AUTO_EXECUTE):
            return  # OBSERVE: nothing to approve
        try:
            action = action_from_pb(plan.action)
        except GovernanceError as e:
            raise Reject(f"plan {plan.plan_id}: {e}") from None
        node = plan.action.target_node or plan.root_cause
        title = f"{action.kind.value} {node}: {plan.fault_type or 'incident'} {plan.incident_id}".strip()[:200]
        description = (plan.rationale or "")[:10_000]
        link = {"plan": base64.b64encode(plan.SerializeToString(deterministic=True)).decode(),
                "traceparent": ctx.headers.get("traceparent", ""), "plan_id": plan.plan_id}
        if plan.decision == events_pb2.DECISION_KIND_AUTO_EXECUTE:
            pid = f"auto-{plan.plan_id}"
            link.update(proposal_id=pid, action_id=derive_id("action", plan.plan_id, ""))
            decision = Decision(DecisionKind.AUTO_EXECUTE, 0.0, 0.0, 0.0, plan.rationale or "auto-execute",
                                plan.confidence, SEVERITY.get(plan.severity, Severity.LOW))

            def cmd(eng: GovernanceEngine) -> Outcome:
                res = eng.create_from_decision(decision, title=title, description=description, action=action,
                                               proposer="planner", execution_window_s=settings.execution_window_s,
                                               proposal_id=pid, request_id=plan.plan_id,
                                               cycle_id=plan.meta.cycle_id)
                return Outcome(res.duplicate, res.events, [] if res.duplicate else [link])
        else:
            pid = f"plan-{plan.plan_id}"
            link.update(proposal_id=pid, action_id=derive_id("action", plan.plan_id, pid))
            emergency = plan.decision == events_pb2.DECISION_KIND_EMERGENCY_VOTE
            duration = float(plan.vote_duration_s) or (policy.emergency_vote_duration_s if emergency
                                                       else policy.standard_vote_duration_s)
            quorum = policy.emergency_quorum if emergency else policy.standard_quorum
            threshold = policy.emergency_threshold if emergency else policy.standard_threshold

            def cmd(eng: GovernanceEngine) -> Outcome:
                res = eng.create_proposal(title=title, description=description, action=action, proposer="planner",
                                          duration_s=duration, quorum=quorum, threshold=threshold,
                                          execution_window_s=settings.execution_window_s, proposal_id=pid,
                                          request_id=plan.plan_id, cycle_id=plan.meta.cycle_id)
                return Outcome(res.duplicate, res.events, [] if res.duplicate else [link])
        try:
            await store.execute(cmd)
        except (InvalidArgument, FailedPrecondition) as e:
            raise Reject(f"plan {plan.plan_id} cannot become a proposal: {e}") from None

    @app.subscriber("governance-results", events_pb2.ActionResult)
    async def on_result(result: events_pb2.ActionResult, ctx: Context) -> None:
        store: GovStore = holder["store"]
        pid = result.proposal_id or store.by_action.get(result.action_id, "")
        if not pid:
            return  # an action no proposal asked for (e.g. an operator's)
        detail = (result.error or ("ok" if result.success else "failed"))[:4096]
        try:
            await store.execute(lambda eng: Outcome(None, eng.report_execution(pid, result.success, detail)))
        except (NotFound, FailedPrecondition) as e:
            await ctx.audit("proposal.result_ignored", pid, {"action_id": result.action_id, "reason": str(e)})

    # ---- lifecycle ---------------------------------------------------------------------------
    server_box: dict = {}

    @app.on_startup
    async def start_store_and_grpc() -> None:
        store = GovStore(app.nc, make_engine, on_commit)
        holder["store"] = store
        n = await store.load()
        log.info("governance: replayed %d events (log at seq %d): %d voters, %d proposals", n, store.last_seq,
                 len(store.engine.state.voters), len(store.engine.state.proposals))
        server_box["writer"] = asyncio.create_task(store.run(), name="gov-writer")
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        gpb_grpc.add_GovernanceServicer_to_server(
            Governance(store, app.nc, settings.execution_window_s, precheck=keys.precheck,
                       root_span_sample=settings.rpc_root_span_sample, admin=admin,
                       max_active_per_proposer=settings.max_active_per_proposer,
                       identities=KeyvaultIdentities(app.nc)), server)
        hs = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
        if not port:
            raise RuntimeError(f"cannot listen on {settings.grpc_host}:{settings.grpc_port}")
        await server.start()
        for name in ("", SERVICE_NAME):
            r = hs.set(name, health_pb2.HealthCheckResponse.SERVING)
            if asyncio.iscoroutine(r):
                await r
        server_box["server"] = server
        run_dir = pathlib.Path(settings.data_dir) / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / f"governance-{settings.instance}.grpc").write_text(f"{settings.grpc_host}:{port}\n")
        log.info("governance: gRPC listening on %s:%d", settings.grpc_host, port)
        print(f"governance: gRPC listening on {settings.grpc_host}:{port}", file=sys.stderr, flush=True)
        # a PASSED plan proposal whose ActionRequest may have been lost in a crash: publish again
        # (same event id -> de-duplicated by JetStream; same action id -> the executor runs it once)
        for pid, p in list(store.engine.state.proposals.items()):
            if p.state is ProposalState.PASSED and pid in store.links:
                await request_action(pid)

    @app.background
    async def ticker() -> None:
        store: GovStore = holder["store"]
        while True:
            await asyncio.sleep(settings.tick_interval_s)
            store.catchup_requested = True
            try:
                await store.execute(lambda eng: Outcome(None, eng.tick()))
            except GovernanceError as e:
                log.warning("governance: tick failed: %s", e)

    @app.on_shutdown
    async def stop_grpc() -> None:
        if "server" in server_box:
            await server_box["server"].stop(grace=1.0)
        if "writer" in server_box:
            server_box["writer"].cancel()
            await asyncio.gather(server_box["writer"], return_exceptions=True)
        keys.close()

    return app


def main() -> None:
    run_service("governance", GovernanceSettings, build)


if __name__ == "__main__":
    main()
