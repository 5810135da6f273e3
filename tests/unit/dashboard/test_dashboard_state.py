"""The dashboard's picture of the system, folded from bus messages (no broker: the messages are built here)."""
from __future__ import annotations

import asyncio
import json
import math
import re
from importlib import resources

import pytest

from x0tta6bl4.bus import permissions, subjects
from x0tta6bl4.dashboard.server import DashboardServer, Request
from x0tta6bl4.dashboard.state import DashboardState, layout, trace_id_of
from x0tta6bl4.v1 import common_pb2, events_pb2, governance_pb2

S = 1_000_000_000
NOW = 1_800_000_000 * S


def tel(node: str, neighbours=(), ts=NOW, reachable=True, **kw) -> events_pb2.NodeTelemetry:
    t = events_pb2.NodeTelemetry(node_id=node, neighbours=list(neighbours), reachable=reachable, **kw)
    t.meta.ts_unix_ns = ts
    return t


def meta(cycle: str, ts: int) -> common_pb2.Meta:
    return common_pb2.Meta(cycle_id=cycle, ts_unix_ns=ts, producer="test")


def line_mesh() -> DashboardState:
    st = DashboardState()
    st.apply_telemetry(tel("n0", ["n1"]))
    st.apply_telemetry(tel("n1", ["n0", "n2"]))
    st.apply_telemetry(tel("n2", ["n1"]))
    return st


def by_id(view):
    return {n["id"]: n for n in view["nodes"]}


def test_nodes_links_health_and_silence():
    st = line_mesh()
    view = st.mesh_view(NOW + S)
    assert [n["id"] for n in view["nodes"]] == ["n0", "n1", "n2"]
    assert {(lk["a"], lk["b"], lk["up"]) for lk in view["links"]} == {("n0", "n1", True), ("n1", "n2", True)}
    assert {n["health"] for n in view["nodes"]} == {"healthy"} and view["counts"] == {"healthy": 3}
    # n2 declared unreachable by the monitor: failed at once, its link down (the link is remembered)
    st.apply_telemetry(tel("n2", ["n1"], reachable=False))
    st.apply_telemetry(tel("n1", ["n0"]))
    view = st.mesh_view(NOW + S)
    n2 = by_id(view)["n2"]
    assert n2["silent"] and n2["health"] == "critical" and n2["reasons"] == ["unreachable"]
    assert {(lk["a"], lk["b"], lk["up"]) for lk in view["links"]} == {("n0", "n1", True), ("n1", "n2", False)}
    # no report for longer than silent_after_s: failed too
    view = st.mesh_view(NOW + 10 * S)
    assert all(n["silent"] for n in view["nodes"]) and "silent for 10 s" in by_id(view)["n0"]["reasons"]


def test_the_map_layout_follows_the_links():
    grid = [(f"n{r * 3 + c}", f"n{r * 3 + c + 1}") for r in range(3) for c in range(2)] + \
        [(f"n{r * 3 + c}", f"n{(r + 1) * 3 + c}") for r in range(2) for c in range(3)]
    names = [f"n{i}" for i in range(9)]
    pos = layout(names, grid)
    assert pos == layout(names, grid), "deterministic"
    assert all(0 <= x <= 1 and 0 <= y <= 1 for x, y in pos.values())
    assert abs(pos["n4"][0] - 0.5) < 0.1 and abs(pos["n4"][1] - 0.5) < 0.1, "the grid's centre in the middle"
    assert {(round(x), round(y)) for n, (x, y) in pos.items() if n in ("n0", "n2", "n6", "n8")} == \
        {(0, 0), (1, 0), (0, 1), (1, 1)}, "its corners at the corners"
    ring = [(f"n{i}", f"n{(i + 1) % 8}") for i in range(8)]
    radii = [math.dist(p, (0.5, 0.5)) for p in layout([f"n{i}" for i in range(8)], ring).values()]
    assert max(radii) - min(radii) < 0.1, "a ring is drawn as a circle"
    # a link lost does not move the nodes (the layout is of the links ever seen)
    st = line_mesh()
    before = {n["id"]: (n["x"], n["y"]) for n in st.mesh_view(NOW)["nodes"]}
    st.apply_telemetry(tel("n1", ["n0"]))
    assert {n["id"]: (n["x"], n["y"]) for n in st.mesh_view(NOW)["nodes"]} == before


