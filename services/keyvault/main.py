"""Keyvault: PQC identities and keys (use cases in :mod:`x0tta6bl4.keyvault.service`): the master key
(:mod:`.keystore`), the shared state on JetStream (:mod:`.state`), gRPC with mutual TLS and a policy on
every call (:mod:`.api`), NATS request/reply and X.509 SVIDs for the other services (:mod:`.rpc`) and a
tick retiring keys whose overlap window passed."""
from __future__ import annotations

import asyncio
import functools
import logging
import pathlib
import sys
from typing import Any

from pydantic import Field, SecretStr

from services.keyvault import api, rpc
from services.keyvault.keystore import open_keystore
from services.keyvault.state import BUCKET, SharedVault, StateError
from x0tta6bl4.bus.app import Service, run_service
from x0tta6bl4.bus.reader import kv_snapshot
from x0tta6bl4.config import CommonSettings, ConfigError
from x0tta6bl4.keyvault import distribution as dist
from x0tta6bl4.keyvault import pin
from x0tta6bl4.keyvault.service import KeyvaultService, retire_loop
from x0tta6bl4.keyvault.svid import SvidConfigError, SvidIssuer, spiffe_id
from x0tta6bl4.policy import PolicyEngine
from x0tta6bl4.rpc.server import BindError, GrpcServer, ServerIdentity
from x0tta6bl4.rpc.svid import SvidSource, obtain_local

log = logging.getLogger("x0tta6bl4.keyvault")


class KeyvaultSettings(CommonSettings):
    grpc_host: str = Field("127.0.0.1", description="gRPC listen address (mutual TLS with X.509 SVIDs)")
    grpc_port: int = Field(50052, ge=0, le=65535, description="gRPC port (0 = random, logged)")
    master_key: SecretStr | None = Field(None, description="keystore master key: 64 hex chars or base64 of 32 bytes")
    master_key_file: pathlib.Path | None = Field(None, description="file holding the master key (raw 32 bytes or text)")
    rotation_overlap_s: float = Field(30.0, gt=0, le=7 * 86400, description="default overlap window of a rotation")
    rotation_wait_s: float = Field(10.0, ge=0, le=300, description=(
        "how long Rotate waits for node-held identities to certify their next generation (their rotation "
        "request stays pending after it)"))
    key_validity_s: int = Field(90 * 86400, ge=60, description="validity of issued keys")
    retire_tick_s: float = Field(0.2, gt=0, le=60, description="how often retiring keys are checked")
    ca_cert_file: pathlib.Path | None = Field(None, description="the deployment CA certificate (SVID trust bundle)")
    ca_key_file: pathlib.Path | None = Field(None, description="the deployment CA key: keyvault issues the SVIDs")
    svid_ttl_s: float = Field(3600.0, ge=10, le=30 * 86400, description="validity of issued X.509 SVIDs")
    hosts_file: pathlib.Path | None = Field(None, description="mesh hosts and the nodes each acts for (hosts.json)")
    keyvault_root_key_file: pathlib.Path | None = Field(None, description=(
        "the deployment's root ML-DSA-65 seed (meshctl secrets init): the root of a bucket that has none"))
    keyvault_root_fingerprint: str | None = Field(None, description=(
        "sha256:<hex> of the root public key every verifier pins; keyvault refuses to serve another root"))

    def svid_issuer(self) -> SvidIssuer:
        """The SVID issuer on the deployment CA; ConfigError naming the missing or bad setting."""
        for name in ("ca_cert_file", "ca_key_file"):
            if getattr(self, name) is None:
                raise ConfigError(f"X0TTA6BL4_{name.upper()} is not set: keyvault issues the X.509 SVIDs of every "
                                  "gRPC service from the deployment CA (meshctl secrets init makes it)")
        try:
            return SvidIssuer.load(self.ca_key_file, self.ca_cert_file, self.trust_domain,  # type: ignore[arg-type]
                                   ttl_s=self.svid_ttl_s)
        except SvidConfigError as e:
            raise ConfigError(str(e)) from None

    def root_key(self) -> bytes | None:
        if self.keyvault_root_key_file is None:
            return None
        try:
            return self.keyvault_root_key_file.read_bytes()
        except OSError as e:
            raise ConfigError(f"X0TTA6BL4_KEYVAULT_ROOT_KEY_FILE={self.keyvault_root_key_file}: {e.strerror}") from None


