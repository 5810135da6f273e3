"""The keyvault's methods over core NATS request/reply: ``keyvault.rpc.<Method>`` (queue group
``keyvault``), the request and reply being the gRPC method's protobuf messages.

An error is an empty reply with the headers ``X0-Error: "<CODE>: <message>"`` and
``X0-Error-Code: <CODE>`` (a gRPC status code name). A reply too big for one NATS message is sent
without key material (ids and status only, header ``X0-Slim: 1``; the keys are in the KV bucket);
private keys are never sent over NATS.

The policy (:mod:`x0tta6bl4.policy`) decides these calls too. A NATS responder cannot tell which identity
sent a request, only that the bus let it publish the subject; so a call on ``keyvault.rpc.<Method>`` is
allowed only when the policy allows it to EVERY identity the permission table
(:mod:`x0tta6bl4.bus.permissions`) lets publish that subject, and each decision is audited like a gRPC one
(caller ``bus:<identities>``).

``keyvault.svid.<identity>``: an X.509 SVID for a CSR (:func:`subscribe_svid`). Only ``identity`` may publish
that subject on the secured bus, so keyvault issues the SPIFFE ID bound to it
(:func:`x0tta6bl4.keyvault.svid.spiffe_id_for_bus_identity`).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.keyvault.api import METHODS, KeyvaultApi
from services.keyvault.convert import slim
from x0tta6bl4.bus import permissions, subjects
from x0tta6bl4.keyvault.errors import InvalidArgument, KeyvaultError, PermissionDenied, Unimplemented
from x0tta6bl4.keyvault.service import VIA_NATS
from x0tta6bl4.keyvault.svid import SvidIssuer, spiffe_id_for_bus_identity
from x0tta6bl4.policy import KEYVAULT, AuditSampler, Decision, PolicyEngine
from x0tta6bl4.v1 import keyvault_pb2 as pb

log = logging.getLogger("x0tta6bl4.keyvault")

QUEUE = "keyvault"
HEADROOM = 4096          # bytes of a NATS message left for headers


Audit = Callable[[str, str, dict[str, Any]], Awaitable[None]]


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching (``*`` one token, ``>`` the rest)."""
    p, t = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(t) > i
        if i >= len(t) or (tok != "*" and tok != t[i]):
            return False
    return len(p) == len(t)


def bus_callers(method: str, trust_domain: str) -> tuple[str, ...]:
    """The SPIFFE IDs of every identity the permission table lets publish ``keyvault.rpc.<method>``."""
    subject = subjects.keyvault_rpc(method)
    out = []
    for p in permissions.table().identities:
        if any(matches(pat, subject) for pat in p.publish) and not any(matches(d, subject) for d in p.deny_publish):
            try:
                out.append(spiffe_id_for_bus_identity(p.identity, trust_domain))
            except PermissionDenied:
                out.append(f"bus:{p.identity}")       # an identity without an SVID: denied by the policy
    return tuple(sorted(out))


class BusPolicy:
    """The policy of calls over NATS (see the module's doc); decisions audited like the gRPC ones."""

    def __init__(self, policy: PolicyEngine, audit: Audit, sampler: AuditSampler | None = None) -> None:
        self.policy, self.audit, self.sampler = policy, audit, sampler or AuditSampler()
        self._callers: dict[str, tuple[str, ...]] = {}

    async def check(self, method: str, request: Any) -> None:
        callers = self._callers.get(method)
        if callers is None:
            callers = self._callers[method] = bus_callers(method, self.policy.trust_domain)
        full = f"{KEYVAULT}/{method}"
        denied = [d for d in (self.policy.decide(c, full, request) for c in callers) if not d.allowed]
        label = "bus:" + ",".join(c.rsplit("/", 1)[-1] for c in callers)
        if not callers:
            reason = f"no bus identity may publish {subjects.keyvault_rpc(method)}"
        elif denied:
            reason = f"over NATS the caller may be any of {label[4:]}; {denied[0].reason}"
        else:
            reason = "granted to every identity that may publish it"
        ok = bool(callers) and not denied
        d = Decision(ok, reason, full, label, True, ok and self.policy.rules.get(full) is not None
                     and self.policy.rules[full].sampled)
        admit, suppressed = self.sampler.admit(d)
        if admit:
            details = {"method": full, "caller": label, "reason": reason, "via": "nats",
                       **({"suppressed": suppressed} if suppressed else {})}
            try:
                await self.audit("policy.allowed" if ok else "policy.denied", label, details)
            except Exception as e:  # noqa: BLE001 - decided either way
                log.error("policy: cannot audit %s over NATS: %s", full, e)
        if not ok:
            raise PermissionDenied(f"policy: {reason}")


def error_headers(code: str, message: str) -> dict[str, str]:
    return {subjects.HEADER_ERROR: f"{code}: {message}", subjects.HEADER_ERROR_CODE: code}


