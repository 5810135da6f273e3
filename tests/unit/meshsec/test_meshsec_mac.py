"""Link-authenticated control packets (pure, real keys and real hybrid handshakes from an in-process
LocalAuthority): once a node has a channel to every receiver, its HELLOs and other control packets carry one
HMAC tag per receiver under the link's session instead of an ML-DSA-65 signature; the replay window, the key
checks and the rule that a refusal frames nobody hold as for signed packets; first contact, a receiver
without a session, a rotation in progress and a revoked key fall back to signatures."""
from __future__ import annotations

from x0tta6bl4.mesh.packets import HELLO, MLDSA65_SIG_LEN, RREP, HelloBody, Packet, RrepBody, decode, encode
from x0tta6bl4.mesh.security import MAC_ENTRY, MAC_MARK, LocalAuthority, NodeSecurity

S = 10**9
T0 = 5_000 * S
NODES = ("n0", "n1", "n2")
LINKS = {"n0": ("n1",), "n1": ("n0", "n2"), "n2": ("n1",)}      # a line n0 - n1 - n2


class Clock:
    def __init__(self) -> None:
        self.ns = T0

    def __call__(self) -> int:
        return self.ns


def hello(sender: str, ts: int) -> Packet:
    return Packet(HELLO, sender, sender, "", ttl=1, origin_seq=1, timestamp_ns=ts, body=HelloBody(0, ()))


def wire(p: Packet) -> bytes:
    return encode(p)


def deliver(nodes: dict[str, NodeSecurity], clock: Clock) -> None:
    """Hand every queued handshake message to its neighbour until nothing is left (a lossless link)."""
    for _ in range(50):
        moved = False
        for n, sec in nodes.items():
            out, sec.outbox = sec.outbox, []
            for p, to in out:
                moved = True
                if to in nodes:
                    nodes[to].on_handshake(n, decode(wire(p)), clock.ns)
        if not moved:
            return
    raise AssertionError("handshake messages still flowing after 50 rounds")


def beacon(nodes: dict[str, NodeSecurity], clock: Clock, sender: str) -> dict[str, str | None]:
    """``sender`` broadcasts one HELLO as its agent does; every neighbour inspects it (and acts on it)."""
    p = nodes[sender].protect(hello(sender, clock.ns), None, LINKS[sender])
    raw = wire(p)
    out = {}
    for r in LINKS[sender]:
        v = nodes[r].inspect(decode(raw), raw, clock.ns)
        if v.reason is None:
            nodes[r].on_hello(sender, decode(raw), clock.ns)
        out[r] = v.reason
    return out


def line(auth, trust=None):
    clock = Clock()
    trust = trust or auth.trust()
    nodes = {n: NodeSecurity(n, auth.identities[n], trust, clock=clock) for n in NODES}
    clock.ns += S
    return nodes, trust, clock


def converge(nodes, clock) -> None:
    """Signed first-contact HELLOs both ways, then the handshakes they start: every link has a channel."""
    for n in NODES:
        assert set(beacon(nodes, clock, n).values()) == {None}
    deliver(nodes, clock)
    for n in NODES:
        assert set(beacon(nodes, clock, n).values()) == {None}     # the hello keys of the sessions
    deliver(nodes, clock)
    assert all(nodes[a].channel_ready(b) for a in NODES for b in LINKS[a])


def is_mac(p: Packet) -> bool:
    return len(p.signature) != MLDSA65_SIG_LEN and p.signature[0] == MAC_MARK


def test_first_contact_is_signed_and_a_node_with_channels_to_every_neighbour_authenticates_with_macs(auth):
    nodes, trust, clock = line(auth)
    first = nodes["n1"].protect(hello("n1", clock.ns), None, LINKS["n1"])
    assert len(first.signature) == MLDSA65_SIG_LEN                   # no channel yet: ML-DSA-65
    converge(nodes, clock)
    verified = trust.stats["verify.calls"] + trust.stats["verify.cache_hits"]
    p = nodes["n1"].protect(hello("n1", clock.ns), None, LINKS["n1"])
    assert is_mac(p) and p.key_id == bytes.fromhex(nodes["n1"].key_id) and p.counter == first.counter + 3
    assert len(p.signature) == 2 + 2 * MAC_ENTRY.size                # one tag per neighbour: 50 bytes, not 3309
    for r in ("n0", "n2"):
        assert nodes[r].inspect(decode(wire(p)), wire(p), clock.ns).reason is None
        assert nodes[r].counters["verified.mac"] >= 1
    assert trust.stats["verify.calls"] + trust.stats["verify.cache_hits"] == verified   # no signature checked
    assert nodes["n1"].counters["mac_authenticated"] >= 1
    # a unicast control packet carries the one tag of its next hop
    rrep = nodes["n1"].protect(Packet(RREP, "n1", "n2", "n0", timestamp_ns=clock.ns, body=RrepBody(3000)),
                               "n0", LINKS["n1"])
    assert is_mac(rrep) and rrep.signature[1] == 1
    assert nodes["n0"].inspect(rrep, wire(rrep), clock.ns).reason is None


