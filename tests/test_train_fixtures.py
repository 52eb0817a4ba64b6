"""Shared builders for the runner tests: a tiny random BERT with its own tokenizer, tiny task files.

Imported by test_train*.py / test_data*.py; the one test here checks the builders themselves.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "plot", "actor", "the", "a", "was", "is", "very"]
POSITIVE, NEGATIVE = WORDS[:3], WORDS[3:6]


def make_tiny_model(folder: Path, num_labels: int = 2) -> Path:
    """A 2-layer, hidden-32 BERT classifier with random weights and a word-level tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                        initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def sentiment_frame(n: int, seed: int) -> pd.DataFrame:
    """Sentences of three positive (label 1) or three negative (label 0) words among fillers: easy to learn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        filler = rng.sample(WORDS[6:], 2)
        words = filler + rng.choices(POSITIVE if label else NEGATIVE, k=3)
        rng.shuffle(words)
        rows.append({"sentence": " ".join(words), "label": label})
    return pd.DataFrame(rows)


def make_local_task(folder: Path, n_train: int = 96, n_val: int = 32) -> dict[str, str]:
    """train.csv / validation.csv with columns sentence, label."""
    folder.mkdir(parents=True, exist_ok=True)
    sentiment_frame(n_train, 1).to_csv(folder / "train.csv", index=False)
    sentiment_frame(n_val, 2).to_csv(folder / "validation.csv", index=False)
    return {"task": "local", "train_file": str(folder / "train.csv"), "validation_file": str(folder / "validation.csv"),
            "text_columns": ("sentence",), "label_column": "label"}


def test_tiny_builders(tmp_path):
    model_dir = make_tiny_model(tmp_path / "m")
    assert (model_dir / "config.json").is_file() and (model_dir / "vocab.txt").is_file()
    frame = sentiment_frame(50, 0)
    assert set(frame["label"]) == {0, 1}
    assert all(any(w in s.split() for w in POSITIVE) == bool(y) for s, y in zip(frame["sentence"], frame["label"]))
