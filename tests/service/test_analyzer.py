"""The analyze stage on the in-memory bus: windows in; anomalies, audits and dead letters out.

The service is built by its own composition root with the threshold rules (the learned detector takes
seconds to load; the integration tests run it on real processes)."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from services.analyzer.main import AnalyzerSettings, build
from x0tta6bl4.analysis.live import History
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.memory import TestBus
from x0tta6bl4.ids import derive_id, new_meta
from x0tta6bl4.monitoring.thresholds import Thresholds
from x0tta6bl4.stages import analyzer as stage
from x0tta6bl4.v1 import common_pb2, events_pb2

RING = {f"n{i}": [f"n{(i - 1) % 6}", f"n{(i + 1) % 6}"] for i in range(6)}


def tel(node: str, down: bool = False, **over) -> events_pb2.NodeTelemetry:
    t = events_pb2.NodeTelemetry(meta=new_meta("monitor"), node_id=node, throughput_bps=9800.0, cpu_pct=5.0,
                                 mem_pct=20.0, reachable=not down, neighbours=[] if down else RING[node])
    if not down:
        for p in RING[node]:
            t.links.add(peer=p, rssi_dbm=-54.0, snr_db=41.0, loss_rate=0.0, latency_ms=0.5, link_age_s=3.0)
    for k, v in over.items():
        setattr(t, k, v)
    return t


def window(eid: str, nodes, trigger: str = "") -> events_pb2.TelemetryWindow:
    return events_pb2.TelemetryWindow(meta=new_meta("monitor", f"cycle-{eid}", event_id=eid), trigger_node=trigger,
                                      nodes=list(nodes))


def ring(**replace) -> list[events_pb2.NodeTelemetry]:
    return [replace.get(n) or tel(n) for n in RING]


@pytest.fixture
def bus() -> TestBus:
    return TestBus(build(AnalyzerSettings(use_model=False, history_wait_s=0)))


async def test_a_dead_node_is_the_root_cause_of_its_neighbours_symptoms(bus: TestBus):
    w = window("w1", ring(n3=tel("n3", down=True)), trigger="n3")
    await bus.publish(subjects.MAPEK_TELEMETRY, w)
    [a] = bus.messages(subjects.MAPEK_ANOMALY)
    assert (a.root_cause, a.fault_type, a.incident_id) == ("n3", "node_down", "n3.node_down")
    assert list(a.affected_nodes) == ["n2", "n4"] and a.severity == common_pb2.SEVERITY_CRITICAL
    assert a.confidence > 0.9 and a.detector == "rules"
    # same window -> same anomaly id (a re-run publishes nothing new), in the window's cycle
    assert a.meta.event_id == derive_id("anomaly", "w1", "n3.node_down") and a.meta.cycle_id == "cycle-w1"
    [audit] = bus.audited("anomaly.detected")
    assert audit.subject_id == "n3.node_down" and audit.details["affected"] == "n2,n4"
    assert bus.dead_letters == []


async def test_a_window_reports_only_the_incidents_of_its_trigger_node(bus: TestBus):
    nodes = ring(n1=tel("n1", cpu_pct=97.0), n4=tel("n4", down=True))
    await bus.publish(subjects.MAPEK_TELEMETRY, window("w1", nodes, trigger="n1"))
    assert [(a.root_cause, a.fault_type) for a in bus.messages(subjects.MAPEK_ANOMALY)] == [("n1", "cpu_overload")]
    # a periodic window (no trigger) reports every incident
    await bus.publish(subjects.MAPEK_TELEMETRY, window("w2", nodes))
    found = {(a.root_cause, a.fault_type) for a in bus.messages(subjects.MAPEK_ANOMALY)[1:]}
    assert found == {("n1", "cpu_overload"), ("n4", "node_down")}


async def test_a_healthy_window_publishes_nothing(bus: TestBus):
    await bus.publish(subjects.MAPEK_TELEMETRY, window("w1", ring()))
    assert bus.messages(subjects.MAPEK_ANOMALY) == [] and bus.audits == [] and bus.dead_letters == []


async def test_windows_that_cannot_be_analysed_are_dead_lettered_with_the_reason(bus: TestBus):
    # the trigger node reports an impossible value
    await bus.publish(subjects.MAPEK_TELEMETRY, window("w1", ring(n2=tel("n2", loss_pct=-5.0)), trigger="n2"))
    # a trigger node nobody reported
    await bus.publish(subjects.MAPEK_TELEMETRY, window("w2", ring(), trigger="n99"))
    # no valid node at all
    await bus.publish(subjects.MAPEK_TELEMETRY, window("w3", [tel("n0", cpu_pct=150.0), tel("n1", mem_pct=-1.0)]))
    # NaN: not even a valid message (published raw: the codec refuses it on decode)
    nan = window("w4", ring(n1=tel("n1", cpu_pct=float("nan"))))
    await bus.publish(subjects.MAPEK_TELEMETRY, nan.SerializeToString())
    reasons = [d.reason for d in bus.dead_letters]
    assert len(reasons) == 4 and {d.consumer for d in bus.dead_letters} == {"analyzer"}
    assert reasons[0].startswith("rejected by analyzer: trigger node telemetry invalid: node 'n2'")
    assert "'loss_pct' is negative" in reasons[0]
    assert reasons[1] == "rejected by analyzer: trigger node 'n99' is unknown: no telemetry for it in the window"
    assert reasons[2].startswith("rejected by analyzer: no valid node telemetry in the window: ")
    assert "'cpu_pct' = 150 exceeds 100" in reasons[2] and "'mem_pct' is negative" in reasons[2]
    assert reasons[3] == "field nodes[1].cpu_pct is not a finite number (nan)"
    assert bus.messages(subjects.MAPEK_ANOMALY) == []


async def test_a_bad_bystander_is_left_out_and_audited_while_the_real_fault_is_found(bus: TestBus):
    selfish = tel("n5")
    selfish.links.add(peer="n5", rssi_dbm=-50.0, snr_db=30.0, latency_ms=1.0)
    nodes = ring(n0=tel("n0", mem_pct=250.0), n5=selfish, n3=tel("n3", down=True))
    await bus.publish(subjects.MAPEK_TELEMETRY, window("w1", nodes, trigger="n3"))
    rejected = {a.subject_id: a.details["reason"] for a in bus.audited("telemetry.rejected")}
    assert set(rejected) == {"n0", "n5"}
    assert "'mem_pct' = 250 exceeds 100" in rejected["n0"] and "link to itself" in rejected["n5"]
    [a] = bus.messages(subjects.MAPEK_ANOMALY)
    assert (a.root_cause, a.fault_type) == ("n3", "node_down")
    assert "n0" not in a.affected_nodes    # the rejected node took no part in the analysis
    assert bus.dead_letters == []


async def test_the_thresholds_of_the_settings_decide(bus: TestBus):
    """cpu 80 % is a warning by the spec (70/90); a deployment that sets 60/75 calls it critical."""
    await bus.publish(subjects.MAPEK_TELEMETRY, window("w1", ring(n2=tel("n2", cpu_pct=80.0)), trigger="n2"))
    [spec] = bus.messages(subjects.MAPEK_ANOMALY)
    strict = TestBus(build(AnalyzerSettings(use_model=False, history_wait_s=0,
                                            thresholds='{"cpu_percent": {"warning": 60, "critical": 75}}')))
    await strict.publish(subjects.MAPEK_TELEMETRY, window("w1", ring(n2=tel("n2", cpu_pct=80.0)), trigger="n2"))
    [custom] = strict.messages(subjects.MAPEK_ANOMALY)
    assert spec.fault_type == custom.fault_type == "cpu_overload"
    assert (spec.confidence, spec.severity) == (0.7, common_pb2.SEVERITY_MEDIUM)
    assert (custom.confidence, custom.severity) == (0.95, common_pb2.SEVERITY_CRITICAL)
    # a table under which 80 % is fine: no anomaly at all
    lax = TestBus(build(AnalyzerSettings(use_model=False, history_wait_s=0,
                                         thresholds='{"cpu_percent": {"warning": 85, "critical": 95}}')))
    await lax.publish(subjects.MAPEK_TELEMETRY, window("w1", ring(n2=tel("n2", cpu_pct=80.0)), trigger="n2"))
    assert lax.messages(subjects.MAPEK_ANOMALY) == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], None] = lambda: None   # what happens meanwhile

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s
        self.on_sleep()


async def test_the_handler_waits_for_the_follower_then_uses_its_history():
    clock = FakeClock()
    deps = stage.AnalyzerDeps(Thresholds(), history=History(), history_wait_s=1.0, history_poll_s=0.1,
                              monotonic=clock.monotonic, sleep=clock.sleep)
    w = window("w1", ring(n3=tel("n3", down=True)), trigger="n3")

    def follower_catches_up() -> None:     # the ordered consumer over MAPEK delivers the window at the third poll
        if len(clock.sleeps) == 3:
            stage.remember(deps, w.SerializeToString())
    clock.on_sleep = follower_catches_up
    bus = TestBus(service="analyzer")
    out = await bus.deliver(stage.on_window, w, deps=deps)
    assert len(clock.sleeps) == 3 and [p.msg.root_cause for p in out] == ["n3"]
    # a window the follower never brings: waited for history_wait_s, then stored by the handler
    clock.sleeps.clear()
    clock.on_sleep = lambda: None
    await bus.deliver(stage.on_window, window("w2", ring()), deps=deps)
    assert sum(clock.sleeps) == pytest.approx(1.0, abs=0.11) and "w2" in deps.history
    # a window already in the history is not waited for
    clock.sleeps.clear()
    stage.remember(deps, window("w3", ring()).SerializeToString())
    await bus.deliver(stage.on_window, window("w3", ring()), deps=deps)
    assert clock.sleeps == [] and list(deps.history.snaps) == ["w1", "w2", "w3"]
    # the follower skips what the codec refuses (the consumer dead-letters it)
    stage.remember(deps, b"\xff not a window")
    assert len(deps.history) == 3


async def test_a_follower_found_behind_is_not_waited_for_again_until_it_delivers():
    """After a broker restart the follower's consumer is re-created (~10 s): one wait, not one per window."""
    clock = FakeClock()
    deps = stage.AnalyzerDeps(Thresholds(), history=History(), history_wait_s=1.0, history_poll_s=0.1,
                              monotonic=clock.monotonic, sleep=clock.sleep)
    bus = TestBus(service="analyzer")
    await bus.deliver(stage.on_window, window("w1", ring()), deps=deps)
    assert sum(clock.sleeps) == pytest.approx(1.0, abs=0.11)        # found behind once
    for key in ("w2", "w3", "w4"):
        clock.sleeps.clear()
        await bus.deliver(stage.on_window, window(key, ring()), deps=deps)
        assert clock.sleeps == [] and key in deps.history            # still silent: no wait
    stage.remember(deps, window("w1", ring()).SerializeToString())   # the re-created consumer delivers again
    clock.sleeps.clear()
    await bus.deliver(stage.on_window, window("w5", ring()), deps=deps)
    assert sum(clock.sleeps) == pytest.approx(1.0, abs=0.11)        # waited for again


class BrokenModel:
    """A learned detector whose inference fails (the fault this test injects)."""
    name = "graphsage"

    def detect(self, window):
        raise RuntimeError("CUDA out of memory")


async def test_a_failing_model_is_audited_and_the_rules_answer():
    deps = stage.AnalyzerDeps(Thresholds(), detector=BrokenModel(), history_wait_s=0)
    bus = TestBus(service="analyzer")
    out = await bus.deliver(stage.on_window, window("w1", ring(n3=tel("n3", down=True)), trigger="n3"), deps=deps)
    assert [(p.msg.root_cause, p.msg.detector) for p in out] == [("n3", "rules")]
    [failed] = bus.audited("analyzer.model_failed")
    assert failed.subject_id == "w1" and failed.details["error"] == "RuntimeError: CUDA out of memory"


def test_the_rules_and_the_hybrid_share_the_deployment_table():
    th = Thresholds.from_mapping({"cpu_percent": {"warning": 50}})
    deps = stage.AnalyzerDeps(th)
    assert deps.rules.thresholds is th and deps.hybrid.rules is deps.rules
    assert stage.learned_detector(False) == (None, "disabled by configuration")
