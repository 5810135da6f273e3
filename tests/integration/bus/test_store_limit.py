"""Every nats-server of ours has its JetStream file-store limit configured, so that declaring the streams
does not depend on how much disk happens to be free when the server starts (with nats-server's default,
75 % of the free space, a CI machine with under 8 GB free refused the streams: 'insufficient storage
resources available'); and a server that cannot start says so instead of passing for started."""
from __future__ import annotations

import pytest

from x0tta6bl4.bus import subjects
from x0tta6bl4.runtime.secrets import init as init_secrets
from x0tta6bl4.runtime.stack import NatsServer, free_port

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("secured", [False, True], ids=["open", "secured"])
def test_the_store_limit_is_configured_and_the_streams_reserve_within_it(tmp_path, secured):
    secrets = init_secrets(tmp_path / "secrets") if secured else None
    server = NatsServer(tmp_path / "js", secrets=secrets, http_port=free_port()).start()
    try:
        server.provision()
        jsz = server.monitor("jsz")
        assert jsz["config"]["max_storage"] == subjects.STORE_LIMIT, jsz["config"]
        assert jsz["reserved_storage"] == subjects.STORE_RESERVED, jsz
        assert subjects.STORE_RESERVED < subjects.STORE_LIMIT
        assert jsz["streams"] == len(subjects.STREAMS) + len(subjects.BUCKETS)
    finally:
        server.stop()


def test_a_server_that_exits_at_start_is_not_taken_for_started(tmp_path):
    server = NatsServer(tmp_path / "js")
    server.config_file.parent.mkdir(parents=True, exist_ok=True)
    server._command = lambda: [*NatsServer._command(server), "--no-such-flag"]   # nats-server refuses it
    with pytest.raises(RuntimeError, match="nats-server exited"):
        server.start(10)
