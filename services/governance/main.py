"""Governance: the quadratic-voting DAO. gRPC ``x0tta6bl4.v1.Governance`` for people (api.py), the bus for the
planner and executor (x0tta6bl4.stages.governance), state event-sourced in the GOV stream (store.py)."""
from __future__ import annotations

import functools
import pathlib
import time

from google.protobuf.message import Message
from pydantic import Field

from services.governance.api import keyvault_identities_of, producer_span, serve
from services.governance.identities import TOKEN_FILE_NAME, AdminToken
from services.governance.store import GovStore
from services.governance.verify import VoteVerifier, ledger_verifier
from x0tta6bl4.bus.app import Service, run_service
from x0tta6bl4.bus.codec import encode
from x0tta6bl4.config import CommonSettings, ConfigError
from x0tta6bl4.governance import DecisionPolicy, GovernanceEngine
from x0tta6bl4.rpc.server import GrpcServer
from x0tta6bl4.stages import governance as stage
from x0tta6bl4.v1 import events_pb2


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
    keyvault_root_fingerprint: str | None = Field(None, description=(
        "sha256:<hex> of keyvault's root public key: voters' keyvault records verify only under that root"))
    ca_cert_file: pathlib.Path | None = Field(None, description="the deployment CA (trust bundle of the SVIDs)")
    adopt_legacy_log: bool = Field(False, description=(
        "accept once a GOV log written before it was signed (unsigned v1 records): the first signed record "
        "seals them; without it such a log is refused at start"))

    def policy(self) -> DecisionPolicy:
        return DecisionPolicy(
            emergency_vote_duration_s=self.emergency_vote_s, standard_vote_duration_s=self.standard_vote_s,
            emergency_quorum=self.emergency_quorum, emergency_threshold=self.emergency_threshold,
            standard_quorum=self.standard_quorum, standard_threshold=self.standard_threshold)


def bind(app: Service, deps: stage.GovernanceDeps) -> None:
    """The stage's handlers on their durable consumers (the service tests bind them to the in-memory bus)."""
    app.subscribe("governance-plans", events_pb2.Plan, functools.partial(stage.on_plan, deps=deps))
    app.subscribe("governance-results", events_pb2.ActionResult, functools.partial(stage.on_result, deps=deps))


def build(settings: GovernanceSettings) -> Service:
    app = Service("governance", settings)
    try:
        admin = AdminToken.load_or_create(settings.admin_token_file or settings.data_dir / TOKEN_FILE_NAME)
    except (ValueError, OSError) as e:
        raise ConfigError(f"admin_token_file: {e}") from None
    identities = keyvault_identities_of(settings)     # ConfigError without a pinned keyvault root
    keys = VoteVerifier(threads=settings.verify_threads)
    store = GovStore(lambda: GovernanceEngine(ledger_verifier(lambda: store.engine, keys), time.time),
                     settings.signer("governance"), settings.trust_bundle(), adopt_legacy=settings.adopt_legacy_log)

    async def watch(subject: str, msg: Message) -> None:   # core NATS, not stored: WatchProposals' fan-out
        await app.nc.publish(subject, encode(msg))

    deps = stage.GovernanceDeps(store, settings.policy(), settings.execution_window_s, settings.action_timeout_s,
                                watch, settings.tick_interval_s, trace=producer_span,
                                signer=settings.signer("governance"))
    bg = app.context()
    store.on_commit = functools.partial(stage.on_commit, ctx=bg, deps=deps)
    store.on_quarantine = functools.partial(stage.on_quarantine, ctx=bg, deps=deps)
    app.readiness_check("governance_log", store.readiness)
    bind(app, deps)
    grpc_server: list[GrpcServer] = []

    @app.on_startup
    async def start() -> None:
        await store.start(app.nc)
        grpc_server.append(await serve(store, app.nc, settings, precheck=keys.precheck, admin=admin,
                                       audit=app.audit, identities=identities(app.nc)))
        await stage.resume(bg, deps)   # PASSED proposals whose ActionRequest a crash may have lost

    @app.background
    async def ticker() -> None:
        await stage.run_ticker(bg, deps)

    @app.on_shutdown
    async def stop() -> None:
        for server in grpc_server:
            await server.stop(grace=1.0)
        await store.stop()
        keys.close()

    return app


def main() -> None:
    run_service("governance", GovernanceSettings, build)


if __name__ == "__main__":
    main()
