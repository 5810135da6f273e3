"""The monitor's decisions on the in-memory bus: the service's own composition root, its real handlers,
an injected clock; no nats-server, no sleeps."""
from __future__ import annotations

import json
import math

import pytest
from monitorkit import T0, MonitorOnBus

from services.monitor.main import MonitorSettings, build
from x0tta6bl4.bus import subjects
from x0tta6bl4.config import ConfigError
from x0tta6bl4.ids import derive_id, new_meta
from x0tta6bl4.monitoring.collectors import KernelEvent
from x0tta6bl4.monitoring.feed import SecuritySignal
from x0tta6bl4.stages import monitor as stage
from x0tta6bl4.v1 import common_pb2, events_pb2, mesh_pb2

HEALTHY, WARNING, CRITICAL = common_pb2.HEALTH_HEALTHY, common_pb2.HEALTH_WARNING, common_pb2.HEALTH_CRITICAL
LINE = {"n0": ["n1"], "n1": ["n0", "n2"], "n2": ["n1"]}   # n0 - n1 - n2


class Monitor(MonitorOnBus):

    async def report(self, node: str, **fields) -> events_pb2.NodeTelemetry:
        t = events_pb2.NodeTelemetry(meta=new_meta("agent"), node_id=node, reachable=True,
                                     neighbours=LINE.get(node, []), **fields)
        t.meta.ts_unix_ns = self.clock()
        await self.bus.publish(subjects.telemetry(node), t)
        return t

    async def event(self, node: str, kind: str, peer: str, **details: str) -> mesh_pb2.MeshEvent:
        ev = mesh_pb2.MeshEvent(meta=new_meta("agent"), node_id=node, kind=kind, peer=peer, details=details)
        ev.meta.ts_unix_ns = self.clock()
        await self.bus.publish(subjects.mesh_event(node), ev)
        return ev

    def changes(self, node: str | None = None) -> list[events_pb2.HealthChange]:
        return [m for m in self.bus.messages(subjects.MAPEK_HEALTH) if node is None or m.node_id == node]

    def windows(self) -> list[events_pb2.TelemetryWindow]:
        return self.bus.messages(subjects.MAPEK_TELEMETRY)

    def health(self, key: str) -> int | None:
        v = self.bus.kv("health").value(key)
        return None if v is None else int(v)

    def stored(self, node: str) -> events_pb2.NodeTelemetry | None:
        v = self.bus.kv("telemetry").value(node)
        return None if v is None else events_pb2.NodeTelemetry.FromString(v)


@pytest.fixture
def mon(tmp_path) -> Monitor:
    return Monitor(tmp_path)


async def test_a_node_going_critical_publishes_its_health_change_and_starts_a_cycle(mon):
    for n in ("n0", "n1", "n2"):
        await mon.report(n, cpu_pct=10)
    assert mon.bus.published == []                  # healthy from the start: nothing to say
    mon.clock.advance(0.5)
    bad = await mon.report("n1", cpu_pct=95)

    [w] = mon.windows()
    assert w.trigger_node == "n1" and list(w.trigger_reasons) == ["cpu_pct=95 > 90 (critical)"]
    assert w.meta.cycle_id == derive_id("cycle", bad.meta.event_id)
    assert w.first_symptom_unix_ns == bad.meta.ts_unix_ns
    assert [n.node_id for n in w.nodes] == ["n0", "n1", "n2"] and w.nodes[1].cpu_pct == 95
    [node_change] = mon.changes("n1")
    assert (node_change.previous, node_change.current) == (HEALTHY, CRITICAL)
    assert node_change.meta.cycle_id == w.meta.cycle_id
    [mesh_change] = mon.changes("")
    assert (mesh_change.previous, mesh_change.current) == (HEALTHY, CRITICAL)
    assert list(mesh_change.reasons) == ["critical: n1"]
    assert mon.health("node.n1") == CRITICAL and mon.health("mesh") == CRITICAL
    [audit] = mon.bus.audited("health.changed")
    assert audit.subject_id == "n1" and audit.cycle_id == w.meta.cycle_id
    assert audit.details["from"] == "HEALTH_HEALTHY" and audit.details["to"] == "HEALTH_CRITICAL"
    assert mon.stored("n1").cpu_pct == 95


