"""A GOV stream written before the log was signed (unsigned v1 records), met by the real governance process:
refused at start with one line naming the setting (exit 2, no traceback); accepted once with
X0TTA6BL4_ADOPT_LEGACY_LOG=true; later starts need no setting."""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from testkit import eventually_sync, scaled

from tests.integration.governance.conftest import gov_channel
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.connection import NatsCredentials, connect_once
from x0tta6bl4.governance import events as gev
from x0tta6bl4.governance.eventlog import encode_legacy
from x0tta6bl4.runtime.stack import Stack
from x0tta6bl4.v1 import governance_pb2 as g
from x0tta6bl4.v1 import governance_pb2_grpc as gg


def publish_legacy(stack: Stack, records: list[bytes]) -> None:
    async def go():
        creds = NatsCredentials.in_secrets(stack.secrets.root, "governance") if stack.bus_secured else None
        nc = await connect_once(stack.url, "test-legacy-writer", creds=creds)
        try:
            for data in records:
                await nc.jetstream().publish(subjects.gov_event("voter_registered"), data)
        finally:
            await nc.close()
    asyncio.run(go())


def balance(stack: Stack, voter: str) -> float:
    with gov_channel(stack, stack.grpc_addr("governance")) as ch:       # mutual TLS as an operator
        grpc.channel_ready_future(ch).result(timeout=scaled(20))
        return gg.GovernanceStub(ch).GetBalance(g.GetBalanceRequest(voter=voter)).balance


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path / "legacy", services=())
    s.start_nats()
    s.start_service("keyvault")          # governance's SVID issuer
    s.wait_ready(60)
    yield s
    s.stop()


def test_a_legacy_log_is_refused_then_adopted_once(stack):
    publish_legacy(stack, [encode_legacy([gev.VoterRegistered("alice", 100.0, time.time())], []),
                           encode_legacy([gev.VoterRegistered("bob", 40.0, time.time())], [])])
    sp = stack.start_service("governance")
    eventually_sync(lambda: sp.proc.poll() is not None, 60, 0.1, what="governance refuses the unsigned log")
    out = sp.log_file.read_text()
    assert sp.proc.returncode == 2, out[-2000:]
    assert "config error: governance log: stream GOV holds 2 unsigned records" in out
    assert "X0TTA6BL4_ADOPT_LEGACY_LOG=true" in out and "Traceback" not in out
    stack.procs.remove(sp)

    stack.env["X0TTA6BL4_ADOPT_LEGACY_LOG"] = "true"
    adopted = stack.start_service("governance")
    stack.wait_ready(scaled(60))
    assert balance(stack, "bob") == 40.0
    stack.stop_service(adopted)

    del stack.env["X0TTA6BL4_ADOPT_LEGACY_LOG"]      # sealed: no setting needed any more
    stack.start_service("governance")
    stack.wait_ready(scaled(60))
    assert balance(stack, "alice") == 100.0 and balance(stack, "bob") == 40.0
