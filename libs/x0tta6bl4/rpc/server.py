"""One way to start a gRPC server: servicers, grpc.health.v1, server reflection, a clear bind error,
the chosen port written where the CLI finds it, and a graceful stop.

    server = await serve_grpc("governance", settings.grpc_host, settings.grpc_port,
                              [lambda s: gpb_grpc.add_GovernanceServicer_to_server(servicer, s)],
                              service_names=[SERVICE_NAME], port_file=run_dir / "governance-x.grpc")
    ...
    await server.stop()
"""
from __future__ import annotations

import logging
import pathlib
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger("x0tta6bl4.rpc")


class BindError(RuntimeError):
    """The server cannot listen on the address it was given."""


@dataclass
class GrpcServer:
    name: str
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    host: str
    port: int
    service_names: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self, grace: float = 1.0) -> None:
        """Report NOT_SERVING, then stop, letting calls in flight finish for ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def serve_grpc(name: str, host: str, port: int,
                     add_servicers: Iterable[Callable[[grpc.aio.Server], None]],
                     *, service_names: Sequence[str] = (), options: Sequence[tuple[str, object]] = (),
                     port_file: pathlib.Path | None = None, announce: bool = True) -> GrpcServer:
    """Start a gRPC server for ``name`` on ``host:port`` (0: any free port) and mark it SERVING.

    ``add_servicers`` are the generated ``add_XServicer_to_server`` calls bound to their servicers;
    ``service_names`` the full names they serve (for health and reflection). Raises :class:`BindError`
    naming the address when it cannot listen.
    """
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *options])
    for add in add_servicers:
        add(server)
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    names = tuple(service_names)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
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
    log.info("%s: gRPC listening on %s:%d", name, host, bound)
    if announce:
        print(f"{name}: gRPC listening on {host}:{bound}", file=sys.stderr, flush=True)
    return GrpcServer(name, server, hs, host, bound, names)