async def test_no_change_publishes_nothing_and_recovery_starts_no_cycle(mon):
    await mon.report("n1", cpu_pct=95)
    assert len(mon.windows()) == 1 and len(mon.changes()) == 2
    before = len(mon.bus.published)
    await mon.report("n1", cpu_pct=97)             # still critical
    assert len(mon.bus.published) == before and mon.stored("n1").cpu_pct == 97

    await mon.report("n1", cpu_pct=20)             # better: a change, but no cycle
    assert len(mon.windows()) == 1
    recovered = mon.changes("n1")[-1]
    assert (recovered.previous, recovered.current) == (CRITICAL, HEALTHY) and recovered.meta.cycle_id == ""
    assert mon.health("node.n1") == HEALTHY and mon.health("mesh") == HEALTHY


async def test_an_older_report_than_the_stored_one_is_ignored(mon):
    await mon.report("n1", cpu_pct=10)
    mon.clock.advance(-1)
    await mon.report("n1", cpu_pct=99)             # delivered late
    assert mon.bus.published == [] and mon.stored("n1").cpu_pct == 10


async def test_enough_neighbour_loss_reports_declare_a_node_down(mon):
    for n in ("n0", "n1", "n2"):
        await mon.report(n)
    mon.clock.advance(0.6)                            # n1 falls silent; its neighbours notice
    first = await mon.event("n0", "neighbour_lost", "n1", silent_ms="600")
    assert mon.changes() == [] and mon.health("lost.n1.n0") == first.meta.ts_unix_ns
    assert mon.stored("n1").reachable                # one of two live neighbours is not enough
    mon.clock.advance(0.2)
    await mon.event("n2", "neighbour_lost", "n1")

    assert not mon.stored("n1").reachable
    [change] = mon.changes("n1")
    assert change.current == CRITICAL and list(change.reasons) == ["unreachable"]
    [w] = mon.windows()
    assert w.trigger_node == "n1" and w.first_symptom_unix_ns == first.meta.ts_unix_ns  # the first report
    assert [a.details["peer"] for a in mon.bus.audited("mesh.neighbour_lost")] == ["n1", "n1"]
    assert mon.bus.audited("mesh.neighbour_lost")[0].details["silent_ms"] == "600"

    mon.clock.advance(1)
    await mon.report("n1")                            # back: healthy, loss reports cleared
    assert mon.changes("n1")[-1].current == HEALTHY
    assert mon.health("lost.n1.n0") is None and mon.health("lost.n1.n2") is None
    assert "n1" not in mon.deps.losses.reporters


async def test_a_node_that_stops_reporting_becomes_unreachable_and_starts_a_cycle(mon):
    await mon.report("n0")
    last = await mon.report("n1")
    mon.clock.advance(1.5)
    await mon.report("n0")                            # n0 keeps reporting
    assert await stage.stale_tick(mon.bus.context(), mon.deps) == []
    mon.clock.advance(0.6)                            # n1 silent for 2.1 s > stale_after_s = 2
    assert await stage.stale_tick(mon.bus.context(), mon.deps) == ["n1"]

    gone = mon.stored("n1")
    assert not gone.reachable and gone.meta.ts_unix_ns == mon.clock()
    [change] = mon.changes("n1")
    assert (change.previous, change.current) == (HEALTHY, CRITICAL) and list(change.reasons) == ["unreachable"]
    [w] = mon.windows()
    assert w.trigger_node == "n1" and w.meta.cycle_id == derive_id("cycle", f"stale:n1:{last.meta.event_id}")
    assert mon.changes("n0") == []
    assert await stage.stale_tick(mon.bus.context(), mon.deps) == []   # marked once


