"""The in-memory bus and the key-value port: the semantics handler tests rely on."""
from __future__ import annotations

import asyncio

import pytest

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.app import Service
from x0tta6bl4.bus.memory import MemoryKV, NoResponders, TestBus
from x0tta6bl4.bus.ports import DELETE, CasConflict, KeyNotFound, Reject, Reply, cas_update
from x0tta6bl4.config import CommonSettings
from x0tta6bl4.ids import new_meta
from x0tta6bl4.v1 import events_pb2


async def test_kv_revisions_and_compare_and_set():
    kv = MemoryKV("incidents")
    with pytest.raises(KeyNotFound):
        await kv.get("a")
    r1 = await kv.create("a", b"1")
    with pytest.raises(CasConflict):
        await kv.create("a", b"2")
    r2 = await kv.update("a", b"2", last=r1)
    assert r2 > r1 and (await kv.get("a")).value == b"2"
    with pytest.raises(CasConflict):
        await kv.update("a", b"3", last=r1)
    with pytest.raises(CasConflict):
        await kv.delete("a", last=r1)
    await kv.delete("a", last=r2)
    assert await kv.keys() == []


async def test_cas_update_retries_a_lost_race_and_never_loses_an_increment():
    kv = MemoryKV("knowledge")

    def incr(e):
        return str(int(e.value) + 1 if e else 1).encode()

    await asyncio.gather(*(cas_update(kv, "n", incr) for _ in range(20)))
    assert (await kv.get("n")).value == b"20"
    # a function that leaves the key alone writes nothing
    out = await cas_update(kv, "n", lambda e: None)
    assert not out.written and out.value == b"20"
    out = await cas_update(kv, "n", lambda e: DELETE)
    assert out.written and kv.value("n") is None


async def test_cas_update_gives_up_with_a_clear_error_under_endless_contention():
    kv = MemoryKV("knowledge")
    await kv.put("k", b"0")

    def always_changed(e):
        kv._data["k"] = type(e)("k", b"x", e.revision + 1000)  # someone else always wrote meanwhile
        return b"mine"

    with pytest.raises(CasConflict, match="knowledge/k: compare-and-set lost 3 times"):
        await cas_update(kv, "k", always_changed, tries=3, backoff_s=0)


def _app() -> Service:
    app = Service("planner", CommonSettings())
    seen = app.mirror("telemetry", events_pb2.NodeTelemetry.FromString)

    async def on_anomaly(a: events_pb2.Anomaly, ctx) -> None:
        if a.node_id == "poison":
            raise Reject("poisoned")
        incidents = await ctx.kv("incidents")
        await incidents.put(a.incident_id, b"open")
        await ctx.publish(subjects.MAPEK_PLAN, events_pb2.Plan(
            plan_id=f"p-{a.incident_id}", incident_id=a.incident_id,
            action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_REROUTE, target_node=a.node_id)))
        await ctx.audit("decision", a.incident_id, {"known_nodes": sorted(seen)})

    app.subscribe("planner", events_pb2.Anomaly, on_anomaly)
    return app


def _anomaly(node: str, eid: str = "") -> events_pb2.Anomaly:
    return events_pb2.Anomaly(meta=new_meta("analyzer", "cycle-1", event_id=eid), node_id=node, root_cause=node,
                              fault_type="node_down", incident_id=f"{node}.node_down")


async def test_testbus_runs_the_service_handlers_by_subject():
    bus = TestBus(_app())
    await bus.kv("telemetry").put("n1", events_pb2.NodeTelemetry(node_id="n1").SerializeToString())
    out = await bus.publish(subjects.MAPEK_ANOMALY, _anomaly("n1", "e1"))
    [plan] = bus.messages(subjects.MAPEK_PLAN)
    assert out[0].msg == plan and plan.meta.cycle_id == "cycle-1" and plan.meta.producer == "planner"
    assert bus.kv("incidents").value("n1.node_down") == b"open"
    [audit] = bus.audited("decision")
    assert audit.details == {"known_nodes": ["n1"]} and audit.cycle_id == "cycle-1"
    # the same event again is a redelivery: skipped
    assert await bus.publish(subjects.MAPEK_ANOMALY, _anomaly("n1", "e1")) == []
    # ids derive from the cause: another delivery of an equal event under a new id derives a new id
    await bus.publish(subjects.MAPEK_ANOMALY, _anomaly("n1", "e2"))
    assert len({p.meta.event_id for p in bus.messages(subjects.MAPEK_PLAN)}) == 2


async def test_testbus_dead_letters_rejected_and_invalid_messages():
    bus = TestBus(_app())
    assert await bus.publish(subjects.MAPEK_ANOMALY, _anomaly("poison", "e3")) == []
    await bus.publish(subjects.MAPEK_ANOMALY, b"\xff\xff not protobuf")
    reasons = [d.reason for d in bus.dead_letters]
    assert reasons[0] == "rejected by planner: poisoned"
    assert "x0tta6bl4.v1.Anomaly" in reasons[1]
    assert bus.messages(subjects.MAPEK_PLAN) == []


async def test_requests_reach_the_registered_responder_or_time_out():
    bus = TestBus(service="executor")

    @bus.responder("mesh.cmd.*")
    async def agent(subject: str, data: bytes) -> Reply:
        return Reply(b"ok:" + subject.encode(), {})

    ctx = bus.context()
    assert (await ctx.request(subjects.mesh_cmd("n1"), b"x", 1.0)).data == b"ok:mesh.cmd.n1"
    with pytest.raises(NoResponders):
        await ctx.request(subjects.keyvault_rpc("Revoke"), b"", 1.0)
    with pytest.raises(KeyError, match="no key-value bucket named 'nope'"):
        bus.kv("nope")


async def test_a_fresh_watch_drops_the_keys_deleted_while_the_old_one_was_down():
    """What a mirror does with a new watch after a reconnection: the keys it replays are the bucket; a key of
    the view it does not replay was deleted meanwhile and leaves the view (on_change says so)."""
    import asyncio

    from x0tta6bl4.bus.app import _follow_bucket

    class Entry:
        def __init__(self, key, value, operation=None):
            self.key, self.value, self.operation = key, value, operation

    class Watcher:
        def __init__(self, entries):
            self.queue: asyncio.Queue = asyncio.Queue()
            for e in entries:
                self.queue.put_nowait(e)

        async def updates(self, timeout=None):
            return await self.queue.get()

    view = {"n1": b"old", "n2": b"gone", "n3": b"three"}
    changes = []
    reconnected = asyncio.Event()
    watcher = Watcher([Entry("n1", b"new"), Entry("n3", b"three"), None, Entry("n4", b"later")])
    task = asyncio.create_task(_follow_bucket(watcher, view, bytes, lambda k, v: changes.append((k, v)),
                                              reconnected))
    while ("n4", b"later") not in changes:
        await asyncio.sleep(0)
    assert view == {"n1": b"new", "n3": b"three", "n4": b"later"}
    assert ("n2", None) in changes
    reconnected.set()                        # the next reconnection ends this watch (a new one starts)
    await asyncio.wait_for(task, 5)
