"""The generated deployment on a REAL nats-server: the configuration written for the containers
(python -m x0tta6bl4.runtime.deploy compose), with the container paths rewritten to a temporary directory,
is accepted by nats-server; every container identity connects over TLS with its own nkey and nothing else;
anonymous and unknown clients are refused; the provisioning step (the compose `provision` service, the
Kubernetes Job) declares the topology as the provisioner, which no service identity may do."""
from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import time

import nats
import nkeys
import pytest
from testkit import eventually, scaled

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.connection import NatsCredentials, connect_once
from x0tta6bl4.runtime.stack import repo_root


async def test_every_container_identity_connects_with_tls_and_its_own_nkey(generated_compose, secured_nats,
                                                                           materialize):
    url, tmp = secured_nats.url, secured_nats.tmp
    for name, ident in generated_compose.dep.containers().items():
        if ident.name == "nats":
            continue
        env = materialize(ident, tmp / name)
        creds = NatsCredentials.from_env(env)
        assert creds is not None and creds.identity == env["X0TTA6BL4_NATS_IDENTITY"] and creds.ca_file, name
        nc = await connect_once(url, f"deploy-test-{name}", timeout_s=scaled(10), creds=creds)
        try:
            assert nc.is_connected and nc.connected_url.scheme == "tls", name
            await nc.flush(timeout=scaled(5))
        finally:
            await nc.close()


async def test_anonymous_plaintext_and_unknown_clients_are_refused(generated_compose, secured_nats, materialize):
    url, tmp, log = secured_nats.url, secured_nats.tmp, secured_nats.log
    ca = materialize(generated_compose.dep.identity("operator"), tmp / "op")["X0TTA6BL4_NATS_CA_FILE"]
    tls = NatsCredentials("anonymous", pathlib.Path("/nonexistent"), pathlib.Path(ca)).options()["tls"]
    # no credentials at all, over TLS with the right CA
    with pytest.raises(Exception) as refused:
        await nats.connect(url, tls=tls, allow_reconnect=False, max_reconnect_attempts=0,
                           connect_timeout=scaled(5))
    assert "authorization" in str(refused.value).lower(), refused.value
    # plain text: the server requires TLS
    with pytest.raises(Exception):  # noqa: B017 - refused at the TLS handshake or by authorization
        await nats.connect(url.replace("tls://", "nats://"), allow_reconnect=False, max_reconnect_attempts=0,
                           connect_timeout=scaled(5))
    # a well-formed nkey the server does not know
    seed = tmp / "stranger.nk"
    seed.write_bytes(bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)))
    stranger = NatsCredentials("stranger", seed, pathlib.Path(ca))
    with pytest.raises(Exception) as refused:
        await connect_once(url, "stranger", timeout_s=scaled(10), creds=stranger)
    assert "authorization" in str(refused.value).lower(), refused.value
    assert log.read_text().count("authentication error") >= 2     # both, as the server saw them


