"""Bus benchmarks (issues: foundation, zero trust on the bus).

1. Publish throughput of our path (validate + encode + trace headers + Nats-Msg-Id,
   awaited PubAck) as a ratio to raw nats-py JetStream publishing of the same
   bytes, measured in the same run on the same server. Target >= 0.80.
2. The cost of security: the same publishing on a secured server (TLS, nkey
   authentication, the permission table; a mesh host's identity) as a ratio to an
   open server, both in the same run, rounds paired. Target >= 0.90. One publisher
   awaiting each PubAck is latency-bound (TLS adds ~30 us of client CPU per round
   trip in Python's asyncio TLS); with 16 publishers in flight TLS records coalesce.
   Measured on the event loop the services run on (install_event_loop: uvloop when
   installed, X0TTA6BL4_EVENT_LOOP) - the headline - and on asyncio's standard loop
   beside it, in the same run.
3. Stage-to-stage hop latency on the secured server: publish (as the analyzer) ->
   the planner's durable consumer in our Service runtime (decode, idempotency check,
   span, ack). Target p99 < 5 ms.
4. Pipeline latency on the embedded (secured) stack: telemetry published -> result
   event (monitor -> analyzer -> planner -> executor), p50/p99 over many cycles.

    python bench/bench_bus.py [--quick]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import tempfile
import time
import uuid

import nats

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import Service
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.connection import ENV_EVENT_LOOP, NatsCredentials, ensure_topology, install_event_loop
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.config import CommonSettings
from x0tta6bl4.runtime import secrets as deployment
from x0tta6bl4.runtime.stack import NatsServer, Stack
from x0tta6bl4.v1 import events_pb2


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def telemetry(i: int, node: str = "n1", cpu: float = 10.0) -> events_pb2.NodeTelemetry:
    t = events_pb2.NodeTelemetry(meta=new_meta("bench"), node_id=node, p99_latency_ms=3.2, loss_pct=0.1, cpu_pct=cpu,
                                 mem_pct=20, peer_count=3, route_count=8, neighbours=["n2", "n3"])
    t.counters["sent"] = i
    return t


BENCH_HOST = "bench"      # a mesh host identity for the nodes "raw" and "ours" (what the secured rounds publish as)


async def _client(url: str, creds: NatsCredentials | None):
    return await nats.connect(servers=[url], **(creds.options() if creds is not None else {}))


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (0.0 where there is no /proc)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(open_url: str, secured_url: str, creds: NatsCredentials, n: int, rounds: int,
                     server_pids: dict[str, int] | None = None) -> dict:
    """Raw and our publishing on the open server, and on the secured one as a mesh host. Each round times
    both buses back to back (the order alternates, so that neither always runs first); a ratio is the median
    of the per-round ratios, which the machine's drifting load affects least. Where the time goes: the CPU
    this client and each nats-server (``server_pids``) used per awaited publish, summed over the rounds
    (less sensitive to a busy machine than the wall clock)."""
    cpu: dict[str, list[float]] = {}      # "bus.path" -> [client s, server s, messages]
    conns = {"open": await _client(open_url, None), "secured": await _client(secured_url, creds)}
    await ensure_topology(conns["open"].jetstream())
    payload = telemetry(0).SerializeToString()
    run = uuid.uuid4().hex[:8]       # raw message ids unique per run: a repeat would be a cheaper duplicate
    results: dict[str, list[float]] = {}
    for rnd in range(rounds):
        for bus, nc in sorted(conns.items(), reverse=bool(rnd % 2)):
            js, pub = nc.jetstream(), Publisher(nc, "bench")
            msgs = [telemetry(i, "ours") for i in range(n)]  # built by the caller in both cases
            for path in sorted(("raw", "ours"), reverse=bool(rnd // 2 % 2)):
                srv = (server_pids or {}).get(bus)
                c0, s0 = time.process_time(), process_cpu_s(srv) if srv else 0.0
                t0 = time.perf_counter()
                if path == "raw":
                    for i in range(n):
                        await js.publish(subjects.telemetry("raw"), payload,
                                         headers={"Nats-Msg-Id": f"raw-{run}-{rnd}-{i}"})
                else:
                    for m in msgs:
                        await pub.publish(subjects.telemetry("ours"), m)
                results.setdefault(f"{bus}.{path}", []).append(n / (time.perf_counter() - t0))
                acc = cpu.setdefault(f"{bus}.{path}", [0.0, 0.0, 0])
                acc[0] += time.process_time() - c0
                acc[1] += (process_cpu_s(srv) - s0) if srv else 0.0
                acc[2] += n
    for nc in conns.values():
        await nc.close()
    med = {k: statistics.median(v) for k, v in results.items()}
    cpu_us = {k: {"client": round(c / m * 1e6, 1), "server": round(sv / m * 1e6, 1)} for k, (c, sv, m) in cpu.items()}

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(results[a], results[b], strict=True)), 3)
    return {"raw_msgs_per_s": round(med["open.raw"]), "ours_msgs_per_s": round(med["open.ours"]),
            "ratio": ratio("open.ours", "open.raw"),
            "secured_raw_msgs_per_s": round(med["secured.raw"]), "secured_ours_msgs_per_s": round(med["secured.ours"]),
            "secured_ratio": ratio("secured.ours", "open.ours"), "secured_raw_ratio": ratio("secured.raw", "open.raw"),
            "rounds": rounds, "per_round": n, "cpu_us_per_publish": cpu_us}


async def concurrent(open_url: str, secured_url: str, creds: NatsCredentials, n: int, rounds: int,
                     width: int = 16) -> dict:
    """Our publishing with ``width`` publishers in flight (each awaiting its own PubAck, as concurrent handlers
    and services do): the bus's capacity, open vs secured, the median of paired rounds."""
    conns = {"open": await _client(open_url, None), "secured": await _client(secured_url, creds)}
    results: dict[str, list[float]] = {}
    for rnd in range(rounds):
        for bus, nc in sorted(conns.items(), reverse=bool(rnd % 2)):
            pub = Publisher(nc, "bench")
            msgs = [telemetry(i, "ours") for i in range(n)]

            async def worker(chunk: list[events_pb2.NodeTelemetry], pub: Publisher = pub) -> None:
                for m in chunk:
                    await pub.publish(subjects.telemetry("ours"), m)
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(msgs[w::width]) for w in range(width)))
            results.setdefault(bus, []).append(n / (time.perf_counter() - t0))
    for nc in conns.values():
        await nc.close()
    return {"width": width, "open_msgs_per_s": round(statistics.median(results["open"])),
            "secured_msgs_per_s": round(statistics.median(results["secured"])),
            "secured_ratio": round(statistics.median(a / b for a, b in zip(results["secured"], results["open"],
                                                                             strict=True)), 3)}


