"""The execute stage on the in-memory bus: steps through the mesh agents' and keyvault's replies
(responders), the action claim, the verification against the mesh before the incident (a simulated mesh
reports on a clock the test drives), rollback and escalation of a harmful action, and the action budget.
Requests are signed by the planner's key of a trust bundle made here (refusals: test_approvals.py)."""
from __future__ import annotations

import dataclasses
import json
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
from x0tta6bl4.mapek.verify import History
from x0tta6bl4.stages import executor as stage
from x0tta6bl4.v1 import events_pb2, keyvault_pb2, mesh_pb2

K = events_pb2
C = mesh_pb2.MeshCommand
S = 10**9
SQUARE = {"n1": ["n3", "n4"], "n2": ["n3", "n4"], "n3": ["n1", "n2"], "n4": ["n1", "n2"]}
"""n1 and n2 reach each other over n3 or n4; the flow n1 -> n2 crosses n3 until it is routed around."""


def request(kind: int = K.ACTION_KIND_REROUTE, node: str = "n3", action_id: str = "act-1", eid: str = "e1",
            fault: str = "node_down", first_ns: int = 990 * S, **params: str) -> events_pb2.ActionRequest:
    return events_pb2.ActionRequest(
        meta=new_meta("planner", "cycle-1", event_id=eid), action_id=action_id, plan_id="plan-1",
        action=events_pb2.ActionSpec(kind=kind, target_node=node, params=params), approved_by="auto", timeout_s=5.0,
        incident_id=f"{node}.{fault}", fault_type=fault, first_symptom_unix_ns=first_ns)


def approved(keys: Keys, clock: Clock, *args, **kwargs) -> events_pb2.ActionRequest:
    """:func:`request` signed by the planner now, valid for a minute."""
    return sign_approval(request(*args, **kwargs), keys.signers["planner"], 60.0, clock.now_ns)


def tel(node: str, reachable: bool = True, ts: int = 0, neighbours=(), **over) -> events_pb2.NodeTelemetry:
    t = events_pb2.NodeTelemetry(meta=new_meta("monitor"), node_id=node, reachable=reachable, cpu_pct=5.0,
                                 mem_pct=20.0, neighbours=list(neighbours))
    if ts:
        t.meta.ts_unix_ns = ts
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


class Mesh:
    """The mesh as the executor sees it: the telemetry mirror (``view``) and the history it feeds. Every
    ``report_s`` of the test's clock each node reports (a node that is down: the monitor's unreachable
    copy); each flow sends ``rate`` packets/s of which ``ratio[flow]`` are acknowledged."""

    def __init__(self, links: dict[str, list[str]], flows: tuple[tuple[str, str], ...] = (("n1", "n2"),),
                 rate: float = 20.0, report_s: float = 0.25) -> None:
        self.view: dict[str, events_pb2.NodeTelemetry] = {}
        self.history = History()
        self.links = {n: list(p) for n, p in links.items()}
        self.up = dict.fromkeys(links, True)
        self.ratio = dict.fromkeys(flows, 1.0)
        self.counts = {f: [0.0, 0.0] for f in flows}
        self.rate, self.report_s = rate, report_s
        self.over: dict[str, dict] = {}          # per node: fields its reports carry (cpu_pct=97 ...)
        self.last_ns = 0

    def report(self, now_ns: int) -> None:
        if self.last_ns:
            dt = (now_ns - self.last_ns) / S
            for f, c in self.counts.items():
                c[0] += self.rate * dt
                c[1] += self.rate * dt * self.ratio[f]
        self.last_ns = now_ns
        for n in self.links:
            if not self.up[n]:
                if n in self.view and self.view[n].reachable:
                    t = events_pb2.NodeTelemetry()
                    t.CopyFrom(self.view[n])
                    t.reachable, t.meta.ts_unix_ns = False, now_ns
                    self.view[n] = t
                    self.history.record(t)
                continue
            t = tel(n, ts=now_ns, neighbours=[p for p in self.links[n] if self.up[p]], **self.over.get(n, {}))
            for (src, dst), (sent, acked) in self.counts.items():
                if src == n:
                    t.flows.add(dest=dst, sent=int(sent), acked=int(acked))
            self.view[n] = t
            self.history.record(t)

    def run(self, start_ns: int, end_ns: int) -> None:
        step = int(self.report_s * S)
        for ts in range(int(start_ns), int(end_ns) + 1, step):
            self.report(ts)

    def follow(self, clock: Clock, then: Callable[[], None] | None = None) -> None:
        """Report as the clock advances (``then``: a change to make after each sleep)."""
        async def tick() -> None:
            if then is not None:
                then()
            if clock.now_ns - self.last_ns >= self.report_s * S:
                self.report(clock.now_ns)
        clock.on_sleep = tick


