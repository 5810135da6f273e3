"""The link handshake's retry timeout adapts to a slow peer even when every attempt was given up (pure, real
keys and real hybrid handshakes from an in-process LocalAuthority). On a starved host an answer can take longer
than ``hs_timeout_s``: the initiator gives the attempt up and starts another one with a fresh key exchange, and
the late HS2 of the first one used to be dropped without measuring anything, so every retry was given up too."""
from __future__ import annotations

from x0tta6bl4.mesh.packets import decode, encode
from x0tta6bl4.mesh.security import NodeSecurity

from .test_meshsec_mac import NODES, Clock, beacon, deliver

S = 10**9


def test_a_late_answer_to_a_given_up_handshake_stretches_the_retry_timeout_and_the_next_attempt_completes(auth):
    clock = Clock()
    trust = auth.trust()
    nodes = {n: NodeSecurity(n, auth.identities[n], trust, clock=clock, hs_timeout_s=0.5) for n in NODES}
    clock.ns += S
    for n in NODES:
        beacon(nodes, clock, n)                      # signed first contact: n0 starts its handshake with n1
    n0, n1 = nodes["n0"], nodes["n1"]
    first = [p for p, to in n0.outbox if to == "n1"]
    assert len(first) == 1                            # HS1, not delivered yet (the peer is slow)
    n0.outbox = []
    started = clock.ns
    clock.ns += S // 2 + 1                            # past hs_timeout_s: given up, a second attempt starts
    n0.tick(clock.ns)
    assert n0.counters["hs.timeouts"] == 1
    n0.outbox = []                                    # ... whose HS1 is lost as well
    clock.ns = started + 3 * S // 2                   # the peer answers the first attempt 1.5 s after it began
    n1.outbox = []
    assert n1.on_handshake("n0", decode(encode(first[0])), clock.ns) is None
    hs2 = [p for p, to in n1.outbox if to == "n0"]
    assert n0.on_handshake("n1", decode(encode(hs2[0])), clock.ns) == "stale_handshake"   # of a given-up epoch
    assert n0.counters["hs.late_reply"] == 1
    # the round trip it measured (1.5 s) now sets the timeout: 4x that, not 0.5 s doubled once (1 s)
    clock.ns += 2 * S
    n0.tick(clock.ns)
    assert n0.counters["hs.timeouts"] == 1
    clock.ns += 9 * S                                 # 6 s doubled for the second retry, at most 10 s
    n0.tick(clock.ns)
    assert n0.counters["hs.timeouts"] == 2           # a lost attempt is still retried, later
    n1.outbox = []
    deliver(nodes, clock)                             # this one gets through: the link has its channel
    assert n0.channel_ready("n1") and n1.channel_ready("n0")

