"""X.509 SVIDs (SPIFFE verifiable identity documents) issued from the deployment CA, as SPIRE issues them.

    issuer = SvidIssuer.load(ca_key_file, ca_cert_file, "x0tta6bl4.mesh", ttl_s=3600)
    cert_pem = issuer.issue(csr_pem, "spiffe://x0tta6bl4.mesh/service/governance").certificate
    key_pem, cert_pem = issuer.mint("spiffe://x0tta6bl4.mesh/service/keyvault")    # keyvault's own

An SVID certifies a key its holder generated: the request is a PKCS#10 CSR signed by that key (proof of
possession); the SPIFFE ID is not taken from the CSR but from who asked (the attestation: the bus subject
``keyvault.svid.<identity>`` only that identity may publish, see :func:`spiffe_id_for_bus_identity`). The
certificate has exactly one URI SAN, the SPIFFE ID; a service's also carries the DNS name
``<service>.<trust-domain>``, which clients check as the server name (:func:`server_name`). Short-lived
(one hour by default): holders renew at half-life (``x0tta6bl4.rpc.svid``).

SPIFFE IDs of this deployment (:mod:`x0tta6bl4.policy` decides from them)::

    spiffe://<td>/service/<name>    a MAPE-K service (keyvault, governance, executor, ...)
    spiffe://<td>/operator/<name>   meshctl, the MCP server, skill scripts (bus identity "operator")
    spiffe://<td>/host/<host>       a mesh host (bus identity "mesh-host-<host>")
    spiffe://<td>/node/<node-id>    a node (and the voter it is in governance)
"""
from __future__ import annotations

import datetime as dt
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from x0tta6bl4.bus.permissions import MESH_HOST_PREFIX, OPERATOR, SERVICES

from .errors import InvalidArgument, KeyvaultError, PermissionDenied

DEFAULT_TTL_S = 3600
MIN_TTL_S = 10
BACKDATE_S = 30            # not_before a little in the past (clocks differ by seconds), at most a tenth of the TTL
KINDS = ("service", "operator", "host", "node")


class SvidConfigError(KeyvaultError):
    """The CA files cannot be used (missing, not a CA, not the trust domain's)."""

    code = "FAILED_PRECONDITION"


def spiffe_id(trust_domain: str, kind: str, name: str) -> str:
    if kind not in KINDS:
        raise InvalidArgument(f"unknown SPIFFE ID kind {kind!r}: one of {', '.join(KINDS)}")
    if not name or "/" in name or len(name) > 128:
        raise InvalidArgument(f"bad SPIFFE ID name {name[:80]!r}")
    return f"spiffe://{trust_domain}/{kind}/{name}"


def spiffe_id_for_bus_identity(identity: str, trust_domain: str) -> str:
    """The SPIFFE ID a bus identity is attested to: a service -> /service/<name>, the operator ->
    /operator/<identity>, ``mesh-host-<h>`` -> /host/<h>. PermissionDenied for the others (the audit reader
    and the provisioner call no gRPC service)."""
    if identity in SERVICES:
        return spiffe_id(trust_domain, "service", identity)
    if identity == OPERATOR or identity.startswith(OPERATOR + "-"):
        return spiffe_id(trust_domain, "operator", identity)
    if identity.startswith(MESH_HOST_PREFIX) and len(identity) > len(MESH_HOST_PREFIX):
        return spiffe_id(trust_domain, "host", identity[len(MESH_HOST_PREFIX):])
    raise PermissionDenied(f"bus identity {identity!r} gets no SVID (services, the operator and mesh hosts do)")


def server_name(service: str, trust_domain: str) -> str:
    """The DNS name a service's SVID carries and its clients verify (``grpc.ssl_target_name_override``)."""
    return f"{service}.{trust_domain}"


