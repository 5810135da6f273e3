"""Telemetry partitioned across monitor replicas by node (issue #20), on a real stack: real nats-server (TLS,
nkeys, permissions), real monitor processes, telemetry published under a mesh host's own bus identity on
the usual ``mesh.telemetry.<node>``. The MESH stream stores each report under its node's partition
(``{{partition(2,1)}}``) and each replica pulls its partition's durable consumer: every node is judged by
the replica of its partition alone (one cycle per failed node), and a replica killed and started again
resumes from its consumer."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from testkit import eventually, scaled, violations

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.permissions import MESH_HOST_PREFIX
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.ids import new_meta
from x0tta6bl4.runtime.stack import Stack, repo_root
from x0tta6bl4.v1 import common_pb2, events_pb2

K = 2
NODES = [f"n{i}" for i in range(12)]
OF = {n: subjects.partition_of(n, K) for n in NODES}


def neighbours(i: int) -> list[str]:
    return [NODES[(i - 1) % len(NODES)], NODES[(i + 1) % len(NODES)]]


def generator(pub: Publisher, stopped: set[str]) -> asyncio.Task:
    """Every node of NODES reporting 4 times a second as its mesh host would, but those in ``stopped``."""
    async def generate() -> None:
        while True:
            for i, n in enumerate(NODES):
                if n not in stopped:
                    await pub.emit(subjects.telemetry(n), events_pb2.NodeTelemetry(
                        meta=new_meta(n), node_id=n, reachable=True, neighbours=neighbours(i), cpu_pct=10))
            await asyncio.sleep(0.25)
    return asyncio.create_task(generate())


class Rig:
    """A secured stack of partitioned monitors, a mesh host identity publishing every node's telemetry (those in
    ``stopped`` fall silent), and what the monitors publish: windows by trigger node, critical health changes."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.stopped: set[str] = set()
        self.windows: dict[str, list[str]] = {}       # trigger node -> cycle ids of the windows published
        self.criticals: dict[str, int] = {}           # node -> critical health changes
        self.op: Any = None                           # the operator's connection (and its JetStream)
        self.js: Any = None

    def dead(self, node: str) -> bool:
        """Both of what a monitor publishes for a failed node arrived (a window and a critical health change:
        two subjects, in either order)."""
        return bool(self.windows.get(node)) and bool(self.criticals.get(node))

    async def on_window(self, msg) -> None:
        w = events_pb2.TelemetryWindow.FromString(msg.data)
        self.windows.setdefault(w.trigger_node, []).append(w.meta.cycle_id)

    async def on_health(self, msg) -> None:
        ch = events_pb2.HealthChange.FromString(msg.data)
        if ch.node_id and ch.current == common_pb2.HEALTH_CRITICAL:
            self.criticals[ch.node_id] = self.criticals.get(ch.node_id, 0) + 1


@contextlib.asynccontextmanager
async def partitioned(tmp_path, replicas: int, start_s: float = 60, **env: str) -> AsyncIterator[Rig]:
    stack = Stack(tmp_path / "stack", ("monitor",), replicas=replicas, monitor_partitions=K, secure=True,
                  env={"X0TTA6BL4_MONITOR_COLLECTOR": "off", "X0TTA6BL4_DISCOVER_HOSTS": "false", **env})
    stack.start(scaled(start_s))
    rig = Rig(stack)
    try:
        stack.add_mesh_host("gen", NODES)
        gen = await stack.connect(MESH_HOST_PREFIX + "gen")      # publishes mesh.telemetry.<node> as always
        rig.op = await stack.connect()
        rig.js = rig.op.jetstream()
        await rig.op.subscribe(subjects.MAPEK_TELEMETRY, cb=rig.on_window)
        await rig.op.subscribe(subjects.MAPEK_HEALTH, cb=rig.on_health)
        await rig.op.flush()
        task = generator(Publisher(gen, "gen"), rig.stopped)
        try:
            yield rig
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await gen.close()
            await rig.op.close()
    finally:
        stack.stop()
    assert not violations(stack), "nats-server refused a legitimate flow"


