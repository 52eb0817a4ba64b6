"""Full fine-tuning as a method: every (or every selected) parameter trains; ΔW = W_t − W0, dense.

No layer is added to the model: the recorder tracks plain ``nn.Linear`` layers (the targets, or
the ``track_modules`` given), snapshots hold their dense weights, and W0 is step 0's weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from ..names import NameSelection
from .config import AdapterConfig, target_patterns
from .spec import BASE_WEIGHT, Factors, MethodSpec, RunnerOptions, StoredTensor

__all__ = ["FullConfig", "SPEC"]

NAME = "full"  # the method's registered name (run.json's "method", --method)


@dataclass(frozen=True)
class FullConfig(AdapterConfig):
    """Full fine-tuning: every parameter trains (target_modules=None) or only the selected modules.

    The tracked layers (for snapshots and ΔW = W_t − W0) are the ``track_modules`` when given
    (e.g. the layers the adapters of the runs compared with it adapt: a dense snapshot of every
    layer is large), else the targeted ``nn.Linear`` modules, or every ``nn.Linear`` when
    target_modules is None. modules_to_save: as for :class:`~tlora_analysis.adapters.tlora.TLoRAConfig`.
    """

    method: str = field(init=False, default=NAME)
    target_modules: NameSelection | None = None
    modules_to_save: NameSelection | None = None
    track_modules: NameSelection | None = None

    targets_required: ClassVar[bool] = False

    def check(self) -> None:
        self._set("track_modules", target_patterns(self.track_modules, "track_modules", allow_none=True))


def full_factors(t: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> Factors:
    """ΔW = W_t − W0, dense (as the core, with identities on either side)."""
    return Factors(None, t["weight"] - t[BASE_WEIGHT], None, 1.0)


def _runner_config(o: RunnerOptions) -> FullConfig:
    # every parameter trains; the layers the adapters would adapt are the ones recorded (dense snapshots)
    return FullConfig(track_modules=o.targets, modules_to_save=o.modules_to_save)


SPEC = MethodSpec(
    name=NAME, label="Full FT", config_class=FullConfig, layer_class=None,
    tensors=(StoredTensor("weight", None, False, lambda out, inn, r: (out, inn)),),
    factors=full_factors, runner_config=_runner_config, default_lr=1e-4, weight_key="weight",
)
