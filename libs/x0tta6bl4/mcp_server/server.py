"""x0tta6bl4-mcp: the operator skill's MCP server (stdio), exposing the spec's trigger verbs as tools.

    x0tta6bl4-mcp                      (or: python -m x0tta6bl4.mcp_server)

Every tool talks to the real system and returns structured results:

* NATS (``--nats`` / ``$X0TTA6BL4_NATS_URL`` / the running stack's ``var/stack.json``): telemetry KV,
  the MAPEK stream, the edge CRDT bucket, ``monitor.rpc.Cycle``; as the ``operator`` identity
  (``$X0TTA6BL4_NATS_NKEY_FILE`` + ``$X0TTA6BL4_NATS_CA_FILE``, else the stack's ``secrets/creds/operator.nk``
  and ``secrets/ca/ca.pem``);
* governance gRPC (``$X0TTA6BL4_GOV_ADDR`` or the stack's, default 127.0.0.1:50051);
* keyvault gRPC (``$X0TTA6BL4_KEYVAULT_ADDR`` or the stack's, default 127.0.0.1:50052).

Tools that change the mesh or its keys say DESTRUCTIVE in their description and carry
``destructiveHint``.
"""
from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time
from typing import Any

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.connection import connect_once
from x0tta6bl4.bus.permissions import OPERATOR
from x0tta6bl4.bus.reader import mesh_telemetry
from x0tta6bl4.mapek.health import classify_node
from x0tta6bl4.runtime import locate
from x0tta6bl4.v1 import common_pb2, events_pb2

mcp = FastMCP("x0tta6bl4-mcp", instructions=(
    "Operate the x0tta6bl4 self-healing mesh: mesh_status first, simulate_failure before risky changes, "
    "run_mapek_cycle / self_heal_topology to repair, dao_* for governance-gated changes, "
    "pqc_rotate_keys for key rotation, edge_setup / crisis_recovery for disconnected nodes."))

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, openWorldHint=False)
WRITES = ToolAnnotations(readOnlyHint=False, destructiveHint=False, openWorldHint=False)
DESTRUCTIVE = ToolAnnotations(readOnlyHint=False, destructiveHint=True, openWorldHint=False)


# ---- where things are ------------------------------------------------------------------------------
def _data_dir() -> pathlib.Path:
    return locate.data_dir()


def nats_url() -> str:
    return locate.nats_url()


def gov_addr() -> str:
    return locate.grpc_addr("governance")


def keyvault_addr() -> str:
    return locate.grpc_addr("keyvault")


def _creds():
    return locate.credentials(OPERATOR)


async def _connect():
    return await connect_once(nats_url(), "x0tta6bl4-mcp", creds=_creds())


def _health_name(h: int) -> str:
    return common_pb2.Health.Name(h).removeprefix("HEALTH_").lower()


async def _telemetry(nc) -> dict[str, events_pb2.NodeTelemetry]:
    return await mesh_telemetry(nc.jetstream())

def _node_row(t: events_pb2.NodeTelemetry, now_ns: int) -> dict[str, Any]:
    h, reasons = classify_node(t)
    return {"node": t.node_id, "health": _health_name(h), "reachable": t.reachable,
            "p99_latency_ms": round(t.p99_latency_ms, 3), "loss_pct": round(t.loss_pct, 3),
            "cpu_pct": round(t.cpu_pct, 2), "mem_pct": round(t.mem_pct, 2), "peers": t.peer_count,
            "routes": t.route_count, "neighbours": list(t.neighbours),
            "age_s": round((now_ns - t.meta.ts_unix_ns) / 1e9, 2),
            "reasons": reasons}


def _pb_dict(msg) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict
    return MessageToDict(msg, preserving_proto_field_name=True)


# ---- mesh status / twin ---------------------------------------------------------------------------
@mcp.tool(annotations=READ_ONLY)
async def mesh_status() -> dict[str, Any]:
    """Mesh status: every node's health by the spec's thresholds (p99 latency <40/40-100/>100 ms, loss <1/1-5/>5 %,
    CPU <70/70-90/>90 %, memory <80/80-95/>95 %), peers, routes, reasons; and the mesh's worst health. Read-only."""
    nc = await _connect()
    try:
        nodes = await _telemetry(nc)
    finally:
        await nc.close()
    now = time.time_ns()
    rows = [_node_row(nodes[n], now) for n in sorted(nodes, key=lambda n: (len(n), n))]
    worst = max((common_pb2.Health.Value("HEALTH_" + r["health"].upper()) for r in rows),
                default=common_pb2.HEALTH_HEALTHY)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["health"]] = counts.get(r["health"], 0) + 1
    return {"mesh": _health_name(worst) if rows else "unknown", "nodes": rows, "counts": counts,
            "node_count": len(rows), "nats": nats_url()}


