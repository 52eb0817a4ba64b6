"""``tlora-analysis demo``: the README's main job, as far as the project goes so far.

Prints the trainable-parameter table of the bundled all-MiniLM-L6-v2 for TLoRA, LoRA and
full fine-tuning. (Training and figures join here as they land.)
"""

from __future__ import annotations

import argparse

from .experiments.bundled import bundled_model_dir
from .params import format_table, load_config_model, parameter_table


def _run(args: argparse.Namespace) -> int:
    model_dir = bundled_model_dir()
    rows = parameter_table(lambda: load_config_model(model_dir, num_labels=2), [8, 16, 32], ["query", "value"])
    print(f"Bundled model: {model_dir}\n")
    print(format_table(rows))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: train TLoRA and LoRA on the bundled default, write every figure")
    p.set_defaults(func=_run)
