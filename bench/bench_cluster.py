"""What a JetStream replica costs and buys (issue #20): the same secured publishing (TLS, nkeys, the permission
table; the edge identity publishing audit.edge.* into AUDIT, awaiting each PubAck) on one nats-server (streams R1)
and on the three-server loopback cluster of ``meshctl up --nats-servers 3`` (streams R3), in the same run:

1. throughput, one publisher awaiting each ack (latency-bound) and 16 publishers in flight;
2. ack latency p50/p99 (one publisher);
3. failover: the AUDIT stream's leader killed with SIGKILL under a steady publisher - the longest gap between two
   acknowledged publishes, and whether any acknowledged message is missing afterwards.

    python bench/bench_cluster.py [--quick]

Figures measured on a loaded machine are indicative only; the servers share the machine with the publisher.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import pathlib
import statistics
import tempfile
import time

import nats

from x0tta6bl4.bus.connection import NatsCredentials
from x0tta6bl4.bus.permissions import EDGE, OPERATOR
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.runtime.stack import NatsCluster, Stack

SUBJECT = "audit.edge.bench"
PAYLOAD = b"x" * 300            # about a small audit event


async def _connect(stack: Stack, identity: str):
    creds = NatsCredentials.in_secrets(stack.secrets.root, identity)
    assert creds is not None
    return await nats.connect(servers=stack.url.split(","), name=f"bench-{identity}", max_reconnect_attempts=-1,
                              reconnect_time_wait=0.1, **creds.options())


async def throughput(js, n: int, in_flight: int, tag: str) -> dict:
    lat: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            t = time.perf_counter()
            await js.publish(SUBJECT, PAYLOAD, headers={"Nats-Msg-Id": f"{tag}-{i}"})
            lat.append(time.perf_counter() - t)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    dt = time.perf_counter() - t0
    lat.sort()
    return {"msgs_per_s": round(n / dt), "ack_p50_ms": round(statistics.median(lat) * 1e3, 2),
            "ack_p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1e3, 2)}


async def failover(stack: Stack, seconds: float) -> dict:
    """Publish steadily; kill the AUDIT leader a third of the way in (go on until an ack after it, at most 60 s):
    the longest gap between acks, the time to the first ack after the kill."""
    assert isinstance(stack.nats, NatsCluster)
    nc, op = await _connect(stack, EDGE), await _connect(stack, OPERATOR)
    js = nc.jetstream(timeout=2)
    acked: list[str] = []
    acks: list[float] = []
    leader = stack.nats.by_name((await op.jetstream().stream_info("AUDIT")).cluster.leader)
    t0 = time.perf_counter()
    killed_at = 0.0
    i = 0
    while time.perf_counter() - t0 < seconds or (killed_at and acks[-1] < killed_at
                                                   and time.perf_counter() - killed_at < 60):
        if not killed_at and time.perf_counter() - t0 > seconds / 3:
            leader.stop(kill=True)
            killed_at = time.perf_counter()
        msg_id = f"failover-{i}"
        try:
            await js.publish(SUBJECT, PAYLOAD, headers={"Nats-Msg-Id": msg_id})
            acked.append(msg_id)
            acks.append(time.perf_counter())
            i += 1
        except (nats.errors.TimeoutError, nats.js.errors.Error, nats.errors.NoRespondersError):
            await asyncio.sleep(0.05)     # the same message again (same id: stored once)
    gaps = [b - a for a, b in itertools.pairwise(acks)]
    stored = {m.headers.get("Nats-Msg-Id") for m in await read_all(op.jetstream(timeout=10), SUBJECT)
              if m.headers}
    await nc.close()
    await op.close()
    leader.start()
    return {"acked": len(acked), "missing_after": len(set(acked) - stored),
            "longest_gap_s": round(max(gaps), 2) if gaps else None,
            "first_ack_after_kill_s": round(min((a for a in acks if a > killed_at), default=float("nan"))
                                            - killed_at, 2)}


async def measure(stack: Stack, n: int) -> dict:
    nc = await _connect(stack, EDGE)
    js = nc.jetstream(timeout=10)
    await throughput(js, 200, 4, "warm")
    out = {"one_in_flight": await throughput(js, n, 1, "one"),
           "sixteen_in_flight": await throughput(js, n * 4, 16, "sixteen")}
    await nc.close()
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    n = 500 if args.quick else 3000
    result: dict = {"payload_bytes": len(PAYLOAD), "note": "measured on this machine; under load, indicative only"}
    with tempfile.TemporaryDirectory() as d:
        for label, servers in (("single_server_R1", 1), ("cluster_3_R3", 3)):
            stack = Stack(pathlib.Path(d) / label, services=(), nats_servers=servers)
            try:
                stack.start_nats()
                result[label] = asyncio.run(measure(stack, n))
                if servers == 3:
                    result[label]["failover"] = asyncio.run(failover(stack, 6 if args.quick else 12))
            finally:
                stack.stop()
    for k in ("one_in_flight", "sixteen_in_flight"):
        result[f"r3_over_r1_{k}"] = round(result["cluster_3_R3"][k]["msgs_per_s"]
                                          / result["single_server_R1"][k]["msgs_per_s"], 2)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
