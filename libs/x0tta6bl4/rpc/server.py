"""One way to start a gRPC server: servicers, grpc.health.v1, server reflection, mutual TLS with X.509 SVIDs,
a policy decision (audited) on every call, a clear bind error, the chosen port written where the CLI finds
it, and a graceful stop.

    identity = ServerIdentity(svid_source, PolicyEngine(trust_domain, assignments), audit)
    server = await serve_grpc("governance", settings.grpc_host, settings.grpc_port,
                              [lambda s: gpb_grpc.add_GovernanceServicer_to_server(servicer, s)],
                              service_names=[SERVICE_NAME], port_file=run_dir / "governance-x.grpc",
                              identity=identity)
    ...
    await server.stop()

Mutual TLS: the server presents its current SVID (renewed at half-life and served to new connections
without a restart, :meth:`x0tta6bl4.rpc.svid.SvidSource.server_credentials`) and requires a client SVID
issued by the deployment CA. Every call then goes through :class:`PolicyInterceptor`: the caller's SPIFFE ID
(from the handshake), an expiry check of its certificate (a long-lived connection outlives its SVID),
``policy.decide(caller, method, request)``, and an audit event ``policy.allowed`` / ``policy.denied``
(allowed reads sampled, denials never dropped). A denied call ends with PERMISSION_DENIED (UNAUTHENTICATED
when the caller has no valid SVID) and the policy's reason. Every decision is also counted on the process's
Prometheus /metrics: ``x0_policy_decisions_total{service, method, role, decision}`` (role: the caller's kind of
SPIFFE ID - service, operator, host, node - or ``none`` without an SVID, ``foreign`` for another trust
domain or a malformed ID).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import pathlib
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter

from x0tta6bl4.policy import AuditSampler, Decision, PolicyEngine, PolicyError, parse_principal
from x0tta6bl4.rpc.svid import SvidSource

log = logging.getLogger("x0tta6bl4.rpc")


DECISIONS = Counter("x0_policy_decisions_total", "gRPC policy decisions (every call, allowed or denied)",
                    ["service", "method", "role", "decision"])


class BindError(RuntimeError):
    """The server cannot listen on the address it was given."""


Audit = Callable[[str, str, dict[str, Any]], Awaitable[None]]


@dataclass
class ServerIdentity:
    """What a server needs for mutual TLS and per-call policy: its SVID source, the policy engine and where
    decisions are audited (the service's audit chain)."""
    source: SvidSource
    policy: PolicyEngine
    audit: Audit
    sampler: AuditSampler = field(default_factory=AuditSampler)


@functools.lru_cache(maxsize=4096)
def _cert_not_after(pem: bytes) -> float:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def _first(ctx_values: Any) -> str:
    if not ctx_values:
        return ""
    v = ctx_values[0]
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class PolicyInterceptor(grpc.aio.ServerInterceptor):
    """Decides every call with the policy engine and audits the decision (see the module's doc)."""

    def __init__(self, ident: ServerIdentity, *, clock: Callable[[], float] = time.time,
                 queue_size: int = 10_000, service: str = "") -> None:
        self.ident, self.clock = ident, clock
        self.service = service
        self.decisions = {"allowed": 0, "denied": 0}
        self._counted: dict[tuple[str, str, bool], Any] = {}      # (method, caller, allowed) -> metric child
        self.groups: dict[str, int] = {}          # negotiated TLS key exchange groups seen (per call)
        self._queue: asyncio.Queue | None = None
        self._queue_size = queue_size
        self._writer: asyncio.Task | None = None
        self.audit_dropped = 0

    # ---- the decision ------------------------------------------------------------------------------------
    def decide(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> tuple[Decision, dict]:
        ac = context.auth_context() or {}
        caller = _first(ac.get("peer_spiffe_id"))
        group = _first(ac.get("ssl_negotiated_key_exchange_group"))
        if group:
            self.groups[group] = self.groups.get(group, 0) + 1
        details = {"peer": context.peer() or "", "tls_group": group}
        pem = ac.get("x509_pem_cert")
        if not caller:
            return Decision(False, "no SPIFFE ID: the caller presented no X.509 SVID", method.lstrip("/"), "-"), \
                details
        if pem:
            not_after = _cert_not_after(pem[0] if isinstance(pem[0], bytes) else str(pem[0]).encode())
            if self.clock() >= not_after:
                return Decision(False, f"the caller's SVID expired at {not_after:.0f} (renew it)",
                                method.lstrip("/"), caller), details
        return self.ident.policy.decide(caller, method, request), details

    async def check(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        """Allow the call or abort it (PERMISSION_DENIED / UNAUTHENTICATED) with the reason; audit."""
        d, details = self.decide(method, request, context)
        self.decisions["allowed" if d.allowed else "denied"] += 1
        self._count(d)
        admit, suppressed = self.ident.sampler.admit(d)
        if admit:
            ev = ("policy.allowed" if d.allowed else "policy.denied", d.caller,
                  {"method": d.method, "caller": d.caller, "reason": d.reason, **details,
                   **({"suppressed": suppressed} if suppressed else {})})
            if d.allowed:
                self._enqueue(ev)
            else:                      # a denial is in the trail before the caller hears of it
                try:
                    await self.ident.audit(*ev)
                except Exception as e:  # noqa: BLE001 - the call is denied either way
                    log.error("policy: cannot audit the denial of %s to %s: %s", d.method, d.caller, e)
        if not d.allowed:
            log.info("policy: denied %s to %s: %s", d.method, d.caller, d.reason)
            code = grpc.StatusCode.UNAUTHENTICATED if d.caller == "-" or "expired" in d.reason \
                else grpc.StatusCode.PERMISSION_DENIED
            await context.abort(code, f"policy: {d.reason}")

    def role(self, caller: str) -> str:
        """The metric's role label of a caller: its kind of SPIFFE ID, ``none`` or ``foreign``."""
        if not caller or caller == "-":
            return "none"
        try:
            return parse_principal(caller, self.ident.policy.trust_domain).kind
        except PolicyError:
            return "foreign"

    def _count(self, d: Decision) -> None:
        key = (d.method, d.caller, d.allowed)
        child = self._counted.get(key)
        if child is None:
            if len(self._counted) > 10_000:     # callers come and go (SVIDs of many nodes): bounded memory
                self._counted.clear()
            child = self._counted[key] = DECISIONS.labels(self.service, d.method, self.role(d.caller),
                                                          "allowed" if d.allowed else "denied")
        child.inc()

    # ---- audit of allowed calls: in order, off the call's path -------------------------------------------
    def _enqueue(self, ev: tuple) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self._queue_size)
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="policy-audit")
        try:
            self._queue.put_nowait(ev)
        except asyncio.QueueFull:
            self.audit_dropped += 1
            if self.audit_dropped in (1, 100) or self.audit_dropped % 10_000 == 0:
                log.warning("policy: audit queue full: %d allowed-call events not audited", self.audit_dropped)

    async def _write(self) -> None:
        assert self._queue is not None
        while True:
            ev = await self._queue.get()
            try:
                await self.ident.audit(*ev)
            except Exception as e:  # noqa: BLE001 - keep writing the others
                log.error("policy: cannot audit %s of %s: %s", ev[0], ev[2].get("method"), e)
            finally:
                self._queue.task_done()

    async def drain(self, timeout_s: float = 2.0) -> None:
        """Wait (bounded) for queued audit events, then stop the writer."""
        if self._queue is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout_s)
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    # ---- wrapping the handlers ---------------------------------------------------------------------------
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        check = self.check
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request, context):
                await check(method, request, context)
                return await inner_uu(request, context)
            return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request, context):
                await check(method, request, context)
                result = inner_us(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    for item in await result:
                        yield item
            return grpc.unary_stream_rpc_method_handler(unary_stream, handler.request_deserializer,
                                                        handler.response_serializer)
        if handler.stream_stream is not None:       # reflection: decided on the call, not on each message
            inner_ss = handler.stream_stream

            async def stream_stream(request_iterator, context):
                await check(method, None, context)
                async for item in inner_ss(request_iterator, context):
                    yield item
            return grpc.stream_stream_rpc_method_handler(stream_stream, handler.request_deserializer,
                                                         handler.response_serializer)
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator, context):
            await check(method, None, context)
            return await inner_su(request_iterator, context)
        return grpc.stream_unary_rpc_method_handler(stream_unary, handler.request_deserializer,
                                                    handler.response_serializer)