async def test_stale_after_is_the_setting(tmp_path):
    mon = Monitor(tmp_path, stale_after_s=10)
    await mon.report("n1")
    mon.clock.advance(9)
    assert await stage.stale_tick(mon.bus.context(), mon.deps) == []
    mon.clock.advance(1.1)
    assert await stage.stale_tick(mon.bus.context(), mon.deps) == ["n1"]


async def test_invalid_telemetry_is_dead_lettered_and_changes_nothing(mon):
    no_node = events_pb2.NodeTelemetry(meta=new_meta("agent"), reachable=True, cpu_pct=99)
    nan = events_pb2.NodeTelemetry(meta=new_meta("agent"), node_id="n1", reachable=True, cpu_pct=math.nan)
    await mon.bus.publish(subjects.telemetry("n1"), no_node.SerializeToString())
    await mon.bus.publish(subjects.telemetry("n1"), nan.SerializeToString())
    await mon.bus.publish(subjects.telemetry("n1"), b"\x08not protobuf")

    reasons = [d.reason for d in mon.bus.dead_letters]
    assert reasons[0] == "x0tta6bl4.v1.NodeTelemetry: missing required field node_id"
    assert reasons[1] == "field cpu_pct is not a finite number (nan)"
    assert "does not parse" in reasons[2]
    assert {d.consumer for d in mon.bus.dead_letters} == {"monitor-telemetry"}
    assert mon.bus.published == [] and mon.stored("n1") is None and mon.deps.view.nodes == {}


async def test_a_custom_threshold_changes_the_verdict(tmp_path):
    custom_table = '{"cpu_percent": {"warning": 50, "critical": 60}}'
    spec, custom = Monitor(tmp_path / "a"), Monitor(tmp_path / "b", thresholds=custom_table)
    for mon in (spec, custom):
        await mon.report("n1", cpu_pct=65)
    assert spec.bus.published == []                  # 65 < the spec's warning 70
    [change] = custom.changes("n1")
    assert change.current == CRITICAL and list(change.reasons) == ["cpu_pct=65 > 60 (critical)"]
    assert stage.info(custom.deps)["thresholds"]["cpu_percent"]["critical"] == 60


def test_a_bad_threshold_stops_the_build_with_the_setting_named(tmp_path):
    s = MonitorSettings(data_dir=tmp_path, thresholds='{"cpu_percent": {"warning": 95, "critical": 90}}')
    with pytest.raises(ConfigError, match=r"^X0TTA6BL4_THRESHOLDS: cpu_percent.warning \(95\) must be lower"):
        build(s)
    with pytest.raises(ConfigError, match="X0TTA6BL4_MONITOR_HOSTS='12=': bad monitored process entry"):
        build(MonitorSettings(data_dir=tmp_path, monitor_hosts="12="))


async def test_a_threshold_file_is_used(tmp_path):
    f = tmp_path / "th.toml"
    f.write_text("[latency_p99_ms]\nwarning = 10\ncritical = 20\n")
    mon = Monitor(tmp_path, thresholds_file=f)
    await mon.report("n1", p99_latency_ms=15)
    [change] = mon.changes("n1")
    assert change.current == WARNING and list(change.reasons) == ["p99_latency_ms=15 >= 10 (warning)"]
    assert len(mon.windows()) == 1                   # a warning starts a cycle too


async def test_security_events_of_agents_are_audited_and_count_against_the_peer(mon):
    await mon.report("n0")
    await mon.report("n1")
    await mon.event("n0", "security.bad_signature", "n1", type="DATA")

    [audit] = mon.bus.audited("mesh.security.bad_signature")
    assert audit.subject_id == "n0" and audit.details == {"peer": "n1", "type": "DATA"}
    [change] = mon.changes("n1")
    assert change.current == WARNING and list(change.reasons) == ["failed_auth=1"]
    assert mon.windows()[0].trigger_node == "n1"
    # an event about a node the monitor never heard of is audited, and decides nothing
    await mon.event("n0", "security.unknown_peer", "", addr="10.0.0.9:7000")
    assert mon.bus.audited("mesh.security.unknown_peer")[0].details["addr"] == "10.0.0.9:7000"
    assert len(mon.changes()) == 2