class Agents:
    """The mesh agents' side of mesh.cmd.<node>: the commands they got, a failure for some nodes, and what
    a command does to the simulated mesh (``effect``)."""

    def __init__(self, bus: TestBus, fail: dict[str, str] | None = None,
                 effect: Callable[[mesh_pb2.MeshCommand], None] | None = None, clock: Clock | None = None) -> None:
        self.commands: list[mesh_pb2.MeshCommand] = []
        self.fail = fail or {}
        self.effect = effect
        self.clock = clock
        self.sleeps_before: list[float] | None = None    # the clock's sleeps before the first command
        bus.responder(subjects.MESH_CMD_ALL)(self.answer)

    async def answer(self, subject: str, data: bytes) -> Reply:
        cmd = mesh_pb2.MeshCommand.FromString(data)
        assert subject == subjects.mesh_cmd(cmd.node_id)
        if self.clock is not None and self.sleeps_before is None:
            self.sleeps_before = list(self.clock.sleeps)
        self.commands.append(cmd)
        if cmd.node_id in self.fail:
            ev = mesh_pb2.MeshEvent(kind="command.failed", details={"detail": self.fail[cmd.node_id]})
        else:
            ev = mesh_pb2.MeshEvent(kind="command.ok", details={"detail": "done"})
            if self.effect is not None:
                self.effect(cmd)
        return Reply(ev.SerializeToString(), {})

    def sent(self, kind: int) -> list[tuple[str, str]]:
        return sorted((c.node_id, c.peer) for c in self.commands if c.kind == kind)


def rerouted(mesh: Mesh, ratio: float = 1.0) -> Callable[[mesh_pb2.MeshCommand], None]:
    """Avoiding a node sets the flow's delivery to ``ratio`` (the detour works, or not); un-avoiding it
    brings the delivery before the action back."""
    before = dict(mesh.ratio)

    def effect(cmd: mesh_pb2.MeshCommand) -> None:
        if cmd.kind == C.KIND_AVOID_NODE:
            mesh.ratio.update(dict.fromkeys(mesh.ratio, ratio))
        elif cmd.kind == C.KIND_UNAVOID_NODE:
            mesh.ratio.update(before)
    return effect


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(tmp_path) -> Keys:
    return Keys.make(tmp_path)


@pytest.fixture
def mesh(clock: Clock) -> Mesh:
    """The square, healthy from t=960 s; n3 (the flow's relay) dies at t=989 s (first symptom at 990 s):
    the flow n1 -> n2 delivers nothing since; the clock is at 1000 s."""
    m = Mesh(SQUARE)
    m.run(960 * S, 989 * S)
    m.up["n3"] = False
    m.ratio[("n1", "n2")] = 0.0
    m.run(989 * S + m.report_s * S, 1_000 * S)
    m.follow(clock)
    return m


def make_deps(mesh: Mesh, clock: Clock, keys: Keys, **settings) -> stage.ExecutorDeps:
    d = deps(ExecutorSettings(**keys.settings("executor"), **settings), mesh.view, history=mesh.history)
    return dataclasses.replace(d, clock_ns=clock.clock_ns, monotonic=clock.monotonic, sleep=clock.sleep)


def claim(keys: Keys, state: str, ns: int, action_id: str = "act-1", digest: str | None = None) -> bytes:
    """A claim value the executor itself would write (its MAC key comes from its signing key)."""
    key = stage.claim_key_of(keys.signers["executor"])
    return stage.claim_value(key, action_id, state, ns, digest or approval_digest(request(action_id=action_id)))


def claim_state(keys: Keys, value: bytes | None, action_id: str = "act-1") -> str:
    assert value is not None
    return stage.read_claim(stage.claim_key_of(keys.signers["executor"]), action_id, value,
                            approval_digest(request(action_id=action_id)))[0]


# ---- execution and verification ------------------------------------------------------------------
async def test_a_reroute_commands_every_live_node_then_verifies_recovery_held(mesh, clock, keys):
    bus = TestBus(service="executor")
    agents = Agents(bus, effect=rerouted(mesh))
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys))
    assert agents.sent(C.KIND_AVOID_NODE) == [("n1", "n3"), ("n2", "n3"), ("n4", "n3")]
    [result] = bus.messages(subjects.MAPEK_RESULT)
    assert result.success and result.error == "" and result.action_id == "act-1"
    assert sorted(s.name for s in result.steps) == ["avoid n3 at n1", "avoid n3 at n2", "avoid n3 at n4"]
    assert all(s.ok and s.detail == "done" for s in result.steps)
    assert claim_state(keys, bus.kv("actions").value("act-1")) == stage.DONE
    assert bus.audited("action.claim_invalid") == []
    [executed] = bus.audited("action.executed")
    assert executed.details["success"] is True and executed.details["steps"] == 3
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert v.recovered, list(v.checks_failed)
    assert v.incident_id == "n3.node_down" and v.meta.cycle_id == "cycle-1"
    assert not v.rolled_back and not v.escalated
    # recovered once the flow had delivered for the hold period (1 s) after the action, not at first look
    assert 1.0 <= sum(clock.sleeps) <= 1.5
    assert v.mttr_ms == pytest.approx((clock.now_ns - 990 * S) / 1e6)      # from the first symptom
    assert "1 flow(s) deliver at least 95 % of their rate before the incident, held 1 s" in v.checks_passed
    assert "3 nodes reachable as before the incident, none critical" in v.checks_passed
    # the expected effect it was verified against: n3 taken out, the twin's connectivity of the rest
    assert list(v.action.expected.removed) == ["n3"] and v.action.expected.connectivity == 1.0
    assert v.action.expected.min_delivery == pytest.approx(0.95) and v.action.expected.reversible
    assert bus.messages(subjects.MAPEK_ESCALATION) == []