async def infos(nc, count: int) -> dict[str, dict]:
    """monitor.rpc.Info from each of ``count`` replicas (every replica answers it)."""
    got: dict[str, dict] = {}

    async def on(msg) -> None:
        doc = json.loads(msg.data)
        got[doc["instance"]] = doc
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on)
    try:
        async def all_answered() -> dict[str, dict] | None:
            await nc.publish(subjects.MONITOR_INFO, b"", reply=inbox)
            await asyncio.sleep(0)
            return dict(got) if len(got) >= count else None
        return await eventually(all_answered, 10, 0.2, what=f"monitor.rpc.Info from {count} replicas")
    finally:
        await sub.unsubscribe()


@pytest.mark.timeout(180)
async def test_each_node_is_judged_by_its_partitions_replica_and_a_restarted_replica_resumes(tmp_path):
    async with partitioned(tmp_path, K) as rig:
        # the stream stores each node's reports under its partition: nats-server's partition() is ours
        async def stored() -> set[str] | None:
            info = await rig.js.stream_info(subjects.STREAM_MESH, subjects_filter="mesh.telemetry.>")
            got = set(info.state.subjects or {})
            return got if len(got) == len(NODES) else None
        assert await eventually(stored, 15, 0.2) == {subjects.telemetry_stored(n, K) for n in NODES}
        assert {subjects.telemetry_stored(n, K).split(".")[2] for n in NODES} == {"0", "1"}

        # each replica takes its partition and judges exactly its nodes; the unpartitioned consumer gets none
        async def judged() -> dict[str, dict] | None:
            got = await infos(rig.op, K)
            return got if all(d["nodes"] == len(NODES) for d in got.values()) else None
        got = await eventually(judged, 15, 0.2)
        assert {(d["instance"], d["partition"], d["nodes_judged"]) for d in got.values()} == {
            (f"monitor-{p}", p, sum(1 for n in NODES if OF[n] == p)) for p in range(K)}
        for p in range(K):
            ci = await rig.js.consumer_info(subjects.STREAM_MESH, f"monitor-telemetry-p{p}")
            assert ci.delivered.consumer_seq > 0 and ci.config.filter_subject == f"mesh.telemetry.{p}.*"
        assert (await rig.js.consumer_info(subjects.STREAM_MESH, "monitor-telemetry")).delivered.consumer_seq == 0

        # a node killed in either partition: exactly one cycle each (and once more later: still one)
        first = {p: next(n for n in NODES if OF[n] == p) for p in range(K)}
        rig.stopped.update(first.values())
        await eventually(lambda: all(rig.dead(n) for n in first.values()), 20, 0.1,
                         what=f"a window and a critical health change for each of {sorted(first.values())}")
        later = next(n for n in NODES if OF[n] == 1 and n not in rig.stopped)
        rig.stopped.add(later)
        await eventually(lambda: rig.dead(later), 20, 0.1, what=f"a window and a critical health change for {later}")
        for n in (*first.values(), later):
            assert len(rig.windows[n]) == 1 and rig.criticals.get(n) == 1, (n, rig.windows[n], rig.criticals)

        # partition 0's replica killed while its nodes go on reporting, then started again: it resumes from
        # its durable consumer (what was published meanwhile is delivered to it), judges its nodes again
        sp = next(s for s in rig.stack.procs if s.name == "monitor" and s.index == 0)
        rig.stack.stop_service(sp, kill=True)

        async def backlog() -> int | None:
            ci = await rig.js.consumer_info(subjects.STREAM_MESH, "monitor-telemetry-p0")
            return ci.num_pending or None
        await eventually(backlog, 10, 0.1, what="partition 0's consumer holding what was published")
        before = (await rig.js.consumer_info(subjects.STREAM_MESH, "monitor-telemetry-p0")).delivered.stream_seq
        rig.stack.start_service("monitor", 0)
        rig.stack.wait_ready(scaled(60))

        async def resumed() -> bool:
            ci = await rig.js.consumer_info(subjects.STREAM_MESH, "monitor-telemetry-p0")
            assert ci.delivered.stream_seq > before and ci.num_pending < len(NODES), ci
            return True
        await eventually(resumed, 20, 0.2, what="partition 0's replica caught up on its consumer")
        again = next(n for n in NODES if OF[n] == 0 and n not in rig.stopped)
        rig.stopped.add(again)
        await eventually(lambda: rig.dead(again), 20, 0.1,
                         what=f"a window and a critical health change for {again} after the restart")
        alive = [n for n in NODES if n not in rig.stopped]
        assert not [n for n in alive if rig.criticals.get(n)], rig.criticals   # no healthy node declared dead
        assert len(rig.windows[again]) == 1 and rig.criticals.get(again) == 1


