"""The Governance gRPC servicer: a thin adapter from RPCs to GovStore commands, served with mutual TLS
(governance's X.509 SVID from keyvault, renewed at half-life) and the policy deciding every call from the
caller's SPIFFE ID (:mod:`x0tta6bl4.policy`, decisions audited in governance's chain)."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import pathlib
import random
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode

from x0tta6bl4.bus import subjects
from x0tta6bl4.config import ConfigError
from x0tta6bl4.governance import (
    LIMITS,
    GovernanceEngine,
    GovernanceError,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    VoteChoice,
    cancel_signing_payload,
    default_request_id,
    proposal_signing_payload,
    vote_signing_payload,
)
from x0tta6bl4.keyvault import pin
from x0tta6bl4.policy import PolicyEngine
from x0tta6bl4.pqc import InvalidKey, MLDSA65PublicKey
from x0tta6bl4.pqc import key_id as pqc_key_id
from x0tta6bl4.rpc.server import Audit, BindError, GrpcServer, ServerIdentity, serve_grpc
from x0tta6bl4.rpc.svid import SvidError, SvidSource, ca_bundle, obtain_over_bus
from x0tta6bl4.stages.governance import (
    action_from_pb,
    choice_from_pb,
    proposal_to_pb,
    state_from_pb,
    state_to_pb,
)
from x0tta6bl4.telemetry.tracing import extract_context, tracer
from x0tta6bl4.v1 import governance_pb2 as gpb
from x0tta6bl4.v1 import governance_pb2_grpc as gpb_grpc

from .identities import AdminToken, KeyvaultIdentities
from .store import GovStore, Outcome, Unavailable

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from .main import GovernanceSettings

log = logging.getLogger("x0tta6bl4.governance.api")

SERVICE_NAME = gpb.DESCRIPTOR.services_by_name["Governance"].full_name


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def rpc(fn):
    """Trace context from metadata -> server span; domain errors -> gRPC status codes.

    A call that carries W3C trace context (``traceparent`` metadata) always gets a
    server span in the caller's trace. A call without one starts a new trace only
    for a sampled fraction (``self.root_span_sample``, setting
    ``X0TTA6BL4_RPC_ROOT_SPAN_SAMPLE``, default 0.05): recording a span took
    ~15% of a CastVote's CPU in ``bench/bench_governance.py``, and a vote storm
    from untraced clients would spend it on traces nobody follows.
    """
    name = f"governance.{fn.__name__}"

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        md = _metadata(context)
        span = None
        if "traceparent" in md or (self.root_span_sample > 0 and random.random() < self.root_span_sample):
            span = tracer().start_span(name, context=extract_context(md), kind=SpanKind.SERVER,
                                       attributes={"rpc.method": fn.__name__})
        try:
            try:
                return await fn(self, request, context)
            except GovernanceError as e:
                code, msg = getattr(grpc.StatusCode, e.code), str(e)
            except Unavailable as e:
                code, msg = grpc.StatusCode.UNAVAILABLE, str(e)
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, msg))
                span.set_attribute("rpc.grpc.status_code", code.value[0])
        finally:
            if span is not None:
                span.end()
        await context.abort(code, msg)
    return wrapper


class Governance(gpb_grpc.GovernanceServicer):
    def __init__(self, store: GovStore, nc, default_execution_window_s: float = LIMITS.default_execution_window_s,
                 precheck: Callable[[bytes, bytes, bytes], Awaitable[bool]] | None = None,
                 root_span_sample: float = 1.0, admin: AdminToken | None = None,
                 identities: KeyvaultIdentities | None = None, max_active_per_proposer: int = 0,
                 audit: Audit | None = None):
        self.store = store
        self.audit = audit
        self.max_active_per_proposer = max_active_per_proposer
        self.admin = admin
        self.identities = identities
        self.root_span_sample = root_span_sample
        self.precheck = precheck
        self.nc = nc
        self.default_window = default_execution_window_s
        self._tally_cache: tuple[tuple[str, int], gpb.Proposal] | None = None

    def _proposal(self, eng: GovernanceEngine, pid: str) -> gpb.Proposal:
        """The proposal as protobuf, cached per (id, state version): one tally per batch of votes."""
        key = (pid, eng.state.version)
        if self._tally_cache is None or self._tally_cache[0] != key:
            self._tally_cache = (key, proposal_to_pb(eng, eng.get_proposal(pid)))
        return self._tally_cache[1]

    @rpc
    async def CreateProposal(self, req: gpb.CreateProposalRequest, context) -> gpb.Proposal:
        if not req.HasField("action"):
            raise InvalidArgument("action is required (kind reroute, rotate_keys, deploy, config_change, ...)")
        action = action_from_pb(req.action)
        nonce = bytes(req.nonce)
        payload = proposal_signing_payload(
            title=req.title, description=req.description, action=action, proposer=req.proposer,
            duration_s=req.duration_s, quorum=req.quorum, threshold=req.threshold,
            execution_window_s=req.execution_window_s, request_id=req.request_id, nonce=nonce) if req.signature else b""
        await self._refuse_revoked(req.proposer, "CreateProposal", "opening a proposal")
        await self._authenticate_proposer(req.proposer, nonce, bytes(req.signature), payload, _metadata(context),
                                          "opening a proposal")
        # a signed request without an idempotency key gets the digest of what was signed
        request_id = req.request_id or (default_request_id(payload) if payload else "")

        def cmd(eng: GovernanceEngine) -> Outcome:
            res = eng.create_proposal(title=req.title, description=req.description, action=action,
                                      proposer=req.proposer, duration_s=req.duration_s, quorum=req.quorum,
                                      threshold=req.threshold,
                                      execution_window_s=req.execution_window_s or self.default_window,
                                      request_id=request_id, max_active_for_proposer=self.max_active_per_proposer)
            pid = res.proposal.proposal_id
            return Outcome(lambda e: self._proposal(e, pid), res.events)
        return await self.store.execute(cmd)

    @rpc
    async def CastVote(self, req: gpb.CastVoteRequest, context) -> gpb.CastVoteResponse:
        choice = choice_from_pb(req.choice)
        await self._refuse_revoked(req.voter, "CastVote", f"voting on {req.proposal_id!r}")
        voter = self.store.engine.state.voters.get(req.voter)
        if self.precheck is not None and voter is not None:
            # verify the signature in a worker thread before the vote reaches the single writer
            # (the engine re-checks through the memo; malformed fields are left to the engine to report)
            try:
                payload = vote_signing_payload(req.proposal_id, req.voter, VoteChoice(choice), float(req.tokens),
                                               bytes(req.nonce))
            except (GovernanceError, ValueError):
                payload = None
            if payload is not None:
                ok = await self.precheck(voter.public_key, payload, bytes(req.signature))
                if not ok and self.identities is not None:
                    await self._follow_key_rotation(req.voter, voter.public_key, payload, bytes(req.signature))

        def cmd(eng: GovernanceEngine) -> Outcome:
            res = eng.cast_vote(req.proposal_id, req.voter, choice, req.tokens, req.nonce, req.signature,
                                req.vote_id or None)
            pid, vid, weight, dup = res.proposal.proposal_id, res.vote_id, res.weight, res.duplicate
            return Outcome(lambda e: gpb.CastVoteResponse(vote_id=vid, weight=weight, duplicate=dup,
                                                          proposal=self._proposal(e, pid)), res.events)
        return await self.store.execute(cmd)

    async def _follow_key_rotation(self, voter: str, ledger_key: bytes, payload: bytes, signature: bytes) -> None:
        """A vote that does not verify under the ledger's key may be signed with the voter's rotated
        keyvault key: when keyvault's current, root-verified key for this identity differs and the
        vote verifies under it, record the new key (VoterKeyRotated) before the vote is processed.
        Anything else (not a keyvault identity, keyvault away, still a bad signature) leaves the ledger
        as it is and the engine rejects the vote as UNAUTHENTICATED."""
        try:
            new_key = await self.identities.signing_key(voter)
        except (GovernanceError, Unavailable) as e:
            log.debug("vote of %s: no rotated keyvault key to try (%s)", voter, e)
            return
        if new_key == ledger_key or not await self.precheck(new_key, payload, signature):
            return
        kid = pqc_key_id(new_key)
        log.info("voter %s: keyvault rotated the identity key -> %s; ledger updated", voter, kid)
        await self.store.execute(lambda eng: Outcome(None, eng.rotate_voter_key(voter, key_id=kid,
                                                                                public_key=new_key)))

    @rpc
    async def GetProposal(self, req: gpb.GetProposalRequest, context) -> gpb.Proposal:
        return await self.store.read(lambda eng: self._proposal(eng, req.id))

    @rpc
    async def ListProposals(self, req: gpb.ListProposalsRequest, context) -> gpb.ListProposalsResponse:
        state = state_from_pb(req.state)

        def q(eng: GovernanceEngine) -> gpb.ListProposalsResponse:
            page = eng.list_proposals(state, req.page_size, req.page_token)
            return gpb.ListProposalsResponse(proposals=[proposal_to_pb(eng, p) for p in page.proposals],
                                             next_page_token=page.next_page_token)
        return await self.store.read(q)

    @rpc
    async def CancelProposal(self, req: gpb.CancelProposalRequest, context) -> gpb.Proposal:
        nonce = bytes(req.nonce)
        payload = cancel_signing_payload(req.id, req.proposer, nonce) if req.signature else b""
        await self._refuse_revoked(req.proposer, "CancelProposal", f"cancelling proposal {req.id!r}")
        await self._authenticate_proposer(req.proposer, nonce, bytes(req.signature), payload, _metadata(context),
                                          f"cancelling proposal {req.id!r}")

        def cmd(eng: GovernanceEngine) -> Outcome:
            events = eng.cancel_proposal(req.id, req.proposer)
            return Outcome(lambda e: self._proposal(e, req.id), events)
        return await self.store.execute(cmd)

    async def _refuse_revoked(self, identity: str, method: str, what: str) -> None:
        """PERMISSION_DENIED naming the revocation when keyvault has revoked ``identity`` (followed from the
        ``keys`` bucket, see :class:`KeyvaultIdentities`); the refusal is audited before the caller hears of it."""
        if self.identities is None or not identity:
            return
        try:
            await self.identities.refuse_if_revoked(identity, what)
        except PermissionDenied as e:
            log.info("refused %s of revoked identity %s", method, identity)
            if self.audit is not None:
                try:
                    await self.audit("identity.revoked_refused", identity,
                                     {"method": method, "identity": identity, "reason": str(e)})
                except Exception as err:  # noqa: BLE001 - refused either way
                    log.error("cannot audit the refusal of %s to revoked %s: %s", method, identity, err)
            raise

    async def _authenticate_proposer(self, proposer: str, nonce: bytes, signature: bytes, payload: bytes,
                                     md: dict[str, str], what: str) -> None:
        """Opening or cancelling a proposal needs proof that the caller is ``proposer``: a signature
        over ``payload`` by the proposer's ledger key (the proposer is then a ledger identity), or
        the ledger admin token (a service or an operator acting for the ledger)."""
        if signature:
            voter = self.store.engine.state.voters.get(proposer)
            if voter is None or not voter.public_key:
                raise Unauthenticated(f"{what}: proposer {proposer!r} is not a ledger identity with a key, so it "
                                      f"cannot sign; send the ledger admin token instead")
            if not LIMITS.nonce_min_len <= len(nonce) <= LIMITS.nonce_max_len:
                raise InvalidArgument(f"nonce must be {LIMITS.nonce_min_len}..{LIMITS.nonce_max_len} bytes, "
                                      f"got {len(nonce)}")
            ok = self.precheck is not None and await self.precheck(voter.public_key, payload, signature)
            if not ok and self.precheck is not None and self.identities is not None:
                await self._follow_key_rotation(proposer, voter.public_key, payload, signature)
                voter = self.store.engine.state.voters[proposer]
                ok = await self.precheck(voter.public_key, payload, signature)
            if not ok:
                raise Unauthenticated(f"{what}: the signature of {proposer!r} does not verify (a field differs "
                                      f"from what was signed, or another key signed it)")
        elif self.admin is not None:
            self.admin.check(md, why=f"{what} needs proof that the caller is {proposer!r}: a signature by that "
                                     f"ledger identity (nonce, signature) or the ledger admin token")

    @rpc
    async def RegisterVoter(self, req: gpb.RegisterVoterRequest, context) -> gpb.Voter:
        if self.admin is not None:
            self.admin.check(_metadata(context))
        if req.public_key:
            try:
                MLDSA65PublicKey.from_bytes(req.public_key)
            except (InvalidKey, ValueError) as e:
                raise InvalidArgument(f"public_key is not an ML-DSA-65 public key: {e}") from None
            public_key = bytes(req.public_key)
        elif self.identities is not None:
            public_key = await self.identities.signing_key(req.voter)
        else:
            raise InvalidArgument("public_key is required: this service has no keyvault to take it from")
        kid = pqc_key_id(public_key)

        def cmd(eng: GovernanceEngine) -> Outcome:
            events = eng.register_voter(req.voter, req.balance, key_id=kid, public_key=public_key)
            return Outcome(gpb.Voter(voter=req.voter, balance=eng.get_balance(req.voter), key_id=kid), events)
        return await self.store.execute(cmd)

    @rpc
    async def GetBalance(self, req: gpb.GetBalanceRequest, context) -> gpb.Voter:
        def q(eng: GovernanceEngine) -> gpb.Voter:
            bal = eng.get_balance(req.voter)
            return gpb.Voter(voter=req.voter, balance=bal, key_id=eng.state.voters[req.voter].key_id)
        return await self.store.read(q)

    async def WatchProposals(self, req: gpb.WatchProposalsRequest, context):
        try:
            want = state_from_pb(req.state)
        except GovernanceError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        want_pb = state_to_pb(want) if want is not None else None
        queue: asyncio.Queue = asyncio.Queue(maxsize=10_000)

        async def on_msg(msg):
            with contextlib.suppress(asyncio.QueueFull):   # a slow watcher loses events rather than memory
                queue.put_nowait(msg.data)

        sub = await self.nc.subscribe(subjects.GOV_WATCH_ALL, cb=on_msg)   # core NATS, not stored
        try:
            while True:
                ev = gpb.ProposalEvent.FromString(await queue.get())
                if want_pb is None or ev.proposal.state == want_pb:
                    yield ev
        finally:
            await sub.unsubscribe()


def pinned_root(settings: GovernanceSettings) -> str:
    """The pinned fingerprint of keyvault's root (``X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT``); ConfigError when it
    is missing or malformed: governance verifies voters' keyvault records only under a pinned root."""
    fp = getattr(settings, "keyvault_root_fingerprint", None) or ""
    if not fp:
        raise ConfigError("X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT is not set: governance verifies voters' keyvault "
                          "records only against a pinned keyvault root (meshctl secrets init writes "
                          "keyvault/root.pub; meshctl keys info shows the fingerprint)")
    try:
        return pin.normalize(fp)
    except pin.RootPinError as e:
        raise ConfigError(str(e)) from None


