"""Blue-green deployment adapters: the local stack (mesh host processes) and Kubernetes (kubectl).

The state machine is :mod:`x0tta6bl4.execution.deploy`; :func:`run` drives it with a platform:

- :class:`LocalPlatform` starts green as a ``python -m x0tta6bl4.mesh.host --standby`` process (same
  topology, flows, rate and key mode as blue unless the params say otherwise), polls its ``/health``
  over HTTP, switches with host commands over NATS (``host_op`` standby/activate/retire on
  ``mesh.cmd.<node>``, addressed by instance) and verifies from the telemetry green publishes.
  Green's log and pid file are under ``<data_dir>/deploy/``; green outlives the executor.
- :class:`KubePlatform` is used only when a Kubernetes context is configured
  (``X0TTA6BL4_KUBE_CONTEXT``, or ``kubectl config current-context`` succeeding when a kubeconfig exists):
  green is the Deployment of ``deploy/k8s/mesh-deployment.yaml`` renamed ``x0tta6bl4-mesh-<version>``,
  applied with ``kubectl apply``; health is ``kubectl rollout status`` (the pod's probes hit /health and
  /ready on 8080); switch and verify are the same NATS host commands; blue is retired by scaling its
  Deployment to zero.
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
from collections.abc import Mapping

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.codec import new_meta
from x0tta6bl4.execution.deploy import BlueGreen, DeploySpec, HostInfo, Phase, StepRecord
from x0tta6bl4.mesh.host import HOST_OP_KIND
from x0tta6bl4.v1 import events_pb2, mesh_pb2

C = mesh_pb2.MeshCommand


class DeployError(Exception):
    """A phase failed; the message is the step's detail."""