@pytest.mark.timeout(180)
async def test_two_replicas_of_a_partition_share_its_consumer_and_one_carries_on_alone(tmp_path):
    # X0TTA6BL4_ACK_WAIT_S: what the killed replica held is redelivered soon
    async with partitioned(tmp_path, 2 * K, 90, X0TTA6BL4_ACK_WAIT_S="2") as rig:
        async def all_know() -> dict[str, dict] | None:
            got = await infos(rig.op, 2 * K)
            return got if all(d["nodes"] == len(NODES) for d in got.values()) else None
        got = await eventually(all_know, 15, 0.2)
        assert sorted((d["instance"], d["partition"]) for d in got.values()) == [
            (f"monitor-{i}", i % K) for i in range(2 * K)]
        zero = [n for n in NODES if OF[n] == 0]
        # both replicas of partition 0 up: one cycle for its failed node
        rig.stopped.add(zero[0])
        await eventually(lambda: rig.windows.get(zero[0]), 20, 0.1, what=f"a window for {zero[0]}")
        # one of them killed: the other carries on with the partition's consumer, still one cycle per node
        rig.stack.stop_service(next(s for s in rig.stack.procs if s.name == "monitor" and s.index == 0), kill=True)
        rig.stopped.add(zero[1])
        await eventually(lambda: rig.windows.get(zero[1]), 30, 0.1, what=f"a window for {zero[1]} from monitor-2")
        one = next(n for n in NODES if OF[n] == 1)
        rig.stopped.add(one)
        await eventually(lambda: rig.windows.get(one), 20, 0.1, what=f"a window for {one}")
        for n in (zero[0], zero[1], one):
            assert len(rig.windows[n]) == 1, (n, rig.windows[n])
        assert not [n for n in rig.windows if n not in rig.stopped], rig.windows   # no healthy node declared dead


