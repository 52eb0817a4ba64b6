"""``tlora-analysis inspect RUN`` and ``tlora-analysis verify RUN``: a run at a glance, and its health."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..cli_types import add_base_model_flag
from .reader import Run

__all__ = ["register", "summary"]



_METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman", "eval_loss")


def _clean(row: Any) -> dict[str, Any]:
    """NaN → None (JSON), the step as an int."""
    out = {k: (None if v != v else v) for k, v in row.items()}
    if out.get("step") is not None:
        out["step"] = int(out["step"])
    return out


def summary(run: Run) -> dict[str, Any]:
    """What a run holds and how it did (best and last validation, last training loss), without reading a tensor."""
    steps = run.steps
    metrics = run.metrics
    metric = run.config.get("selection_metric") or "accuracy"
    evals = run.validation_evals()
    shown = [c for c in ("step", *_METRICS) if c in evals]
    best = last = None
    if metric in evals and evals[metric].notna().any():
        best = _clean(evals.loc[evals[metric].astype(float).idxmax(), shown].to_dict())
    if not evals.empty:
        last = _clean(evals.iloc[-1][shown].to_dict())
    train = metrics[metrics["event"] == "train"]
    return {
        "path": str(run.path), "name": run.name, "kind": run.kind, "method": run.method, "rank": run.rank,
        "layers": len(run.layers), "first_layer": run.layers[0] if run.layers else None,
        "steps": len(steps), "first_step": steps[0] if steps else None, "last_step": steps[-1] if steps else None,
        "base_weights": run.has_base_weights, "status": run.config.get("status"),
        "trainable": (run.config.get("parameters") or {}).get("trainable"),
        "task": run.config.get("task"), "selection_metric": metric,
        "majority_baseline": (run.config.get("majority_baseline") or {}).get(metric),
        "best": best, "last": last,
        "last_train_loss": float(train["loss"].iloc[-1]) if "loss" in train and not train.empty else None,
        "events": metrics["event"].value_counts().to_dict(),
    }


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
    return str(value)


def _inspect(args: argparse.Namespace) -> int:
    info = summary(Run(args.run, base_model=args.base_model))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>17}: {_text(value)}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    report = Run(args.run).verify(base_model=args.base_model)
    print(report)
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarise a recorded run (no tensor is read)",
                       description="Method, rank, layers, recorded steps and logged events of a run directory, "
                                   "PEFT adapter folder or Trainer output_dir.")
    p.add_argument("run", help="run directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_base_model_flag(p)
    p.set_defaults(func=_inspect)
    v = sub.add_parser("verify", help="check every file of a run; exit 1 on a problem",
                       description="Checksums of every snapshot and the frozen file, tensors present, metrics readable.")
    v.add_argument("run", help="run directory")
    v.add_argument("--base-model", metavar="MODEL",
                   help="check this base model's W0 (folder, cached hub id or bundled) against the run's hash "
                        "(default: the model run.json names, when it is here)")
    v.set_defaults(func=_verify)