# ---- host commands over NATS (both platforms) --------------------------------------------------
class HostControl:
    def __init__(self, nc, timeout_s: float = 2.0):
        self.nc = nc
        self.timeout_s = timeout_s

    async def host_op(self, node: str, op: str, instance: str = "", timeout_s: float | None = None) -> dict:
        """Send host_op to the host serving ``node`` (the active one, or ``instance``); its status as a dict."""
        params = {"host_op": op}
        if instance:
            params["host"] = instance
        cmd = C(meta=new_meta("executor"), node_id=node, kind=HOST_OP_KIND, params=params)
        cmd.command_id = cmd.meta.event_id
        try:
            reply = await self.nc.request(subjects.mesh_cmd(node), cmd.SerializeToString(),
                                          timeout=timeout_s or self.timeout_s)
        except Exception as e:  # noqa: BLE001 - timeouts, no responders
            who = instance or f"the active host of {node}"
            raise DeployError(f"{op}: no answer from {who} ({type(e).__name__})") from None
        ev = mesh_pb2.MeshEvent.FromString(reply.data)
        detail = ev.details.get("detail", "")
        if ev.kind != "command.ok":
            raise DeployError(f"{op} refused: {detail}")
        return json.loads(detail)

    async def discover(self, spec: DeploySpec) -> tuple[str, HostInfo | None]:
        try:
            st = await self.host_op(spec.probe_node, "status", timeout_s=1.0)
        except DeployError:
            return f"no active host serves {spec.probe_node}: a first deployment", None
        blue = HostInfo.from_status(st)
        return (f"blue {blue.instance} version {blue.version or '(unlabelled)'} serves {len(blue.nodes)} nodes "
                f"(pid {blue.pid})"), blue

    async def stand_down_blue(self, spec: DeploySpec, blue: HostInfo) -> str:
        st = await self.host_op(spec.probe_node, "standby", blue.instance)
        if st["active"]:
            raise DeployError(f"blue {blue.instance} still active")
        return f"blue {blue.instance} in standby (agents warm, nothing published)"

    async def activate_blue(self, spec: DeploySpec, blue: HostInfo) -> str:
        await self.host_op(spec.probe_node, "activate", blue.instance)
        return f"blue {blue.instance} active again"

    async def activate_green(self, spec: DeploySpec) -> str:
        st = await self.host_op(spec.probe_node, "activate", spec.green_instance)
        return f"green {spec.green_instance} active on {len(st['nodes'])} nodes"

    async def standby_green(self, spec: DeploySpec) -> str:
        await self.host_op(spec.probe_node, "standby", spec.green_instance)
        return f"green {spec.green_instance} in standby"

    async def verify(self, spec: DeploySpec, blue: HostInfo | None) -> str:
        """Every node reports from green (reachable), DATA acknowledged at each flow's source within loss."""
        st = await self.host_op(spec.probe_node, "status", spec.green_instance)
        if not st["active"]:
            raise DeployError("green is not active")
        expected = set(blue.nodes if blue else st["nodes"])
        missing = expected - set(st["nodes"])
        if missing:
            raise DeployError(f"green does not host {', '.join(sorted(missing))}: nodes would be lost")
        sources = {f.split(":")[0] for f in st["traffic"]}
        latest: dict[str, events_pb2.NodeTelemetry] = {}
        since = time.time_ns()
        sub = await self.nc.subscribe(subjects.MESH_TELEMETRY_ALL)
        deadline = time.monotonic() + spec.verify_timeout_s
        problems: list[str] = ["no telemetry yet"]
        try:
            while time.monotonic() < deadline:
                try:
                    msg = await sub.next_msg(timeout=max(0.01, min(0.5, deadline - time.monotonic())))
                except Exception:  # noqa: BLE001 - timeout: check again
                    msg = None
                if msg is not None:
                    with contextlib.suppress(Exception):
                        t = events_pb2.NodeTelemetry.FromString(msg.data)
                        if t.meta.ts_unix_ns >= since:
                            latest[t.node_id] = t
                problems = []
                silent = expected - set(latest)
                if silent:
                    problems.append(f"no telemetry from {', '.join(sorted(silent))}")
                problems += [f"{n} unreachable" for n, t in sorted(latest.items()) if not t.reachable]
                for s in sorted(sources):
                    src_t = latest.get(s)
                    if src_t is not None and (src_t.counters.get("acked", 0) <= 0
                                              or src_t.loss_pct > spec.max_loss_pct):
                        problems.append(f"DATA from {s}: acked {src_t.counters.get('acked', 0):.0f}, "
                                        f"loss {t.loss_pct:.1f}%")
                if not problems:
                    break
        finally:
            await sub.unsubscribe()
        if problems:
            raise DeployError("; ".join(problems))
        flows = ", ".join(f"{s} acked {latest[s].counters.get('acked', 0):.0f}" for s in sorted(sources))
        return f"{len(expected)} nodes report from green, all reachable" + (f"; DATA flows ({flows})" if flows else "")

    async def gone(self, spec: DeploySpec, instance: str, timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                await self.host_op(spec.probe_node, "status", instance, timeout_s=0.3)
            except DeployError:
                return True
            await asyncio.sleep(0.1)
        return False


# ---- the local stack -----------------------------------------------------------------------------
def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    from x0tta6bl4.runtime.stack import free_port
    return free_port()


async def http_status(port: int, path: str = "/health", host: str = "127.0.0.1", timeout_s: float = 1.0) -> int:
    """The HTTP status code of GET path (0 when nothing answers)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (TimeoutError, OSError):
        return 0
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
    except (TimeoutError, OSError):
        return 0
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class LocalPlatform(HostControl):
    """Green is a mesh host process on this machine."""

    def __init__(self, nc, nats_url: str, data_dir: pathlib.Path | str, python: str = sys.executable,
                 timeout_s: float = 2.0):
        super().__init__(nc, timeout_s)
        self.nats_url = nats_url
        self.data_dir = pathlib.Path(data_dir)
        self.python = python
        self.proc: subprocess.Popen | None = None
        self.green_port = 0
        self.log_file: pathlib.Path | None = None

    def green_command(self, spec: DeploySpec, blue: HostInfo | None, port: int) -> list[str]:
        topology = spec.topology or (blue.topology if blue and blue.topology else "grid:9")
        flows = spec.traffic or (blue.traffic if blue else ())
        cmd = [self.python, "-m", "x0tta6bl4.mesh.host", "--nats", self.nats_url, "--topology", topology,
               "--standby", "--instance", spec.green_instance, "--version", spec.version,
               "--health-port", str(port), "--data-dir", str(self.data_dir)]
        for f in flows:
            cmd += ["--traffic", f]
        if blue is not None:
            if blue.rate:
                cmd += ["--rate", f"{blue.rate:g}"]
            cmd += ["--telemetry-interval", f"{blue.telemetry_interval:g}"]
            if blue.keys == "offline":
                cmd.append("--offline-keys")
            elif blue.keys.startswith("keyvault:"):
                cmd += ["--keyvault", blue.keys.removeprefix("keyvault:")]
        if spec.fail_health:
            cmd.append("--fail-health")
        return cmd

    @staticmethod
    def green_env(blue: HostInfo | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """Green's environment: this process's, but never its bus identity or signing key. On a secured bus
        green speaks as the blue host it replaces (the same nodes): blue's identity, whose nkey lies beside
        this process's own (a local stack's secrets; on Kubernetes the green Deployment mounts blue's)."""
        environ = os.environ if environ is None else environ
        env = {k: v for k, v in environ.items()
               if k == "X0TTA6BL4_NATS_URL" or not k.startswith(("X0TTA6BL4_NATS_", "X0TTA6BL4_SIGNING_"))}
        env["PYTHONUNBUFFERED"] = "1"
        own = environ.get("X0TTA6BL4_NATS_NKEY_FILE")
        if own:
            if blue is None or not blue.bus_identity:
                raise DeployError("on a secured bus green needs the bus identity of the blue host it replaces; "
                                  "no blue host reported one")
            nkey = pathlib.Path(own).parent / f"{blue.bus_identity}.nk"
            if not nkey.is_file():
                raise DeployError(f"green needs blue's bus identity {blue.bus_identity!r}: {nkey} not found")
            env.update({"X0TTA6BL4_NATS_NKEY_FILE": str(nkey), "X0TTA6BL4_NATS_IDENTITY": blue.bus_identity})
            if environ.get("X0TTA6BL4_NATS_CA_FILE"):
                env["X0TTA6BL4_NATS_CA_FILE"] = environ["X0TTA6BL4_NATS_CA_FILE"]
        return env

    @staticmethod
    def _spawn(cmd: list[str], log_file: pathlib.Path, env: dict[str, str]) -> subprocess.Popen:
        with open(log_file, "ab") as fh:     # green outlives the executor: its own session
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        # reap it whenever it exits (retired by a later deployment, stopped by an operator): no zombie
        threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
        return proc

    async def start_green(self, spec: DeploySpec, blue: HostInfo | None) -> str:
        with contextlib.suppress(DeployError):       # a green left by an earlier attempt: reuse it
            st = await self.host_op(spec.probe_node, "status", spec.green_instance, timeout_s=0.5)
            self.green_port = int(st.get("health_port") or 0)
            return f"green {spec.green_instance} already running (pid {st['pid']}): reused"
        port = spec.health_port if spec.health_port and _port_free(spec.health_port) else _free_port()
        self.green_port = port
        out = self.data_dir / "deploy"
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = out / f"{spec.green_instance}.log"
        self.proc = await asyncio.to_thread(self._spawn, self.green_command(spec, blue, port), self.log_file,
                                            self.green_env(blue))
        (out / f"{spec.green_instance}.pid").write_text(f"{self.proc.pid}\n")
        note = "" if port == spec.health_port else f" ({spec.health_port} busy)"
        return f"green {spec.green_instance} pid {self.proc.pid}, /health on :{port}{note}"

    def _exited(self) -> str:
        if self.proc is None or self.proc.poll() is None:
            return ""
        tail = ""
        if self.log_file and self.log_file.exists():
            last = self.log_file.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            tail = last[0][-300:]
        return f"green exited with code {self.proc.returncode}: {tail}"

    async def health(self, spec: DeploySpec) -> str:
        t0 = time.monotonic()
        deadline = t0 + spec.health_timeout_s
        code = 0
        while time.monotonic() < deadline:
            if why := self._exited():
                raise DeployError(why)
            code = await http_status(self.green_port, "/health")
            if code == 200:
                break
            await asyncio.sleep(0.1)
        else:
            raise DeployError(f"/health on :{self.green_port} answered {code or 'nothing'} "
                              f"for {spec.health_timeout_s:g}s")
        ms = (time.monotonic() - t0) * 1000
        while True:                                   # warm: green's agents converged among themselves
            st = await self.host_op(spec.probe_node, "status", spec.green_instance)
            if st.get("converged"):
                return f"/health 200 on :{self.green_port} after {ms:.0f} ms; green agents converged"
            if time.monotonic() > deadline:
                raise DeployError(f"/health 200 on :{self.green_port}, but green agents did not converge")
            await asyncio.sleep(0.1)

    async def retire_blue(self, spec: DeploySpec, blue: HostInfo) -> str:
        await self.host_op(spec.probe_node, "retire", blue.instance)
        if not await self.gone(spec, blue.instance):
            raise DeployError(f"blue {blue.instance} still answers after retire")
        return f"blue {blue.instance} (pid {blue.pid}) retired"

    async def stop_green(self, spec: DeploySpec) -> str:
        if self.proc is None:
            with contextlib.suppress(DeployError):
                await self.host_op(spec.probe_node, "retire", spec.green_instance, timeout_s=1.0)
            if not await self.gone(spec, spec.green_instance, 3.0):
                raise DeployError(f"green {spec.green_instance} still answers")
            return f"green {spec.green_instance} stopped"
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 5)
        with contextlib.suppress(OSError):
            (self.data_dir / "deploy" / f"{spec.green_instance}.pid").unlink()
        return f"green {spec.green_instance} pid {proc.pid} stopped (exit {proc.returncode})"


