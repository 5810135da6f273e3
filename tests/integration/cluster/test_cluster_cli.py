"""`meshctl up --nats-servers` (issue #20): a bad count is one clear error; a cluster recorded in stack.json is
found again by another process (``NatsServer.running``) and a mesh host added there is accepted by every server
after the reload (as `meshctl mesh up` does). Real nats-servers (TLS, nkeys, routes over mutual TLS)."""
from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from x0tta6bl4.bus.connection import NatsCredentials, connect_once
from x0tta6bl4.bus.permissions import MESH_HOST_PREFIX
from x0tta6bl4.cli.main import app
from x0tta6bl4.runtime.stack import NatsCluster, NatsServer

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("count", ["2", "4", "0", "9", "three"])
def test_a_bad_server_count_is_one_clear_error(tmp_path, count):
    r = CliRunner().invoke(app, ["up", "--nats-servers", count, "--data-dir", str(tmp_path)],
                           env={"COLUMNS": "200"})
    assert r.exit_code != 0
    assert "--nats-servers" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "stack.json").exists()


def test_a_recorded_cluster_is_reloaded_on_every_server(stack_factory):
    stack = stack_factory(services=(), nats_servers=3)
    assert isinstance(stack.nats, NatsCluster)
    info = json.loads(json.dumps(stack.nats.info()))          # as stack.json holds it
    assert [s["port"] for s in info["servers"]] == [s.port for s in stack.nats.servers]
    found = NatsServer.running(info, stack.secrets)
    assert isinstance(found, NatsCluster) and found.url == stack.url and found.pid

    stack.secrets.add_mesh_host("lab", ["n0", "n1"])
    found.reload(accepts=MESH_HOST_PREFIX + "lab", timeout_s=20)
    creds = NatsCredentials.in_secrets(stack.secrets.root, MESH_HOST_PREFIX + "lab")

    async def each_server_accepts() -> None:
        for s in stack.nats.servers:        # every server, not only the first
            nc = await connect_once(s.url, "lab-check", timeout_s=10, creds=creds)
            await nc.close()
    asyncio.run(each_server_accepts())

    with pytest.raises(ValueError, match="no servers"):
        NatsServer.running({"servers": []}, stack.secrets)