def keyvault_identities(nc: NATS, settings: GovernanceSettings) -> KeyvaultIdentities:
    """Voter keys from keyvault's records, checked against the pinned root."""
    return KeyvaultIdentities(nc, root_fingerprint=pinned_root(settings))


def keyvault_identities_of(settings: GovernanceSettings) -> Callable[[NATS], KeyvaultIdentities]:
    """Checks the pinned root setting now (a service without one does not start) and returns the factory
    of :class:`KeyvaultIdentities` once NATS is connected."""
    fp = pinned_root(settings)
    return lambda nc: KeyvaultIdentities(nc, root_fingerprint=fp)


async def serve(store: GovStore, nc: NATS, settings: GovernanceSettings, *,
                precheck: Callable[[bytes, bytes, bytes], Awaitable[bool]], admin: AdminToken,
                audit: Audit, identities: KeyvaultIdentities | None = None) -> GrpcServer:
    """Start the Governance gRPC server (with health and reflection) on the configured address, with mutual
    TLS: governance's SVID comes from keyvault over the bus (``keyvault.svid.<identity>``, retried while
    keyvault starts) and is renewed at half-life; the policy decides every call. The chosen port goes to
    ``<data_dir>/run/governance-<instance>.grpc``, where the CLI finds it. A port that cannot be bound, or no
    SVID, stops the service with one line."""
    servicer = Governance(store, nc, settings.execution_window_s, precheck=precheck,
                          root_span_sample=settings.rpc_root_span_sample, admin=admin,
                          max_active_per_proposer=settings.max_active_per_proposer,
                          identities=identities or keyvault_identities(nc, settings), audit=audit)
    assert servicer.identities is not None
    servicer.identities.start()          # follow keyvault's revocations (and current keys) from the bucket
    port_file = pathlib.Path(settings.data_dir) / "run" / f"governance-{settings.instance}.grpc"
    bus_identity = settings.nats_identity or "governance"
    bundle = ca_bundle(settings.ca_cert_file) if getattr(settings, "ca_cert_file", None) else ca_bundle()
    source = SvidSource(functools.partial(obtain_over_bus, nc, bus_identity, bundle=bundle), name="governance")
    try:
        await source.start(timeout_s=getattr(settings, "svid_start_timeout_s", 60.0))
    except SvidError as e:
        raise SystemExit(f"governance: {e}") from None
    identity = ServerIdentity(source, PolicyEngine(settings.trust_domain), audit)
    try:
        server = await serve_grpc("governance", settings.grpc_host, settings.grpc_port,
                                  [functools.partial(gpb_grpc.add_GovernanceServicer_to_server, servicer)],
                                  service_names=[SERVICE_NAME], port_file=port_file, identity=identity)
    except BindError as e:
        await source.stop()
        await servicer.identities.stop()
        raise SystemExit(str(e)) from None
    server.closers.append(source.stop)
    server.closers.append(servicer.identities.stop)
    return server


def producer_span(name: str, carrier: Mapping[str, str], attributes: Mapping[str, str]) -> AbstractContextManager[Any]:
    """The stage's trace scope: a PRODUCER span in the trace of ``carrier`` (the plan's W3C headers), so the
    ActionRequest of a passed proposal continues the cycle's trace."""
    return tracer().start_as_current_span(name, context=extract_context(carrier), kind=SpanKind.PRODUCER,
                                          attributes=dict(attributes))
