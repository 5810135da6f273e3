"""Secrets and generated files for the container deployments (docker-compose.yml, deploy/k8s/).

    python -m x0tta6bl4.runtime.deploy compose [--out deploy/compose/secrets]       # then: docker compose up
    python -m x0tta6bl4.runtime.deploy k8s [--out deploy/k8s/secrets] [--node-agent NODE ...]
    python -m x0tta6bl4.runtime.deploy provision                                   # in a container

``compose`` and ``k8s`` make the deployment's secrets (:func:`x0tta6bl4.runtime.secrets.init`: CA, NATS
server certificate, one nkey per identity, one ML-DSA-65 signing seed per service, trust bundle, keyvault
root), give the demo mesh host (and each Kubernetes node agent) its own ``mesh-host-<host>`` identity,
and write nats-server's configuration for the container layout. They are idempotent: what exists is kept,
so running them again after adding a mesh host only adds what is new (then reload nats-server).

Every container sees its own files, and only those, under :data:`CONTAINER_DIR` with the same names in
compose and Kubernetes (:data:`FILES`): ``nats.nk`` (its identity's nkey), ``ca.pem`` and ``trust.json``
(public), ``signing.seed`` (a service's own signing key), keyvault alone ``ca.key`` (it issues the X.509
SVIDs), ``keyvault-root.key`` and ``hosts.json``, governance alone ``admin.token``, the dashboard alone
``dashboard.token`` (the operator's token for its write action), nats-server alone ``nats.conf``,
``server.pem`` and ``server.key``.

* compose: the files stay in the secrets directory and docker-compose.yml mounts each container's own as
  Docker secrets (read-only bind mounts). The generator writes ``.env`` beside docker-compose.yml with the
  deployment's values (pinned keyvault root fingerprint, trust domain, the secrets directory, the group that
  may read the mounted files) and makes the mounted files readable by that group only (mode 0640; the
  directory stays 0700). Run as root, it gives them to the containers' user (10001) instead.
* k8s: ``<out>/manifests/`` gets one Secret per identity (its files only), the ConfigMap
  ``x0tta6bl4-deployment`` (the pinned fingerprint, the trust domain) and, per ``--node-agent``, a node
  agent pinned to that Kubernetes node with its own identity. The committed manifests reference them by name.

Generated secrets are never committed (.gitignore).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import pathlib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from x0tta6bl4.bus import subjects
from x0tta6bl4.bus.permissions import AUDIT_READER, DASHBOARD, EDGE, MESH_HOST_PREFIX, OPERATOR, PROVISIONER, SERVICES
from x0tta6bl4.keyvault import pin
from x0tta6bl4.runtime.secrets import ROUTE_NAMES, Secrets, SecretsError
from x0tta6bl4.runtime.secrets import init as init_secrets

CONTAINER_DIR = "/run/secrets/x0tta6bl4"
"""Where a container finds its own credentials (compose and Kubernetes alike)."""
CONTAINER_UID = 10001                      # the image's user (Dockerfile)
NAMESPACE = "x0tta6bl4"
NATS_PORT = 4222
NATS_STORE = "/data"
NATS_MONITOR = "127.0.0.1:8222"            # health checks inside nats-server's own container only
NATS_SERVER_NAME = "x0tta6bl4-nats"
NATS_SERVERS = 3                           # a JetStream cluster: nats-0..2 (compose services, StatefulSet pods)
NATS_CLUSTER_PORT = 6222                   # routes between them (mutual TLS with the route certificate)
DEMO_HOST = "demo"
DEMO_NODES = tuple(f"n{i}" for i in range(9))   # grid:9, the demo mesh of compose and mesh-deployment.yaml
K8S_AGENT_PREFIX = "k8s-"                  # the mesh host of Kubernetes node N is k8s-<N>
SECRET_PREFIX = "x0tta6bl4-"               # Kubernetes Secret of identity I: x0tta6bl4-<I>
NATS_SECRET = SECRET_PREFIX + "nats"
DEPLOYMENT_CONFIGMAP = SECRET_PREFIX + "deployment"

ENV_ADMIN_TOKEN_FILE = "X0TTA6BL4_ADMIN_TOKEN_FILE"
ENV_MASTER_KEY_FILE = "X0TTA6BL4_MASTER_KEY_FILE"
ENV_DASHBOARD_TOKEN_FILE = "X0TTA6BL4_DASHBOARD_TOKEN_FILE"
ENV_TRUST_DOMAIN = "X0TTA6BL4_TRUST_DOMAIN"
ENV_IDENTITY = "X0TTA6BL4_NATS_IDENTITY"
# compose: what docker-compose.yml interpolates from .env
ENV_COMPOSE_SECRETS = "X0TTA6BL4_COMPOSE_SECRETS"
ENV_SECRETS_GID = "X0TTA6BL4_SECRETS_GID"

# container file names
NKEY, CA, TRUST, SIGNING = "nats.nk", "ca.pem", "trust.json", "signing.seed"
CA_KEY, ROOT_KEY, HOSTS, ADMIN_TOKEN, MASTER_KEY = "ca.key", "keyvault-root.key", "hosts.json", "admin.token", \
    "master.key"
NATS_CONF, SERVER_CERT, SERVER_KEY = "nats.conf", "server.pem", "server.key"
ROUTE_CERT, ROUTE_KEY = "route.pem", "route.key"
DASHBOARD_TOKEN = "dashboard.token"
PUBLIC = frozenset({CA, TRUST, HOSTS, NATS_CONF, SERVER_CERT, ROUTE_CERT})
FILES = {NKEY: "the identity's NATS nkey seed", CA: "the deployment CA certificate (public)",
         TRUST: "the trust bundle: the services' public signing keys (public)",
         SIGNING: "the service's ML-DSA-65 signing seed", CA_KEY: "the CA key (keyvault only: it issues SVIDs)",
         ROOT_KEY: "keyvault's root ML-DSA-65 seed (keyvault only)",
         HOSTS: "mesh hosts and their nodes (keyvault only)", ADMIN_TOKEN: "the ledger admin token (governance)",
         MASTER_KEY: "keyvault's keystore master key (Kubernetes: replicas share it)",
         NATS_CONF: "nats-server's configuration", SERVER_CERT: "nats-server's certificate",
         SERVER_KEY: "nats-server's private key",
         ROUTE_CERT: "the certificate clustered nats-servers present on their routes",
         ROUTE_KEY: "the route certificate's private key (nats-server only)",
         DASHBOARD_TOKEN: "the operator's dashboard token: its write action (the dashboard only)"}


class DeployError(Exception):
    """Bad input or an incomplete secrets directory; str() is one line naming what is wrong."""


@dataclass(frozen=True)
class Identity:
    """What one container of one identity gets: its files and its settings."""
    name: str                                      # bus identity ("nats" for nats-server)
    service: str | None                            # the service it runs (one of the six), if any
    files: Mapping[str, pathlib.Path]              # container file name -> host file
    env: Mapping[str, str]                         # X0TTA6BL4_* settings naming files (container paths)
    values: Mapping[str, str] = field(default_factory=dict)   # the other settings (identity, pinned root)

    @property
    def secret_name(self) -> str:
        """Its Kubernetes Secret."""
        return SECRET_PREFIX + self.name


def mesh_host_identity(host: str) -> str:
    return MESH_HOST_PREFIX + subjects.token(host)


def k8s_node_id(node_name: str) -> str:
    """The mesh node id of a Kubernetes node: lower-case, characters other than [a-z0-9-] as '-', at most
    63 characters."""
    out = re.sub(r"[^a-z0-9-]", "-", node_name.lower())[:63].strip("-")
    if not out:
        raise DeployError(f"--node-agent {node_name!r}: not a Kubernetes node name")
    return out


@dataclass
class Deployment:
    """One deployment's secrets directory seen from the containers."""
    secrets: Secrets
    kubernetes: bool = False

    @property
    def root(self) -> pathlib.Path:
        return self.secrets.root

    # ---- extra files this generator makes -----------------------------------------------------------
    @property
    def nats_conf(self) -> pathlib.Path:
        return self.root / "nats" / "nats.conf"

    @property
    def admin_token(self) -> pathlib.Path:
        return self.root / "governance" / "admin.token"

    @property
    def dashboard_token(self) -> pathlib.Path:
        """The operator's dashboard token (where the embedded stack keeps it too: dashboard/process.py)."""
        return self.root / "dashboard" / "token"

    @property
    def master_key(self) -> pathlib.Path:
        return self.root / "keyvault" / "master.key"

    @property
    def root_key(self) -> pathlib.Path:
        return self.root / pin.ROOT_KEY_FILE

    def fingerprint(self) -> str:
        fp = pin.pinned_fingerprint(self.root)
        if fp is None:
            raise DeployError(f"{self.root / pin.ROOT_PUB_FILE} is missing: run the generator again")
        return fp

    def trust_domain(self) -> str:
        return self.secrets.trust().trust_domain

    # ---- identities ------------------------------------------------------------------------------------
    def identity(self, name: str, service: str | None = None) -> Identity:
        """The files and settings of a container of bus identity ``name`` (running ``service``), derived from
        :meth:`Secrets.env_for` with host paths replaced by container paths; DeployError for a file it names
        that this module does not know how to mount."""
        s = self.secrets
        names: dict[pathlib.Path, str] = {s.nkey_file(name): NKEY, s.ca_cert: CA, s.trust_file: TRUST,
                                          s.ca_key: CA_KEY, s.hosts_file: HOSTS, self.root_key: ROOT_KEY}
        if service is not None:
            names[s.signing_file(service)] = SIGNING
        files: dict[str, pathlib.Path] = {}
        env: dict[str, str] = {}
        values: dict[str, str] = {}
        for key, value in s.env_for(name, service=service).items():
            path = pathlib.Path(value)
            if path.is_absolute() and self.root in path.parents:
                cname = names.get(path)
                if cname is None:
                    raise DeployError(f"{key}={value}: runtime/deploy.py does not know how to mount this file "
                                      "into a container (add it to Deployment.identity)")
                files[cname] = path
                env[key] = f"{CONTAINER_DIR}/{cname}"
            else:
                values[key] = value
        if service == "governance":
            files[ADMIN_TOKEN] = self.admin_token
            env[ENV_ADMIN_TOKEN_FILE] = f"{CONTAINER_DIR}/{ADMIN_TOKEN}"
        if name == DASHBOARD:
            files[DASHBOARD_TOKEN] = self.dashboard_token
            env[ENV_DASHBOARD_TOKEN_FILE] = f"{CONTAINER_DIR}/{DASHBOARD_TOKEN}"
        if service == "keyvault" and self.kubernetes:
            files[MASTER_KEY] = self.master_key
            env[ENV_MASTER_KEY_FILE] = f"{CONTAINER_DIR}/{MASTER_KEY}"
        for cname, path in files.items():
            if not path.is_file():
                raise DeployError(f"{path}: missing ({FILES[cname]}); run the generator again")
        return Identity(name, service, files, env, values)

    def nats(self) -> Identity:
        """nats-server's container (each server of the cluster): its configuration, its certificate and key, the
        route certificate and key and the CA (the routes' mutual TLS)."""
        files = {NATS_CONF: self.nats_conf, SERVER_CERT: self.secrets.server_cert, SERVER_KEY: self.secrets.server_key,
                 ROUTE_CERT: self.secrets.route_cert, ROUTE_KEY: self.secrets.route_key, CA: self.secrets.ca_cert}
        return Identity("nats", None, files, {})

    def mesh_hosts(self) -> dict[str, list[str]]:
        return self.secrets.hosts()

    def containers(self) -> dict[str, Identity]:
        """Every container identity of the deployment by its compose service / Kubernetes workload name."""
        out = {"nats": self.nats(), **{f"nats-{i}": self.nats() for i in range(1, NATS_SERVERS)},
               "provision": self.identity(PROVISIONER)}
        out.update({svc: self.identity(svc, svc) for svc in SERVICES})
        out["mesh"] = self.identity(mesh_host_identity(DEMO_HOST))
        out["dashboard"] = self.identity(DASHBOARD)
        return out

    def identities(self) -> list[Identity]:
        """Everything that gets a Kubernetes Secret: nats-server, the services, the provisioner, the operator
        and the audit reader (for tools run in the cluster), the edge node's sync, the dashboard, every mesh
        host."""
        out = [self.nats(), self.identity(PROVISIONER), *(self.identity(s, s) for s in SERVICES),
               self.identity(OPERATOR), self.identity(AUDIT_READER), self.identity(EDGE), self.identity(DASHBOARD)]
        out += [self.identity(mesh_host_identity(h)) for h in sorted(self.mesh_hosts())]
        return out

    def deployment_values(self) -> dict[str, str]:
        """The settings every container gets that are not files (compose: .env; Kubernetes: a ConfigMap)."""
        return {pin.ENV_FINGERPRINT: self.fingerprint(), ENV_TRUST_DOMAIN: self.trust_domain()}

    # ---- nats-server ----------------------------------------------------------------------------------
    def nats_config(self) -> str:
        """nats-server's configuration for its container: TLS with the deployment's server certificate, the
        accounts, nkey users and permissions of every identity, JetStream in /data, monitoring on the
        container's loopback only."""
        conf = json.loads(self.secrets.nats_config(NATS_PORT, pathlib.Path(NATS_STORE), host="0.0.0.0",
                                                   name=NATS_SERVER_NAME))
        conf["tls"]["cert_file"] = f"{CONTAINER_DIR}/{SERVER_CERT}"
        conf["tls"]["key_file"] = f"{CONTAINER_DIR}/{SERVER_KEY}"
        conf["http"] = NATS_MONITOR
        # the cluster: every server routes to nats-0..2.nats (a route to itself is recognised and dropped) over
        # mutual TLS with the route certificate (its key pinned); each server's name comes from its command line
        # (--name); clients are not told the servers' addresses (they reach `nats`, which names every server)
        block = self.secrets.cluster_block(NATS_CLUSTER_PORT, [f"nats-route://{name}:{NATS_CLUSTER_PORT}"
                                                               for name in ROUTE_NAMES[:NATS_SERVERS]],
                                           host="0.0.0.0", name="x0tta6bl4")
        block["tls"].update(cert_file=f"{CONTAINER_DIR}/{ROUTE_CERT}", key_file=f"{CONTAINER_DIR}/{ROUTE_KEY}",
                            ca_file=f"{CONTAINER_DIR}/{CA}")
        block["no_advertise"] = True
        conf["cluster"] = block
        return json.dumps(conf, indent=1) + "\n"


