"""The lean install: the core (recording and analysis) imports nothing from the extras, pyproject's
core dependencies are exactly what it imports, and a command whose extra is missing says which."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRAS_ONLY = ("transformers", "datasets", "peft", "matplotlib", "seaborn", "jupyterlab", "IPython")
CORE = ("torch", "numpy", "scipy", "pandas", "safetensors")


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def test_core_dependencies_are_what_the_core_imports():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in deps}
    assert names == set(CORE)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"train", "figures", "notebooks", "test", "all"} <= set(extras)
    assert any(d.startswith("jupyterlab") for d in extras["notebooks"])
    assert {d.split(">")[0] for d in extras["train"]} >= {"transformers", "datasets", "peft"}


def test_recording_and_analysis_import_no_extra():
    code = ("import sys, torch\nfrom torch import nn\n"
            "import tlora_analysis as ta\nfrom tlora_analysis import analysis, Run, SnapshotRecorder, LogSpaced\n"
            "from tlora_analysis.store import cli\n"
            f"print(sorted(m for m in {EXTRAS_ONLY!r} if m in sys.modules))")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_command_whose_extra_is_missing_names_the_extra(tmp_path):
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('matplotlib', 'seaborn'):\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from tlora_analysis.cli import main\n"
            f"sys.exit(main(['figures', {str(tmp_path)!r}, '-o', {str(tmp_path / 'f')!r}]))")
    out = _python(code)
    assert out.returncode == 1
    assert "[figures] extra" in out.stderr and "pip install 'tlora-analysis[figures]'" in out.stderr
