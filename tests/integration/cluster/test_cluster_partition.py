"""A three-server JetStream cluster (issue #20) with one server cut off by nftables on the route ports: the
majority side keeps acknowledging writes (a new stream leader elected there), the cut-off server acknowledges
none, and once the cut is lifted it catches up and holds every acknowledged message. Real nats-servers (TLS,
nkeys, routes over mutual TLS) on loopback; the rules live in an nftables table of this test's own, deleted
after it.

The cut: every packet to or from a route port is dropped except those of the route connections the two majority
servers already have between them (found with ``ss``, by process), so the third server loses its routes whichever
side opened them, and cannot open new ones."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid

import nats
import pytest
from testkit import eventually, eventually_sync

from x0tta6bl4.bus.connection import NatsCredentials
from x0tta6bl4.bus.permissions import EDGE, OPERATOR
from x0tta6bl4.runtime.stack import NatsCluster, NatsServer, Stack

pytestmark = pytest.mark.timeout(180)
STREAM = "AUDIT"
SUBJECT = "audit.edge.partition-probe"      # the edge identity may publish audit.edge.*; AUDIT stores it

needs_nft = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("ss") is None,
                               reason="needs root with nft and ss (nftables rules on loopback)")


def established(pids: dict[int, NatsServer]) -> list[tuple[int, int, int]]:
    """(local port, remote port, pid) of every established loopback TCP connection of these processes."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        m = re.search(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:(\d+).*pid=(\d+)", line)
        if m and int(m.group(3)) in pids:
            found.append((int(m.group(1)), int(m.group(2)), int(m.group(3))))
    return found


class Cut:
    """An nftables table of this test that isolates one server of a cluster on the route ports."""

    def __init__(self, cluster: NatsCluster, cut_off: NatsServer):
        self.table = f"x0tta6bl4_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        majority = {s.pid: s for s in cluster.servers if s is not cut_off}
        routes = {s.cluster_port for s in cluster.servers}
        # the route connections between the two majority servers: both ends owned by one of them
        conns = established(majority)
        owner = {local: pid for local, _, pid in conns}
        keep = sorted({(local, remote) for local, remote, pid in conns
                       if (local in routes or remote in routes) and owner.get(remote, pid) != pid})
        assert keep, f"no route between the majority servers: {conns}"
        ports = ", ".join(str(p) for p in sorted(routes))
        rules = [f"add table inet {self.table}",
                 f"add chain inet {self.table} input {{ type filter hook input priority -10; policy accept; }}"]
        rules += [f"add rule inet {self.table} input iif lo tcp sport {a} tcp dport {b} accept" for a, b in keep]
        rules += [f"add rule inet {self.table} input iif lo tcp dport {{ {ports} }} drop",
                  f"add rule inet {self.table} input iif lo tcp sport {{ {ports} }} drop"]
        self.script = "\n".join(rules) + "\n"

    def __enter__(self) -> Cut:
        subprocess.run(["nft", "-f", "-"], input=self.script, text=True, check=True)
        return self

    def lift(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True)

    def __exit__(self, *exc) -> None:
        self.lift()


async def connect(stack: Stack, servers: list[NatsServer], identity: str = EDGE):
    """A client of these servers only: the edge identity publishes the probes, the operator reads streams."""
    creds = NatsCredentials.in_secrets(stack.secrets.root, identity)
    assert creds is not None
    return await nats.connect(servers=[s.url for s in servers], name="partition-test", connect_timeout=5,
                              max_reconnect_attempts=-1, reconnect_time_wait=0.2, **creds.options())


async def publish_acked(js, n: int, acked: list[bytes], tag: str) -> None:
    """Publish ``n`` messages, each retried with the same message id until the stream acknowledges it."""
    for i in range(n):
        data, msg_id = f"{tag}-{i}".encode(), f"{tag}-{i}"

        async def ack(data: bytes = data, msg_id: str = msg_id) -> bool:
            try:
                await js.publish(SUBJECT, data, timeout=2, headers={"Nats-Msg-Id": msg_id})
            except (nats.errors.TimeoutError, nats.js.errors.Error, nats.errors.NoRespondersError) as e:
                raise AssertionError(f"{type(e).__name__}") from None
            return True
        await eventually(ack, 30, 0.2, what=f"the majority side acknowledges {msg_id}")
        acked.append(data)


