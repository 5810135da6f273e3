"""A real nats-server + a real keyvault process (Stack) with a known gRPC port; the test speaks to it over
mutual TLS as an operator (an SVID minted with the stack's CA key, see :func:`channel`)."""
from __future__ import annotations

import asyncio
import os
import pathlib
import time
from dataclasses import dataclass

import grpc
import pytest

from x0tta6bl4.keyvault import certify as cert
from x0tta6bl4.pqc import NodeIdentity, recipient_keygen, unwrap_bundle
from x0tta6bl4.rpc import svid as svids
from x0tta6bl4.runtime.stack import Stack, free_port
from x0tta6bl4.v1 import keyvault_pb2 as pb
from x0tta6bl4.v1 import keyvault_pb2_grpc

TD = "x0tta6bl4.mesh"


def certify_pb(ident: NodeIdentity, *, overlap_s: float = 0.0, nonce: bytes | None = None,
               now: float | None = None) -> pb.CertifyKeysRequest:
    """The CertifyKeys request a node (or its mesh host) sends for keys it generated itself."""
    r = cert.certify_request(ident, nonce or os.urandom(16), now)
    return pb.CertifyKeysRequest(node_id=r.node_id, signing_public_key=r.signing_public_key,
                                 kem_public_key=r.kem_public_key, nonce=r.nonce, timestamp_unix=r.timestamp,
                                 proof=r.proof, overlap_s=overlap_s)


def certify_new(stub: keyvault_pb2_grpc.KeyvaultStub, node: str, generation: int = 1,
                overlap_s: float = 0.0) -> tuple[NodeIdentity, pb.KeyRecord]:
    """Generate ``node``'s keys here (as its mesh host would) and have keyvault certify them."""
    ident = NodeIdentity.generate(TD, node, now=time.time(), generation=generation)
    return ident, stub.CertifyKeys(certify_pb(ident, overlap_s=overlap_s), timeout=30)


def export(stub: keyvault_pb2_grpc.KeyvaultStub, node: str) -> NodeIdentity:
    """A custodial identity's private keys, exported (once) wrapped to a fresh recipient key and unwrapped here."""
    priv, pub = recipient_keygen()
    r = stub.ExportIdentity(pb.ExportIdentityRequest(node_id=node, recipient_kem_public_key=pub), timeout=10)
    return NodeIdentity.import_private(unwrap_bundle(r.wrapped_bundle, priv)[1])


def svid_for(stack: Stack, kind: str = "operator", name: str = "tester", ttl_s: float = 900) -> svids.Svid:
    """An SVID of ``spiffe://<td>/<kind>/<name>`` from the stack's CA."""
    assert stack.secrets is not None
    return svids.mint(stack.secrets.root, kind, name, ttl_s=ttl_s)


def channel(stack: Stack, addr: str, svid: svids.Svid | None = None, service: str = "keyvault") -> grpc.Channel:
    """A mutual-TLS channel to ``service`` at ``addr`` presenting ``svid`` (default: an operator's)."""
    return svids.secure_channel(addr, svid or svid_for(stack), service, TD)


def stub_as(kv: Keyvault, kind: str, name: str, ttl_s: float = 900) -> keyvault_pb2_grpc.KeyvaultStub:
    ch = channel(kv.stack, kv.addr, svid_for(kv.stack, kind, name, ttl_s))
    kv.extra_channels.append(ch)
    return keyvault_pb2_grpc.KeyvaultStub(ch)