class KeyvaultApp(Service):
    grpc: GrpcServer | None = None

    @property
    def ready(self) -> bool:   # once gRPC serves too
        return super().ready and self.grpc is not None


def build(s: KeyvaultSettings) -> Service:
    mk, keystore, note = open_keystore(s.master_key, s.master_key_file, s.data_dir)
    issuer, root_key = s.svid_issuer(), s.root_key()
    if s.keyvault_root_fingerprint:
        try:
            pinned = pin.normalize(s.keyvault_root_fingerprint)
        except pin.RootPinError as e:
            raise ConfigError(str(e)) from None
    app = KeyvaultApp("keyvault", s)
    # its state lives in this bucket: on a secured bus the service waits for the provisioner to declare it (a
    # keyvault started right after the provisioning job, on a cluster still settling, exited with a traceback)
    app.needed_buckets.add(BUCKET)
    parts: dict[str, Any] = {}
    own_id = spiffe_id(s.trust_domain, "service", "keyvault")
    svid = SvidSource(lambda: asyncio.to_thread(obtain_local, issuer, own_id), name="keyvault")
    hosts = api.HostsFile(s.hosts_file)
    policy = PolicyEngine(s.trust_domain, hosts)

    @app.on_startup
    async def start() -> None:
        log.info("%s; local keystore %s", note, keystore.directory)
        js = app.nc.jetstream()
        try:
            state, created, copied = await SharedVault.open(js, mk, keystore, s.trust_domain, root_key=root_key,
                                                            validity_s=s.key_validity_s,
                                                            default_overlap_s=s.rotation_overlap_s)
        except StateError as e:
            print(f"keyvault: config error: cannot open the shared keyvault state: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        root_fp = pin.fingerprint(state.vault.root_public)
        if s.keyvault_root_fingerprint and root_fp != pinned:
            await state.close()
            print(f"keyvault: config error: the root key of the shared keyvault state is {root_fp}, but "
                  f"X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT pins {pinned}: every verifier would refuse its records "
                  f"(a keyvault state from before the root was pinned: pin {root_fp} everywhere, or start afresh)",
                  file=sys.stderr, flush=True)
            raise SystemExit(2)
        if not s.keyvault_root_fingerprint:
            log.warning("keyvault: root fingerprint %s is not pinned here; pin it in every verifier as "
                        "X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT", root_fp)
        parts["svc"] = svc = KeyvaultService(state, await app.kv(dist.BUCKET), app.audit,
                                             snapshot=functools.partial(kv_snapshot, js, dist.BUCKET),
                                             hosted=lambda: frozenset().union(*hosts().values()),
                                             rotation_wait_s=s.rotation_wait_s)
        parts["state"] = state
        n = await svc.opened(created, copied)
        log.info("keyvault: %d identities, root key %s%s, %d copied up, %d records resynced", len(state.vault.entries),
                 state.vault.root_key_id, " (new)" if created else "", copied, n)
        handlers = api.KeyvaultApi(svc)
        await svid.start()
        bus_secured = s.nats_nkey_file is not None
        parts["svid_sub"] = await rpc.subscribe_svid(app.nc, issuer, app.audit, bus_secured)
        parts["sub"] = await rpc.subscribe(app.nc, handlers, policy, app.audit)
        try:
            app.grpc = await api.serve(handlers, s.grpc_host, s.grpc_port, ServerIdentity(svid, policy, app.audit))
        except BindError as e:
            raise SystemExit(str(e)) from None
        log.info("keyvault: root %s; SVIDs valid %g s from CA %s", root_fp, s.svid_ttl_s, s.ca_cert_file)

    @app.background
    async def retire() -> None:
        await retire_loop(lambda: parts["svc"], s.retire_tick_s)

    @app.on_shutdown
    async def stop() -> None:
        for name in ("sub", "svid_sub"):
            if name in parts:
                await parts[name].unsubscribe()
        if app.grpc is not None:
            server, app.grpc = app.grpc, None      # not ready from here on
            await server.stop(1.0)
        if "state" in parts:
            await parts["state"].close()
        await svid.stop()

    return app


def main() -> None:
    run_service("keyvault", KeyvaultSettings, build)


if __name__ == "__main__":
    main()
