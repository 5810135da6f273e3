"""topology_update and config_change (x0tta6bl4.execution.changes): parameters checked when the proposal is
made, the executor's steps, their undo, and the telemetry check of the change."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from x0tta6bl4.execution import changes
from x0tta6bl4.execution.actions import UnsupportedAction, plan_steps, undo_steps
from x0tta6bl4.v1 import events_pb2, mesh_pb2

K = events_pb2
C = mesh_pb2.MeshCommand


@pytest.mark.parametrize(("kind", "target", "params", "says"), [
    ("topology_update", "", {"state": "down"}, "needs link=A,B"),
    ("topology_update", "n3", {}, "a route refresh is for every node"),
    ("topology_update", "", {"link": "n1", "state": "down"}, "two node names"),
    ("topology_update", "", {"link": "n1,n1", "state": "down"}, "to itself"),
    ("topology_update", "", {"link": "n1,n 2", "state": "down"}, "not a node name"),
    ("topology_update", "", {"link": "n1,n2", "state": "sideways"}, "state must be down or up"),
    ("topology_update", "", {"link": "n1,n2", "state": "down", "cost": "3"}, "unknown parameter(s) cost"),
    ("topology_update", "n7", {"link": "n1,n2", "state": "down"}, "not an end of link"),
    ("config_change", "", {"hello_interval": "fast"}, "hello_interval must be a number"),
    ("config_change", "", {"hello_interval": "9"}, "between 0.05 and 2"),
    ("config_change", "", {"miss_count": "2.5"}, "miss_count must be an integer"),
    ("config_change", "", {"routing": "olsr"}, "unknown parameter 'routing'"),
    ("config_change", "n3", {"hello_interval": "0.3"}, "applies to every node"),
])
def test_bad_parameters_are_refused_naming_what_is_wrong(kind, target, params, says):
    with pytest.raises(changes.ChangeError) as e:
        changes.validate(kind, target, params)
    assert says in str(e.value)


def test_good_parameters_pass():
    changes.validate("topology_update", "n1", {"link": "n1,n2", "state": "DOWN"})
    changes.validate("config_change", "*", {"hello_interval": "0.3", "miss_count": "4"})
    changes.validate("config_change", "", {})   # no parameter: no change
    changes.validate("topology_update", "", {})   # no parameter: a route refresh everywhere
    changes.validate("reroute", "n3", {"anything": "x"})   # other kinds are not checked here
    assert changes.config_values({"hello_interval": "0.3", "miss_count": "4", "generation": "g"}) == {
        "hello_interval": 0.3, "miss_count": 4.0}


def test_topology_update_steps_and_undo():
    spec = K.ActionSpec(kind=K.ACTION_KIND_TOPOLOGY_UPDATE, params={"link": "n1,n2", "state": "down"})
    (phase,) = plan_steps(spec, ["n0", "n1", "n2"])
    assert [(s.node, s.command, s.peer, s.params["state"]) for s in phase] == [
        ("n1", C.KIND_SET_LINK, "n2", "down"), ("n2", C.KIND_SET_LINK, "n1", "down")]
    (undo,) = undo_steps(spec, ["n1", "n2"])
    assert [(s.node, s.peer, s.params["state"]) for s in undo] == [("n1", "n2", "up"), ("n2", "n1", "up")]
    refresh = K.ActionSpec(kind=K.ACTION_KIND_TOPOLOGY_UPDATE)
    (phase,) = plan_steps(refresh, ["n0", "n1"])
    assert [(s.node, s.command) for s in phase] == [("n0", C.KIND_FLUSH_ROUTES), ("n1", C.KIND_FLUSH_ROUTES)]
    assert undo_steps(refresh, ["n0", "n1"]) is None
    with pytest.raises(UnsupportedAction, match="state must be down or up"):
        plan_steps(K.ActionSpec(kind=K.ACTION_KIND_TOPOLOGY_UPDATE, params={"link": "a,b"}), [])


def test_config_change_steps_and_undo():
    spec = K.ActionSpec(kind=K.ACTION_KIND_CONFIG_CHANGE, params={"hello_interval": "0.30"})
    (phase,) = plan_steps(spec, ["n0", "n1"])
    assert [(s.node, s.command, s.params) for s in phase] == [
        ("n0", C.KIND_SET_CONFIG, {"hello_interval": "0.3"}), ("n1", C.KIND_SET_CONFIG, {"hello_interval": "0.3"})]
    (undo,) = undo_steps(spec, ["n0", "n1"])
    assert [(s.node, s.params) for s in undo] == [("n0", {"restore": "previous"}), ("n1", {"restore": "previous"})]
    assert plan_steps(K.ActionSpec(kind=K.ACTION_KIND_CONFIG_CHANGE), ["n0"]) == []   # nothing to change


@dataclass
class T:
    node_id: str
    neighbours: list[str]
    counters: dict = field(default_factory=dict)
    reachable: bool = True


def test_check_reads_the_change_from_telemetry():
    down = {"link": "a,b", "state": "down"}
    ok, bad = changes.check("topology_update", down, [T("a", ["c"]), T("b", ["c"]), T("c", ["a", "b"])])
    assert ok == ["link a,b is down at both ends"] and bad == []
    ok, bad = changes.check("topology_update", down, [T("a", ["b", "c"]), T("b", ["c"])])
    assert bad == ["link a,b down: a still lists b as a neighbour"]
    ok, bad = changes.check("topology_update", {"link": "a,b", "state": "up"}, [T("a", ["b"])])
    assert bad == ["link a,b: b reports nothing"]
    cfg = {"hello_interval": "0.3"}
    on = {"config.hello_interval_s": 0.3}
    ok, bad = changes.check("config_change", cfg, [T("a", [], on), T("b", [], on)])
    assert ok == ["hello_interval=0.3 in force at 2 node(s)"] and bad == []
    ok, bad = changes.check("config_change", cfg, [T("a", [], on), T("b", [], {"config.hello_interval_s": 0.2}),
                                                   T("c", [], {})])
    assert bad == ["hello_interval=0.3 not in force at b, c"]


def test_the_clients_refuse_what_could_never_run_before_calling_the_service():
    from x0tta6bl4.cli import gov
    with pytest.raises(gov.GovError, match="a reroute proposal needs a target node"):
        gov.action_spec("reroute")
    with pytest.raises(gov.GovError, match="INVALID_ARGUMENT: topology_update: state must be down or up"):
        gov.action_spec("topology_update", params=["link=n1,n2", "state=off"])
    with pytest.raises(gov.GovError, match="--param must be KEY=VALUE"):
        gov.action_spec("config_change", params=["hello_interval"])
    with pytest.raises(gov.GovError, match="--action must be one of"):
        gov.action_spec("teleport")
    spec = gov.action_spec("reinstate", "n3")
    assert spec.kind == K.ACTION_KIND_REINSTATE and spec.target_node == "n3"
    spec = gov.action_spec("topology_update", params=["link=n1,n2", "state=down"])
    assert spec.kind == K.ACTION_KIND_TOPOLOGY_UPDATE and dict(spec.params) == {"link": "n1,n2", "state": "down"}