async def test_a_kernel_security_signal_is_audited_at_once_and_warns_its_nodes(mon):
    await mon.report("n0")
    await mon.report("n1")
    counts = {"n0": {"security.sensitive_open": 1.0, "proc.pid": 4242.0}}
    mon.deps.kernel_for = lambda node: counts.get(node, {})
    ev = KernelEvent("sensitive_open", pid=4243, tid=4243, uid=0, gid=0, comm="python", ts_ns=5, received_ns=7,
                     path="/etc/shadow", watch_prefix="/etc/shadow")
    await stage.on_security(SecuritySignal(ev, 4242, ("n0", "n9")), mon.bus.context(), mon.deps)

    [audit] = mon.bus.audited("security.sensitive_open")
    assert audit.subject_id == "n0,n9" and audit.details["path"] == "/etc/shadow"
    assert audit.details["host_pid"] == "4242" and audit.details["pid"] == "4243"
    [change] = mon.changes("n0")
    assert change.current == WARNING and list(change.reasons) == ["security.sensitive_open=1"]
    assert mon.stored("n0").kernel["proc.pid"] == 4242
    assert mon.changes("n1") == [] and mon.stored("n9") is None   # n9 never reported: nothing to re-evaluate


async def test_the_replica_that_loses_the_race_publishes_nothing(tmp_path):
    a, b = Monitor(tmp_path / "a"), Monitor(tmp_path / "b")
    b.bus.buckets = a.bus.buckets          # one broker; b's cache of the health bucket lags behind
    await a.report("n1", cpu_pct=95)
    assert len(a.changes("n1")) == 1
    await b.report("n1", cpu_pct=95)
    assert b.bus.published == [] and b.bus.audits == []
    assert a.health("node.n1") == CRITICAL


async def test_the_health_cache_follows_the_bucket(mon):
    await mon.bus.kv("health").put("node.n1", str(CRITICAL).encode())   # recorded by another replica
    await mon.report("n1", cpu_pct=95)
    assert mon.changes() == []                       # nothing new to say
    await mon.bus.kv("health").put("lost.n2.n1", str(T0).encode())
    assert mon.deps.losses.first_report_ns("n2") == T0


async def test_periodic_windows_and_operator_cycles(tmp_path):
    mon = Monitor(tmp_path, window_s=5)
    assert await stage.window_tick(mon.bus.context(), mon.deps) is None    # no node yet
    await mon.report("n1")
    w1 = await stage.window_tick(mon.bus.context(), mon.deps)
    mon.clock.advance(1)
    w2 = await stage.window_tick(mon.bus.context(), mon.deps)
    assert w1 is not None and w2 is not None and w1.meta.event_id == w2.meta.event_id  # same period, same id
    mon.clock.advance(5)
    w3 = await stage.window_tick(mon.bus.context(), mon.deps)
    assert w3 is not None and w3.meta.event_id != w1.meta.event_id and w3.trigger_node == ""

    answer = await stage.request_cycle(mon.bus.context(), mon.deps)
    w = mon.windows()[-1]
    assert answer == {"cycle_id": w.meta.cycle_id, "nodes": 1}
    assert list(w.trigger_reasons) == ["operator request"] and w.first_symptom_unix_ns == mon.clock()
    [audit] = mon.bus.audited("cycle.requested")
    assert audit.cycle_id == w.meta.cycle_id and audit.details == {"nodes": 1}