async def hop_latency(url: str, sec: deployment.Secrets, data_dir: pathlib.Path, n: int) -> dict:
    lat: list[float] = []
    app = Service("planner", CommonSettings(nats_url=url, data_dir=data_dir, trust_file=sec.trust_file,
                                            signing_key_file=sec.signing_file("planner"),
                                            nats_nkey_file=sec.nkey_file("planner"), nats_ca_file=sec.ca_cert,
                                            nats_identity="planner"))

    @app.subscriber("planner", events_pb2.Anomaly)
    async def on_anomaly(a, ctx):
        lat.append((time.time_ns() - a.meta.ts_unix_ns) / 1e6)

    await app.start()
    nc = await _client(url, NatsCredentials.in_secrets(sec.root, "analyzer"))   # anomalies: the analyzer's
    pub = Publisher(nc, "bench")
    for i in range(n):
        a = events_pb2.Anomaly(meta=new_meta("bench", "c"), node_id="n", root_cause="n", fault_type="f",
                               incident_id=f"i{i}")
        await pub.publish(subjects.MAPEK_ANOMALY, a)
        await asyncio.sleep(0.002)
    deadline = time.monotonic() + 10
    while len(lat) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await app.stop()
    await nc.close()
    return {"hops": len(lat), "p50_ms": round(pct(lat, 50), 3), "p99_ms": round(pct(lat, 99), 3)}