# ---- Kubernetes ----------------------------------------------------------------------------------
def kube_context(env: Mapping[str, str] | None = None) -> str | None:
    """The configured Kubernetes context, or None. kubectl is run only when a kubeconfig exists."""
    env = os.environ if env is None else env
    if env.get("X0TTA6BL4_KUBE_CONTEXT"):
        return env["X0TTA6BL4_KUBE_CONTEXT"]
    kubeconfig = env.get("KUBECONFIG") or str(pathlib.Path.home() / ".kube" / "config")
    if not shutil.which("kubectl") or not any(pathlib.Path(p).is_file() for p in kubeconfig.split(os.pathsep) if p):
        return None
    try:
        p = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True,
                           timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() or None if p.returncode == 0 else None


def green_deployment(docs: list[dict], spec: DeploySpec) -> dict:
    """The mesh Deployment of mesh-deployment.yaml as green: renamed per version, standby, own labels."""
    import copy
    base = next(d for d in docs if d and d.get("kind") == "Deployment" and d["metadata"]["name"] == "x0tta6bl4-mesh")
    d = copy.deepcopy(base)
    name = f"x0tta6bl4-mesh-{spec.version}".lower().replace("_", "-").replace(".", "-")
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "mesh",
              "app.kubernetes.io/part-of": "x0tta6bl4", "app.kubernetes.io/version": spec.version}
    d["metadata"]["name"] = name
    d["metadata"]["labels"] = dict(labels)
    d["spec"]["selector"] = {"matchLabels": {"app.kubernetes.io/name": name}}
    # the pod keeps its other labels: the NetworkPolicies admit it to NATS and keyvault by them
    d["spec"]["template"]["metadata"]["labels"] = {**base["spec"]["template"]["metadata"].get("labels", {}), **labels}
    c = d["spec"]["template"]["spec"]["containers"][0]
    c["image"] = spec.image or f"x0tta6bl4:{spec.version}"
    cmd = list(c["command"])
    if spec.traffic:
        while "--traffic" in cmd:
            i = cmd.index("--traffic")
            del cmd[i:i + 2]
        for f in spec.traffic:
            cmd += ["--traffic", f]
    cmd += ["--standby", "--instance", spec.green_instance, "--version", spec.version]
    if spec.fail_health:
        cmd.append("--fail-health")
    c["command"] = cmd
    return d