async def test_the_bar_is_the_delivery_before_the_incident_not_at_the_action(mesh, clock, keys):
    """The flow was at 100 % before the incident and at 0 % when the action started: a detour that delivers
    60 % is better than at the action, and still not recovered."""
    bus = TestBus(service="executor")
    Agents(bus, effect=rerouted(mesh, ratio=0.6))
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys, verify_timeout_s=4))
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert not v.recovered and not v.rolled_back and not v.escalated     # not worse than at the action: no harm
    [flow] = [f for f in v.checks_failed if f.startswith("flow n1->n2")]
    assert "below 95 % of its 100 % (20.0/s) before the incident" in flow and "delivers 60 %" in flow
    assert bus.messages(subjects.MAPEK_ESCALATION) == []


async def test_a_flow_at_95_percent_of_before_recovers_and_one_below_does_not(clock, keys):
    for ratio, ok in ((0.96, True), (0.85, False)):
        c = Clock()
        m = Mesh(SQUARE)
        m.run(960 * S, 989 * S)
        m.up["n3"], m.ratio[("n1", "n2")] = False, 0.0
        m.run(989 * S + m.report_s * S, 1_000 * S)
        m.follow(c)
        bus = TestBus(service="executor")
        Agents(bus, effect=rerouted(m, ratio=ratio))
        await bus.deliver(stage.on_action, approved(keys, c), deps=make_deps(m, c, keys, verify_timeout_s=3))
        [v] = bus.messages(subjects.MAPEK_VERIFIED)
        assert v.recovered is ok, (ratio, list(v.checks_failed))


async def test_verification_waits_for_the_mesh_to_recover(mesh, clock, keys):
    bus = TestBus(service="executor")
    Agents(bus, effect=rerouted(mesh))
    mesh.over["n2"] = {"cpu_pct": 97.0}                 # critical by the spec's table (> 90)

    def n2_recovers() -> None:
        if len(clock.sleeps) == 40:
            mesh.over.pop("n2")
    mesh.follow(clock, n2_recovers)
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys, verify_poll_s=0.05))
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert v.recovered and 40 <= len(clock.sleeps) <= 46    # seen with the next report after n2 recovered


async def test_verification_gives_up_after_its_timeout_and_says_why(mesh, clock, keys):
    bus = TestBus(service="executor")
    Agents(bus, effect=rerouted(mesh))
    mesh.over["n2"] = {"cpu_pct": 97.0}
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys, verify_timeout_s=2.0,
                                                                  verify_poll_s=0.5))
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert not v.recovered and any(f.startswith("n2 critical: cpu_pct=97 > 90") for f in v.checks_failed)
    assert clock.sleeps == [0.5] * 5                    # looked at t=0, 0.5 ... 2.5 s, then gave up
    [audit] = bus.audited("verification")
    assert audit.details["recovered"] is False and "n2 critical" in audit.details["failed"]


async def test_a_node_reachable_before_the_incident_must_be_reachable_again(mesh, clock, keys):
    bus = TestBus(service="executor")
    Agents(bus, effect=rerouted(mesh))
    mesh.up["n4"] = False                               # another node lost meanwhile
    mesh.report(clock.now_ns)
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys, verify_timeout_s=2))
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert not v.recovered
    assert "n4 unreachable (it was reachable before the incident)" in v.checks_failed
    # n1 and n2 lost each other with n3 and n4 gone: connectivity below the twin's prediction for removing n3
    assert "connectivity 0.00 below the 1.00 the twin predicts for reroute n3" in v.checks_failed
    assert not v.rolled_back                            # not worse since the action: nothing to undo


async def test_a_node_that_stopped_reporting_fails_the_verification(mesh, clock, keys):
    bus = TestBus(service="executor")
    Agents(bus, effect=rerouted(mesh))
    del mesh.links["n4"]                                # n4 reports nothing any more
    mesh.view.pop("n4")
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys, verify_timeout_s=2))
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert "n4 reports nothing (it was reachable before the incident)" in v.checks_failed