async def test_operator_cycle_names_its_trigger_node_and_refuses_an_unknown_one(tmp_path):
    """monitor.rpc.Cycle with {"trigger", "reasons"} (the MCP server's run_mapek_cycle: operators may not
    publish mapek.telemetry themselves): the window names the node; an unknown node starts nothing."""
    mon = Monitor(tmp_path, window_s=5)
    await mon.report("n1")
    answer = await stage.request_cycle(mon.bus.context(), mon.deps, "n1", ["operator: self-heal"])
    w = mon.windows()[-1]
    assert answer["cycle_id"] == w.meta.cycle_id
    assert w.trigger_node == "n1" and list(w.trigger_reasons) == ["operator: self-heal"]
    before = len(mon.windows())
    bad = await stage.request_cycle(mon.bus.context(), mon.deps, "n9")
    assert bad == {"error": "unknown node 'n9'; known: n1"} and len(mon.windows()) == before


async def test_info_says_what_runs(mon):
    await mon.report("n1")
    body = stage.info(mon.deps)
    assert body["service"] == "monitor" and body["nodes"] == 1
    assert body["thresholds"]["cpu_percent"] == {"warning": 70.0, "critical": 90.0}
    assert body["state"] == "starting" and body["hosts"] == {}    # the kernel collector's part


# ---- what a node cannot have sent (issue #16) --------------------------------------------------------------
def telemetry(mon: Monitor, node: str, ts_ns: int | None = None, **fields) -> events_pb2.NodeTelemetry:
    t = events_pb2.NodeTelemetry(meta=new_meta("agent"), node_id=node, reachable=True,
                                 neighbours=LINE.get(node, []), **fields)
    t.meta.ts_unix_ns = mon.clock() if ts_ns is None else ts_ns
    return t


async def test_a_node_id_that_does_not_match_its_subject_is_refused(mon):
    await mon.report("n1", cpu_pct=10)
    await mon.bus.publish(subjects.telemetry("n2"), telemetry(mon, "n1", cpu_pct=99))   # n2 speaking for n1
    assert mon.stored("n1").cpu_pct == 10 and mon.bus.published == []
    [audit] = mon.bus.audited("telemetry.refused")
    assert audit.subject_id == "mesh.telemetry.n2" and audit.details["kind"] == "subject_mismatch"
    assert audit.details["reason"] == "node_id 'n1' does not match subject 'mesh.telemetry.n2'"

    forged = mesh_pb2.MeshEvent(meta=new_meta("agent"), node_id="n0", kind="neighbour_lost", peer="n1")
    forged.meta.ts_unix_ns = mon.clock()
    await mon.bus.publish(subjects.mesh_event("n2"), forged)                            # n2 speaking for n0
    assert mon.health("lost.n1.n0") is None and mon.bus.audited("mesh.neighbour_lost") == []
    [refused] = mon.bus.audited("event.refused")
    assert refused.details["reason"] == "node_id 'n0' does not match subject 'mesh.event.n2'"
    assert mon.deps.refusals == {"subject_mismatch": 2} and stage.info(mon.deps)["refused"] == {"subject_mismatch": 2}
    assert mon.bus.dead_letters == []                 # acknowledged: refused, never retried


async def test_a_report_from_ten_years_ahead_is_refused_and_real_reports_still_count(mon):
    """The measured attack: one forged report stamped far ahead made every later real report look older."""
    decade = 10 * 365 * 86400 * 10**9
    await mon.bus.publish(subjects.telemetry("n1"), telemetry(mon, "n1", mon.clock() + decade, cpu_pct=99))
    assert mon.stored("n1") is None and mon.bus.published == []
    [audit] = mon.bus.audited("telemetry.refused")
    assert audit.details["kind"] == "future_timestamp" and "in the future (at most 30 s)" in audit.details["reason"]

    mon.clock.advance(1)
    await mon.report("n1", cpu_pct=95)                # the real node: heard, and it is critical
    assert mon.stored("n1").cpu_pct == 95 and mon.changes("n1")[0].current == CRITICAL


