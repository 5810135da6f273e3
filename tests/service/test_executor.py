"""The execute stage on the in-memory bus: steps through the mesh agents' and keyvault's replies
(responders), the action claim, and the verification on a clock the test drives. Requests are signed by
the planner's key of a trust bundle made here (refusals: test_approvals.py)."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable

import pytest
from trustkit import Keys

from services.executor.main import ExecutorSettings, build, deps
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.memory import TestBus
from x0tta6bl4.bus.ports import Reply
from x0tta6bl4.config import ConfigError
from x0tta6bl4.execution.deploy import StepRecord
from x0tta6bl4.ids import new_meta
from x0tta6bl4.mapek.approval import approval_digest, sign_approval
from x0tta6bl4.stages import executor as stage
from x0tta6bl4.v1 import events_pb2, keyvault_pb2, mesh_pb2

K = events_pb2
C = mesh_pb2.MeshCommand
S = 10**9


def request(kind: int = K.ACTION_KIND_REROUTE, node: str = "n3", action_id: str = "act-1", eid: str = "e1",
            **params: str) -> events_pb2.ActionRequest:
    return events_pb2.ActionRequest(
        meta=new_meta("planner", "cycle-1", event_id=eid), action_id=action_id, plan_id="plan-1",
        action=events_pb2.ActionSpec(kind=kind, target_node=node, params=params), approved_by="auto", timeout_s=5.0,
        incident_id=f"{node}.node_down", fault_type="node_down", first_symptom_unix_ns=900 * S)


def approved(keys: Keys, clock: Clock, *args, **kwargs) -> events_pb2.ActionRequest:
    """:func:`request` signed by the planner now, valid for a minute."""
    return sign_approval(request(*args, **kwargs), keys.signers["planner"], 60.0, clock.now_ns)


def tel(node: str, reachable: bool = True, **over) -> events_pb2.NodeTelemetry:
    t = events_pb2.NodeTelemetry(meta=new_meta("monitor"), node_id=node, reachable=reachable, cpu_pct=5.0,
                                 mem_pct=20.0)
    for k, v in over.items():
        setattr(t, k, v)
    return t


class Clock:
    """Wall clock, monotonic clock and sleep the test drives (a sleep advances both)."""

    def __init__(self, now_ns: int = 1_000 * S) -> None:
        self.now_ns = now_ns
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], Awaitable[None]] | None = None   # what happens meanwhile

    def clock_ns(self) -> int:
        return self.now_ns

    def monotonic(self) -> float:
        return self.now_ns / S

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now_ns += int(s * S)
        if self.on_sleep is not None:
            await self.on_sleep()


class Agents:
    """The mesh agents' side of mesh.cmd.<node>: the commands they got, a failure for some nodes."""

    def __init__(self, bus: TestBus, fail: dict[str, str] | None = None) -> None:
        self.commands: list[mesh_pb2.MeshCommand] = []
        self.fail = fail or {}
        bus.responder(subjects.MESH_CMD_ALL)(self.answer)

    async def answer(self, subject: str, data: bytes) -> Reply:
        cmd = mesh_pb2.MeshCommand.FromString(data)
        assert subject == subjects.mesh_cmd(cmd.node_id)
        self.commands.append(cmd)
        if cmd.node_id in self.fail:
            ev = mesh_pb2.MeshEvent(kind="command.failed", details={"detail": self.fail[cmd.node_id]})
        else:
            ev = mesh_pb2.MeshEvent(kind="command.ok", details={"detail": "done"})
        return Reply(ev.SerializeToString(), {})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(tmp_path) -> Keys:
    return Keys.make(tmp_path)


@pytest.fixture
def mesh() -> dict[str, events_pb2.NodeTelemetry]:
    return {"n1": tel("n1"), "n2": tel("n2"), "n3": tel("n3", reachable=False)}


def make_deps(mesh, clock: Clock, keys: Keys, **settings) -> stage.ExecutorDeps:
    d = deps(ExecutorSettings(**keys.settings("executor"), **settings), mesh)
    return dataclasses.replace(d, clock_ns=clock.clock_ns, monotonic=clock.monotonic, sleep=clock.sleep)


def claim(keys: Keys, state: str, ns: int, action_id: str = "act-1", digest: str | None = None) -> bytes:
    """A claim value the executor itself would write (its MAC key comes from its signing key)."""
    key = stage.claim_key_of(keys.signers["executor"])
    return stage.claim_value(key, action_id, state, ns, digest or approval_digest(request(action_id=action_id)))


