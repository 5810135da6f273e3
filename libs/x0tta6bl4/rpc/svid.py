"""X.509 SVIDs for gRPC clients and servers: obtain one, keep it, renew it at half-life (as SPIRE's agents
do), and build TLS credentials from the current one.

    source = SvidSource(functools.partial(obtain_over_bus, nc, "governance"), name="governance")
    await source.start()                    # the first SVID (retried until keyvault answers)
    server = await serve_grpc(..., identity=ServerIdentity(source, policy, audit))   # renewed SVIDs served
    ch = RenewingChannel("127.0.0.1:50052", source, "keyvault", trust_domain)       # re-created on renewal
    stub = ch.stub(KeyvaultStub)

Where an SVID comes from:

* :func:`obtain_over_bus`: a new EC P-256 key and a CSR, sent on ``keyvault.svid.<bus identity>``; the bus
  permissions let only that identity publish there, so keyvault issues the SPIFFE ID bound to it;
* :func:`obtain_local`: minted with the CA key (keyvault itself; an administrator on the CA host);
* :func:`operator_svid`: what operator tools use (SVID files, the stack's CA key, or the bus).

Clients verify the server's SVID against the CA (``X0TTA6BL4_CA_CERT_FILE``) and its DNS SAN
``<service>.<trust-domain>`` (only keyvault puts that name in a certificate, and only for that service).
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import pathlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from x0tta6bl4.keyvault import pin
from x0tta6bl4.keyvault.svid import SvidIssuer, server_name, spiffe_id, spiffe_id_of

log = logging.getLogger("x0tta6bl4.rpc.svid")

ENV_SVID_CERT = "X0TTA6BL4_SVID_CERT_FILE"
ENV_SVID_KEY = "X0TTA6BL4_SVID_KEY_FILE"
ENV_TRUST_DOMAIN = "X0TTA6BL4_TRUST_DOMAIN"
DEFAULT_TRUST_DOMAIN = "x0tta6bl4.mesh"
OPERATOR_TTL_S = 900          # an operator tool's own minted SVID (one command, or an MCP session's renewals)


class SvidError(Exception):
    """No SVID could be had (keyvault refused or is away, a file is missing); str() is one line."""


@dataclass(frozen=True)
class Svid:
    spiffe_id: str
    key: bytes                 # PEM private key (never leaves this process)
    certificate: bytes         # PEM leaf
    bundle: bytes              # PEM CA certificate(s): the roots to verify peers with
    not_before: float
    not_after: float

    @classmethod
    def from_pem(cls, key: bytes, certificate: bytes, bundle: bytes) -> Svid:
        """Parse and check: the certificate is an SVID, holds this key, and was issued by the bundle's CA."""
        try:
            cert = x509.load_pem_x509_certificate(certificate)
            ca = x509.load_pem_x509_certificate(bundle)
            priv = serialization.load_pem_private_key(key, None)
        except (ValueError, TypeError) as e:
            raise SvidError(f"SVID material does not parse: {e}") from None
        if priv.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
                != cert.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo):
            raise SvidError("the SVID certifies another key than ours")
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, Exception) as e:  # noqa: BLE001 - InvalidSignature and friends: one line
            raise SvidError(f"the SVID was not issued by the trusted CA ({type(e).__name__})") from None
        try:
            sid = spiffe_id_of(cert)
        except ValueError as e:
            raise SvidError(str(e)) from None
        return cls(sid, key, certificate, bundle, cert.not_valid_before_utc.timestamp(),
                   cert.not_valid_after_utc.timestamp())

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id.split("/")[2]

    @property
    def renew_at(self) -> float:
        """Half-life, as SPIRE renews."""
        return self.not_before + (self.not_after - self.not_before) / 2

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.not_after