async def test_without_telemetry_from_before_the_incident_nothing_is_claimed(clock, keys):
    """The executor's history starts after the incident's first symptom: it cannot know the bar, so it
    says so at once instead of comparing against the degraded state."""
    m = Mesh(SQUARE)
    m.run(995 * S, 1_000 * S)
    m.follow(clock)
    bus = TestBus(service="executor")
    Agents(bus)
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(m, clock, keys))
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert not v.recovered and clock.sleeps == []
    assert v.checks_failed[0].startswith("cannot verify: no telemetry recorded before the incident")


async def test_a_flow_ending_at_the_node_taken_out_is_reported_not_counted(clock, keys):
    m = Mesh(SQUARE, flows=(("n1", "n2"), ("n1", "n3")))
    m.run(960 * S, 989 * S)
    m.up["n3"] = False
    m.ratio.update({("n1", "n2"): 0.0, ("n1", "n3"): 0.0})
    m.run(989 * S + m.report_s * S, 1_000 * S)
    m.follow(clock)
    bus = TestBus(service="executor")

    def effect(cmd: mesh_pb2.MeshCommand) -> None:
        m.ratio[("n1", "n2")] = 1.0                     # the detour; nothing reaches the dead n3
    Agents(bus, effect=effect)
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(m, clock, keys))
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert v.recovered, list(v.checks_failed)
    assert "flow n1->n3 ends at n3, which the action takes out: not counted" in v.checks_passed


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
    bus = TestBus(service="executor")           # no responder: asked again until the step's timeout, then failed
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys, step_timeout_s=1.5))
    [result] = bus.messages(subjects.MAPEK_RESULT)
    assert not result.success
    assert {s.detail for s in result.steps} == {
        "nobody answered on its subject within 1.5s (its responder is down or away)"}
    per_node = [s for s in clock.sleeps if s == stage.NO_RESPONDERS_RETRY_S]
    assert len(per_node) >= 5 * len(result.steps)     # each node asked every 0.25 s for 1.5 s


async def test_an_agent_away_for_a_moment_is_asked_again(mesh, clock, keys):
    """Its mesh host reconnecting to another server (the one it used died): no responders for a moment, then
    each command is delivered once and the action completes."""
    bus = TestBus(service="executor")
    agents = Agents(bus, effect=rerouted(mesh))
    responder = bus.responders.pop()             # the hosts are away ...
    reports = clock.on_sleep                     # (the mesh reporting as the clock advances)

    async def back() -> None:                    # ... until the executor has waited 0.5 s
        if sum(clock.sleeps) >= 0.5 and responder not in bus.responders:
            bus.responders.append(responder)
        if reports is not None:
            await reports()
    clock.on_sleep = back
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys))
    [result] = bus.messages(subjects.MAPEK_RESULT)
    assert result.success, result.error
    assert agents.sent(C.KIND_AVOID_NODE) == [("n1", "n3"), ("n2", "n3"), ("n4", "n3")]     # each once
    assert clock.sleeps[:2] == [stage.NO_RESPONDERS_RETRY_S] * 2
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert v.recovered, list(v.checks_failed)


async def test_isolate_revokes_through_keyvault_and_reports_its_error(mesh, clock, keys):
    bus = TestBus(service="executor")
    Agents(bus)
    revoked: list[keyvault_pb2.RevokeRequest] = []

    @bus.responder(subjects.keyvault_rpc("Revoke"))
    async def keyvault(subject: str, data: bytes) -> Reply:
        revoked.append(keyvault_pb2.RevokeRequest.FromString(data))
        return Reply(b"", {subjects.HEADER_ERROR: "identity n3 is not known", subjects.HEADER_ERROR_CODE: "NOT_FOUND"})
    await bus.deliver(stage.on_action, approved(keys, clock, K.ACTION_KIND_ISOLATE, fault="compromised"),
                      deps=make_deps(mesh, clock, keys))
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


