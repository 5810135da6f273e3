"""Evaluation on held-out *live* incidents: telemetry recorded on real meshes under real faults.

    python -m x0tta6bl4.analysis.live_eval [--data DIR] [--weights FILE] [--json]

Every detector gets what the analyzer gets: per snapshot of the recording, the learned detectors see
the node series of the 12 snapshots up to it (:mod:`x0tta6bl4.analysis.live`), the rules see the
``TelemetryWindow`` itself. Rows:

* ``graphsage``: the learned detector trained on live faults too (``weights/live/``, :data:`LIVE_WEIGHTS`;
  ``--weights`` evaluates others, e.g. the analyzer's default ``weights/graphsage.pt``);
* ``tree``: the tree baseline, fitted on the same training data as those weights (twin
  scenarios + the live ``train`` sessions, :func:`x0tta6bl4.analysis.train.training_data`);
* ``rules``: the analyzer's rules (:class:`x0tta6bl4.mapek.analyze.RuleAnalyzer`: thresholds plus
  its root-cause rules -- an unreachable node is the cause, end-to-end symptoms at a node with clean
  links are blamed on the node whose links are all degraded); findings below confidence 0.6 are
  observations the planner never acts on, not alerts;
* ``spec rules``: the spec's threshold table alone on the detectors' features (alert at critical);
* ``analyzer``: what the analyzer runs by default, GraphSAGE merged with the rules
  (:class:`x0tta6bl4.mapek.analyze.HybridAnalyzer`).

Metrics (:func:`x0tta6bl4.analysis.evaluate.evaluate_detector`): per node and snapshot precision,
recall, F1 and false-positive rate (positive = a member of an active incident: the node at fault and
its neighbours); root-cause top-1 = share of incident snapshots whose detected incident names the
node at fault; false blame = incidents per snapshot whose root cause is not a node at fault.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from x0tta6bl4.mapek.analyze import OBSERVE_BELOW, HybridAnalyzer, RuleAnalyzer

from . import livedata
from .dataset import GraphSample
from .evaluate import evaluate_detector, metric_table, run_detector
from .features import NodeFeatures
from .rules import RuleBasedDetector
from .types import Incident

COLUMNS = [
    ("precision", "prec"), ("recall", "rec"), ("f1", "F1"), ("fpr", "FPR"),
    ("root_cause_top1", "RC@1"), ("fault_type_accuracy", "type"), ("false_blame_per_window", "blame"),
    ("detection_delay_windows_mean", "delay"), ("faults_missed", "missed"),
]


def anomalies_run(analyze):
    """``run`` for :func:`evaluate_detector` from a function window -> Anomaly events."""

    def run(sample: GraphSample):
        window = sample.meta["window"]
        index = {v: i for i, v in enumerate(sample.node_ids)}
        score = np.zeros(len(sample.node_ids))
        anom = np.zeros(len(sample.node_ids), dtype=bool)
        incidents = []
        for a in analyze(window, sample):
            if a.confidence < OBSERVE_BELOW:
                continue            # observe-only: the planner never acts on it
            members = [m for m in dict.fromkeys([a.root_cause, a.node_id, *a.affected_nodes]) if m in index]
            for m in members:
                anom[index[m]] = True
                score[index[m]] = max(score[index[m]], a.anomaly_score)
            incidents.append(Incident(a.root_cause, a.fault_type, members, a.anomaly_score, a.anomaly_score,
                                      a.confidence, detector=a.detector))
        return score, anom, incidents

    return run


def _memo(fn: Callable[[GraphSample], tuple]) -> Callable[[GraphSample], tuple]:
    cache: dict[int, tuple] = {}

    def run(sample: GraphSample) -> tuple:
        key = id(sample)
        if key not in cache:
            cache[key] = fn(sample)
        return cache[key]

    return run


def _window(sample: GraphSample) -> NodeFeatures:
    return NodeFeatures(sample.node_ids, sample.x, sample.edge_index, {})


def _batched_tree(tree, samples: Sequence[GraphSample]) -> Callable[[GraphSample], tuple]:
    outs = {id(s): (o[1], o[2], o[5]) for s, o in zip(samples, tree.analyse_many([_window(s) for s in samples]),
                                                      strict=True)}
    return lambda s: outs[id(s)] if id(s) in outs else run_detector(tree, s)


def detector_runs(detector=None, tree=None, samples: Sequence[GraphSample] = ()) -> dict[str, Callable]:
    """{row name: run(sample) -> (per-node score, anomaly flags, incidents)}, each computed once per sample
    (the per-fault breakdown reuses them); the tree predicts ``samples`` in one batch."""
    rules = RuleAnalyzer()
    runs: dict[str, Callable[[GraphSample], tuple]] = {}
    if detector is not None and getattr(detector, "name", "") == "graphsage":
        runs["graphsage"] = _memo(lambda s: run_detector(detector, s))
    if tree is not None:
        runs["tree"] = (_batched_tree(tree, samples) if samples and hasattr(tree, "analyse_many")
                        else _memo(lambda s: run_detector(tree, s)))
    runs["rules"] = _memo(anomalies_run(lambda w, s: rules.analyze(w)))
    spec = RuleBasedDetector()
    runs["spec rules"] = _memo(lambda s: run_detector(spec, s))
    if "graphsage" in runs:
        hybrid = HybridAnalyzer(rules=rules)
        learned = runs["graphsage"]
        # the analyzer merges the rules' findings with the model's incidents (the same ones as the row above)
        runs["analyzer"] = _memo(anomalies_run(lambda w, s: hybrid.merge(w, learned(s)[2])))
    return runs


def evaluate_live(test: Sequence[GraphSample], detector=None, tree=None, runs=None) -> dict:
    """Report {detector: metrics} on live samples (``livedata.samples(..., keep_window=True)``)."""
    runs = runs if runs is not None else detector_runs(detector, tree, test)
    return {name: evaluate_detector(None, test, run=run) for name, run in runs.items()}


def per_fault(test: Sequence[GraphSample], detector=None, tree=None, runs=None) -> dict:
    """Root-cause top-1 per live fault, per detector."""
    runs = runs if runs is not None else detector_runs(detector, tree, test)
    faults = sorted({s.meta["fault"] for s in test} - {"normal"})
    out: dict = {}
    for f in faults:
        subset = [s for s in test if s.meta["fault"] == f]
        out[f] = {k: v["root_cause_top1"] for k, v in evaluate_live(subset, runs=runs).items()}
    return out


def format_table(rows: dict) -> str:
    return metric_table(rows, COLUMNS, 12)


LIVE_WEIGHTS = Path(__file__).with_name("weights") / "live" / "graphsage.pt"
"""Weights trained on the twin plus the live ``train`` sessions (``python -m x0tta6bl4.analysis.train``)."""


def report(data: str | Path | None = None, weights: str | Path | None = None, tree=None,
           faults: bool = True, detector=None) -> dict:
    """The live evaluation: data summary, the table rows and root-cause top-1 per fault.

    ``tree``: the tree saved next to the weights (``tree.pkl.gz``, written by
    :mod:`~x0tta6bl4.analysis.train` with them), else fitted again on the same training data."""
    from . import load_detector
    from .train import TREE_FILE, fit_tree, load_tree

    sessions = livedata.load(data)
    test = livedata.samples([s for s in sessions if s.split == "test"], keep_window=True)
    det = detector if detector is not None else load_detector(weights if weights is not None else LIVE_WEIGHTS)
    if tree is None:
        wp = Path(weights) if weights is not None else LIVE_WEIGHTS
        tree = load_tree(wp.with_name(TREE_FILE)) or fit_tree(data)
    out = {"data": livedata.summary(sessions), "held_out_snapshots": len(test),
           "incident_snapshots": sum(1 for s in test if s.incidents),
           "detectors": {}}
    runs = detector_runs(det, tree, test)
    out["detectors"] = evaluate_live(test, runs=runs)
    if faults:
        out["root_cause_top1_by_fault"] = per_fault(test, runs=runs)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help=f"recording directory (default {livedata.DEFAULT_DIR})")
    ap.add_argument("--weights", default=None, help=f"GraphSAGE weights (default {LIVE_WEIGHTS})")
    ap.add_argument("--json", action="store_true", help="print the full JSON report")
    args = ap.parse_args(argv)
    try:
        rep = report(args.data, args.weights)
    except livedata.LiveDataError as e:
        print(f"live evaluation: {e}")
        return 2
    if args.json:
        print(json.dumps(rep, indent=2, sort_keys=True))
        return 0
    print(f"held-out live snapshots: {rep['held_out_snapshots']} ({rep['incident_snapshots']} during an incident)")
    print(format_table(rep["detectors"]))
    print("\nroot-cause top-1 by fault:")
    names = list(rep["detectors"])
    print(f"{'fault':<12}" + "".join(f"{n:>12}" for n in names))
    for f, row in rep["root_cause_top1_by_fault"].items():
        print(f"{f:<12}" + "".join(f"{row.get(n, float('nan')):>12.3f}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