async def test_the_clock_skew_allowed_is_the_setting(tmp_path):
    mon = Monitor(tmp_path, report_max_future_s=5, report_max_age_s=60)
    await mon.bus.publish(subjects.telemetry("n1"), telemetry(mon, "n1", mon.clock() + 4 * 10**9))
    assert mon.stored("n1") is not None                        # 4 s ahead: a skewed clock, accepted
    await mon.bus.publish(subjects.telemetry("n2"), telemetry(mon, "n2", mon.clock() + 6 * 10**9))
    await mon.bus.publish(subjects.telemetry("n0"), telemetry(mon, "n0", mon.clock() - 61 * 10**9))
    assert mon.stored("n2") is None and mon.stored("n0") is None
    assert mon.deps.refusals == {"future_timestamp": 1, "stale_timestamp": 1}
    [stale] = [a for a in mon.bus.audited("telemetry.refused") if a.details["kind"] == "stale_timestamp"]
    assert stale.details["reason"] == "timestamp 61.0 s in the past (at most 60 s)"


async def test_a_flood_of_refusals_is_audited_once_per_interval_with_the_count(mon):
    for _ in range(5):
        await mon.bus.publish(subjects.telemetry("n2"), telemetry(mon, "n1"))
    [first] = mon.bus.audited("telemetry.refused")
    assert first.details["suppressed_since_last"] == 0 and mon.deps.refusals["subject_mismatch"] == 5
    mon.clock.advance(10)
    await mon.bus.publish(subjects.telemetry("n2"), telemetry(mon, "n1"))
    assert [a.details["suppressed_since_last"] for a in mon.bus.audited("telemetry.refused")] == [0, 4]


async def test_forged_loss_reports_do_not_take_down_a_node_that_still_reports(mon):
    """The measured attack: two neighbours' (forged) neighbour_lost reports about a healthy node made the
    planner reroute around it, and repeating them every 10 s kept it out."""
    for _ in range(3):                                 # 30 s of attack; n1 reports every 0.25 s throughout
        for n in ("n0", "n1", "n2"):
            await mon.report(n)
        mon.clock.advance(0.1)
        await mon.event("n0", "neighbour_lost", "n1")
        await mon.event("n2", "neighbour_lost", "n1")
        assert mon.stored("n1").reachable and mon.changes() == [] and mon.windows() == []
        for _ in range(4):
            mon.clock.advance(0.25)
            await mon.report("n1")                     # the node itself: its reports withdraw the loss reports
            await mon.report("n0")
            await mon.report("n2")
            assert await stage.stale_tick(mon.bus.context(), mon.deps) == []
        assert mon.health("lost.n1.n0") is None and mon.health("lost.n1.n2") is None
        assert "n1" not in mon.deps.losses.reporters
        mon.clock.advance(9)
    verdicts = [a.details["verdict"] for a in mon.bus.audited("mesh.neighbour_lost")]
    assert verdicts == ["not enough neighbours agree yet", "not down: n1 itself reported 0.10 s ago"] * 3
    assert mon.changes() == [] and mon.windows() == []


async def test_a_node_reported_lost_while_its_last_report_is_fresh_is_declared_down_once_it_stays_silent(mon):
    for n in ("n0", "n1", "n2"):
        await mon.report(n)
    mon.clock.advance(0.3)                             # n1 died right after its last report
    first = await mon.event("n0", "neighbour_lost", "n1")
    await mon.event("n2", "neighbour_lost", "n1")
    assert mon.stored("n1").reachable                  # its own report is 0.3 s old: not yet
    mon.clock.advance(0.1)
    assert await stage.stale_tick(mon.bus.context(), mon.deps) == []
    mon.clock.advance(0.15)                            # 0.55 s without a word from n1 itself
    assert await stage.stale_tick(mon.bus.context(), mon.deps) == ["n1"]
    assert not mon.stored("n1").reachable
    [change] = mon.changes("n1")
    assert change.current == CRITICAL and list(change.reasons) == ["unreachable"]
    [w] = mon.windows()
    assert w.trigger_node == "n1" and w.first_symptom_unix_ns == first.meta.ts_unix_ns
    assert w.meta.cycle_id == derive_id("cycle", f"lost:n1:{first.meta.ts_unix_ns}")
    assert await stage.stale_tick(mon.bus.context(), mon.deps) == []      # declared once