def ready_doc(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


@pytest.mark.timeout(180)
async def test_a_stream_provisioned_for_another_partition_count_makes_the_monitors_unready_not_trigger_happy(
        tmp_path):
    async with partitioned(tmp_path, K) as rig:
        ports = [sp.health_port for sp in rig.stack.procs if sp.name == "monitor"]
        async def all_know() -> bool:
            return all(d["nodes"] == len(NODES) for d in (await infos(rig.op, K)).values())
        await eventually(all_know, 15, 0.2)
        # the provisioner run with another setting: MESH stores telemetry unpartitioned again
        await asyncio.to_thread(rig.stack.nats.provision, telemetry_partitions=1)

        def unready() -> list[str]:
            reasons = [ready_doc(p).get("checks", {}).get("telemetry_partitions", {}).get("reason", "")
                       for p in ports]
            return reasons if all(reasons) else []
        reasons = await eventually(unready, 10, 0.2, what="both monitors unready, naming the mismatch")
        assert all(r.startswith("the MESH stream stores telemetry as published (one partition), this monitor "
                                "expects it in 2 partitions (X0TTA6BL4_MONITOR_PARTITIONS=2)") for r in reasons)

        # reports go on reaching MESH for longer than the liveness timeout (2 s), none reaches the monitors:
        # no node is declared dead
        async def unread_rounds() -> bool:
            ci = await rig.js.consumer_info(subjects.STREAM_MESH, "monitor-telemetry")
            return ci.num_pending >= 12 * len(NODES)          # 12 rounds of 0.25 s: 3 s
        await eventually(unread_rounds, 20, 0.2)
        assert not rig.criticals and not rig.windows

        # provisioned right again: ready, judging again
        await asyncio.to_thread(rig.stack.nats.provision, telemetry_partitions=K)
        await eventually(lambda: all(ready_doc(p).get("ready") for p in ports), 15, 0.2,
                         what="both monitors ready again")
        victim = NODES[5]
        rig.stopped.add(victim)
        await eventually(lambda: rig.dead(victim), 20, 0.1, what=f"a window and a critical health change for {victim}")
        assert len(rig.windows[victim]) == 1 and rig.criticals == {victim: 1}, (rig.windows, rig.criticals)


@pytest.mark.parametrize(("env", "expected"), [
    ({"X0TTA6BL4_MONITOR_PARTITIONS": "2", "X0TTA6BL4_MONITOR_PARTITION": "2"},
     "monitor: config error: X0TTA6BL4_MONITOR_PARTITION=2: must be below X0TTA6BL4_MONITOR_PARTITIONS=2"),
    ({"X0TTA6BL4_MONITOR_PARTITIONS": "0"},
     "monitor: config error: X0TTA6BL4_MONITOR_PARTITIONS='0': Input should be greater than or equal to 1"),
])
def test_a_monitor_with_a_bad_partition_setting_stops_with_one_line(tmp_path, env, expected) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("X0TTA6BL4_")}
    root = repo_root()
    base["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "libs")])
    p = subprocess.run([sys.executable, "-m", "services.monitor.main"], cwd=root, capture_output=True, text=True,
                       env={**base, "X0TTA6BL4_DATA_DIR": str(tmp_path), **env}, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().startswith(expected), p.stderr
    assert "Traceback" not in p.stderr


def test_a_stack_with_a_bad_partition_count_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="monitor_partitions=0: expected 1 to 16"):
        Stack(tmp_path / "s", ("monitor",), monitor_partitions=0)


@pytest.mark.parametrize(("args", "needle"), [
    (["--replicas", "2", "--monitor-partitions", "3"], "--monitor-partitions 3: at most --replicas (2)"),
    (["--monitor-partitions", "0"], "--monitor-partitions"),
    (["--monitor-partitions", "17"], "--monitor-partitions"),
])
def test_meshctl_up_with_a_bad_partition_count_is_one_clear_error(tmp_path, args, needle) -> None:
    from typer.testing import CliRunner

    from x0tta6bl4.cli.main import app
    r = CliRunner().invoke(app, ["up", *args, "--data-dir", str(tmp_path)], env={"COLUMNS": "200"})
    assert r.exit_code != 0 and needle in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "stack.json").exists()


def test_a_stack_with_fewer_monitor_replicas_than_partitions_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="a partition without a replica would leave its nodes unwatched"):
        Stack(tmp_path / "s", ("monitor",), replicas=1, monitor_partitions=2)


async def test_provisioning_again_changes_the_partition_count(nc) -> None:
    """The provision step run again with another X0TTA6BL4_MONITOR_PARTITIONS updates MESH's transform and
    declares the new partitions' consumers; back to one partition, reports are stored as published again."""
    from x0tta6bl4.bus.connection import ensure_topology
    js = nc.jetstream()

    async def stored_as(node: str) -> str:
        ack = await js.publish(subjects.telemetry(node), b"x")
        return (await js.get_msg(subjects.STREAM_MESH, ack.seq)).subject

    assert (await js.stream_info(subjects.STREAM_MESH)).config.subject_transform is None
    assert await stored_as("n1") == "mesh.telemetry.n1"
    await ensure_topology(js, telemetry_partitions=4)
    tr = (await js.stream_info(subjects.STREAM_MESH)).config.subject_transform
    assert tr is not None and tr.dest == "mesh.telemetry.{{partition(4,1)}}.{{wildcard(1)}}"
    assert await stored_as("n1") == subjects.telemetry_stored("n1", 4) == "mesh.telemetry.0.n1"
    for i in range(4):
        assert (await js.consumer_info(subjects.STREAM_MESH, f"monitor-telemetry-p{i}")).num_pending >= 0
    await ensure_topology(js, telemetry_partitions=4)                  # again: nothing changes
    await ensure_topology(js)
    assert (await js.stream_info(subjects.STREAM_MESH)).config.subject_transform is None
    assert await stored_as("n1") == "mesh.telemetry.n1"
    with pytest.raises(ValueError, match="telemetry partitions: 17, expected 1 to 16"):
        await ensure_topology(js, telemetry_partitions=17)
