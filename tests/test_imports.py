"""Startup and process state: what importing the package costs, and what it keeps at module level.

Each startup check runs in a fresh interpreter (a subprocess), so that nothing this test
process imported earlier hides an import.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import pkgutil
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import pytest

import tlora_analysis
from tlora_analysis.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("triton", "transformers", "matplotlib", "seaborn", "scipy.stats", "peft", "datasets")
OPERATORS = ("lowrank_matmul", "lowrank_matmul_with_core_grads", "core_grads")


def imported_after(code: str) -> dict:
    """The heavy modules in ``sys.modules``, and the package's custom operators registered with
    torch, after ``code`` runs in a fresh interpreter."""
    probe = f"""
import json, sys
{code}
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
operators = []
if "torch" in sys.modules:
    import torch
    operators = [n for n in {OPERATORS!r} if torch._C._dispatch_has_kernel("tlora_analysis::" + n)]
print(json.dumps({{"heavy": heavy, "operators": operators, "torch": "torch" in sys.modules}}))
"""
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_package_imports_nothing_heavy():
    seen = imported_after("import tlora_analysis")
    assert seen == {"heavy": [], "operators": [], "torch": False}


def test_help_imports_nothing_heavy():
    seen = imported_after("from tlora_analysis.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert seen == {"heavy": [], "operators": [], "torch": False}


def test_a_tlora_layer_on_the_cpu_needs_no_triton():
    """The fused path registers its operators with the adapters; Triton comes only with a kernel that can run."""
    seen = imported_after("""
import torch
from tlora_analysis import TLoRAConfig
from tlora_analysis.adapters import TLoRALinear
layer = TLoRALinear(torch.nn.Linear(8, 8), "layer", TLoRAConfig(rank=2))
layer(torch.randn(3, 8, requires_grad=True)).sum().backward()
""")
    assert seen == {"heavy": [], "operators": list(OPERATORS), "torch": True}


def test_version_comes_from_the_installed_distribution_in_any_import_order():
    code = ("from tlora_analysis.adapters.io import save_adapter\nimport tlora_analysis\n"
            "print(tlora_analysis.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [importlib.metadata.version("tlora-analysis")]


def test_every_export_resolves():
    for name in tlora_analysis.__all__:
        assert getattr(tlora_analysis, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        tlora_analysis.nothing  # noqa: B018


def test_the_command_listing_matches_what_each_command_registers():
    """``--help`` lists the commands from cli.COMMANDS without importing them: the same help texts."""
    action = next(a for a in build_parser()._actions if a.dest == "command")
    registered = {choice.dest: choice.help for choice in action._choices_actions}
    assert registered == {name: help_text for name, (_, help_text) in COMMANDS.items()}


def test_every_command_s_help_reads_as_written():
    """argparse %-formats ``help=`` strings but not a ``description``: a literal "%%" or "%(" left in either
    shows up in ``--help``."""
    action = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in action.choices.items():
        text = parser.format_help()
        assert "%%" not in text and "%(" not in text, name


def _is_hidden_state(value: object) -> bool:
    """A module-level value that holds state between calls: a cache (functools), thread-local
    storage, a weak mapping, or a container that is empty at import (to be filled later)."""
    if isinstance(value, functools._lru_cache_wrapper | threading.local | weakref.WeakKeyDictionary
                  | weakref.WeakValueDictionary):
        return True
    return isinstance(value, dict | list | set | bytearray) and len(value) == 0


def test_no_module_level_caches_or_counters():
    """Process state lives in objects that own it (the fused path's ``backend``), never in module globals."""
    found = []
    for info in pkgutil.walk_packages(tlora_analysis.__path__, "tlora_analysis."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as exc:  # an optional dependency (Triton) that is not installed
            if exc.name.startswith("tlora_analysis"):
                raise
            continue
        found += [f"{info.name}.{name}" for name, value in vars(module).items()
                  if not name.startswith("__") and _is_hidden_state(value)]
    assert not found
