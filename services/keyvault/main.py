"""Keyvault: PQC identities and keys (use cases in :mod:`x0tta6bl4.keyvault.service`): the master key
(:mod:`.keystore`), the shared state on JetStream (:mod:`.state`), gRPC (:mod:`.api`), NATS
request/reply (:mod:`.rpc`) and a tick retiring keys whose overlap window passed."""
from __future__ import annotations

import functools
import logging
import pathlib
import sys
from typing import Any

from pydantic import Field, SecretStr

from services.keyvault import api, rpc
from services.keyvault.keystore import open_keystore
from services.keyvault.state import SharedVault, StateError
from x0tta6bl4.bus.app import Service, run_service
from x0tta6bl4.bus.reader import kv_snapshot
from x0tta6bl4.config import CommonSettings
from x0tta6bl4.keyvault import distribution as dist
from x0tta6bl4.keyvault.service import KeyvaultService, retire_loop
from x0tta6bl4.rpc.server import BindError, GrpcServer

log = logging.getLogger("x0tta6bl4.keyvault")


class KeyvaultSettings(CommonSettings):
    grpc_host: str = Field("127.0.0.1", description="gRPC listen address (no TLS: loopback or a private net)")
    grpc_port: int = Field(50052, ge=0, le=65535, description="gRPC port (0 = random, logged)")
    master_key: SecretStr | None = Field(None, description="keystore master key: 64 hex chars or base64 of 32 bytes")
    master_key_file: pathlib.Path | None = Field(None, description="file holding the master key (raw 32 bytes or text)")
    rotation_overlap_s: float = Field(30.0, gt=0, le=7 * 86400, description="default overlap window of a rotation")
    key_validity_s: int = Field(90 * 86400, ge=60, description="validity of issued keys")
    retire_tick_s: float = Field(0.2, gt=0, le=60, description="how often retiring keys are checked")


class KeyvaultApp(Service):
    grpc: GrpcServer | None = None

    @property
    def ready(self) -> bool:   # once gRPC serves too
        return super().ready and self.grpc is not None


def build(s: KeyvaultSettings) -> Service:
    mk, keystore, note = open_keystore(s.master_key, s.master_key_file, s.data_dir)
    app = KeyvaultApp("keyvault", s)
    parts: dict[str, Any] = {}

    @app.on_startup
    async def start() -> None:
        log.info("%s; local keystore %s", note, keystore.directory)
        js = app.nc.jetstream()
        try:
            state, created, copied = await SharedVault.open(js, mk, keystore, s.trust_domain,
                                                            validity_s=s.key_validity_s,
                                                            default_overlap_s=s.rotation_overlap_s)
        except StateError as e:
            print(f"keyvault: config error: cannot open the shared keyvault state: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        parts["svc"] = svc = KeyvaultService(state, await app.kv(dist.BUCKET), app.audit,
                                             snapshot=functools.partial(kv_snapshot, js, dist.BUCKET))
        parts["state"] = state
        n = await svc.opened(created, copied)
        log.info("keyvault: %d identities, root key %s%s, %d copied up, %d records resynced", len(state.vault.entries),
                 state.vault.root_key_id, " (new)" if created else "", copied, n)
        handlers = api.KeyvaultApi(svc)
        try:
            app.grpc = await api.serve(handlers, s.grpc_host, s.grpc_port)
        except BindError as e:
            raise SystemExit(str(e)) from None
        parts["sub"] = await rpc.subscribe(app.nc, handlers)

    @app.background
    async def retire() -> None:
        await retire_loop(lambda: parts["svc"], s.retire_tick_s)

    @app.on_shutdown
    async def stop() -> None:
        if "sub" in parts:
            await parts["sub"].unsubscribe()
        if app.grpc is not None:
            server, app.grpc = app.grpc, None      # not ready from here on
            await server.stop(1.0)
        if "state" in parts:
            await parts["state"].close()

    return app


def main() -> None:
    run_service("keyvault", KeyvaultSettings, build)


if __name__ == "__main__":
    main()
