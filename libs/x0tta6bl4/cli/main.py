"""meshctl: the operator's entry point.

    meshctl demo                    run the whole orchestrator on an embedded stack and heal one fault
    meshctl up [--detach] / down    start / stop the embedded stack (secured: TLS, nkeys, permissions)
    meshctl secrets init            a deployment's secrets: CA, NATS credentials, signing keys, trust bundle
    meshctl mesh up|status|down     a mesh of node agents (loopback or --netns) on the running stack
    meshctl fault kill|partition|loss|latency|flap|heal   inject faults
    meshctl status                  mesh status: health of every node by the spec's thresholds
    meshctl simulate failure NODE   the digital twin's answer on the live topology
    meshctl trace CYCLE             one cycle as a tree of spans
    meshctl cycle list|show         past MAPE-K cycles
    meshctl audit tail|verify       the signed audit trail
    meshctl dlq list                parked (dead-lettered) messages
    meshctl bus                     streams, subjects, consumers
    meshctl gov ...                 the DAO: proposals, signed quadratic votes, voters
    meshctl keys ...                keyvault: PQC identities, rotation, revocation, attestation
    meshctl monitor info            which collector (eBPF or /proc) runs and which signals it has
    meshctl model train|eval|info   the analyzer's learned detector (GraphSAGE)
    meshctl edge setup|serve|sync|status ...   edge crisis mode: offline nodes, CRDT state, sync on reconnect
"""
from __future__ import annotations

import typer

from x0tta6bl4.cli import gov, observe, ops, stackcmd
from x0tta6bl4.cli.edge import edge_app
from x0tta6bl4.cli.keys import keys_app
from x0tta6bl4.cli.mesh import fault_app, mesh_app
from x0tta6bl4.cli.model import model_app
from x0tta6bl4.cli.monitor import monitor_app
from x0tta6bl4.cli.secretscmd import secrets_app

app = typer.Typer(help="x0tta6bl4 self-healing mesh orchestrator", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.command()(ops.status)
app.add_typer(ops.simulate_app, name="simulate")
app.command()(observe.trace)
app.command()(observe.bus)
app.add_typer(observe.audit_app, name="audit")
app.add_typer(observe.cycle_app, name="cycle")
app.add_typer(observe.dlq_app, name="dlq")
app.add_typer(gov.gov_app, name="gov")
app.add_typer(keys_app, name="keys")
app.add_typer(monitor_app, name="monitor")
app.add_typer(model_app, name="model")
app.add_typer(edge_app, name="edge")
app.add_typer(mesh_app, name="mesh")
app.add_typer(secrets_app, name="secrets")
app.add_typer(fault_app, name="fault")
app.command()(stackcmd.up)
app.command()(stackcmd.down)
app.command()(stackcmd.demo)

if __name__ == "__main__":
    app()