def test_a_warning_from_the_thresholds():
    st = DashboardState()
    st.apply_telemetry(tel("n0", p99_latency_ms=500.0))
    n0 = by_id(st.mesh_view(NOW))["n0"]
    assert n0["health"] in ("warning", "critical") and any("p99_latency_ms" in r for r in n0["reasons"])


def test_routed_around_is_the_avoided_bucket_and_agents_avoiding_are_listed():
    st = line_mesh()
    st.apply_telemetry(tel("n0", ["n1"], avoided=["n1"]))
    n1 = by_id(st.mesh_view(NOW))["n1"]
    assert not n1["routed_around"] and n1["avoided_by"] == ["n0"]     # told, not yet verified
    st.apply_avoided("n1", json.dumps({"node": "n1", "fault": "node_down", "since_ns": NOW}).encode())
    view = st.mesh_view(NOW)
    assert by_id(view)["n1"]["routed_around"] and view["routed_around"] == ["n1"]
    assert by_id(view)["n1"]["avoided"] == {"fault": "node_down", "since_ns": NOW}
    assert st.apply_avoided("n1", None) == {"mesh"} and not by_id(st.mesh_view(NOW))["n1"]["routed_around"]
    assert st.apply_avoided("n9", b"not json") == {"mesh"} and "n9" in st.avoided   # a key is enough


def test_a_cycle_with_its_trace_and_stages():
    st = DashboardState()
    tp = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    w = events_pb2.TelemetryWindow(meta=meta("c1", NOW), trigger_node="n4", trigger_reasons=["unreachable"])
    a = events_pb2.Anomaly(meta=meta("c1", NOW + 1), root_cause="n4", fault_type="node_down", confidence=0.97)
    p = events_pb2.Plan(meta=meta("c1", NOW + 2), decision=events_pb2.DECISION_KIND_AUTO_EXECUTE,
                        action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_REROUTE, target_node="n4"))
    v = events_pb2.Verification(meta=meta("c1", NOW + 4), recovered=True, mttr_ms=1700,
                                action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_REROUTE, target_node="n4"))
    for subject, m in ((subjects.MAPEK_ANOMALY, a), (subjects.MAPEK_TELEMETRY, w), (subjects.MAPEK_PLAN, p),
                       (subjects.MAPEK_VERIFIED, v)):
        assert st.apply_mapek(subject, m.SerializeToString(), tp) == {"cycles"}
    cur = st.cycles_view(NOW + 5)["current"]
    assert cur["cycle_id"] == "c1" and cur["trace_id"] == "ab" * 16 and cur["status"] == "verified"
    assert (cur["target"], cur["fault"]) == ("n4", "node_down")
    assert [s["stage"] for s in cur["stages"]] == ["monitor", "analyze", "plan", "verify"]   # in time order
    assert cur["stages"][2]["text"] == "auto_execute: reroute n4"
    assert "MTTR 1.70 s" in cur["stages"][3]["text"]
    assert st.cycles_view(NOW + 5)["recent"][0]["cycle_id"] == "c1"
    # a periodic window with nothing after it is the current cycle, not a recent one
    st.apply_mapek(subjects.MAPEK_TELEMETRY, events_pb2.TelemetryWindow(meta=meta("c2", NOW + 9)).SerializeToString())
    view = st.cycles_view(NOW + 10)
    assert view["current"]["cycle_id"] == "c2" and [c["cycle_id"] for c in view["recent"]] == ["c1"]
    assert view["current"]["status"] == "open"
    assert st.cycles_view(NOW + 20 * S)["current"]["status"] == "no anomaly"    # quiet for settle_s: found nothing
    # an anomaly no plan followed (the planner already handles the incident) settles as "no action"
    st.apply_mapek(subjects.MAPEK_ANOMALY, events_pb2.Anomaly(meta=meta("c3", NOW + 11), root_cause="n0",
                                                              fault_type="path_degraded").SerializeToString())
    st.apply_mapek(subjects.MAPEK_TELEMETRY, events_pb2.TelemetryWindow(meta=meta("c3", NOW + 10)).SerializeToString())
    statuses = {c["cycle_id"]: c["status"] for c in st.cycles_view(NOW + 20 * S)["recent"]}
    assert statuses == {"c1": "verified", "c3": "no action"}
    assert {c["cycle_id"]: c["status"] for c in st.cycles_view(NOW + 12)["recent"]} == {"c1": "verified", "c3": "open"}
    # what is not a MAPE-K stage or has no cycle is not shown
    assert st.apply_mapek("mapek.unknown", b"") == set()
    assert st.apply_mapek(subjects.MAPEK_ANOMALY, events_pb2.Anomaly().SerializeToString()) == set()
    assert st.apply_mapek(subjects.MAPEK_ANOMALY, b"\xff\xff\xff") == set()