def claim_state(keys: Keys, value: bytes | None, action_id: str = "act-1") -> str:
    assert value is not None
    return stage.read_claim(stage.claim_key_of(keys.signers["executor"]), action_id, value,
                            approval_digest(request(action_id=action_id)))[0]


async def test_a_reroute_commands_every_live_node_then_verifies_recovery(mesh, clock, keys):
    bus = TestBus(service="executor")
    agents = Agents(bus)
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys))
    assert sorted((c.node_id, c.kind, c.peer) for c in agents.commands) == [
        ("n1", C.KIND_AVOID_NODE, "n3"), ("n2", C.KIND_AVOID_NODE, "n3")]
    [result] = bus.messages(subjects.MAPEK_RESULT)
    assert result.success and result.error == "" and result.action_id == "act-1"
    assert sorted(s.name for s in result.steps) == ["avoid n3 at n1", "avoid n3 at n2"]
    assert all(s.ok and s.detail == "done" for s in result.steps)
    assert claim_state(keys, bus.kv("actions").value("act-1")) == stage.DONE
    assert bus.audited("action.claim_invalid") == []
    [executed] = bus.audited("action.executed")
    assert executed.details["success"] is True and executed.details["steps"] == 2
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert v.recovered and v.incident_id == "n3.node_down" and v.meta.cycle_id == "cycle-1"
    assert v.mttr_ms == pytest.approx(100_000.0)          # from the first symptom (t=900 s) to now (t=1000 s)
    assert clock.sleeps == []                             # recovered at the first look


async def test_a_failed_step_fails_the_action_with_the_error_and_the_verification(mesh, clock, keys):
    bus = TestBus(service="executor")
    Agents(bus, fail={"n2": "no route to n3"})
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys))
    [result] = bus.messages(subjects.MAPEK_RESULT)
    assert not result.success and result.error == "avoid n3 at n2: no route to n3"
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert not v.recovered and "action steps failed" in v.checks_failed
    assert clock.sleeps == []                             # a failed action is not waited for
    assert bus.audited("verification")[0].details["recovered"] is False


async def test_an_agent_that_does_not_answer_fails_its_step(mesh, clock, keys):
    bus = TestBus(service="executor")           # no responder: the request times out
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys, step_timeout_s=1.5))
    [result] = bus.messages(subjects.MAPEK_RESULT)
    assert not result.success
    assert {s.detail for s in result.steps} == {"no reply within 1.5s"}


async def test_isolate_revokes_through_keyvault_and_reports_its_error(mesh, clock, keys):
    bus = TestBus(service="executor")
    Agents(bus)
    revoked: list[keyvault_pb2.RevokeRequest] = []

    @bus.responder(subjects.keyvault_rpc("Revoke"))
    async def keyvault(subject: str, data: bytes) -> Reply:
        revoked.append(keyvault_pb2.RevokeRequest.FromString(data))
        return Reply(b"", {subjects.HEADER_ERROR: "identity n3 is not known", subjects.HEADER_ERROR_CODE: "NOT_FOUND"})
    await bus.deliver(stage.on_action, approved(keys, clock, K.ACTION_KIND_ISOLATE), deps=make_deps(mesh, clock, keys))
    assert [(r.node_id, r.reason) for r in revoked] == [("n3", "isolated by executor")]
    [result] = bus.messages(subjects.MAPEK_RESULT)
    assert not result.success
    assert result.error.startswith("revoke identity of n3: identity n3 is not known")


async def test_rotate_keys_asks_keyvault_then_reloads_every_node(mesh, clock, keys):
    bus = TestBus(service="executor")
    agents = Agents(bus)
    rotated: list[keyvault_pb2.RotateRequest] = []

    @bus.responder(subjects.keyvault_rpc("Rotate"))
    async def keyvault(subject: str, data: bytes) -> Reply:
        rotated.append(keyvault_pb2.RotateRequest.FromString(data))
        return Reply(b"", {})
    req = approved(keys, clock, K.ACTION_KIND_ROTATE_KEYS, node="n1")
    await bus.deliver(stage.on_action, req, deps=make_deps(mesh, clock, keys))
    assert [(list(r.node_ids), r.all) for r in rotated] == [(["n1"], False)]
    assert [(c.node_id, c.kind) for c in agents.commands] == [("n1", C.KIND_RELOAD_KEYS)]
    [result] = bus.messages(subjects.MAPEK_RESULT)
    assert result.success and [s.name for s in result.steps] == ["rotate keys of n1", "reload keys at n1"]