@dataclass
class GrpcServer:
    name: str
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    host: str
    port: int
    service_names: tuple[str, ...]
    interceptor: PolicyInterceptor | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)   # run after the server stopped

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self, grace: float = 1.0) -> None:
        """Report NOT_SERVING, then stop, letting calls in flight finish for ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.interceptor is not None:
            await self.interceptor.drain()
        for close in self.closers:
            await close()


async def serve_grpc(name: str, host: str, port: int,
                     add_servicers: Iterable[Callable[[grpc.aio.Server], None]],
                     *, service_names: Sequence[str] = (), options: Sequence[tuple[str, object]] = (),
                     port_file: pathlib.Path | None = None, announce: bool = True,
                     identity: ServerIdentity | None = None, insecure: bool = False) -> GrpcServer:
    """Start a gRPC server for ``name`` on ``host:port`` (0: any free port) and mark it SERVING.

    ``add_servicers`` are the generated ``add_XServicer_to_server`` calls bound to their servicers;
    ``service_names`` the full names they serve (for health and reflection); ``identity``: mutual TLS and
    the policy (required: ``insecure=True`` is for tests of something else only). Raises
    :class:`BindError` naming the address when it cannot listen.
    """
    if identity is None and not insecure:
        raise ValueError(f"{name}: a gRPC server needs mutual TLS (identity=ServerIdentity(...))")
    interceptor = PolicyInterceptor(identity, service=name) if identity is not None else None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *options],
                             interceptors=[interceptor] if interceptor is not None else None)
    for add in add_servicers:
        add(server)
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    names = tuple(service_names)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        bound = (server.add_secure_port(f"{host}:{port}", identity.source.server_credentials())
                 if identity is not None else server.add_insecure_port(f"{host}:{port}"))
    except RuntimeError as e:
        raise BindError(f"{name}: cannot listen for gRPC on {host}:{port}: {e}") from None
    if not bound:
        raise BindError(f"{name}: cannot listen for gRPC on {host}:{port}")
    await server.start()
    for svc in ("", *names):
        await hs.set(svc, health_pb2.HealthCheckResponse.SERVING)
    if port_file is not None:
        port_file.parent.mkdir(parents=True, exist_ok=True)
        port_file.write_text(f"{host}:{bound}\n")
    how = f"mutual TLS as {identity.source.spiffe_id}" if identity is not None else "WITHOUT TLS"
    log.info("%s: gRPC listening on %s:%d (%s)", name, host, bound, how)
    if announce:
        print(f"{name}: gRPC listening on {host}:{bound} ({how})", file=sys.stderr, flush=True)
    return GrpcServer(name, server, hs, host, bound, names, interceptor)