# ---- do no harm: rollback and escalation ---------------------------------------------------------
@pytest.mark.parametrize("harm_hold_s, rolled_back", [(1.5, False), (0.0, True)])
async def test_a_reroute_transient_that_passes_is_not_harm(clock, keys, harm_hold_s, rolled_back):
    """A reroute's transient: the detour delivers 70 % while routes converge (for 2.6 s after the action,
    past harm_after_s), then 100 % again. Harm must hold for harm_hold_s: with the default no rollback;
    judged at first sight (harm_hold_s=0) the same transient would have undone a working repair."""
    m = Mesh(SQUARE)
    m.run(960 * S, 1_000 * S)
    bus = TestBus(service="executor")
    t_cmd: list[float] = []

    def effect(cmd: mesh_pb2.MeshCommand) -> None:
        if cmd.kind == C.KIND_AVOID_NODE and not t_cmd:
            t_cmd.append(clock.monotonic())

    def transient() -> None:
        if t_cmd:
            since = clock.monotonic() - t_cmd[0]
            m.ratio[("n1", "n2")] = 0.7 if since < 2.6 else 1.0

    m.follow(clock, then=transient)
    agents = Agents(bus, effect=effect)
    d = make_deps(m, clock, keys, verify_hold_s=1.0, harm_hold_s=harm_hold_s)
    await bus.deliver(stage.on_action, approved(keys, clock, fault="congestion"), deps=d)
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert v.rolled_back is rolled_back and v.escalated is rolled_back, list(v.checks_failed)
    assert (agents.sent(C.KIND_UNAVOID_NODE) != []) is rolled_back
    assert (bus.audited("action.rolled_back") != []) is rolled_back
    assert v.recovered is not rolled_back                  # with the default: recovered once the detour settled


async def test_a_reroute_that_makes_delivery_worse_is_rolled_back_and_escalated(clock, keys):
    """The degrade finding: n3, the relay, is slow but delivers; routing around it cuts the flow to 10 %.
    From harm_after_s on, once every check for harm_hold_s found it worse, the executor undoes the avoid at every
    node it commanded and escalates."""
    m = Mesh(SQUARE)
    m.run(960 * S, 1_000 * S)                           # slow, not lost: delivery stays at 100 %
    m.follow(clock)
    bus = TestBus(service="executor")
    agents = Agents(bus, effect=rerouted(m, ratio=0.1))
    req = approved(keys, clock, fault="congestion")
    await bus.deliver(stage.on_action, req, deps=make_deps(m, clock, keys))
    assert agents.sent(C.KIND_AVOID_NODE) == [("n1", "n3"), ("n2", "n3"), ("n4", "n3")]
    assert agents.sent(C.KIND_UNAVOID_NODE) == [("n1", "n3"), ("n2", "n3"), ("n4", "n3")]
    assert 3.45 <= sum(clock.sleeps) <= 3.7               # harm_after_s (2 s), then held harm_hold_s (1.5 s)
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert not v.recovered and v.rolled_back and v.escalated
    assert any(f.startswith("worse since the action: flow n1->n2 delivers 10 %") and "100 % just before it" in f
               for f in v.checks_failed), list(v.checks_failed)
    assert "rolled back (3 step(s))" in v.checks_failed
    [rb] = bus.audited("action.rolled_back")
    assert rb.subject_id == "act-1" and rb.details["ok"] is True and rb.details["steps"] == 3
    [esc] = bus.messages(subjects.MAPEK_ESCALATION)
    assert (esc.reason, esc.incident_id, esc.action_id, esc.rolled_back) == ("rolled_back", "n3.congestion",
                                                                             "act-1", True)
    assert esc.detail.startswith("reroute n3 made delivery worse: flow n1->n2") and "undone" in esc.detail
    [audit] = bus.audited("incident.escalated")
    assert audit.subject_id == "n3.congestion" and audit.details["reason"] == "rolled_back"
    assert bus.audited("verification")[0].details["rolled_back"] is True


async def test_a_rotation_that_cuts_the_nodes_off_is_not_verified_and_escalated(clock, keys):
    """The rotation finding: after the keys were rotated every node lost its neighbours. The verification
    does not call that recovered -- connectivity is 0 where the twin predicts 1, the flow delivers nothing --
    and a rotation cannot be undone: escalated as irreversible."""
    m = Mesh(SQUARE)
    m.run(960 * S, 1_000 * S)
    m.follow(clock)
    bus = TestBus(service="executor")

    def cut_off(cmd: mesh_pb2.MeshCommand) -> None:
        if cmd.kind == C.KIND_RELOAD_KEYS:
            m.links = {n: [] for n in m.links}
            m.ratio[("n1", "n2")] = 0.0
    Agents(bus, effect=cut_off)

    @bus.responder(subjects.keyvault_rpc("Rotate"))
    async def keyvault(subject: str, data: bytes) -> Reply:
        return Reply(b"", {})
    req = approved(keys, clock, K.ACTION_KIND_ROTATE_KEYS, node="*", fault="key_compromise")
    await bus.deliver(stage.on_action, req, deps=make_deps(m, clock, keys))
    [result] = bus.messages(subjects.MAPEK_RESULT)
    assert result.success                                 # every step said ok
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert not v.recovered and v.escalated and not v.rolled_back
    assert "connectivity 0.00 below the 1.00 the twin predicts for rotate_keys *" in v.checks_failed
    assert any(f.startswith("flow n1->n2 delivers 0 %") for f in v.checks_failed)
    assert any(f.startswith("worse since the action: connectivity 0.00 since the action, 1.00 just before it")
               for f in v.checks_failed)
    [esc] = bus.messages(subjects.MAPEK_ESCALATION)
    assert esc.reason == "irreversible" and esc.detail.startswith("rotate_keys * made delivery worse and cannot be "
                                                                  "undone")
    assert bus.audited("action.rolled_back") == []