def new_key_and_csr() -> tuple[bytes, bytes]:
    """A fresh EC P-256 key (PEM) and a CSR signed by it (PEM): the proof of possession keyvault checks."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.ORGANIZATION_NAME, "x0tta6bl4")]))
           .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()), csr.public_bytes(serialization.Encoding.PEM))


def ca_bundle(path: str | os.PathLike[str] | None = None) -> bytes | None:
    """The configured CA certificate (``X0TTA6BL4_CA_CERT_FILE``), None when none is configured."""
    p = path or os.environ.get(pin.ENV_CA_CERT_FILE)
    if not p:
        return None
    try:
        return pathlib.Path(p).read_bytes()
    except OSError as e:
        raise SvidError(f"{pin.ENV_CA_CERT_FILE}={p}: {e.strerror}") from None


# ---- obtaining ---------------------------------------------------------------------------------------------
async def obtain_over_bus(nc: Any, identity: str, *, bundle: bytes | None = None, timeout_s: float = 5.0) -> Svid:
    """Ask keyvault for an SVID of bus identity ``identity`` (``keyvault.svid.<identity>``). ``bundle``: the
    CA to trust (default ``X0TTA6BL4_CA_CERT_FILE``; without one, keyvault's answer - over the bus's TLS)."""
    from x0tta6bl4.bus import subjects
    from x0tta6bl4.v1 import keyvault_pb2 as kpb
    key, csr = new_key_and_csr()
    try:
        msg = await nc.request(subjects.keyvault_svid(identity), kpb.SvidRequest(csr=csr).SerializeToString(),
                               timeout=timeout_s)
    except Exception as e:  # noqa: BLE001 - timeouts, no responders, a closed connection: one line
        raise SvidError(f"keyvault did not issue an SVID for {identity!r} ({type(e).__name__}: {e}); "
                        "is keyvault running?") from None
    err = (msg.headers or {}).get(subjects.HEADER_ERROR)
    if err:
        raise SvidError(f"keyvault refused an SVID for {identity!r}: {err}")
    resp = kpb.SvidResponse.FromString(msg.data)
    return Svid.from_pem(key, resp.certificate, bundle or ca_bundle() or resp.bundle)


def obtain_local(issuer: SvidIssuer, sid: str) -> Svid:
    """An SVID minted with the CA key (keyvault's own, or an administrator holding the CA key)."""
    key, issued = issuer.mint(sid)
    return Svid.from_pem(key, issued.certificate, issued.bundle)


def from_files(cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str], bundle: bytes) -> Svid:
    try:
        return Svid.from_pem(pathlib.Path(key_file).read_bytes(), pathlib.Path(cert_file).read_bytes(), bundle)
    except OSError as e:
        raise SvidError(f"SVID file {e.filename}: {e.strerror}") from None


class SvidSource:
    """The current SVID of this process, renewed at half-life in the background.

    ``obtain()`` -> a new SVID (a new key each time). A failed renewal is retried with back-off while the
    current SVID is valid (and after, so a process recovers when keyvault is back). ``version`` grows with
    every renewal; listeners (``on_renew``) hear of each new SVID."""

    def __init__(self, obtain: Callable[[], Awaitable[Svid]], *, name: str = "",
                 clock: Callable[[], float] = time.time, retry_s: float = 0.5, max_retry_s: float = 30.0,
                 check_s: float = 5.0) -> None:
        self._obtain, self.name, self.clock = obtain, name, clock
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self.check_s = check_s           # the clock is re-read at least this often (suspend, clock jumps)
        self._svid: Svid | None = None
        self.version = 0
        self.renewals = 0
        self.failures = 0
        self.last_error = ""
        self._listeners: list[Callable[[Svid], None]] = []
        self._task: asyncio.Task | None = None

    @property
    def current(self) -> Svid:
        if self._svid is None:
            raise SvidError(f"{self.name or 'this process'} has no SVID yet (start() first)")
        return self._svid

    @property
    def spiffe_id(self) -> str:
        return self.current.spiffe_id

    def on_renew(self, listener: Callable[[Svid], None]) -> None:
        self._listeners.append(listener)

    def _set(self, svid: Svid) -> None:
        self._svid, self.version = svid, self.version + 1
        for cb in list(self._listeners):
            try:
                cb(svid)
            except Exception:   # a listener's bug does not stop renewals (logged with its traceback)
                log.exception("%s: SVID listener failed", self.name)

    async def start(self, timeout_s: float = 60.0) -> Svid:
        """Obtain the first SVID (retried until ``timeout_s``: keyvault may still be starting), then renew in
        the background. SvidError with the last reason when none could be had."""
        deadline, wait = time.monotonic() + timeout_s, self.retry_s
        while True:
            try:
                svid = await self._obtain()
                break
            except SvidError as e:
                self.failures += 1
                self.last_error = str(e)
                if time.monotonic() + wait > deadline:
                    raise SvidError(f"{self.name}: no SVID within {timeout_s:g} s: {e}") from None
                log.info("%s: no SVID yet (%s); retrying in %.1f s", self.name, e, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 5.0)
        self._set(svid)
        log.info("%s: SVID %s valid until %s", self.name, svid.spiffe_id, _ts(svid.not_after))
        self._task = asyncio.create_task(self._renew_loop(), name=f"svid-renew-{self.name}")
        return svid

    async def renew(self) -> Svid:
        """Renew now (the loop does this at half-life)."""
        svid = await self._obtain()
        self._set(svid)
        self.renewals += 1
        log.info("%s: SVID renewed, valid until %s", self.name, _ts(svid.not_after))
        return svid

    async def _renew_loop(self) -> None:
        wait = self.retry_s
        while True:
            due = self.current.renew_at - self.clock()
            if due > 0:
                await asyncio.sleep(min(due, self.check_s))
                continue
            try:
                svid = await self.renew()
                wait = self.retry_s
                if svid.renew_at <= self.clock():      # a certificate with no life ahead: do not spin
                    log.warning("%s: the renewed SVID is already past its half-life (valid until %s)", self.name,
                                _ts(svid.not_after))
                    await asyncio.sleep(max(self.retry_s, 1.0))
            except Exception as e:  # noqa: BLE001 - keep the current SVID, try again
                self.failures += 1
                self.last_error = str(e)
                left = self.current.not_after - self.clock()
                log.warning("%s: SVID renewal failed (%s); %s; retrying in %.1f s", self.name, e,
                            f"current one valid {left:.0f} s more" if left > 0 else "current one EXPIRED", wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, self.max_retry_s, max(left / 4, self.retry_s))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ---- TLS credentials --------------------------------------------------------------------------------
    def server_credentials(self):
        """Server credentials that serve the current SVID and require a client SVID from the bundle's CA;
        gRPC asks for the configuration before each handshake, so a renewed SVID is served without restart."""
        import grpc

        def config(s: Svid):
            return grpc.ssl_server_certificate_configuration([(s.key, s.certificate)], root_certificates=s.bundle)
        served = [self.version]

        def fetch():        # called by gRPC (any thread) before every new handshake
            if self.version == served[0]:
                return None
            s = self.current
            served[0] = self.version
            return config(s)
        return grpc.dynamic_ssl_server_credentials(config(self.current), fetch, require_client_authentication=True)


