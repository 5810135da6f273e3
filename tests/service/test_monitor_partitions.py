"""Telemetry partitioned across monitor replicas (issue #20), on the in-memory bus: two replicas of the real
service (partitions 0 and 1 of 2) sharing the ``telemetry`` and ``health`` buckets as on NATS, each given
only its partition's reports (what its durable consumer ``monitor-telemetry-p<i>`` receives from the MESH
stream's subject transform). No nats-server, no sleeps: tests/integration/monitor/test_monitor_partitions.py
runs the same on a real broker."""
from __future__ import annotations

import pytest
from monitorkit import MonitorOnBus

from services.monitor.main import MonitorSettings, build
from x0tta6bl4.bus import subjects
from x0tta6bl4.config import ConfigError, load_settings
from x0tta6bl4.ids import new_meta
from x0tta6bl4.stages import monitor as stage
from x0tta6bl4.v1 import common_pb2, events_pb2, mesh_pb2

CRITICAL = common_pb2.HEALTH_CRITICAL
LINE = {"n0": ["n1"], "n1": ["n0", "n2"], "n2": ["n1", "n3"], "n3": ["n2"]}
K = 2


def test_the_line_spans_both_partitions() -> None:
    assert {n: subjects.partition_of(n, K) for n in LINE} == {"n0": 1, "n1": 0, "n2": 1, "n3": 0}


class Replicas:
    """Replicas of partitions 0 and 1 on one set of buckets (one clock)."""

    def __init__(self, tmp_path) -> None:
        self.a = MonitorOnBus(tmp_path / "a", monitor_partitions=K, monitor_partition=0)
        self.b = MonitorOnBus(tmp_path / "b", monitor_partitions=K, monitor_partition=1)
        self.b.clock = self.a.clock
        self.b.deps.clock_ns = self.a.clock
        for name, kv in self.b.bus.buckets.items():        # b's mirrors follow a's buckets: shared state
            self.a.bus.kv(name).listeners.extend(kv.listeners)
        self.b.bus.buckets = self.a.bus.buckets
        self.clock = self.a.clock

    def of(self, node: str) -> MonitorOnBus:
        return (self.a, self.b)[subjects.partition_of(node, K)]

    async def report(self, node: str, subject: str = "") -> None:
        t = events_pb2.NodeTelemetry(meta=new_meta("agent"), node_id=node, reachable=True, neighbours=LINE[node])
        t.meta.ts_unix_ns = self.clock()
        for m in (self.a, self.b):      # each replica's consumer takes its partition's subjects only
            await m.bus.publish(subject or subjects.telemetry_stored(node, K), t)

    async def event(self, to: MonitorOnBus, node: str, kind: str, peer: str) -> None:
        ev = mesh_pb2.MeshEvent(meta=new_meta("agent"), node_id=node, kind=kind, peer=peer)
        ev.meta.ts_unix_ns = self.clock()
        await to.bus.publish(subjects.mesh_event(node), ev)      # the shared consumer: one replica gets it

    async def tick(self) -> tuple[list[str], list[str]]:
        return (await stage.stale_tick(self.a.bus.context(), self.a.deps),
                await stage.stale_tick(self.b.bus.context(), self.b.deps))

    def windows(self, node: str) -> list[tuple[str, events_pb2.TelemetryWindow]]:
        return [(name, w) for name, m in (("a", self.a), ("b", self.b))
                for w in m.bus.messages(subjects.MAPEK_TELEMETRY) if w.trigger_node == node]

    def criticals(self, node: str) -> list[str]:
        return [name for name, m in (("a", self.a), ("b", self.b)) for c in m.bus.messages(subjects.MAPEK_HEALTH)
                if c.node_id == node and c.current == CRITICAL]


@pytest.fixture
def two(tmp_path) -> Replicas:
    return Replicas(tmp_path)


async def test_each_replica_handles_and_judges_only_its_partitions_nodes(two):
    for n in LINE:
        await two.report(n)
    assert set(two.a.deps.seen_ns) == {"n1", "n3"} and set(two.b.deps.seen_ns) == {"n0", "n2"}
    assert (len(two.a.deps.deadlines), len(two.b.deps.deadlines)) == (2, 2)   # staleness of its own nodes only
    two.clock.advance(1.5)
    for n in ("n0", "n2", "n3"):
        await two.report(n)
    two.clock.advance(0.6)                    # n1 (partition 0) silent for 2.1 s
    assert await two.tick() == (["n1"], [])
    two.clock.advance(1.5)
    for n in ("n1", "n3"):
        await two.report(n)
    two.clock.advance(0.6)                    # n0 and n2 (partition 1) silent since 2.1 s
    marked = await two.tick()
    assert (marked[0], sorted(marked[1])) == ([], ["n0", "n2"])

    assert [name for name, _ in two.windows("n1")] == ["a"] and two.criticals("n1") == ["a"]
    assert [name for name, _ in two.windows("n0")] == ["b"] and two.criticals("n0") == ["b"]
    assert [name for name, _ in two.windows("n2")] == ["b"] and two.criticals("n2") == ["b"]
    assert await two.tick() == ([], [])       # once
    # a window still carries the neighbours of the other partition (from the shared telemetry bucket)
    [(_, w)] = two.windows("n1")
    assert {t.node_id for t in w.nodes} == set(LINE)


