"""Every ```python block of README.md runs as written, offline, in a fresh folder, and a block that
trains and records a run learns: its last validation accuracy beats the majority class."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_python_blocks():
    assert len(python_blocks(README.read_text())) >= 1


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text()))))
def test_readme_python_block_runs(index, tmp_path):
    code = python_blocks(README.read_text())[index]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, f"README block {index} failed:\n{code}\n--- stderr ---\n{out.stderr[-4000:]}"
    for run_dir in re.findall(r'RecorderCallback\("([^"]+)"', code):
        _assert_learned(code, tmp_path / run_dir)


def _assert_learned(code: str, run_dir: Path) -> None:
    """The run's last validation accuracy against always answering the validation slice's majority
    class: exact one-sided binomial test at 10⁻³ (the run is seeded, so this is a fixed number)."""
    from tlora_analysis import Run
    from tlora_analysis.experiments.data import load_rotten_tomatoes

    sliced = re.search(r'eval_dataset=encode\(splits\["validation"\]\[:(\d+)\]\)', code)
    assert sliced, "the README's Trainer example evaluates on splits['validation'][:N]; update this test with it"
    n = int(sliced.group(1))
    labels = load_rotten_tomatoes().splits["validation"]["label"][:n]
    majority = max(labels.mean(), 1 - labels.mean())
    accuracy = Run(run_dir).metrics.query("event == 'eval'")["accuracy"].iloc[-1]
    test = stats.binomtest(round(accuracy * n), n, majority, alternative="greater")
    assert test.pvalue < 1e-3, f"README run {run_dir.name}: accuracy {accuracy:.3f} on {n}, majority {majority:.3f}"