def channel_credentials(svid: Svid):
    import grpc
    return grpc.ssl_channel_credentials(root_certificates=svid.bundle, private_key=svid.key,
                                        certificate_chain=svid.certificate)


def channel_options(service: str, trust_domain: str, options: Sequence[tuple[str, Any]] = ()) -> list:
    """The server name to verify: ``<service>.<trust-domain>``, the DNS SAN of that service's SVID."""
    return [("grpc.ssl_target_name_override", server_name(service, trust_domain)), *options]


def secure_channel(target: str, svid: Svid, service: str, trust_domain: str,
                   options: Sequence[tuple[str, Any]] = ()):
    """A blocking-API channel to ``service`` at ``target`` presenting ``svid``."""
    import grpc
    return grpc.secure_channel(target, channel_credentials(svid), channel_options(service, trust_domain, options))


def aio_channel(target: str, svid: Svid, service: str, trust_domain: str, options: Sequence[tuple[str, Any]] = ()):
    import grpc
    return grpc.aio.secure_channel(target, channel_credentials(svid), channel_options(service, trust_domain, options))


class RenewingChannel:
    """An asyncio channel that follows a :class:`SvidSource`: after a renewal the next call goes over a new
    channel with the new SVID (the old one is closed a little later, letting calls in flight finish)."""

    def __init__(self, target: str, source: SvidSource, service: str, trust_domain: str,
                 options: Sequence[tuple[str, Any]] = (), grace_s: float = 30.0) -> None:
        self.target, self.source, self.service, self.trust_domain = target, source, service, trust_domain
        self.options, self.grace_s = tuple(options), grace_s
        self._channel: Any = None
        self._version = -1
        self.channels_made = 0
        self._closing: dict[asyncio.Task, Any] = {}      # closing task -> the old channel it closes

    @property
    def channel(self):
        if self._channel is None or self._version != self.source.version:
            old, self._version = self._channel, self.source.version
            self._channel = aio_channel(self.target, self.source.current, self.service, self.trust_domain,
                                        self.options)
            self.channels_made += 1
            if old is not None:
                t = asyncio.get_running_loop().create_task(self._close_later(old))
                self._closing[t] = old
                t.add_done_callback(lambda done: self._closing.pop(done, None))
        return self._channel

    async def _close_later(self, ch) -> None:
        await asyncio.sleep(self.grace_s)
        await ch.close()

    def stub(self, stub_cls: type) -> Any:
        """A stub whose every call goes over the current channel."""
        holder = self

        class _Stub:
            def __getattr__(self, method: str):
                return getattr(stub_cls(holder.channel), method)
        return _Stub()

    async def close(self) -> None:
        for t, old in list(self._closing.items()):
            t.cancel()
            await old.close()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


