
import pytest

from x0tta6bl4.pqc import (
    BackendUnavailable,
    HandshakeError,
    HandshakeInitiator,
    HandshakeResponder,
    Keyring,
    NodeIdentity,
    SecureChannel,
    available_backends,
    get_backend,
)
from x0tta6bl4.pqc.backend import BACKEND_ENV, find_liboqs


class Clock:
    def __init__(self, t=10_000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture(scope="module")
def nodes():
    return NodeIdentity.generate("mesh", "alice", now=0), NodeIdentity.generate("mesh", "bob", now=0)


def run(a, b, *, responder_identity=None, kem_keys=None, tamper=None):
    ini = HandshakeInitiator(a, b.uri, b.kem.public_key, b.signing.public_key)
    res = HandshakeResponder(responder_identity or b, lambda sid: {a.uri: a.signing.public_key}[sid], kem_keys=kem_keys)
    m1 = ini.start()
    m2 = res.respond(m1)
    if tamper:
        m2 = tamper(m2)
    m3, ki = ini.finish(m2)
    kr = res.finish(m3)
    return ki, kr


def test_handshake_agrees_on_keys_and_feeds_channel(nodes):
    a, b = nodes
    ki, kr = run(a, b)
    assert ki.initiator_to_responder == kr.initiator_to_responder
    assert ki.responder_to_initiator == kr.responder_to_initiator
    assert ki.transcript == kr.transcript
    ca = SecureChannel.from_session(b"a-b", ki, "initiator")
    cb = SecureChannel.from_session(b"a-b", kr, "responder")
    assert cb.open(ca.seal(b"ping")) == b"ping"
    assert ca.open(cb.seal(b"pong")) == b"pong"
    ki2, _ = run(a, b)
    assert ki2.initiator_to_responder != ki.initiator_to_responder  # fresh per session


def test_handshake_rejects_tampering_and_impostors(nodes):
    a, b = nodes
    with pytest.raises(HandshakeError):
        run(a, b, tamper=lambda m: m[:200] + bytes([m[200] ^ 1]) + m[201:])
    with pytest.raises(HandshakeError):
        run(a, b, tamper=lambda m: m[:-1])
    mallory = NodeIdentity.generate("mesh", "bob", now=0)  # same name, other keys
    ini = HandshakeInitiator(a, b.uri, b.kem.public_key, b.signing.public_key)
    res = HandshakeResponder(mallory, lambda sid: a.signing.public_key)
    with pytest.raises(HandshakeError, match="unknown KEM key"):
        res.respond(ini.start())
    # initiator unknown to responder
    ini = HandshakeInitiator(a, b.uri, b.kem.public_key, b.signing.public_key)
    res = HandshakeResponder(b, lambda sid: mallory.signing.public_key)
    m2 = res.respond(ini.start())
    m3, _ = ini.finish(m2)
    with pytest.raises(HandshakeError, match="initiator authentication"):
        res.finish(m3)
    with pytest.raises(HandshakeError):
        HandshakeResponder(b, lambda s: a.signing.public_key).respond(b"garbage")


def test_rotation_overlap_and_retire(nodes):
    clock = Clock()
    ring = Keyring(NodeIdentity.generate("mesh", "bob", now=clock.t), clock=clock, overlap_seconds=60)
    old = ring.current
    new = ring.rotate()
    assert new.generation == 2 and new.signing.key_id != old.signing.key_id
    assert ring.state_of(1) == "retiring" and ring.state_of(2) == "active"
    assert ring.retiring_deadline == int(clock.t) + 60
    a = nodes[0]
    # a peer that still has the old record can complete a handshake in the overlap
    ki, kr = run(a, old, responder_identity=ring.current, kem_keys=ring.find_kem)
    assert ki.initiator_to_responder == kr.initiator_to_responder
    clock.t += 61
    assert ring.state_of(1) == "retired"
    assert ring.find_kem(old.kem.key_id) is None
    assert ring.retired[0].signing_key_id == old.signing.key_id
    with pytest.raises(HandshakeError):
        run(a, old, responder_identity=ring.current, kem_keys=ring.find_kem)
    ring.rotate()
    ring.rotate()  # gen 2 is still retiring: rotating again retires it at once
    assert [r.generation for r in ring.retired] == [1, 2] and ring.current.generation == 4
    assert ring.state_of(3) == "retiring"


@pytest.mark.subprocess   # liboqs is looked for with ctypes.util.find_library (ldconfig, the linker)
def test_backend_selection(monkeypatch):
    assert get_backend().name == "cryptography"
    assert "cryptography" in available_backends()
    with pytest.raises(BackendUnavailable, match="unknown"):
        get_backend("nope")
    monkeypatch.setenv(BACKEND_ENV, "cryptography")
    assert get_backend().name == "cryptography"


@pytest.mark.skipif(find_liboqs() is not None, reason="liboqs present")
@pytest.mark.subprocess
def test_liboqs_not_selected_without_shared_library(monkeypatch):
    import sys

    monkeypatch.setenv("OQS_INSTALL_PATH", "/nonexistent")
    with pytest.raises(BackendUnavailable, match="liboqs shared library not found"):
        get_backend("liboqs")
    assert "oqs" not in sys.modules


@pytest.mark.skipif(find_liboqs() is None, reason="liboqs shared library not installed")
@pytest.mark.subprocess
def test_liboqs_backend_interop_with_cryptography():
    from x0tta6bl4.pqc import MLDSA65PrivateKey, MLDSA65PublicKey, MLKEM768PrivateKey, MLKEM768PublicKey

    oqs, cb = get_backend("liboqs"), get_backend("cryptography")
    k = MLDSA65PrivateKey.generate(backend=oqs)
    sig = k.sign(b"m", b"c")
    MLDSA65PublicKey.from_bytes(k.public_key().public_bytes(), backend=cb).verify(sig, b"m", b"c")
    kem = MLKEM768PrivateKey.generate(backend=cb)
    ss, ct = MLKEM768PublicKey.from_bytes(kem.public_key().public_bytes(), backend=oqs).encapsulate()
    assert kem.decapsulate(ct) == ss
