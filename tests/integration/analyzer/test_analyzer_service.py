"""The analyzer service on the embedded stack: real nats-server, real analyzer processes (shipped
GraphSAGE weights), a real UDP mesh host for the node kill."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys

from testkit import eventually

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.bus.reader import kv_snapshot, read_all
from x0tta6bl4.runtime.stack import repo_root
from x0tta6bl4.v1 import events_pb2, mesh_pb2

GRID = {f"n{i}": [f"n{j}" for j in range(9) if abs(i // 3 - j // 3) + abs(i % 3 - j % 3) == 1] for i in range(9)}


def tel(node: str, step: int, down: bool = False, **over) -> events_pb2.NodeTelemetry:
    """Telemetry of a 3x3 grid node, shaped like the UDP mesh agents' reports."""
    t = events_pb2.NodeTelemetry(meta=new_meta("test"), node_id=node, throughput_bps=9800.0, peer_count=len(GRID[node]),
                                 cpu_pct=1.0, mem_pct=0.3, reachable=not down,
                                 neighbours=[] if down else [p for p in GRID[node]])
    if not down:
        for p in GRID[node]:
            t.links.add(peer=p, rssi_dbm=-54.0, snr_db=41.0, loss_rate=0.0, latency_ms=0.45,
                        link_age_s=2.0 + step)
    for k, v in over.items():
        setattr(t, k, v)
    return t


def window(step: int, nodes, trigger: str = "", tag: str = "w") -> events_pb2.TelemetryWindow:
    eid = f"{tag}-{step}"
    return events_pb2.TelemetryWindow(meta=new_meta("test", f"cycle-{eid}", event_id=eid), trigger_node=trigger,
                                      nodes=list(nodes))


def healthy(step: int, skip=()):
    return [tel(n, step) for n in GRID if n not in skip]


async def anomalies(js, cycle: str | None = None):
    out = [events_pb2.Anomaly.FromString(m.data) for m in await read_all(js, subjects.MAPEK_ANOMALY)]
    return [a for a in out if cycle is None or a.meta.cycle_id == cycle]


async def dead_letters(js):
    return [events_pb2.DeadLetter.FromString(m.data) for m in await read_all(js, "dlq.>")]


async def audits(js, event_type: str):
    out = [events_pb2.AuditEvent.FromString(m.data) for m in await read_all(js, "audit.analyzer.>")]
    return [a for a in out if a.event_type == event_type]


