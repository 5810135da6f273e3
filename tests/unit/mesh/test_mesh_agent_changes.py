"""The node agent's side of an operator's change (issue #18): a link set down / up (not a fault: a heal does not
undo it), the HELLO timing set and restored, both reported in its telemetry. No sockets: the agent is not started."""
from __future__ import annotations

import pytest

from x0tta6bl4.mesh.agent import MeshAgent


def agent() -> MeshAgent:
    return MeshAgent("n1", peers={"n0": ("127.0.0.1", 9), "n2": ("127.0.0.1", 10)})


def test_a_link_down_and_up():
    a = agent()
    assert a.set_link("n2", "down") == "link n1-n2 down"
    assert a.links_down == {"n2"} and a.telemetry()["links_down"] == ["n2"]
    a.impair.clear()                                 # a heal clears faults, not an operator's change
    assert a.links_down == {"n2"}
    a.set_link("n2", "up")
    assert a.links_down == set()
    with pytest.raises(ValueError, match="'n7' is not a neighbour of n1"):
        a.set_link("n7", "down")
    with pytest.raises(ValueError, match="down or up"):
        a.set_link("n0", "sideways")


def test_hello_timing_set_reported_and_restored():
    a = agent()
    before = a.telemetry()["counters"]
    assert (before["config.hello_interval_s"], before["config.miss_count"]) == (0.2, 3.0)
    a.set_config(hello_interval=0.3)
    a.set_config(miss_count=5)
    c = a.telemetry()["counters"]
    assert (c["config.hello_interval_s"], c["config.miss_count"]) == (0.3, 5.0)
    nb = a.core.neighbours
    assert (nb.hello_interval, nb.miss_count, a.core.config.hello_interval) == (0.3, 5, 0.3)
    assert a.restore_config() == "restored hello_interval 0.3, miss_count 3"     # undoes the last change
    assert a.restore_config() == "restored hello_interval 0.2, miss_count 3"
    assert a.restore_config() == "nothing to restore"
    assert (a.core.neighbours.hello_interval, a.core.neighbours.miss_count) == (0.2, 3)


async def test_the_same_changes_as_stdin_commands_of_a_node_process():
    """What a netns mesh host sends to each node process (x0tta6bl4.mesh.netns_host: SET_LINK / SET_CONFIG)."""
    a = agent()
    assert await a.command({"kind": "set_link", "peer": "n0", "params": {"state": "down"}}) == {
        "ok": True, "detail": "link n1-n0 down"}
    assert a.links_down == {"n0"}
    r = await a.command({"kind": "set_config", "params": {"hello_interval": "0.5", "miss_count": "4"}})
    assert r["ok"] and (a.config.hello_interval, a.config.miss_count) == (0.5, 4)
    r = await a.command({"kind": "set_config", "params": {"restore": "previous"}})
    assert r == {"ok": True, "detail": "restored hello_interval 0.2, miss_count 3"}
    with pytest.raises(ValueError, match="down or up"):
        await a.command({"kind": "set_link", "peer": "n0", "params": {"state": ""}})
