"""tlora_analysis: train, record and dissect tri-matrix low-rank adapters (TLoRA).

TLoRA ("tri-matrix LoRA") adapts a frozen linear layer with ΔW = α·(A B C)ᵀ: A and C fixed
random matrices, B a trainable r × r matrix, α a trainable scalar (docs/paper.md). This package
puts TLoRA, LoRA, full fine-tuning, VeRA and LoRA-XS on Hugging Face models, records their updates during
training and analyses them exactly from the factored form.

Importing the package imports nothing else: each name below is imported on first use, so a
command line or a script that needs only part of the package does not pay for the rest (torch,
pandas, SciPy, matplotlib, Triton).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import analysis, figures, report
    from .adapters import (
        FullConfig,
        LoRAConfig,
        LoRAXSConfig,
        TLoRAConfig,
        VeRAConfig,
        adapted_layers,
        apply_adapters,
        count_parameters,
        load_adapter,
        merge_and_unload,
        save_adapter,
    )
    from .lowrank import FactoredUpdate
    from .recording import EveryN, Explicit, LogSpaced, RecorderCallback, SnapshotRecorder
    from .store import Run, open_run

_EXPORTS = {  # name → the module that defines it
    **dict.fromkeys(("FullConfig", "LoRAConfig", "LoRAXSConfig", "TLoRAConfig", "VeRAConfig", "adapted_layers",
                     "apply_adapters", "count_parameters", "load_adapter", "merge_and_unload", "save_adapter"),
                    ".adapters"),
    "FactoredUpdate": ".lowrank",
    **dict.fromkeys(("SnapshotRecorder", "RecorderCallback", "EveryN", "LogSpaced", "Explicit"), ".recording"),
    **dict.fromkeys(("Run", "open_run"), ".store"),
}
_SUBPACKAGES = ("analysis", "figures", "report")

__all__ = [*_EXPORTS, *_SUBPACKAGES, "__version__"]


def _version() -> str:
    """The installed distribution's version; "0+unknown" where the package runs from a source tree
    that was not installed (``PYTHONPATH=.``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tlora-analysis")
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str) -> Any:
    """Each export on first use (PEP 562), then kept as a module attribute."""
    if name == "__version__":
        value: Any = _version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
