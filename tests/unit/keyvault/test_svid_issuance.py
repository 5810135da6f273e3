"""X.509 SVID issuance (x0tta6bl4.keyvault.svid), the client-side SVID (x0tta6bl4.rpc.svid: checks,
half-life renewal) and the pinned keyvault root (x0tta6bl4.keyvault.pin). Pure: no sockets, no processes."""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from testkit import consistently, eventually

from x0tta6bl4.keyvault import pin
from x0tta6bl4.keyvault.errors import InvalidArgument, PermissionDenied
from x0tta6bl4.keyvault.svid import SvidConfigError, SvidIssuer, spiffe_id_for_bus_identity, spiffe_id_of
from x0tta6bl4.pqc import MLDSA65PrivateKey
from x0tta6bl4.rpc.svid import Svid, SvidError, SvidSource, new_key_and_csr, obtain_local
from x0tta6bl4.runtime.secrets import ca_constraints_current, make_ca

TD = "x0tta6bl4.mesh"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def ca():
    return make_ca(TD)


@pytest.fixture
def issuer(ca):
    key, cert = ca
    return SvidIssuer(key, cert, TD, ttl_s=3600, clock=lambda: NOW)


def test_the_deployment_ca_uses_the_rfc5280_uri_constraint(ca, tmp_path):
    nc = ca[1].extensions.get_extension_for_class(x509.NameConstraints).value
    uris = [n.value for n in nc.permitted_subtrees if isinstance(n, x509.UniformResourceIdentifier)]
    assert uris == [TD]                    # the host, not spiffe://... (BoringSSL refuses that form)
    old = tmp_path / "old.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2036, 1, 1, tzinfo=dt.UTC))
            .add_extension(x509.NameConstraints([x509.UniformResourceIdentifier(f"spiffe://{TD}")], None), False)
            .sign(key, hashes.SHA256()))
    old.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert not ca_constraints_current(old)     # secrets init makes a new CA for such a directory


def test_bus_identities_map_to_spiffe_ids():
    assert spiffe_id_for_bus_identity("governance", TD) == f"spiffe://{TD}/service/governance"
    assert spiffe_id_for_bus_identity("operator", TD) == f"spiffe://{TD}/operator/operator"
    assert spiffe_id_for_bus_identity("mesh-host-h1", TD) == f"spiffe://{TD}/host/h1"
    for nobody in ("audit-reader", "provisioner", "mesh-host-", "stranger"):
        with pytest.raises(PermissionDenied):
            spiffe_id_for_bus_identity(nobody, TD)


def test_an_svid_certifies_the_csr_key_with_one_uri_san(issuer, ca):
    key_pem, csr_pem = new_key_and_csr()
    sid = f"spiffe://{TD}/service/governance"
    issued = issuer.issue(csr_pem, sid)
    cert = x509.load_pem_x509_certificate(issued.certificate)
    assert spiffe_id_of(cert) == sid
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"governance.{TD}"]     # the name its clients verify
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.not_valid_after_utc.timestamp() == NOW + 3600 and cert.not_valid_before_utc.timestamp() < NOW
    cert.verify_directly_issued_by(ca[1])
    svid = Svid.from_pem(key_pem, issued.certificate, issued.bundle)
    assert svid.renew_at == pytest.approx(svid.not_before + (svid.not_after - svid.not_before) / 2)
    assert svid.trust_domain == TD
    short = SvidIssuer(issuer.ca_key, issuer.ca_cert, TD, ttl_s=20, clock=lambda: NOW)
    brief = Svid.from_pem(key_pem, short.issue(csr_pem, sid).certificate, issued.bundle)
    assert NOW < brief.renew_at < NOW + 10              # backdating never puts the half-life behind us
    host = x509.load_pem_x509_certificate(issuer.issue(new_key_and_csr()[1], f"spiffe://{TD}/host/h1").certificate)
    assert host.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == []                              # only services are servers


def test_proof_of_possession_and_what_the_csr_may_ask(issuer):
    _, csr_pem = new_key_and_csr()
    csr = x509.load_pem_x509_csr(csr_pem)
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF                                           # the signature no longer verifies
    with pytest.raises(InvalidArgument, match=r"signature|not a PKCS#10"):
        issuer.issue(bytes(der), f"spiffe://{TD}/service/planner")
    with pytest.raises(InvalidArgument, match="empty"):
        issuer.issue(b"", f"spiffe://{TD}/service/planner")
    with pytest.raises(InvalidArgument, match="not a PKCS#10"):
        issuer.issue(b"hello", f"spiffe://{TD}/service/planner")
    key = ec.generate_private_key(ec.SECP256R1())
    greedy = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
              .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                  f"spiffe://{TD}/service/keyvault")]), critical=False).sign(key, hashes.SHA256()))
    with pytest.raises(PermissionDenied, match=r"asks for spiffe://x0tta6bl4\.mesh/service/keyvault"):
        issuer.issue(greedy.public_bytes(serialization.Encoding.PEM), f"spiffe://{TD}/host/h1")
    with pytest.raises(PermissionDenied, match="trust domain"):
        issuer.issue(csr_pem, "spiffe://evil.mesh/service/keyvault")
    weak = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
            .sign(ec.generate_private_key(ec.SECP521R1()), hashes.SHA256()))
    with pytest.raises(InvalidArgument, match="curve"):
        issuer.issue(weak.public_bytes(serialization.Encoding.PEM), f"spiffe://{TD}/host/h1")


def test_issuer_configuration_errors_name_the_problem(ca, tmp_path):
    key, cert = ca
    with pytest.raises(SvidConfigError, match="too short"):
        SvidIssuer(key, cert, TD, ttl_s=1)
    with pytest.raises(SvidConfigError, match="does not belong"):
        SvidIssuer(ec.generate_private_key(ec.SECP256R1()), cert, TD)
    with pytest.raises(SvidConfigError, match="CA key"):
        SvidIssuer.load(tmp_path / "missing.key", tmp_path / "missing.pem", TD)