async def test_a_failed_rollback_is_escalated_as_such(clock, keys):
    m = Mesh(SQUARE)
    m.run(960 * S, 1_000 * S)
    m.follow(clock)
    bus = TestBus(service="executor")
    agents = Agents(bus, effect=rerouted(m, ratio=0.0))
    m.follow(clock, lambda: agents.fail.setdefault("n4", "agent gone"))    # n4's agent goes after the action
    await bus.deliver(stage.on_action, approved(keys, clock, fault="congestion"), deps=make_deps(m, clock, keys))
    [esc] = bus.messages(subjects.MAPEK_ESCALATION)
    assert esc.reason == "rollback_failed" and not esc.rolled_back
    assert "undoing it failed: unavoid n3 at n4: agent gone" in esc.detail
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert v.escalated and not v.rolled_back and "rollback failed: unavoid n3 at n4: agent gone" in v.checks_failed


async def test_an_isolation_for_a_non_security_fault_revokes_only_once_verified(mesh, clock, keys):
    bus = TestBus(service="executor")
    agents = Agents(bus, effect=rerouted(mesh))
    revoked: list[str] = []

    @bus.responder(subjects.keyvault_rpc("Revoke"))
    async def keyvault(subject: str, data: bytes) -> Reply:
        revoked.append(keyvault_pb2.RevokeRequest.FromString(data).node_id)
        return Reply(b"", {})
    await bus.deliver(stage.on_action, approved(keys, clock, K.ACTION_KIND_ISOLATE, fault="flapping"),
                      deps=make_deps(mesh, clock, keys))
    [result] = bus.messages(subjects.MAPEK_RESULT)
    assert [s.name for s in result.steps] == ["avoid n3 at n1", "avoid n3 at n2", "avoid n3 at n4"]
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert v.recovered and revoked == ["n3"]              # revoked after the verification
    [done] = bus.audited("action.completed")
    assert done.details == {"steps": "revoke identity of n3: ok", "success": True}
    assert len(agents.commands) == 3


async def test_a_harmful_isolation_for_a_security_fault_keeps_the_keys_revoked(clock, keys):
    m = Mesh(SQUARE)
    m.run(960 * S, 1_000 * S)
    m.follow(clock)
    bus = TestBus(service="executor")
    agents = Agents(bus, effect=rerouted(m, ratio=0.0))
    revoked: list[str] = []

    @bus.responder(subjects.keyvault_rpc("Revoke"))
    async def keyvault(subject: str, data: bytes) -> Reply:
        revoked.append(keyvault_pb2.RevokeRequest.FromString(data).node_id)
        return Reply(b"", {})
    await bus.deliver(stage.on_action, approved(keys, clock, K.ACTION_KIND_ISOLATE, fault="compromised"),
                      deps=make_deps(m, clock, keys))
    assert revoked == ["n3"]                              # at once: a security fault
    assert agents.sent(C.KIND_UNAVOID_NODE) == [("n1", "n3"), ("n2", "n3"), ("n4", "n3")]
    [esc] = bus.messages(subjects.MAPEK_ESCALATION)
    assert esc.reason == "rolled_back" and "n3's identity stays revoked (compromised)" in esc.detail


async def test_a_harmful_reinstatement_is_undone_by_avoiding_the_node_again(clock, keys):
    m = Mesh(SQUARE)
    m.run(960 * S, 1_000 * S)
    m.follow(clock)
    bus = TestBus(service="executor")

    def effect(cmd: mesh_pb2.MeshCommand) -> None:
        m.ratio[("n1", "n2")] = 0.0 if cmd.kind == C.KIND_UNAVOID_NODE else 1.0
    agents = Agents(bus, effect=effect)
    await bus.deliver(stage.on_action, approved(keys, clock, K.ACTION_KIND_REINSTATE, fault="recovered"),
                      deps=make_deps(m, clock, keys))
    assert agents.sent(C.KIND_AVOID_NODE) == [("n1", "n3"), ("n2", "n3"), ("n4", "n3")]
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert v.rolled_back and v.escalated and not v.recovered


