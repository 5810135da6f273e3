"""The blue-green state machine (pure): every transition, rollback on health and verification failure,
idempotent re-run, timeouts, incomplete rollbacks; params; the Kubernetes green manifest."""
from __future__ import annotations

import pathlib

import pytest
import yaml

from x0tta6bl4.execution.bluegreen_local import green_deployment, kube_context
from x0tta6bl4.execution.deploy import BlueGreen, DeploySpec, HostInfo, Phase

P = Phase
BLUE = HostInfo("mesh-v1", version="v1", nodes=("n0", "n1"), topology="grid:4", traffic=("n0:n1",))


def machine(**params) -> BlueGreen:
    return BlueGreen(DeploySpec.from_params({"version": "v2", **params}))


def drive(m: BlueGreen, outcomes: dict[Phase, bool], blue: HostInfo | None = BLUE) -> list[Phase]:
    """Report each op's outcome (default ok); the phases visited."""
    seen = []
    while (op := m.next_op()) is not None:
        seen.append(op.phase)
        m.report(outcomes.get(op.phase, True), f"{op.phase.value} detail",
                 blue=blue if op.phase is P.DISCOVER else None)
    return seen


def test_successful_deployment_visits_every_phase_in_order_and_retires_blue():
    m = machine()
    assert drive(m, {}) == [P.DISCOVER, P.START_GREEN, P.HEALTH, P.STAND_DOWN_BLUE, P.ACTIVATE_GREEN, P.VERIFY,
                            P.RETIRE_BLUE]
    assert m.succeeded and m.phase is P.DONE and m.terminal
    assert [s.name for s in m.steps] == ["discover blue", "start green v2 in standby", "health of green v2",
                                         "stand down blue v1", "switch traffic to green v2", "verify green v2",
                                         "retire blue v1"]
    assert m.outcome().ok and m.outcome().detail == "green v2 serves; blue v1 retired"


def test_keep_blue_leaves_blue_in_standby():
    m = machine(keep_blue="true")
    assert P.RETIRE_BLUE not in drive(m, {})
    assert m.succeeded and "blue v1 kept in standby" in m.outcome().detail


def test_first_deployment_without_blue_skips_stand_down_and_retire():
    m = machine()
    assert drive(m, {}, blue=None) == [P.DISCOVER, P.START_GREEN, P.HEALTH, P.ACTIVATE_GREEN, P.VERIFY]
    assert m.succeeded and m.outcome().detail == "green v2 serves; none"


def test_failing_health_check_stops_green_and_never_touches_blue():
    m = machine()
    seen = drive(m, {P.HEALTH: False})
    assert seen == [P.DISCOVER, P.START_GREEN, P.HEALTH, P.ROLLBACK_STOP_GREEN]
    assert m.phase is P.ROLLED_BACK and not m.succeeded
    out = m.outcome()
    assert not out.ok and out.detail.startswith("rolled back to blue v1 serves again")
    assert "health check failed: health detail" in out.detail


def test_failing_verification_rolls_back_newest_first():
    m = machine()
    seen = drive(m, {P.VERIFY: False})
    assert seen[-4:] == [P.VERIFY, P.ROLLBACK_GREEN, P.ROLLBACK_BLUE, P.ROLLBACK_STOP_GREEN]
    assert m.phase is P.ROLLED_BACK and "verification failed" in m.reason
    assert [s.name for s in m.steps][-3:] == ["rollback: stand down green v2", "rollback: re-activate blue v1",
                                              "rollback: stop green v2"]


@pytest.mark.parametrize("failing, rollback", [
    (P.START_GREEN, [P.ROLLBACK_STOP_GREEN]),
    (P.STAND_DOWN_BLUE, [P.ROLLBACK_BLUE, P.ROLLBACK_STOP_GREEN]),
    (P.ACTIVATE_GREEN, [P.ROLLBACK_GREEN, P.ROLLBACK_BLUE, P.ROLLBACK_STOP_GREEN]),
])
def test_each_failure_undoes_exactly_what_was_done(failing, rollback):
    m = machine()
    seen = drive(m, {failing: False})
    assert seen[seen.index(failing) + 1:] == rollback
    assert m.phase is P.ROLLED_BACK


def test_discovery_failure_fails_without_rollback():
    m = machine()
    assert drive(m, {P.DISCOVER: False}) == [P.DISCOVER]
    assert m.phase is P.FAILED and "blue not discovered" in m.outcome().detail


