"""The generated deployment on a REAL nats-server: the configuration written for the containers
(python -m x0tta6bl4.runtime.deploy compose), with the container paths rewritten to a temporary directory,
is accepted by nats-server; every container identity connects over TLS with its own nkey and nothing else;
anonymous and unknown clients are refused; the provisioning step (the compose `provision` service, the
Kubernetes Job) declares the topology as the provisioner, which no service identity may do."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import nats
import nkeys
import pytest
from testkit import scaled

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
