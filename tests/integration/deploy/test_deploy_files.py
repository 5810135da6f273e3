"""Static checks of the container and Kubernetes deployment files (no Docker engine, no cluster here):
docker-compose.yml is valid for Debian's docker-compose 1.29 with the generated .env, every container gets
exactly its own identity's credentials (as the generator derives them from the secrets directory), nothing is
published beyond 127.0.0.1, nothing runs as root; every command is a real entry point of our package and
every X0TTA6BL4_* variable a setting it reads; the Kubernetes manifests (committed and generated) validate
against the Kubernetes schemas (kubernetes-validate, offline), mount only their own identity's Secret, run
restricted, and the NetworkPolicies deny by default."""
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

from x0tta6bl4.bus import subjects
from x0tta6bl4.config import PREFIX, CommonSettings
from x0tta6bl4.runtime import deploy
from x0tta6bl4.runtime.stack import SERVICES

ROOT = pathlib.Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
CD = deploy.CONTAINER_DIR


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


def identity_settings() -> set[str]:
    """The settings :meth:`Secrets.env_for` gives every process (some are read outside the Settings classes:
    the mesh host's pinned root, the SVID CA)."""
    return {"X0TTA6BL4_NATS_NKEY_FILE", "X0TTA6BL4_NATS_CA_FILE", "X0TTA6BL4_NATS_IDENTITY", "X0TTA6BL4_TRUST_FILE",
            "X0TTA6BL4_CA_CERT_FILE", "X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT", "X0TTA6BL4_TRUST_DOMAIN"}


