"""Evaluation of GraphSAGE, the tree baseline and the rules on held-out scenarios.

``python -m x0tta6bl4.analysis.evaluate`` loads the shipped weights, fits the
tree baseline on the training split (same seed as training) and prints the
report JSON.  The held-out split uses topologies/seeds from a disjoint seed
namespace and larger, denser graphs than training (see ``dataset.SPLITS``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from x0tta6bl4.twin import MeshDigitalTwin
from x0tta6bl4.twin.telemetry import TelemetrySimulator

from .dataset import GraphSample, generate_split
from .features import NodeFeatures
from .rules import RuleBasedDetector

DEFAULT_TEST_SCENARIOS = 120


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney ROC-AUC with tie handling."""
    y = y.astype(bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ss = s[order]
    i = 0
    while i < len(ss):
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def run_detector(det, sample: GraphSample):
    """(per-node score, anomaly flags, incidents) of ``det`` on one sample."""
    nf = NodeFeatures(sample.node_ids, sample.x, sample.edge_index, {})
    if isinstance(det, RuleBasedDetector):
        _, res, anom, incidents, _ = det.analyse(nf)
        return res.score, anom, incidents
    try:
        out = det.analyse(nf, explain=False)
    except TypeError:
        out = det.analyse(nf)
    return out[1], out[2], out[5]


def evaluate_detector(det, samples: Sequence[GraphSample],
                      run: Callable[[GraphSample], tuple] | None = None) -> dict:
    """Node-level precision/recall/F1/FPR/ROC-AUC and incident-level root-cause top-1 of ``det``.

    ``run(sample) -> (per-node score, per-node anomaly flags, incidents)`` replaces ``det.analyse``
    (for detectors that read the telemetry messages rather than the feature matrix)."""
    ys, scores, preds = [], [], []
    rc_total = rc_ok = rc_detected = type_ok = 0
    false_incidents = 0
    false_blame = 0
    first: dict = {}
    detected_at: dict = {}
    for s in samples:
        score, anom, incidents = run(s) if run is not None else run_detector(det, s)
        ys.append(s.y_anom)
        scores.append(np.asarray(score, dtype=np.float64))
        preds.append(anom)
        true_members = set()
        for inc in s.incidents:
            members = set(inc["members"])
            true_members |= members
            rc_total += 1
            key = (s.scenario, inc["root"])
            first[key] = inc["first_window"]
            idx = [s.node_ids.index(m) for m in inc["members"]]
            if anom[idx].any():
                detected_at[key] = min(detected_at.get(key, 10**9), s.window)
            best, overlap = None, 0
            for p in incidents:
                o = len(members & set(p.members))
                if o > overlap:
                    best, overlap = p, o
            if best is not None:
                rc_detected += 1
                rc_ok += best.root_cause == inc["root"]
                type_ok += best.fault_type == inc["fault_type"]
        false_incidents += sum(1 for p in incidents if not (set(p.members) & true_members))
        roots = {inc["root"] for inc in s.incidents}
        false_blame += sum(1 for p in incidents if p.root_cause not in roots)
    y = np.concatenate(ys).astype(bool)
    sc = np.concatenate(scores)
    pr = np.concatenate(preds).astype(bool)
    tp, fp = int((pr & y).sum()), int((pr & ~y).sum())
    fn, tn = int((~pr & y).sum()), int((~pr & ~y).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    delays = [detected_at[k] - first[k] for k in first if k in detected_at]
    return {
        "precision": prec,
        "recall": rec,
        "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
        "roc_auc": roc_auc(y, sc),
        "root_cause_top1": rc_ok / rc_total if rc_total else float("nan"),
        "root_cause_top1_given_detected": rc_ok / rc_detected if rc_detected else float("nan"),
        "fault_type_accuracy": type_ok / rc_total if rc_total else float("nan"),
        "detection_delay_windows_mean": float(np.mean(delays)) if delays else float("nan"),
        "detection_delay_windows_max": int(max(delays)) if delays else None,
        "faults_missed": int(len(first) - len(delays)),
        "faults_total": len(first),
        "false_incidents_per_window": false_incidents / max(len(samples), 1),
        "false_blame_per_window": false_blame / max(len(samples), 1),
        "nodes": int(y.size),
        "anomalous_nodes": int(y.sum()),
    }


def inference_timing(det, num_nodes: int = 1000, seed: int = 7, repeats: int = 7) -> dict:
    """Median wall and CPU (process) time in ms of analysing one window of a
    ``num_nodes`` mesh, including feature extraction, explanation and incident
    grouping.  On a shared machine the CPU time is the meaningful number."""
    g = MeshDigitalTwin("bench").create_test_topology(num_nodes, 5.0, seed)
    w = TelemetrySimulator(g, seed=seed).run(3)[-1]
    det.analyse(w)  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        det.analyse(w)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return {"wall_ms": float(statistics.median(wall)), "cpu_ms": float(statistics.median(cpu))}


def evaluate(
    detector=None,
    seed: int = 0,
    num_scenarios: int = DEFAULT_TEST_SCENARIOS,
    tree=None,
    train_scenarios: int = 300,
    test_samples: Sequence[GraphSample] | None = None,
    timing: bool = True,
) -> dict:
    """Report dict {detector name: metrics} on the held-out split.

    ``detector`` defaults to the shipped GraphSAGE weights; ``tree`` defaults
    to a tree baseline fitted on the training split for ``seed``; pass
    ``tree=False`` to skip it.
    """
    from . import load_detector

    if detector is None:
        detector = load_detector()
    test = list(test_samples) if test_samples is not None else generate_split("test", seed, num_scenarios)
    dets = {"rules": RuleBasedDetector(), "rules_warn": RuleBasedDetector("warning")}
    if detector is not None and getattr(detector, "name", "") != "rules":
        dets = {"graphsage": detector, **dets}
    if tree is None:
        from .baselines import TreeBaseline

        tree = TreeBaseline(seed=seed).fit(generate_split("train", seed, train_scenarios))
    if tree:
        dets["tree"] = tree
    report: dict = {"held_out": {"seed": seed, "scenarios": num_scenarios if test_samples is None else None,
                                  "windows": len(test)}, "detectors": {}}
    for name, det in dets.items():
        m = evaluate_detector(det, test)
        if timing:
            t = inference_timing(det)
            m["inference_ms_1000_nodes"] = t["wall_ms"]
            m["inference_cpu_ms_1000_nodes"] = t["cpu_ms"]
        report["detectors"][name] = m
    return report


def format_table(report: dict) -> str:
    cols = [
        ("precision", "prec"), ("recall", "rec"), ("f1", "F1"), ("fpr", "FPR"),
        ("roc_auc", "AUC"), ("root_cause_top1", "RC@1"), ("fault_type_accuracy", "type"),
        ("detection_delay_windows_mean", "delay"), ("faults_missed", "missed"),
        ("inference_ms_1000_nodes", "wall/1k"), ("inference_cpu_ms_1000_nodes", "cpu/1k"),
    ]
    return metric_table(report["detectors"], cols)


def metric_table(rows: dict, cols: Sequence[tuple[str, str]], name_width: int = 10) -> str:
    """A detector per row, ``cols`` = (metric key, header) per column; floats to three places."""
    head = f"{'detector':<{name_width}}" + "".join(f"{c[1]:>8}" for c in cols)
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        row = f"{name:<{name_width}}"
        for key, _ in cols:
            v = m.get(key)
            row += f"{v:>8.3f}" if isinstance(v, float) else f"{v!s:>8}"
        lines.append(row)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenarios", type=int, default=DEFAULT_TEST_SCENARIOS)
    ap.add_argument("--no-tree", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the full JSON report")
    args = ap.parse_args(argv)
    rep = evaluate(seed=args.seed, num_scenarios=args.scenarios, tree=False if args.no_tree else None)
    print(json.dumps(rep, indent=2) if args.json else format_table(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