def test_a_replayed_mac_packet_is_refused_by_the_window_before_any_mac_is_computed(auth):
    nodes, _trust, clock = line(auth)
    converge(nodes, clock)
    p = nodes["n1"].protect(hello("n1", clock.ns), None, LINKS["n1"])
    raw = wire(p)
    n0 = nodes["n0"]
    assert n0.inspect(decode(raw), raw, clock.ns).reason is None
    macs = n0.counters["verified.mac"]
    clock.ns += 2 * S                                                 # well within max_skew_s
    for _ in range(3):
        assert n0.inspect(decode(raw), raw, clock.ns) == ("replayed", None)
    assert n0.counters["verified.mac"] == macs
    # its counter shares the window with the sender's signed packets: a signed one after it is new
    q = nodes["n1"].sign(hello("n1", clock.ns))
    assert n0.inspect(q, wire(q), clock.ns).reason is None


def test_tampered_or_misdirected_mac_packets_are_refused_and_frame_nobody(auth):
    nodes, _trust, clock = line(auth)
    converge(nodes, clock)
    n0, n1 = nodes["n0"], nodes["n1"]
    good = n1.protect(hello("n1", clock.ns), None, LINKS["n1"])
    raw = wire(good)

    def flipped(at: int) -> bytes:
        b = bytearray(raw)
        b[at] ^= 1
        return bytes(b)
    sig_at = len(raw) - len(good.signature)
    cases = {
        "body": flipped(36),                                          # tx power: authenticated
        "counter": wire(good.with_(counter=good.counter + 1000)),    # the counter is authenticated too
        "tag": flipped(sig_at + 2 + 8),                               # n0's entry comes first
        "epoch": flipped(sig_at + 2 + 4 + 3),                         # names a session n0 does not hold
    }
    for what, b in cases.items():
        v = n0.inspect(decode(b), b, clock.ns)
        assert v.reason in ("bad_mac", "unknown_session") and v.evidence is None, what
    # a tag for n2 only (a unicast RREP n1 -> n2) sent to n0: nothing in it for n0
    rrep = n1.protect(Packet(RREP, "n1", "n2", "n0", timestamp_ns=clock.ns, body=RrepBody(3000)), "n2",
                      LINKS["n1"])
    assert n0.inspect(rrep, wire(rrep), clock.ns) == ("bad_mac", None)
    # n2 writes n1's id on a packet MACed under its own session with n1: the key is not n1's ...
    forged = nodes["n2"].protect(hello("n2", clock.ns), None, LINKS["n2"])
    as_n1 = Packet(HELLO, "n1", "n1", "", ttl=1, timestamp_ns=clock.ns, body=HelloBody(0, ()),
                   key_id=forged.key_id, counter=forged.counter, signature=forged.signature)
    assert n0.inspect(as_n1, wire(as_n1), clock.ns) == ("wrong_signer", None)     # and proves nothing
    # ... and with n1's key id its tag does not verify under n0's session with n1
    with_kid = Packet(HELLO, "n1", "n1", "", ttl=1, timestamp_ns=clock.ns, body=HelloBody(0, ()),
                      key_id=good.key_id, counter=good.counter + 100, signature=good.signature)
    assert n0.inspect(with_kid, wire(with_kid), clock.ns) == ("bad_mac", None)
    stale = n1.protect(hello("n1", clock.ns - 60 * S), None, LINKS["n1"])
    assert n0.inspect(stale, wire(stale), clock.ns) == ("stale_timestamp", None)
    # none of them moved n1's window at n0: the genuine packet is still new (a change to n2's tag is
    # no concern of n0's: its own tag covers everything it acts on)
    other = flipped(len(raw) - 1)
    assert n0.inspect(decode(other), other, clock.ns).reason is None
    assert n0.inspect(decode(raw), raw, clock.ns) == ("replayed", None)