def test_rerun_for_the_version_already_serving_is_a_no_op():
    m = machine()
    assert drive(m, {}, blue=HostInfo("mesh-v2", version="v2", active=True)) == [P.DISCOVER]
    assert m.succeeded and "already at version v2" in m.outcome().detail
    # a standby host at that version is not "serving": deploy again (green is reused by instance name)
    m = machine()
    assert P.START_GREEN in drive(m, {}, blue=HostInfo("mesh-v2", version="v2", active=False))
    assert DeploySpec.from_params({"version": "v2"}).green_instance == "mesh-v2"


def test_failed_rollback_step_is_reported_as_failed_not_rolled_back():
    m = machine()
    drive(m, {P.VERIFY: False, P.ROLLBACK_BLUE: False})
    assert m.phase is P.FAILED and m.rollback_failed
    assert m.steps[-1].name == "rollback: stop green v2", "the remaining rollback steps still run"
    assert "rollback incomplete" in m.outcome().detail


def test_retire_failure_keeps_green_and_says_so():
    m = machine()
    drive(m, {P.RETIRE_BLUE: False})
    assert m.phase is P.FAILED and "green v2 serves, but blue was not retired" in m.outcome().detail
    assert not any(s.name.startswith("rollback") for s in m.steps)


def test_abort_on_timeout_rolls_back_from_the_current_phase():
    m = machine()
    for _ in range(4):   # discover, start, health, stand down blue
        m.report(True, blue=BLUE if m.phase is P.DISCOVER else None)
    assert m.phase is P.ACTIVATE_GREEN
    assert m.abort("action timed out") is P.ROLLBACK_BLUE
    assert m.abort("again") is P.ROLLBACK_BLUE, "abort is idempotent"
    drive(m, {})
    assert m.phase is P.ROLLED_BACK and "action timed out" in m.outcome().detail
    with pytest.raises(RuntimeError):
        m.report(True)


@pytest.mark.parametrize("params, error", [
    ({}, "version"), ({"version": "../x"}, "version"), ({"version": "v2", "traffic": "n0-n8"}, "SRC:DST"),
    ({"version": "v2", "health_port": "http"}, "bad deploy params"),
    ({"version": "v2", "health_port": "70000"}, "range"),
    ({"version": "v2", "verify_timeout_s": "0"}, "timeout"),
])
def test_bad_params_are_refused(params, error):
    with pytest.raises(ValueError, match=error):
        DeploySpec.from_params(params)


def test_params_defaults_and_overrides():
    s = DeploySpec.from_params({"version": "v2"})
    assert (s.health_port, s.probe_node, s.keep_blue, s.fail_health, s.traffic) == (8080, "n0", False, False, ())
    s = DeploySpec.from_params({"version": "v2", "traffic": "n3:n5, n1:n2", "fail_health": "yes", "health_port": "0"})
    assert (s.traffic, s.probe_node, s.fail_health, s.health_port) == (("n3:n5", "n1:n2"), "n3", True, 0)


def test_host_info_from_status():
    h = HostInfo.from_status({"instance": "a", "version": "v1", "active": True, "nodes": ["n0"], "traffic": ["n0:n1"],
                              "rate": 20.0, "keys": "offline", "health_port": 9, "pid": 5})
    assert (h.instance, h.nodes, h.traffic, h.keys, h.pid) == ("a", ("n0",), ("n0:n1",), "offline", 5)


def test_green_deployment_is_the_mesh_manifest_renamed_in_standby():
    root = pathlib.Path(__file__).resolve().parents[3]
    docs = list(yaml.safe_load_all((root / "deploy" / "k8s" / "mesh-deployment.yaml").read_text()))
    spec = DeploySpec.from_params({"version": "v2.1", "traffic": "n1:n7", "fail_health": "1"})
    d = green_deployment(docs, spec)
    assert d["metadata"]["name"] == "x0tta6bl4-mesh-v2-1"
    assert d["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "x0tta6bl4-mesh-v2-1"}
    assert d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "v2.1"
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "x0tta6bl4:v2.1"
    cmd = c["command"]
    assert cmd[cmd.index("--traffic") + 1] == "n1:n7" and cmd.count("--traffic") == 1
    assert cmd[-6:] == ["--standby", "--instance", "mesh-v2.1", "--version", "v2.1", "--fail-health"]
    assert "8080" in cmd and c["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
    assert next(x for x in docs if x and x.get("kind") == "Deployment")["metadata"]["name"] == "x0tta6bl4-mesh", \
        "the blue manifest is not modified"


def test_kube_context_only_from_configuration(tmp_path):
    assert kube_context({"X0TTA6BL4_KUBE_CONTEXT": "prod"}) == "prod"
    # no kubeconfig file: kubectl is not even run
    assert kube_context({"KUBECONFIG": str(tmp_path / "missing")}) is None
