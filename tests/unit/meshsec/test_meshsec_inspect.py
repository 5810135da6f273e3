"""NodeSecurity.inspect (pure, real ML-DSA-65 keys from an in-process LocalAuthority): the replay window
in front of the signature check, and which refusals are evidence about a node (and about which one)."""
from __future__ import annotations

import pytest

from x0tta6bl4.mesh.packets import HELLO, RREQ, HelloBody, Packet, decode, encode
from x0tta6bl4.mesh.replay import PacketCounter
from x0tta6bl4.mesh.security import LocalAuthority, NodeSecurity
from x0tta6bl4.pqc import NodeIdentity

S = 10**9
T0 = 5_000 * S


class Clock:
    def __init__(self) -> None:
        self.ns = T0

    def __call__(self) -> int:
        return self.ns


@pytest.fixture
def mesh(auth):
    """n1 and n2 as senders, n0 as receiver, sharing one trust (as agents of one host process do)."""
    clock = Clock()
    trust = auth.trust()
    nodes = {n: NodeSecurity(n, auth.identities[n], trust, clock=clock) for n in ("n0", "n1", "n2")}
    clock.ns += S       # everything below is signed after the receiver started
    return nodes, trust, clock


def hello(sender: str, ts: int, seq: int = 1) -> Packet:
    return Packet(HELLO, sender, sender, "", ttl=1, origin_seq=seq, timestamp_ns=ts, body=HelloBody(0, ()))


def wire(p: Packet) -> bytes:
    return encode(p)


def test_signing_numbers_every_packet_and_the_counter_is_signed(mesh):
    nodes, _trust, clock = mesh
    a, b = nodes["n1"].sign(hello("n1", clock.ns)), nodes["n1"].sign(hello("n1", clock.ns))
    assert b.counter == a.counter + 1 and a.counter > 0
    n0 = nodes["n0"]
    # the counter is inside the signed region: changing it breaks the signature
    forged = decode(wire(a.with_(counter=a.counter + 1000)))
    assert n0.inspect(forged, wire(forged), clock.ns).reason == "bad_signature"
    assert n0.inspect(a, wire(a), clock.ns).reason is None


def test_a_replayed_packet_is_refused_without_a_second_signature_check(mesh):
    nodes, trust, clock = mesh
    n0 = nodes["n0"]
    p = nodes["n1"].sign(hello("n1", clock.ns))
    raw = wire(p)
    assert n0.inspect(p, raw, clock.ns).reason is None
    calls = trust.stats["verify.calls"] + trust.stats["verify.cache_hits"]
    clock.ns += 2 * S                               # well within max_skew_s: only the window can tell
    for _ in range(3):
        v = n0.inspect(decode(raw), raw, clock.ns)
        assert v.reason == "replayed" and v.evidence is None
    assert trust.stats["verify.calls"] + trust.stats["verify.cache_hits"] == calls
    # the next genuine packet still passes
    q = nodes["n1"].sign(hello("n1", clock.ns, 2))
    assert n0.inspect(q, wire(q), clock.ns).reason is None


def test_every_receiver_has_its_own_window_although_the_verification_cache_is_shared(mesh):
    nodes, trust, clock = mesh
    p = nodes["n1"].sign(hello("n1", clock.ns))
    raw = wire(p)
    assert nodes["n0"].inspect(p, raw, clock.ns).reason is None
    assert nodes["n2"].inspect(p, raw, clock.ns).reason is None       # a broadcast: both receive it once
    assert trust.stats["verify.cache_hits"] >= 1
    assert nodes["n2"].inspect(p, raw, clock.ns).reason == "replayed"  # the cache hit does not skip the window


def test_control_packets_of_every_type_share_the_signers_counter(mesh):
    nodes, _trust, clock = mesh
    n0, n1 = nodes["n0"], nodes["n1"]
    rreq = n1.sign(Packet(RREQ, "n1", "n1", "n9", packet_id=4, timestamp_ns=clock.ns))
    h = n1.sign(hello("n1", clock.ns))
    assert h.counter == rreq.counter + 1
    for p in (h, rreq):                           # reordered: the HELLO arrives first
        assert n0.inspect(p, wire(p), clock.ns).reason is None
    assert n0.inspect(rreq, wire(rreq), clock.ns).reason == "replayed"


def test_refusals_that_prove_nothing_are_not_evidence(mesh, auth):
    nodes, trust, clock = mesh
    n0, n1 = nodes["n0"], nodes["n1"]
    now = clock.ns
    good = n1.sign(hello("n1", now))
    bad = bytearray(wire(good))
    bad[-100] ^= 1
    rogue = NodeSecurity("n1", NodeIdentity.generate("x0tta6bl4.local", "n1", now=0), trust, clock=clock)
    cases = {
        "unsigned": hello("n1", now),
        "bad_signature": decode(bytes(bad)),
        "unknown_key": rogue.sign(hello("n1", now)),
        "stale_timestamp": n1.sign(hello("n1", now - 60 * S)),
    }
    for reason, p in cases.items():
        v = n0.inspect(p, wire(p), now)
        assert v == (reason, None), reason
    # none of them moved n1's window: its genuine packet is still new
    assert n0.inspect(good, wire(good), now).reason is None


