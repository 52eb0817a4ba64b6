"""Argument types for the command line: each rejects a bad value while the arguments are parsed, with
a message naming the fix, before anything heavy is imported or loaded."""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "non_negative_int", "positive_float", "unit_interval", "base_weights_mode",
           "add_base_model_flag"]


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer ≥ 1."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer (1 or more)")
    return value


def non_negative_int(text: str) -> int:
    """An integer ≥ 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def unit_interval(text: str) -> float:
    """A probability strictly between 0 and 1."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value} must lie strictly between 0 and 1")
    return value


def add_base_model_flag(parser: argparse.ArgumentParser) -> None:
    """``--base-model``: where W0 comes from for runs that reference it instead of storing it."""
    parser.add_argument("--base-model", metavar="MODEL",
                        help="the base model the runs were trained from (folder, cached hub id or bundled), for W0 "
                             "of runs that reference it instead of storing it (default: the model run.json names, "
                             "when it is on this machine)")


def base_weights_mode(text: str) -> bool:
    """``--base-weights stored|reference`` → TrainConfig's store_base_weights (True: W0 in the run; False: W0
    referenced by its hash and model)."""
    modes = {"stored": True, "reference": False}
    if text not in modes:
        raise argparse.ArgumentTypeError(f"{text!r} is not a base-weights mode; use stored (W0 in frozen.safetensors) "
                                         "or reference (only its hash and model in run.json)")
    return modes[text]