async def test_a_loss_report_is_never_dated_after_its_arrival(mon):
    for n in ("n0", "n1", "n2"):
        await mon.report(n)
    ev = mesh_pb2.MeshEvent(meta=new_meta("agent"), node_id="n0", kind="neighbour_lost", peer="n1")
    ev.meta.ts_unix_ns = mon.clock() + 20 * 10**9      # within the skew allowed, but ahead of the monitor
    await mon.bus.publish(subjects.mesh_event("n0"), ev)
    assert mon.health("lost.n1.n0") == mon.clock()
    mon.clock.advance(0.25)
    await mon.report("n1")                             # so the node's next report withdraws it
    assert mon.health("lost.n1.n0") is None


def test_a_stored_report_from_the_future_does_not_hide_newer_ones(tmp_path):
    mon = Monitor(tmp_path)
    poisoned = telemetry(mon, "n1", mon.clock() + 10 * 365 * 86400 * 10**9)
    stage.apply_telemetry(mon.deps, "n1", poisoned.SerializeToString())   # written before reports were checked
    assert mon.deps.seen_ns["n1"] == 0


# ---- planned maintenance is not a failure ---------------------------------------------------------------
async def announce(mon: Monitor, node: str, kind: str, **details: str) -> None:
    """What meshctl mesh down / drain publishes (as the operator) on the node's event subject."""
    ev = mesh_pb2.MeshEvent(meta=new_meta("meshctl"), node_id=node, kind=kind, details=details)
    ev.meta.ts_unix_ns = mon.clock()
    await mon.bus.publish(subjects.mesh_event(node), ev)


async def test_a_node_in_maintenance_that_stops_reporting_starts_no_cycle(mon):
    for n in ("n0", "n1", "n2"):
        await mon.report(n, mesh_generation="g1")
    await announce(mon, "n1", stage.MAINTENANCE_START, reason="drain")
    record = json.loads(mon.bus.kv("health").value("maint.n1"))
    assert record == {"since_ns": mon.clock(), "reason": "drain", "by": "meshctl", "generation": "g1"}
    [audit] = mon.bus.audited("mesh.maintenance.start")
    assert audit.details["verdict"] == "in maintenance: no repair"

    mon.clock.advance(2.1)                            # n1 stopped: silent past stale_after_s
    await mon.report("n0", mesh_generation="g1")
    await mon.report("n2", mesh_generation="g1")
    assert await stage.stale_tick(mon.bus.context(), mon.deps) == ["n1"]
    await mon.event("n0", "neighbour_lost", "n1")     # its neighbours notice, as they do
    await mon.event("n2", "neighbour_lost", "n1")
    [change] = mon.changes("n1")                      # the truth is recorded...
    assert change.current == CRITICAL and "in planned maintenance: no repair" in change.reasons
    assert mon.windows() == []                        # ...but no cycle starts
    assert mon.health("mesh") is None and mon.changes("") == []   # and the mesh is not unhealthy for it


async def test_windows_leave_nodes_in_maintenance_out(tmp_path):
    mon = Monitor(tmp_path, window_s=5)
    for n in ("n0", "n1", "n2"):
        await mon.report(n)
    await announce(mon, "n2", stage.MAINTENANCE_START, reason="mesh down")
    w = await stage.window_tick(mon.bus.context(), mon.deps)
    assert w is not None and [t.node_id for t in w.nodes] == ["n0", "n1"]
    await mon.report("n1", cpu_pct=99)                # a real failure elsewhere still starts its cycle
    [_, cycle] = mon.windows()
    assert cycle.trigger_node == "n1" and [t.node_id for t in cycle.nodes] == ["n0", "n1"]