def test_a_key_used_under_another_id_is_evidence_against_the_keys_owner(mesh):
    nodes, _trust, clock = mesh
    n0 = nodes["n0"]
    p = nodes["n2"].sign(hello("n1", clock.ns))        # n2's key, claiming to be n1
    v = n0.inspect(p, wire(p), clock.ns)
    assert v.reason == "wrong_signer" and v.evidence == ("impersonation", "n2")
    assert n0.inspect(p, wire(p), clock.ns) == ("replayed", None)   # a copy does not count twice
    # with a broken signature it proves nothing (anyone can write n2's key id)
    bad = bytearray(wire(nodes["n2"].sign(hello("n1", clock.ns))))
    bad[-50] ^= 1
    assert n0.inspect(decode(bytes(bad)), bytes(bad), clock.ns) == ("wrong_signer", None)


def test_a_revoked_key_still_signing_is_evidence_but_a_copy_of_an_earlier_packet_is_not():
    auth = LocalAuthority()
    for n in ("n0", "n1"):
        auth.issue(n)
    clock = Clock()
    trust = auth.trust()
    n0 = NodeSecurity("n0", auth.identities["n0"], trust, clock=clock)
    n1 = NodeSecurity("n1", auth.identities["n1"], trust, clock=clock)
    clock.ns += S
    captured = n1.sign(hello("n1", clock.ns))             # signed (and captured) before the revocation
    assert n0.inspect(n1.sign(hello("n1", clock.ns)), None, clock.ns).reason is None
    auth.revoke("n1", "compromised")
    clock.ns += S
    # the captured packet replayed after the revocation: refused, but it was signed while the key was good
    assert n0.inspect(captured, wire(captured), clock.ns) == ("revoked_key", None)
    # n1 goes on signing: within max_skew_s of our first refusal it may not have heard of it yet
    p = n1.sign(hello("n1", clock.ns))
    assert n0.inspect(p, wire(p), clock.ns) == ("revoked_key", None)
    clock.ns += 11 * S
    p = n1.sign(hello("n1", clock.ns))
    assert n0.inspect(p, wire(p), clock.ns) == ("revoked_key", ("revoked_key_used", "n1"))
    assert n0.inspect(p, wire(p), clock.ns) == ("replayed", None)
    # a forged signature under the revoked key id proves nothing
    bad = bytearray(wire(n1.sign(hello("n1", clock.ns))))
    bad[-70] ^= 1
    assert n0.inspect(decode(bytes(bad)), bytes(bad), clock.ns) == ("revoked_key", None)


def test_packets_signed_before_the_receiver_started_are_not_vouched_for(auth):
    clock = Clock()
    trust = auth.trust()
    n1 = NodeSecurity("n1", auth.identities["n1"], trust, clock=clock)
    early = n1.sign(hello("n1", clock.ns))
    clock.ns += S
    n0 = NodeSecurity("n0", auth.identities["n0"], trust, clock=clock)   # (re)started after the capture
    assert n0.inspect(early, wire(early), clock.ns) == ("stale_timestamp", None)
    late = n1.sign(hello("n1", clock.ns + 1))
    assert n0.inspect(late, wire(late), clock.ns + 1).reason is None


def test_a_restarted_sender_is_accepted_at_once_and_its_old_packets_stay_refused(auth):
    clock = Clock()
    wall = [1_700_000_000 * S]
    trust = auth.trust()
    n0 = NodeSecurity("n0", auth.identities["n0"], trust, clock=clock)
    before = NodeSecurity("n1", auth.identities["n1"], trust, clock=clock,
                          packet_counter=PacketCounter(wall_ns=lambda: wall[0]))
    clock.ns += S
    sent = [before.sign(hello("n1", clock.ns + i)) for i in range(20)]
    for p in sent:
        assert n0.inspect(p, wire(p), clock.ns).reason is None
    wall[0] += S                                     # the node restarts a second later, same key, no state
    clock.ns += S
    after = NodeSecurity("n1", auth.identities["n1"], trust, clock=clock,
                         packet_counter=PacketCounter(wall_ns=lambda: wall[0]))
    p = after.sign(hello("n1", clock.ns))
    assert n0.inspect(p, wire(p), clock.ns).reason is None
    assert n0.inspect(sent[-1], wire(sent[-1]), clock.ns).reason in ("replayed", "stale_counter")


def test_window_idle_time_must_cover_the_timestamp_tolerance(auth):
    trust = auth.trust(max_skew_s=10)
    with pytest.raises(ValueError, match=r"replay_idle_s \(15\) must exceed twice the trust's max_skew_s \(10\)"):
        NodeSecurity("n0", auth.identities["n0"], trust, replay_idle_s=15)
    assert NodeSecurity("n0", auth.identities["n0"], trust).replay.idle_ns == 30 * S