async def stream_leader(js) -> str:
    async def ask() -> str:
        try:
            info = await js.stream_info(STREAM)
        except (nats.errors.TimeoutError, nats.js.errors.Error) as e:
            raise AssertionError(f"{type(e).__name__}") from None
        return info.cluster.leader if info.cluster else ""
    return await eventually(ask, 30, 0.2, what=f"a leader of {STREAM}")


async def stored(stack: Stack, servers: list[NatsServer]) -> set[bytes]:
    """Every probe message the stream holds."""
    from x0tta6bl4.bus.reader import read_all
    nc = await connect(stack, servers, OPERATOR)
    try:
        return {m.data for m in await read_all(nc.jetstream(timeout=5), SUBJECT)}
    finally:
        await nc.close()


@needs_nft
async def test_a_server_cut_off_on_its_routes_loses_nothing_acknowledged(stack_factory):
    stack = stack_factory(services=(), nats_servers=3)
    cluster = stack.nats
    assert isinstance(cluster, NatsCluster)
    nc = await connect(stack, cluster.servers)
    op = await connect(stack, cluster.servers, OPERATOR)
    acked: list[bytes] = []
    await publish_acked(nc.jetstream(timeout=5), 20, acked, "before")
    cut_off = cluster.by_name(await stream_leader(op.jetstream(timeout=5)))   # the stream's leader is cut off
    majority = [s for s in cluster.servers if s is not cut_off]
    await nc.close()
    await op.close()

    maj = await connect(stack, majority)
    maj_op = await connect(stack, majority, OPERATOR)
    minority = await connect(stack, [cut_off])
    try:
        with Cut(cluster, cut_off) as cut:
            await publish_acked(maj.jetstream(timeout=5), 30, acked, "during")   # the majority keeps working
            assert cluster.by_name(await stream_leader(maj_op.jetstream(timeout=5))) in majority, \
                "the majority elected a new leader"
            # the cut-off server acknowledges nothing (no quorum): a write there is never confirmed
            refused = []
            for i in range(3):
                try:
                    await minority.jetstream(timeout=2).publish(SUBJECT, f"minority-{i}".encode(), timeout=2,
                                                                headers={"Nats-Msg-Id": f"minority-{i}"})
                    refused.append(False)
                except (nats.errors.TimeoutError, nats.js.errors.Error, nats.errors.NoRespondersError):
                    refused.append(True)
            assert all(refused), "a server cut off from the majority acknowledged a write"
            cut.lift()
        # the cut lifted: the server rejoins, catches up and serves every acknowledged message
        eventually_sync(cut_off.healthz, 60, 0.25, what="the cut-off server is current again")

        def replica_state(server: NatsServer) -> tuple[int, int]:
            jsz = server.monitor("jsz?streams=true&accounts=true")
            return next((st["state"]["messages"], st["state"]["last_seq"]) for acc in jsz["account_details"]
                        for st in acc.get("stream_detail", []) if st["name"] == STREAM)

        def same_replicas() -> bool:
            states = {replica_state(s) for s in cluster.servers}
            assert len(states) == 1, f"{STREAM} on the three servers (messages, last sequence): {states}"
            return True
        eventually_sync(same_replicas, 30, 0.25, what=f"the rejoined server's {STREAM} replica caught up")

        async def holds_everything() -> bool:
            try:
                have = await stored(stack, cluster.servers)
            except (nats.errors.TimeoutError, nats.js.errors.Error) as e:
                raise AssertionError(f"{type(e).__name__}") from None
            missing = set(acked) - have
            assert not missing, f"{len(missing)} acknowledged messages missing"
            return True
        await eventually(holds_everything, 30, 0.5, what="every acknowledged message is stored")
        assert len(acked) == 50 and len(set(acked)) == 50
    finally:
        for c in (maj, maj_op, minority):
            await c.close()