# ---- generating ----------------------------------------------------------------------------------------
def _write(path: pathlib.Path, data: bytes, mode: int) -> bool:
    """Write atomically when the content changed; True if written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_bytes() == data:
        os.chmod(path, mode)
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def parse_mesh_hosts(specs: Iterable[str]) -> dict[str, list[str]]:
    """``NAME=N1,N2`` -> {NAME: [N1, N2]}; DeployError naming a malformed one."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, nodes = spec.partition("=")
        node_list = [n.strip() for n in nodes.split(",") if n.strip()]
        if not sep or not name.strip() or not node_list:
            raise DeployError(f"--mesh-host {spec!r}: expected NAME=NODE[,NODE...] (e.g. lab=n0,n1)")
        if name.strip() in out:
            raise DeployError(f"--mesh-host {name.strip()!r} is given twice")
        out[name.strip()] = node_list
    return out


def generate(out: str | pathlib.Path, *, kubernetes: bool, trust_domain: str | None = None,
             force: bool = False, mesh_hosts: Mapping[str, Sequence[str]] | None = None,
             node_agents: Sequence[str] = (), made: list[str] | None = None) -> Deployment:
    """Make or complete a deployment's secrets directory ``out`` (idempotent)."""
    from x0tta6bl4.pqc.keystore import MasterKey
    made = made if made is not None else []
    hosts = {DEMO_HOST: list(DEMO_NODES), **dict(mesh_hosts or {})}
    for node in node_agents:
        nid = k8s_node_id(node)
        hosts[K8S_AGENT_PREFIX + nid] = [nid]
    try:
        secrets = init_secrets(out, trust_domain, force=force, made=made)
        known = secrets.hosts()
        for host, nodes in hosts.items():
            if sorted(set(nodes)) != known.get(host):
                secrets.add_mesh_host(host, nodes)
                made.append(f"mesh host identity {mesh_host_identity(host)} for {', '.join(nodes)}")
    except ValueError as e:          # a bad host or node name (permissions.mesh_host)
        raise DeployError(str(e)) from None
    dep = Deployment(secrets, kubernetes=kubernetes)
    if force or not dep.admin_token.is_file():
        token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=") + b"\n"
        _write(dep.admin_token, token, 0o600)
        made.append(str(dep.admin_token.relative_to(dep.root)))
    if force or not dep.dashboard_token.is_file():
        token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=") + b"\n"
        _write(dep.dashboard_token, token, 0o600)
        made.append(str(dep.dashboard_token.relative_to(dep.root)))
    if kubernetes and (force or not dep.master_key.is_file()):
        dep.master_key.unlink(missing_ok=True)
        MasterKey.generate().write_file(dep.master_key)
        made.append(str(dep.master_key.relative_to(dep.root)))
    if _write(dep.nats_conf, dep.nats_config().encode(), 0o600):
        made.append(str(dep.nats_conf.relative_to(dep.root)))
    return dep


