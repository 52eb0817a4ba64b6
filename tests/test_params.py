"""`tlora-analysis params` reproduces the paper's Table 1 (docs/paper.md) exactly, and the VeRA and LoRA-XS
papers' counts for RoBERTa-large."""

import json

import pytest

from tlora_analysis.cli import main
from tlora_analysis.params import load_config_model, parameter_table

ROBERTA_LARGE = {
    "architectures": ["RobertaForSequenceClassification"], "model_type": "roberta", "hidden_size": 1024,
    "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096, "hidden_act": "gelu",
    "max_position_embeddings": 514, "type_vocab_size": 1, "vocab_size": 50265, "pad_token_id": 1,
    "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-05, "num_labels": 3,
}


@pytest.fixture(scope="module")
def roberta_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("roberta") / "config.json"
    path.write_text(json.dumps(ROBERTA_LARGE))
    return path


def test_table_1_of_the_paper(roberta_config):
    rows = parameter_table(lambda: load_config_model(roberta_config), [8, 16, 32], ["query", "value"])
    got = {(r.method, r.rank): r for r in rows}
    assert got[("full", None)].trainable == 355_362_819
    assert [got[("lora", r)].trainable for r in (8, 16, 32)] == [786_432, 1_572_864, 3_145_728]
    assert [got[("tlora", r)].trainable for r in (8, 16, 32)] == [3_120, 12_336, 49_200]
    assert [round(got[("tlora", r)].lora_over_method) for r in (8, 16, 32)] == [252, 128, 64]
    assert round(got[("tlora", 8)].full_over_method, -2) == 113_900
    assert got[("lora", 8)].lora_over_method is None and got[("full", None)].total == 355_362_819
    # LoRA-XS trains r² per matrix: 48 · 16² at r = 16 (its paper's RoBERTa-large count)
    assert [got[("lora-xs", r)].trainable for r in (8, 16, 32)] == [48 * 8**2, 12_288, 48 * 32**2]


def test_vera_count_of_its_paper(roberta_config):
    """VeRA trains r + out per matrix: 48 · (256 + 1024) = 61,440 at r = 256 (the paper's RoBERTa-large row)."""
    rows = parameter_table(lambda: load_config_model(roberta_config), [256], ["query", "value"], methods=["vera"])
    assert [(r.method, r.rank, r.trainable) for r in rows] == [("full", None, 355_362_819), ("vera", 256, 61_440)]
    assert rows[1].lora_over_method == pytest.approx(2 * 24 * 256 * 2048 / 61_440)


def test_params_cli_json_and_table(roberta_config, capsys):
    assert main(["params", str(roberta_config), "--ranks", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["trainable"]) for r in out["rows"]] == [
        ("full", 355_362_819), ("tlora", 3_120), ("lora", 786_432), ("vera", 48 * (8 + 1024)), ("lora-xs", 48 * 64)]
    assert main(["params", str(roberta_config), "--ranks", "256", "--methods", "vera", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][1]["trainable"] == 61_440
    assert main(["params", str(roberta_config), "--ranks", "8", "--methods", "tlora", "--head", "trained"]) == 0
    table = capsys.readouterr().out
    assert "3,120" not in table and f"{3_120 + 1024 * 1024 + 1024 + 1024 * 3 + 3:,}" in table


def test_params_cli_names_a_missing_model(capsys, tmp_path):
    assert main(["params", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("flags, words", [(("--ranks", "0"), "must be a positive integer"),
                                           (("--methods", "full"), "invalid choice"),
                                           (("--num-labels", "x"), "is not an integer")])
def test_params_cli_refuses_bad_values_while_parsing(flags, words, capsys):
    with pytest.raises(SystemExit):
        main(["params", *flags])
    assert words in capsys.readouterr().err