async def test_a_deploy_reports_one_step_per_phase(mesh, clock, keys):
    bus = TestBus(service="executor")
    seen: list[dict] = []

    async def deploy(params):
        seen.append(dict(params))
        return [StepRecord("start green", True, "2 agents", 12.0), StepRecord("health check green", False,
                                                                           "answered nothing for 2s", 2000.0)]
    d = dataclasses.replace(make_deps(mesh, clock, keys), deploy=deploy)
    await bus.deliver(stage.on_action, approved(keys, clock, K.ACTION_KIND_DEPLOY, node="", version="2"), deps=d)
    assert seen == [{"version": "2"}]
    [result] = bus.messages(subjects.MAPEK_RESULT)
    assert [(s.name, s.ok) for s in result.steps] == [("start green", True), ("health check green", False)]
    assert result.error == "health check green: answered nothing for 2s"


async def test_an_action_already_done_is_not_repeated(mesh, clock, keys):
    bus = TestBus(service="executor")
    agents = Agents(bus)
    await bus.kv("actions").put("act-1", claim(keys, stage.DONE, clock.now_ns - 60 * S))
    assert await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys)) == []
    assert agents.commands == []
    [dup] = bus.audited("action.duplicate")
    assert dup.subject_id == "act-1" and bus.audited("action.executed") == []


@pytest.mark.parametrize("planted", ["done", "plain", "other-key", "other-action", "other-approval"])
async def test_a_claim_the_executor_did_not_make_for_this_approval_does_not_count(mesh, clock, keys, planted):
    """Whoever can write the `actions` bucket cannot make the executor skip an approved action: a `done`
    counts only with the executor's MAC over this action id and this approved action's digest."""
    bus = TestBus(service="executor")
    agents = Agents(bus)
    stranger = stage.claim_key_of(keys.signers["planner"])       # a key that is not the executor's
    value = {"done": b"done",
             "plain": f"done {clock.now_ns} {approval_digest(request())} {'0' * 64}".encode(),
             "other-key": stage.claim_value(stranger, "act-1", stage.DONE, clock.now_ns, approval_digest(request())),
             "other-action": claim(keys, stage.DONE, clock.now_ns, action_id="act-2"),
             "other-approval": claim(keys, stage.DONE, clock.now_ns, digest=approval_digest(request(node="n9"))),
             }[planted]
    await bus.kv("actions").put("act-1", value)
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys))
    assert sorted(c.node_id for c in agents.commands) == ["n1", "n2"]          # executed after all
    assert [r.success for r in bus.messages(subjects.MAPEK_RESULT)] == [True]
    [invalid] = bus.audited("action.claim_invalid")
    assert invalid.subject_id == "act-1" and invalid.details["note"] == "replaced"
    assert invalid.details["reason"].startswith(("not a claim", "claim not made by this executor",
                                                  "claim for another approved action"))
    assert bus.audited("action.duplicate") == []
    assert claim_state(keys, bus.kv("actions").value("act-1")) == stage.DONE   # our own claim now


async def test_a_replica_waits_for_the_one_executing_and_does_not_repeat_it(mesh, clock, keys):
    bus = TestBus(service="executor")
    agents = Agents(bus)
    claims = bus.kv("actions")
    await claims.put("act-1", claim(keys, stage.STARTED, clock.now_ns - 2 * S))   # another replica, 2 s ago
    done_after = 3

    async def other_replica_finishes() -> None:
        if len(clock.sleeps) == done_after:
            await claims.put("act-1", claim(keys, stage.DONE, clock.now_ns))
    clock.on_sleep = other_replica_finishes
    assert await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys)) == []
    assert len(clock.sleeps) == done_after and agents.commands == []
    assert len(bus.audited("action.duplicate")) == 1


