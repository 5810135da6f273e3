"""The monitor at mesh scale, on the in-memory bus with the service's own composition root and an injected
clock (issue #20): events stay small at 10,000 nodes, a cycle that cannot be published is retried (never a
node left critical with no cycle), a monitor behind its telemetry declares no healthy node dead, and the
staleness task survives a failing tick."""
from __future__ import annotations

import asyncio
import random
import time

import pytest
from monitorkit import T0, MonitorOnBus

from x0tta6bl4.bus import subjects
from x0tta6bl4.ids import new_meta
from x0tta6bl4.stages import monitor as stage
from x0tta6bl4.v1 import common_pb2, events_pb2

HEALTHY, CRITICAL = common_pb2.HEALTH_HEALTHY, common_pb2.HEALTH_CRITICAL
S = 10**9
LIMIT = 64 * 1024


class Monitor(MonitorOnBus):
    def __init__(self, tmp_path, **settings) -> None:
        super().__init__(tmp_path, **settings)
        self.rng = random.Random(3)

    def telemetry(self, node: str, neighbours: list[str], ts_ns: int | None = None) -> events_pb2.NodeTelemetry:
        """A report the size of a real node's: every link with its metrics."""
        t = events_pb2.NodeTelemetry(meta=new_meta("agent"), node_id=node, reachable=True, neighbours=neighbours,
                                     cpu_pct=self.rng.uniform(1, 40), mem_pct=self.rng.uniform(10, 60),
                                     p99_latency_ms=self.rng.uniform(1, 20))
        for p in neighbours:
            t.links.add(peer=p, loss_rate=self.rng.uniform(0, 0.01), latency_ms=self.rng.uniform(0.1, 5))
        t.meta.ts_unix_ns = self.clock() if ts_ns is None else ts_ns
        return t

    async def report(self, node: str, neighbours: list[str], ts_ns: int | None = None) -> None:
        await self.bus.publish(subjects.telemetry(node), self.telemetry(node, neighbours, ts_ns))

    def health(self, node: str) -> int | None:
        v = self.bus.kv("health").value(stage.node_key(node))
        return None if v is None else int(v)

    def windows(self) -> list[events_pb2.TelemetryWindow]:
        return self.bus.messages(subjects.MAPEK_TELEMETRY)

    async def tick(self) -> list[str]:
        return await stage.stale_tick(self.bus.context(), self.deps)


def grid(n: int, width: int = 100) -> dict[str, list[str]]:
    out = {}
    for i in range(n):
        x = i % width
        out[f"n{i}"] = [f"n{j}" for j in (i - 1 if x else -1, i + 1 if x < width - 1 else -1, i - width, i + width)
                        if 0 <= j < n]
    return out


@pytest.fixture
def mon(tmp_path) -> Monitor:
    return Monitor(tmp_path)


@pytest.mark.timeout(120)
async def test_at_ten_thousand_nodes_every_event_stays_under_64_kb_and_the_window_holds_the_incident(mon):
    mesh = grid(10_000)
    started = time.monotonic()
    for node, nb in mesh.items():
        await mon.report(node, nb)
    mon.clock.advance(1.5)
    for node, nb in mesh.items():
        if node != "n4242":
            await mon.report(node, nb)
    mon.clock.advance(0.6)                              # n4242 silent for 2.1 s
    assert await mon.tick() == ["n4242"]
    assert mon.health("n4242") == CRITICAL
    [w] = mon.windows()
    ids = {t.node_id for t in w.nodes}
    assert w.trigger_node == "n4242" and {"n4242", *mesh["n4242"]} <= ids
    assert all(p in ids for n in mesh["n4242"] for p in mesh[n])       # two hops around the incident
    assert not next(t for t in w.nodes if t.node_id == "n4242").reachable
    whole = sum(mon.deps.view.nodes[n].ByteSize() for n in mesh)
    sizes = {p.subject: len(p.msg.SerializeToString()) for p in mon.bus.published}
    assert whole > 1024 * 1024 and max(sizes.values()) < LIMIT, sizes
    # the operator's cycle over the whole mesh stays small too: the unhealthy node's neighbourhood
    answer = await stage.request_cycle(mon.bus.context(), mon.deps)
    op = mon.windows()[-1]
    assert answer["nodes"] == len(op.nodes) and "n4242" in {t.node_id for t in op.nodes}
    assert len(op.SerializeToString()) < LIMIT
    print(f"10,000 nodes: window {len(w.SerializeToString())} B ({len(w.nodes)} nodes), whole mesh {whole} B; "
          f"{2 * len(mesh)} reports in {time.monotonic() - started:.1f} s")


