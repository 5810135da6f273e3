"""One mesh across several host processes on one machine.

A :class:`~.host.MeshHost` runs its agents in one asyncio loop: with keys on, one Python
process signs and verifies every HELLO of the nodes it hosts and runs every link
handshake, so a large mesh saturates one core. :class:`MeshCluster` splits a topology
into ``hosts`` shards (contiguous blocks of the topology's node order, so a grid is
cut along rows and few links cross a process boundary), fixes one UDP address per
node on loopback and starts ``python -m x0tta6bl4.mesh.host --nodes ... --addresses ...``
per shard. Every host bridges its own nodes to NATS exactly as a single host does
(``mesh.telemetry.<node>``, ``mesh.event.<node>``, commands on ``mesh.cmd.<node>``), so
the executor, the monitor and ``meshctl`` reach the nodes the same way; agents of
different hosts talk UDP to each other like agents of one host. With keyvault, every
host generates the keys of its own nodes (kept in ``<key root>/<instance>``: ``DATA_DIR/mesh-keys/<name>-<i>``
with ``--data-dir``), has keyvault certify them and follows the ``keys`` bucket; a rotation's
beacon check counts a neighbour in another process once that neighbour's HELLO echoes
a HELLO signed with the new key (see :mod:`.security`).

    python -m x0tta6bl4.mesh.cluster --nats nats://127.0.0.1:4222 --topology grid:50 \\
        --hosts 2 --keyvault 127.0.0.1:50051 [--traffic n0:n49 --rate 20] [-- extra mesh.host arguments]

The command line takes the arguments ``meshctl mesh up`` gives ``python -m x0tta6bl4.mesh.host``
(``--nats --topology --seed --rate --data-dir --traffic``; a flow runs in the host of its source)
and prints the same first line (``{"ready": true, "nodes": [...], "links": [...]}`` plus ``hosts``);
it supervises the host processes and stops them all on SIGTERM/SIGINT, so it can stand in for a
single mesh host process.

On a secured bus every host process speaks as its own identity, allowed exactly its shard's nodes
(``mesh-host-<instance>``, :mod:`x0tta6bl4.bus.permissions`): ``host_env(instance, nodes)`` gives each host
its X0TTA6BL4_NATS_* settings (an embedded stack's ``Stack.add_mesh_host`` registers the identity and
reloads nats-server); ``--secrets DIR`` takes the identities already registered in a secrets directory
(``meshctl mesh up --hosts N`` registers them before it starts the supervisor). :meth:`MeshCluster.identities`
says which identities a cluster needs.

Host-level commands (``host_op`` ``status``, ``stats``, ``traffic``, ``traffic_stop``)
reach one host through any of its nodes' ``mesh.cmd.<node>`` with ``params["host"]`` =
its instance id (``<name>-<i>``); :meth:`MeshCluster.host_op` does that over NATS.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self, cast

from .topology import Topology, parse_spec

__all__ = ["MeshCluster", "allocate_addresses", "host_identity_env", "partition"]

NATS_IDENTITY_ENV = ("X0TTA6BL4_NATS_NKEY_FILE", "X0TTA6BL4_NATS_CA_FILE", "X0TTA6BL4_NATS_IDENTITY")


def host_identity_env(secrets_dir: str | Path, host: str) -> dict[str, str]:
    """The X0TTA6BL4_NATS_* settings of mesh host ``host`` registered in a secrets directory (and the CA of the
    X.509 SVIDs and the pinned keyvault root fingerprint)."""
    from x0tta6bl4.bus.permissions import MESH_HOST_PREFIX
    from x0tta6bl4.bus.subjects import token
    from x0tta6bl4.keyvault.pin import identity_env  # the SVIDs' CA and the pinned keyvault root
    identity = MESH_HOST_PREFIX + token(host)
    nkey = Path(secrets_dir) / "creds" / f"{identity}.nk"
    if not nkey.is_file():
        raise ValueError(f"mesh host {host!r} has no identity in {secrets_dir} ({nkey} is missing)")
    return {"X0TTA6BL4_NATS_NKEY_FILE": str(nkey), "X0TTA6BL4_NATS_CA_FILE": str(Path(secrets_dir) / "ca" / "ca.pem"),
            "X0TTA6BL4_NATS_IDENTITY": identity, **identity_env(secrets_dir, identity)}


def partition(topology: Topology, hosts: int) -> list[list[str]]:
    """``hosts`` contiguous, near-equal blocks of the topology's node order (none empty)."""
    nodes = list(topology.nodes)
    hosts = max(1, min(hosts, len(nodes)))
    q, r = divmod(len(nodes), hosts)
    out, i = [], 0
    for k in range(hosts):
        n = q + (1 if k < r else 0)
        out.append(nodes[i:i + n])
        i += n
    return out