async def test_a_loss_report_handled_by_another_partitions_replica_is_judged_by_the_nodes_own(two):
    for n in LINE:
        await two.report(n)
    two.clock.advance(0.3)
    await two.event(two.b, "n0", "neighbour_lost", "n1")       # n1 is partition 0's; b takes the event
    await two.event(two.b, "n2", "neighbour_lost", "n1")
    audited = [a for a in two.b.bus.audits if a.event_type == "mesh.neighbour_lost"]
    assert audited and all(a.details["verdict"] == "left to the monitor of partition 0" for a in audited)
    assert two.b.deps.losses.reporters["n1"] and two.a.deps.losses.reporters["n1"]   # via the health bucket
    two.clock.advance(0.3)                     # 0.6 s without a word from n1 itself (own_report_fresh_s = 0.5)
    assert await two.tick() == (["n1"], [])
    assert two.criticals("n1") == ["a"] and [name for name, _ in two.windows("n1")] == ["a"]


async def test_a_report_stored_under_another_partition_is_refused(two):
    await two.report("n0", subject="mesh.telemetry.0.n0")      # n0 is partition 1's
    assert two.a.deps.refusals == {stage.REFUSED_SUBJECT: 1} and "n0" not in two.a.deps.seen_ns


async def test_info_names_the_partition_and_the_nodes_it_judges(two):
    for n in LINE:
        await two.report(n)
    got = stage.info(two.a.deps)
    assert (got["partition"], got["partitions"], got["nodes_judged"], got["nodes"]) == (0, 2, 2, 4)


def test_the_telemetry_consumer_of_each_partition(tmp_path) -> None:
    one = build(MonitorSettings(data_dir=tmp_path, monitor_collector="off", discover_hosts=False))
    assert [s.durable for s in one.subscriptions] == ["monitor-telemetry", "monitor-events"]
    p1 = build(MonitorSettings(data_dir=tmp_path, monitor_collector="off", discover_hosts=False,
                               monitor_partitions=4, monitor_partition=3))
    assert [s.durable for s in p1.subscriptions] == ["monitor-telemetry-p3", "monitor-events"]
    assert subjects.consumer("monitor-telemetry-p3").subject == "mesh.telemetry.3.*"


@pytest.mark.parametrize(("env", "expected"), [
    ({"monitor_partitions": 2, "monitor_partition": 2},
     "X0TTA6BL4_MONITOR_PARTITION=2: must be below X0TTA6BL4_MONITOR_PARTITIONS=2"),
    ({"monitor_partitions": 0}, "X0TTA6BL4_MONITOR_PARTITIONS=0: Input should be greater than or equal to 1"),
    ({"monitor_partitions": 17}, "X0TTA6BL4_MONITOR_PARTITIONS=17: Input should be less than or equal to 16"),
    ({"monitor_partition": -1}, "X0TTA6BL4_MONITOR_PARTITION=-1: Input should be greater than or equal to 0"),
])
def test_bad_partition_settings_are_a_config_error_naming_them(tmp_path, env, expected) -> None:
    with pytest.raises(ConfigError) as e:
        build(load_settings(MonitorSettings, data_dir=tmp_path, monitor_collector="off", discover_hosts=False,
                            **env))
    assert str(e.value).startswith(expected), str(e.value)


def test_the_partition_limit_is_the_subject_tables() -> None:
    assert MonitorSettings.model_fields["monitor_partitions"].metadata[-1].le == subjects.MAX_MONITOR_PARTITIONS
    assert len(subjects.PARTITION_CONSUMERS) == subjects.MAX_MONITOR_PARTITIONS


async def test_no_silence_is_judged_while_the_stream_is_partitioned_otherwise_and_counts_from_the_match(two):
    for n in LINE:
        await two.report(n)
    two.a.deps.judging = False                 # MESH stores telemetry for another partition count
    two.clock.advance(5)
    assert await stage.stale_tick(two.a.bus.context(), two.a.deps) == []
    two.a.deps.judging, two.a.deps.judged_since_ns = True, two.clock()      # they match again
    two.clock.advance(1.5)
    assert await stage.stale_tick(two.a.bus.context(), two.a.deps) == []     # 6.5 s silent, 1.5 s judged
    await two.report("n3")
    two.clock.advance(0.6)
    assert await stage.stale_tick(two.a.bus.context(), two.a.deps) == ["n1"]
    assert two.criticals("n1") == ["a"] and two.criticals("n3") == []


def test_the_partition_mismatch_named() -> None:
    from x0tta6bl4.monitoring.wiring import partition_mismatch
    assert partition_mismatch(None, 1) == "" and partition_mismatch(subjects.telemetry_transform(4), 4) == ""
    assert partition_mismatch(None, 2) == (
        "the MESH stream stores telemetry as published (one partition), this monitor expects it in 2 partitions "
        "(X0TTA6BL4_MONITOR_PARTITIONS=2): provision with the same setting as the monitors")
    assert partition_mismatch(subjects.telemetry_transform(4), 1).startswith(
        "the MESH stream stores telemetry in 4 partitions, this monitor expects it as published (one partition)")


async def test_a_replica_on_the_broker_judges_no_silence_before_its_first_lag_estimate(tmp_path):
    """A restarted replica's mirror replays reports older than its consumer's backlog: until it knows how far
    behind it is (the first estimate from the broker), nobody is stale."""
    mon = MonitorOnBus(tmp_path)
    t = events_pb2.NodeTelemetry(meta=new_meta("agent"), node_id="n1", reachable=True)
    t.meta.ts_unix_ns = mon.clock()
    await mon.bus.publish(subjects.telemetry("n1"), t)
    mon.deps.judge_after_first_lag = True             # set on the broker (wiring.attach_lag's startup)
    mon.clock.advance(5)
    assert await stage.stale_tick(mon.bus.context(), mon.deps) == []
    mon.deps.lag.estimate(mon.clock(), 0)             # caught up: the horizon is now
    assert await stage.stale_tick(mon.bus.context(), mon.deps) == ["n1"]