@mcp.tool(annotations=READ_ONLY)
async def simulate_failure(node: str, duration_s: float = 60.0, cascade_threshold: float = 0.5) -> dict[str, Any]:
    """Digital twin: what happens if NODE fails, on the live topology (from telemetry). Returns connectivity
    maintained, partition, isolated neighbours, estimated MTTR and the predicted cascade. Read-only: nothing
    in the mesh is touched."""
    from x0tta6bl4.twin.twin import MeshDigitalTwin
    nc = await _connect()
    try:
        nodes = await _telemetry(nc)
    finally:
        await nc.close()
    if node not in nodes:
        raise ValueError(f"unknown node {node!r}; known: {', '.join(sorted(nodes)) or 'none (no telemetry yet)'}")
    twin = MeshDigitalTwin("x0tta6bl4-mcp")
    twin.from_neighbours({n: list(t.neighbours) for n, t in nodes.items()})
    r = twin.simulate_node_failure(node, duration_s)
    cascade = [str(x) for x in twin.predict_cascade_failure(node, cascade_threshold)]
    return {"node": node, "duration_s": duration_s, "connectivity_maintained": r.connectivity_maintained,
            "partitioned": bool(r.partitioned), "isolated_neighbours": [str(x) for x in r.isolated_neighbours],
            "detection_s": r.detection_s, "repair_s": r.repair_s, "mttr_seconds": r.mttr_seconds,
            "mttr_model_calibrated": bool(r.mttr_model_calibrated), "cascade": cascade,
            "cascade_risk": len(cascade) > 2}


# ---- MAPE-K ---------------------------------------------------------------------------------------
STAGES = {subjects.MAPEK_ANOMALY: "analyze", subjects.MAPEK_PLAN: "plan", subjects.MAPEK_ACTION: "execute",
          subjects.MAPEK_RESULT: "result", subjects.MAPEK_VERIFIED: "verify"}


async def _cycle(trigger: str, reasons: list[str], wait_s: float, until: str) -> dict[str, Any]:
    """Ask the monitor for a cycle over the live telemetry (``monitor.rpc.Cycle``: operators do not publish
    MAPE-K messages themselves), triggered on ``trigger``, then follow it on the MAPEK subjects."""
    import json

    from x0tta6bl4.bus import subjects
    from x0tta6bl4.cli.observe import decode_msg
    nc = await _connect()
    try:
        nodes = await _telemetry(nc)
        if not nodes:
            raise ValueError("no telemetry: is a mesh connected to the stack?")
        if trigger and trigger not in nodes:
            raise ValueError(f"unknown node {trigger!r}; known: {', '.join(sorted(nodes))}")
        seen: list[dict[str, Any]] = []
        early: list[Any] = []           # messages that arrive before the monitor's reply names the cycle
        done = asyncio.Event()
        cycle = ""

        def take(msg) -> None:
            ev = decode_msg(msg)
            if ev is None or ev.meta.cycle_id != cycle or msg.subject not in STAGES:
                return
            seen.append({"stage": STAGES[msg.subject], "subject": msg.subject, **_pb_dict(ev)})
            if STAGES[msg.subject] == until or (msg.subject == subjects.MAPEK_PLAN and ev.decision in (
                    events_pb2.DECISION_KIND_OBSERVE,)):
                done.set()

        async def on(msg) -> None:
            if not cycle:
                early.append(msg)
            else:
                take(msg)
        sub = await nc.subscribe(subjects.MAPEK_ALL, cb=on)
        await nc.flush()
        try:
            reply = await nc.request(subjects.MONITOR_CYCLE, json.dumps({"trigger": trigger,
                                                                         "reasons": reasons}).encode(), timeout=5)
        except Exception as e:  # noqa: BLE001 - no monitor, no permission, timeout: one clear error
            raise ValueError(f"no monitor answered on {subjects.MONITOR_CYCLE}: {type(e).__name__} {e}") from None
        answer = json.loads(reply.data)
        if "error" in answer:
            raise ValueError(f"monitor: {answer['error']}")
        cycle = answer["cycle_id"]
        for m in early:
            take(m)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), wait_s)
        await sub.unsubscribe()
    finally:
        await nc.close()
    out: dict[str, Any] = {"cycle_id": cycle, "trigger_node": trigger, "stages": [s["stage"] for s in seen],
                           "events": seen, "complete": done.is_set()}
    for s in seen:
        if s["stage"] == "analyze":
            out["anomaly"] = {k: s.get(k) for k in ("fault_type", "root_cause", "confidence", "anomaly_score")}
        elif s["stage"] == "plan":
            out["decision"] = s.get("decision")
        elif s["stage"] == "verify":
            out["recovered"] = bool(s.get("recovered"))
            out["mttr_ms"] = s.get("mttr_ms")
    if not seen:
        out["note"] = "no anomaly found in the current telemetry (the analyzer published nothing for this window)"
    return out