# ---- operator tools --------------------------------------------------------------------------------------
def trust_domain(data_dir: pathlib.Path | None = None) -> str:
    """``X0TTA6BL4_TRUST_DOMAIN``, else the stack's trust bundle's, else x0tta6bl4.mesh."""
    if os.environ.get(ENV_TRUST_DOMAIN):
        return os.environ[ENV_TRUST_DOMAIN]
    from x0tta6bl4.runtime import locate
    trust = locate.secrets_dir(data_dir) / "trust.json"
    if trust.is_file():
        with contextlib.suppress(Exception):
            from x0tta6bl4.trust import TrustBundle
            return TrustBundle.load(trust).trust_domain
    return DEFAULT_TRUST_DOMAIN


def operator_svid(data_dir: pathlib.Path | None = None, identity: str = "operator") -> Svid:
    """The SVID of an operator tool (meshctl, the MCP server, skill scripts), in this order:

    1. ``X0TTA6BL4_SVID_CERT_FILE`` + ``X0TTA6BL4_SVID_KEY_FILE`` (issued beforehand), CA from
       ``X0TTA6BL4_CA_CERT_FILE``;
    2. minted for ``spiffe://<td>/operator/<identity>`` with the CA key when this machine holds it
       (``X0TTA6BL4_CA_KEY_FILE``, or the stack's ``<data dir>/secrets/ca/ca.key``);
    3. from keyvault over the bus as bus identity ``identity`` (its nkey from the environment or the stack).
    """
    from x0tta6bl4.runtime import locate
    secrets = locate.secrets_dir(data_dir)
    bundle = ca_bundle()
    if bundle is None and (secrets / "ca" / "ca.pem").is_file():
        bundle = (secrets / "ca" / "ca.pem").read_bytes()
    cert_file, key_file = os.environ.get(ENV_SVID_CERT), os.environ.get(ENV_SVID_KEY)
    if cert_file and key_file:
        if bundle is None:
            raise SvidError(f"{ENV_SVID_CERT} is set but no CA certificate ({pin.ENV_CA_CERT_FILE})")
        return from_files(cert_file, key_file, bundle)
    ca_key = os.environ.get(pin.ENV_CA_KEY_FILE) or (secrets / "ca" / "ca.key")
    ca_cert = os.environ.get(pin.ENV_CA_CERT_FILE) or (secrets / "ca" / "ca.pem")
    if pathlib.Path(ca_key).is_file() and os.access(ca_key, os.R_OK) and pathlib.Path(ca_cert).is_file():
        td = trust_domain(data_dir)
        issuer = SvidIssuer.load(ca_key, ca_cert, td, ttl_s=OPERATOR_TTL_S)
        return obtain_local(issuer, spiffe_id(td, "operator", identity))

    async def over_bus() -> Svid:
        from x0tta6bl4.bus.connection import connect_once
        nc = await connect_once(locate.nats_url(None, data_dir), "svid", timeout_s=5,
                                creds=locate.credentials(identity, data_dir))
        try:
            return await obtain_over_bus(nc, identity, bundle=bundle)
        finally:
            await nc.close()
    try:
        return asyncio.run(over_bus()) if not _loop_running() else _run_in_thread(over_bus)
    except SvidError:
        raise
    except Exception as e:  # noqa: BLE001 - NATS away: one line
        raise SvidError(f"no SVID for {identity!r}: cannot reach keyvault over NATS ({type(e).__name__}: {e}); "
                        f"set {ENV_SVID_CERT}/{ENV_SVID_KEY}, or run where the stack's CA key is") from None


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _run_in_thread(fn: Callable[[], Awaitable[Svid]]) -> Svid:
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(lambda: asyncio.run(fn())).result()    # type: ignore[arg-type]


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%H:%M:%S")


def mint(secrets_root: str | os.PathLike[str], kind: str, name: str, *, ttl_s: float = OPERATOR_TTL_S,
         trust_domain: str | None = None) -> Svid:
    """An SVID for ``spiffe://<td>/<kind>/<name>`` minted with a secrets directory's CA key (an administrator
    on the CA host; tests)."""
    root = pathlib.Path(secrets_root)
    td = trust_domain
    if td is None:
        from x0tta6bl4.trust import TrustBundle
        td = TrustBundle.load(root / "trust.json").trust_domain if (root / "trust.json").is_file() \
            else DEFAULT_TRUST_DOMAIN
    issuer = SvidIssuer.load(root / "ca" / "ca.key", root / "ca" / "ca.pem", td, ttl_s=ttl_s)
    return obtain_local(issuer, spiffe_id(td, kind, name))
