"""Adapters: the TLoRA formula, PEFT-equivalent LoRA, merging, counting, save/load, bad input."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from tlora_analysis import (
    FullConfig,
    LoRAConfig,
    TLoRAConfig,
    adapted_layers,
    apply_adapters,
    count_parameters,
    load_adapter,
    merge_and_unload,
    save_adapter,
)
from tlora_analysis.adapters import LoRALinear, TLoRALinear, adapter_config, tracked_linears
from tlora_analysis.fileio import CorruptFileError


def tiny_bert(seed=0, hidden=32, labels=2):
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, vocab_size=100, num_labels=labels)
    return BertForSequenceClassification(cfg).eval()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 100, (3, 7), generator=g), "attention_mask": torch.ones(3, 7, dtype=torch.long)}


def state_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(before, model):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def randomize_trainables(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# ---------------------------------------------------------------- TLoRA layer
def test_tlora_layer_computes_the_paper_formula():
    lin = nn.Linear(6, 5)
    layer = TLoRALinear(lin, "x", TLoRAConfig(rank=3, target_modules=["x"], dropout=0.0))
    with torch.no_grad():
        layer.tlora_B.copy_(torch.randn(3, 3))
        layer.tlora_alpha.fill_(0.7)
    x = torch.randn(4, 6)
    want = lin(x) + 0.7 * (((x @ layer.tlora_A) @ layer.tlora_B) @ layer.tlora_C)
    torch.testing.assert_close(layer(x), want)
    dw = layer.delta_weight()
    torch.testing.assert_close(dw, 0.7 * (layer.tlora_A @ layer.tlora_B @ layer.tlora_C).T)
    np.testing.assert_allclose(layer.factored_update().dense(), dw.double().numpy(), rtol=1e-6, atol=1e-7)
    assert layer.tlora_A.shape == (6, 3) and layer.tlora_C.shape == (3, 5)
    assert not layer.base_layer.weight.requires_grad
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"tlora_B", "tlora_alpha"}


def test_tlora_output_dropout_is_after_alpha_and_input_dropout_before_A():
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    for position in ("output", "input"):
        layer = TLoRALinear(lin, "x", TLoRAConfig(rank=2, target_modules=["x"], dropout=0.5, dropout_position=position))
        with torch.no_grad():
            layer.tlora_B.copy_(torch.eye(2))
        layer.train()
        x = torch.ones(1, 8)
        torch.manual_seed(5)
        got = layer(x) - lin(x)
        torch.manual_seed(5)
        mask_src = (torch.rand(1, 8) >= 0.5) * 2.0  # the CPU mask: uniform draws ≥ p, kept × 1 / (1 − p)
        if position == "output":
            want = mask_src * ((x @ layer.tlora_A) @ layer.tlora_C)
        else:
            want = ((mask_src * x) @ layer.tlora_A) @ layer.tlora_C
        torch.testing.assert_close(got, want)


def test_paper_init_scales_and_alternatives():
    lin = nn.Linear(1024, 768)
    layer = TLoRALinear(lin, "l", TLoRAConfig(rank=32, target_modules=["l"]))
    assert layer.tlora_A.std().item() == pytest.approx(1 / math.sqrt(3 * 32), rel=0.03)
    assert layer.tlora_C.std().item() == pytest.approx(1 / math.sqrt(3 * 768), rel=0.03)
    assert torch.count_nonzero(layer.tlora_B) == 0 and layer.tlora_alpha.item() == 1.0
    gauss = TLoRALinear(lin, "l", TLoRAConfig(rank=32, target_modules=["l"], init="gaussian"))
    assert gauss.tlora_A.std().item() == pytest.approx(1 / math.sqrt(32), rel=0.03)
    orth = TLoRALinear(lin, "l", TLoRAConfig(rank=32, target_modules=["l"], init="orthogonal"))
    torch.testing.assert_close(orth.tlora_A.T @ orth.tlora_A, torch.eye(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(orth.tlora_C @ orth.tlora_C.T, torch.eye(32), atol=1e-5, rtol=0)
    fixed = TLoRALinear(lin, "l", TLoRAConfig(rank=4, target_modules=["l"], train_alpha=False, alpha_init=2.0))
    assert "tlora_alpha" not in dict(fixed.named_parameters()) and fixed.tlora_alpha.item() == 2.0


def test_frozen_factors_are_seeded_per_layer_and_leave_the_global_rng_alone():
    base = tiny_bert()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    m1 = apply_adapters(base, TLoRAConfig(rank=4, target_modules=["query", "value"], seed=7))
    assert torch.equal(torch.get_rng_state(), before)
    m2 = apply_adapters(tiny_bert(seed=9), TLoRAConfig(rank=4, target_modules=["query", "value"], seed=7))
    m3 = apply_adapters(tiny_bert(), TLoRAConfig(rank=4, target_modules=["query", "value"], seed=8))
    l1, l2, l3 = adapted_layers(m1), adapted_layers(m2), adapted_layers(m3)
    assert len(l1) == 4
    for name in l1:
        assert torch.equal(l1[name].tlora_A, l2[name].tlora_A) and torch.equal(l1[name].tlora_C, l2[name].tlora_C)
        assert l1[name].fingerprints == l2[name].fingerprints
        assert not torch.equal(l1[name].tlora_A, l3[name].tlora_A)
    a_all = [layer.tlora_A for layer in l1.values()]
    assert not torch.equal(a_all[0], a_all[1])
    fp = l1[next(iter(l1))].fingerprints["A"]
    assert fp["shape"] == [32, 4] and fp["dtype"] == "float32" and len(fp["sha256"]) == 64


# ---------------------------------------------------------------- LoRA vs PEFT
def test_lora_matches_peft_outputs_and_gradients():
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    ours = apply_adapters(tiny_bert(), LoRAConfig(rank=4, target_modules=["query", "value"], lora_alpha=16,
                                                  modules_to_save=()))
    ref = get_peft_model(tiny_bert(), PeftLoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0))
    randomize_trainables(ours)
    ref_modules = dict(ref.named_modules())
    with torch.no_grad():
        for name, layer in adapted_layers(ours).items():
            peft_layer = ref_modules["base_model.model." + name]
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
            assert peft_layer.scaling["default"] == layer.scaling == 4.0
    b = batch()
    out_ours = ours(**b).logits
    out_ref = ref(**b).logits
    torch.testing.assert_close(out_ours, out_ref, atol=1e-6, rtol=0)
    out_ours.square().sum().backward()
    out_ref.square().sum().backward()
    for name, layer in adapted_layers(ours).items():
        peft_layer = ref_modules["base_model.model." + name]
        torch.testing.assert_close(layer.lora_A.grad, peft_layer.lora_A["default"].weight.grad, atol=1e-6, rtol=0)
        torch.testing.assert_close(layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad, atol=1e-6, rtol=0)


def test_lora_init_is_kaiming_uniform_and_scaling_options():
    layer = LoRALinear(nn.Linear(400, 300), "l", LoRAConfig(rank=8, target_modules=["l"]))
    bound = 1 / math.sqrt(400)  # kaiming_uniform a=√5: bound = √(6/((1+5)·fan_in))
    assert layer.lora_A.abs().max().item() <= bound and layer.lora_A.abs().max().item() > 0.95 * bound
    assert torch.count_nonzero(layer.lora_B) == 0
    assert LoRAConfig(rank=16, target_modules=["q"]).scaling == 1.0
    assert LoRAConfig(rank=32, target_modules=["q"], lora_alpha=16).scaling == 0.5
    assert LoRAConfig(rank=16, target_modules=["q"], lora_alpha=16, use_rslora=True).scaling == 4.0


# ---------------------------------------------------------------- merging
@pytest.mark.parametrize("config", [
    TLoRAConfig(rank=4, target_modules=["query", "value"]),
    LoRAConfig(rank=4, target_modules=["query", "value", "dense"], dropout=0.1),
])
def test_merged_output_equals_adapted_output(config):
    model = apply_adapters(tiny_bert(), config)
    randomize_trainables(model)
    b = batch()
    hidden = lambda m: m(**b, output_hidden_states=True).hidden_states[-1]  # noqa: E731  O(1) activations
    want = hidden(model)
    for layer in adapted_layers(model).values():
        layer.merge()
    merged = hidden(model)
    assert (merged - want).norm() / want.norm() < 1e-5
    with pytest.raises(ValueError, match="already merged"):
        next(iter(adapted_layers(model).values())).merge()
    for layer in adapted_layers(model).values():
        layer.unmerge()
    assert (hidden(model) - want).norm() / want.norm() < 1e-5
    plain = merge_and_unload(model)
    assert not adapted_layers(plain)
    assert (hidden(plain) - want).norm() / want.norm() < 1e-5


# ---------------------------------------------------------------- targets, counting, full FT
def test_target_matching_by_name_suffix_and_regex():
    names = lambda m: sorted(adapted_layers(m))  # noqa: E731
    exact = apply_adapters(tiny_bert(), TLoRAConfig(rank=2, target_modules=["bert.encoder.layer.0.attention.self.query"]))
    assert names(exact) == ["bert.encoder.layer.0.attention.self.query"]
    suffix = apply_adapters(tiny_bert(), TLoRAConfig(rank=2, target_modules=["value"]))
    assert names(suffix) == [f"bert.encoder.layer.{i}.attention.self.value" for i in range(2)]
    regex = apply_adapters(tiny_bert(), TLoRAConfig(rank=2, target_modules=r"re:.*layer\.1\..*(query|key)"))
    assert names(regex) == ["bert.encoder.layer.1.attention.self.key", "bert.encoder.layer.1.attention.self.query"]
    one = apply_adapters(tiny_bert(), TLoRAConfig(rank=2, target_modules="value"))  # a bare string is one name
    assert names(one) == names(suffix)
    with pytest.raises(ValueError, match=r"write 're:\.\*layer"):  # a regex without re: is a name matching nothing
        apply_adapters(tiny_bert(), TLoRAConfig(rank=2, target_modules=r".*layer\.1\..*query"))
    listed_regex = apply_adapters(tiny_bert(), TLoRAConfig(rank=2, target_modules=["re:.*layer\\.0\\..*key"]))
    assert names(listed_regex) == ["bert.encoder.layer.0.attention.self.key"]


def test_count_parameters_and_modules_to_save():
    model = apply_adapters(tiny_bert(), TLoRAConfig(rank=4, target_modules=["query", "value"], modules_to_save=["classifier"]))
    c = count_parameters(model)
    assert c.groups["adapter"]["trainable"] == 4 * (16 + 1)
    assert c.groups["head"]["trainable"] == 32 * 2 + 2
    assert c.trainable == 68 + 66 and c.total == c.trainable + c.frozen
    assert c.adapter_buffers == 4 * 4 * (32 + 32)
    assert c.total == sum(p.numel() for p in tiny_bert().parameters()) + 68


@pytest.mark.parametrize("config", [TLoRAConfig(rank=4, target_modules=["query", "value"]),
                                    LoRAConfig(rank=4, target_modules=["query", "value"]),
                                    FullConfig(target_modules=["query"])])
def test_the_classification_head_trains_by_default_and_freezes_on_request(config):
    model = apply_adapters(tiny_bert(), config)
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert adapter_config(model).modules_to_save == ("classifier",)  # the resolved list is what gets recorded
    assert count_parameters(model).groups["head"]["trainable"] == 32 * 2 + 2
    frozen = apply_adapters(tiny_bert(), dataclasses.replace(config, modules_to_save=()))
    assert not any(p.requires_grad for p in frozen.classifier.parameters())
    assert adapter_config(frozen).modules_to_save == ()


def test_a_model_without_a_head_needs_none():
    encoder = tiny_bert().bert
    model = apply_adapters(encoder, TLoRAConfig(rank=4, target_modules=["query", "value"]))
    assert adapter_config(model).modules_to_save == ()


def test_full_config_tracks_only_track_modules_when_given():
    model = apply_adapters(tiny_bert(), FullConfig(track_modules=["query", "value"]))
    assert all(p.requires_grad for p in model.parameters())
    assert sorted(tracked_linears(model)) == sorted(f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2)
                                                    for m in ("query", "value"))
    with pytest.raises(ValueError, match="track_modules"):
        apply_adapters(tiny_bert(), FullConfig(track_modules=["attention"]))


def test_full_config_trains_everything_or_selected_modules():
    every = apply_adapters(tiny_bert(), FullConfig())
    assert all(p.requires_grad for p in every.parameters())
    assert len(tracked_linears(every)) == 2 * 6 + 2  # 6 per layer, pooler, classifier
    some = apply_adapters(tiny_bert(), FullConfig(target_modules=["query"], modules_to_save=["classifier"]))
    trainable = {n for n, p in some.named_parameters() if p.requires_grad}
    assert trainable == {f"bert.encoder.layer.{i}.attention.self.query.{w}" for i in range(2) for w in ("weight", "bias")} | {
        "classifier.weight", "classifier.bias"}
    assert sorted(tracked_linears(some)) == [f"bert.encoder.layer.{i}.attention.self.query" for i in range(2)]


# ---------------------------------------------------------------- save / load
@pytest.mark.parametrize("config", [
    TLoRAConfig(rank=4, target_modules=["query", "value"], modules_to_save=["classifier"]),
    LoRAConfig(rank=4, target_modules=["query", "value"], lora_alpha=8),
    FullConfig(target_modules=["query"]),
])
def test_save_load_round_trip_is_bit_exact(tmp_path, config):
    model = apply_adapters(tiny_bert(), config)
    randomize_trainables(model)
    save_adapter(model, tmp_path / "ad")
    fresh = load_adapter(tiny_bert(), tmp_path / "ad")
    assert_same_state(state_copy(model), fresh)
    b = batch()
    assert torch.equal(model(**b).logits, fresh(**b).logits)


def test_load_rejects_damage_and_mismatches_leaving_the_model_unchanged(tmp_path):
    model = apply_adapters(tiny_bert(), TLoRAConfig(rank=4, target_modules=["query", "value"]))
    randomize_trainables(model)
    save_adapter(model, tmp_path / "ad")
    weights = tmp_path / "ad" / "adapter_model.safetensors"
    raw = weights.read_bytes()

    weights.write_bytes(raw[: len(raw) // 2])  # truncated
    target = tiny_bert()
    before = state_copy(target)
    with pytest.raises(CorruptFileError, match="adapter_model.safetensors"):
        load_adapter(target, tmp_path / "ad")
    assert_same_state(before, target)

    flipped = bytearray(raw)
    flipped[-5] ^= 0x40  # a bit flip inside the tensor data
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError, match="checksum"):
        load_adapter(target, tmp_path / "ad")
    assert_same_state(before, target)

    weights.write_bytes(raw)
    wider = tiny_bert(hidden=48)
    before = state_copy(wider)
    with pytest.raises(ValueError, match="differ|shape"):
        load_adapter(wider, tmp_path / "ad")
    assert_same_state(before, wider)
    assert not adapted_layers(wider)

    other_seed = apply_adapters(tiny_bert(), TLoRAConfig(rank=4, target_modules=["query", "value"], seed=1))
    with pytest.raises(ValueError, match="different adapter|fingerprint"):
        load_adapter(other_seed, tmp_path / "ad")

    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tiny_bert(), tmp_path / "nothing")


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, exc, words", [
    (lambda: TLoRAConfig(rank=0, target_modules=["query"]), ValueError, "positive"),
    (lambda: LoRAConfig(rank=-2, target_modules=["query"]), ValueError, "positive"),
    (lambda: TLoRAConfig(rank=2.5, target_modules=["query"]), TypeError, "int"),
    (lambda: TLoRAConfig(rank=2, target_modules=[]), ValueError, "empty list"),
    (lambda: TLoRAConfig(rank=2, target_modules=["q"], dropout=1.5), ValueError, "dropout"),
    (lambda: TLoRAConfig(rank=2, target_modules=["q"], init="xavier"), ValueError, "init"),
])
def test_bad_configs_are_rejected(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


@pytest.mark.parametrize("config, exc, words", [
    (TLoRAConfig(rank=64, target_modules=["query"]), ValueError, "exceeds min"),
    (LoRAConfig(rank=40, target_modules=["query"]), ValueError, "exceeds min"),
    (TLoRAConfig(rank=2, target_modules=["qkv_proj"]), ValueError, "matched no module.*query"),
    (TLoRAConfig(rank=2, target_modules=["attention"]), TypeError, "only nn.Linear"),
    (TLoRAConfig(rank=2, target_modules=["query"], modules_to_save=["nohead"]), ValueError, "nohead"),
])
def test_bad_targets_leave_the_model_unchanged(config, exc, words):
    model = tiny_bert()
    before = state_copy(model)
    grads = [p.requires_grad for p in model.parameters()]
    with pytest.raises(exc, match=words):
        apply_adapters(model, config)
    assert_same_state(before, model)
    assert grads == [p.requires_grad for p in model.parameters()]
    assert not adapted_layers(model)


def test_applying_twice_is_refused():
    model = apply_adapters(tiny_bert(), TLoRAConfig(rank=2, target_modules=["query"]))
    before = state_copy(model)
    with pytest.raises(ValueError, match="already has adapters"):
        apply_adapters(model, LoRAConfig(rank=2, target_modules=["value"]))
    assert_same_state(before, model)