@mcp.tool(annotations=DESTRUCTIVE)
async def run_mapek_cycle(trigger_node: str = "", wait_s: float = 10.0) -> dict[str, Any]:
    """Run one MAPE-K cycle on the live mesh: a telemetry window from the current telemetry goes to the analyzer;
    returns the cycle id and every stage seen (anomaly, plan, action, result, verification) within wait_s.
    DESTRUCTIVE: when the plan is auto-executed (confidence > 0.9, critical) the executor changes the mesh
    (reroute, isolate, restart, key rotation); votes are opened for less certain plans."""
    return await _cycle(trigger_node, ["operator: run MAPE-K cycle"], wait_s, "verify")


@mcp.tool(annotations=DESTRUCTIVE)
async def self_heal_topology(node: str, wait_s: float = 20.0) -> dict[str, Any]:
    """Self-heal the mesh around NODE: starts a MAPE-K cycle triggered on NODE and waits for the verified repair
    (recovered, MTTR). DESTRUCTIVE: the executor reroutes around / isolates / restarts nodes as planned."""
    return await _cycle(node, [f"operator: self-heal around {node}"], wait_s, "verify")


# ---- DAO --------------------------------------------------------------------------------------------
def _gov():
    from x0tta6bl4.cli import gov
    return gov


async def _in_thread(fn, *a, **kw):
    gov = _gov()
    try:
        return await asyncio.to_thread(fn, *a, **kw)
    except gov.GovError as e:
        raise ValueError(str(e)) from None


@mcp.tool(annotations=WRITES)
async def dao_register_voter(voter: str, balance: float, key_file: str) -> dict[str, Any]:
    """Register a DAO voter with a token balance. KEY_FILE is the voter's ML-DSA-65 key (created, 0600, with
    KEY_FILE.pub, when it does not exist). Voting weight is sqrt(tokens)."""
    gov = _gov()
    key = pathlib.Path(key_file)

    def go():
        if not key.exists():
            gov.keygen(key)
        return gov.register(gov_addr(), voter, balance, key)
    return _pb_dict(await _in_thread(go))


@mcp.tool(annotations=WRITES)
async def dao_create_proposal(title: str, duration_s: float = 300.0, action: str = "config_change",
                              target_node: str = "", description: str = "", params: dict[str, str] | None = None,
                              quorum: float = 0.5, threshold: float = 0.5, proposer: str = "x0tta6bl4-mcp",
                              key_file: str = "") -> dict[str, Any]:
    """Open a DAO proposal (quadratic voting). action: reroute, rotate_keys, deploy, config_change, isolate, restart,
    reinstate, topology_update (params link="A,B", state=down|up); config_change params hello_interval (s),
    miss_count. A proposal that passes is executed by the orchestrator's executor. With key_file (the proposer's voter
    key) the proposal is signed by that ledger identity; without, the ledger admin token is used."""
    gov = _gov()
    p = await _in_thread(gov.create, gov_addr(), title, duration_s, description=description, action=action,
                         target=target_node, params=[f"{k}={v}" for k, v in (params or {}).items()],
                         proposer=proposer, quorum=quorum, threshold=threshold,
                         key_file=pathlib.Path(key_file) if key_file else None)
    return {**_pb_dict(p), "summary": gov.proposal_line(p)}


