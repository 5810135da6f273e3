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

Start-up is lazy: ``meshctl --help`` imports none of the command modules (their one-line help is in
:data:`COMMANDS`; a test checks it against the modules), and ``meshctl CMD ...`` imports only CMD's module, so a
command does not pay for another's imports (nats, grpc, cryptography, torch, networkx, protobuf). Any other use
of ``app`` (``CliRunner().invoke(app, ...)``, listing its commands) registers every command first.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

# name -> (module, attribute, "command" or "group", one-line help shown by `meshctl --help`), in help order
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "status": ("x0tta6bl4.cli.ops", "status", "command",
               "Mesh status: every node's health by the spec's thresholds, peers, routes and key metrics."),
    "trace": ("x0tta6bl4.cli.observe", "trace", "command",
              "Print one MAPE-K cycle as a tree of spans with stage latencies."),
    "bus": ("x0tta6bl4.cli.observe", "bus", "command", "The streams, subjects and durable consumers."),
    "up": ("x0tta6bl4.cli.stackcmd", "up", "command",
           "Start nats-server and the six services; show a live status view until Ctrl-C."),
    "down": ("x0tta6bl4.cli.stackcmd", "down", "command", "Stop a stack started with meshctl up --detach."),
    "demo": ("x0tta6bl4.cli.stackcmd", "demo", "command",
             "Run the orchestrator on an embedded stack, inject a fault and watch one MAPE-K cycle heal it."),
    "simulate": ("x0tta6bl4.cli.ops", "simulate_app", "group",
                 "What-if questions to the digital twin, on the live topology."),
    "audit": ("x0tta6bl4.cli.observe", "audit_app", "group", "The signed, hash-chained audit trail."),
    "cycle": ("x0tta6bl4.cli.observe", "cycle_app", "group", "Past MAPE-K cycles."),
    "dlq": ("x0tta6bl4.cli.observe", "dlq_app", "group", "Dead letters: messages that were parked."),
    "gov": ("x0tta6bl4.cli.gov", "gov_app", "group",
            "governance: proposals and signed quadratic votes (gRPC client)"),
    "keys": ("x0tta6bl4.cli.keys", "keys_app", "group",
             "keyvault: node identities, PQC keys, rotation, revocation"),
    "monitor": ("x0tta6bl4.cli.monitor", "monitor_app", "group",
                "The monitor service: kernel collector (eBPF or /proc) and its signals."),
    "model": ("x0tta6bl4.cli.model", "model_app", "group", "the analyzer's learned detector: train, eval, info"),
    "edge": ("x0tta6bl4.cli.edge", "edge_app", "group", "edge crisis mode: offline nodes, CRDT sync on reconnect"),
    "mesh": ("x0tta6bl4.cli.mesh", "mesh_app", "group",
             "A real mesh of node agents on the running stack: up, status, down."),
    "secrets": ("x0tta6bl4.cli.secretscmd", "secrets_app", "group",
                "a deployment's secrets: CA, NATS credentials, signing keys, trust bundle"),
    "fault": ("x0tta6bl4.cli.mesh", "fault_app", "group",
              "Inject faults into the running mesh (MeshCommand on mesh.cmd.<node>)."),
}


class LazyTyper(typer.Typer):
    """A Typer whose commands are registered on first use: all of them when anything reads its commands, only
    the one named on the command line when it is run (:meth:`__call__`)."""

    _loaded: bool
    _commands: list
    _groups: list

    def __init__(self, **kw: Any) -> None:
        object.__setattr__(self, "_loaded", False)
        super().__init__(**kw)

    # Typer reads (and appends to) these two lists; reading them registers every command
    @property
    def registered_commands(self) -> list:
        if not self._loaded:
            self.load(list(COMMANDS))
        return self._commands

    @registered_commands.setter
    def registered_commands(self, value: list) -> None:
        self._commands = value

    @property
    def registered_groups(self) -> list:
        if not self._loaded:
            self.load(list(COMMANDS))
        return self._groups

    @registered_groups.setter
    def registered_groups(self, value: list) -> None:
        self._groups = value

    def load(self, names: list[str]) -> None:
        """Register the commands ``names`` (imported) and the others as placeholders that only show their one-line
        help (not imported); the first load decides."""
        if self._loaded:
            return
        self._loaded = True
        for name, (module, attr, kind, text) in COMMANDS.items():
            if name not in names:
                self.command(name=name, help=text, add_help_option=False)(_placeholder)
            elif kind == "group":
                self.add_typer(getattr(importlib.import_module(module), attr), name=name)
            else:
                self.command(name=name)(getattr(importlib.import_module(module), attr))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run as meshctl: import only the command named on the command line (``meshctl --help``: none)."""
        if not self._loaded:
            argv = kwargs.get("args") or sys.argv[1:]
            name = next((a for a in argv if not a.startswith("-")), None)
            self.load([name] if name in COMMANDS else [])
        return super().__call__(*args, **kwargs)


def _placeholder() -> None:
    """Stands for a command that was not imported (never runs: naming a command imports the real one)."""
    raise typer.Exit(2)


app = LazyTyper(help="x0tta6bl4 self-healing mesh orchestrator", no_args_is_help=True,
                pretty_exceptions_enable=False, add_completion=False)

if __name__ == "__main__":
    app()
