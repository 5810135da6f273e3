"""Reproducible training of the GraphSAGE detector and the tree baseline on the twin's simulator
and on telemetry recorded on real meshes under faults (``datasets/live-faults``, :mod:`.livedata`).

``python -m x0tta6bl4.analysis.train [--seed 0] [--out DIR] [--data DIR]`` writes ``graphsage.pt``
(state_dict + metadata), ``tree.pkl.gz`` (the tree baseline fitted on the same training data) and
``report.json`` (held-out evaluation on the simulator and on the held-out live sessions, calibration)
to ``DIR`` (default: the package's ``weights/live/``; the analyzer's default ``weights/graphsage.pt`` was
trained on the twin alone, before the live recordings).

Training data (:func:`training_data`): the simulator's ``train`` split plus the live ``train``
sessions, each live sample repeated ``live_repeat`` times (live meshes are small: without it the
simulator's larger graphs outweigh them); validation (temperature scaling): the simulator's ``val``
split plus the live ``val`` session. The tree baseline is fitted on exactly the same samples.
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as Fn

from . import livedata
from .calibration import expected_calibration_error, fit_temperature
from .dataset import GraphSample, generate_split
from .evaluate import evaluate, format_table
from .model import WEIGHTS_DIR, WEIGHTS_FILE, GraphSAGEAnomalyDetector, SageNet, symlog

CONFIG = {
    "train_scenarios": 150,
    "val_scenarios": 60,
    "test_scenarios": 120,
    "windows_per_scenario": 6,
    "hidden": 48,
    "epochs": 30,
    "batch_graphs": 32,
    "lr": 5e-3,
    "weight_decay": 1e-4,
    "loss_weights": {"anomaly": 1.0, "fault_type": 0.5, "root": 1.0},
    "anomaly_pos_weight": 3.0,
    "live_repeat": 4,
}
TREE_FILE = "tree.pkl.gz"


def live_samples(split: str, data: str | Path | None = None) -> list[GraphSample]:
    """Labelled samples of the live sessions of ``split`` (:func:`livedata.samples`)."""
    return livedata.samples(livedata.load(data, [split]))


def training_data(data: str | Path | None = None, seed: int = 0, cfg: dict | None = None,
                  split: str = "train") -> list[GraphSample]:
    """The training (or ``split="val"``: validation) samples: simulator + live sessions."""
    cfg = {**CONFIG, **(cfg or {})}
    n = cfg["train_scenarios"] if split == "train" else cfg["val_scenarios"]
    sim = generate_split(split, seed, n, cfg["windows_per_scenario"])
    live = live_samples(split, data)
    return sim + live * (int(cfg["live_repeat"]) if split == "train" else 1)


def fit_tree(data: str | Path | None = None, seed: int = 0, cfg: dict | None = None,
             samples: list[GraphSample] | None = None):
    """The tree baseline fitted on the training data of the shipped weights (or ``samples``)."""
    from .baselines import TreeBaseline

    return TreeBaseline(seed=seed).fit(samples if samples is not None else training_data(data, seed, cfg))


def save_tree(tree, path: str | Path) -> None:
    import sklearn

    blob = pickle.dumps({"sklearn": sklearn.__version__, "tree": tree}, protocol=4)
    Path(path).write_bytes(gzip.compress(blob, compresslevel=9, mtime=0))


def load_tree(path: str | Path | None = None):
    """The tree baseline ``train`` saved next to the weights, or None if absent or fitted with another
    scikit-learn version (then :func:`fit_tree` fits it again). Only load files this module wrote."""
    import sklearn

    p = Path(path) if path is not None else WEIGHTS_DIR / TREE_FILE
    try:
        blob = pickle.loads(gzip.decompress(p.read_bytes()))  # the repo's own file, written by save_tree
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError):
        return None
    if not isinstance(blob, dict) or blob.get("sklearn") != sklearn.__version__:
        return None
    return blob.get("tree")


def collate(samples: list[GraphSample]):
    xs, eis, ya, yt, yr = [], [], [], [], []
    off = 0
    for s in samples:
        xs.append(s.x)
        eis.append(s.edge_index + off)
        ya.append(s.y_anom)
        yt.append(s.y_type)
        yr.append(s.y_root)
        off += s.x.shape[0]
    return (
        torch.from_numpy(np.concatenate(xs)),
        torch.from_numpy(np.concatenate(eis, axis=1)),
        torch.from_numpy(np.concatenate(ya)),
        torch.from_numpy(np.concatenate(yt)),
        torch.from_numpy(np.concatenate(yr)),
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def fit(train: list[GraphSample], seed: int, cfg: dict = CONFIG, log=print) -> SageNet:
    _seed_everything(seed)
    net = SageNet(hidden=cfg["hidden"])
    x_all = torch.from_numpy(np.concatenate([s.x for s in train]))
    z = symlog(x_all)
    net.mu.copy_(z.mean(0))
    net.sigma.copy_(z.std(0).clamp_min(1e-3))
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["epochs"])
    rng = np.random.default_rng(seed)
    w = cfg["loss_weights"]
    y_root_all = np.concatenate([s.y_root for s in train])
    pos_w = torch.tensor(float((1 - y_root_all).sum() / max(y_root_all.sum(), 1)) ** 0.5)
    batches = [train[i : i + cfg["batch_graphs"]] for i in range(0, len(train), cfg["batch_graphs"])]
    net.train()
    for epoch in range(cfg["epochs"]):
        order = rng.permutation(len(train))
        total = 0.0
        for b in range(len(batches)):
            idx = order[b * cfg["batch_graphs"] : (b + 1) * cfg["batch_graphs"]]
            x, ei, ya, yt, yr = collate([train[i] for i in idx])
            a, t, r = net(x, ei)
            loss = w["anomaly"] * Fn.binary_cross_entropy_with_logits(
                a, ya, pos_weight=torch.tensor(float(cfg.get("anomaly_pos_weight", 1.0)))
            )
            m = yt >= 0
            if m.any():
                loss = loss + w["fault_type"] * Fn.cross_entropy(t[m], yt[m])
            loss = loss + w["root"] * Fn.binary_cross_entropy_with_logits(r, yr, pos_weight=pos_w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        sched.step()
        if log and (epoch % 10 == 9 or epoch == 0):
            log(f"epoch {epoch + 1:3d} loss {total / len(batches):.4f}")
    net.eval()
    return net


def calibration_report(val_lg, val_y, test_lg, test_y, temp: float) -> dict:
    """ECE before/after temperature scaling.  Most nodes are easy normals, which
    makes whole-population ECE tiny; ``*_hard`` restricts to nodes that are
    anomalous or have raw probability > 0.02 (the ones where confidence matters)."""

    def sig(v):
        return 1 / (1 + np.exp(-np.clip(v, -60, 60)))

    out = {"method": "temperature scaling on validation split", "temperature": temp}
    for split, lg, y in (("val", val_lg, val_y), ("test", test_lg, test_y)):
        hard = (y > 0) | (sig(lg) > 0.02)
        out[f"ece_{split}_before"] = expected_calibration_error(sig(lg), y)
        out[f"ece_{split}_after"] = expected_calibration_error(sig(lg / temp), y)
        out[f"ece_{split}_hard_before"] = expected_calibration_error(sig(lg[hard]), y[hard])
        out[f"ece_{split}_hard_after"] = expected_calibration_error(sig(lg[hard] / temp), y[hard])
        out[f"{split}_hard_nodes"] = int(hard.sum())
    return out


def train(seed: int = 0, out_dir: str | Path | None = WEIGHTS_DIR, cfg: dict | None = None, log=print,
          data: str | Path | None = None) -> dict:
    """Generate the simulator's data, read the live recording (``data``, default the checked-in one),
    train, calibrate, fit the tree on the same data, evaluate on the simulator's held-out split and on
    the held-out live sessions; write weights, tree and report to ``out_dir`` (``None`` writes
    nothing). Returns the report dict."""
    cfg = {**CONFIG, **(cfg or {})}
    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    train_s = training_data(data, seed, cfg, "train")
    val_s = training_data(data, seed, cfg, "val")
    test_s = generate_split("test", seed, cfg["test_scenarios"], cfg["windows_per_scenario"])
    t_data = time.perf_counter() - t0
    net = fit(train_s, seed, cfg, log)
    t_train = time.perf_counter() - t0 - t_data
    det = GraphSAGEAnomalyDetector(0.6, net)

    # temperature scaling on the validation split
    def logits(samples):
        lg = np.concatenate([det.raw_scores(s.x, s.edge_index)["anom_logit"] for s in samples])
        return lg, np.concatenate([s.y_anom for s in samples])

    val_lg, val_y = logits(val_s)
    temp = fit_temperature(val_lg, val_y)
    test_lg, test_y = logits(test_s)
    calib = calibration_report(val_lg, val_y, test_lg, test_y, temp)
    net.temperature.fill_(temp)
    live_train = sum(1 for s in train_s if "session" in s.meta)
    det.meta = {"seed": seed, "config": cfg, "calibration": calib,
                "training_data": {"simulator_windows": len(train_s) - live_train,
                                  "live_windows": live_train // max(int(cfg["live_repeat"]), 1)}}

    tree = fit_tree(seed=seed, samples=train_s)
    tree.training_data = det.meta["training_data"]   # the same data as the weights' (checked by the tests)
    t_tree = time.perf_counter() - t0 - t_data - t_train
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        det.save(out / WEIGHTS_FILE)
        save_tree(tree, out / TREE_FILE)
    report = evaluate(det, seed=seed, tree=tree, test_samples=test_s)
    report["held_out"]["scenarios"] = cfg["test_scenarios"]
    report["calibration"] = calib
    from .live_eval import report as live_report

    report["live"] = live_report(data, tree=tree, detector=det)
    report["training"] = {
        "seed": seed,
        "config": cfg,
        "train_windows": len(train_s),
        "train_live_windows": det.meta["training_data"]["live_windows"],
        "train_nodes": int(sum(s.x.shape[0] for s in train_s)),
        "val_windows": len(val_s),
        "data_generation_s": round(t_data, 2),
        "graphsage_train_s": round(t_train, 2),
        "tree_train_s": round(t_tree, 2),
        "torch_threads": torch.get_num_threads(),
        "parameters": int(sum(p.numel() for p in net.parameters())),
    }
    live = report["live"]["detectors"]
    report["targets"] = {
        "f1>=0.95": report["detectors"]["graphsage"]["f1"] >= 0.95,
        "fpr<=0.01": report["detectors"]["graphsage"]["fpr"] <= 0.01,
        "root_cause_top1>=0.90": report["detectors"]["graphsage"]["root_cause_top1"] >= 0.90,
        # CPU time: wall-clock on the shared 2-core box measures the neighbours' load too
        "inference_1000_nodes<50ms_cpu": report["detectors"]["graphsage"]["inference_cpu_ms_1000_nodes"] < 50,
        "live_beats_tree_and_rules": all(
            live["graphsage"][k] >= live[o][k] for k in ("f1", "root_cause_top1") for o in ("tree", "rules")),
    }
    if out is not None:
        (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(WEIGHTS_DIR / "live"),
                    help="output directory (default: weights/live, the weights trained on live faults too; the "
                         "analyzer's default weights/ were trained on the twin alone)")
    ap.add_argument("--data", default=None, help=f"live recording (default {livedata.DEFAULT_DIR})")
    args = ap.parse_args(argv)
    try:
        rep = train(args.seed, args.out, data=args.data)
    except livedata.LiveDataError as e:
        print(f"training: {e}")
        return 2
    from .live_eval import format_table as live_table

    print(format_table(rep))
    print("\nheld-out live sessions:")
    print(live_table(rep["live"]["detectors"]))
    print(json.dumps({"calibration": rep["calibration"], "targets": rep["targets"],
                      "training": {k: v for k, v in rep["training"].items() if k != "config"}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
