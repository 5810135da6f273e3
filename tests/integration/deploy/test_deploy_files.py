"""Static checks of the container and Kubernetes deployment files (no Docker engine needed):
docker-compose.yml is valid for Debian's docker-compose, every command is a real entry point of our
package, every X0TTA6BL4_* variable is a setting the service accepts; the Kubernetes manifests validate
against the Kubernetes schemas (kubernetes-validate, offline) and probe /ready and /health on 8080."""
from __future__ import annotations

import importlib
import inspect
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from x0tta6bl4.config import PREFIX, CommonSettings
from x0tta6bl4.runtime.stack import SERVICES

ROOT = pathlib.Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def settings_class(module) -> type[CommonSettings]:
    found = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if issubclass(c, CommonSettings) and c.__module__ == module.__name__]
    assert len(found) == 1, f"{module.__name__}: expected one Settings class, found {found}"
    return found[0]


def env_names(env) -> dict[str, str]:
    if isinstance(env, list):
        return dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in (env or {}).items()}


def argparse_flags(module: str) -> set[str]:
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout))


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose not installed (apt-get install -y docker-compose; `make setup` does it)")
def test_compose_config_is_valid():
    r = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_compose_runs_every_service_nats_and_a_mesh_ordered_on_health():
    c = compose()
    svcs = c["services"]
    assert set(SERVICES) <= set(svcs) and "nats" in svcs and "mesh" in svcs
    nats = svcs["nats"]
    assert nats["image"].startswith("nats:2.10")
    assert {"-js", "-sd", "/data"} <= set(nats["command"])
    assert any(v.split(":")[0] in c["volumes"] and v.endswith(":/data") for v in nats["volumes"])
    for name, s in svcs.items():
        assert s.get("restart") in ("unless-stopped", "always", "on-failure"), name
        assert "healthcheck" in s and s["healthcheck"]["test"], name
        if name != "nats":
            assert "/health" in " ".join(s["healthcheck"]["test"]) and "8080" in " ".join(s["healthcheck"]["test"])
            deps = s["depends_on"]
            assert deps["nats"]["condition"] == "service_healthy", name
            assert all(d["condition"] == "service_healthy" for d in deps.values()), name
            assert s["build"]["dockerfile"] == "Dockerfile"
    for name in SERVICES:
        env = env_names(svcs[name]["environment"])
        assert env["X0TTA6BL4_NATS_URL"] == "nats://nats:4222" and env["X0TTA6BL4_HEALTH_PORT"] == "8080"


@pytest.mark.parametrize("name", SERVICES)
def test_compose_service_command_is_our_entry_point_and_env_are_real_settings(name):
    s = compose()["services"][name]
    cmd = s["command"]
    assert cmd[:2] == ["python", "-m"] and cmd[2] == f"services.{name}.main" and len(cmd) == 3
    module = importlib.import_module(cmd[2])
    assert callable(getattr(module, "main", None)), f"{cmd[2]} has no main()"
    fields = set(settings_class(module).model_fields)
    for var in env_names(s["environment"]):
        assert var.startswith(PREFIX), var
        assert var[len(PREFIX):].lower() in fields, f"{name}: {var} is not a setting of {cmd[2]}"


def test_compose_mesh_host_flags_exist():
    cmd = compose()["services"]["mesh"]["command"]
    assert cmd[:3] == ["python", "-m", "x0tta6bl4.mesh.host"]
    flags = argparse_flags("x0tta6bl4.mesh.host")
    used = {a for a in cmd if a.startswith("--")}
    assert used <= flags, used - flags
    assert cmd[cmd.index("--health-port") + 1] == "8080"


def test_dockerfile_multistage_nonroot_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, re.MULTILINE)
    assert len(stages) >= 2, stages
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*", text, re.MULTILINE) and "/health" in text
    assert "COPY services" in text.replace("--chown=10001:10001 ", "")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


# ---- Kubernetes ---------------------------------------------------------------------------------
def k8s_docs() -> list[tuple[str, dict]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        out += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def test_k8s_manifests_validate_against_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    version = kv.latest_version()
    docs = k8s_docs()
    assert docs
    for fname, d in docs:
        try:
            kv.validate(d, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{fname}: {d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")


def containers(d: dict) -> list[dict]:
    return d["spec"]["template"]["spec"]["containers"]


def test_k8s_services_probes_nats_and_daemonset():
    docs = k8s_docs()
    by = {(d["kind"], d["metadata"]["name"]): (f, d) for f, d in docs}
    for name in SERVICES:
        _, dep = by[("Deployment", name)]
        (c,) = containers(dep)
        assert c["command"] == ["python", "-m", f"services.{name}.main"]
        assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8080}
        assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        fields = set(settings_class(importlib.import_module(f"services.{name}.main")).model_fields)
        for e in c.get("env", []):
            if e["name"].startswith(PREFIX):
                assert e["name"][len(PREFIX):].lower() in fields, (name, e["name"])
    _, cm = by[("ConfigMap", "x0tta6bl4-common")]
    assert cm["data"]["X0TTA6BL4_HEALTH_PORT"] == "8080"
    assert all(k[len(PREFIX):].lower() in CommonSettings.model_fields for k in cm["data"])
    _, nats = by[("StatefulSet", "nats")]
    assert {"-js", "-sd", "/data"} <= set(containers(nats)[0]["args"])
    _, ds = by[("DaemonSet", "node-agent")]
    (agent,) = containers(ds)
    assert agent["command"][:3] == ["python", "-m", "x0tta6bl4.mesh.host"]
    assert {a for a in agent["command"] if a.startswith("--")} <= argparse_flags("x0tta6bl4.mesh.host")
    assert agent["readinessProbe"]["httpGet"]["port"] == 8080 and agent["livenessProbe"]["httpGet"]["path"] == "/health"


def test_spec_mesh_deployment_yaml():
    docs = [d for d in yaml.safe_load_all((K8S / "mesh-deployment.yaml").read_text()) if d]
    deps = [d for d in docs if d["kind"] == "Deployment"]
    assert deps
    for d in deps:
        for c in containers(d):
            assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
            assert c["readinessProbe"]["httpGet"]["port"] == 8080
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert cm["data"]["offline"] in ("true", "false")
    edge = next(d for d in deps if d["metadata"]["name"] == "x0tta6bl4-edge")
    init = edge["spec"]["template"]["spec"]["initContainers"][0]
    assert "edge setup" in " ".join(init["command"]) and "--offline" in " ".join(init["command"])
    # the edge CLI really has the commands and flags the manifest uses
    from typer.testing import CliRunner

    from x0tta6bl4.cli.edge import edge_app
    for sub, flags in (("setup", ["--offline", "--routes", "--if-missing", "--data-dir"]),
                       ("serve", ["--nats", "--health-port", "--data-dir"])):
        out = CliRunner().invoke(edge_app, [sub, "--help"], env={"COLUMNS": "200"})
        assert out.exit_code == 0 and all(f in out.output for f in flags), out.output
