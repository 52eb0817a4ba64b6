"""From a task split to model batches: tokenize once, pad per batch (dynamic padding)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["EncodedSplit", "ResumableSampler", "order_seed", "encode_split", "subsample", "make_loader",
           "effective_max_length"]


class EncodedSplit(Dataset):
    """Token ids per example plus labels; items are dicts the padding collator understands."""

    def __init__(self, features: dict[str, list], labels: np.ndarray, is_regression: bool) -> None:
        self.features = features
        self.labels = labels
        self.is_regression = is_regression

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.features.items()}
        item["labels"] = float(self.labels[i]) if self.is_regression else int(self.labels[i])
        return item


def effective_max_length(tokenizer, model, requested: int) -> int:
    """The requested length capped by what the tokenizer and the position embeddings allow."""
    limits = [requested]
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    pos_max = getattr(model.config, "max_position_embeddings", None)
    if isinstance(pos_max, int) and pos_max > 0:
        # RoBERTa reserves padding_idx + 1 positions.
        limits.append(pos_max - (2 if model.config.model_type in ("roberta", "xlm-roberta", "camembert") else 0))
    return min(limits)


def subsample(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded random subset of ``n`` rows in their original order (all rows when n is None or ≥ len)."""
    if n is None or n >= len(frame):
        return frame
    idx = np.sort(np.random.default_rng(seed).choice(len(frame), size=n, replace=False))
    return frame.iloc[idx].reset_index(drop=True)


def encode_split(frame: pd.DataFrame, tokenizer, max_length: int, is_regression: bool) -> EncodedSplit:
    """Tokenize the ``text`` (and ``text_pair``) column with truncation and no padding."""
    pair = frame["text_pair"].tolist() if "text_pair" in frame.columns else None
    enc = tokenizer(frame["text"].tolist(), pair, truncation=True, max_length=max_length, padding=False)
    features = {k: list(v) for k, v in enc.items()}
    return EncodedSplit(features, frame["label"].to_numpy(), is_regression)


ORDER_STEP = 0x9E3779B9  # ⌊2³² / φ⌋, a Weyl step: seed + epoch · ORDER_STEP (mod 2³²) differ across seeds and epochs


def order_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch's training order: seed + epoch · ORDER_STEP mod 2³² (torch keeps 32 bits
    of a seed). Epoch 0 is ordered by the seed itself. DistributedSampler's own seed + epoch would give seed s's
    epoch e + 1 the order of seed s + 1's epoch e, so replicate seeds would share all but one epoch order."""
    return (seed + epoch * ORDER_STEP) % 2**32


class ResumableSampler(DistributedSampler):
    """A DistributedSampler whose epoch can start part-way: ``set_epoch(e, start=k)`` skips its first k indices.

    Each epoch's order is a function of (seed, epoch) alone (:func:`order_seed`), so a resumed run sees
    the batches the uninterrupted run saw, without collating the skipped ones.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        # DistributedSampler seeds its generator with self.seed + self.epoch; this makes that sum order_seed's
        super().set_epoch(order_seed(self.seed, epoch) - self.seed)
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(super().__len__() - self.start, 0)


def make_loader(dataset: EncodedSplit, tokenizer, batch_size: int, shuffle: bool, seed: int,
                world_size: int = 1, rank: int = 0) -> DataLoader:
    """A DataLoader with dynamic padding; training order shuffled per (seed, epoch) (:func:`order_seed`), sharded
    per process."""
    from transformers import DataCollatorWithPadding

    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    # A DistributedSampler for one process too: its set_epoch(e) makes each epoch's order a
    # function of (seed, epoch), which is what resuming mid-run needs.
    sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                               drop_last=world_size > 1) if shuffle else None
    # The loader's own generator: starting an iterator draws a seed from it, which would
    # otherwise come from the global RNG and shift the dropout stream of a resumed run.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, collate_fn=collator,
                      generator=torch.Generator().manual_seed(seed))