@dataclass
class Keyvault:
    stack: Stack
    port: int
    channel: grpc.Channel
    stub: keyvault_pb2_grpc.KeyvaultStub

    def __post_init__(self) -> None:
        self.extra_channels: list[grpc.Channel] = []

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> pathlib.Path:
        return self.stack.data_dir

    @property
    def nats_url(self) -> str:
        return self.stack.url

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted((self.data_dir / "logs").glob("keyvault-*.log")))

    def restart(self, kill: bool = True) -> None:
        for sp in [p for p in self.stack.procs if p.name == "keyvault"]:
            self.stack.stop_service(sp, kill=kill)
        self.stack.start_service("keyvault")
        self.stack.wait_ready(30)
        grpc.channel_ready_future(self.channel).result(timeout=10)

    def nats(self, coro_fn, identity: str = "operator"):
        """Run ``coro_fn(nc)`` with a fresh NATS connection as ``identity`` (the operator by default)."""
        async def go():
            nc = await self.stack.connect(identity)
            try:
                return await coro_fn(nc)
            finally:
                await nc.close()
        return asyncio.run(go())


def start_keyvault(data_dir: pathlib.Path, env: dict | None = None) -> Keyvault:
    port = free_port()
    st = Stack(data_dir, services=("keyvault",),
               env={"X0TTA6BL4_GRPC_PORT": str(port), "X0TTA6BL4_RETIRE_TICK_S": "0.1", **(env or {})})
    t0 = time.monotonic()
    st.start(30)
    ch = channel(st, f"127.0.0.1:{port}")
    grpc.channel_ready_future(ch).result(timeout=10)
    kv = Keyvault(st, port, ch, keyvault_pb2_grpc.KeyvaultStub(ch))
    kv.started_in = time.monotonic() - t0  # type: ignore[attr-defined]
    return kv


@pytest.fixture(scope="module")
def keyvault(tmp_path_factory):
    kv = start_keyvault(tmp_path_factory.mktemp("kv"))
    yield kv
    kv.channel.close()
    kv.stack.stop()


@pytest.fixture
def fresh_keyvault(tmp_path):
    made = []

    def make(env: dict | None = None, name: str = "kv") -> Keyvault:
        kv = start_keyvault(tmp_path / name, env)
        made.append(kv)
        return kv

    yield make
    for kv in made:
        kv.channel.close()
        kv.stack.stop()


def start_replica(nats_server, data_dir: pathlib.Path, env: dict | None = None, wait: bool = True,
                  secrets=None) -> Keyvault:
    """A keyvault process with its own data dir on a shared nats-server (another machine, as far as
    keyvault can tell: nothing on disk is shared but the deployment's secrets, ``secrets``)."""
    port = free_port()
    st = Stack(data_dir, services=("keyvault",), nats=nats_server, secrets=secrets,
               env={"X0TTA6BL4_GRPC_PORT": str(port), "X0TTA6BL4_RETIRE_TICK_S": "0.1", **(env or {})})
    st.start_service("keyvault")
    if not wait:
        return Keyvault(st, port, None, None)  # type: ignore[arg-type]
    st.wait_ready(30)
    ch = channel(st, f"127.0.0.1:{port}")
    grpc.channel_ready_future(ch).result(timeout=10)
    return Keyvault(st, port, ch, keyvault_pb2_grpc.KeyvaultStub(ch))


@pytest.fixture
def replicas(tmp_path):
    """make(name, env) -> a keyvault replica with data dir tmp_path/name, all on one nats-server."""
    from x0tta6bl4.runtime.secrets import init as init_secrets
    from x0tta6bl4.runtime.stack import NatsServer
    secrets = init_secrets(tmp_path / "secrets")        # one deployment: one CA, one keyvault root
    server = NatsServer(tmp_path / "jetstream", log_file=tmp_path / "nats.log", secrets=secrets).start()
    server.provision()                                  # secured: streams and buckets by the provisioner
    made: list[Keyvault] = []

    def make(name: str, env: dict | None = None, wait: bool = True) -> Keyvault:
        kv = start_replica(server, tmp_path / name, env, wait, secrets)
        made.append(kv)
        return kv

    make.nats = server  # type: ignore[attr-defined]
    yield make
    for kv in made:
        if kv.channel is not None:
            kv.channel.close()
        for sp in list(kv.stack.procs):
            kv.stack.stop_service(sp, kill=True)
    server.stop()