# ---- the budget ----------------------------------------------------------------------------------
async def test_actions_over_the_node_budget_are_not_run_and_escalated(clock, keys):
    m = Mesh(SQUARE)
    m.run(960 * S, 1_000 * S)
    m.follow(clock)
    bus = TestBus(service="executor")
    agents = Agents(bus)
    d = make_deps(m, clock, keys, budget_per_node=2, budget_per_incident=0, verify_timeout_s=0.5)
    for i in range(3):
        await bus.deliver(stage.on_action, approved(keys, clock, action_id=f"act-{i}", eid=f"e{i}", fault=f"f{i}"),
                          deps=d)
    assert len(agents.commands) == 6                      # two reroutes of n3 ran, the third did not
    results = bus.messages(subjects.MAPEK_RESULT)
    assert [r.success for r in results[:2]] == [True, True]
    assert not results[2].success and results[2].error.startswith(
        "not run: over the action budget: node n3 has had 2 action(s) in the last 60 s (budget 2): act-0, act-1")
    third = approved(keys, clock, action_id="act-2", eid="e2", fault="f2")
    assert stage.read_claim(stage.claim_key_of(keys.signers["executor"]), "act-2",
                            bus.kv("actions").value("act-2"), approval_digest(third))[0] == stage.DONE
    [over] = bus.audited("action.over_budget")
    assert over.subject_id == "act-2" and over.details["target"] == "n3"
    [esc] = bus.messages(subjects.MAPEK_ESCALATION)
    assert esc.reason == "over_budget" and esc.action_id == "act-2"
    assert len(bus.messages(subjects.MAPEK_VERIFIED)) == 2       # no verification of an action not run
    # the window moves on: a minute later the node has budget again
    clock.now_ns += 61 * S
    m.run(clock.now_ns - 40 * S, clock.now_ns)
    await bus.deliver(stage.on_action, approved(keys, clock, action_id="act-3", eid="e3", fault="f3"), deps=d)
    assert len(agents.commands) == 9


async def test_a_reinstatement_spends_no_node_budget(clock, keys):
    """Two repairs of one node and the reinstatement after the first: the reinstatement (the loop undoing its
    own reroute after the probation) runs and is not counted, so the node's budget is what the repairs left."""
    m = Mesh(SQUARE)
    m.run(960 * S, 1_000 * S)
    m.follow(clock)
    bus = TestBus(service="executor")
    Agents(bus)
    d = make_deps(m, clock, keys, budget_per_node=2, budget_per_incident=0, verify_timeout_s=0.5)
    await bus.deliver(stage.on_action, approved(keys, clock, action_id="act-0", eid="e0", fault="f0"), deps=d)
    await bus.deliver(stage.on_action, approved(keys, clock, K.ACTION_KIND_REINSTATE, action_id="back-0", eid="b0",
                                                fault="reinstate"), deps=d)
    await bus.deliver(stage.on_action, approved(keys, clock, action_id="act-1", eid="e1", fault="f1"), deps=d)
    results = {r.action_id: r for r in bus.messages(subjects.MAPEK_RESULT)}
    assert [results[a].success for a in ("act-0", "back-0", "act-1")] == [True, True, True], results
    assert bus.audited("action.over_budget") == []
    node = json.loads(bus.kv("budget").value(stage.budget_key("node", "n3")))
    assert [a[0] for a in node["actions"]] == ["act-0", "act-1"]
    # the budget still holds for what acts on the node: a third repair within the window is not run
    await bus.deliver(stage.on_action, approved(keys, clock, action_id="act-2", eid="e2", fault="f2"), deps=d)
    last = bus.messages(subjects.MAPEK_RESULT)[-1]
    assert last.action_id == "act-2" and not last.success and "over the action budget" in last.error
    [over] = bus.audited("action.over_budget")
    assert over.subject_id == "act-2" and "act-0, act-1" in over.details["reason"]


async def test_an_incident_has_a_budget_until_it_is_repaired(clock, keys):
    m = Mesh(SQUARE)
    m.run(960 * S, 1_000 * S)
    m.follow(clock)
    bus = TestBus(service="executor")
    agents = Agents(bus)
    d = make_deps(m, clock, keys, budget_per_incident=2, verify_timeout_s=0.3)
    m.over["n2"] = {"cpu_pct": 97.0}                      # not recovered: the incident stays open
    for i in range(3):
        await bus.deliver(stage.on_action, approved(keys, clock, action_id=f"act-{i}", eid=f"e{i}"), deps=d)
    assert len(agents.commands) == 6
    [esc] = bus.messages(subjects.MAPEK_ESCALATION)
    assert esc.reason == "over_budget" and "incident n3.node_down has had 2 action(s)" in esc.detail
    # a verified repair resets the incident's budget (the next symptom is a new incident)
    m.over.pop("n2")
    await bus.kv("budget").delete(stage.budget_key("incident", "n3.node_down"))   # (as a repair would)
    await bus.deliver(stage.on_action, approved(keys, clock, action_id="act-3", eid="e3"),
                      deps=dataclasses.replace(d, verify_timeout_s=3))
    last = bus.messages(subjects.MAPEK_VERIFIED)[-1]
    assert last.recovered, list(last.checks_failed)
    assert bus.kv("budget").value(stage.budget_key("incident", "n3.node_down")) is None
    node = json.loads(bus.kv("budget").value(stage.budget_key("node", "n3")))
    assert [a[0] for a in node["actions"]] == ["act-0", "act-1", "act-3"]