def test_client_svid_checks_key_and_issuer(issuer):
    key_pem, csr_pem = new_key_and_csr()
    issued = issuer.issue(csr_pem, f"spiffe://{TD}/operator/alice")
    other_key, _ = new_key_and_csr()
    with pytest.raises(SvidError, match="another key"):
        Svid.from_pem(other_key, issued.certificate, issued.bundle)
    _, rogue_ca = make_ca(TD)
    with pytest.raises(SvidError, match="not issued by the trusted CA"):
        Svid.from_pem(key_pem, issued.certificate, rogue_ca.public_bytes(serialization.Encoding.PEM))


def test_source_renews_at_half_life_and_keeps_the_current_one_when_renewal_fails(issuer):
    t = [NOW]
    issuer.clock = lambda: t[0]
    calls = {"n": 0, "fail": False}

    async def obtain() -> Svid:
        calls["n"] += 1
        if calls["fail"]:
            raise SvidError("keyvault away")
        return obtain_local(issuer, f"spiffe://{TD}/service/governance")

    async def go():
        src = SvidSource(obtain, name="t", clock=lambda: t[0], retry_s=0.01, check_s=0.01)
        seen = []
        src.on_renew(lambda s: seen.append(s.not_after))
        first = await src.start()
        assert src.version == 1 and first.renew_at - NOW < 3600 / 2 + 1
        await consistently(lambda: src.version == 1, 0.1, 0.01)     # not before half-life
        t[0] = first.renew_at + 1                      # past half-life: the loop renews
        await eventually(lambda: src.version >= 2, 5, 0.01)
        assert src.version == 2 and src.renewals == 1 and src.current.not_after > first.not_after
        calls["fail"] = True
        t[0] = src.current.renew_at + 1
        await eventually(lambda: src.failures >= 2, 5, 0.01)
        assert src.version == 2 and "keyvault away" in src.last_error and not src.current.expired(t[0])
        await src.stop()
        assert seen == sorted(seen) and len(seen) == 2
    asyncio.run(go())


def test_source_start_gives_up_with_the_reason():
    async def obtain() -> Svid:
        raise SvidError("no responders")

    async def go():
        with pytest.raises(SvidError, match=r"no SVID within .*no responders"):
            await SvidSource(obtain, name="x", retry_s=0.01).start(timeout_s=0.05)
    asyncio.run(go())


def test_root_pin(tmp_path):
    made = pin.ensure_root(tmp_path)
    assert made == [pin.ROOT_KEY_FILE, pin.ROOT_PUB_FILE] and pin.ensure_root(tmp_path) == []
    assert (tmp_path / pin.ROOT_KEY_FILE).stat().st_mode & 0o077 == 0
    pub = (tmp_path / pin.ROOT_PUB_FILE).read_bytes()
    fp = pin.pinned_fingerprint(tmp_path)
    assert fp == pin.fingerprint(pub) and fp.startswith("sha256:") and len(fp) == 71
    assert pin.check(pub, fp.upper().replace("SHA256:", "")).public_bytes() == pub     # case, prefix optional
    rogue = MLDSA65PrivateKey.generate().public_key().public_bytes()
    with pytest.raises(pin.RootPinError, match="refused"):
        pin.check(rogue, fp)
    with pytest.raises(pin.RootPinError, match="not a fingerprint"):
        pin.normalize("abc")
    env = pin.identity_env(tmp_path, "keyvault", "keyvault")
    assert env[pin.ENV_FINGERPRINT] == fp and env[pin.ENV_ROOT_KEY_FILE].endswith(pin.ROOT_KEY_FILE)
    assert pin.ENV_CA_KEY_FILE in env
    other = pin.identity_env(tmp_path, "governance", "governance")
    assert other[pin.ENV_FINGERPRINT] == fp and pin.ENV_CA_KEY_FILE not in other and pin.ENV_ROOT_KEY_FILE not in other


def test_the_bus_answer_binds_the_svid_to_the_subjects_identity_and_audits(issuer):
    from services.keyvault.rpc import issue_svid
    from x0tta6bl4.v1 import keyvault_pb2 as kpb
    trail: list[tuple[str, str, dict]] = []

    async def audit(event: str, subject: str, details: dict) -> None:
        trail.append((event, subject, details))

    async def go():
        key, csr = new_key_and_csr()
        data, headers = await issue_svid(issuer, "mesh-host-h1", kpb.SvidRequest(csr=csr).SerializeToString(),
                                         audit, True)
        assert headers is None
        resp = kpb.SvidResponse.FromString(data)
        assert resp.spiffe_id == f"spiffe://{TD}/host/h1"
        assert Svid.from_pem(key, resp.certificate, resp.bundle).spiffe_id == resp.spiffe_id
        _, headers = await issue_svid(issuer, "audit-reader", kpb.SvidRequest(csr=csr).SerializeToString(),
                                      audit, True)
        assert headers is not None and headers["X0-Error-Code"] == "PERMISSION_DENIED"
        _, headers = await issue_svid(issuer, "operator", b"\xff\x00garbage", audit, False)
        assert headers is not None and headers["X0-Error-Code"] == "INVALID_ARGUMENT"
    asyncio.run(go())
    assert [(e, s) for e, s, _ in trail] == [("svid.issued", f"spiffe://{TD}/host/h1"),
                                             ("svid.refused", "audit-reader"), ("svid.refused", "operator")]
    assert trail[0][2]["identity"] == "mesh-host-h1" and trail[2][2]["bus_secured"] is False