async def test_a_window_that_cannot_be_published_puts_the_health_back_and_is_retried(mon, monkeypatch):
    mesh = grid(3, width=3)
    for node, nb in mesh.items():
        await mon.report(node, nb)
    emit, failures = mon.bus.emit, []

    async def failing(subject, msg, **kw):
        if subject == subjects.MAPEK_TELEMETRY and len(failures) < 2:
            failures.append(subject)
            raise RuntimeError("nats: maximum payload exceeded")
        return await emit(subject, msg, **kw)
    monkeypatch.setattr(mon.bus, "emit", failing)

    mon.clock.advance(1.5)
    await mon.report("n0", mesh["n0"])
    await mon.report("n2", mesh["n2"])
    mon.clock.advance(0.6)
    assert await mon.tick() == ["n1"]
    assert mon.windows() == [] and mon.health("n1") == HEALTHY        # not left critical with no cycle
    [audit] = mon.bus.audited("cycle.publish_failed")
    assert audit.subject_id == "n1" and "maximum payload" in audit.details["error"]
    assert "n1" in mon.deps.unpublished

    await mon.tick()                                    # within the back-off: not tried yet
    assert len(failures) == 1
    mon.clock.advance(0.6)
    await mon.tick()                                    # tried, fails again: a longer back-off
    assert len(failures) == 2 and mon.health("n1") == HEALTHY and mon.deps.unpublished["n1"][1] == 2
    mon.clock.advance(1.1)
    await mon.report("n0", mesh["n0"])
    await mon.report("n2", mesh["n2"])
    await mon.tick()
    [w] = mon.windows()
    assert w.trigger_node == "n1" and mon.health("n1") == CRITICAL and mon.deps.unpublished == {}
    assert [c.current for c in mon.bus.messages(subjects.MAPEK_HEALTH) if c.node_id == "n1"] == [CRITICAL]


async def test_a_monitor_behind_its_telemetry_declares_no_healthy_node_dead(mon):
    mesh = grid(20, width=5)
    for node, nb in mesh.items():
        await mon.report(node, nb)
    mon.deps.lag.estimate(mon.clock(), pending=0)
    sent_at = mon.clock()
    mon.clock.advance(4)                                # 4 s with 20 nodes x 4 reports waiting, none handled
    mon.deps.lag.estimate(mon.clock(), pending=80)
    assert mon.deps.lag.lag_s == 4.0
    assert await mon.tick() == []                       # by the wall clock every node is silent for 4 s
    # the backlog is read: every node reported each second but n7, which died after its first report
    for k in range(1, 5):
        for node, nb in mesh.items():
            if node != "n7":
                await mon.report(node, nb, ts_ns=sent_at + k * S)
    mon.deps.lag.estimate(mon.clock(), pending=0)
    assert await mon.tick() == ["n7"]
    assert {n for n in mesh if mon.health(n) == CRITICAL} == {"n7"}
    assert [w.trigger_node for w in mon.windows()] == ["n7"]


async def test_while_behind_silence_is_measured_against_what_was_read(mon):
    mesh = grid(4, width=2)
    for node, nb in mesh.items():
        await mon.report(node, nb)
    t0 = mon.clock()
    mon.deps.lag.estimate(t0, pending=0)
    mon.clock.advance(6)
    # read up to 3.1 s after t0 (median delay 2.9 s), still behind: n3 stopped at t0 -> silent 3.1 s > 2 s
    for node, nb in mesh.items():
        if node != "n3":
            await mon.report(node, nb, ts_ns=t0 + int(3.1 * S))
    mon.deps.lag.estimate(mon.clock(), pending=500)
    assert round(mon.deps.lag.lag_s, 1) == 2.9
    assert await mon.tick() == ["n3"]


async def test_the_staleness_task_survives_failing_ticks(tmp_path, monkeypatch):
    mon = Monitor(tmp_path, stale_after_s=0.04)
    calls: list[int] = []

    async def tick(ctx, deps):
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("bucket telemetry away")
        return []
    monkeypatch.setattr(stage, "stale_tick", tick)
    task = asyncio.create_task(stage.staleness(mon.bus.context(), mon.deps))
    try:
        for _ in range(500):
            if len(calls) >= 4 or task.done():
                break
            await asyncio.sleep(0.01)
        assert not task.done() and len(calls) >= 4
    finally:
        task.cancel()


def test_ready_says_how_far_behind_the_monitor_is(tmp_path):
    mon = Monitor(tmp_path, max_lag_s=3)
    check = mon.bus.app.readiness_checks["telemetry_lag"]
    assert check() == (True, {"lag_s": 0.0, "pending": None, "max_lag_s": 3.0})
    mon.deps.lag.handled(T0, T0)
    mon.deps.lag.estimate(T0, pending=0)
    mon.deps.lag.estimate(T0 + 4 * S, pending=12_000)          # stuck behind 12,000 messages for 4 s
    ok, details = check()
    assert not ok and details["lag_s"] == 4.0 and details["pending"] == 12_000
    assert details["reason"] == "the monitor is 4.0 s behind its telemetry (at most 3 s)"


def test_the_telemetry_mirror_never_replaces_a_newer_report_with_an_older_replay(mon):
    new = mon.telemetry("n1", ["n2"], ts_ns=T0 + 3 * S)
    stage.apply_telemetry(mon.deps, "n1", new.SerializeToString())
    old = mon.telemetry("n1", ["n2"], ts_ns=T0 + 1 * S)
    stage.apply_telemetry(mon.deps, "n1", old.SerializeToString())       # the watcher lagging behind
    assert mon.deps.view.nodes["n1"].meta.ts_unix_ns == T0 + 3 * S
    assert mon.deps.deadlines.due(T0 + 4 * S + 1) == []                   # its deadline is the newer report's
    gone = events_pb2.NodeTelemetry()
    gone.CopyFrom(new)
    gone.reachable, gone.meta.ts_unix_ns = False, T0 + 5 * S              # a replica marked it unreachable
    stage.apply_telemetry(mon.deps, "n1", gone.SerializeToString())
    back = mon.telemetry("n1", ["n2"], ts_ns=T0 + int(4.9 * S))          # then it reported (its clock behind)
    stage.apply_telemetry(mon.deps, "n1", back.SerializeToString())
    assert mon.deps.view.nodes["n1"].reachable
