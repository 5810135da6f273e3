"""Routes that improve, on a ring of 6 nodes in network namespaces (issue #21).

One mesh for the module (:class:`~x0tta6bl4.mesh.netns_routes.RingRoutes`): a DATA flow with end-to-end
ACKs from n0 to n2 at 50 packets/s, short path n0-n1-n2, detour n0-n5-n4-n3-n2.

* the relay n1 is killed (SIGKILL) and started again, 5 times: traffic takes the detour, and is back on
  the 2-hop path within 2 s of the relay's return, without loss while it moves;
* nftables drops 10, 30 and 50 % of what the relay receives and sends: the flow leaves it at most once
  and delivers round trip. The issue's windows are 30 s; here they are 12 s (the whole module stays under
  two minutes) and the check is that the packets lost in the window stay within 5 % of what a 30 s window
  sends, with the window's second half delivering fully (so the rest of a 30 s window would add no loss).
  ``bench/bench_routes.py`` runs the full 30 s windows;
* once the loss is removed the relay's links are re-admitted after a clean streak of HELLOs, sent four
  times as often while a lossy link recovers (neighbours.py), and traffic is back on the 2-hop path
  (``bench/bench_routes.py`` measures it against the issue's 2 s; here a looser bound holds on a busy
  machine), not after the 64-HELLO window (12.8 s) it took before.
"""

from __future__ import annotations

import pytest
from testkit import scaled

from x0tta6bl4.mesh.netns import NetnsMesh, netns_available
from x0tta6bl4.mesh.netns_routes import RingRoutes
from x0tta6bl4.mesh.topology import ring

_ok, _why = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(not _ok, reason=f"network namespaces unavailable: {_why}"),
]

WINDOW_S = 12.0
ISSUE_WINDOW_S = 30.0
BACK_S = 4.0        # loss removed -> DATA over the relay again (measured 1.2-1.9 s; the simulator's ring: < 2 s)


@pytest.fixture(scope="module")
def rr():
    with NetnsMesh(ring(6), telemetry_interval=1.0) as m:
        m.start(traffic={"n0": "n2"}, rate=50)
        r = RingRoutes(m)
        r.on_path(r.short, timeout=scaled(20))
        yield r


def test_traffic_is_back_on_the_returned_relay_within_2s(rr):
    trials = [rr.relay_return(move_window_s=2.0) for _ in range(5)]
    print("\nrelay returns:", [t.row() for t in trials])
    for t in trials:
        assert t.detour_s < scaled(1.5), t.row()        # the kill is routed around
        assert t.back_s < scaled(2.0), t.row()          # the short path is taken again once the relay is back
        assert t.delivery == 1.0, t.row()               # no loss while moving back
        assert t.hops and t.hops[-1] == rr.short, t.row()


@pytest.mark.parametrize("pct", [10, 30, 50])
def test_lossy_relay_is_left_once_and_delivery_holds(rr, pct):
    t = rr.lossy_relay(pct, WINDOW_S, back_timeout=scaled(BACK_S) + 2.0)
    print(f"\nloss {pct} %:", t.row(), f"delivery over {ISSUE_WINDOW_S:.0f} s: {t.delivery_over(ISSUE_WINDOW_S):.4f}")
    try:
        assert t.back_s is not None and t.back_s < scaled(BACK_S), t.row()   # clean again: taken back
        assert t.sent > 0.5 * 50 * WINDOW_S, t.row()    # the flow ran through the window
        assert t.left_after_s is not None, t.row()      # the lossy relay was left (for the clean detour) ...
        assert t.switches <= 1 and all(n <= 1 for n in t.end_switches.values()), t.row()   # ... once, no flap
        assert t.tail >= 0.98, t.row()                  # the detour delivers
        assert t.delivery_over(ISSUE_WINDOW_S) >= 0.95, t.row()
    finally:
        if t.back_s is None:
            rr.restore()
        else:
            rr.on_path(rr.short, timeout=scaled(10))


def test_no_data_looped_through_the_trials(rr):
    # every node's counters as last reported (the relay's since its last restart)
    loops = rr.loops(fresh=True)
    assert len(loops) == 6 and not any(loops.values()), f"DATA dropped for a loop or an exhausted TTL: {loops}"