@mcp.tool(annotations=WRITES)
async def dao_vote(proposal_id: str, voter: str, choice: str, tokens: float, key_file: str) -> dict[str, Any]:
    """Cast a signed quadratic vote (choice yes/no/abstain, weight = sqrt(tokens)) with the voter's ML-DSA-65 key."""
    gov = _gov()
    r = await _in_thread(gov.vote, gov_addr(), proposal_id, voter, choice, tokens, pathlib.Path(key_file))
    return {**_pb_dict(r), "summary": gov.proposal_line(r.proposal)}


@mcp.tool(annotations=READ_ONLY)
async def dao_status(proposal_id: str = "", state: str = "") -> dict[str, Any]:
    """A proposal with its tally (or, without proposal_id, every proposal, optionally by state). Read-only."""
    gov = _gov()
    if proposal_id:
        p = await _in_thread(gov.status, gov_addr(), proposal_id)
        return {**_pb_dict(p), "summary": gov.proposal_line(p)}
    r = await _in_thread(gov.list_proposals, gov_addr(), state, 1000)
    return {"proposals": [{**_pb_dict(p), "summary": gov.proposal_line(p)} for p in r.proposals]}


# ---- PQC keys ---------------------------------------------------------------------------------------
def _keyvault(method: str, request, timeout: float = 60.0):
    """One keyvault gRPC call over mutual TLS with an operator SVID (``rpc.svid.operator_svid``)."""
    import grpc

    from x0tta6bl4.rpc import svid as svids
    from x0tta6bl4.v1 import keyvault_pb2_grpc
    try:
        me = svids.operator_svid()
    except svids.SvidError as e:
        raise ValueError(f"no operator SVID for mutual TLS with keyvault: {e}") from None
    try:
        with svids.secure_channel(keyvault_addr(), me, "keyvault", svids.trust_domain(),
                                  options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]) as ch:
            return getattr(keyvault_pb2_grpc.KeyvaultStub(ch), method)(request, timeout=timeout)
    except grpc.RpcError as e:
        raise ValueError(f"keyvault {keyvault_addr()}: {e.code().name}: {e.details()}") from None


def _key_rec(r) -> dict[str, Any]:
    return {"node_id": r.node_id, "spiffe_id": r.spiffe_id, "generation": r.generation, "status": r.status,
            "sig_key_id": r.sig_key_id, "sig_algorithm": r.sig_algorithm, "kem_key_id": r.kem_key_id,
            "kem_algorithm": r.kem_algorithm, "not_after": r.not_after_unix, "revoked": r.revoked,
            "previous": [{"generation": p.generation, "status": p.status, "sig_key_id": p.sig_key_id}
                         for p in r.previous]}


@mcp.tool(annotations=READ_ONLY)
async def pqc_list_keys(include_revoked: bool = False) -> dict[str, Any]:
    """Node identities known to the keyvault with their current PQC key generation (ML-DSA-65 + Ed25519 signing,
    ML-KEM-768 + X25519 KEM). Read-only."""
    from x0tta6bl4.v1 import keyvault_pb2 as kv
    r = await asyncio.to_thread(_keyvault, "ListIdentities", kv.ListIdentitiesRequest(include_revoked=include_revoked))
    return {"identities": [_key_rec(x) for x in r.records]}


@mcp.tool(annotations=WRITES)
async def pqc_issue_identity(node: str) -> dict[str, Any]:
    """Issue a custodial PQC identity (signing + KEM keys, root-signed records) for NODE in the keyvault; its private
    keys stay in keyvault (nodes run by mesh hosts generate their own keys and have keyvault certify them)."""
    from x0tta6bl4.v1 import keyvault_pb2 as kv
    r = await asyncio.to_thread(_keyvault, "IssueIdentity", kv.IssueIdentityRequest(node_id=node))
    return _key_rec(r.record)


