"""meshctl mesh up|down|status and meshctl fault ...: a real mesh on the running stack, and faults in it.

    meshctl mesh up --nodes 50 --topology grid [--seed N] [--traffic n0:n49] [--netns] [--detach]
    meshctl mesh status [--node n7] [--wide]
    meshctl mesh drain n4 [--stop] | meshctl mesh undrain n4
    meshctl mesh down
    meshctl fault kill n7 | partition n3 n4 | loss n5 30 | latency n5 80 | flap n5 [--peer n6] | heal [n7]

``mesh up`` spawns one mesh host process connected to the stack's NATS (URL from
``--nats``, ``$X0TTA6BL4_NATS_URL`` or ``<data-dir>/stack.json``) and records it
in ``<data-dir>/mesh.json``:

* loopback mode: ``python -m x0tta6bl4.mesh.host`` - every node a UDP agent on
  127.0.0.1, agent-level faults;
* ``--netns``: ``python -m x0tta6bl4.mesh.netns_host`` (root) - every node a
  process in its own network namespace with veth links; the host process stays in
  the root namespace, bridges the agents' stdin/stdout JSON to NATS and applies
  faults with kernel tools (SIGKILL/SIGSTOP, ``ip link set down``, nftables).

Every ``fault`` is a MeshCommand request on ``mesh.cmd.<node>``; whichever host
runs the node answers, so the CLI is the same in both modes.

Planned maintenance is not a failure: ``mesh down`` and ``mesh drain NODE`` first announce it on the bus
(MeshEvent ``maintenance.start`` on ``mesh.event.<node>``, stored in stream MESH; the monitor records it in
its ``health`` bucket, so replicas and restarts know) and wait for the monitor to have recorded it; only then
is the host stopped, or the node drained (every other node avoids it; ``--stop`` also stops its agent). The
loop starts no repair for a node in maintenance. ``mesh undrain NODE`` revives it, lets every node route
through it again and ends the maintenance (``maintenance.end``). ``mesh up`` gives the mesh a new
generation (recorded in ``mesh.json``, carried by every report): the actions planned for an old mesh are
refused by the new one's hosts, and its maintenance does not cover the new one.

On a secured stack (``meshctl up``, any embedded stack: ``<data-dir>/stack.json`` or ``nats.json``) every
host process gets its own bus identity for exactly its nodes (``mesh-host-mesh``, or ``mesh-host-mesh-<i>``
per process with ``--hosts``): ``mesh up`` registers it in the stack's secrets, reloads nats-server (SIGHUP
to the recorded pid, after rewriting its configuration) and waits until the identity is accepted;
``mesh down`` withdraws it the same way. meshctl itself speaks as the operator.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections import defaultdict
from typing import cast

import typer
from rich.table import Table

from x0tta6bl4.bus import reader, subjects
from x0tta6bl4.bus.permissions import MESH_HOST_PREFIX
from x0tta6bl4.cli.common import DEFAULT_DATA_DIR, connect, console, fail, nats_url, progress, run
from x0tta6bl4.runtime import locate
from x0tta6bl4.runtime.process import pid_alive
from x0tta6bl4.v1 import common_pb2, events_pb2, mesh_pb2

NatsOpt = typer.Option(None, "--nats", help="NATS URL (default: the running stack's)")
DataOpt = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="stack data directory (mesh.json and the mesh log go here)")

mesh_app = typer.Typer(help="A real mesh of node agents on the running stack: up, status, down.", no_args_is_help=True)
fault_app = typer.Typer(help="Inject faults into the running mesh (MeshCommand on mesh.cmd.<node>).",
                        no_args_is_help=True)

C = mesh_pb2.MeshCommand
COLOR: dict[int, str] = {common_pb2.HEALTH_HEALTHY: "green", common_pb2.HEALTH_WARNING: "yellow",
                         common_pb2.HEALTH_CRITICAL: "red"}
TOPOLOGIES = ("grid", "line", "ring", "rgg", "random_geometric", "ba", "scale_free")


# ---- state ------------------------------------------------------------------------
def mesh_file(data_dir: pathlib.Path) -> pathlib.Path:
    return data_dir.resolve() / "mesh.json"


def running_mesh(data_dir: pathlib.Path) -> dict | None:
    """The mesh recorded in mesh.json if its host process is alive (a stale file is removed)."""
    f = mesh_file(data_dir)
    if not f.exists():
        return None
    try:
        state = json.loads(f.read_text())
    except ValueError:
        f.unlink(missing_ok=True)
        return None
    if not pid_alive(int(state.get("pid", 0) or 0)):
        f.unlink(missing_ok=True)
        return None
    return state


def topology_spec(topology: str, nodes: int) -> str:
    """'grid' + 50 -> 'grid:50'; 'grid:16' and file paths pass through."""
    if ":" in topology or pathlib.Path(topology).exists():
        return topology
    if topology not in TOPOLOGIES:
        fail(f"unknown topology {topology!r}; one of {', '.join(TOPOLOGIES)} or a YAML/TOML file")
    return f"{topology}:{nodes}"


async def _check_stack(url: str) -> None:
    nc = await connect(url)
    try:
        await nc.jetstream().stream_info(subjects.STREAM_MESH)
    except Exception:  # noqa: BLE001 - no stream, no JetStream, timeout: one clear line
        fail(f"NATS at {url} has no MESH stream: is the x0tta6bl4 stack running there? (meshctl up --detach)")
    finally:
        await nc.close()


def _wait_ready(proc: subprocess.Popen, log_file: pathlib.Path, offset: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(log_file, "rb") as fh:
            fh.seek(offset)
            for line in fh.read().decode(errors="replace").splitlines():
                if line.startswith("{"):
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if rec.get("ready"):
                        return rec
        if proc.poll() is not None:
            tail = log_file.read_bytes()[offset:].decode(errors="replace").strip().splitlines()[-5:]
            fail(f"mesh host exited with {proc.returncode}: {' | '.join(tail) or 'no output'} (log: {log_file})")
        time.sleep(0.1)
    _terminate(proc.pid)
    fail(f"mesh host not ready within {timeout_s:.0f} s (log: {log_file})")
    raise AssertionError("unreachable")


def _terminate(pid: int, timeout_s: float = 30.0) -> bool:
    """SIGTERM (the host tears down its agents and namespaces), SIGKILL after timeout_s. True if it stopped."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            if not pid_alive(pid):
                return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return False


