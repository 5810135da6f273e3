"""meshctl edge: crisis mode - nodes that work with no broker and sync through CRDTs on reconnect.

    meshctl edge setup NODE --offline [--topology grid:9 [--attach n0] | --routes routes.yaml] [--allow-action ...]
                                  (any node name: one not in the topology joins it through --attach)
    meshctl edge status NODE                     identity, routes, policy, CRDT contents, unpublished events
    meshctl edge config NODE KEY VALUE           set a configuration value (recorded in the CRDT)
    meshctl edge route NODE DEST [--via HOP | --avoid]   a routing hint; `edge route NODE DEST` alone resolves
    meshctl edge decide NODE ACTION TARGET --confidence C   a local decision within the offline policy
    meshctl edge rotate NODE                     rotate the node's PQC keys offline
    meshctl edge export NODE --out F / import NODE F      exchange state with a peer by file (sneakernet)
    meshctl edge sync NODE [--nats URL]          reconnect: merge with the broker, publish audit events
    meshctl edge serve NODE [--nats URL] [--health-port 8080]   keep working; sync whenever the broker is up

State lives in --data-dir (default $X0TTA6BL4_DATA_DIR/edge, else var/edge), encrypted under a master
key (NODE/master.key 0600, or $X0TTA6BL4_EDGE_MASTER_KEY).
"""
from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
from typing import Any

import typer

from x0tta6bl4.cli.common import console, fail

edge_app = typer.Typer(help="edge crisis mode: offline nodes, CRDT sync on reconnect", no_args_is_help=True,
                       pretty_exceptions_enable=False, add_completion=False)


def default_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("X0TTA6BL4_DATA_DIR", "var")) / "edge"


DirOpt = typer.Option(None, "--data-dir", help="edge state directory (default $X0TTA6BL4_DATA_DIR/edge)")
JsonOpt = typer.Option(False, "--json", help="print JSON")


def _open(node: str, data_dir: pathlib.Path | None):
    from x0tta6bl4.edge import EdgeError, EdgeNode
    try:
        return EdgeNode.open(data_dir or default_dir(), node)
    except EdgeError as e:
        fail(str(e))


def _print(d: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(d, indent=2, sort_keys=True, default=str))
    else:
        for k, v in d.items():
            console.print(f"[bold]{k:14}[/] {v}")


@edge_app.command("setup")
def setup(node: str, offline: bool = typer.Option(False, "--offline", help="provision for no broker / no keyvault"),
          topology: str | None = typer.Option(None, "--topology", help="known mesh (grid:9, a YAML file ...): "
                                                 "preload shortest-path next hops"),
          routes: pathlib.Path | None = typer.Option(None, "--routes", help="YAML mapping destination -> next hop"),
          attach: list[str] = typer.Option([], "--attach", help="for a node new to the --topology: the mesh node(s) "
                                            "it will be a neighbour of (repeatable; default the topology's "
                                            "first node): routes go through the nearest"),
          allow_action: list[str] = typer.Option([], "--allow-action",
                                                 help="action allowed without the DAO (repeatable; default "
                                                      "reroute, isolate, restart)"),
          min_confidence: float = typer.Option(0.9, "--min-confidence", min=0.0, max=1.0),
          trust_domain: str = typer.Option("x0tta6bl4.mesh", "--trust-domain"),
          if_missing: bool = typer.Option(False, "--if-missing", help="do nothing when NODE is already provisioned"),
          force: bool = typer.Option(False, "--force", help="replace an existing provisioning (new keys!)"),
          data_dir: pathlib.Path | None = DirOpt, as_json: bool = JsonOpt) -> None:
    """Provision NODE: PQC keypair generated here (no keyvault), preloaded routes, offline policy."""
    from x0tta6bl4.edge import EdgeError, EdgeNode, load_routes_file
    d = data_dir or default_dir()
    if if_missing and (d / node / "keystore" / "identity.key").exists():
        _print(EdgeNode.open(d, node).status(), as_json)
        return
    try:
        policy: dict[str, Any] = {"min_confidence": min_confidence}
        if allow_action:
            policy["allowed_actions"] = list(allow_action)
        en = EdgeNode.setup(d, node, offline=offline, topology=topology,
                            routes=load_routes_file(routes) if routes else None, policy=policy,
                            trust_domain=trust_domain, force=force, attach=attach)
        en.save()
    except EdgeError as e:
        fail(str(e))
    _print(en.status(), as_json)


@edge_app.command("status")
def status(node: str, data_dir: pathlib.Path | None = DirOpt, as_json: bool = JsonOpt) -> None:
    """The node's identity, routing, policy and CRDT contents."""
    _print(_open(node, data_dir).status(), as_json)


@edge_app.command("config")
def config(node: str, key: str, value: str, data_dir: pathlib.Path | None = DirOpt) -> None:
    """Set a configuration value (JSON if it parses, else a string)."""
    en = _open(node, data_dir)
    try:
        v = json.loads(value)
    except ValueError:
        v = value
    en.set_config(key, v)
    en.save()
    console.print(f"{node}: {key} = {json.dumps(v)} (lamport {en.state.clock})")