class KubePlatform(HostControl):
    """Green is a Deployment applied with kubectl in ``context``; switch/verify over NATS as locally."""

    def __init__(self, nc, context: str, manifest: pathlib.Path, namespace: str = "x0tta6bl4",
                 timeout_s: float = 2.0):
        super().__init__(nc, timeout_s)
        self.context = context
        self.manifest = pathlib.Path(manifest)
        self.namespace = namespace
        self.name = ""

    async def kubectl(self, *args: str, stdin: str | None = None, timeout_s: float = 120.0) -> str:
        proc = await asyncio.create_subprocess_exec(
            "kubectl", "--context", self.context, "-n", self.namespace, *args,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), timeout_s)
        except TimeoutError:
            proc.kill()
            raise DeployError(f"kubectl {' '.join(args[:2])} timed out") from None
        text = out.decode(errors="replace").strip()
        if proc.returncode != 0:
            raise DeployError(f"kubectl {' '.join(args[:2])}: {text[-300:]}")
        return text

    async def start_green(self, spec: DeploySpec, blue: HostInfo | None) -> str:
        import yaml
        docs = list(yaml.safe_load_all(self.manifest.read_text()))
        dep = green_deployment(docs, spec)
        self.name = dep["metadata"]["name"]
        out = await self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(dep))
        return f"{out} (context {self.context})"

    async def health(self, spec: DeploySpec) -> str:
        return await self.kubectl("rollout", "status", f"deployment/{self.name}",
                                  f"--timeout={int(spec.health_timeout_s)}s", timeout_s=spec.health_timeout_s + 10)

    async def retire_blue(self, spec: DeploySpec, blue: HostInfo) -> str:
        blue_name = f"x0tta6bl4-mesh-{blue.version}" if blue.version else "x0tta6bl4-mesh"
        return await self.kubectl("scale", f"deployment/{blue_name}", "--replicas=0")

    async def stop_green(self, spec: DeploySpec) -> str:
        name = self.name or f"x0tta6bl4-mesh-{spec.version}"
        return await self.kubectl("delete", f"deployment/{name}", "--ignore-not-found")


