"""Tiny recorded runs made with the real recorder, for tests across the project.

``make_tiny_run(tmp_path, method="tlora")`` trains a 2-layer BertForSequenceClassification
(hidden 32) for a few AdamW steps on random tokens, recording every step with
:class:`~tlora_analysis.SnapshotRecorder`, and returns the opened :class:`~tlora_analysis.Run`.
Updates are nonzero from step 1 on; the same arguments give the same tensors.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
import transformers

from tlora_analysis.adapters import FullConfig, LoRAConfig, LoRAXSConfig, TLoRAConfig, VeRAConfig, apply_adapters
from tlora_analysis.recording import SnapshotRecorder
from tlora_analysis.store import Run

__all__ = ["make_tiny_run", "tiny_model", "tiny_batch", "tiny_config", "one_torch_thread"]


def tiny_config(method: str, rank: int = 4, seed: int = 0, targets=("query", "value")):
    """The adapter config of a tiny run (dropout 0, so training is deterministic; the random head stays frozen)."""
    if method == "tlora":
        return TLoRAConfig(rank=rank, target_modules=targets, seed=seed, dropout=0.0, modules_to_save=())
    if method == "lora":
        return LoRAConfig(rank=rank, target_modules=targets, seed=seed, lora_alpha=2 * rank, modules_to_save=())
    if method == "full":
        return FullConfig(target_modules=targets, modules_to_save=())
    if method == "vera":  # d starts at 1 so the tiny run's few steps move ΔW visibly
        return VeRAConfig(rank=2 * rank, target_modules=targets, seed=seed, d_initial=1.0, modules_to_save=())
    if method == "lora-xs":
        return LoRAXSConfig(rank=rank, target_modules=targets, seed=seed, modules_to_save=())
    raise ValueError(f"method must be 'tlora', 'lora', 'full', 'vera' or 'lora-xs', got {method!r}")


def tiny_model(seed: int = 0, num_labels: int = 2) -> transformers.BertForSequenceClassification:
    """A random 2-layer BERT (hidden 32, 2 heads, vocab 100) with dropout off."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  vocab_size=100, max_position_embeddings=64, num_labels=num_labels,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(cfg).eval()


def tiny_batch(step: int, seed: int = 0, batch_size: int = 8, seq_len: int = 12) -> dict[str, torch.Tensor]:
    """Random token ids and labels for one step, the same for the same (step, seed)."""
    g = torch.Generator().manual_seed(1000 * seed + step)
    return {"input_ids": torch.randint(0, 100, (batch_size, seq_len), generator=g),
            "labels": torch.randint(0, 2, (batch_size,), generator=g)}


@contextmanager
def one_torch_thread():
    """Run tiny models on one intra-op thread: on a busy 2-core machine two threads are 10-50× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_tiny_run(
    tmp_path: str | Path,
    method: str = "tlora",
    steps: int = 5,
    seed: int = 0,
    store_base_weights: bool = True,
    rank: int = 4,
    *,
    name: str | None = None,
    schedule=1,
    lr: float = 1e-2,
    model_seed: int = 0,
) -> Run:
    """Train a tiny model ``steps`` optimizer steps with ``method``, record it, and open it.

    The run lands in ``tmp_path / name`` (default ``f"{method}-r{rank}-s{seed}"``). It has a
    train event per step (loss, lr, examples_per_s) and a validation eval event at the end.
    Runs of any ``seed`` share the base model ``tiny_model(model_seed)``, as replicates do.
    """
    with one_torch_thread():
        return _train_and_record(Path(tmp_path), method, steps, seed, store_base_weights, rank, name, schedule, lr,
                                 model_seed)


def _train_and_record(tmp_path, method, steps, seed, store_base_weights, rank, name, schedule, lr, model_seed) -> Run:
    model = apply_adapters(tiny_model(model_seed), tiny_config(method, rank, seed))
    model.train()
    run_dir = tmp_path / (name or f"{method}-r{rank}-s{seed}")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    info = {"model": "tiny-bert", "task": "random", "hyperparameters": {"lr": lr, "steps": steps, "seed": seed}}
    with SnapshotRecorder(model, run_dir, schedule=schedule, total_steps=steps, run_info=info,
                          store_base_weights=store_base_weights) as recorder:
        recorder.attach(optimizer)
        for step in range(steps):
            recorder.set_epoch(step / steps)
            loss = model(**tiny_batch(step, seed)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            recorder.log(step + 1, loss=loss.item(), lr=lr, examples_per_s=8.0)
        with torch.no_grad():
            eval_loss = model(**tiny_batch(10_000, seed)).loss.item()
        recorder.log(steps, event="eval", split="validation", eval_loss=eval_loss, accuracy=0.5, f1=0.5, mcc=0.0)
    return Run(run_dir)
