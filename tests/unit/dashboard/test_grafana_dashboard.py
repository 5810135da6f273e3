"""deploy/grafana/x0tta6bl4-dashboard.json: a Grafana dashboard (JSON model, schemaVersion 39: Grafana 10.4 and
later) whose every PromQL expression names metrics the services really export, with labels they really have.

The exported metrics are collected from the code's registries: the monitor's (``build_registry``) and
prometheus_client's default registry after importing every module that defines one (what a service's /metrics
serves), with the sample names prometheus_client gives them (a counter ``x`` is exposed as ``x_total``, a
histogram as ``x_bucket``, ``x_sum``, ``x_count``).
"""
from __future__ import annotations

import importlib
import json
import pathlib
import re

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from x0tta6bl4.monitoring.prometheus import build_registry

ROOT = pathlib.Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "x0tta6bl4-dashboard.json"
# every module that defines a metric at import (the monitor's per-node metrics come from build_registry)
METRIC_MODULES = ("x0tta6bl4.bus.app", "x0tta6bl4.rpc.server", "services.monitor.main", "services.governance.store")
PANEL_TYPES = {"row", "timeseries", "stat", "table", "gauge", "bargauge", "state-timeline", "text"}
FUNCTIONS = {"rate", "irate", "increase", "sum", "max", "min", "avg", "count", "histogram_quantile", "vector",
             "topk", "bottomk", "abs", "delta", "deriv", "clamp_min", "clamp_max", "max_over_time", "min_over_time",
             "avg_over_time", "changes", "resets", "time", "scalar", "label_replace", "quantile"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
TARGET_LABELS = {"job", "instance"}            # added by the Prometheus scrape, not the exporter


def exported() -> dict[str, set[str]]:
    """Sample name -> its label names, for every metric the code exports."""
    for m in METRIC_MODULES:
        importlib.import_module(m)
    out: dict[str, set[str]] = {}
    collectors = list(getattr(REGISTRY, "_collector_to_names", {}))
    monitor = build_registry(CollectorRegistry())
    collectors += list(getattr(monitor.registry, "_collector_to_names", {}))
    for c in collectors:
        labels = set(getattr(c, "_labelnames", ()))
        kind = getattr(c, "_type", "")
        name = getattr(c, "_name", "")
        if not name.startswith("x0_"):
            continue
        if kind == "counter":
            out[name + "_total"] = labels
        elif kind == "histogram":
            out.update({name + "_bucket": labels | {"le"}, name + "_sum": labels, name + "_count": labels})
        else:
            out[name] = labels
    return out


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(doc: dict) -> list[dict]:
    out = []
    for p in doc["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_it_is_a_grafana_dashboard():
    doc = load()
    assert isinstance(doc["title"], str) and doc["title"] and re.fullmatch(r"[a-z0-9-]{1,40}", doc["uid"])
    assert doc["schemaVersion"] == 39 and isinstance(doc["version"], int)
    assert set(doc["time"]) == {"from", "to"} and isinstance(doc["templating"]["list"], list)
    [ds] = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert ds["query"] == "prometheus"
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for p in panels(doc):
        assert p["type"] in PANEL_TYPES, p["type"]
        g = p["gridPos"]
        assert set(g) == {"h", "w", "x", "y"} and all(isinstance(v, int) and v >= 0 for v in g.values()), g
        assert g["w"] >= 1 and g["h"] >= 1 and g["x"] + g["w"] <= 24, (p["title"], g)
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${" + ds["name"] + "}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        assert all(t["expr"].strip() for t in p["targets"]), p["title"]


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)                                       # range selectors
    return re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", r"\1", expr)        # grouping label lists


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names it matches on) for every series selector of a PromQL expression; raises on an
    identifier that is neither a metric, a known function nor a keyword."""
    out: list[tuple[str, set[str]]] = []
    tokens = [m.group(0) for m in re.finditer(r"\{[^}]*\}|[A-Za-z_:][A-Za-z0-9_:]*|\S", _strip(expr))]
    for i, tok in enumerate(tokens):
        if not re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", tok) or tok in KEYWORDS or tok in ("e", "inf", "nan"):
            continue
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if nxt == "(" or (nxt in ("by", "without") and tok in FUNCTIONS):    # sum by (...) (...)
            assert tok in FUNCTIONS, f"unknown PromQL function {tok!r} in {expr!r}"
            continue
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", nxt)) if nxt.startswith("{") else set()
        out.append((tok, labels))
    return out


def test_every_expression_uses_metrics_and_labels_the_code_exports():
    metrics = exported()
    assert {"x0_mesh_health", "x0_messages_handled_total", "x0_handler_seconds_bucket",
            "x0_policy_decisions_total", "x0_node_latency_p99_ms"} <= set(metrics), sorted(metrics)
    used: set[str] = set()
    for p in panels(load()):
        for t in p.get("targets", []):
            sel = selectors(t["expr"])
            assert sel, f"{p['title']}: {t['expr']!r} selects no metric"
            for name, labels in sel:
                assert name in metrics, f"{p['title']}: {name!r} is not exported by the code " \
                                        f"(known: {', '.join(sorted(metrics))})"
                assert labels <= metrics[name] | TARGET_LABELS, f"{p['title']}: {name} has no label " \
                                                                f"{sorted(labels - metrics[name])}"
                used.add(name)
            for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", t["expr"]):
                names = {g.strip() for g in grouping.split(",") if g.strip()}
                known = set().union(*(metrics[n] for n, _ in sel)) | TARGET_LABELS
                assert names <= known, f"{p['title']}: grouping by unknown labels {sorted(names - known)}"
    # what every service exports, and the monitor's mesh picture, are on it
    assert {"x0_messages_handled_total", "x0_handler_seconds_bucket", "x0_policy_decisions_total", "x0_mesh_health",
            "x0_node_health", "x0_node_latency_p99_ms", "x0_node_loss_percent"} <= used, sorted(used)


@pytest.mark.parametrize("expr, problem", [
    ("rate(x0_no_such_metric_total[5m])", "not exported"),
    ("sum by (service) (frobnicate(x0_messages_handled_total[5m]))", "unknown PromQL function"),
    ('x0_mesh_health{node="n1"}', "has no label"),
])
def test_the_check_finds_a_wrong_expression(expr, problem):
    metrics = exported()
    try:
        for name, labels in selectors(expr):
            assert name in metrics, f"{name!r} is not exported"
            assert labels <= metrics[name] | TARGET_LABELS, f"{name} has no label"
    except AssertionError as e:
        assert problem in str(e)
    else:
        pytest.fail(f"{expr!r} passed the check")