def compose_files(dep: Deployment) -> tuple[int, list[pathlib.Path]]:
    """Make the files docker-compose.yml mounts readable by the containers: group-readable (0640, public
    ones 0644) for the invoking user's group, which the containers join (``group_add``); as root, owned by
    the containers' user instead. The directory stays 0700. Returns the group id and the files."""
    files = sorted({p for ident in dep.containers().values() for p in ident.files.values()})
    public = {p for ident in dep.containers().values() for n, p in ident.files.items() if n in PUBLIC}
    root = os.getuid() == 0
    gid = CONTAINER_UID if root else os.getgid()
    for p in files:
        os.chown(p, CONTAINER_UID if root else -1, gid)
        os.chmod(p, 0o644 if p in public else 0o640)
    os.chmod(dep.root, 0o700)
    return gid, files


def write_env_file(path: pathlib.Path, values: Mapping[str, str]) -> None:
    """Set these keys in a dotenv file (docker compose reads ``.env`` beside docker-compose.yml), keeping
    every other line."""
    lines = path.read_text().splitlines() if path.is_file() else []
    header = "# deployment values written by `python -m x0tta6bl4.runtime.deploy compose` (not secrets; not committed)"
    kept = [ln for ln in lines if ln.split("=", 1)[0].strip() not in values and ln != header]
    text = "\n".join([*kept, header, *(f"{k}={v}" for k, v in values.items())]) + "\n"
    _write(path, text.encode(), 0o644)