async def pipeline(stack: Stack, cycles: int) -> dict:
    nc = await stack.connect()                                  # the operator watches MAPE-K
    agents = await stack.connect(f"mesh-host-{BENCH_HOST}")     # the nodes' telemetry: their host's identity
    pub = Publisher(agents, "bench")
    got: dict[str, int] = {}
    hops: dict[str, list[float]] = {"monitor": [], "analyzer": [], "planner": [], "executor": []}
    stamps: dict[str, dict[str, int]] = {}

    async def on_msg(m):
        sub_map = {subjects.MAPEK_TELEMETRY: (events_pb2.TelemetryWindow, "window"),
                   subjects.MAPEK_ANOMALY: (events_pb2.Anomaly, "anomaly"),
                   subjects.MAPEK_ACTION: (events_pb2.ActionRequest, "action"),
                   subjects.MAPEK_RESULT: (events_pb2.ActionResult, "result")}
        if m.subject not in sub_map:
            return
        cls, name = sub_map[m.subject]
        ev = cls.FromString(m.data)
        node = ev.trigger_node if name == "window" else (ev.root_cause if name == "anomaly" else ev.action.target_node)
        stamps.setdefault(node, {})[name] = ev.meta.ts_unix_ns
        if name == "result":
            got[node] = time.time_ns()

    sub = await nc.subscribe(subjects.MAPEK_ALL, cb=on_msg)
    sent: dict[str, int] = {}
    for i in range(cycles):
        node = f"b{i}"
        await pub.publish(subjects.telemetry(node), telemetry(i, node))
        await asyncio.sleep(0.05)
        t = telemetry(i, node, cpu=97.0)
        sent[node] = time.time_ns()
        await pub.publish(subjects.telemetry(node), t)
        await asyncio.sleep(0.1)
    deadline = time.monotonic() + 30
    while len(got) < cycles and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await sub.unsubscribe()
    await nc.close()
    await agents.close()
    e2e = [(got[n] - sent[n]) / 1e6 for n in got]
    for n, st in stamps.items():
        if {"window", "anomaly", "action", "result"} <= st.keys():
            hops["monitor"].append((st["window"] - sent[n]) / 1e6)
            hops["analyzer"].append((st["anomaly"] - st["window"]) / 1e6)
            hops["planner"].append((st["action"] - st["anomaly"]) / 1e6)
            hops["executor"].append((st["result"] - st["action"]) / 1e6)
    return {"cycles": len(e2e), "telemetry_to_result_p50_ms": round(pct(e2e, 50), 1),
            "telemetry_to_result_p99_ms": round(pct(e2e, 99), 1),
            "per_stage_p50_ms": {k: round(pct(v, 50), 2) for k, v in hops.items() if v}}


