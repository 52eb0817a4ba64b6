"""The one name rule (tlora_analysis.names) and every place that selects by name agreeing on it."""

from __future__ import annotations

import pytest
from torch import nn

from tlora_analysis import TLoRAConfig, adapted_layers, apply_adapters
from tlora_analysis.analysis import SelectionError
from tlora_analysis.analysis.select import select_layers
from tlora_analysis.experiments.models import UnknownTargetError, check_targets
from tlora_analysis.figures._frames import one_layer
from tlora_analysis.names import as_patterns, in_module, name_matches, select_names

NAMES = ["enc.0.attn.query", "enc.0.attn.xquery_proj", "enc.0.attn.query_proj", "enc.1.attn.query", "query"]


@pytest.mark.parametrize("pattern, selected", [
    ("query", ["enc.0.attn.query", "enc.1.attn.query", "query"]),  # whole last components only
    ("attn.query", ["enc.0.attn.query", "enc.1.attn.query"]),
    ("enc.0.attn.query", ["enc.0.attn.query"]),
    ("uery", []),
    ("re:.*query.*", NAMES),
    ("re:enc\\.1\\..*", ["enc.1.attn.query"]),
    ("re:query", ["query"]),  # a regex matches the whole name
])
def test_the_rule(pattern, selected):
    assert [n for n in NAMES if name_matches(n, pattern)] == selected
    assert select_names(NAMES, as_patterns(pattern)) == selected


@pytest.mark.parametrize("value, exc, words", [
    ([], ValueError, "empty list"),
    (["query", ""], TypeError, "got ''"),
    (["query", 3], TypeError, "got 3"),
    ("re:[", ValueError, "not a valid regular expression"),
    ({"query": 1}, TypeError, "got dict"),
])
def test_bad_selections_name_the_fix(value, exc, words):
    with pytest.raises(exc, match=words):
        as_patterns(value, "targets")


def test_a_string_is_one_pattern_never_its_letters():
    assert as_patterns("query") == ("query",)
    assert in_module("classifier.dense.weight", "classifier") and not in_module("classifier2.weight", "classifier")


class Toy(nn.Module):
    """query and xquery_proj side by side: 'query' must select only the first everywhere."""

    def __init__(self):
        super().__init__()
        self.block = nn.Module()
        self.block.query = nn.Linear(4, 4)
        self.block.xquery_proj = nn.Linear(4, 4)


def test_targets_layers_figures_and_the_runner_agree():
    model = apply_adapters(Toy(), TLoRAConfig(rank=2, target_modules="query", modules_to_save=()))
    assert list(adapted_layers(model)) == ["block.query"]
    names = ["block.query", "block.xquery_proj"]
    assert select_layers(names, "query") == ["block.query"]  # analysis layers=
    assert one_layer(names, "query") == "block.query"  # figures' layer=
    check_targets(Toy(), ["query"])  # the runner
    for call in (lambda: select_layers(names, "uery"), lambda: one_layer(names, "uery"),
                 lambda: check_targets(Toy(), ["uery"])):
        with pytest.raises((SelectionError, ValueError, UnknownTargetError), match="uery"):
            call()
    with pytest.raises(ValueError, match="matches 2 layers"):
        one_layer(names, "re:block\\..*")