def compose(out: pathlib.Path, env_file: pathlib.Path, **kw: Any) -> list[str]:
    made: list[str] = []
    dep = generate(out, kubernetes=False, made=made, **kw)
    gid, files = compose_files(dep)
    values = {**dep.deployment_values(), ENV_COMPOSE_SECRETS: str(dep.root), ENV_SECRETS_GID: str(gid)}
    write_env_file(env_file, values)
    return [f"secrets in {dep.root} (trust domain {dep.trust_domain()}): "
            + (f"made {len(made)}: {', '.join(made)}" if made else "complete, nothing to make"),
            f"{len(files)} files mounted into containers, readable by group {gid}; {env_file} sets "
            f"{', '.join(values)}",
            f"dashboard: http://127.0.0.1:8088/ (X0TTA6BL4_DASHBOARD_PORT) once up (read-only; its write action "
            f"needs the token in "
            f"{dep.dashboard_token})",
            "next: docker compose up --build    (operator tools on this host: "
            f"X0TTA6BL4_SECRETS_DIR={dep.root} X0TTA6BL4_NATS_URL=tls://127.0.0.1:{NATS_PORT} meshctl status)"]


# ---- Kubernetes ------------------------------------------------------------------------------------------
def _labels(name: str, component: str = "") -> dict[str, str]:
    out = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "x0tta6bl4"}
    if component:
        out["app.kubernetes.io/component"] = component
    return out


