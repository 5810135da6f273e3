"""meshctl model: train, evaluate and inspect the analyzer's learned detector.

    meshctl model train [--seed 0] [--out DIR]      generate twin data (fixed seed), train GraphSAGE + tree,
                                                    calibrate, write weights and report.json (minutes on 2 cores)
    meshctl model eval [--seed 0] [--scenarios N]   held-out table: GraphSAGE, tree baseline, rules
    meshctl model info [--weights FILE]             the shipped (or given) weights and their measured report
"""
from __future__ import annotations

import json
from pathlib import Path

import typer

model_app = typer.Typer(help="the analyzer's learned detector: train, eval, info", no_args_is_help=True)


@model_app.command()
def train(seed: int = typer.Option(0, help="seed of the generated topologies, faults and training"),
          out: Path | None = typer.Option(None, help="output directory (default: the package's weights/live: the "
                                          "shipped default weights, trained on the twin alone, stay as they are)"),
          json_out: bool = typer.Option(False, "--json", help="print the full JSON report")) -> None:
    """Train on the twin's labelled data and the recorded live faults, calibrate, evaluate, write weights + report."""
    from x0tta6bl4.analysis.evaluate import format_table
    from x0tta6bl4.analysis.train import WEIGHTS_DIR
    from x0tta6bl4.analysis.train import train as run_train

    target = out or WEIGHTS_DIR / "live"
    rep = run_train(seed, target, log=lambda *a: typer.echo(" ".join(map(str, a)), err=True))
    if json_out:
        typer.echo(json.dumps(rep, indent=2, sort_keys=True))
        return
    typer.echo(format_table(rep))
    typer.echo(f"targets: {json.dumps(rep['targets'])}")
    typer.echo(f"weights and report written to {target}")


@model_app.command("eval")
def eval_(seed: int = typer.Option(0, help="held-out split seed (topologies and seeds never used in training)"),
          scenarios: int = typer.Option(120, help="held-out scenarios (6 windows each)"),
          no_tree: bool = typer.Option(False, "--no-tree", help="skip fitting the tree baseline"),
          weights: Path | None = typer.Option(None, help="weights file (default: shipped)"),
          json_out: bool = typer.Option(False, "--json", help="print the full JSON report")) -> None:
    """Precision, recall, F1, FPR, ROC-AUC, root-cause top-1, detection delay, inference time on
    held-out scenarios, for GraphSAGE, the tree baseline and the spec's rules."""
    from x0tta6bl4.analysis import load_detector
    from x0tta6bl4.analysis.evaluate import evaluate, format_table

    rep = evaluate(load_detector(weights), seed=seed, num_scenarios=scenarios, tree=False if no_tree else None)
    typer.echo(json.dumps(rep, indent=2, sort_keys=True) if json_out else format_table(rep))


@model_app.command()
def info(weights: Path | None = typer.Option(None, help="weights file (default: shipped)"),
         json_out: bool = typer.Option(False, "--json")) -> None:
    """Which detector the analyzer would use, its size, training config and measured figures."""
    from x0tta6bl4.analysis import WEIGHTS_PATH, load_detector
    from x0tta6bl4.analysis.evaluate import format_table

    path = weights or WEIGHTS_PATH
    det = load_detector(path)
    report_path = Path(path).with_name("report.json")
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    out = {
        "detector": det.name,
        "weights": str(path),
        "weights_bytes": Path(path).stat().st_size if Path(path).exists() else None,
        "anomaly_threshold": getattr(det, "anomaly_threshold", None),
        "temperature": float(det.net.temperature) if det.name == "graphsage" else None,
        "parameters": report.get("training", {}).get("parameters"),
        "trained_seed": report.get("training", {}).get("seed"),
        "targets": report.get("targets"),
    }
    if json_out:
        typer.echo(json.dumps({**out, "report": report}, indent=2, sort_keys=True))
        return
    for k, v in out.items():
        typer.echo(f"{k:>18}: {v}")
    if report.get("detectors"):
        typer.echo(f"\nheld-out evaluation ({report['held_out']}):")
        typer.echo(format_table(report))