# ---- bus identities of the host processes ----------------------------------------------------------
MESH_HOST = "mesh"     # the host name of meshctl's mesh (cluster: mesh-0, mesh-1, ...); identity mesh-host-<name>


def _same_server(a: str, b: str) -> bool:
    from urllib.parse import urlsplit
    try:
        ua, ub = urlsplit(a.split(",")[0].strip()), urlsplit(b.split(",")[0].strip())
        return (ua.hostname, ua.port) == (ub.hostname, ub.port)
    except ValueError:
        return False


def _secured_server(url: str, data_dir: pathlib.Path, strict: bool = True):
    """The secrets and the running nats-server of the secured stack at ``url`` recorded in ``data_dir``
    (None: an open bus, or a broker this data directory does not run; not ``strict``: or not running)."""
    from x0tta6bl4.runtime.secrets import Secrets
    from x0tta6bl4.runtime.stack import NatsServer
    info = locate.stack_info(data_dir)
    if not info.get("secure") or not _same_server(url, str(info.get("nats_url", ""))):
        return None
    secrets = Secrets(pathlib.Path(info["secrets_dir"]))
    try:
        server = NatsServer.running(info.get("nats") or {}, secrets)
    except ValueError as e:
        if not strict:
            return None
        fail(f"{locate.stack_file(data_dir)}: {e}")
    if not pid_alive(server.pid):
        if not strict:
            return None
        fail(f"the stack's nats-server (pid {server.pid}) is not running; is the stack up? (meshctl up --detach)")
    return secrets, server


def grant_hosts(url: str, data_dir: pathlib.Path, hosts: dict[str, list[str]], timeout_s: float = 20.0
                ) -> str | None:
    """Give each mesh host a bus identity for its nodes on the stack's nats-server (registered, server
    reloaded, identity accepted). The secrets directory holding them; None on an open bus."""
    found = _secured_server(url, data_dir)
    if found is None:
        return None
    secrets, server = found
    try:
        for host, nodes in hosts.items():
            secrets.add_mesh_host(host, nodes)
        server.reload()
        for host in hosts:
            server.wait_accepts(MESH_HOST_PREFIX + subjects.token(host), timeout_s)
    except (OSError, TimeoutError, ValueError) as e:
        revoke_hosts(url, data_dir, list(hosts))
        fail(f"cannot give the mesh hosts a bus identity: {e}")
    return str(secrets.root)


def revoke_hosts(url: str, data_dir: pathlib.Path, hosts: list[str]) -> None:
    """Withdraw the mesh hosts' identities (and reload nats-server if it runs); nothing on an open bus."""
    from x0tta6bl4.runtime.secrets import Secrets
    info = locate.stack_info(data_dir)
    if not hosts or not info.get("secure") or not _same_server(url, str(info.get("nats_url", ""))):
        return
    secrets = Secrets(pathlib.Path(info["secrets_dir"]))
    changed = [h for h in hosts if secrets.remove_mesh_host(h)]
    found = _secured_server(url, data_dir, strict=False) if changed else None
    if found is not None:
        with contextlib.suppress(OSError):
            found[1].reload()


