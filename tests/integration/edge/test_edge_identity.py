"""The ``edge`` bus identity (issue #16, least privilege): an edge node syncs with its own credential, not the
operator's. `meshctl edge sync` given a secrets directory that holds ONLY the edge identity's nkey and the CA
merges the node's CRDT document and puts its offline audit events on audit.edge.* (so the sync uses that
identity and it suffices, with no permission violation); the same credential is refused by the broker for
everything else an attacker holding it would try: mapek.action, gov.events.*, mesh commands, other buckets or
keys, deleting the edge bucket, reading MAPE-K."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from testkit import eventually, scaled, violations

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.permissions import EDGE
from x0tta6bl4.bus.reader import read_all
from x0tta6bl4.edge import EdgeNode
from x0tta6bl4.runtime.stack import repo_root
from x0tta6bl4.v1 import events_pb2

pytestmark = pytest.mark.timeout(180)


class Refusals:
    """A connection as ``identity`` whose error callback collects what the broker sends back."""

    def __init__(self, stack, identity: str):
        self.stack, self.identity, self.errors, self.nc = stack, identity, [], None

    async def __aenter__(self) -> Refusals:
        async def on_error(e: Exception) -> None:
            self.errors.append(str(e).lower())
        self.nc = await self.stack.connect(self.identity, name=f"attacker-{self.identity}", error_cb=on_error)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()

    async def refused(self, subject: str, data: bytes = b"x", what: str = "publish") -> None:
        if what == "publish":
            await self.nc.publish(subject, data)
        else:
            await self.nc.subscribe(subject)
        await self.nc.flush()
        needle = f'permissions violation for {what} to "{subject.lower()}"'
        await eventually(lambda: any(needle in e for e in self.errors), 5, 0.05,
                         what=f"the broker refuses {self.identity}: {what} to {subject}")


def edge_only_secrets(stack, dest):
    """A secrets directory with the edge identity's nkey and the CA and nothing else."""
    (dest / "creds").mkdir(parents=True)
    (dest / "ca").mkdir()
    shutil.copy(stack.secrets.nkey_file(EDGE), dest / "creds" / f"{EDGE}.nk")
    shutil.copy(stack.secrets.ca_cert, dest / "ca" / "ca.pem")
    return dest


async def test_edge_sync_uses_its_own_least_privileged_identity(tmp_path, stack_factory):
    stack = stack_factory(services=(), violations_expected=True)       # a secured, provisioned nats-server
    d = tmp_path / "edge"
    en = EdgeNode.setup(d, "n4", offline=True, topology="grid:9")
    en.set_config("mode", "crisis")
    assert en.decide("isolate", "n5", 0.97, "jamming").allowed
    en.save()
    offline_events = {e.event_id for e in en.state.audit_events()}
    assert offline_events

    env = {k: v for k, v in os.environ.items() if not k.startswith("X0TTA6BL4_NATS_")}
    env["X0TTA6BL4_SECRETS_DIR"] = str(edge_only_secrets(stack, tmp_path / "edge-secrets"))
    r = subprocess.run([sys.executable, "-m", "x0tta6bl4.cli.edge", "sync", "n4", "--nats", stack.url,
                        "--data-dir", str(d), "--json"], capture_output=True, text=True, cwd=repo_root(), env=env,
                       timeout=scaled(60))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["node"] == "n4" and offline_events <= set(report["published_ids"])   # and edge.online
    assert not violations(stack), "edge sync needed more than the edge identity may do"

    nc = await stack.connect()                  # the operator reads what the edge node published
    try:
        js = nc.jetstream()
        published = [events_pb2.AuditEvent.FromString(m.data)
                     for m in await read_all(js, "audit.edge.>", stream=subjects.STREAM_AUDIT)]
        assert {e.details["edge_event_id"] for e in published} == set(report["published_ids"])
        doc = await (await js.key_value("edge")).get("doc")
        assert doc.value

        req = events_pb2.ActionRequest(action_id="edge-forged").SerializeToString()
        async with Refusals(stack, EDGE) as a:
            await a.refused(subjects.MAPEK_ACTION, req)
            await a.refused(subjects.gov_event("voter_registered"), b'{"voter_id":"evil","balance":1e6}')
            await a.refused(subjects.mesh_cmd("n4"))
            await a.refused(subjects.telemetry("n4"))
            await a.refused(subjects.audit("executor", "action.executed"))     # only audit.edge.*
            await a.refused("$KV.actions.edge-forged", b"done")
            await a.refused("$KV.edge.another-key", b"x")                      # only the merged document
            await a.refused("$JS.API.STREAM.DELETE.KV_edge", b"{}")
            await a.refused("$JS.API.STREAM.PURGE.AUDIT", b"{}")
            await a.refused(subjects.MAPEK_ALL, what="subscription")
        assert not [m for m in await read_all(js, subjects.MAPEK_ACTION, stream=subjects.STREAM_MAPEK)]
        assert "KV_edge" in {s.config.name for s in await js.streams_info()}
    finally:
        await nc.close()