async def test_a_claim_past_its_lease_is_taken_over(mesh, clock, keys):
    bus = TestBus(service="executor")
    agents = Agents(bus)
    # timeout 5 s + verify 10 s + 5 s margin: a claim 21 s old belongs to a dead executor
    await bus.kv("actions").put("act-1", claim(keys, stage.STARTED, clock.now_ns - 21 * S))
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys))
    assert len(agents.commands) == 2 and clock.sleeps == []
    assert [r.success for r in bus.messages(subjects.MAPEK_RESULT)] == [True]
    # a claim that stays live past the lease on our own clock is taken over too
    bus2, clock2 = TestBus(service="executor"), Clock()
    Agents(bus2)
    await bus2.kv("actions").put("act-1", claim(keys, stage.STARTED, clock2.now_ns + 3600 * S))   # a clock ahead
    await bus2.deliver(stage.on_action, approved(keys, clock2), deps=make_deps(mesh, clock2, keys))
    assert sum(clock2.sleeps) == pytest.approx(20.1, abs=0.15)
    assert [r.success for r in bus2.messages(subjects.MAPEK_RESULT)] == [True]


async def test_an_action_that_can_never_run_is_dead_lettered_without_a_claim(mesh, clock, keys):
    bus = TestBus(service="executor")
    req = approved(keys, clock, K.ACTION_KIND_REROUTE, node="")
    await bus.deliver(stage.on_action, req, deps=make_deps(mesh, clock, keys))
    [dl] = bus.dead_letters
    assert dl.reason == "rejected by executor: reroute needs a target_node"
    assert bus.kv("actions").value("act-1") is None and bus.published == []


async def test_verification_waits_for_the_mesh_to_recover(mesh, clock, keys):
    bus = TestBus(service="executor")
    Agents(bus)
    mesh["n2"] = tel("n2", cpu_pct=97.0)                # critical by the spec's table (> 90)

    async def n2_recovers() -> None:
        if len(clock.sleeps) == 4:
            mesh["n2"] = tel("n2")
    clock.on_sleep = n2_recovers
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys, verify_poll_s=0.25))
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert v.recovered and clock.sleeps == [0.25] * 4
    assert v.mttr_ms == pytest.approx(101_000.0)         # recovery seen one second later


async def test_verification_gives_up_after_its_timeout(mesh, clock, keys):
    bus = TestBus(service="executor")
    Agents(bus)
    mesh["n2"] = tel("n2", cpu_pct=97.0)
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys, verify_timeout_s=2.0,
                                                                  verify_poll_s=0.5))
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert not v.recovered and any(f.startswith("n2 critical: cpu_pct=97 > 90") for f in v.checks_failed)
    assert clock.sleeps == [0.5] * 5                    # looked at t=0, 0.5 ... 2.5 s, then gave up
    [audit] = bus.audited("verification")
    assert audit.details["recovered"] is False and "n2 critical" in audit.details["failed"]


async def test_the_service_executes_through_its_composition_root(keys):
    """build(): the telemetry mirror follows the bucket and the handler is bound to the consumer."""
    bus = TestBus(build(ExecutorSettings(**keys.settings("executor"))))
    agents = Agents(bus)
    for t in (tel("n1"), tel("n2"), tel("n3", reachable=False)):
        await bus.kv("telemetry").put(t.node_id, t.SerializeToString())
    now = Clock(time.time_ns())          # the service's own clock is the wall clock
    await bus.publish(subjects.MAPEK_ACTION, approved(keys, now))
    assert sorted(c.node_id for c in agents.commands) == ["n1", "n2"]
    assert [r.success for r in bus.messages(subjects.MAPEK_RESULT)] == [True]
    assert [v.recovered for v in bus.messages(subjects.MAPEK_VERIFIED)] == [True]
    # the same event again is a redelivery (skipped); the same action in a new event is a duplicate
    await bus.publish(subjects.MAPEK_ACTION, approved(keys, now))
    await bus.publish(subjects.MAPEK_ACTION, approved(keys, now, eid="e2"))
    assert len(agents.commands) == 2 and len(bus.audited("action.duplicate")) == 1


def test_the_service_does_not_start_without_its_trust_bundle_or_signing_key(keys, monkeypatch):
    for var in ("X0TTA6BL4_TRUST_FILE", "X0TTA6BL4_SIGNING_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="X0TTA6BL4_TRUST_FILE is not set"):
        build(ExecutorSettings(signing_key_file=keys.signing_file("executor")))
    with pytest.raises(ConfigError, match="X0TTA6BL4_SIGNING_KEY_FILE is not set"):
        build(ExecutorSettings(trust_file=keys.trust_file))
    with pytest.raises(ConfigError, match=r"X0TTA6BL4_TRUST_FILE: trust bundle .* cannot read"):
        build(ExecutorSettings(trust_file=keys.root / "missing.json",
                               signing_key_file=keys.signing_file("executor")))