def provision(env: dict[str, str], url: str, timeout: float) -> subprocess.CompletedProcess:
    root = repo_root()
    full = {k: v for k, v in os.environ.items() if not k.startswith("X0TTA6BL4_")}
    full.update(env, X0TTA6BL4_NATS_URL=url,
                PYTHONPATH=os.pathsep.join([str(root), str(root / "libs"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "x0tta6bl4.runtime.deploy", "provision", "--timeout", str(timeout)],
                          env=full, capture_output=True, text=True, timeout=scaled(120))


async def test_the_provision_step_declares_the_topology_and_only_the_provisioner_may(generated_compose, secured_nats,
                                                                                     materialize):
    url, tmp = secured_nats.url, secured_nats.tmp
    dep = generated_compose.dep
    monitor_env = materialize(dep.identity("monitor", "monitor"), tmp / "monitor")
    # a service identity cannot declare streams: the step fails, in one line, and declares nothing
    r = provision(monitor_env, url, 3)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "deploy provision:" in r.stderr and "provisioner" in r.stderr, r.stderr
    prov_env = materialize(dep.identity("provisioner"), tmp / "provisioner")
    for _ in range(2):           # idempotent: a second run (a restarted container, a re-applied Job) succeeds
        r = provision(prov_env, url, 30)
        assert r.returncode == 0, r.stderr
        assert f"provisioned {len(subjects.STREAMS)} streams" in r.stdout and "as provisioner" in r.stdout
    creds = NatsCredentials.from_env(monitor_env)
    nc = await connect_once(url, "monitor-check", timeout_s=scaled(10), creds=creds)
    try:
        js = nc.jetstream(timeout=scaled(5))
        info = await js.stream_info(subjects.STREAM_MAPEK)       # the monitor may look, now it exists
        assert info.config.name == subjects.STREAM_MAPEK
        consumer = next(c for c in subjects.CONSUMERS if c.service == "monitor")
        assert (await js.consumer_info(consumer.stream, consumer.durable)).name == consumer.durable
        with pytest.raises(Exception):  # noqa: B017 - a permission violation: the request gets no answer
            await nc.jetstream(timeout=1).add_stream(name="FORGED", subjects=["forged.>"])
    finally:
        await nc.close()


async def test_the_dashboard_identity_reads_what_it_shows_asks_for_a_cycle_and_nothing_else(generated_compose,
                                                                                             secured_nats,
                                                                                             materialize):
    """The dashboard container's generated credentials on the generated nats-server: its real bus feeds
    (dashboard.server.follow_bus) read the buckets, streams and proposals it shows, its write action reaches
    the monitor, and it can neither command the mesh nor write a bucket, a MAPE-K event or an audit event."""
    import json

    from x0tta6bl4.dashboard.server import DashboardServer, follow_bus, request_cycle
    from x0tta6bl4.dashboard.state import DashboardState
    from x0tta6bl4.v1 import events_pb2
    url, tmp = secured_nats.url, secured_nats.tmp
    dep = generated_compose.dep
    ident = dep.containers()["dashboard"]
    env = materialize(ident, tmp / "dashboard")
    token = pathlib.Path(env["X0TTA6BL4_DASHBOARD_TOKEN_FILE"])
    assert token.read_bytes() == dep.dashboard_token.read_bytes() and len(token.read_text().strip()) >= 32
    assert set(ident.files) == {"nats.nk", "ca.pem", "trust.json", "dashboard.token"}
    r = provision(materialize(dep.identity("provisioner"), tmp / "provisioner"), url, 30)
    assert r.returncode == 0, r.stderr

    async def as_(identity: str, service: str | None = None, **kw):
        creds = NatsCredentials.from_env(materialize(dep.identity(identity, service), tmp / f"c-{identity}"))
        return await nats.connect(url, allow_reconnect=False, connect_timeout=scaled(5), **creds.options(), **kw)

    monitor, host, op = await as_("monitor", "monitor"), await as_("mesh-host-demo"), await as_("operator")
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))
    dash = await nats.connect(url, allow_reconnect=False, connect_timeout=scaled(5), error_cb=on_error,
                              **NatsCredentials.from_env(env).options())
    handles: list = []
    try:
        assert dash.connected_url.scheme == "tls"
        # what the monitor writes: a node's telemetry, an audit event; and it answers cycle requests
        mjs = monitor.jetstream(timeout=scaled(5))
        t = events_pb2.NodeTelemetry(node_id="n0", reachable=True, neighbours=["n1"])
        t.meta.ts_unix_ns = time.time_ns()
        await (await mjs.key_value("telemetry")).put("node.n0", t.SerializeToString())
        audit = events_pb2.AuditEvent(service="monitor", event_type="deploy-test", subject_id="n0")
        await mjs.publish("audit.monitor.deploy-test", audit.SerializeToString())

        async def answer(msg) -> None:
            await msg.respond(json.dumps({"cycle_id": "c-deploy", "asked": json.loads(msg.data)}).encode())
        await monitor.subscribe(subjects.MONITOR_CYCLE, cb=answer)
        await monitor.flush()
        # the dashboard's own feeds, on its own credentials
        server = DashboardServer(DashboardState(), token.read_text().strip())
        handles = await asyncio.wait_for(follow_bus(dash, server, 900), scaled(20))
        assert server.ready

        def shown():
            view = server.state.mesh_view(time.time_ns())
            return [n["id"] for n in view["nodes"]] == ["n0", "n1"] and \
                [e["event_type"] for e in server.state.audit] == ["deploy-test"]
        await eventually(shown, 10, what="n0's telemetry and the audit event on the dashboard")
        answer_doc = await request_cycle(dash, {"trigger": "n0"})
        assert answer_doc["cycle_id"] == "c-deploy" and answer_doc["asked"]["trigger"] == "n0"
        # what it may not do: every attempt refused by the server, nothing delivered
        got: list[bytes] = []

        async def on_cmd(msg) -> None:
            got.append(msg.data)
        await host.subscribe(subjects.mesh_cmd("n0"), cb=on_cmd)
        await host.flush()
        forbidden = [subjects.mesh_cmd("n0"), "$KV.telemetry.node.n0", "$KV.avoided.n4", subjects.MAPEK_ACTION,
                     "audit.dashboard.forged", "audit.monitor.forged", "gov.watch.forged",
                     subjects.keyvault_rpc("Revoke"), "$JS.API.STREAM.CREATE.FORGED",
                     f"$JS.API.STREAM.PURGE.{subjects.STREAM_AUDIT}"]
        for subject in forbidden:
            await dash.publish(subject, b"forged")
        await dash.flush(timeout=scaled(5))
        await op.publish(subjects.mesh_cmd("n0"), b"the operator's")     # the control: the channel works
        await eventually(lambda: got, 10, what="the operator's command delivered")
        assert got == [b"the operator's"], got

        def refused():
            seen = [e.lower() for e in errors if "permissions violation for publish" in e.lower()]
            return all(any(f'"{s.lower()}"' in e for e in seen) for s in forbidden)
        await eventually(refused, 10, what=f"a permissions violation for each of {forbidden} (got {errors})")
        with pytest.raises(Exception):  # noqa: B017 - a permission violation: the request gets no answer
            await dash.jetstream(timeout=1).add_stream(name="FORGED", subjects=["forged.>"])
    finally:
        for h in handles:
            if isinstance(h, asyncio.Task):
                h.cancel()
        for nc in (dash, monitor, host, op):
            await nc.close()