def host_env(secrets_dir: str | None, host: str) -> dict[str, str]:
    """A host process's environment: the caller's, but its own bus identity (none on an open bus)."""
    from x0tta6bl4.mesh.cluster import NATS_IDENTITY_ENV, host_identity_env
    env = {k: v for k, v in os.environ.items() if k not in NATS_IDENTITY_ENV or secrets_dir is None}
    env["PYTHONUNBUFFERED"] = "1"
    if secrets_dir is not None:
        env.update(host_identity_env(secrets_dir, host))
    return env


# ---- mesh up / down / status ---------------------------------------------------------
@mesh_app.command("up")
def up(nodes: int = typer.Option(9, "--nodes", "-n", min=2, max=1000, help="number of nodes"),
       topology: str = typer.Option("grid", "--topology", "-t",
                                    help="grid, line, ring, rgg, ba (with --nodes), 'grid:16' or a YAML/TOML file"),
       seed: int = typer.Option(0, "--seed", help="seed of the generator and the agents"),
       traffic: list[str] = typer.Option([], "--traffic", help="SRC:DST DATA flow with ACKs (repeatable)"),
       rate: float = typer.Option(20.0, "--rate", min=0.1, max=1000, help="packets/s per flow"),
       netns: bool = typer.Option(False, "--netns", help="each node in its own network namespace (root)"),
       hosts: int = typer.Option(1, "--hosts", min=1, max=64,
                                 help="spread the nodes over this many host processes (loopback mode; "
                                      "use 2+ for large meshes with --keys)"),
       keys: bool = typer.Option(False, "--keys", help="signed HELLOs and encrypted links with identities from "
                                                       "the stack's keyvault (gRPC address as for meshctl keys)"),
       detach: bool = typer.Option(False, "--detach", "-d", help="run in the background (stop with meshctl mesh down)"),
       timeout_s: float = typer.Option(120.0, "--timeout", help="give up if the host is not ready by then"),
       nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Start a mesh of real node agents connected to the running stack."""
    from x0tta6bl4.mesh.topology import parse_spec
    data_dir = data_dir.resolve()
    existing = running_mesh(data_dir)
    if existing:
        fail(f"a mesh is already running (pid {existing['pid']}, {existing['mode']}, "
             f"{len(existing['nodes'])} nodes); stop it with meshctl mesh down")
    spec = topology_spec(topology, nodes)
    try:
        topo = parse_spec(spec, seed=seed)
    except (ValueError, OSError) as e:
        fail(f"bad topology {spec!r}: {e}")
    flows = []
    for t in traffic:
        src, sep, dst = t.partition(":")
        if not sep or src not in topo.nodes or dst not in topo.nodes or src == dst:
            fail(f"bad --traffic {t!r}: expected SRC:DST with two different nodes of {topo.name} "
                 f"({topo.nodes[0]} .. {topo.nodes[-1]})")
        flows.append(t)
    if netns and (hosts > 1 or keys):
        fail("--hosts and --keys apply to loopback mode; --netns runs one host process without keys")
    if netns:
        from x0tta6bl4.mesh.netns import netns_available
        ok, why = netns_available()
        if not ok:
            fail(f"--netns needs root and network namespaces: {why}")
        if len({f.partition(':')[0] for f in flows}) != len(flows):
            fail("--netns runs at most one --traffic flow per source node")
    url = nats_url(nats, data_dir)
    progress(f"checking the stack at {url}")
    run(_check_stack(url))

    module = ("x0tta6bl4.mesh.netns_host" if netns else
              "x0tta6bl4.mesh.cluster" if hosts > 1 else "x0tta6bl4.mesh.host")
    cmd = [sys.executable, "-m", module, "--nats", url, "--topology", spec, "--seed", str(seed),
           "--rate", str(rate), "--data-dir", str(data_dir)]
    generation = "" if netns else f"{MESH_HOST}@{int(time.time() * 1000)}"   # this mesh's (see the module doc)
    if generation:
        cmd += ["--generation", generation]
    if hosts > 1:
        from x0tta6bl4.mesh.cluster import partition
        identities = {f"{MESH_HOST}-{i}": shard for i, shard in enumerate(partition(topo, hosts))}
        cmd += ["--hosts", str(hosts), "--name", MESH_HOST]
    else:
        identities = {MESH_HOST: list(topo.nodes)}
    progress(f"granting {len(identities)} mesh host identit{'y' if len(identities) == 1 else 'ies'} on the bus")
    secrets_dir = grant_hosts(url, data_dir, identities)
    if secrets_dir is not None and hosts > 1:
        cmd += ["--secrets", secrets_dir]
    if keys:
        from x0tta6bl4.runtime import locate
        cmd += ["--keyvault", locate.grpc_addr("keyvault", directory=data_dir)]
        if hosts == 1:      # the nodes' private keys stay with their host (a cluster gives each host its own)
            cmd += ["--key-dir", str(data_dir / "mesh-keys" / MESH_HOST)]
    for f in flows:
        cmd += ["--traffic", f]
    log_file = data_dir / "logs" / "mesh-host.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    offset = log_file.stat().st_size if log_file.exists() else 0
    try:
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=host_env(secrets_dir if hosts == 1 else None,
                                                                         MESH_HOST))
        progress(f"starting {len(topo.nodes)} node agents (host pid {proc.pid}, log {log_file}), waiting until "
                 "they are up" + (" and certified by keyvault" if keys else ""))
        ready = _wait_ready(proc, log_file, offset, timeout_s)
    except BaseException:
        revoke_hosts(url, data_dir, list(identities))
        raise
    state = {"pid": proc.pid, "mode": "netns" if netns else "loopback", "nats_url": url, "topology": spec,
             "seed": seed, "nodes": ready["nodes"], "links": ready["links"], "traffic": flows,
             "namespaces": ready.get("namespaces", {}), "log": str(log_file), "started_unix": time.time(),
             "identities": list(identities) if secrets_dir is not None else [],
             "generation": ready.get("generation", generation)}
    mf = mesh_file(data_dir)
    mf.write_text(json.dumps(state, indent=1))
    console.print(f"mesh up: [bold]{len(topo.nodes)}[/] nodes, {len(topo.links)} links ({topo.name}), "
                  f"{state['mode']} mode, "
                  + (f"{hosts} host processes (supervisor pid {proc.pid})" if hosts > 1 else f"host pid {proc.pid}")
                  + (", signed HELLOs + PQC links (keyvault)" if keys else "") + f", NATS {url}"
                  + (f", traffic {', '.join(flows)}" if flows else ""))
    if detach:
        console.print("running in the background: meshctl mesh status / meshctl fault ... / meshctl mesh down")
        return
    console.print("Ctrl-C stops the mesh")
    stop = {"now": False}

    def _stop(*_):
        stop["now"] = True
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop["now"] and proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:   # a planned stop: announced as maintenance (see mesh down)
            with contextlib.suppress(typer.Exit):
                announce(url, list(state["nodes"]), MAINTENANCE_START, "mesh down", state["generation"], data_dir,
                         5.0)
        _terminate(proc.pid)
        mf.unlink(missing_ok=True)
        revoke_hosts(url, data_dir, state["identities"])
        console.print("mesh stopped")


@mesh_app.command("down")
def down(data_dir: pathlib.Path = DataOpt,
         confirm_s: float = typer.Option(5.0, "--confirm-timeout", min=0, max=120,
                                         help="how long to wait for the monitor to record the maintenance")) -> None:
    """Stop the mesh started with meshctl mesh up (agents, and namespaces in --netns mode). Announced as
    planned maintenance first: the loop starts no repair for its nodes."""
    state = running_mesh(data_dir)
    if state is None:
        console.print("no mesh is running")
        return
    url = str(state.get("nats_url", ""))
    if url:
        try:
            announce(url, list(state["nodes"]), MAINTENANCE_START, "mesh down", str(state.get("generation", "")),
                     data_dir.resolve(), confirm_s)
        except typer.Exit:   # the bus is away (said above): stopping the mesh must not depend on it
            console.print("[yellow]warning:[/] maintenance not announced: the loop may try to repair the nodes")
    stopped = _terminate(int(state["pid"]))
    mesh_file(data_dir).unlink(missing_ok=True)
    revoke_hosts(str(state.get("nats_url", "")), data_dir.resolve(), list(state.get("identities", [])))
    leftover = ""
    if state.get("mode") == "netns":
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        left = [ns for ns in state.get("namespaces", {}).values() if ns in listed]
        for ns in left:  # the host was SIGKILLed: clean up after it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        leftover = f" ({len(left)} leftover namespaces deleted)" if left else ""
    console.print(f"mesh {'stopped' if stopped else 'killed after 30 s'}: {len(state['nodes'])} nodes"
                  f"{leftover}")


async def _telemetry_from_kv(nc) -> dict[str, events_pb2.NodeTelemetry]:
    return await reader.mesh_telemetry(nc.jetstream())

async def _telemetry_live(nc, listen_s: float) -> dict[str, events_pb2.NodeTelemetry]:
    out: dict[str, events_pb2.NodeTelemetry] = {}

    async def cb(msg):
        try:
            t = events_pb2.NodeTelemetry.FromString(msg.data)
        except Exception:  # noqa: BLE001 - a malformed message is skipped
            return
        out[t.node_id] = t
    sub = await nc.subscribe(subjects.MESH_TELEMETRY_ALL, cb=cb)
    await asyncio.sleep(listen_s)
    await sub.unsubscribe()
    return out


async def mesh_telemetry(url: str, listen_s: float) -> tuple[str, dict[str, events_pb2.NodeTelemetry]]:
    """Telemetry from the monitor's ``telemetry`` bucket; without a monitor, listen to the agents live."""
    nc = await connect(url)
    try:
        nodes = await _telemetry_from_kv(nc)
        if nodes:
            return "telemetry bucket", nodes
        return f"live mesh.telemetry.* ({listen_s:g} s)", await _telemetry_live(nc, listen_s)
    finally:
        await nc.close()


def _routes_cell(t: events_pb2.NodeTelemetry, wide: bool) -> str:
    by_hop: dict[str, list[str]] = defaultdict(list)
    for dest, hop in t.routes.items():
        by_hop[hop].append(dest)
    def key(n: str) -> tuple[int, str]:
        return len(n), n

    parts = [f"{','.join(sorted(ds, key=key))}→{hop}" for hop, ds in sorted(by_hop.items(), key=lambda kv: key(kv[0]))]
    cell = "; ".join(parts) or "-"
    return cell if wide or len(cell) <= 48 else cell[:47] + "…"


@mesh_app.command("status")
def status(node: str | None = typer.Option(None, "--node", help="one node in detail: links and full route table"),
           wide: bool = typer.Option(False, "--wide", "-w", help="do not shorten the route column"),
           listen_s: float = typer.Option(1.5, "--listen", help="without a monitor: listen this long for telemetry"),
           nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Nodes, neighbours, routes (dest→next hop), avoided nodes and health of the running mesh."""
    from x0tta6bl4.mapek.health import classify_node
    state = running_mesh(data_dir)
    source, nodes = run(mesh_telemetry(nats_url(nats, data_dir), listen_s))
    if state:
        expected = set(state["nodes"])
        nodes = {n: t for n, t in nodes.items() if n in expected}
    if not nodes:
        fail("no mesh telemetry: no mesh is running on this stack (meshctl mesh up --detach)"
             if state is None else f"the mesh (pid {state['pid']}) has not reported yet; try again in a second")
    if node:
        if node not in nodes:
            fail(f"unknown node {node!r}; known: {', '.join(sorted(nodes, key=lambda n: (len(n), n)))}")
        _node_detail(nodes[node])
        return
    title = f"mesh status — {len(nodes)} nodes from {source}"
    if state:
        title += f" — {state['mode']} mesh {state['topology']} (pid {state['pid']})"
    table = Table("node", "health", "neighbours", "routes (dests→next hop)", "avoided", "p99 ms", "loss %",
                  "age s", title=title)
    worst: int = common_pb2.HEALTH_HEALTHY
    counts: defaultdict[str, int] = defaultdict(int)
    now = time.time_ns()
    for n in sorted(nodes, key=lambda n: (len(n), n)):
        t = nodes[n]
        h, reasons = classify_node(t)
        worst = max(worst, h)
        name = common_pb2.Health.Name(h).removeprefix("HEALTH_").lower()
        counts[name] += 1
        why = ",".join(dict.fromkeys(r.split("=")[0].split(" ")[0] for r in reasons))
        health = f"[{COLOR[h]}]{name}[/]" + (f" [dim]({why})[/]" if why else "")
        table.add_row(n, health, ",".join(sorted(t.neighbours, key=lambda x: (len(x), x))) or "-",
                      f"{len(t.routes)}: {_routes_cell(t, wide)}" if t.routes else "0",
                      ",".join(t.avoided) or "-", f"{t.p99_latency_ms:.1f}", f"{t.loss_pct:.1f}",
                      f"{(now - t.meta.ts_unix_ns) / 1e9:.1f}")
    for n in sorted(set(state["nodes"]) - set(nodes) if state else (), key=lambda n: (len(n), n)):
        worst = common_pb2.HEALTH_CRITICAL
        counts["silent"] += 1
        table.add_row(n, "[red]silent[/] [dim](no telemetry: killed?)[/]", "-", "-", "-", "-", "-", "-")
    console.print(table)
    name = common_pb2.Health.Name(worst).removeprefix("HEALTH_").lower()
    console.print(f"mesh: [{COLOR[worst]}]{name}[/]  " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))


def _node_detail(t: events_pb2.NodeTelemetry) -> None:
    links = Table("peer", "rssi dBm", "snr dB", "loss", "latency ms", "age s", title=f"{t.node_id}: links")
    for q in sorted(t.links, key=lambda q: (len(q.peer), q.peer)):
        links.add_row(q.peer, f"{q.rssi_dbm:.1f}", f"{q.snr_db:.1f}", f"{q.loss_rate:.2f}", f"{q.latency_ms:.2f}",
                      f"{q.link_age_s:.1f}")
    console.print(links)
    routes = Table("destination", "next hop", title=f"{t.node_id}: routes")
    for dest in sorted(t.routes, key=lambda n: (len(n), n)):
        routes.add_row(dest, t.routes[dest])
    console.print(routes)
    console.print(f"avoided: {', '.join(t.avoided) or 'none'}; reachable: {t.reachable}; "
                  f"counters: " + ", ".join(f"{k}={v:g}" for k, v in sorted(t.counters.items())
                                            if k in ("sent", "delivered", "forwarded", "acked", "ack_timeouts")))


# ---- planned maintenance ----------------------------------------------------------------
MAINTENANCE_START, MAINTENANCE_END = "maintenance.start", "maintenance.end"


async def _announce(url: str, nodes: list[str], kind: str, reason: str, generation: str,
                    data_dir: pathlib.Path | None, confirm_s: float) -> list[str]:
    """Publish ``kind`` for each node (as the operator, stored in stream MESH), then wait up to ``confirm_s``
    for the monitor to have recorded it (``maint.<node>`` in the health bucket: there for a start, gone for
    an end). The nodes it has not confirmed."""
    from x0tta6bl4.bus.codec import new_meta
    from x0tta6bl4.bus.publisher import Publisher
    nc = await connect(url, data_dir)
    try:
        pub = Publisher(nc, "meshctl", retry_for_s=5.0)
        for n in nodes:
            ev = mesh_pb2.MeshEvent(meta=new_meta("meshctl"), node_id=n, kind=kind,
                                    details={"reason": reason, "generation": generation})
            await pub.publish(subjects.mesh_event(n), ev)
        try:
            kv = await nc.jetstream().key_value("health")
        except Exception:  # noqa: BLE001 - no monitor bucket here: nothing can confirm it
            return list(nodes)
        deadline = time.monotonic() + confirm_s
        pending = list(nodes)
        while True:
            left = []
            for n in pending:
                try:
                    present = (await kv.get(f"maint.{subjects.token(n)}")).value is not None
                except Exception:  # noqa: BLE001 - not there (or deleted)
                    present = False
                if present != (kind == MAINTENANCE_START):
                    left.append(n)
            pending = left
            if not pending or time.monotonic() >= deadline:
                return pending
            await asyncio.sleep(0.1)      # polling the monitor's record
    finally:
        await nc.close()


def announce(url: str, nodes: list[str], kind: str, reason: str, generation: str, data_dir: pathlib.Path | None,
             confirm_s: float) -> None:
    what = "maintenance" if kind == MAINTENANCE_START else "the end of maintenance"
    unconfirmed = run(_announce(url, nodes, kind, reason, generation, data_dir, confirm_s))
    if unconfirmed:
        console.print(f"[yellow]warning:[/] announced {what} ({reason}) for {len(nodes)} node(s); the monitor has "
                      f"not confirmed it for {', '.join(unconfirmed[:10])}"
                      + ("…" if len(unconfirmed) > 10 else "") + f" within {confirm_s:g} s (is it running?)")
    else:
        console.print(f"{what} announced ({reason}) for {len(nodes)} node(s), recorded by the monitor")


async def _everywhere(url: str, data_dir: pathlib.Path | None, nodes: list[str], kind: int,
                      peer: str) -> list[tuple[str, bool, str]]:
    nc = await connect(url, data_dir)
    try:
        replies = await asyncio.gather(*(send_command(nc, n, kind, peer=peer) for n in nodes))
    finally:
        await nc.close()
    return [(n, ok, detail) for n, (ok, detail) in zip(nodes, replies, strict=True)]


def _node_generation(url: str, node: str) -> str:
    _, tel = run(mesh_telemetry(url, 1.0))
    t = tel.get(node)
    return t.mesh_generation if t is not None else ""


@mesh_app.command("drain")
def mesh_drain(node: str,
               stop: bool = typer.Option(False, "--stop", help="also stop the node's agent (undrain revives it)"),
               reason: str = typer.Option("drain", "--reason", help="recorded with the maintenance"),
               confirm_s: float = typer.Option(5.0, "--confirm-timeout", min=0, max=120),
               nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Take NODE out of service for planned maintenance: announce it (no repair starts for it), then every
    other node routes around it (and with --stop its agent stops)."""
    url = nats_url(nats, data_dir)
    nodes = mesh_nodes(url, data_dir)
    if node not in nodes:
        fail(f"unknown node {node!r}; known: {', '.join(nodes) or 'none (no mesh is running)'}")
    state = running_mesh(data_dir)
    generation = str(state.get("generation", "")) if state else _node_generation(url, node)
    announce(url, [node], MAINTENANCE_START, reason, generation, data_dir.resolve(), confirm_s)
    others = [n for n in nodes if n != node]
    results = run(_everywhere(url, data_dir.resolve(), others, C.KIND_AVOID_NODE, node))
    bad = [(n, d) for n, ok, d in results if not ok]
    for n, d in bad:
        console.print(f"{n:>6} ← AVOID {node}: [red]failed[/] — {d}")
    console.print(f"drain {node}: {len(results) - len(bad)}/{len(results)} nodes route around it")
    if stop:
        ok, detail = run(_commands_one(url, data_dir, node, C.KIND_FAULT, {"type": "kill"}))
        console.print(f"{node:>6} ← stop: {'[green]ok[/]' if ok else '[red]failed[/]'} — {detail}")
        bad += [] if ok else [(node, detail)]
    if bad:
        raise typer.Exit(1)


@mesh_app.command("undrain")
def mesh_undrain(node: str, confirm_s: float = typer.Option(5.0, "--confirm-timeout", min=0, max=120),
                 nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Bring a drained NODE back: revive its agent if it was stopped, let every node route through it again,
    end the maintenance (a node still unhealthy then is a failure the loop repairs)."""
    url = nats_url(nats, data_dir)
    nodes = mesh_nodes(url, data_dir)
    if node not in nodes:
        fail(f"unknown node {node!r}; known: {', '.join(nodes) or 'none (no mesh is running)'}")
    ok, detail = run(_commands_one(url, data_dir, node, C.KIND_HEAL, None))
    console.print(f"{node:>6} ← HEAL (revive if stopped): {'[green]ok[/]' if ok else '[red]failed[/]'} — {detail}")
    others = [n for n in nodes if n != node]
    results = run(_everywhere(url, data_dir.resolve(), others, C.KIND_UNAVOID_NODE, node))
    bad = [(n, d) for n, good, d in results if not good]
    for n, d in bad:
        console.print(f"{n:>6} ← UNAVOID {node}: [red]failed[/] — {d}")
    console.print(f"undrain {node}: {len(results) - len(bad)}/{len(results)} nodes route through it again")
    state = running_mesh(data_dir)
    generation = str(state.get("generation", "")) if state else ""
    announce(url, [node], MAINTENANCE_END, "undrain", generation, data_dir.resolve(), confirm_s)
    if bad or not ok:
        raise typer.Exit(1)


async def _commands_one(url: str, data_dir: pathlib.Path, node: str, kind: int, params: dict | None
                        ) -> tuple[bool, str]:
    nc = await connect(url, data_dir.resolve())
    try:
        return await send_command(nc, node, kind, params)
    finally:
        await nc.close()


# ---- faults -------------------------------------------------------------------------
async def send_command(nc, node: str, kind: int, params: dict | None = None, peer: str = "",
                       timeout_s: float = 10.0) -> tuple[bool, str]:
    """One MeshCommand request; (ok, detail) from the host's MeshEvent reply."""
    import nats.errors

    from x0tta6bl4.bus.codec import new_meta
    cmd = C(meta=new_meta("meshctl"), node_id=node, kind=cast("mesh_pb2.MeshCommand.Kind", kind), peer=peer,
            params={k: str(v) for k, v in (params or {}).items()})
    try:
        subject = subjects.mesh_cmd(node)
    except ValueError as e:
        return False, str(e)
    try:
        reply = await nc.request(subject, cmd.SerializeToString(), timeout=timeout_s)
    except nats.errors.NoRespondersError:
        return False, f"no mesh host answers on {subject}: is a mesh up with node {node}? (meshctl mesh status)"
    except (TimeoutError, nats.errors.TimeoutError):
        return False, f"no reply on {subject} within {timeout_s:g} s"
    ev = mesh_pb2.MeshEvent.FromString(reply.data)
    return ev.kind == "command.ok", ev.details.get("detail", ev.kind)


def _describe(kind: int, params: dict | None) -> str:
    name = C.Kind.Name(kind).removeprefix("KIND_")
    if params:
        name += " " + " ".join(f"{k}={v}" for k, v in params.items())
    return name


async def _commands(url: str, steps: list[tuple[str, int, dict | None]]) -> bool:
    """Send the steps in order, print one line per reply; False if any failed."""
    nc = await connect(url)
    ok_all = True
    try:
        for node, kind, params in steps:
            ok, detail = await send_command(nc, node, kind, params)
            mark = "[green]ok[/]" if ok else "[red]failed[/]"
            console.print(f"{node:>6} ← {_describe(kind, params)}: {mark} — {detail}")
            ok_all &= ok
    finally:
        await nc.close()
    return ok_all


def _send(steps: list[tuple[str, int, dict | None]], nats: str | None, data_dir: pathlib.Path) -> None:
    if not run(_commands(nats_url(nats, data_dir), steps)):
        raise typer.Exit(1)


@fault_app.command("kill")
def fault_kill(node: str, nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Crash NODE (loopback: socket closed, state lost; netns: SIGKILL of its process)."""
    _send([(node, C.KIND_FAULT, {"type": "kill"})], nats, data_dir)


@fault_app.command("partition")
def fault_partition(a: str, b: str, nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Cut the link A-B: each blocks the other (netns: ip link set down of their veth pair)."""
    _send([(a, C.KIND_FAULT, {"type": "block", "peer": b}), (b, C.KIND_FAULT, {"type": "block", "peer": a})],
          nats, data_dir)


@fault_app.command("loss")
def fault_loss(node: str,
               pct: float = typer.Argument(..., min=0, max=100, help="percent of received datagrams dropped"),
               nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """NODE drops PCT % of what it receives (netns: nftables numgen random drop; 0 removes it)."""
    _send([(node, C.KIND_FAULT, {"type": "loss", "pct": f"{pct:g}"})], nats, data_dir)


@fault_app.command("latency")
def fault_latency(node: str, ms: float = typer.Argument(..., min=0, help="added delay per sent datagram, ms"),
                  nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """NODE delays everything it sends by MS ms (agent level in both modes: tc netem is unavailable)."""
    _send([(node, C.KIND_FAULT, {"type": "latency", "ms": f"{ms:g}"})], nats, data_dir)


@fault_app.command("flap")
def fault_flap(node: str,
               peer: str | None = typer.Option(None, "--peer", help="flap only the link NODE-PEER"),
               period: float = typer.Option(1.0, "--period", min=0.05, max=600, help="seconds down, then up"),
               count: int = typer.Option(3, "--count", min=1, max=1000, help="down/up cycles"),
               nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Take NODE (or only its link to --peer) down for PERIOD s, up for PERIOD s, COUNT times.

    Without --peer the node is paused/resumed (netns: SIGSTOP/SIGCONT), so every
    neighbour loses it and finds it again with its state intact."""
    steps: list[tuple[str, int, dict | None]] = []
    for _ in range(count):
        if peer:
            steps += [(node, C.KIND_FAULT, {"type": "block", "peer": peer}),
                      (peer, C.KIND_FAULT, {"type": "block", "peer": node}), ("", 0, None),
                      (node, C.KIND_FAULT, {"type": "unblock", "peer": peer}),
                      (peer, C.KIND_FAULT, {"type": "unblock", "peer": node}), ("", 0, None)]
        else:
            steps += [(node, C.KIND_FAULT, {"type": "pause"}), ("", 0, None),
                      (node, C.KIND_FAULT, {"type": "resume"}), ("", 0, None)]

    async def go() -> bool:
        nc = await connect(nats_url(nats, data_dir))
        ok_all = True
        try:
            for n, kind, params in steps:
                if not n:
                    await asyncio.sleep(period)
                    continue
                ok, detail = await send_command(nc, n, kind, params)
                console.print(f"{time.strftime('%H:%M:%S')} {n:>6} ← {_describe(kind, params)}: "
                              f"{'[green]ok[/]' if ok else '[red]failed[/]'} — {detail}")
                ok_all &= ok
                if not ok:
                    break
        finally:
            await nc.close()
        return ok_all
    if not run(go()):
        raise typer.Exit(1)


def mesh_nodes(url: str, data_dir: pathlib.Path) -> list[str]:
    """The nodes of the mesh: those recorded by ``meshctl mesh up``, else those heard on the bus."""
    state = running_mesh(data_dir)
    if state:
        return list(state["nodes"])
    _, tel = run(mesh_telemetry(url, 1.0))
    return sorted(tel, key=lambda n: (len(n), n))


@fault_app.command("heal")
def fault_heal(node: str | None = typer.Argument(None, help="one node (default: every node of the mesh)"),
               nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Undo every fault on NODE (or on all nodes) and revive it if it was killed."""
    url = nats_url(nats, data_dir)
    targets = [node] if node else mesh_nodes(url, data_dir)
    if not targets:
        fail("no mesh is running (meshctl mesh up --detach); name a NODE to heal one node")
    steps: list[tuple[str, int, dict | None]] = []
    for n in targets:
        steps += [(n, C.KIND_HEAL, None), (n, C.KIND_FAULT, {"type": "revive"})]
    _send(steps, nats, data_dir)


@mesh_app.command("reinstate")
def mesh_reinstate(node: str, nats: str | None = NatsOpt, data_dir: pathlib.Path = DataOpt) -> None:
    """Let every node route through NODE again (undo the avoid of a REROUTE/ISOLATE once NODE is back)."""
    url = nats_url(nats, data_dir)
    others = [n for n in mesh_nodes(url, data_dir) if n != node]
    if not others:
        fail("no mesh is running (meshctl mesh up --detach)")

    async def go() -> list[tuple[str, bool, str]]:
        nc = await connect(url)
        try:
            replies = await asyncio.gather(*(send_command(nc, n, C.KIND_UNAVOID_NODE, peer=node) for n in others))
        finally:
            await nc.close()
        return [(n, ok, detail) for n, (ok, detail) in zip(others, replies, strict=True)]
    results = run(go())
    bad = [(n, d) for n, ok, d in results if not ok]
    for n, d in bad:
        console.print(f"{n:>6} ← UNAVOID {node}: [red]failed[/] — {d}")
    console.print(f"reinstate {node}: {len(results) - len(bad)}/{len(results)} nodes route through it again")
    if bad:
        raise typer.Exit(1)


# ``python -m x0tta6bl4.cli.mesh mesh up ...`` works before the sub-apps are registered in meshctl
cli = typer.Typer(help="meshctl mesh / fault", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False)
cli.add_typer(mesh_app, name="mesh")
cli.add_typer(fault_app, name="fault")

if __name__ == "__main__":
    cli()