async def test_maintenance_ends_with_its_announcement_and_a_node_still_down_is_a_failure_then(mon):
    await mon.report("n0")
    await mon.report("n1")
    await announce(mon, "n1", stage.MAINTENANCE_START, reason="drain")
    mon.clock.advance(2.1)
    await mon.report("n0")
    await stage.stale_tick(mon.bus.context(), mon.deps)
    assert mon.windows() == []
    await announce(mon, "n1", stage.MAINTENANCE_END, reason="undrain")
    assert mon.bus.kv("health").value("maint.n1") is None and not mon.deps.in_maintenance("n1")
    [ended] = mon.bus.audited("maintenance.ended")
    assert ended.subject_id == "n1" and ended.details == {"reason": "undrain"}
    mon.clock.advance(1.9)                            # it gets stale_after_s to report again
    await mon.report("n0")
    await stage.stale_tick(mon.bus.context(), mon.deps)
    assert mon.windows() == []
    mon.clock.advance(0.2)                            # it did not come back: from now on that is a failure
    await mon.report("n0")
    await stage.stale_tick(mon.bus.context(), mon.deps)
    [w] = mon.windows()
    assert w.trigger_node == "n1" and "not back after its maintenance" in w.trigger_reasons
    await stage.stale_tick(mon.bus.context(), mon.deps)
    assert len(mon.windows()) == 1                    # once


async def test_a_drained_node_that_reports_again_after_its_maintenance_starts_no_cycle(mon):
    await mon.report("n0")
    await mon.report("n1")
    await announce(mon, "n1", stage.MAINTENANCE_START, reason="drain")
    mon.clock.advance(2.1)
    await mon.report("n0")
    await stage.stale_tick(mon.bus.context(), mon.deps)    # stopped: unreachable, in maintenance
    await announce(mon, "n1", stage.MAINTENANCE_END, reason="undrain")   # undrain revives it...
    mon.clock.advance(0.5)
    await mon.report("n1")                                 # ...and its first report comes a moment later
    mon.clock.advance(2.0)
    await mon.report("n0")
    await mon.report("n1")
    await stage.stale_tick(mon.bus.context(), mon.deps)
    assert mon.windows() == [] and mon.changes("n1")[-1].current == HEALTHY


async def test_a_new_mesh_generation_under_the_same_names_is_not_in_maintenance(mon):
    for n in ("n0", "n1"):
        await mon.report(n, mesh_generation="old")
    for n in ("n0", "n1"):                            # meshctl mesh down
        await announce(mon, n, stage.MAINTENANCE_START, reason="mesh down")
    mon.clock.advance(2.1)
    assert sorted(await stage.stale_tick(mon.bus.context(), mon.deps)) == ["n0", "n1"]
    assert mon.windows() == []
    await mon.report("n0", mesh_generation="new")     # meshctl mesh up: a new mesh, same node names
    assert not mon.deps.in_maintenance("n0") and mon.deps.in_maintenance("n1")
    [ended] = mon.bus.audited("maintenance.ended")
    assert ended.details["reason"].startswith("reports from a new mesh generation new")
    await mon.report("n0", mesh_generation="new", cpu_pct=99)   # and its failures are failures again
    assert [w.trigger_node for w in mon.windows()] == ["n0"]


async def test_maintenance_survives_a_restart_of_the_monitor(tmp_path):
    """The record lives in the health bucket: another replica, or this one restarted, follows it."""
    one = Monitor(tmp_path)
    await one.report("n1")
    await announce(one, "n1", stage.MAINTENANCE_START, reason="drain")
    two = Monitor(tmp_path)
    two.bus.buckets["health"] = one.bus.kv("health")
    for key in await one.bus.kv("health").keys():
        stage.apply_health(two.deps, key, one.bus.kv("health").value(key))
    assert two.deps.in_maintenance("n1")
    await two.report("n1")
    two.clock.advance(2.1)
    await stage.stale_tick(two.bus.context(), two.deps)
    assert two.windows() == []