# ---- the driver ---------------------------------------------------------------------------------
async def _do(platform, m: BlueGreen) -> tuple[str, HostInfo | None]:
    spec, blue, ph = m.spec, m.blue, m.phase
    if ph is Phase.DISCOVER:
        return await platform.discover(spec)
    call = {
        Phase.START_GREEN: lambda: platform.start_green(spec, blue),
        Phase.HEALTH: lambda: platform.health(spec),
        Phase.STAND_DOWN_BLUE: lambda: platform.stand_down_blue(spec, blue),
        Phase.ACTIVATE_GREEN: lambda: platform.activate_green(spec),
        Phase.VERIFY: lambda: platform.verify(spec, blue),
        Phase.RETIRE_BLUE: lambda: platform.retire_blue(spec, blue),
        Phase.ROLLBACK_GREEN: lambda: platform.standby_green(spec),
        Phase.ROLLBACK_BLUE: lambda: platform.activate_blue(spec, blue),
        Phase.ROLLBACK_STOP_GREEN: lambda: platform.stop_green(spec),
    }[ph]
    return await call(), None


async def _step(platform, m: BlueGreen) -> None:
    t0 = time.perf_counter()
    try:
        detail, blue = await _do(platform, m)
        ok = True
    except DeployError as e:
        detail, blue, ok = str(e), None, False
    except Exception as e:  # noqa: BLE001 - a failed phase, rolled back like any other
        detail, blue, ok = f"{type(e).__name__}: {e}", None, False
    m.report(ok, detail, (time.perf_counter() - t0) * 1000, blue=blue)


async def run(m: BlueGreen, platform) -> list[StepRecord]:
    """Drive the machine to a terminal phase; on cancellation (the action's timeout) roll back first."""
    t_total = time.perf_counter()
    try:
        while not m.terminal:
            await _step(platform, m)
    except asyncio.CancelledError:
        m.abort("action timed out")

        async def unwind():
            while not m.terminal:
                await _step(platform, m)
        await asyncio.shield(unwind())
        raise
    out = m.outcome()
    return [*m.steps, StepRecord(out.name, out.ok, out.detail, (time.perf_counter() - t_total) * 1000)]


def platform_for(nc, nats_url: str, data_dir: pathlib.Path | str, repo: pathlib.Path | None = None):
    """KubePlatform when a Kubernetes context is configured, else LocalPlatform."""
    ctx = kube_context()
    if ctx:
        from x0tta6bl4.runtime.stack import repo_root
        return KubePlatform(nc, ctx, (repo or repo_root()) / "deploy" / "k8s" / "mesh-deployment.yaml")
    return LocalPlatform(nc, nats_url, data_dir)


async def deploy(nc, params: Mapping[str, str], nats_url: str, data_dir: pathlib.Path | str) -> list[StepRecord]:
    """One DEPLOY action: every phase as a step, the last one the outcome (raises ValueError on bad params)."""
    spec = DeploySpec.from_params(params)
    return await run(BlueGreen(spec), platform_for(nc, nats_url, data_dir))
