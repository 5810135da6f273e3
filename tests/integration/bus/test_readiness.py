"""Honest /ready on a real stack: a service whose stream disappears says so on /ready (so an orchestrator
restarts it) and is ready again, consuming, once the stream is declared again."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from testkit import eventually

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.connection import NatsCredentials, connect_once
from x0tta6bl4.bus.permissions import PROVISIONER
from x0tta6bl4.bus.publisher import Publisher
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.runtime.stack import ServiceProcess, Stack
from x0tta6bl4.v1 import events_pb2

pytestmark = pytest.mark.timeout(180)


def ready_json(sp: ServiceProcess) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sp.health_port}/ready", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def connect_as(stack: Stack, identity: str):
    """A connection with ``identity``'s credentials on a secured bus (the provisioner administers JetStream)."""
    assert stack.secrets is not None
    creds = NatsCredentials.in_secrets(stack.secrets.root, identity) if stack.bus_secured else None
    return await connect_once(stack.url, f"test-{identity}", creds=creds)


async def test_a_deleted_stream_makes_ready_false_with_the_reason_and_recreating_it_heals(stack_factory):
    stack = stack_factory(services=("planner",))
    [planner] = stack.procs
    status, body = ready_json(planner)
    assert status == 200 and body["ready"] is True and body["failing"] == {}
    assert {"nats", "topology", "consumer:planner", "consumer:planner-knowledge"} <= set(body["checks"])

    nc = await connect_as(stack, PROVISIONER)
    try:
        await nc.jetstream().delete_stream(subjects.STREAM_MAPEK)

        def not_ready() -> dict:
            status, body = ready_json(planner)
            assert status == 503 and body["ready"] is False, body
            assert body["failing"].get("topology") == f"missing: stream {subjects.STREAM_MAPEK}", body
            assert "consumer planner" in body["failing"].get("consumer:planner", ""), body
            return body
        await eventually(not_ready, 20, 0.2)
        assert planner.proc.poll() is None                 # alive: it says it cannot work, it does not crash

        stack.nats.provision()                             # the operator declares the topology again

        def ready() -> bool:
            status, body = ready_json(planner)
            assert status == 200 and body["ready"] is True and body["failing"] == {}, body
            return True
        await eventually(ready, 20, 0.2)

        # and it does its job again: an anomaly on the recreated stream is planned
        js = nc.jetstream()
        a = events_pb2.Anomaly(meta=new_meta("test", "c-ready"), node_id="n1", root_cause="n1",
                               fault_type="node_down", incident_id="n1.node_down", confidence=0.9)
        analyzer = await connect_as(stack, "analyzer")    # who publishes anomalies
        try:
            await Publisher(analyzer, "analyzer").publish(subjects.MAPEK_ANOMALY, a)
        finally:
            await analyzer.close()

        async def planned() -> list:
            seen = [m for m in await read_all(js, subjects.AUDIT_ALL, stream=subjects.STREAM_AUDIT)
                    if m.subject.startswith("audit.planner.")
                    and events_pb2.AuditEvent.FromString(m.data).meta.cycle_id == "c-ready"]
            return seen
        await eventually(planned, 20, 0.2, what="the planner audits its decision on the recreated stream")
    finally:
        await nc.close()