# ---- compose ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose not installed (apt-get install -y docker-compose; `make setup` does it)")
def test_compose_config_is_valid_with_the_generated_env_and_refused_without(generated_compose, tmp_path):
    r = subprocess.run(["docker-compose", "--env-file", str(generated_compose.env_file), "-f", str(COMPOSE),
                        "config"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)
    dep = generated_compose.dep
    for name, ident in dep.containers().items():      # docker-compose's own reading of the files mounted
        svc = resolved["services"][name]
        mounted = {s["target"]: pathlib.Path(resolved["secrets"][s["source"]]["file"]) for s in svc["secrets"]}
        assert mounted == {f"{CD}/{n}": p for n, p in ident.files.items()}, name
    empty = tmp_path / "empty.env"
    empty.write_text("")
    r = subprocess.run(["docker-compose", "--env-file", str(empty), "-f", str(COMPOSE), "config", "-q"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode != 0 and "python -m x0tta6bl4.runtime.deploy compose" in r.stderr, r.stderr


def test_compose_needs_the_generated_values_no_insecure_fallback(generated_compose):
    with pytest.raises(Exception, match=r"runtime\.deploy compose first"):
        generated_compose.compose(values={})
    env = generated_compose.values
    assert env["X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT"] == generated_compose.dep.fingerprint()
    assert pathlib.Path(env["X0TTA6BL4_COMPOSE_SECRETS"]) == generated_compose.dep.root
    assert int(env["X0TTA6BL4_SECRETS_GID"]) >= 0
    assert any("docker compose up" in line for line in generated_compose.lines)


def test_compose_every_container_gets_its_own_credentials_only(generated_compose):
    c = generated_compose.compose()
    dep = generated_compose.dep
    containers = dep.containers()
    assert set(c["services"]) == set(containers), "a container without an identity, or an identity without one"
    owner: dict[pathlib.Path, set[str]] = {}
    for name, ident in containers.items():
        svc = c["services"][name]
        mounted = {s["target"]: pathlib.Path(c["secrets"][s["source"]]["file"]) for s in svc["secrets"]}
        assert mounted == {f"{CD}/{n}": p for n, p in ident.files.items()}, \
            f"{name}: mounts {sorted(mounted)} but its identity {ident.name} has {sorted(ident.files)}"
        for p in mounted.values():
            assert p.is_file(), p
            owner.setdefault(p, set()).add(name)
        env = env_names(svc.get("environment"))
        for key, value in {**ident.env, **ident.values}.items():
            assert env.get(key) == value, f"{name}: {key}={env.get(key)!r}, expected {value!r}"
        if ident.name != "nats":
            assert env["X0TTA6BL4_NATS_URL"] == "tls://nats:4222", name
    # secrets are not shared: only the public files are in more than one container
    public = {p for ident in containers.values() for n, p in ident.files.items() if n in deploy.PUBLIC}
    servers = {"nats", *(f"nats-{i}" for i in range(1, deploy.NATS_SERVERS))}    # one identity, three servers
    shared = {str(p): names for p, names in owner.items() if len(names) > 1 and p not in public and names != servers}
    assert not shared, shared
    ca_key = dep.secrets.ca_key
    assert owner[ca_key] == {"keyvault"}, "the CA key goes to keyvault only"
    for svc in SERVICES:
        assert owner[dep.secrets.signing_file(svc)] == {svc} and owner[dep.secrets.nkey_file(svc)] == {svc}
    assert c["services"]["mesh"]["environment"]["X0TTA6BL4_NATS_IDENTITY"] == "mesh-host-demo"
    assert c["services"]["dashboard"]["environment"]["X0TTA6BL4_NATS_IDENTITY"] == "dashboard"
    assert owner[dep.dashboard_token] == {"dashboard"}, "the operator's dashboard token goes to the dashboard only"
    assert owner[dep.secrets.nkey_file("dashboard")] == {"dashboard"}
    # mounted files are readable by the group the containers join, by nobody else
    for p in owner:
        mode = p.stat().st_mode & 0o777
        assert mode & 0o007 == (0o004 if p in public else 0), (p, oct(mode))
        assert p.stat().st_gid == int(generated_compose.values["X0TTA6BL4_SECRETS_GID"]), p
    assert dep.root.stat().st_mode & 0o077 == 0


def test_compose_publishes_nothing_beyond_loopback(generated_compose):
    c = generated_compose.compose()
    published = []
    for name, svc in c["services"].items():
        assert svc.get("network_mode") is None and not svc.get("privileged"), name
        for p in svc.get("ports", []):
            if isinstance(p, dict):
                assert p.get("host_ip") == "127.0.0.1", (name, p)
                published.append(int(p["published"]))
            else:
                parts = str(p).split(":")
                assert len(parts) == 3 and parts[0] == "127.0.0.1", (name, p)
                published.append(int(parts[1]))
    assert sorted(published) == [4222, 8088, 50051, 50052], published   # NATS, dashboard, governance, keyvault
    dash = c["services"]["dashboard"]
    assert dash["ports"] == ["127.0.0.1:8088:8080"]
    env = dash["environment"]
    assert (env["X0TTA6BL4_DASHBOARD_HOST"], env["X0TTA6BL4_DASHBOARD_PORT"]) == ("0.0.0.0", "8080")
    assert env["X0TTA6BL4_DASHBOARD_ALLOWED_HOSTS"] == "127.0.0.1,localhost"    # DNS rebinding: loopback names
    moved = generated_compose.compose(values={**generated_compose.values, "X0TTA6BL4_DASHBOARD_PORT": "18088"})
    assert moved["services"]["dashboard"]["ports"] == ["127.0.0.1:18088:8080"]
    conf = yaml.safe_load(generated_compose.dep.nats_conf.read_text())
    assert conf["http"] == "127.0.0.1:8222"    # monitoring on nats-server's container loopback only
    # gRPC bind addresses are explicit where a service serves gRPC
    for name in ("keyvault", "governance"):
        assert c["services"][name]["environment"]["X0TTA6BL4_GRPC_HOST"] == "0.0.0.0"


def test_compose_no_container_runs_as_root_and_filesystems_are_read_only(generated_compose):
    c = generated_compose.compose()
    gid = generated_compose.values["X0TTA6BL4_SECRETS_GID"]
    for name, svc in c["services"].items():
        user = str(svc.get("user", ""))
        assert user and user.split(":")[0] not in ("0", "root"), f"{name} runs as {user or 'the image user'}"
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"], name
        assert svc["cap_drop"] == ["ALL"] and "no-new-privileges:true" in svc["security_opt"], name
        assert svc["group_add"] == [gid], name
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            assert src in c["volumes"], f"{name}: {v} is not a named volume"
    # the images: every Dockerfile stage the file builds ends as a non-root user
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM\s+", text, flags=re.MULTILINE)[1:]
    targets = {s["build"].get("target") for s in c["services"].values() if "build" in s}
    assert targets == {None, "nats"}
    by_name = {re.match(r"\S+\s+AS\s+(\w+)", s).group(1): s for s in stages}
    for target in ("nats", list(by_name)[-1]):
        users = re.findall(r"^USER\s+(\S+)", by_name[target], re.MULTILINE)
        assert users and users[-1].split(":")[0] not in ("root", "0"), target
    assert re.search(r"^ARG NATS_IMAGE=nats:2\.10", text, re.MULTILINE)
    assert re.search(r"^ARG PYTHON_IMAGE=", text, re.MULTILINE)


def test_compose_nats_is_configured_secured_and_services_wait_for_the_provisioner(generated_compose):
    c = generated_compose.compose()
    svcs = c["services"]
    stores = set()
    for i in range(deploy.NATS_SERVERS):       # a JetStream cluster of three: nats (nats-0), nats-1, nats-2
        nats = svcs["nats" if i == 0 else f"nats-{i}"]
        assert nats["command"] == ["nats-server", "-c", f"{CD}/nats.conf", "--name", f"nats-{i}"]
        (store,) = [v.split(":")[0] for v in nats["volumes"] if v.endswith(":/data")]
        assert store in c["volumes"]
        stores.add(store)
        aliases = nats["networks"]["default"]["aliases"]
        assert f"nats-{i}.nats" in aliases and ("nats" in aliases) == (i > 0), aliases   # `nats` names all three
        assert nats["healthcheck"] == svcs["nats"]["healthcheck"] and nats["user"] == svcs["nats"]["user"]
    assert len(stores) == deploy.NATS_SERVERS, "each server its own store"
    conf = yaml.safe_load(generated_compose.dep.nats_conf.read_text())
    assert conf["tls"] == {"cert_file": f"{CD}/server.pem", "key_file": f"{CD}/server.key", "timeout": 5}
    assert conf["jetstream"]["store_dir"] == "/data" and conf["port"] == 4222
    assert conf["jetstream"]["max_file_store"] == subjects.STORE_LIMIT, "not left to the disk space free at start"
    assert "no_auth_user" not in conf and "authorization" not in conf
    users = conf["accounts"]["X0"]["users"]
    assert users and all(u["nkey"].startswith("U") and u["permissions"] for u in users)
    prov = svcs["provision"]
    assert prov["command"][:4] == ["python", "-m", "x0tta6bl4.runtime.deploy", "provision"]
    servers = ("nats", *(f"nats-{i}" for i in range(1, deploy.NATS_SERVERS)))
    assert prov["restart"] == "no" and prov["depends_on"] == {n: {"condition": "service_healthy"} for n in servers}
    assert all(svcs[s]["environment"]["X0TTA6BL4_STREAM_REPLICAS"] == "3" for s in SERVICES)
    cluster = conf["cluster"]
    assert cluster["routes"] == [f"nats-route://nats-{i}.nats:6222" for i in range(deploy.NATS_SERVERS)]
    assert cluster["no_advertise"] is True and cluster["tls"]["verify"] is True
    for name, s in svcs.items():
        assert s.get("restart") in ("unless-stopped", "always", "on-failure", "no"), name
        if name == "provision":
            continue
        assert s["healthcheck"]["test"], name
        if name.startswith("nats"):
            assert "127.0.0.1:8222/healthz" in " ".join(s["healthcheck"]["test"])
            continue
        probe = "/ready" if name == "dashboard" else "/health"     # the dashboard: healthy once it read the bus
        assert probe in " ".join(s["healthcheck"]["test"]) and "8080" in " ".join(s["healthcheck"]["test"])
        deps = s["depends_on"]
        assert deps["nats"]["condition"] == "service_healthy", name
        if name in SERVICES:
            assert deps["provision"]["condition"] == "service_completed_successfully", name
        assert all(d["condition"] in ("service_healthy", "service_completed_successfully")
                   for d in deps.values()), name
        assert s["build"]["dockerfile"] == "Dockerfile"
    for name in ("governance", "executor", "mesh"):
        assert svcs[name]["depends_on"]["keyvault"]["condition"] == "service_healthy", name
    assert svcs["dashboard"]["depends_on"]["provision"]["condition"] == "service_completed_successfully"
    assert svcs["dashboard"]["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", SERVICES)
def test_compose_service_command_is_our_entry_point_and_env_are_real_settings(generated_compose, name):
    s = generated_compose.compose()["services"][name]
    cmd = s["command"]
    assert cmd[:2] == ["python", "-m"] and cmd[2] == f"services.{name}.main" and len(cmd) == 3
    module = importlib.import_module(cmd[2])
    assert callable(getattr(module, "main", None)), f"{cmd[2]} has no main()"
    fields = set(settings_class(module).model_fields)
    for var in env_names(s["environment"]):
        assert var.startswith(PREFIX), var
        assert var[len(PREFIX):].lower() in fields or var in identity_settings(), \
            f"{name}: {var} is not a setting of {cmd[2]}"
    assert env_names(s["environment"])["X0TTA6BL4_HEALTH_PORT"] == "8080"


def test_compose_mesh_host_flags_exist_and_it_uses_keyvault(generated_compose):
    cmd = generated_compose.compose()["services"]["mesh"]["command"]
    assert cmd[:3] == ["python", "-m", "x0tta6bl4.mesh.host"]
    flags = argparse_flags("x0tta6bl4.mesh.host")
    used = {a for a in cmd if a.startswith("--")}
    assert used <= flags, used - flags
    assert cmd[cmd.index("--health-port") + 1] == "8080"
    assert cmd[cmd.index("--nats") + 1] == "tls://nats:4222"
    assert cmd[cmd.index("--keyvault") + 1] == "keyvault:50052"
    assert cmd[cmd.index("--topology") + 1] == "grid:9"
    assert generated_compose.dep.mesh_hosts()[deploy.DEMO_HOST] == list(deploy.DEMO_NODES)


def test_compose_dashboard_command_and_env_are_real_settings(generated_compose):
    s = generated_compose.compose()["services"]["dashboard"]
    assert s["command"] == ["python", "-m", "x0tta6bl4.dashboard"]
    module = importlib.import_module("x0tta6bl4.dashboard.__main__")
    fields = set(settings_class(module).model_fields)
    for var in env_names(s["environment"]):
        assert var.startswith(PREFIX) and (var[len(PREFIX):].lower() in fields or var in identity_settings()), var
    assert s["image"] == generated_compose.compose()["services"]["monitor"]["image"]      # the project image


def test_dockerfile_multistage_nonroot_healthcheck_and_secrets_never_in_the_context():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, re.MULTILINE)
    assert len(stages) >= 3 and stages[-1] == "runtime", stages
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*", text, re.MULTILINE) and "/health" in text
    assert "COPY services" in text.replace("--chown=10001:10001 ", "")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".env", "deploy", "var"} <= set(ignored)
    gitignored = (ROOT / ".gitignore").read_text().split()
    assert {"/.env", "/deploy/compose/secrets/", "/deploy/k8s/secrets/"} <= set(gitignored)


# ---- Kubernetes -------------------------------------------------------------------------------------------
def k8s_docs() -> list[tuple[str, dict]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        out += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def generated_docs(gen) -> list[tuple[str, dict]]:
    out = []
    for f in sorted((gen.dep.root / "manifests").glob("*.yaml")):
        out += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def pod_spec(d: dict) -> dict:
    return d["spec"]["template"]["spec"]


def workloads(docs) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job",
                                                                       "DaemonSet")}