@edge_app.command("route")
def route(node: str, dest: str, via: str | None = typer.Option(None, "--via", help="hint: next hop for DEST"),
          avoid: bool = typer.Option(False, "--avoid", help="hint: route around DEST"),
          data_dir: pathlib.Path | None = DirOpt) -> None:
    """Record a routing hint, or (with no --via/--avoid) print the next hop the node uses for DEST."""
    en = _open(node, data_dir)
    if via or avoid:
        en.hint_route(dest, via or "", avoid=avoid)
        en.save()
    hop = en.next_hop(dest)
    console.print(f"{node} -> {dest}: next hop {hop or '(none: unreachable or avoided)'}")


@edge_app.command("decide")
def decide(node: str, action: str, target: str, confidence: float = typer.Option(..., "--confidence", min=0, max=1),
           reason: str = typer.Option("", "--reason"), data_dir: pathlib.Path | None = DirOpt,
           as_json: bool = JsonOpt) -> None:
    """A local decision within the offline policy (recorded in the audit CRDT)."""
    from x0tta6bl4.edge import EdgeError
    en = _open(node, data_dir)
    try:
        dcs = en.decide(action, target, confidence, reason)
    except EdgeError as e:
        fail(str(e))
    en.save()
    _print(dcs.__dict__, as_json)
    if not dcs.allowed:
        raise typer.Exit(3)


@edge_app.command("rotate")
def rotate(node: str, data_dir: pathlib.Path | None = DirOpt) -> None:
    """Rotate NODE's PQC keys offline (new generation recorded in the CRDT)."""
    en = _open(node, data_dir)
    new = en.rotate_keys()
    en.save()
    console.print(f"{node}: generation {new.generation}, signing key {new.signing.key_id}, KEM key {new.kem.key_id}")


@edge_app.command("export")
def export(node: str, out: pathlib.Path = typer.Option(..., "--out"), data_dir: pathlib.Path | None = DirOpt) -> None:
    """Write the node's CRDT state to a file for a peer (contains public data and audit events only)."""
    en = _open(node, data_dir)
    out.write_bytes(en.export_update())
    console.print(f"{node}: state written to {out} ({out.stat().st_size} bytes)")


@edge_app.command("import")
def import_(node: str, file: pathlib.Path, data_dir: pathlib.Path | None = DirOpt) -> None:
    """Merge a peer's exported state into NODE."""
    en = _open(node, data_dir)
    try:
        en.import_update(file.read_bytes(), source=file.name)
    except OSError as e:
        fail(f"cannot read {file}: {e.strerror}")
    except Exception as e:  # noqa: BLE001 - a malformed update
        fail(f"{file} is not an edge state export: {e}")
    en.save()
    console.print(f"{node}: merged {file} ({len(en.state.audit_events())} audit events known)")


def _nats(url: str | None) -> str:
    from x0tta6bl4.cli.common import nats_url
    return nats_url(url)


def _creds(url: str):
    """The ``edge`` identity's credentials for the broker (edge sync writes the edge bucket's document and
    audit.edge.*, nothing else); X0TTA6BL4_NATS_* settings first."""
    from x0tta6bl4.bus.permissions import EDGE
    from x0tta6bl4.cli.common import credentials
    return credentials(url, identity=EDGE)


@edge_app.command("sync")
def sync(node: str, nats: str | None = typer.Option(None, "--nats", help="NATS URL (default: the stack's)"),
         data_dir: pathlib.Path | None = DirOpt, as_json: bool = JsonOpt) -> None:
    """Reconnect NODE: CRDT merge with the broker, offline audit events onto the audit trail in causal order."""
    from x0tta6bl4.edge.sync import EdgeAgent
    en = _open(node, data_dir)
    url = _nats(nats)
    r = asyncio.run(EdgeAgent(en, url, creds=_creds(url)).try_sync())
    if r is None:
        fail(f"{node}: broker not reachable at {_nats(nats)}; still offline (state kept)")
    _print(r.to_dict(), as_json)


@edge_app.command("serve")
def serve(node: str, nats: str | None = typer.Option(None, "--nats", help="NATS URL (default: the stack's)"),
          interval: float = typer.Option(2.0, "--interval", min=0.1, help="seconds between sync attempts"),
          health_port: int = typer.Option(0, "--health-port", help="serve /health and /ready here (8080 in k8s)"),
          data_dir: pathlib.Path | None = DirOpt) -> None:
    """Run NODE: keep working offline, sync whenever the broker is reachable (until SIGTERM)."""
    from x0tta6bl4.edge.sync import EdgeAgent
    en = _open(node, data_dir)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(s, stop.set)
        print(json.dumps({"ready": True, "node": node, "offline": en.offline}), flush=True)
        url = _nats(nats)
        await EdgeAgent(en, url, interval, creds=_creds(url)).run(stop, health_port)
    asyncio.run(main())


if __name__ == "__main__":
    edge_app()
