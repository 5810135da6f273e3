"""A deployment's secrets, made by one command (``meshctl secrets init``) before the first start.

    <dir>/ca/ca.pem, ca.key            the deployment CA (TLS for NATS; X.509 SVIDs for gRPC)
    <dir>/nats/server.pem, server.key  nats-server's certificate (127.0.0.1, ::1, localhost, nats)
    <dir>/nats/route.pem, route.key    the certificate nats-servers of a cluster present to each other on
                                       their routes (mutual TLS, same names; see Secrets.cluster_block)
    <dir>/nats/auth.json               nats-server accounts, users (nkeys) and permissions (generated from
                                       bus/permissions.py; rewritten when a mesh host is added, then
                                       embedded in the server's configuration)
    <dir>/creds/<identity>.nk          each identity's NATS nkey seed (0600)
    <dir>/signing/<service>.seed       each service's ML-DSA-65 signing seed (0600)
    <dir>/trust.json                   the trust bundle: the services' public signing keys and roles
    <dir>/hosts.json                   mesh hosts and the nodes each may speak for

Nothing in it is ever sent over the bus. Files holding a secret are 0600 and written atomically; the
directory is 0700. A stack, a container or a pod gets only its own identity's files plus the public ones
(ca.pem, trust.json).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import json
import os
import pathlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from x0tta6bl4.bus import permissions, subjects
from x0tta6bl4.keyvault import pin as keyvault_pin
from x0tta6bl4.pqc.keystore import write_secret_file
from x0tta6bl4.trust import ROLES, Signer, TrustBundle

ACCOUNT = "X0"
SERVER_NAMES = ("localhost", "nats")
# the names clustered nats-servers reach each other by on their routes (docker-compose.yml's network aliases,
# the Kubernetes StatefulSet's pods behind the headless Service `nats`); under the CA's `nats` name constraint
ROUTE_NAMES = tuple(f"nats-{i}.nats" for i in range(5))


class SecretsError(Exception):
    """The secrets directory is missing, incomplete or unreadable; str() names the file."""


def _write_public(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _new_user_seed() -> bytes:
    import nkeys
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def nkey_public(seed: bytes) -> str:
    import nkeys
    return nkeys.from_seed(bytearray(seed.strip())).public_key.decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x0tta6bl4"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(trust_domain: str, days: int = 3650) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(f"x0tta6bl4 CA {trust_domain}"))
            .issuer_name(_name(f"x0tta6bl4 CA {trust_domain}")).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.NameConstraints(
                # RFC 5280: a URI constraint is the host (BoringSSL, i.e. gRPC, refuses "spiffe://..." here);
                # DNS <trust-domain> lets a service SVID carry <service>.<trust-domain> for server checks
                permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain), x509.DNSName(trust_domain),
                                    *[x509.DNSName(n) for n in SERVER_NAMES],
                                    x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
                                    x509.IPAddress(ipaddress.ip_network("::1/128")),
                                    x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")),
                                    x509.IPAddress(ipaddress.ip_network("172.16.0.0/12")),
                                    x509.IPAddress(ipaddress.ip_network("192.168.0.0/16"))],
                excluded_subtrees=None), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def ca_constraints_current(ca_pem: pathlib.Path) -> bool:
    """False for a CA made before its URI name constraint had the RFC 5280 form (``spiffe://...``: gRPC's
    TLS refuses every certificate under it), so ``init`` makes a new one."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        nc = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return True
    return not any(isinstance(n, x509.UniformResourceIdentifier) and "://" in n.value
                   for n in nc.permitted_subtrees or ())