def test_trace_ids():
    assert trace_id_of("00-" + "0f" * 16 + "-" + "1" * 16 + "-01") == "0f" * 16
    assert trace_id_of(None) == "" and trace_id_of("garbage") == ""


def test_audit_feed_is_bounded_and_newest_first():
    st = DashboardState(max_audit=3)
    for i in range(5):
        ev = events_pb2.AuditEvent(meta=meta(f"c{i}", NOW + i), service="executor", event_type="action.executed",
                                   subject_id=f"a{i}", chain_id="executor-0", chain_seq=i + 1, trace_id="t")
        ev.details["ok"] = "true"
        st.apply_audit(ev.SerializeToString())
    events = st.section("audit", NOW)["events"]
    assert [e["subject_id"] for e in events] == ["a4", "a3", "a2"] and events[0]["chain"] == "executor-0#5"
    assert events[0]["details"] == {"ok": "true"}


def test_proposals_with_their_tallies():
    st = DashboardState()
    p = governance_pb2.Proposal(id="p1", title="reroute n4", state=governance_pb2.PROPOSAL_STATE_ACTIVE,
                                action=events_pb2.ActionSpec(kind=events_pb2.ACTION_KIND_REROUTE, target_node="n4"),
                                tally=governance_pb2.Tally(yes=3.0, no=1.0, eligible=5.0, turnout=0.8, voters=2),
                                quorum=0.5)
    voted = governance_pb2.ProposalEvent(kind="voted", proposal=p)
    assert st.apply_proposal(voted.SerializeToString()) == {"proposals"}
    p.state = governance_pb2.PROPOSAL_STATE_PASSED
    st.apply_proposal(governance_pb2.ProposalEvent(kind="passed", proposal=p).SerializeToString())
    [shown] = st.section("proposals", NOW)["proposals"]
    assert shown["state"] == "passed" and shown["tally"]["yes"] == 3.0 and shown["action"] == "reroute n4"
    assert st.apply_proposal(b"\xff") == set()
    with pytest.raises(KeyError, match="no dashboard section 'nope'"):
        st.section("nope", NOW)


# ---- the HTTP routes (called directly: no socket) -------------------------------------------------------------
def route(server: DashboardServer, method: str, path: str, headers=None, body=b"") -> tuple[int, dict | bytes]:
    raw = asyncio.run(server.route(Request(method, path, headers or {}, body)))
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(payload) if b"application/json" in head else payload


def test_writes_need_the_token_and_bad_input_is_named():
    calls = []

    async def cycle(body):
        calls.append(body)
        return {"cycle_id": "c9", "nodes": 3}
    server = DashboardServer(line_mesh(), "t" * 32, request_cycle=cycle, clock_ns=lambda: NOW)
    status, doc = route(server, "POST", "/api/cycle")
    assert status == 401 and "Authorization: Bearer" in doc["error"] and not calls
    status, _ = route(server, "POST", "/api/cycle", {"authorization": "Bearer " + "x" * 32})
    assert status == 401 and not calls
    status, doc = route(server, "POST", "/api/cycle", {"authorization": "Bearer " + "t" * 32}, b"{oops")
    assert status == 400 and "JSON object" in doc["error"] and not calls
    status, doc = route(server, "POST", "/api/cycle", {"authorization": "Bearer " + "t" * 32}, b'{"trigger": "n1"}')
    assert (status, doc) == (200, {"cycle_id": "c9", "nodes": 3}) and calls == [{"trigger": "n1"}]
    assert route(server, "DELETE", "/api/state")[0] == 405 and route(server, "GET", "/api/cycle")[0] == 405
    status, doc = route(server, "GET", "/nope")
    assert status == 404 and "/nope" in doc["error"]
    status, state = route(server, "GET", "/api/state")
    assert status == 200 and set(state) == {"mesh", "cycles", "proposals", "audit"}
    assert route(server, "GET", "/ready")[0] == 503