def on_loop(loop: str, coro):
    """Run ``coro`` on the event loop named ``loop`` (as install_event_loop chooses it for the services)."""
    install_event_loop({ENV_EVENT_LOOP: loop})
    return asyncio.run(coro)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    n = 1000 if a.quick else 3000
    cycles = 30 if a.quick else 100
    headline = install_event_loop()          # the services' loop: uvloop when installed (X0TTA6BL4_EVENT_LOOP)
    loops = [headline] + [lp for lp in ("asyncio",) if lp != headline]
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        sec = deployment.init(d / "secrets")
        sec.add_mesh_host(BENCH_HOST, ["raw", "ours"])
        open_server = NatsServer(d / "js-open").start()
        secured = NatsServer(d / "js-secured", log_file=d / "nats-secured.log", secrets=sec).start()
        try:
            secured.provision()
            creds = NatsCredentials.in_secrets(sec.root, f"mesh-host-{BENCH_HOST}")
            thr_by, par_by = {}, {}
            for lp in loops:                 # the same servers, one loop after the other
                thr_by[lp] = on_loop(lp, throughput(open_server.url, secured.url, creds, n // 2,
                                                    12 if a.quick else 24,
                                                    {"open": open_server.pid, "secured": secured.pid}))
                par_by[lp] = on_loop(lp, concurrent(open_server.url, secured.url, creds, n, 8 if a.quick else 16))
            hop = on_loop(headline, hop_latency(secured.url, sec, d / "svc", 300 if a.quick else 1000))
        finally:
            open_server.stop()
            secured.stop()
        stack = Stack(d / "stack", services=("monitor", "analyzer", "planner", "executor"),
                      env={"X0TTA6BL4_STALE_AFTER_S": "3600", "X0TTA6BL4_LOG_LEVEL": "WARNING"})
        try:
            stack.start()
            stack.add_mesh_host(BENCH_HOST, [f"b{i}" for i in range(cycles)])
            pipe = on_loop(headline, pipeline(stack, cycles))
        finally:
            stack.stop()
    thr, par = thr_by[headline], par_by[headline]
    out = {"event_loop": headline, "publish_throughput": thr, "publish_concurrent": par,
           "by_event_loop": {lp: {"publish_throughput": thr_by[lp], "publish_concurrent": par_by[lp]} for lp in loops},
           "hop_latency": hop, "pipeline": pipe}
    print(f"bus: event loop {headline} (the services' loop; X0TTA6BL4_EVENT_LOOP)"
          + "".join(f", also measured on {lp}" for lp in loops[1:]))
    for lp in loops:
        t, c = thr_by[lp], par_by[lp]
        print(f"bus [{lp}]: publish throughput ours/raw = {t['ratio']} ({t['ours_msgs_per_s']} vs "
              f"{t['raw_msgs_per_s']} msg/s, target >= 0.80)")
        print(f"bus [{lp}]: publish with TLS + nkey auth + permissions / open bus = {t['secured_ratio']} "
              f"({t['secured_ours_msgs_per_s']} vs {t['ours_msgs_per_s']} msg/s; raw nats-py "
              f"{t['secured_raw_ratio']}; median of {t['rounds']} paired rounds), target >= 0.90: "
              f"{'met' if t['secured_ratio'] >= 0.90 else 'MISSED'}")
        cu = t["cpu_us_per_publish"]
        print(f"bus [{lp}]: CPU per awaited publish (ours), open -> secured: this client {cu['open.ours']['client']} "
              f"-> {cu['secured.ours']['client']} us, nats-server {cu['open.ours']['server']} -> "
              f"{cu['secured.ours']['server']} us (raw nats-py: client {cu['open.raw']['client']} -> "
              f"{cu['secured.raw']['client']} us, nats-server {cu['open.raw']['server']} -> "
              f"{cu['secured.raw']['server']} us)")
        print(f"bus [{lp}]: the same with {c['width']} publishers in flight: secured / open = {c['secured_ratio']} "
              f"({c['secured_msgs_per_s']} vs {c['open_msgs_per_s']} msg/s)")
    print(f"bus: stage-to-stage hop (secured bus) p50 {hop['p50_ms']} ms, p99 {hop['p99_ms']} ms over "
          f"{hop['hops']} hops (target p99 < 5 ms)")
    print(f"bus: pipeline telemetry->result p50 {pipe['telemetry_to_result_p50_ms']} ms, "
          f"p99 {pipe['telemetry_to_result_p99_ms']} ms over {pipe['cycles']} cycles; "
          f"per stage p50 {pipe['per_stage_p50_ms']}")
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