def start_mesh(stack):
    env = stack.mesh_host_env("mesh", [f"n{i}" for i in range(9)])    # its own bus identity: these nodes
    proc = subprocess.Popen([sys.executable, "-m", "x0tta6bl4.mesh.host", "--nats", stack.url, "--topology", "grid:9",
                             "--traffic", "n0:n8", "--data-dir", str(stack.data_dir)], cwd=repo_root(), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    assert json.loads(proc.stdout.readline())["ready"]
    return proc


async def test_shipped_model_detects_a_killed_node_on_the_live_mesh(stack_factory):
    stack = stack_factory(services=("monitor", "analyzer"), env={"X0TTA6BL4_WINDOW_S": "0.5"})
    log = (stack.data_dir / "logs" / "analyzer-0.log")
    mesh = start_mesh(stack)
    nc = await stack.connect()          # the operator: reads, commands the mesh
    js = nc.jetstream()
    try:
        async def telemetry_in():
            return len(await kv_snapshot(js, "telemetry")) >= 9
        await eventually(telemetry_in, 20)
        # a few periodic windows of the healthy mesh: no anomaly from the model
        await eventually(lambda: _count(js, subjects.MAPEK_TELEMETRY, 4), 10)
        assert [a for a in await anomalies(js) if "graphsage" in a.detector] == []
        cmd = mesh_pb2.MeshCommand(meta=new_meta("test"), node_id="n4", kind=mesh_pb2.MeshCommand.KIND_FAULT,
                                   params={"type": "kill"})
        reply = await nc.request(subjects.mesh_cmd("n4"), cmd.SerializeToString(), timeout=5)
        assert mesh_pb2.MeshEvent.FromString(reply.data).kind == "command.ok"

        async def model_agrees():
            return [a for a in await anomalies(js) if a.root_cause == "n4" and "graphsage" in a.detector]
        found = await eventually(model_agrees, 20, 0.3)
    finally:
        await nc.close()
        mesh.terminate()
        mesh.wait(10)
    a = found[0]
    assert a.fault_type == "node_down" and a.detector == "rules+graphsage"
    assert a.confidence > 0.9 and a.severity == 4  # critical: the planner may act alone
    assert a.affected_nodes and set(a.affected_nodes) <= {"n1", "n3", "n5", "n7"}  # its neighbours
    assert any(f.startswith("graphsage: ") for f in a.top_features)
    text = log.read_text()
    assert "GraphSAGE detector loaded" in text and "not in use" not in text


async def _count(js, subject, n):
    return len(await read_all(js, subject)) >= n


async def test_bad_telemetry_is_rejected_with_a_reason_and_replicas_give_one_answer(stack_factory):
    """Two analyzer replicas share the consumer. Bad telemetry is dead-lettered or audited with a
    clear reason and never stops them; then each window is handled by one replica with the history
    read from the stream, so the answer matches one analyzer fed the whole stream."""
    import asyncio

    from x0tta6bl4.analysis import load_detector

    stack, det = await asyncio.gather(asyncio.to_thread(stack_factory, services=("analyzer",), replicas=2),
                                      asyncio.to_thread(load_detector))
    nc = await stack.connect()              # the operator reads the results
    js = nc.jetstream()
    monitor = await stack.connect("monitor")  # telemetry windows come from the monitor's identity only
    pub = Publisher(monitor, "test")
    try:
        for s in range(3):
            await pub.publish(subjects.MAPEK_TELEMETRY, window(s, healthy(s)))
        # the trigger node reports a negative loss: the window cannot be analysed -> dead letter
        bad = [*healthy(3, skip=("n2",)), tel("n2", 3, loss_pct=-5.0)]
        await pub.publish(subjects.MAPEK_TELEMETRY, window(3, bad, trigger="n2"))
        # a trigger node nobody reported
        await pub.publish(subjects.MAPEK_TELEMETRY, window(4, healthy(4), trigger="n99"))
        # NaN: not even a valid message (published raw, the codec refuses it)
        nan = window(5, [*healthy(5, skip=("n1",)), tel("n1", 5, cpu_pct=float("nan"))], trigger="n1")
        await monitor.jetstream().publish(subjects.MAPEK_TELEMETRY, nan.SerializeToString(),
                                          headers={"Nats-Msg-Id": "w-5"})
        # a bad bystander (memory > 100 %, a link to itself) is left out and audited; the real fault is found
        mixed = [t for t in healthy(6, skip=("n4", "n6", "n7")) if t]
        mixed += [tel("n4", 6, down=True), tel("n6", 6, mem_pct=250.0), tel("n7", 6)]
        mixed[-1].links.add(peer="n7", rssi_dbm=-50, snr_db=40, loss_rate=0, latency_ms=1, link_age_s=1)
        await pub.publish(subjects.MAPEK_TELEMETRY, window(6, mixed, trigger="n4"))

        async def settled():
            return len(await dead_letters(js)) >= 3 and await anomalies(js, "cycle-w-6")
        await eventually(settled, 20, 0.2)
        dl = {d.stream_sequence: d.reason for d in await dead_letters(js)}
        reasons = sorted(dl.values())
        assert any("node 'n2'" in r and "'loss_pct' is negative" in r for r in reasons), reasons
        assert any("'n99' is unknown" in r for r in reasons), reasons
        assert any("not a finite number" in r and "cpu_pct" in r for r in reasons), reasons
        (a,) = await anomalies(js, "cycle-w-6")
        assert (a.root_cause, a.fault_type) == ("n4", "node_down")
        rej = {e.subject_id: e.details["reason"] for e in await audits(js, "telemetry.rejected")}
        assert "'mem_pct' = 250 exceeds 100" in rej["n6"]
        assert "link to itself" in rej["n7"]
        # still alive and analysing
        await pub.publish(subjects.MAPEK_TELEMETRY, window(7, [*healthy(7, skip=("n8",)), tel("n8", 7, down=True)],
                                                          trigger="n8"))
        (b,) = await eventually(lambda: anomalies(js, "cycle-w-7"), 10, 0.2)
        assert b.root_cause == "n8"
        assert all(sp.proc.poll() is None for sp in stack.procs)
        await replicas_agree(nc, js, pub, det)
    finally:
        await nc.close()
        await monitor.close()


async def replicas_agree(nc, js, pub, det):
    from x0tta6bl4.analysis.live import LIVE_STEPS, History, to_window
    from x0tta6bl4.mapek.analyze import HybridAnalyzer, relevant

    windows = [window(s, healthy(s), tag="r") for s in range(8)]
    # n4 goes down and stays down; each later window is periodic (no trigger) except the first
    windows += [window(s, [*healthy(s, skip=("n4",)), tel("n4", s, down=True)], trigger="n4" if s == 8 else "",
                       tag="r") for s in range(8, 14)]
    for w in windows:
        await pub.publish(subjects.MAPEK_TELEMETRY, w, event_id=w.meta.event_id)
    want_cycles = {w.meta.cycle_id for w in windows[8:]}

    async def done():
        got = [a for a in await anomalies(js) if a.meta.cycle_id.startswith("cycle-r-")]
        return got if want_cycles <= {a.meta.cycle_id for a in got} else None
    got = await eventually(done, 30, 0.3)
    by_cycle: dict[str, list] = {}
    for a in got:
        by_cycle.setdefault(a.meta.cycle_id, []).append(a)
    assert all(len(v) == 1 for v in by_cycle.values()), "one anomaly per incident per window"
    assert set(by_cycle) == want_cycles, "no anomaly for the healthy windows"
    # the same answer as a single analyzer fed the whole stream in order
    from x0tta6bl4.bus.codec import InvalidMessage, decode

    hist, hybrid = History(), HybridAnalyzer()
    stream = []
    for m in await read_all(js, subjects.MAPEK_TELEMETRY):
        with contextlib.suppress(InvalidMessage):
            stream.append(decode(events_pb2.TelemetryWindow, m.data))
    for w in stream:
        hist.add(w.meta.event_id, w.nodes)
        if w.meta.cycle_id not in want_cycles:
            continue
        conv = to_window(hist.before(w.meta.event_id, LIVE_STEPS - 1), hist.snaps[w.meta.event_id])
        (want,) = relevant(w, hybrid.merge(w, det.detect(conv.window)))
        (a,) = by_cycle[w.meta.cycle_id]
        assert (a.root_cause, a.fault_type, a.detector, round(a.confidence, 6)) == \
            (want.root_cause, want.fault_type, want.detector, round(want.confidence, 6))
        assert a.meta.event_id == want.meta.event_id
    detectors = [by_cycle[w.meta.cycle_id][0].detector for w in windows[8:]]
    assert detectors[0] == "rules" and detectors[-1] == "rules+graphsage", detectors