def test_k8s_manifests_validate_against_kubernetes_schemas(generated_k8s):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    version = kv.latest_version()
    docs = k8s_docs() + generated_docs(generated_k8s)
    assert {d["kind"] for _, d in docs} >= {"Namespace", "ConfigMap", "NetworkPolicy", "StatefulSet", "Job",
                                            "Deployment", "Secret", "Service"}
    for fname, d in docs:
        try:
            kv.validate(d, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{fname}: {d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")


# workload -> the identity whose Secret it mounts
K8S_IDENTITIES = {**{s: s for s in SERVICES}, "nats": "nats", "x0tta6bl4-provision": "provisioner",
                  "x0tta6bl4-mesh": "mesh-host-demo", "x0tta6bl4-edge": "edge", "dashboard": "dashboard"}


def test_k8s_every_pod_mounts_only_its_own_identity_secret_with_matching_settings(generated_k8s):
    dep = generated_k8s.dep
    idents = {i.name: i for i in dep.identities()}
    secrets = {d["metadata"]["name"]: d for _, d in generated_docs(generated_k8s) if d["kind"] == "Secret"}
    assert set(secrets) == {i.secret_name for i in idents.values()}, "one Secret per identity"
    for i in idents.values():
        assert set(secrets[i.secret_name]["data"]) == set(i.files), i.name
    expected = dict(K8S_IDENTITIES)
    for node in ("worker-1", "worker-2-example"):
        expected[f"node-agent-{node}"] = f"mesh-host-k8s-{node}"
    wl = workloads(k8s_docs() + generated_docs(generated_k8s))
    assert set(wl) == set(expected), set(wl) ^ set(expected)
    for name, d in wl.items():
        ident = idents[expected[name]]
        spec = pod_spec(d)
        mounted = [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v]
        assert mounted == [ident.secret_name], f"{name} mounts {mounted}"
        vol = next(v["name"] for v in spec["volumes"] if "secret" in v)
        (c,) = spec["containers"]
        mount = next(m for m in c["volumeMounts"] if m["name"] == vol)
        assert mount == {"name": vol, "mountPath": CD, "readOnly": True}, name
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        for key, value in ident.env.items():
            assert env.get(key) == value, f"{name}: {key}={env.get(key)!r}, expected {value!r}"
        if ident.name != "nats":
            assert env["X0TTA6BL4_NATS_IDENTITY"] == ident.name, name
            refs = [e["configMapRef"]["name"] for e in c["envFrom"]]
            assert refs == ["x0tta6bl4-common", deploy.DEPLOYMENT_CONFIGMAP], name
            for key, value in env.items():   # every file it names is in its Secret
                if value and value.startswith(CD + "/"):
                    assert value[len(CD) + 1:] in ident.files, (name, key)
        for other in spec.get("initContainers", []):
            assert not any(m["name"] == vol for m in other.get("volumeMounts", [])), name
    cm = next(d for _, d in generated_docs(generated_k8s) if d["kind"] == "ConfigMap"
              and d["metadata"]["name"] == deploy.DEPLOYMENT_CONFIGMAP)
    assert cm["data"] == {"X0TTA6BL4_KEYVAULT_ROOT_FINGERPRINT": dep.fingerprint(),
                          "X0TTA6BL4_TRUST_DOMAIN": "x0tta6bl4.mesh"}
    assert set(secrets["x0tta6bl4-dashboard"]["data"]) == {"nats.nk", "ca.pem", "trust.json", "dashboard.token"}
    assert all("dashboard.token" not in s["data"] for n, s in secrets.items() if n != "x0tta6bl4-dashboard")
    keyvault = secrets["x0tta6bl4-keyvault"]["data"]
    assert "ca.key" in keyvault and "master.key" in keyvault
    assert all("ca.key" not in s["data"] for n, s in secrets.items() if n != "x0tta6bl4-keyvault")


def test_k8s_pods_run_restricted(generated_k8s):
    for name, d in workloads(k8s_docs() + generated_docs(generated_k8s)).items():
        spec = pod_spec(d)
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, name
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec["containers"] + spec.get("initContainers", []):
            csc = c["securityContext"]
            assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert csc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
            assert csc.get("runAsUser", 1) != 0 and not csc.get("privileged"), (name, c["name"])
        assert not any("hostPath" in v for v in spec["volumes"]), name
        assert not spec.get("hostNetwork"), name
    ns = next(d for _, d in k8s_docs() if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_k8s_network_policies_deny_by_default_and_admit_only_the_callers(generated_k8s):
    docs = k8s_docs()
    pols = {d["metadata"]["name"]: d["spec"] for _, d in docs if d["kind"] == "NetworkPolicy"}
    deny = pols["default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    ingress: dict[str, list] = {}
    for name, p in pols.items():
        for rule in p.get("ingress", []):
            assert rule.get("from"), f"{name}: an ingress rule from anywhere"
            assert rule.get("ports"), f"{name}: an ingress rule to every port"
            target = p["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
            ingress.setdefault(target, []).append(rule)
        for rule in p.get("egress", []):
            assert rule.get("to") and rule.get("ports"), f"{name}: egress anywhere"

    def admitted(target: str) -> set[tuple[str, int]]:
        return {(next(iter(f["podSelector"]["matchLabels"].items()))[0] + "=" +
                 next(iter(f["podSelector"]["matchLabels"].values())), port["port"])
                for rule in ingress[target] for f in rule["from"] for port in rule["ports"]}
    assert set(ingress) == {"nats", "keyvault", "governance", "dashboard"}
    assert admitted("nats") == {("x0tta6bl4/bus=client", 4222), ("app.kubernetes.io/name=nats", 6222)}  # routes
    assert admitted("keyvault") == {("x0tta6bl4/keyvault=client", 50052)}
    assert admitted("governance") == {("x0tta6bl4/governance=client", 50051)}
    assert admitted("dashboard") == {("x0tta6bl4/dashboard=client", 8080)}
    # who carries which label: everything on the bus; keyvault's gRPC only for the mesh hosts
    for name, d in workloads(docs + generated_docs(generated_k8s)).items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert (labels.get("x0tta6bl4/bus") == "client") == (name != "nats"), name
        mesh_host = K8S_IDENTITIES.get(name, "mesh-host-").startswith("mesh-host-")
        assert (labels.get("x0tta6bl4/keyvault") == "client") == mesh_host, name
        assert "x0tta6bl4/governance" not in labels and "x0tta6bl4/dashboard" not in labels, name


def test_k8s_services_nats_and_grpc_bind_addresses(generated_k8s):
    docs = k8s_docs()
    by = {(d["kind"], d["metadata"]["name"]): d for _, d in docs}
    for name in SERVICES:
        dep = by[("Deployment", name)]
        (c,) = pod_spec(dep)["containers"]
        assert c["command"] == ["python", "-m", f"services.{name}.main"]
        assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8080}
        assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
        fields = set(settings_class(importlib.import_module(f"services.{name}.main")).model_fields)
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        for var in env:
            if var.startswith(PREFIX):
                assert var[len(PREFIX):].lower() in fields or var in identity_settings(), (name, var)
        if name in ("keyvault", "governance"):
            assert env["X0TTA6BL4_GRPC_HOST"] == "0.0.0.0" and env["X0TTA6BL4_GRPC_PORT"], name
    (c,) = pod_spec(by[("Deployment", "dashboard")])["containers"]
    assert c["command"] == ["python", "-m", "x0tta6bl4.dashboard"] and c["image"] == "x0tta6bl4:latest"
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8080}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
    fields = set(settings_class(importlib.import_module("x0tta6bl4.dashboard.__main__")).model_fields)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert all(v[len(PREFIX):].lower() in fields or v in identity_settings() for v in env), env
    assert env["X0TTA6BL4_DASHBOARD_PORT"] == "8080"
    assert env["X0TTA6BL4_DASHBOARD_ALLOWED_HOSTS"] == "127.0.0.1,localhost"
    svc = by[("Service", "dashboard")]["spec"]
    assert [(p["port"], p["targetPort"]) for p in svc["ports"]] == [(8080, 8080)] and "type" not in svc   # ClusterIP
    cm = by[("ConfigMap", "x0tta6bl4-common")]
    assert cm["data"]["X0TTA6BL4_HEALTH_PORT"] == "8080" and cm["data"]["X0TTA6BL4_NATS_URL"] == "tls://nats:4222"
    assert all(k[len(PREFIX):].lower() in CommonSettings.model_fields for k in cm["data"])
    nats = by[("StatefulSet", "nats")]
    (c,) = pod_spec(nats)["containers"]
    assert c["command"] == ["nats-server", "-c", f"{CD}/nats.conf", "--name", "$(POD_NAME)"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    assert [p["containerPort"] for p in c["ports"]] == [4222, 6222]
    assert "8222" in " ".join(c["readinessProbe"]["exec"]["command"])     # probed from inside the pod
    # a JetStream cluster of three behind the headless Service `nats` (nats-<i>.nats: the routes' hosts)
    assert nats["spec"]["replicas"] == deploy.NATS_SERVERS == 3 and nats["spec"]["serviceName"] == "nats"
    svc = by[("Service", "nats")]["spec"]
    assert [p["port"] for p in svc["ports"]] == [4222] and svc["clusterIP"] == "None"
    assert svc["publishNotReadyAddresses"] is True
    pdb = by[("PodDisruptionBudget", "nats")]["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["selector"]["matchLabels"] == {"app.kubernetes.io/name": "nats"}
    assert cm["data"]["X0TTA6BL4_STREAM_REPLICAS"] == "3"
    job = by[("Job", "x0tta6bl4-provision")]
    (c,) = pod_spec(job)["containers"]
    assert c["command"][:4] == ["python", "-m", "x0tta6bl4.runtime.deploy", "provision"]
    conf = yaml.safe_load(generated_k8s.dep.nats_conf.read_text())
    assert conf["http"] == "127.0.0.1:8222" and conf["tls"]["cert_file"] == f"{CD}/server.pem"
    cluster = conf["cluster"]
    assert cluster["port"] == 6222 and cluster["no_advertise"] is True
    assert cluster["routes"] == [f"nats-route://nats-{i}.nats:6222" for i in range(3)]
    assert cluster["tls"]["verify"] is True and len(cluster["tls"]["pinned_certs"]) == 1
    assert {cluster["tls"][k] for k in ("cert_file", "key_file", "ca_file")} == {f"{CD}/route.pem", f"{CD}/route.key",
                                                                               f"{CD}/ca.pem"}


def test_k8s_node_agents_have_their_own_identity_and_keyvault(generated_k8s):
    docs = generated_docs(generated_k8s)
    agents = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Deployment"}
    assert set(agents) == {"node-agent-worker-1", "node-agent-worker-2-example"}
    hosts = generated_k8s.dep.mesh_hosts()
    flags = argparse_flags("x0tta6bl4.mesh.host")
    for name, d in agents.items():
        node = name.removeprefix("node-agent-")
        assert hosts[f"k8s-{node}"] == [node]
        spec = pod_spec(d)
        term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert term[0]["matchFields"][0]["key"] == "metadata.name"
        (c,) = spec["containers"]
        assert c["command"][:3] == ["python", "-m", "x0tta6bl4.mesh.host"]
        assert {a for a in c["command"] if a.startswith("--")} <= flags
        assert c["command"][c["command"].index("--keyvault") + 1] == "keyvault:50052"
        topo = next(x for _, x in docs if x["kind"] == "ConfigMap" and x["metadata"]["name"] == name)
        assert yaml.safe_load(topo["data"]["topology.yaml"])["nodes"] == [node]
        assert c["readinessProbe"]["httpGet"]["port"] == 8080 and c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "Worker.2.Example" in str(agents["node-agent-worker-2-example"])   # pinned to the node's real name


def test_spec_mesh_deployment_yaml():
    docs = [d for d in yaml.safe_load_all((K8S / "mesh-deployment.yaml").read_text()) if d]
    deps = [d for d in docs if d["kind"] == "Deployment"]
    assert deps
    for d in deps:
        for c in pod_spec(d)["containers"]:
            assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
            assert c["readinessProbe"]["httpGet"]["port"] == 8080
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert cm["data"]["offline"] in ("true", "false")
    mesh = next(d for d in deps if d["metadata"]["name"] == "x0tta6bl4-mesh")
    (c,) = pod_spec(mesh)["containers"]
    assert {a for a in c["command"] if a.startswith("--")} <= argparse_flags("x0tta6bl4.mesh.host")
    assert c["command"][c["command"].index("--keyvault") + 1] == "keyvault:50052"
    assert cm["data"]["topology"] == "grid:9"     # the nodes of the demo host's identity
    edge = next(d for d in deps if d["metadata"]["name"] == "x0tta6bl4-edge")
    init = pod_spec(edge)["initContainers"][0]
    assert "edge setup" in " ".join(init["command"]) and "--offline" in " ".join(init["command"])
    # the edge CLI really has the commands and flags the manifest uses
    from typer.testing import CliRunner

    from x0tta6bl4.cli.edge import edge_app
    for sub, flags in (("setup", ["--offline", "--routes", "--if-missing", "--data-dir"]),
                       ("serve", ["--nats", "--health-port", "--data-dir"])):
        out = CliRunner().invoke(edge_app, [sub, "--help"], env={"COLUMNS": "200"})
        assert out.exit_code == 0 and all(f in out.output for f in flags), out.output


def test_k8s_blue_green_green_keeps_its_identity_and_network_labels():
    """Blue-green on Kubernetes applies a renamed copy of the mesh Deployment: it must keep the demo host's
    Secret and the labels the NetworkPolicies admit to NATS and keyvault by, and validate."""
    from x0tta6bl4.execution.bluegreen_local import green_deployment
    from x0tta6bl4.execution.deploy import DeploySpec
    docs = list(yaml.safe_load_all((K8S / "mesh-deployment.yaml").read_text()))
    green = green_deployment(docs, DeploySpec.from_params({"version": "v2"}))
    labels = green["spec"]["template"]["metadata"]["labels"]
    assert labels["x0tta6bl4/bus"] == "client" and labels["x0tta6bl4/keyvault"] == "client"
    assert green["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [v["secret"]["secretName"] for v in pod_spec(green)["volumes"] if "secret" in v] == \
        ["x0tta6bl4-mesh-host-demo"]
    kv = pytest.importorskip("kubernetes_validate")
    kv.validate(green, kv.latest_version(), strict=True)
