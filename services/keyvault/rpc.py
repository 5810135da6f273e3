"""The keyvault's methods over core NATS request/reply: ``keyvault.rpc.<Method>`` (queue group
``keyvault``), the request and reply being the gRPC method's protobuf messages.

An error is an empty reply with the headers ``X0-Error: "<CODE>: <message>"`` and
``X0-Error-Code: <CODE>`` (a gRPC status code name). A reply too big for one NATS message is sent
without key material (ids and status only, header ``X0-Slim: 1``; the keys are in the KV bucket);
private keys are never sent over NATS.
"""
from __future__ import annotations

import logging

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.keyvault.api import METHODS, KeyvaultApi
from services.keyvault.convert import slim
from x0tta6bl4.bus import subjects
from x0tta6bl4.keyvault.errors import InvalidArgument, KeyvaultError, Unimplemented
from x0tta6bl4.keyvault.service import VIA_NATS

log = logging.getLogger("x0tta6bl4.keyvault")

QUEUE = "keyvault"
HEADROOM = 4096          # bytes of a NATS message left for headers


def error_headers(code: str, message: str) -> dict[str, str]:
    return {subjects.HEADER_ERROR: f"{code}: {message}", subjects.HEADER_ERROR_CODE: code}


async def answer(api: KeyvaultApi, subject: str, data: bytes, max_payload: int) -> tuple[bytes, dict[str, str] | None]:
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


async def subscribe(nc: NATS, api: KeyvaultApi) -> Subscription:
    """Answer ``keyvault.rpc.*`` in the queue group (one replica answers each request)."""
    async def on_request(msg: Msg) -> None:
        data, headers = await answer(api, msg.subject, msg.data, nc.max_payload)
        if not msg.reply:
            return
        try:
            await nc.publish(msg.reply, data, headers=headers)
        except Exception as e:  # noqa: BLE001 - the caller gets an INTERNAL error instead of a timeout
            log.error("%s: cannot send the reply: %s", msg.subject, e)
            await nc.publish(msg.reply, b"", headers=error_headers("INTERNAL", f"cannot send the reply: {e}"))
    return await nc.subscribe(subjects.KEYVAULT_RPC_ALL, queue=QUEUE, cb=on_request)