def route_names_current(route_pem: pathlib.Path) -> bool:
    """False for a route certificate made before it named the routes' hosts (:data:`ROUTE_NAMES`): ``init``
    makes a new one (its key is pinned by each server's cluster block, so every server's configuration follows)."""
    try:
        cert = x509.load_pem_x509_certificate(route_pem.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    return set(ROUTE_NAMES) <= set(names.get_values_for_type(x509.DNSName))


def issue_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, cn: str,
                      dns: Iterable[str], ips: Iterable[str], days: int = 825
                      ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    san = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


@dataclass(frozen=True)
class Secrets:
    """One deployment's secrets directory."""
    root: pathlib.Path

    # ---- paths ---------------------------------------------------------------------------------------
    @property
    def ca_cert(self) -> pathlib.Path:
        return self.root / "ca" / "ca.pem"

    @property
    def ca_key(self) -> pathlib.Path:
        return self.root / "ca" / "ca.key"

    @property
    def server_cert(self) -> pathlib.Path:
        return self.root / "nats" / "server.pem"

    @property
    def server_key(self) -> pathlib.Path:
        return self.root / "nats" / "server.key"

    @property
    def route_cert(self) -> pathlib.Path:
        return self.root / "nats" / "route.pem"

    @property
    def route_key(self) -> pathlib.Path:
        return self.root / "nats" / "route.key"

    @property
    def auth_file(self) -> pathlib.Path:
        return self.root / "nats" / "auth.json"

    @property
    def trust_file(self) -> pathlib.Path:
        return self.root / "trust.json"

    @property
    def hosts_file(self) -> pathlib.Path:
        return self.root / "hosts.json"

    def nkey_file(self, identity: str) -> pathlib.Path:
        return self.root / "creds" / f"{identity}.nk"

    def signing_file(self, service: str) -> pathlib.Path:
        return self.root / "signing" / f"{service}.seed"

    # ---- reading -------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.trust_file.is_file() and self.auth_file.is_file() and self.ca_cert.is_file()

    def check(self) -> Secrets:
        for p in (self.trust_file, self.auth_file, self.ca_cert, self.server_cert, self.server_key):
            if not p.is_file():
                raise SecretsError(f"secrets {str(self.root)!r}: {p.relative_to(self.root)} is missing "
                                   f"(run: meshctl secrets init --dir {self.root})")
        return self

    def trust(self) -> TrustBundle:
        return TrustBundle.load(self.trust_file)

    def hosts(self) -> dict[str, list[str]]:
        if not self.hosts_file.is_file():
            return {}
        return {str(k): [str(n) for n in v] for k, v in json.loads(self.hosts_file.read_text()).items()}

    def env_for(self, identity: str, *, service: str | None = None) -> dict[str, str]:
        """The settings a process of ``identity`` needs (X0TTA6BL4_* variables)."""
        env = {"X0TTA6BL4_NATS_NKEY_FILE": str(self.nkey_file(identity)),
               "X0TTA6BL4_NATS_CA_FILE": str(self.ca_cert),
               "X0TTA6BL4_NATS_IDENTITY": identity,
               "X0TTA6BL4_TRUST_FILE": str(self.trust_file)}
        if service is not None and self.signing_file(service).is_file():
            env["X0TTA6BL4_SIGNING_KEY_FILE"] = str(self.signing_file(service))
        env.update(keyvault_pin.identity_env(self.root, identity, service))   # SVID CA, pinned keyvault root
        return env

    # ---- writing ---------------------------------------------------------------------------------------
    def _ensure_nkey(self, identity: str) -> str:
        path = self.nkey_file(identity)
        if not path.is_file():
            write_secret_file(path, _new_user_seed())
        return nkey_public(path.read_bytes())

    def write_auth(self) -> pathlib.Path:
        """(Re)write nats-server's authorization from the permission table and the identities' nkeys."""
        tbl = permissions.table(self.hosts())
        users = [{"nkey": self._ensure_nkey(p.identity), "permissions": p.as_nats()} for p in tbl.identities]
        conf = {"accounts": {ACCOUNT: {"jetstream": "enabled", "users": users}}}
        _write_public(self.auth_file, (json.dumps(conf, indent=1) + "\n").encode())
        return self.auth_file

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer of hosts.json and auth.json at a time (meshctl mesh up in two shells)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def add_mesh_host(self, host: str, nodes: Iterable[str]) -> pathlib.Path:
        """Give a mesh host an identity for exactly these nodes; returns its nkey file. The caller reloads
        nats-server (``NatsServer.reload()``) for the new user to be accepted."""
        with self._locked():
            hosts = self.hosts()
            hosts[host] = sorted(set(nodes))
            permissions.mesh_host(host, hosts[host])        # validates
            _write_public(self.hosts_file, (json.dumps(hosts, indent=1, sort_keys=True) + "\n").encode())
            self.write_auth()
        return self.nkey_file(permissions.MESH_HOST_PREFIX + subjects.token(host))

    def remove_mesh_host(self, host: str) -> bool:
        """Withdraw a mesh host's identity (its nkey file is deleted); True if it had one. The caller
        reloads nats-server."""
        with self._locked():
            hosts = self.hosts()
            if hosts.pop(host, None) is None:
                return False
            _write_public(self.hosts_file, (json.dumps(hosts, indent=1, sort_keys=True) + "\n").encode())
            self.write_auth()
            self.nkey_file(permissions.MESH_HOST_PREFIX + subjects.token(host)).unlink(missing_ok=True)
        return True

    def cluster_block(self, port: int, routes: Iterable[str] = (), *, host: str = "127.0.0.1",
                      name: str = "x0tta6bl4") -> dict:
        """nats-server's ``cluster`` block (``nats_config(..., cluster=...)``): routes on ``host:port`` to
        ``routes`` (``nats-route://host:port`` of the other servers) over mutual TLS - each server presents the
        route certificate and accepts only a peer presenting that same certificate, signed by the deployment CA
        (its public key pinned: the CA also signs every SVID, and a route sees every account's traffic)."""
        if not self.route_cert.is_file() or not self.route_key.is_file():
            raise SecretsError(f"secrets {str(self.root)!r}: nats/route.pem or route.key is missing "
                               f"(run: meshctl secrets init --dir {self.root})")
        spki = x509.load_pem_x509_certificate(self.route_cert.read_bytes()).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        pin = hashlib.sha256(spki).hexdigest()          # nats-server pins the certificate's public key
        return {"name": name, "host": host, "port": port, "routes": list(routes),
                "tls": {"cert_file": str(self.route_cert), "key_file": str(self.route_key),
                        "ca_file": str(self.ca_cert), "verify": True, "pinned_certs": [pin], "timeout": 5}}

    def nats_config(self, port: int, store_dir: pathlib.Path, *, host: str = "127.0.0.1", name: str = "",
                    http_port: int = 0, cluster: dict | None = None) -> str:
        """A nats-server configuration (JSON, which nats-server reads) with TLS and this authorization;
        ``cluster``: a cluster block, e.g. :meth:`cluster_block` (routes over mutual TLS)."""
        conf: dict = {
            "host": host, "port": port, "server_name": name or f"x0tta6bl4-{port}",
            "jetstream": {"store_dir": str(store_dir), "max_file_store": subjects.STORE_LIMIT},
            "tls": {"cert_file": str(self.server_cert), "key_file": str(self.server_key), "timeout": 5},
            "max_payload": 8 * 1024 * 1024,
            **json.loads(self.auth_file.read_text()),
        }
        if http_port:
            conf["http"] = f"{host}:{http_port}"
        if cluster:
            conf["cluster"] = cluster
        return json.dumps(conf, indent=1) + "\n"


DEFAULT_TRUST_DOMAIN = "x0tta6bl4.mesh"


def init(root: str | pathlib.Path, trust_domain: str | None = None, *, force: bool = False,
         made: list[str] | None = None) -> Secrets:
    """Create a deployment's secrets (idempotent: what exists is kept unless ``force``). ``made`` collects
    what this call created (paths relative to the directory). ``trust_domain``: default the existing
    directory's, else x0tta6bl4.mesh; another one than the existing directory's needs ``force``."""
    s = Secrets(pathlib.Path(root).resolve())
    made = made if made is not None else []
    existing = None
    if s.trust_file.is_file() and s.ca_cert.is_file():
        try:
            existing = s.trust().trust_domain
        except Exception as e:  # noqa: BLE001 - unreadable bundle: named, not a traceback
            if not force:
                raise SecretsError(f"{s.trust_file}: unreadable trust bundle ({e}); remake with --force") from None
    if trust_domain and existing and trust_domain != existing and not force:
        raise SecretsError(f"secrets {str(s.root)!r} belong to trust domain {existing!r}, not {trust_domain!r} "
                           "(--force remakes every key and certificate)")
    trust_domain = trust_domain or existing or DEFAULT_TRUST_DOMAIN
    s.root.mkdir(parents=True, exist_ok=True)
    os.chmod(s.root, 0o700)

    def note(path: pathlib.Path) -> None:
        made.append(str(path.relative_to(s.root)))
    if force or not s.ca_cert.is_file() or not s.ca_key.is_file() or not ca_constraints_current(s.ca_cert):
        ca_key, ca = make_ca(trust_domain)
        write_secret_file(s.ca_key, _pem_key(ca_key))
        _write_public(s.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
        note(s.ca_cert)
        force = True    # a new CA: everything it signed is new too
    loaded = serialization.load_pem_private_key(s.ca_key.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(s.ca_cert.read_bytes())
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise SecretsError(f"{s.ca_key}: not an EC private key")
    ca_key = loaded
    if force or not s.server_cert.is_file():
        key, cert = issue_server_cert(ca_key, ca, "nats", SERVER_NAMES, ("127.0.0.1", "::1"))
        write_secret_file(s.server_key, _pem_key(key))
        _write_public(s.server_cert, cert.public_bytes(serialization.Encoding.PEM))
        note(s.server_cert)
    if (force or not s.route_cert.is_file() or not s.route_key.is_file()       # cluster routes (mutual TLS)
            or not route_names_current(s.route_cert)):
        key, cert = issue_server_cert(ca_key, ca, "nats-route", (*SERVER_NAMES, *ROUTE_NAMES), ("127.0.0.1", "::1"))
        write_secret_file(s.route_key, _pem_key(key))
        _write_public(s.route_cert, cert.public_bytes(serialization.Encoding.PEM))
        note(s.route_cert)
    signers = []
    for svc in permissions.SERVICES:
        path = s.signing_file(svc)
        if force or not path.is_file():
            signer = Signer.generate(svc)
            write_secret_file(path, signer.seed_bytes_unsafe())
            note(path)
        else:
            signer = Signer.load(svc, path)
        signers.append(signer.trusted(ROLES[svc]))
    bundle = TrustBundle(trust_domain, tuple(signers)).to_json().encode()
    if not s.trust_file.is_file() or s.trust_file.read_bytes() != bundle:
        _write_public(s.trust_file, bundle)
        note(s.trust_file)
    made += keyvault_pin.ensure_root(s.root)      # keyvault's root: its fingerprint is pinned by every verifier
    before = {p.name for p in (s.root / "creds").glob("*.nk")}
    s.write_auth()
    made += [f"creds/{p.name}" for p in sorted((s.root / "creds").glob("*.nk")) if p.name not in before]
    return s