def test_on_loopback_only_loopback_host_names_are_answered():
    server = DashboardServer(DashboardState(), "t" * 32, port=8088)
    ok = [Request("GET", "/", {"host": h}, b"") for h in ("127.0.0.1:8088", "localhost:8088", "[::1]:8088")]
    assert all(server.host_allowed(r) for r in ok)
    assert not server.host_allowed(Request("GET", "/", {"host": "evil.example:8088"}, b""))
    assert not server.host_allowed(Request("GET", "/", {}, b""))
    assert DashboardServer(DashboardState(), "t" * 32, host="0.0.0.0").host_allowed(
        Request("GET", "/", {"host": "mesh-ops.example"}, b""))


def test_in_a_container_only_the_allowed_host_names_are_answered_but_probes_are():
    """A container listens on 0.0.0.0 behind a port published on the host's 127.0.0.1: the loopback names it
    is given are still the only ones a page may address (DNS rebinding), except /health and /ready."""
    server = DashboardServer(DashboardState(), "t" * 32, host="0.0.0.0", allowed_hosts=("127.0.0.1", "LocalHost", " "))
    assert server.allowed_hosts == ("127.0.0.1", "localhost")
    assert all(server.host_allowed(Request("GET", p, {"host": h}, b""))
               for p in ("/", "/api/state", "/events") for h in ("127.0.0.1:18088", "localhost:8080"))
    assert not server.host_allowed(Request("GET", "/api/state", {"host": "evil.example:18088"}, b""))
    assert not server.host_allowed(Request("POST", "/api/cycle", {"host": "10.0.0.7:8080"}, b""))
    assert all(server.host_allowed(Request("GET", p, {"host": "10.0.0.7:8080"}, b"")) for p in ("/health", "/ready"))


def test_the_page_is_self_contained():
    """No CDN: every script, style and image the page loads comes from the dashboard itself."""
    server = DashboardServer(DashboardState(), "t" * 32)
    status, html = route(server, "GET", "/")
    assert status == 200 and isinstance(html, bytes)
    refs = re.findall(rb'(?:src|href)="([^"#]+)"', html)
    assert refs and all(r.startswith(b"/static/") for r in refs), refs
    for r in refs:
        assert route(server, "GET", r.decode())[0] == 200
    js = resources.files("x0tta6bl4.dashboard").joinpath("static", "app.js").read_text()
    assert "innerHTML" not in js, "data goes into the page as text, never as markup"


# ---- contrast ---------------------------------------------------------------------------------------------------
def luminance(hex_colour: str) -> float:
    rgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_text_contrast_is_readable():
    """WCAG AA (4.5:1) for every text and background pair the stylesheet uses."""
    css = resources.files("x0tta6bl4.dashboard").joinpath("static", "style.css").read_text()
    var = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6})", css))
    pairs = [("fg", "bg"), ("fg", "panel"), ("muted", "bg"), ("muted", "panel"), ("open", "bg"),
             ("healthy", "panel"), ("critical", "panel")]          # body text, headings, status line
    pairs += [("on-colour", c) for c in ("healthy", "warning", "critical", "routed", "unknown", "open")]  # labels
    low = {f"{a} on {b}": round(contrast(var[a], var[b]), 2) for a, b in pairs if contrast(var[a], var[b]) < 4.5}
    assert not low, low


# ---- the bus identity -------------------------------------------------------------------------------------------
def test_the_dashboard_identity_reads_and_may_only_ask_for_a_cycle():
    p = permissions.table().get(permissions.DASHBOARD)
    plain = [s for s in p.publish if not s.startswith(("$JS", "$KV"))]
    assert plain == [subjects.MONITOR_CYCLE], plain
    assert not [s for s in p.publish if s.startswith("$KV.")], "writes no key-value bucket"
    assert f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_MAPEK}" in p.publish
    assert f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_AUDIT}" in p.publish
    assert "$JS.API.CONSUMER.CREATE.KV_telemetry" in p.publish and "$JS.API.CONSUMER.CREATE.KV_avoided" in p.publish
    assert not any(s.endswith(("KV_keyvault", "KV_keys", f".{subjects.STREAM_GOV}")) for s in p.publish)
    assert [s for s in p.subscribe if not s.startswith("_INBOX")] == [subjects.GOV_WATCH_ALL]
    assert not p.allow_responses and "$JS.API.STREAM.DELETE.>" in p.deny_publish
