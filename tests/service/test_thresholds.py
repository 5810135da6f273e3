"""One threshold table, configured once (``X0TTA6BL4_THRESHOLDS``), decides in every stage: the same
node is judged differently by the analyzer, the planner and the executor when the deployment changes
the table -- not only by the monitor."""
from __future__ import annotations

import dataclasses
import json

import pytest
from trustkit import Keys

from services.analyzer.main import AnalyzerSettings
from services.analyzer.main import build as build_analyzer
from services.executor.main import ExecutorSettings
from services.executor.main import deps as executor_deps
from services.planner.main import PlannerSettings
from services.planner.main import build as build_planner
from services.planner.main import deps as planner_deps
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.memory import TestBus
from x0tta6bl4.bus.ports import Reply
from x0tta6bl4.config import load_settings
from x0tta6bl4.ids import new_meta
from x0tta6bl4.mapek import plan as planning
from x0tta6bl4.mapek.approval import sign_approval
from x0tta6bl4.mapek.verify import History
from x0tta6bl4.stages import executor as executor_stage
from x0tta6bl4.stages import planner as planner_stage
from x0tta6bl4.v1 import events_pb2, mesh_pb2

K = events_pb2
S = 10**9
STRICT = '{"cpu_percent": {"warning": 60, "critical": 75}}'   # the spec's is 70 / 90
RING = {f"n{i}": [f"n{(i - 1) % 4}", f"n{(i + 1) % 4}"] for i in range(4)}


def tel(node: str, cpu: float = 5.0) -> events_pb2.NodeTelemetry:
    t = events_pb2.NodeTelemetry(meta=new_meta("monitor"), node_id=node, cpu_pct=cpu, mem_pct=20.0, reachable=True,
                                 neighbours=RING[node], throughput_bps=9800.0)
    for p in RING[node]:
        t.links.add(peer=p, rssi_dbm=-54.0, snr_db=41.0, latency_ms=0.5, link_age_s=3.0)
    return t


@pytest.fixture(autouse=True)
def keys(tmp_path, monkeypatch) -> Keys:
    """Signing keys and the trust bundle the planner and the executor need (one seed serves both here)."""
    keys = Keys.make(tmp_path)
    for var, value in keys.env("planner").items():
        monkeypatch.setenv(var, value)
    return keys


@pytest.fixture(params=["spec", "strict"])
def table(request, monkeypatch) -> str:
    if request.param == "strict":
        monkeypatch.setenv("X0TTA6BL4_THRESHOLDS", STRICT)
    else:
        monkeypatch.delenv("X0TTA6BL4_THRESHOLDS", raising=False)
    monkeypatch.delenv("X0TTA6BL4_THRESHOLDS_FILE", raising=False)
    return request.param


async def test_the_analyzer_and_the_planner_judge_by_the_configured_table(table: str):
    """n2 at 80 % cpu: a warning by the spec (a vote), critical by the strict table (auto-executed)."""
    analyzer = TestBus(build_analyzer(load_settings(AnalyzerSettings, use_model=False, history_wait_s=0)))
    window = events_pb2.TelemetryWindow(meta=new_meta("monitor", "c1", event_id="w1"), trigger_node="n2",
                                        nodes=[tel(n, 80.0 if n == "n2" else 5.0) for n in RING])
    [anomaly] = await analyzer.publish(subjects.MAPEK_TELEMETRY, window)
    planner = TestBus(build_planner(load_settings(PlannerSettings)))
    await planner.publish(subjects.MAPEK_ANOMALY, anomaly.msg)
    [plan] = planner.messages(subjects.MAPEK_PLAN)
    assert anomaly.msg.fault_type == "cpu_overload" and plan.action.kind == K.ACTION_KIND_RESTART
    if table == "spec":
        assert anomaly.msg.confidence == 0.7 and plan.decision == K.DECISION_KIND_STANDARD_VOTE
        assert planner.messages(subjects.MAPEK_ACTION) == []
    else:
        assert anomaly.msg.confidence == 0.95 and plan.decision == K.DECISION_KIND_AUTO_EXECUTE
        assert len(planner.messages(subjects.MAPEK_ACTION)) == 1


async def test_the_planner_reinstates_only_a_node_healthy_by_the_configured_table(table: str):
    """An avoided node back at 65 % cpu: healthy by the spec (its probation starts), a warning by the
    strict table (it waits)."""
    bus = TestBus(service="planner")
    d = planner_deps(load_settings(PlannerSettings, reinstate_after_s=10.0), {"n3": tel("n3", 65.0)})
    await bus.kv("avoided").put("n3", planning.avoided_record("n3", "act-1", 1_000 * S))
    await planner_stage.reinstate_tick(bus.context(), d, 1_001 * S)
    probation = "healthy_since_ns" in json.loads(bus.kv("avoided").value("n3"))
    assert probation is (table == "spec")


async def test_the_executor_verifies_by_the_configured_table(table: str, keys: Keys):
    """After a restart of n2, n2 reports 80 % cpu: recovered by the spec (a warning), not by the strict table."""
    bus = TestBus(service="executor")

    @bus.responder(subjects.MESH_CMD_ALL)
    async def agent(subject: str, data: bytes) -> Reply:
        return Reply(mesh_pb2.MeshEvent(kind="command.ok").SerializeToString(), {})
    now = [1_000 * S]

    async def sleep(s: float) -> None:
        now[0] += int(s * S)
    history = History()                 # the mesh before the incident (the executor's telemetry history)
    for n in RING:
        before = tel(n)
        before.meta.ts_unix_ns = 995 * S
        history.record(before)
    d = executor_deps(load_settings(ExecutorSettings, verify_timeout_s=1.0), {n: tel(n, 80.0 if n == "n2" else 5.0)
                                                                              for n in RING}, history=history)
    d = dataclasses.replace(d, clock_ns=lambda: now[0], monotonic=lambda: now[0] / S, sleep=sleep)
    req = events_pb2.ActionRequest(meta=new_meta("planner", "c1", event_id="e1"), action_id="a1", timeout_s=5.0,
                                   action=events_pb2.ActionSpec(kind=K.ACTION_KIND_RESTART, target_node="n2"),
                                   approved_by="auto")
    sign_approval(req, keys.signers["planner"], 60, now[0])
    await bus.deliver(executor_stage.on_action, req, deps=d)
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert v.recovered is (table == "spec")
    if table == "strict":
        assert "n2 critical: cpu_pct=80 > 75 (critical)" in v.checks_failed
