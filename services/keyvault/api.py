"""The keyvault's RPC methods: protobuf in, the application service, protobuf out.

:class:`KeyvaultApi` is shared by the gRPC servicer (:func:`servicer`, errors become status codes)
and the NATS request/reply routing (:mod:`.rpc`); ``via`` says which one called ("grpc" or "nats":
ExportIdentity, the one method that hands out private keys - wrapped, once - is gRPC only).
"""
from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Mapping

import grpc

from services.keyvault import convert
from x0tta6bl4.keyvault import certify as cert
from x0tta6bl4.keyvault.errors import KeyvaultError
from x0tta6bl4.keyvault.service import VIA_GRPC, KeyvaultService
from x0tta6bl4.rpc.server import GrpcServer, ServerIdentity, serve_grpc
from x0tta6bl4.v1 import keyvault_pb2 as pb
from x0tta6bl4.v1 import keyvault_pb2_grpc as pb_grpc

log = logging.getLogger("x0tta6bl4.keyvault")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Keyvault"].full_name
GRPC_OPTIONS = (("grpc.max_send_message_length", 64 * 1024 * 1024),      # ListIdentities / Rotate all
                ("grpc.max_receive_message_length", 4 * 1024 * 1024))


class KeyvaultApi:
    def __init__(self, service: KeyvaultService) -> None:
        self.service = service

    @property
    def root(self) -> str:
        return self.service.vault.root_key_id

    async def IssueIdentity(self, req: pb.IssueIdentityRequest, via: str) -> pb.IssueIdentityResponse:
        return convert.issued(self.root, await self.service.issue(req.node_id, via))

    async def GetPublicKeys(self, req: pb.GetPublicKeysRequest, via: str) -> pb.KeyRecord:
        return convert.identity(self.root, await self.service.public_keys(req.node_id))

    async def ListIdentities(self, req: pb.ListIdentitiesRequest, via: str) -> pb.ListIdentitiesResponse:
        entries = await self.service.list_identities(req.include_revoked)
        return pb.ListIdentitiesResponse(records=[convert.listed(self.root, e) for e in entries])

    async def Rotate(self, req: pb.RotateRequest, via: str) -> pb.RotateResponse:
        entries = await self.service.rotate(list(req.node_ids), req.all, req.overlap_s, req.request_id, via,
                                            include_operators=req.include_operators, wait_s=req.wait_s)
        return convert.rotated(self.root, entries)

    async def Revoke(self, req: pb.RevokeRequest, via: str) -> pb.KeyRecord:
        return convert.identity(self.root, await self.service.revoke(req.node_id, req.reason, via))

    async def Attest(self, req: pb.AttestRequest, via: str) -> pb.AttestResponse:
        return convert.attest_response(await self.service.attest(req.node_id, req.challenge, req.signature))

    async def Info(self, req: pb.InfoRequest, via: str) -> pb.InfoResponse:
        return convert.info_response(await self.service.info())

    async def CertifyKeys(self, req: pb.CertifyKeysRequest, via: str) -> pb.KeyRecord:
        r = cert.CertifyRequest(req.node_id, req.signing_public_key, req.kem_public_key, req.nonce,
                                req.timestamp_unix, req.proof)
        return convert.identity(self.root, await self.service.certify(r, req.overlap_s, via))

    async def ExportIdentity(self, req: pb.ExportIdentityRequest, via: str) -> pb.ExportIdentityResponse:
        e, wrapped, kid = await self.service.export_identity(req.node_id, req.recipient_kem_public_key, via)
        return pb.ExportIdentityResponse(record=convert.key_record(self.root, e, e.current), wrapped_bundle=wrapped,
                                         recipient_key_id=kid, exported_at_unix=e.current.exported_at)


METHODS: dict[str, type] = {
    "IssueIdentity": pb.IssueIdentityRequest, "GetPublicKeys": pb.GetPublicKeysRequest,
    "Rotate": pb.RotateRequest, "Revoke": pb.RevokeRequest, "ListIdentities": pb.ListIdentitiesRequest,
    "Attest": pb.AttestRequest, "Info": pb.InfoRequest, "CertifyKeys": pb.CertifyKeysRequest,
    "ExportIdentity": pb.ExportIdentityRequest,
}
"""Every method and its request type (the gRPC service and keyvault.rpc.<method> on NATS)."""


def servicer(api: KeyvaultApi) -> pb_grpc.KeyvaultServicer:
    """The gRPC servicer: each method calls the API with via "grpc"; a KeyvaultError becomes its
    status code with its message."""
    def method(name: str):
        async def call(self, request, context: grpc.aio.ServicerContext):
            try:
                return await getattr(api, name)(request, VIA_GRPC)
            except KeyvaultError as e:
                await context.abort(getattr(grpc.StatusCode, e.code), str(e))
        call.__name__ = name
        return call
    cls = type("KeyvaultServicer", (pb_grpc.KeyvaultServicer,), {n: method(n) for n in METHODS})
    return cls()


async def serve(api: KeyvaultApi, host: str, port: int, identity: ServerIdentity) -> GrpcServer:
    """gRPC ``x0tta6bl4.v1.Keyvault`` with health and reflection on ``host:port`` (0: a free port, logged),
    mutual TLS with keyvault's SVID and the policy on every call; BindError naming the address when it
    cannot listen."""
    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_KeyvaultServicer_to_server(servicer(api), server)
    return await serve_grpc("keyvault", host, port, [add], service_names=[SERVICE_NAME], options=GRPC_OPTIONS,
                            identity=identity)


class HostsFile:
    """The mesh hosts of the deployment and the nodes each acts for (``<secrets>/hosts.json``, written by
    ``meshctl mesh up`` / ``Stack.add_mesh_host``): re-read when it changes, so a host added while keyvault
    runs is known on its first call. A missing file: no hosts; a damaged one: the last good content."""

    def __init__(self, path: pathlib.Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._hosts: dict[str, frozenset[str]] = {}

    def __call__(self) -> Mapping[str, frozenset[str]]:
        if self.path is None:
            return self._hosts
        try:
            st = self.path.stat()
        except OSError:
            self._stamp, self._hosts = None, {}
            return self._hosts
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text())
                self._hosts = {str(h): frozenset(str(n) for n in nodes) for h, nodes in data.items()}
                self._stamp = stamp
            except (OSError, ValueError, AttributeError, TypeError) as e:
                log.error("hosts file %s unreadable (%s); keeping the last good one", self.path, e)
        return self._hosts