def test_a_receiver_that_lost_its_session_refuses_and_asks_for_a_new_one_at_most_once_a_second(auth):
    nodes, _trust, clock = line(auth)
    converge(nodes, clock)
    n1, n2 = nodes["n1"], nodes["n2"]
    n2.reset()                                      # n2 restarted: it has no channel, n1 still has one
    p = n1.protect(hello("n1", clock.ns), None, LINKS["n1"])
    assert is_mac(p)
    assert n2.inspect(p, wire(p), clock.ns) == ("unknown_session", None)
    assert [s.body[1] for s, to in n2.outbox if to == "n1"] == [0]   # n2 > n1: a REQUEST for a handshake
    n2.outbox.clear()
    q = n1.protect(hello("n1", clock.ns + 1), None, LINKS["n1"])
    assert n2.inspect(q, wire(q), clock.ns + 1).reason == "unknown_session"
    assert n2.outbox == []                          # a flood of such packets cannot drive handshakes
    clock.ns += S + 1
    r = n1.protect(hello("n1", clock.ns), None, LINKS["n1"])
    assert n2.inspect(r, wire(r), clock.ns).reason == "unknown_session"
    deliver(nodes, clock)                           # n1 runs the handshake n2 asked for
    assert n1.channel_ready("n2") and n2.channel_ready("n1")
    p = n1.protect(hello("n1", clock.ns), None, LINKS["n1"])
    assert n2.inspect(p, wire(p), clock.ns).reason is None


def test_signatures_return_while_a_rotation_is_in_progress_and_macs_once_every_link_has_re_keyed():
    auth = LocalAuthority()
    for n in NODES:
        auth.issue(n)
    nodes, _trust, clock = line(auth)
    converge(nodes, clock)
    new = auth.rotate("n1")
    nodes["n1"].reload(new)
    # n1's sessions were made with its old key: it signs with the new one, so its neighbours learn it
    assert beacon(nodes, clock, "n1") == {"n0": None, "n2": None}
    assert nodes["n1"].counters["signed"] >= 1 and nodes["n0"].peer_key("n1") == new.signing.key_id
    # n0's session names n1's old key while n1's HELLOs carry the new one: n0 signs too
    assert len(nodes["n0"].protect(hello("n0", clock.ns), None, LINKS["n0"]).signature) == MLDSA65_SIG_LEN
    for _ in range(3):                              # the beacons echo each other; the links re-key
        for n in NODES:
            beacon(nodes, clock, n)
        clock.ns += 3 * S                          # past the re-key deferral bound
        for sec in nodes.values():
            sec.tick(clock.ns)
        deliver(nodes, clock)
    assert nodes["n1"].session_keys("n0") == (new.signing.key_id, nodes["n0"].key_id)
    for n in NODES:
        assert is_mac(nodes[n].protect(hello(n, clock.ns), None, LINKS[n])), n
    assert beacon(nodes, clock, "n1") == {"n0": None, "n2": None}


def test_a_neighbour_without_a_channel_or_a_revoked_key_brings_signatures_back():
    auth = LocalAuthority()
    for n in NODES:
        auth.issue(n)
    nodes, trust, clock = line(auth)
    converge(nodes, clock)
    n1 = nodes["n1"]
    # a neighbour in the topology that never came up: nothing to MAC for it, so a signature for all
    assert len(n1.protect(hello("n1", clock.ns), None, ("n0", "n2", "n9")).signature) == MLDSA65_SIG_LEN
    assert is_mac(n1.protect(hello("n1", clock.ns), "n0", ("n0", "n2", "n9")))   # unicast to n0: a MAC
    p = n1.protect(hello("n1", clock.ns), None, LINKS["n1"])
    auth.revoke("n1", "compromised")
    # a MAC under the revoked key is refused (and, unverifiable by a third party, is no evidence) ...
    assert nodes["n0"].inspect(p, wire(p), clock.ns) == ("revoked_key", None)
    # ... and n1 itself no longer MACs: its signatures make the revoked key evident to every neighbour
    assert len(n1.protect(hello("n1", clock.ns), None, LINKS["n1"]).signature) == MLDSA65_SIG_LEN
    # n0's session with n1 was made with n1's now revoked key: n0 signs as well
    assert len(nodes["n0"].protect(hello("n0", clock.ns), None, LINKS["n0"]).signature) == MLDSA65_SIG_LEN
    assert trust.directory.is_revoked(n1.key_id)


def test_macs_can_be_switched_off(auth):
    clock = Clock()
    trust = auth.trust()
    nodes = {n: NodeSecurity(n, auth.identities[n], trust, clock=clock, mac_control=False) for n in NODES}
    clock.ns += S
    converge(nodes, clock)
    assert len(nodes["n1"].protect(hello("n1", clock.ns), None, LINKS["n1"]).signature) == MLDSA65_SIG_LEN