async def test_an_action_counted_once_however_often_it_is_taken_over(clock, keys):
    m = Mesh(SQUARE)
    m.run(960 * S, 1_000 * S)
    m.follow(clock)
    bus = TestBus(service="executor")
    Agents(bus)
    d = make_deps(m, clock, keys, budget_per_node=1, verify_timeout_s=0.3)
    req = approved(keys, clock)
    assert await stage.take_budget(req, bus.context(), d) == ""
    assert await stage.take_budget(req, bus.context(), d) == ""     # the same action id: already counted
    assert "budget 1" in await stage.take_budget(approved(keys, clock, action_id="act-2"), bus.context(), d)


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
    assert sorted(c.node_id for c in agents.commands) == ["n1", "n2", "n4"]    # executed after all
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
    agents = Agents(bus, clock=clock)
    # timeout 5 s + verify 10 s + 5 s margin: a claim 21 s old belongs to a dead executor
    await bus.kv("actions").put("act-1", claim(keys, stage.STARTED, clock.now_ns - 21 * S))
    await bus.deliver(stage.on_action, approved(keys, clock), deps=make_deps(mesh, clock, keys, verify_timeout_s=1))
    assert len(agents.commands) == 3 and agents.sleeps_before == []        # taken over without waiting
    assert [r.success for r in bus.messages(subjects.MAPEK_RESULT)] == [True]
    # a claim that stays live past the lease on our own clock is taken over too
    bus2, clock2 = TestBus(service="executor"), Clock()
    agents2 = Agents(bus2, clock=clock2)
    await bus2.kv("actions").put("act-1", claim(keys, stage.STARTED, clock2.now_ns + 3600 * S))   # a clock ahead
    await bus2.deliver(stage.on_action, approved(keys, clock2),
                       deps=make_deps(mesh, clock2, keys, verify_timeout_s=1))
    # (timeout 5 s + verify 1 s + 5 s margin)
    assert agents2.sleeps_before is not None and sum(agents2.sleeps_before) == pytest.approx(11.1, abs=0.15)
    assert [r.success for r in bus2.messages(subjects.MAPEK_RESULT)] == [True]


async def test_an_action_that_can_never_run_is_dead_lettered_without_a_claim(mesh, clock, keys):
    bus = TestBus(service="executor")
    req = approved(keys, clock, K.ACTION_KIND_REROUTE, node="")
    await bus.deliver(stage.on_action, req, deps=make_deps(mesh, clock, keys))
    [dl] = bus.dead_letters
    assert dl.reason == "rejected by executor: reroute needs a target_node"
    assert bus.kv("actions").value("act-1") is None and bus.published == []


async def test_the_service_executes_through_its_composition_root(keys):
    """build(): the telemetry mirror follows the bucket and feeds the history the verification measures the
    mesh before the incident with; the handler is bound to the consumer."""
    bus = TestBus(build(ExecutorSettings(**keys.settings("executor"))))
    agents = Agents(bus)
    t0 = time.time_ns()                  # the service's own clock is the wall clock
    for dt in (8, 6, 4):                 # reports from before the incident (first symptom 1 s ago)
        for t in (tel("n1", ts=t0 - dt * S, neighbours=["n2"]), tel("n2", ts=t0 - dt * S, neighbours=["n1", "n3"]),
                  tel("n3", ts=t0 - dt * S, neighbours=["n2"])):
            await bus.kv("telemetry").put(t.node_id, t.SerializeToString())
    dead = tel("n3", reachable=False, ts=t0 - 1 * S)
    await bus.kv("telemetry").put("n3", dead.SerializeToString())
    now = Clock(t0)
    await bus.publish(subjects.MAPEK_ACTION, approved(keys, now, first_ns=t0 - 1 * S))
    assert sorted(c.node_id for c in agents.commands) == ["n1", "n2"]
    assert [r.success for r in bus.messages(subjects.MAPEK_RESULT)] == [True]
    [v] = bus.messages(subjects.MAPEK_VERIFIED)
    assert v.recovered, list(v.checks_failed)
    assert "2 nodes reachable as before the incident, none critical" in v.checks_passed
    assert "no flow delivered before the incident: delivery not measured" in v.checks_passed
    # the same event again is a redelivery (skipped); the same action in a new event is a duplicate
    await bus.publish(subjects.MAPEK_ACTION, approved(keys, now, first_ns=t0 - 1 * S))
    await bus.publish(subjects.MAPEK_ACTION, approved(keys, now, eid="e2", first_ns=t0 - 1 * S))
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
