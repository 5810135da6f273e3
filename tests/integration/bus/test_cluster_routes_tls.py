"""Cluster routes over mutual TLS (issue #16: "TLS on client connections (and on cluster routes when clustered)";
the cluster itself is issue #20). `meshctl secrets init` makes a route certificate; Secrets.cluster_block() gives
nats-server a cluster block whose routes present it and accept only a peer presenting that certificate (signed
by the deployment CA, its public key pinned). Real nats-servers on loopback: two of one deployment form a
cluster and carry an authenticated client's message across the route; a server of another deployment (another
CA), one without TLS on its routes, and one presenting another certificate of the same CA are refused."""
from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import urllib.request

import pytest
from testkit import eventually, eventually_sync

from x0tta6bl4.bus.permissions import EDGE, OPERATOR
from x0tta6bl4.runtime.secrets import init as init_secrets
from x0tta6bl4.runtime.stack import free_port, nats_server_binary

pytestmark = pytest.mark.timeout(120)
REFUSED = "TLS route handshake error"


class Server:
    def __init__(self, tmp, name: str, secrets):
        self.tmp, self.name, self.secrets = tmp, name, secrets
        self.port, self.cluster_port, self.http_port = free_port(), free_port(), free_port()
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, routes: list[Server], *, tls: bool = True, cert_of_another_kind: bool = False) -> Server:
        tmp, name, secrets = self.tmp, self.name, self.secrets
        block = secrets.cluster_block(self.cluster_port, [f"nats-route://127.0.0.1:{r.cluster_port}" for r in routes])
        if not tls:
            block.pop("tls")
        if cert_of_another_kind:        # signed by the same CA, but not the route certificate
            block["tls"].update(cert_file=str(secrets.server_cert), key_file=str(secrets.server_key))
        conf = tmp / f"{name}.json"
        conf.write_text(secrets.nats_config(self.port, tmp / f"js-{name}", name=name, http_port=self.http_port,
                                            cluster=block))
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(conf), "-l", str(self.log)],
                                     stderr=subprocess.DEVNULL)
        return self

    def routez(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/routez", timeout=2) as r:
            return json.loads(r.read())

    def peers(self) -> set[str]:
        return {r.get("remote_name", "") for r in self.routez()["routes"]}

    def up(self) -> bool:
        try:
            self.routez()
        except OSError:
            return False
        return True

    def refusals(self) -> int:
        try:
            return self.log.read_text(errors="replace").count(REFUSED)
        except OSError:
            return 0

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    async def connect(self, identity: str, **kw):
        import nats

        from x0tta6bl4.bus.connection import NatsCredentials
        creds = NatsCredentials.in_secrets(self.secrets.root, identity)
        return await nats.connect(servers=[f"tls://127.0.0.1:{self.port}"], connect_timeout=5, **creds.options(),
                                  **kw)


async def test_cluster_routes_need_the_deployments_route_certificate(tmp_path):
    sec = init_secrets(tmp_path / "secrets")
    assert sec.route_cert.is_file() and stat.S_IMODE(sec.route_key.stat().st_mode) == 0o600
    rogue = init_secrets(tmp_path / "other-deployment")
    servers: list[Server] = []
    try:
        a, b = Server(tmp_path, "a", sec), Server(tmp_path, "b", sec)
        servers += [a.start([b]), b.start([a])]
        eventually_sync(lambda: a.up() and b.up(), 30, 0.1, what="a and b serve their monitoring port")
        eventually_sync(lambda: a.peers() == {"b"} and b.peers() == {"a"}, 30, 0.2,
                        what="a and b form a cluster over TLS routes")
        assert a.refusals() == 0

        # an operator on a hears what the edge identity publishes on b: the route carries authenticated traffic
        got: list[bytes] = []
        op = await a.connect(OPERATOR)
        edge = await b.connect(EDGE)
        try:
            async def on_msg(m):
                got.append(m.data)
            await op.subscribe("audit.edge.>", cb=on_msg)
            await op.flush()

            async def delivered() -> bool:
                await edge.publish("audit.edge.route-probe", b"across the route")
                await edge.flush()
                await asyncio.sleep(0.05)
                return b"across the route" in got
            await eventually(delivered, 20, 0.2, what="a message published on b reaches a subscriber on a")
        finally:
            await edge.close()
            await op.close()

        # refused: another deployment's CA; no TLS on the route; the same CA's certificate that is not the route's
        for name, secrets, kw in (("rogue-ca", rogue, {}), ("plaintext", sec, {"tls": False}),
                                  ("other-cert", sec, {"cert_of_another_kind": True})):
            before = a.refusals()
            bad = Server(tmp_path, name, secrets).start([a], **kw)
            servers.append(bad)
            eventually_sync(lambda before=before: a.refusals() > before, 30, 0.2,
                            what=f"a refuses the route of the server with {name}")
            eventually_sync(bad.up, 30, 0.1, what=f"the server with {name} serves its monitoring port")
            assert bad.peers() == set(), f"{name}: {bad.peers()}"
            assert a.peers() == {"b"} and b.peers() == {"a"}
            bad.stop()
    finally:
        for s in servers:
            s.stop()