async def answer(api: KeyvaultApi, subject: str, data: bytes, max_payload: int,
                 policy: BusPolicy | None = None) -> tuple[bytes, dict[str, str] | None]:
    """The reply (payload, headers) to a request on ``keyvault.rpc.<Method>``; never raises."""
    method = subject.rsplit(".", 1)[-1]
    try:
        req_type = METHODS.get(method)
        if req_type is None:
            raise Unimplemented(f"unknown keyvault method {method!r}; known: {', '.join(METHODS)}")
        try:
            req = req_type.FromString(data)
        except DecodeError as e:
            raise InvalidArgument(f"{method}: request is not a valid {req_type.__name__}: {e}") from None
        if policy is not None:
            await policy.check(method, req)
        resp = await getattr(api, method)(req, VIA_NATS)
        out, headers = resp.SerializeToString(), None
        if len(out) > max_payload - HEADROOM and hasattr(resp, "records"):
            for r in resp.records:
                slim(r)
            out, headers = resp.SerializeToString(), {subjects.HEADER_SLIM: "1"}
        if len(out) > max_payload - HEADROOM:
            raise KeyvaultError(f"{method}: reply of {len(out)} bytes exceeds the NATS max payload; use gRPC")
        return out, headers
    except KeyvaultError as e:
        return b"", error_headers(e.code, str(e))
    except Exception as e:
        log.exception("%s failed", subject)
        return b"", error_headers("INTERNAL", f"{type(e).__name__}: {e}")


async def subscribe(nc: NATS, api: KeyvaultApi, policy: PolicyEngine, audit: Audit) -> Subscription:
    """Answer ``keyvault.rpc.*`` in the queue group (one replica answers each request)."""
    bus_policy = BusPolicy(policy, audit)

    async def on_request(msg: Msg) -> None:
        data, headers = await answer(api, msg.subject, msg.data, nc.max_payload, bus_policy)
        if not msg.reply:
            return
        try:
            await nc.publish(msg.reply, data, headers=headers)
        except Exception as e:  # noqa: BLE001 - the caller gets an INTERNAL error instead of a timeout
            log.error("%s: cannot send the reply: %s", msg.subject, e)
            await nc.publish(msg.reply, b"", headers=error_headers("INTERNAL", f"cannot send the reply: {e}"))
    return await nc.subscribe(subjects.KEYVAULT_RPC_ALL, queue=QUEUE, cb=on_request)


async def issue_svid(issuer: SvidIssuer, identity: str, data: bytes, audit: Audit,
                     bus_secured: bool) -> tuple[bytes, dict[str, str] | None]:
    """The reply to ``keyvault.svid.<identity>``: an SVID for the CSR, bound to the bus identity; every
    issue and refusal audited (``svid.issued`` / ``svid.refused``). Never raises."""
    sid = "-"
    try:
        try:
            req = pb.SvidRequest.FromString(data)
        except DecodeError as e:
            raise InvalidArgument(f"request is not a valid SvidRequest: {e}") from None
        sid = spiffe_id_for_bus_identity(identity, issuer.trust_domain)
        issued = await asyncio.to_thread(issuer.issue, bytes(req.csr), sid)
    except KeyvaultError as e:
        await _audit_quietly(audit, "svid.refused", identity, {"identity": identity, "spiffe_id": sid,
                                                                "reason": str(e), "bus_secured": bus_secured})
        return b"", error_headers(e.code, str(e))
    except Exception as e:
        log.exception("keyvault.svid.%s failed", identity)
        return b"", error_headers("INTERNAL", f"{type(e).__name__}: {e}")
    await _audit_quietly(audit, "svid.issued", sid, {"identity": identity, "spiffe_id": sid,
                                                      "serial": f"{issued.serial:x}",
                                                      "not_after": f"{issued.not_after:.0f}",
                                                      "bus_secured": bus_secured})
    return pb.SvidResponse(spiffe_id=sid, certificate=issued.certificate, bundle=issued.bundle,
                           not_after_unix=issued.not_after).SerializeToString(), None


async def _audit_quietly(audit: Audit, event: str, subject_id: str, details: dict[str, Any]) -> None:
    try:
        await audit(event, subject_id, dict(details))   # typed: x0tta6bl4.audit.chain.detail_value
    except Exception as e:  # noqa: BLE001 - the answer does not wait for a broken audit
        log.error("cannot audit %s of %s: %s", event, subject_id, e)


async def subscribe_svid(nc: NATS, issuer: SvidIssuer, audit: Audit, bus_secured: bool) -> Subscription:
    """Answer ``keyvault.svid.*`` in the queue group. On an open bus (no nkeys) the subject proves nothing:
    SVIDs are still issued (development) and each one is audited with ``bus_secured=False``."""
    if not bus_secured:
        log.warning("keyvault: the bus is not secured: keyvault.svid.<identity> attests nothing; SVIDs are "
                    "issued to whoever asks (development only)")

    async def on_request(msg: Msg) -> None:
        identity = msg.subject.rsplit(".", 1)[-1]
        data, headers = await issue_svid(issuer, identity, msg.data, audit, bus_secured)
        if msg.reply:
            try:
                await nc.publish(msg.reply, data, headers=headers)
            except Exception as e:  # noqa: BLE001 - the caller times out
                log.error("%s: cannot send the reply: %s", msg.subject, e)
    return await nc.subscribe(subjects.KEYVAULT_SVID_ALL, queue=QUEUE, cb=on_request)
