"""meshctl demo: the whole orchestrator on an embedded stack heals one real node failure.

1. start nats-server (JetStream; TLS, one nkey identity per process, least-privilege permissions) and the
   six services as separate processes;
2. start a demo mesh of UDP node agents (grid) with a DATA flow corner to corner;
3. kill the busiest forwarding node on the active path;
4. follow the MAPE-K cycle on the bus until the repair is verified, then print
   the timeline, the cycle's trace and the audit check; stop everything.
"""
from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

from rich.panel import Panel

from x0tta6bl4.audit.chain import trusted_keys, verify_chains
from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.bus.reader import mesh_telemetry, read_all
from x0tta6bl4.cli.common import console, err_console
from x0tta6bl4.cli.observe import timeline_table, trace_id_of, trace_tree
from x0tta6bl4.runtime.stack import Stack, repo_root
from x0tta6bl4.telemetry.tracing import load_spans, spans_for
from x0tta6bl4.v1 import events_pb2, mesh_pb2


def start_mesh(stack: Stack, nodes: int, keys: bool = True) -> tuple[subprocess.Popen, list[str]]:
    """The demo mesh; ``keys``: signed HELLOs and PQC links with identities from the stack's keyvault (the
    default, as in production; off only for a comparison)."""
    import math

    from x0tta6bl4.mesh.topology import parse_spec
    side = max(2, math.isqrt(nodes))
    n = side * side
    env = stack.mesh_host_env("demo", parse_spec(f"grid:{n}").nodes)   # its own identity: these nodes only
    with open(stack.data_dir / "logs" / "mesh-host.log", "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "x0tta6bl4.mesh.host", "--nats", stack.url,
                                 "--topology", f"grid:{n}", "--traffic", f"n0:n{n - 1}", "--data-dir",
                                 str(stack.data_dir)]
                                + (["--keyvault", stack.grpc_addr("keyvault")] if keys else []),
                                cwd=repo_root(), env=env, stdout=subprocess.PIPE,
                                stderr=log, start_new_session=True, text=True)
    assert proc.stdout is not None, "started with stdout=PIPE"
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"mesh host did not start; see {stack.data_dir / 'logs' / 'mesh-host.log'}")
    return proc, json.loads(line)["nodes"]


async def telemetry(js) -> dict[str, events_pb2.NodeTelemetry]:
    return await mesh_telemetry(js)