def k8s_secret(ident: Identity) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": ident.secret_name, "namespace": NAMESPACE,
                         "labels": {**_labels(ident.name, "credentials"), "x0tta6bl4/identity": ident.name}},
            "data": {n: base64.b64encode(p.read_bytes()).decode() for n, p in sorted(ident.files.items())}}


def k8s_deployment_config(dep: Deployment) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": DEPLOYMENT_CONFIGMAP, "namespace": NAMESPACE, "labels": _labels("x0tta6bl4")},
            "data": dep.deployment_values()}


POD_SECURITY = {"runAsNonRoot": True, "runAsUser": CONTAINER_UID, "runAsGroup": CONTAINER_UID,
                "fsGroup": CONTAINER_UID, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}


def env_list(ident: Identity) -> list[dict[str, Any]]:
    """A container's env entries for its identity's files and name (the deployment values come from the
    ConfigMap)."""
    out = [{"name": k, "value": v} for k, v in sorted(ident.env.items())]
    if ENV_IDENTITY in ident.values:
        out.append({"name": ENV_IDENTITY, "value": ident.values[ENV_IDENTITY]})
    return out


def k8s_node_agent(dep: Deployment, node_name: str) -> list[dict[str, Any]]:
    """A node agent pinned to Kubernetes node ``node_name``: mesh host k8s-<node> hosting the one mesh node
    <node>, with its own identity; the pod generates the node's keys (data volume) and keyvault certifies them
    (signed control packets)."""
    nid = k8s_node_id(node_name)
    host = K8S_AGENT_PREFIX + nid
    ident = dep.identity(mesh_host_identity(host))
    name = f"node-agent-{nid}"[:63].rstrip("-")
    topology = yaml.safe_dump({"name": host, "nodes": [nid], "links": []}, sort_keys=False)
    labels = {**_labels("node-agent", "mesh"), "x0tta6bl4/node": nid, "x0tta6bl4/bus": "client",
              "x0tta6bl4/keyvault": "client"}
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels}, "data": {"topology.yaml": topology}}
    container = {
        "name": "agent", "image": "x0tta6bl4:latest", "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "x0tta6bl4.mesh.host", "--nats", "$(X0TTA6BL4_NATS_URL)",
                    "--topology", "/topology/topology.yaml", "--keyvault", "keyvault:50052",
                    "--health-port", "8080", "--data-dir", "/var/lib/x0tta6bl4"],
        "envFrom": [{"configMapRef": {"name": "x0tta6bl4-common"}}, {"configMapRef": {"name": DEPLOYMENT_CONFIGMAP}}],
        "env": [*env_list(ident),
                {"name": "X0TTA6BL4_INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "health", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "initialDelaySeconds": 10, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "credentials", "mountPath": CONTAINER_DIR, "readOnly": True},
                         {"name": "topology", "mountPath": "/topology", "readOnly": True},
                         {"name": "data", "mountPath": "/var/lib/x0tta6bl4"}, {"name": "tmp", "mountPath": "/tmp"}]}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                 "selector": {"matchLabels": {"app.kubernetes.io/name": "node-agent", "x0tta6bl4/node": nid}},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     # pinned to the node by name, as the DaemonSet controller pins its pods
                     "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                         "nodeSelectorTerms": [{"matchFields": [
                             {"key": "metadata.name", "operator": "In", "values": [node_name]}]}]}}},
                     "automountServiceAccountToken": False,
                     "securityContext": POD_SECURITY, "containers": [container],
                     "volumes": [{"name": "credentials",
                                  "secret": {"secretName": ident.secret_name, "defaultMode": 0o440}},
                                 {"name": "topology", "configMap": {"name": name}},
                                 {"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]}}}}
    return [cm, deployment]


def kubernetes(out: pathlib.Path, node_agents: Sequence[str] = (), **kw: Any) -> list[str]:
    made: list[str] = []
    dep = generate(out, kubernetes=True, node_agents=node_agents, made=made, **kw)
    manifests = dep.root / "manifests"
    manifests.mkdir(mode=0o700, exist_ok=True)
    secrets = [k8s_secret(i) for i in dep.identities()]
    _write(manifests / "secrets.yaml", yaml.safe_dump_all(secrets, sort_keys=False).encode(), 0o600)
    _write(manifests / "deployment.yaml", yaml.safe_dump(k8s_deployment_config(dep), sort_keys=False).encode(), 0o644)
    agents = [d for n in node_agents for d in k8s_node_agent(dep, n)]
    agents_file = manifests / "node-agents.yaml"
    if agents:
        _write(agents_file, yaml.safe_dump_all(agents, sort_keys=False).encode(), 0o644)
    else:
        agents_file.unlink(missing_ok=True)
    return [f"secrets in {dep.root} (trust domain {dep.trust_domain()}): "
            + (f"made {len(made)}: {', '.join(made)}" if made else "complete, nothing to make"),
            f"{manifests}: {len(secrets)} Secrets (one per identity), ConfigMap {DEPLOYMENT_CONFIGMAP}"
            + (f", {len(node_agents)} node agents" if node_agents else ""),
            f"next: kubectl apply -f deploy/k8s/00-namespace.yaml && kubectl apply -f {manifests}/ "
            "&& kubectl apply -f deploy/k8s/"]


# ---- provisioning (in a container) -------------------------------------------------------------------------
async def provision(timeout_s: float) -> str:
    """Declare every stream, bucket and durable consumer as the provisioner (the X0TTA6BL4_NATS_* settings),
    waiting up to ``timeout_s`` for the broker."""
    from x0tta6bl4.bus.connection import connect_once, ensure_topology
    from x0tta6bl4.config import CommonSettings, load_settings
    s = load_settings(CommonSettings)
    creds = s.nats_credentials()
    who = creds.identity if creds is not None else "an anonymous client (open broker)"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:     # the broker may still be starting (a Job that raced the StatefulSet): retry until the deadline
        try:
            nc = await connect_once(s.nats_url, "provisioner", timeout_s=5, connect_timeout_s=2, creds=creds)
            break
        except Exception as e:  # noqa: BLE001 - refused or unreachable: one line once the deadline passed
            if loop.time() >= deadline:
                raise DeployError(f"cannot connect to {s.nats_url} as {who} within {timeout_s:g}s "
                                  f"({_describe(e)})") from None
            await asyncio.sleep(0.5)
    try:
        while True:     # a new cluster answers once its meta leader is elected and enough servers are current
            try:
                await asyncio.wait_for(ensure_topology(nc.jetstream(), s.stream_replicas, s.max_deliver,
                                                       s.ack_wait_s, s.monitor_partitions),
                                       max(1.0, deadline - loop.time()))
                break
            except Exception:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.5)
    except Exception as e:  # noqa: BLE001 - a permission violation goes unanswered: a timeout
        raise DeployError(f"{who} could not declare the streams, buckets and consumers on {s.nats_url} "
                          f"({_describe(e)}): only the provisioner identity may (X0TTA6BL4_NATS_IDENTITY="
                          f"{PROVISIONER} with its nkey)") from None
    finally:
        await nc.close()
    return (f"provisioned {len(subjects.STREAMS)} streams, {len(subjects.BUCKETS)} buckets and "
            f"{len(subjects.CONSUMERS)} consumers on {s.nats_url} as {who}")


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m x0tta6bl4.runtime.deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--trust-domain", default=None, help="SPIFFE trust domain (default: the existing one, "
                        "else x0tta6bl4.mesh)")
    common.add_argument("--force", action="store_true", help="remake every key and certificate")
    common.add_argument("--mesh-host", action="append", default=[], metavar="NAME=NODE[,NODE]",
                        help="another mesh host identity (repeatable; the demo host demo=n0..n8 is always made)")
    c = sub.add_parser("compose", parents=[common], help="secrets for docker-compose.yml, and .env")
    c.add_argument("--out", type=pathlib.Path, default=pathlib.Path("deploy/compose/secrets"))
    c.add_argument("--env-file", type=pathlib.Path, default=pathlib.Path(".env"),
                   help="the .env beside docker-compose.yml (default ./.env: run from the repository)")
    k = sub.add_parser("k8s", parents=[common], help="secrets and Secret manifests for deploy/k8s/")
    k.add_argument("--out", type=pathlib.Path, default=pathlib.Path("deploy/k8s/secrets"))
    k.add_argument("--node-agent", action="append", default=[], metavar="NODE",
                   help="a node agent on this Kubernetes node, with its own identity (repeatable)")
    pr = sub.add_parser("provision", help="declare streams, buckets and consumers as the provisioner")
    pr.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the broker")
    args = p.parse_args(argv)
    try:
        if args.cmd == "provision":
            print(asyncio.run(provision(args.timeout)), flush=True)
            return 0
        kw = {"trust_domain": args.trust_domain, "force": args.force,
              "mesh_hosts": parse_mesh_hosts(args.mesh_host)}
        lines = (compose(args.out, args.env_file, **kw) if args.cmd == "compose"
                 else kubernetes(args.out, args.node_agent, **kw))
    except (DeployError, SecretsError, OSError) as e:
        print(f"deploy {args.cmd}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a config error, a broker that refused or never answered: one line
        print(f"deploy {args.cmd}: {_describe(e)}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
