"""tlora_analysis: train, record and dissect tri-matrix low-rank adapters (TLoRA).

TLoRA ("tri-matrix LoRA", arXiv 2504.18735) adapts a frozen linear layer with
ΔW = α·(A B C)ᵀ: A and C fixed random matrices, B a trainable r × r matrix, α a trainable
scalar. This package puts TLoRA, LoRA and full fine-tuning on Hugging Face models, records
their updates during training and analyses them exactly from the factored form.
"""

__version__ = "0.1.0"

from .adapters import (  # noqa: E402
    FullConfig,
    LoRAConfig,
    TLoRAConfig,
    adapted_layers,
    apply_adapters,
    count_parameters,
    load_adapter,
    merge_and_unload,
    save_adapter,
)
from .lowrank import FactoredUpdate  # noqa: E402
from .recording import EveryN, Explicit, LogSpaced, SnapshotRecorder  # noqa: E402
from .store import Run  # noqa: E402
from . import analysis  # noqa: E402

__all__ = [
    "FactoredUpdate", "FullConfig", "LoRAConfig", "TLoRAConfig", "adapted_layers", "apply_adapters",
    "count_parameters", "load_adapter", "merge_and_unload", "save_adapter", "__version__",
    "Run", "SnapshotRecorder", "RecorderCallback", "EveryN", "LogSpaced", "Explicit", "analysis", "figures", "report",
]


def __getattr__(name: str):
    """Imported on first use: ``figures`` / ``report`` (matplotlib, the ``[figures]`` extra) and
    ``RecorderCallback`` (transformers, the ``[train]`` extra)."""
    import importlib

    if name in ("figures", "report"):
        return importlib.import_module(f".{name}", __name__)
    if name == "RecorderCallback":
        return importlib.import_module(".recording", __name__).RecorderCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