async def scenario(stack: Stack, nodes: list[str], timeout_s: float) -> int:
    nc = await stack.connect(name="meshctl-demo")   # as the operator
    js = nc.jetstream()
    console.print(f"[bold]1.[/] mesh of {len(nodes)} node agents is up; waiting for it to converge and report ...")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        tel = await telemetry(js)
        healthy = [t for t in tel.values() if t.reachable and t.peer_count > 0 and t.counters.get("acked", 0) > 10]
        if len(tel) == len(nodes) and tel.get(nodes[0]) in healthy:
            break
        await asyncio.sleep(0.25)
    else:
        console.print("[red]the mesh did not converge within 30 s[/]")
        return 1
    before = {n: t.counters.get("forwarded", 0) for n, t in tel.items()}
    await asyncio.sleep(1.0)
    after = await telemetry(js)
    busiest = max((n for n in nodes[1:-1]), key=lambda n: after[n].counters.get("forwarded", 0) - before.get(n, 0))
    console.print(f"[bold]2.[/] DATA flows {nodes[0]} → {nodes[-1]}; [bold red]killing {busiest}[/], "
                  "the busiest forwarder on the active path")
    cmd = mesh_pb2.MeshCommand(meta=new_meta("meshctl"), node_id=busiest, kind=mesh_pb2.MeshCommand.KIND_FAULT,
                               params={"type": "kill"})
    kill_ns = time.time_ns()
    await nc.request(subjects.mesh_cmd(busiest), cmd.SerializeToString(), timeout=5)

    console.print("[bold]3.[/] watching the MAPE-K cycle on the bus ...")
    verification = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and verification is None:
        await asyncio.sleep(0.25)
        for m in await read_all(js, subjects.MAPEK_VERIFIED):
            v = events_pb2.Verification.FromString(m.data)
            if v.action.target_node == busiest:
                verification = (m, v)
    if verification is None:
        console.print(f"[red]no verified repair within {timeout_s} s[/]")
        return 1
    m, v = verification
    cycle_id = v.meta.cycle_id
    events = []
    for msg in await read_all(js, subjects.MAPEK_ALL):
        if msg.subject in (subjects.MAPEK_HEALTH, subjects.MAPEK_ESCALATION):   # the cycle's stages only
            continue
        cls: dict[str, Any] = {
            subjects.MAPEK_TELEMETRY: events_pb2.TelemetryWindow, subjects.MAPEK_ANOMALY: events_pb2.Anomaly,
            subjects.MAPEK_PLAN: events_pb2.Plan, subjects.MAPEK_ACTION: events_pb2.ActionRequest,
            subjects.MAPEK_RESULT: events_pb2.ActionResult, subjects.MAPEK_VERIFIED: events_pb2.Verification}
        ev = cls[msg.subject].FromString(msg.data)
        if ev.meta.cycle_id == cycle_id:
            events.append((msg, ev))
    trace_id = trace_id_of(events[0][0])
    console.print(Panel.fit(f"cycle [bold]{cycle_id}[/]\ntrace [bold]{trace_id}[/]", title="one MAPE-K cycle"))
    console.print(timeline_table(events))
    kill_to_verified = (v.meta.ts_unix_ns - kill_ns) / 1e6
    console.print(f"[bold]4.[/] {'[green]recovered[/]' if v.recovered else '[red]NOT recovered[/]'}: "
                  f"kill → verified repair [bold]{kill_to_verified:.0f} ms[/] "
                  f"(first symptom → verified: {v.mttr_ms:.0f} ms)")
    await asyncio.sleep(0.6)  # spans are flushed every 0.2 s
    spans = spans_for(load_spans(stack.data_dir), cycle_id)
    if spans:
        console.print(trace_tree(spans, f"trace {trace_id} ({len(spans)} spans across "
                                        f"{len({s['service'] for s in spans})} processes)"))
    audit = [events_pb2.AuditEvent.FromString(a.data) for a in await read_all(js, subjects.AUDIT_ALL)]
    assert stack.secrets is not None
    report = verify_chains(audit, trusted_keys(stack.secrets.trust()))   # keys from the trust bundle only
    console.print(f"audit trail: {report.events} signed events in {report.chains} hash chains — "
                  + ("[green]intact[/]" if report.ok else f"[red]{len(report.problems)} problems[/]"))
    await nc.close()
    return 0 if v.recovered and report.ok else 1


def run_demo(data_dir: pathlib.Path | None, nodes: int, timeout_s: float, keys: bool = True) -> int:
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="x0tta6bl4-demo-")
        data_dir = pathlib.Path(tmp.name)
    stack = Stack(pathlib.Path(data_dir), secure=True)
    mesh = None
    try:
        console.print("[bold]0.[/] starting nats-server (JetStream) and six services "
                      "(keyvault, governance, monitor, analyzer, planner, executor) ...")
        t0 = time.monotonic()
        stack.start()
        console.print(f"   stack ready in {time.monotonic() - t0:.1f} s on {stack.url}"
                      + (" (TLS, nkeys, least-privilege permissions)" if stack.bus_secured else ""))
        mesh, node_ids = start_mesh(stack, nodes, keys)
        console.print("   mesh: " + ("signed HELLOs and PQC links (identities from keyvault)" if keys
                                     else "[yellow]keys OFF (unsigned HELLOs, plain links): a comparison only[/]"))
        return asyncio.run(scenario(stack, node_ids, timeout_s))
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line
        err_console.print(f"[red]demo failed:[/] {type(e).__name__}: {e}")
        return 1
    finally:
        if mesh is not None and mesh.poll() is None:
            mesh.terminate()
            try:
                mesh.wait(10)
            except subprocess.TimeoutExpired:
                mesh.kill()
        stack.stop()
        if tmp is not None:
            tmp.cleanup()