@mcp.tool(annotations=DESTRUCTIVE)
async def pqc_rotate_keys(nodes: list[str] | None = None, all_nodes: bool = False, overlap_s: float = 0.0,
                          request_id: str = "", include_operators: bool = False,
                          wait_s: float = 0.0) -> dict[str, Any]:
    """Rotate PQC keys (ML-KEM-768 / ML-DSA-65 hybrids) for NODES or every node (all_nodes: the nodes mesh hosts
    run; operators' and voters' identities too only with include_operators): a new generation
    becomes active, the old one stays accepted for overlap_s (0 = keyvault default) and is then retired; new
    records go to the `keys` KV bucket and node agents reload. Nodes hold their own private keys: keyvault
    publishes a rotation request, each node's mesh host generates and certifies the next generation, and this
    waits up to wait_s (0 = keyvault default, 10 s) for them; `pending` names nodes that had not yet (their records
    come back unchanged with status rotation_pending; the request stands and they rotate when they see it). DESTRUCTIVE:
    old keys stop being valid after the overlap; sessions must re-handshake. request_id makes a retry rotate
    nothing twice."""
    from x0tta6bl4.v1 import keyvault_pb2 as kv
    if not nodes and not all_nodes:
        raise ValueError("name nodes to rotate, or set all_nodes")
    r = await asyncio.to_thread(_keyvault, "Rotate", kv.RotateRequest(node_ids=nodes or [], all=all_nodes,
                                                                      overlap_s=overlap_s, request_id=request_id,
                                                                      include_operators=include_operators,
                                                                      wait_s=wait_s), 120 + max(wait_s, 0.0))
    return {"rotated": [_key_rec(x) for x in r.records], "pending": list(r.pending)}


# ---- edge crisis mode ---------------------------------------------------------------------------------
def _edge_dir(data_dir: str) -> pathlib.Path:
    return pathlib.Path(data_dir) if data_dir else _data_dir() / "edge"


@mcp.tool(annotations=WRITES)
async def edge_setup(node: str, offline: bool = True, topology: str = "", routes: dict[str, str] | None = None,
                     allowed_actions: list[str] | None = None, min_confidence: float = 0.9,
                     data_dir: str = "", attach: list[str] | None = None) -> dict[str, Any]:
    """Provision an edge node for a disconnected environment (same as `meshctl edge setup NODE --offline`): a PQC
    keypair generated locally (no keyvault), a preloaded routing table (from a known topology such as grid:9
    and/or explicit dest->next-hop routes), an offline policy (actions allowed without the DAO) and offline=true,
    stored encrypted under data_dir (default $X0TTA6BL4_DATA_DIR/edge). Refuses to re-key an existing node.
    Any node name: one not in the topology (e.g. edge-7) joins it through attach (default its first node)."""
    from x0tta6bl4.edge import EdgeError, EdgeNode
    policy: dict[str, Any] = {"min_confidence": min_confidence}
    if allowed_actions:
        policy["allowed_actions"] = allowed_actions
    try:
        en = await asyncio.to_thread(EdgeNode.setup, _edge_dir(data_dir), node, offline=offline,
                                     topology=topology or None, routes=routes, policy=policy,
                                     attach=list(attach or []))
        en.save()
    except EdgeError as e:
        raise ValueError(str(e)) from None
    return {**en.status(), "routing_table": en.meta["routes"], "data_dir": str(_edge_dir(data_dir))}


@mcp.tool(annotations=DESTRUCTIVE)
async def crisis_recovery(nodes: list[str] | None = None, data_dir: str = "", run_cycle: bool = True,
                          wait_s: float = 10.0) -> dict[str, Any]:
    """Crisis recovery after a partition: every edge node (or NODES) under data_dir reconnects - its CRDT state
    (config, routing hints, key records, audit events) merges with the broker's without loss, and its offline
    audit events are published on audit.edge.* in causal order - then a MAPE-K cycle integrates the mesh.
    DESTRUCTIVE: merged configuration takes effect and the MAPE-K cycle may repair (change) the mesh."""
    from x0tta6bl4.edge import EdgeError, EdgeNode
    from x0tta6bl4.edge.sync import EdgeAgent
    d = _edge_dir(data_dir)
    names = list(nodes or [])
    if not names and d.exists():
        names = sorted(p.name for p in d.iterdir() if (p / "keystore").is_dir())
    results = []
    for name in names:
        try:
            en = EdgeNode.open(d, name)
        except EdgeError as e:
            results.append({"node": name, "synced": False, "error": str(e)})
            continue
        rep = await EdgeAgent(en, nats_url(), creds=_creds()).try_sync()
        results.append({"node": name, "synced": rep is not None, **(rep.to_dict() if rep else {}),
                        "status": en.status()})
    out: dict[str, Any] = {"edge": results, "synced": sum(r["synced"] for r in results)}
    if run_cycle:
        try:
            out["cycle"] = await _cycle("", ["operator: crisis recovery"], wait_s, "verify")
        except ValueError as e:
            out["cycle"] = {"skipped": str(e)}
    return out


def main() -> None:
    mcp.run("stdio")


if __name__ == "__main__":
    main()
