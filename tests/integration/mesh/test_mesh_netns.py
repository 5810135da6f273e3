"""Namespace mode: each node in its own network namespace, linked by veth pairs."""

from __future__ import annotations

import subprocess
import time

import pytest

from x0tta6bl4.mesh.netns import NetnsMesh, netns_available
from x0tta6bl4.mesh.topology import ring

_ok, _why = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(not _ok, reason=f"network namespaces unavailable: {_why}"),
]


def _delivered(m: NetnsMesh, n: str, since: float, min_hops: int = 0) -> list[dict]:
    return [r for r in m.records(n, "delivered", since) if r["origin"] == "n0" and r["hops"] >= min_hops]


def test_netns_ring_kill_relay_reroutes():
    # ring of 6: n0 -> n2 goes n0-n1-n2 (2 hops); the detour is n0-n5-n4-n3-n2
    topo = ring(6)
    with NetnsMesh(topo, telemetry_interval=0.5) as m:
        names = list(m.created_ns)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(ns in listed for ns in names)
        m.start(traffic={"n0": "n2"}, rate=50)
        first = m.wait_for("n2", lambda r: r.get("type") == "delivered", timeout=15)
        assert first is not None, "no DATA delivered across namespaces"
        time.sleep(0.5)
        assert _delivered(m, "n2", 0)[-1]["hops"] == 1  # one relay (n1)
        t_kill = time.monotonic()
        m.kill("n1")
        lost = m.wait_for(
            "n0", lambda r: r.get("type") == "event" and r["kind"] == "neighbour_lost" and r["peer"] == "n1",
            timeout=5, since=t_kill,
        )  # fmt: skip
        assert lost is not None
        rerouted = m.wait_for("n2", lambda r: r.get("type") == "delivered" and r["hops"] == 3, timeout=5, since=t_kill)
        assert rerouted is not None, "traffic was not rerouted around the killed node"
        detect, repair = lost["_rx"] - t_kill, rerouted["_rx"] - t_kill
        print(f"\nnetns: detection {detect * 1000:.0f} ms, traffic rerouted after {repair * 1000:.0f} ms")
        assert detect < 0.9 and repair < 1.5
        time.sleep(0.5)
        assert len(_delivered(m, "n2", t_kill + repair, min_hops=3)) > 10

        # kernel-level loss with nftables on the new relay n4: statistics see it
        m.apply("loss n4 30")
        out = subprocess.run(
            ["ip", "netns", "exec", m.nodes["n4"].ns, "nft", "list", "ruleset"], capture_output=True, text=True
        ).stdout
        assert "numgen random mod 100 < 30" in out and "drop" in out
        # link cut with ip link set down (both veth ends): the neighbour is declared lost
        t_heal = time.monotonic()
        m.apply("heal")
        assert m.alive("n1")  # restarted
        back = m.wait_for("n0", lambda r: r.get("type") == "telemetry" and "n1" in r["neighbours"], 15, t_heal)
        assert back is not None, "restarted n1 must become n0's neighbour again"
        t_part = time.monotonic()
        m.apply("partition n0 n1")
        lost2 = m.wait_for(
            "n0", lambda r: r.get("type") == "event" and r["kind"] == "neighbour_lost" and r["peer"] == "n1",
            timeout=5, since=t_part,
        )  # fmt: skip
        assert lost2 is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in names), "namespaces must be cleaned up"
