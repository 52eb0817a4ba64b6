"""``TrainResult``: what a training run produced, and the one-screen summary the runner prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..store import Run
from .config import TrainConfig

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """What a run produced: where it is, its best and last evaluation, counts, time, the trained model.

    ``model`` is the trained model itself (unwrapped from DDP; for peft-lora the PEFT model).
    """

    run_dir: Path
    config: TrainConfig
    best: dict[str, Any]
    last: dict[str, Any]
    evals: list[dict[str, Any]]
    train_losses: list[tuple[int, float]]
    parameters: dict[str, int]
    steps: int
    wall_time: float
    max_length: int
    model: nn.Module | None = field(default=None, repr=False)
    data_sizes: dict[str, int] = field(default_factory=dict)
    selection_metric: str = "accuracy"
    baseline: dict[str, float] = field(default_factory=dict)

    @property
    def run(self) -> Run:
        return Run(self.run_dir)

    @property
    def learned(self) -> bool | None:
        """Whether the best evaluation beats the majority baseline on the selection metric (None: no baseline)."""
        best, base = self.best.get(self.selection_metric), self.baseline.get(self.selection_metric)
        if best is None or base is None:
            return None
        return best > base

    def warnings(self) -> list[str]:
        """What a reader must know before trusting the numbers: constant predictions, nothing learned."""
        out = []
        constant = [e["step"] for e in self.evals if e.get("constant_predictions")]
        if constant:
            out.append(f"the predictions were constant (one class or one score for every example) at step(s) "
                       f"{constant}: those evaluations measured the label balance, not the model. Train longer or "
                       f"with a higher learning rate")
        if self.learned is False:
            out.append(f"the best {self.selection_metric} ({self.best.get(self.selection_metric):.4f}) does not beat the "
                       f"majority class ({self.baseline[self.selection_metric]:.4f}): this run learned nothing usable")
        return out

    def summary(self) -> str:
        """One screen: where the run went, metrics against the majority baseline, parameters, time, warnings."""
        keys = [k for k in ("accuracy", "f1", "mcc", "pearson", "spearman", "eval_loss") if k in self.last]
        keys.sort(key=lambda k: k != self.selection_metric)
        fmt = lambda d: "  ".join(f"{k} {d[k]:.4f}" for k in keys if d.get(k) is not None)  # noqa: E731
        p = self.parameters
        base = self.baseline.get(self.selection_metric)
        lines = [
            f"run      {self.run_dir}",
            f"method   {self.config.method}  rank {self.config.rank if self.config.method_spec.has_rank else '-'}  "
            f"targets {','.join(self.config.targets)}  head {self.config.head}",
            f"data     {self.config.task}: " + ", ".join(f"{k} {v:,}" for k, v in self.data_sizes.items()),
            f"params   trainable {p['trainable']:,} of {p['total']:,} ({100 * p['trainable'] / max(p['total'], 1):.3f}%)",
            f"best     step {self.best.get('step')} epoch {self.best.get('epoch', 0):.2f}  {fmt(self.best)}"
            f"  (by {self.selection_metric})",
            f"last     step {self.last.get('step')} epoch {self.last.get('epoch', 0):.2f}  {fmt(self.last)}",
        ]
        if base is not None:
            lines.append(f"baseline majority class: {self.selection_metric} {base:.4f} on validation")
        lines.append(f"time     {self.wall_time:.1f} s for {self.steps} steps")
        lines += [f"WARNING  {w}" for w in self.warnings()]
        return "\n".join(lines)