def _uri_sans(cert_or_csr) -> list[str]:
    try:
        san = cert_or_csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def spiffe_id_of(cert: x509.Certificate) -> str:
    """The SPIFFE ID of an SVID (its one URI SAN); ValueError otherwise."""
    uris = [u for u in _uri_sans(cert) if u.startswith("spiffe://")]
    if len(uris) != 1:
        raise ValueError(f"not an X.509 SVID: {len(uris)} spiffe:// URI SANs")
    return uris[0]


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """A CSR from PEM or DER with a valid self-signature (proof of possession of its key); InvalidArgument."""
    if not data:
        raise InvalidArgument("csr is empty: send a PKCS#10 request signed by the key to certify")
    try:
        csr = (x509.load_pem_x509_csr(data) if data.lstrip().startswith(b"-----")
               else x509.load_der_x509_csr(data))
    except ValueError as e:
        raise InvalidArgument(f"csr is not a PKCS#10 certificate request: {e}") from None
    try:
        ok = csr.is_signature_valid
    except (InvalidSignature, ValueError, TypeError):
        ok = False
    if not ok:
        raise InvalidArgument("csr signature does not verify: the request must be signed by the key it certifies")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1)):
            raise InvalidArgument(f"csr key curve {key.curve.name} is not accepted (P-256 or P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidArgument(f"csr RSA key of {key.key_size} bits is too small (2048 at least)")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidArgument(f"csr key type {type(key).__name__} is not accepted (EC P-256/P-384, RSA, Ed25519)")
    return csr


@dataclass(frozen=True)
class Issued:
    spiffe_id: str
    certificate: bytes      # PEM
    bundle: bytes           # PEM: the CA certificate
    not_before: float
    not_after: float
    serial: int


class SvidIssuer:
    """Issues X.509 SVIDs from the deployment CA (EC key, name-constrained to the trust domain)."""

    def __init__(self, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, trust_domain: str,
                 ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.time) -> None:
        if ttl_s < MIN_TTL_S:
            raise SvidConfigError(f"SVID validity of {ttl_s:g} s is too short ({MIN_TTL_S} s at least)")
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if ca_cert.public_key().public_bytes(*spki) != ca_key.public_key().public_bytes(*spki):
            raise SvidConfigError("the CA key does not belong to the CA certificate")
        self.ca_key, self.ca_cert, self.trust_domain = ca_key, ca_cert, trust_domain
        self.ttl_s, self.clock = float(ttl_s), clock
        self.bundle = ca_cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load(cls, key_file: pathlib.Path | str, cert_file: pathlib.Path | str, trust_domain: str,
             ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.time) -> SvidIssuer:
        """From the secrets directory's ``ca/ca.key`` and ``ca/ca.pem``; SvidConfigError naming the file."""
        try:
            key = serialization.load_pem_private_key(pathlib.Path(key_file).read_bytes(), None)
        except (OSError, ValueError, TypeError) as e:
            raise SvidConfigError(f"CA key {key_file}: {getattr(e, 'strerror', None) or e}") from None
        try:
            cert = x509.load_pem_x509_certificate(pathlib.Path(cert_file).read_bytes())
        except (OSError, ValueError) as e:
            raise SvidConfigError(f"CA certificate {cert_file}: {getattr(e, 'strerror', None) or e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SvidConfigError(f"CA key {key_file}: not an EC private key")
        return cls(key, cert, trust_domain, ttl_s, clock)

    def _check_id(self, sid: str) -> tuple[str, str]:
        prefix = f"spiffe://{self.trust_domain}/"
        if not sid.startswith(prefix):
            raise PermissionDenied(f"{sid[:120]!r} is not in trust domain {self.trust_domain!r}")
        kind, _, name = sid[len(prefix):].partition("/")
        spiffe_id(self.trust_domain, kind, name)      # validates
        return kind, name

    def issue_for_key(self, public_key, sid: str) -> Issued:
        kind, name = self._check_id(sid)
        now = self.clock()
        ca_end = self.ca_cert.not_valid_after_utc.timestamp()
        # the half-life (when holders renew) stays ahead of now: backdating is a tenth of the TTL at most
        not_before, not_after = now - min(BACKDATE_S, self.ttl_s / 10), min(now + self.ttl_s, ca_end)
        if not_after <= now:
            raise SvidConfigError("the CA certificate has expired: run meshctl secrets init --force")
        san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(sid)]
        if kind == "service":
            san.append(x509.DNSName(server_name(name, self.trust_domain)))
        serial = x509.random_serial_number()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x0tta6bl4"),
                                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind)]))
                .issuer_name(self.ca_cert.subject).public_key(public_key).serial_number(serial)
                .not_valid_before(dt.datetime.fromtimestamp(not_before, dt.UTC))
                .not_valid_after(dt.datetime.fromtimestamp(not_after, dt.UTC))
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_agreement=False,
                                             content_commitment=False, data_encipherment=False,
                                             key_cert_sign=False, crl_sign=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                               critical=False)
                .sign(self.ca_key, hashes.SHA256()))
        return Issued(sid, cert.public_bytes(serialization.Encoding.PEM), self.bundle, not_before, not_after, serial)

    def issue(self, csr_data: bytes, sid: str) -> Issued:
        """An SVID for ``sid`` certifying the CSR's key (CSR self-signature checked). A CSR that names
        another SPIFFE ID than ``sid`` is refused (PermissionDenied): the caller asked for what it is not."""
        csr = load_csr(csr_data)
        asked = _uri_sans(csr)
        if asked and asked != [sid]:
            raise PermissionDenied(f"the CSR asks for {', '.join(asked)[:200]} but the caller is {sid}")
        return self.issue_for_key(csr.public_key(), sid)

    def mint(self, sid: str) -> tuple[bytes, Issued]:
        """A new key and its SVID (keyvault's own, or an administrator holding the CA key): (key PEM, issued)."""
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        return pem, self.issue_for_key(key.public_key(), sid)
