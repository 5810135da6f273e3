"""CastVote throughput and latency vs a trivial gRPC unary call, measured in the same run.

A real nats-server and a real governance service process; 1,000 registered voters
with ML-DSA-65 keys; 50 concurrent clients. Every vote is signature-checked by the
service and stored in the GOV stream before its reply. The baseline is grpc.health.v1
Check on the same server and channel setup (mutual TLS, and the policy decides it too).

    python bench/bench_governance.py            # quick (< 60 s)
    python bench/bench_governance.py --votes 10000 --json out.json

Two phases with the same 50 clients: closed loop (each client sends its next vote as soon as the
previous reply arrives: throughput at saturation, and the latency that saturation implies --
by Little's law p50 ~= 50 / rate), then open loop at --load (default 50%) of the CastVote
rate just measured (latency below saturation, measured from each call's due time). The closed loop
runs in --rounds paired rounds (raw calls and votes back to back, order alternating); the ratio is
the median of the per-round ratios, the pooled one (all calls over all time) printed beside it.
Targets: CastVote p99 < 10 ms and >= 30% of the raw unary rate.
The service runs on its usual event loop (uvloop when installed, X0TTA6BL4_EVENT_LOOP) and so do the
clients here (install_event_loop, the same environment); the loop is printed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import secrets
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "libs"))
sys.path.insert(0, str(ROOT))

from grpc_health.v1 import health_pb2, health_pb2_grpc

from x0tta6bl4.bus.connection import install_event_loop
from x0tta6bl4.governance import vote_signing_payload
from x0tta6bl4.pqc import MLDSA65PrivateKey
from x0tta6bl4.rpc.svid import aio_channel
from x0tta6bl4.rpc.svid import mint as mint_svid
from x0tta6bl4.runtime.locate import admin_metadata
from x0tta6bl4.runtime.stack import Stack, free_port
from x0tta6bl4.v1 import events_pb2
from x0tta6bl4.v1 import governance_pb2 as g
from x0tta6bl4.v1 import governance_pb2_grpc as gg

VOTES_PER_PROPOSAL = 500   # < voters, so no proposal closes early during the run


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def drive(n: int, concurrency: int, make_call) -> tuple[float, list[float]]:
    """Run n calls with `concurrency` workers; returns (elapsed s, latencies ms)."""
    lat: list[float] = []
    it = iter(range(n))

    async def worker():
        for i in it:
            t = time.perf_counter()
            await make_call(i)
            lat.append((time.perf_counter() - t) * 1000)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, lat


async def paced(n: int, concurrency: int, rate: float, make_call) -> list[float]:
    """Open loop: call i is due at t0 + i/rate, sent by worker i % concurrency; latency is measured
    from the due time (so a server falling behind is charged for the wait: no coordinated omission)."""
    lat: list[float] = []
    t0 = time.perf_counter() + 0.05

    async def worker(w: int):
        for i in range(w, n, concurrency):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await make_call(i)
            lat.append((time.perf_counter() - due) * 1000)
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return lat


async def bench(addr: str, voters: int, votes: int, concurrency: int, channels: int, load: float,
                admin: tuple, svid, rounds: int = 6) -> dict:
    chans = [aio_channel(addr, svid, "governance", svid.trust_domain) for _ in range(channels)]   # mutual TLS
    for c in chans:
        await c.channel_ready()
    stubs = [gg.GovernanceStub(c) for c in chans]
    health = [health_pb2_grpc.HealthStub(c) for c in chans]

    t = time.perf_counter()
    keys = [MLDSA65PrivateKey.generate() for _ in range(voters)]
    names = [f"spiffe://x0tta6bl4.mesh/voter/bench-{i}" for i in range(voters)]
    await drive(voters, concurrency, lambda i: stubs[i % channels].RegisterVoter(g.RegisterVoterRequest(
        voter=names[i], balance=100.0, public_key=keys[i].public_key().public_bytes()), metadata=admin))
    setup_register = time.perf_counter() - t

    paced_votes = votes                       # a second set for the open-loop (paced) phase
    n_props = (votes + paced_votes + VOTES_PER_PROPOSAL - 1) // VOTES_PER_PROPOSAL
    props = [await stubs[0].CreateProposal(g.CreateProposalRequest(
        title=f"bench {k}", action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_CONFIG_CHANGE),
        proposer=f"bench-{k // 20}", duration_s=3600, quorum=1.0, threshold=0.5), metadata=admin)   # <= 20 active each
        for k in range(n_props)]

    t = time.perf_counter()
    reqs = []
    for i in range(votes + paced_votes):
        pid, v = props[i // VOTES_PER_PROPOSAL].id, i % VOTES_PER_PROPOSAL
        who = (i // VOTES_PER_PROPOSAL * 7 + v) % voters
        tokens = float(1 + i % 100)
        choice = ("YES", "NO", "ABSTAIN")[i % 3]
        nonce = secrets.token_bytes(16)
        sig = keys[who].sign(vote_signing_payload(pid, names[who], choice, tokens, nonce))
        reqs.append(g.CastVoteRequest(proposal_id=pid, voter=names[who], choice=g.VoteChoice.Value(
            "VOTE_CHOICE_" + choice), tokens=tokens, nonce=nonce, signature=sig, vote_id=f"bench-{i}"))
    setup_sign = time.perf_counter() - t

    # warm-up both paths
    await drive(200, concurrency, lambda i: health[i % channels].Check(health_pb2.HealthCheckRequest()))

    # closed loop in paired rounds: each round times `votes / rounds` raw calls and as many CastVotes back to
    # back (order alternating), so that a machine whose load drifts charges both alike; the ratio is the
    # median of the per-round ratios (the pooled ratio, total calls over total time, is reported beside it)
    raw_s = vote_s = 0.0
    raw_lat: list[float] = []
    vote_lat: list[float] = []
    per_round: list[float] = []
    bounds = [votes * r // rounds for r in range(rounds + 1)]
    for r in range(rounds):
        lo, size = bounds[r], bounds[r + 1] - bounds[r]
        took: dict[str, float] = {}
        for path in sorted(("raw", "vote"), reverse=bool(r % 2)):
            if path == "raw":
                el, lat = await drive(size, concurrency,
                                      lambda i: health[i % channels].Check(health_pb2.HealthCheckRequest()))
                raw_s, raw_lat = raw_s + el, raw_lat + lat
            else:
                el, lat = await drive(size, concurrency,
                                      lambda i, lo=lo: stubs[i % channels].CastVote(reqs[lo + i]))
                vote_s, vote_lat = vote_s + el, vote_lat + lat
            took[path] = el
        per_round.append(took["raw"] / took["vote"])
    paired = statistics.median(per_round)

    # latency below saturation: the same 50 clients, open loop at `load` of the CastVote rate just measured
    offered = load * votes / vote_s
    n_paced = min(paced_votes, int(offered * 5))                      # ~5 s
    praw_lat = await paced(n_paced, concurrency, offered,
                           lambda i: health[i % channels].Check(health_pb2.HealthCheckRequest()))
    pvote_lat = await paced(n_paced, concurrency, offered,
                            lambda i: stubs[i % channels].CastVote(reqs[votes + i]))

    # durability/consistency check: every vote is in a tally
    counted = 0
    for p in props:
        counted += (await stubs[0].GetProposal(g.GetProposalRequest(id=p.id))).tally.voters
    for c in chans:
        await c.close()
    raw_rate, vote_rate = votes / raw_s, votes / vote_s
    return {
        "voters": voters, "votes": votes, "concurrency": concurrency, "channels": channels,
        "setup_register_s": round(setup_register, 2), "setup_sign_s": round(setup_sign, 2),
        "raw_unary_per_s": round(raw_rate), "raw_p50_ms": round(statistics.median(raw_lat), 3),
        "raw_p99_ms": round(pct(raw_lat, 99), 3),
        "castvote_per_s": round(vote_rate), "castvote_p50_ms": round(statistics.median(vote_lat), 3),
        "castvote_p99_ms": round(pct(vote_lat, 99), 3),
        "ratio_to_raw": round(paired, 3), "ratio_pooled": round(vote_rate / raw_rate, 3), "rounds": rounds,
        "ratio_per_round": [round(x, 3) for x in per_round], "votes_in_tallies": counted,
        "votes_sent": votes + n_paced,
        "paced_load": load, "paced_offered_per_s": round(offered), "paced_calls": n_paced,
        "paced_raw_p50_ms": round(statistics.median(praw_lat), 3), "paced_raw_p99_ms": round(pct(praw_lat, 99), 3),
        "paced_castvote_p50_ms": round(statistics.median(pvote_lat), 3),
        "paced_castvote_p99_ms": round(pct(pvote_lat, 99), 3),
        "target_p99_lt_10ms": pct(vote_lat, 99) < 10.0,
        "target_paced_p99_lt_10ms": pct(pvote_lat, 99) < 10.0, "target_ratio_ge_0_3": paired >= 0.3,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voters", type=int, default=1000)
    ap.add_argument("--votes", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--load", type=float, default=0.5,
                    help="open-loop phase: offered rate as a fraction of the measured CastVote rate")
    ap.add_argument("--rounds", type=int, default=6, help="paired rounds of the closed-loop phase")
    ap.add_argument("--json", type=pathlib.Path)
    a = ap.parse_args()
    client_loop = install_event_loop()      # as the services do (the governance process chooses its own)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-gov-") as d:
        stack = Stack(pathlib.Path(d), services=("keyvault",),     # keyvault: governance's SVID issuer
                      env={"X0TTA6BL4_LOG_LEVEL": "WARNING"})
        stack.start(60)
        stack.env["X0TTA6BL4_GRPC_PORT"] = str(port)
        stack.start_service("governance")
        stack.wait_ready(60)
        try:
            out = asyncio.run(bench(f"127.0.0.1:{port}", a.voters, a.votes, a.concurrency, a.channels, a.load,
                                    admin_metadata(directory=stack.data_dir),
                                    svid=mint_svid(stack.secrets.root, "operator", "bench"), rounds=max(1, a.rounds)))
            out["event_loop"] = client_loop
        finally:
            stack.stop()
    print(f"governance CastVote ({out['voters']} voters, {out['concurrency']} concurrent clients, "
          f"{out['votes']} signed durable votes; event loop {out['event_loop']}, the clients' and the service's "
          f"alike: same environment, X0TTA6BL4_EVENT_LOOP)")
    print(f"  raw unary (health Check): {out['raw_unary_per_s']:>7}/s  p50 {out['raw_p50_ms']:.2f} ms  "
          f"p99 {out['raw_p99_ms']:.2f} ms")
    print(f"  CastVote:                 {out['castvote_per_s']:>7}/s  p50 {out['castvote_p50_ms']:.2f} ms  "
          f"p99 {out['castvote_p99_ms']:.2f} ms")
    print(f"  ratio {out['ratio_to_raw']:.2f} of raw (median of {out['rounds']} paired rounds; pooled "
          f"{out['ratio_pooled']:.2f}) "
          f"(target >= 0.30: {'met' if out['target_ratio_ge_0_3'] else 'MISSED'}); "
          f"p99 target < 10 ms: {'met' if out['target_p99_lt_10ms'] else 'MISSED'}; "
          f"votes in tallies {out['votes_in_tallies']}/{out['votes_sent']}")
    print(f"  open loop at {out['paced_load']:.0%} of that CastVote rate ({out['paced_offered_per_s']}/s offered, "
          f"{out['concurrency']} clients, {out['paced_calls']} calls; latency from each call's due time):")
    print(f"    raw unary p50 {out['paced_raw_p50_ms']:.2f} ms  p99 {out['paced_raw_p99_ms']:.2f} ms;  "
          f"CastVote p50 {out['paced_castvote_p50_ms']:.2f} ms  p99 {out['paced_castvote_p99_ms']:.2f} ms  "
          f"(target < 10 ms: {'met' if out['target_paced_p99_lt_10ms'] else 'MISSED'})")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