def allocate_addresses(nodes: list[str], host: str = "127.0.0.1") -> dict[str, tuple[str, int]]:
    """One free UDP port per node (bound together, then released for the host processes)."""
    socks = []
    try:
        for _ in nodes:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            socks.append(s)
        return {n: (host, s.getsockname()[1]) for n, s in zip(nodes, socks, strict=True)}
    finally:
        for s in socks:
            s.close()


class MeshCluster:
    """A topology run by ``hosts`` host processes (see the module doc). Synchronous start/stop;
    :meth:`host_op` and :meth:`command` are async (they need a NATS client)."""

    def __init__(self, nats_url: str, topology: str, *, hosts: int = 2, seed: int = 0, keyvault: str = "",
                 name: str = "mesh", host_args: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None,
                 workdir: str | Path | None = None, traffic: list[str] | tuple[str, ...] = (),
                 rate: float | None = None,
                 host_env: Callable[[str, list[str]], Mapping[str, str]] | None = None,
                 key_root: str | Path | None = None, generation: str = "") -> None:
        self.nats_url = nats_url
        # one mesh generation for every host process (default: name@start ms): see x0tta6bl4.mesh.host
        self.generation = generation
        self.host_env = host_env
        self.spec = topology
        self.topology = parse_spec(topology, seed=seed)
        self.seed = seed
        self.keyvault = keyvault
        self.name = name
        self.host_args = list(host_args)
        self.env = dict(env or {})
        self.shards = partition(self.topology, hosts)
        self.traffic = list(traffic)
        self.rate = rate
        for f in self.traffic:
            src, _, dst = f.partition(":")
            if src not in self.topology.nodes or dst not in self.topology.nodes:
                raise ValueError(f"traffic {f!r}: unknown node")
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mesh-cluster-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        # with keyvault every host keeps its nodes' private keys in <key_root>/<instance> (--key-dir)
        self.key_root = Path(key_root) if key_root is not None else self.workdir / "mesh-keys"
        self.addresses: dict[str, tuple[str, int]] = {}
        self.procs: list[subprocess.Popen] = []
        self.instances = [f"{name}-{i}" for i in range(len(self.shards))]
        self._logs: list[Any] = []

    def key_dir(self, i: int) -> Path:
        """The key directory of host ``i`` (its nodes' private keys, generated there, certified by keyvault)."""
        return self.key_root / self.instances[i]

    def identities(self) -> dict[str, list[str]]:
        """Each host process (its instance id) and the nodes it speaks for on the bus."""
        return dict(zip(self.instances, (list(s) for s in self.shards), strict=True))

    # ---- lifecycle -----------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.addresses = allocate_addresses(list(self.topology.nodes))
        addr_file = self.workdir / "addresses.json"
        addr_file.write_text(json.dumps({n: list(a) for n, a in self.addresses.items()}))
        env = dict(os.environ)
        libs = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = libs + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(self.env)
        self.generation = self.generation or f"{self.name}@{int(time.time() * 1000)}"
        for i, nodes in enumerate(self.shards):
            cmd = [sys.executable, "-m", "x0tta6bl4.mesh.host", "--nats", self.nats_url, "--topology", self.spec,
                   "--seed", str(self.seed), "--nodes", ",".join(nodes), "--addresses", str(addr_file),
                   "--instance", self.instances[i], "--generation", self.generation, *self.host_args]
            if self.keyvault:
                cmd += ["--keyvault", self.keyvault, "--key-dir", str(self.key_dir(i))]
            for f in self.traffic:
                if f.partition(":")[0] in nodes:
                    cmd += ["--traffic", f]
            if self.rate is not None:
                cmd += ["--rate", str(self.rate)]
            host_env = dict(env)
            if self.host_env is not None:   # this host's own bus identity, never the caller's
                for k in NATS_IDENTITY_ENV:
                    host_env.pop(k, None)
                host_env.update(self.host_env(self.instances[i], list(nodes)))
            log = open(self.workdir / f"{self.instances[i]}.log", "wb")  # noqa: SIM115 - closed in stop()
            self._logs.append(log)
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=host_env,
                                               start_new_session=True))
        try:
            for i, p in enumerate(self.procs):
                self._wait_ready(i, p, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, i: int, p: subprocess.Popen, timeout: float) -> None:
        out = p.stdout
        assert out is not None, "started with stdout=PIPE"
        line: list[bytes] = []
        t = threading.Thread(target=lambda: line.append(out.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not line or not line[0]:
            tail = (self.workdir / f"{self.instances[i]}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mesh host {self.instances[i]} did not become ready (exit {p.poll()}): {tail}")
        msg = json.loads(line[0])
        if not msg.get("ready"):
            raise RuntimeError(f"mesh host {self.instances[i]}: {msg}")
        # keep draining stdout so the host never blocks on a full pipe
        threading.Thread(target=lambda: [None for _ in iter(out.readline, b"")], daemon=True).start()

    def stop(self, timeout: float = 10.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        for f in self._logs:
            f.close()
        self._logs = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def shard_of(self, node: str) -> int:
        for i, nodes in enumerate(self.shards):
            if node in nodes:
                return i
        raise KeyError(node)

    # ---- over NATS -------------------------------------------------------------------
    async def command(self, nc, node: str, kind: int, peer: str = "", params: dict[str, str] | None = None,
                      timeout: float = 10.0) -> str:
        """A MeshCommand to ``node`` (as the executor sends it); the reply's detail, or raises."""
        from x0tta6bl4.bus import subjects
        from x0tta6bl4.bus.codec import new_meta
        from x0tta6bl4.v1 import mesh_pb2
        cmd = mesh_pb2.MeshCommand(meta=new_meta("mesh-cluster"), node_id=node, peer=peer, params=params or {},
                                   kind=cast("mesh_pb2.MeshCommand.Kind", kind))
        r = await nc.request(subjects.mesh_cmd(node), cmd.SerializeToString(), timeout=timeout)
        ev = mesh_pb2.MeshEvent.FromString(r.data)
        if ev.kind != "command.ok":
            raise RuntimeError(f"{node}: {ev.details.get('detail', ev.kind)}")
        return ev.details.get("detail", "")

    async def host_op(self, nc, i: int, op: str, params: dict[str, str] | None = None,
                      timeout: float = 10.0) -> dict:
        """A host-level command to host ``i`` (addressed by its instance id); its JSON answer."""
        from .host import HOST_OP_KIND
        p = {"host_op": op, "host": self.instances[i], **(params or {})}
        return json.loads(await self.command(nc, self.shards[i][0], HOST_OP_KIND, params=p, timeout=timeout))

    async def stats(self, nc) -> list[dict]:
        import asyncio
        return list(await asyncio.gather(*(self.host_op(nc, i, "stats") for i in range(len(self.shards)))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nats", required=True)
    p.add_argument("--topology", default="grid:9")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keyvault", default=os.environ.get("X0TTA6BL4_KEYVAULT_ADDR", ""))
    p.add_argument("--name", default="mesh")
    p.add_argument("--generation", default="", help="the mesh generation of every host (default: NAME@start ms)")
    p.add_argument("--traffic", action="append", default=[], help="SRC:DST DATA flow (repeatable)")
    p.add_argument("--rate", type=float, default=None, help="packets per second per flow")
    p.add_argument("--data-dir", default=None, help="host logs and the address map go to DATA_DIR/mesh-cluster")
    p.add_argument("--secrets", default=None,
                   help="secrets directory holding each host's bus identity (mesh-host-<name>-<i>, registered "
                        "beforehand: meshctl mesh up does)")
    p.add_argument("host_args", nargs="*", help="further arguments for every x0tta6bl4.mesh.host (after --)")
    a = p.parse_args(argv)
    host_args = list(a.host_args) + (["--data-dir", a.data_dir] if a.data_dir else [])
    workdir = Path(a.data_dir) / "mesh-cluster" if a.data_dir else None
    try:
        cl = MeshCluster(a.nats, a.topology, hosts=a.hosts, seed=a.seed, keyvault=a.keyvault, name=a.name,
                         host_args=host_args, traffic=a.traffic, rate=a.rate, workdir=workdir,
                         key_root=Path(a.data_dir) / "mesh-keys" if a.data_dir else None,
                         host_env=(lambda host, _nodes: host_identity_env(a.secrets, host)) if a.secrets else None,
                         generation=a.generation)
        if a.secrets:
            for host in cl.identities():
                host_identity_env(a.secrets, host)
    except ValueError as e:
        print(f"mesh cluster: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cl.start()
    print(json.dumps({"ready": True, "nodes": cl.topology.nodes, "generation": cl.generation,
                      "links": sorted(sorted(link) for link in cl.topology.links),
                      "hosts": [{"instance": i, "pid": pr.pid, "nodes": s}
                                for i, pr, s in zip(cl.instances, cl.procs, cl.shards, strict=True)]}), flush=True)
    try:
        while not stop.is_set():
            if any(pr.poll() is not None for pr in cl.procs):
                print("mesh cluster: a host process exited", file=sys.stderr)
                return 1
            stop.wait(0.5)
    finally:
        cl.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
