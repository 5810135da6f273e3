"""Benchmark mesh security: per-packet sign/verify/seal/open cost as a ratio to the raw backend
call in the same run, steady-state CPU of signed HELLOs, and rotation of all keys of a 50-node
mesh under traffic -- start (Rotate sent to keyvault over NATS, as the executor does) to verified
(every node's RELOAD_KEYS answered with its beacon accepted by all its neighbours under the new
key), channels re-keyed, and DATA packets lost over the whole rotation.

Real nats-server + keyvault process (Stack); the 50 agents run in ``--hosts`` host processes
(mesh.cluster: each a MeshHost with a shard of the grid, agents talking UDP on loopback across
processes); the benchmark drives them like the executor does: Rotate over NATS, then
RELOAD_KEYS to every node on ``mesh.cmd.<node>``; DATA flows and counts come from the hosts
(host_op ``traffic`` / ``stats``).

    python bench/bench_meshsec.py [--nodes 50] [--hosts 2] [--quick]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "libs"))
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from x0tta6bl4.bus import subjects
from x0tta6bl4.mesh.cluster import MeshCluster
from x0tta6bl4.mesh.packets import DATA, HELLO, HelloBody, HelloNeighbour, Packet, encode, signing_bytes
from x0tta6bl4.mesh.security import SIG_CONTEXT, LocalAuthority, NodeSecurity, _aad
from x0tta6bl4.mesh.topology import parse_spec
from x0tta6bl4.runtime.stack import Stack, free_port
from x0tta6bl4.v1 import keyvault_pb2 as pb
from x0tta6bl4.v1 import mesh_pb2

TARGET_S = 2.0


def report(name: str, value: float, unit: str) -> None:
    print(f"{name:<78} {value:>12.3f} {unit}", flush=True)


def _t(fn, n: int) -> float:
    best = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - t0) / n)
    return min(best)


def per_packet(n: int) -> None:
    auth = LocalAuthority()
    a, b = auth.issue("n0"), auth.issue("n1")
    trust = auth.trust(cache_size=0)          # cache off: every check really verifies
    cached = auth.trust()
    sec = NodeSecurity("n0", a, trust)
    now = time.monotonic_ns()
    hello = Packet(HELLO, "n0", "n0", "", ttl=1, origin_seq=1, timestamp_ns=now,
                   body=HelloBody(0, tuple(HelloNeighbour(f"n{i}", 3, now, 100) for i in range(1, 5))))
    signed = sec.sign(hello)
    raw = encode(signed)
    region = signing_bytes(signed)
    sk, vk = a.signing.private.mldsa, a.signing.public_key.mldsa
    t_raw_sign = _t(lambda: sk.sign(region, SIG_CONTEXT), n)
    t_sign = _t(lambda: sec.sign(hello), n)
    t_raw_verify = _t(lambda: vk.verify(signed.signature, region, SIG_CONTEXT), n)
    t_verify = _t(lambda: trust.check(signed, raw, time.monotonic_ns()), n)
    cached.check(signed, raw, time.monotonic_ns())
    t_hit = _t(lambda: cached.check(signed, raw, time.monotonic_ns()), n)
    report("ML-DSA-65 sign, raw backend call (HELLO signed region)", t_raw_sign * 1e3, "ms")
    report("NodeSecurity.sign(packet) (encode + sign) / raw sign", t_sign / t_raw_sign, "x")
    report("ML-DSA-65 verify, raw backend call", t_raw_verify * 1e3, "ms")
    report("MeshTrust.check(packet), cache miss / raw verify", t_verify / t_raw_verify, "x")
    report("MeshTrust.check(packet), cache hit (other receivers of a HELLO) / raw verify",
           t_hit / t_raw_verify, "x")
    # channel seal/open vs raw AES-256-GCM on the same payload
    from x0tta6bl4.pqc import HandshakeInitiator, HandshakeResponder, Role, SecureChannel
    t0 = time.perf_counter()
    hi = HandshakeInitiator(a, b.uri, b.kem.public_key, b.signing.public_key)
    hr = HandshakeResponder(b, lambda uri: a.signing.public_key)
    m3, ki = hi.finish(hr.respond(hi.start()))
    kr = hr.finish(m3)
    report("hybrid link handshake (X25519+ML-KEM-768, Ed25519+ML-DSA-65), both sides",
           (time.perf_counter() - t0) * 1e3, "ms")
    ca = SecureChannel.from_session(b"bench", ki, Role.INITIATOR, max_messages=2**40)
    cb = SecureChannel.from_session(b"bench", kr, Role.RESPONDER, max_messages=2**40)
    data = Packet(DATA, "n0", "n0", "n9", packet_id=1, timestamp_ns=now, body=b"x" * 64)
    aes, nonce = AESGCM(os.urandom(32)), os.urandom(12)
    aad = _aad(data)
    t_raw_enc = _t(lambda: aes.encrypt(nonce, data.body, aad), n * 10)
    t_seal = _t(lambda: data.with_(body=ca.seal(data.body, aad)), n * 10)
    frames = [ca.seal(data.body, aad) for _ in range(n * 30 + 10)]
    it = iter(frames)
    t_open = _t(lambda: cb.open(next(it), aad), n * 10)
    ct = aes.encrypt(nonce, data.body, aad)
    t_raw_dec = _t(lambda: aes.decrypt(nonce, ct, aad), n * 10)
    report("AES-256-GCM encrypt 64 B, raw backend call", t_raw_enc * 1e6, "us")
    report("channel seal (frame + packet copy), absolute", t_seal * 1e6, "us")
    report("channel seal (frame + packet copy) / raw encrypt", t_seal / t_raw_enc, "x")
    report("channel open (replay window) / raw decrypt", t_open / t_raw_dec, "x")


async def _until(pred, timeout: float, poll: float = 0.05):
    t0 = time.perf_counter()
    while True:
        v = await pred()
        if v or time.perf_counter() - t0 > timeout:
            return v
        await asyncio.sleep(poll)


async def mesh_rotation(st, kv_addr: str, nodes: int, flows: int, rate: float, hello: float,
                        hosts: int, spread: float) -> bool:
    url = st.url
    topo = parse_spec(f"grid:{nodes}", seed=0)
    host_args = ["--telemetry-interval", "5", "--hello-interval", str(hello)]
    if spread:
        host_args += ["--rekey-spread", str(spread)]
    cl = MeshCluster(url, f"grid:{nodes}", hosts=hosts, keyvault=kv_addr, host_args=host_args, name="bench",
                     host_env=st.add_mesh_host)       # each host process: its own bus identity, its own nodes
    t0 = time.perf_counter()
    await asyncio.to_thread(cl.start, 120)
    cross = sum(1 for a, b in topo.links if cl.shard_of(a) != cl.shard_of(b))
    report(f"mesh start: {len(topo.nodes)} identities from keyvault (gRPC) + agents in {hosts} host processes",
           (time.perf_counter() - t0) * 1e3, "ms")
    report(f"  links between agents of different host processes (of {len(topo.links)})", cross, "")
    nc = await st.connect(name="bench-meshsec")    # the operator: host ops, keyvault.rpc.Rotate, node commands
    ok = True
    try:
        async def converged():
            st = await asyncio.gather(*(cl.host_op(nc, i, "status") for i in range(len(cl.shards))))
            return all(x["converged"] for x in st)
        if not await _until(converged, 60, 0.2):
            raise RuntimeError("mesh did not converge")
        ids = sorted(topo.nodes, key=lambda n: int(n[1:]))
        pairs = [(ids[i], ids[-1 - i]) for i in range(flows)]
        # steady-state CPU of signed HELLOs + channels, no traffic (all host processes together)
        await asyncio.sleep(2.0)
        s0, w0 = await cl.stats(nc), time.perf_counter()
        await asyncio.sleep(3.0)
        s1, w1 = await cl.stats(nc), time.perf_counter()
        cpu = sum(b["cpu_s"] - a["cpu_s"] for a, b in zip(s0, s1, strict=True)) / (w1 - w0)
        calls = sum(b["trust"].get("verify.calls", 0) - a["trust"].get("verify.calls", 0)
                    for a, b in zip(s0, s1, strict=True))
        hits = sum(b["trust"].get("verify.cache_hits", 0) - a["trust"].get("verify.cache_hits", 0)
                   for a, b in zip(s0, s1, strict=True))
        report(f"idle {len(ids)}-node mesh, signed HELLO every {hello:g} s: CPU of the {hosts} host processes",
               cpu * 100, "% of a core")
        report("  verifications per second (cache misses)", calls / (w1 - w0), "/s")
        report("  verify-cache hit ratio", hits / max(1, hits + calls), "")
        by_src: dict[int, list[str]] = {}
        for src, dst in pairs:
            by_src.setdefault(cl.shard_of(src), []).append(f"{src}:{dst}")
        await asyncio.gather(*(cl.host_op(nc, i, "traffic", {"flows": ",".join(f), "rate": str(rate)})
                               for i, f in by_src.items()))
        await asyncio.sleep(3.0)
        c0 = await cl.stats(nc)
        t_start = time.perf_counter()
        r = await nc.request(subjects.KEYVAULT_RPC.format(method="Rotate"),
                             pb.RotateRequest(all=True, overlap_s=3.0).SerializeToString(), timeout=30)
        rot = pb.RotateResponse.FromString(r.data)
        t_rotated = time.perf_counter()
        new = {x.node_id: x.sig_key_id for x in rot.records}
        replies = await asyncio.gather(*(cl.command(nc, n, mesh_pb2.MeshCommand.KIND_RELOAD_KEYS, timeout=30)
                                         for n in ids))
        t_verified = time.perf_counter()
        c1 = await cl.stats(nc)
        rot_cpu = sum(b["cpu_s"] - a["cpu_s"] for a, b in zip(c0, c1, strict=True))
        st = {n: v for h in c1 for n, v in h["nodes"].items()}
        verified = all("beacon verified" in x for x in replies) and all(st[n]["key_id"] == new[n] for n in ids)

        async def rekeyed():
            nonlocal st
            st = {n: v for h in await cl.stats(nc) for n, v in h["nodes"].items()}
            return all(st[n]["sessions"][p] == [new[n], new[p]] for n in ids for p in topo.neighbours(n))
        await _until(rekeyed, 30)
        t_channels = time.perf_counter()
        await asyncio.sleep(4.0)     # past keyvault's 3 s overlap: old keys retired while traffic flows
        await asyncio.gather(*(cl.host_op(nc, i, "traffic_stop") for i in by_src))
        await asyncio.sleep(1.5)
        st = {n: v for h in await cl.stats(nc) for n, v in h["nodes"].items()}
        retired = sum(st[n]["counters"].get("events.keys.retired", 0) > 0 for n in ids)
        total = sum(st[src]["sent_to"].get(dst, 0) for src, dst in pairs)
        delivered = sum(st[dst]["delivered_from"].get(src, 0) for src, dst in pairs)
        report(f"rotate all {len(ids)}: Rotate reply from keyvault", (t_rotated - t_start) * 1e3, "ms")
        report(f"rotate all {len(ids)}: start to verified (every node's beacon accepted under its new key)",
               (t_verified - t_start) * 1e3, "ms")
        report(f"  CPU of the {hosts} host processes from start to verified", rot_cpu * 1e3, "ms")
        report(f"rotate all {len(ids)}: start to every link channel re-keyed", (t_channels - t_start) * 1e3, "ms")
        report("nodes whose old key was retired (keyvault overlap 3 s) during the run", retired, "nodes")
        report(f"DATA sent during the run ({flows} flows x {rate:g}/s, across the rotation)", total, "packets")
        report("DATA lost", total - delivered, "packets")
        hs = sum(v["counters"].get("hs.started", 0) for v in st.values())
        report("handshakes started in total (incl. initial ones)", hs, "")
        drops: dict[str, float] = {}
        for v in st.values():
            for k, x in v["counters"].items():
                if k.startswith("dropped.") or k == "hs.timeouts":
                    drops[k] = drops.get(k, 0) + x
        if drops:
            print("  " + ", ".join(f"{k} {int(x)}" for k, x in sorted(drops.items())), flush=True)
        if not verified:
            print("  not verified: " + "; ".join(x for x in replies if "beacon verified" not in x)[:500], flush=True)
        ok = verified and (t_verified - t_start) < TARGET_S and total == delivered
        report(f"target: verified < {TARGET_S:g} s and zero lost", 1.0 if ok else 0.0, "met" if ok else "NOT met")
    finally:
        await nc.close()
        await asyncio.to_thread(cl.stop)
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--flows", type=int, default=5)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--hello-interval", type=float, default=0.5,
                   help="HELLO period of the mesh part (0.2 = 5/s)")
    p.add_argument("--hosts", type=int, default=2, help="host processes the mesh is spread over (mesh.cluster)")
    p.add_argument("--rekey-spread", type=float, default=0.0,
                   help="spread each link's re-key after the rotation over [0, S) s")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    per_packet(50 if a.quick else 200)
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        st = Stack(Path(d), services=("keyvault",), env={"X0TTA6BL4_GRPC_PORT": str(port),
                                                         "X0TTA6BL4_RETIRE_TICK_S": "0.1"})
        st.start(60)
        try:
            ok = asyncio.run(mesh_rotation(st, f"127.0.0.1:{port}", a.nodes, a.flows, a.rate, a.hello_interval,
                                           a.hosts, a.rekey_spread))
        finally:
            st.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
