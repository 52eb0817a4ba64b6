"""Every registered method through its one spec: the layer, ΔW, merge, counting, recording, reading and
the adapter files agree with a dense float64 formula written here from the method's paper; VeRA against
PEFT's VeraConfig; LoRA-XS inside W0's top singular subspaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers_runs import make_tiny_run, tiny_batch, tiny_config, tiny_model
from tlora_analysis import (
    LoRAXSConfig,
    Run,
    VeRAConfig,
    adapted_layers,
    apply_adapters,
    count_parameters,
    load_adapter,
    save_adapter,
)
from tlora_analysis.adapters import METHODS, get_spec, method_names
from tlora_analysis.fileio import CorruptFileError, load_tensors
from tlora_analysis.store.format import FROZEN_FILE

ADAPTERS = [name for name, spec in METHODS.items() if spec.layer_class is not None]


def dense_update(method: str, t: dict[str, torch.Tensor], scaling: float = 1.0) -> np.ndarray:
    """ΔW (out × in) in float64 from each method's paper, written independently of the package."""
    f = {k: v.detach().double().numpy() for k, v in t.items()}
    if method == "tlora":
        return float(f["tlora_alpha"]) * (f["tlora_A"] @ f["tlora_B"] @ f["tlora_C"]).T
    if method == "lora":
        return scaling * f["lora_B"] @ f["lora_A"]
    if method == "vera":
        return np.diag(f["vera_lambda_b"]) @ f["vera_B"] @ np.diag(f["vera_lambda_d"]) @ f["vera_A"]
    if method == "lora-xs":
        return f["loraxs_A"] @ f["loraxs_R"] @ f["loraxs_B"]
    raise ValueError(method)


def randomize(model: nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)


def layer_tensors(layer) -> dict[str, torch.Tensor]:
    return {**layer.trainable_state(), **layer.frozen_state()}


def test_the_registry():
    assert method_names() == ("tlora", "lora", "full", "vera", "lora-xs")
    assert get_spec("vera").config_class is VeRAConfig and get_spec("lora-xs").config_class is LoRAXSConfig
    with pytest.raises(ValueError, match="unknown adapter method 'dora'.*tlora"):
        get_spec("dora")


@pytest.mark.parametrize("method", ADAPTERS)
def test_layer_forward_delta_weight_and_factored_update_are_one_function(method):
    model = apply_adapters(tiny_model(), tiny_config(method)).double()
    randomize(model)
    spec = get_spec(method)
    x = torch.randn(3, 32, dtype=torch.float64)
    for name, layer in adapted_layers(model).items():
        want = dense_update(method, layer_tensors(layer), getattr(layer, "scaling", 1.0))
        np.testing.assert_allclose(layer.delta_weight().numpy(), want, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.factored_update().dense(), want, rtol=1e-12, atol=1e-14)
        out = layer(x) - layer.base_layer(x)
        np.testing.assert_allclose(out.detach().numpy(), x.numpy() @ want.T, rtol=1e-10, atol=1e-13)
        shapes = spec.shapes(layer.out_features, layer.in_features, layer.rank)
        assert {k: tuple(t.shape) for k, t in layer_tensors(layer).items()} == shapes
        trained = {n for n, p in layer.named_parameters() if p.requires_grad}
        assert trained == set(spec.trainable_keys), name


@pytest.mark.parametrize("method", ADAPTERS)
def test_merge_and_counts_follow_the_spec(method):
    model = apply_adapters(tiny_model(), tiny_config(method))
    randomize(model)
    spec = get_spec(method)
    layers = adapted_layers(model)
    per_layer = sum(int(np.prod(s)) for s in spec.trainable_shapes(32, 32, next(iter(layers.values())).rank).values())
    counts = count_parameters(model)
    assert counts.trainable == counts.groups["adapter"]["trainable"] == len(layers) * per_layer
    x = torch.randn(2, 32)
    for layer in layers.values():
        before = layer(x)
        layer.merge()
        torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-5)
        layer.unmerge()


def test_vera_shares_one_frozen_pair_per_shape():
    config = VeRAConfig(rank=6, target_modules=["query", "value", "intermediate.dense"], modules_to_save=())
    model = apply_adapters(tiny_model(), config)
    layers = list(adapted_layers(model).values())
    square = [layer for layer in layers if layer.in_features == layer.out_features]
    wide = [layer for layer in layers if layer.out_features == 64]
    assert len(square) == 4 and len(wide) == 2
    assert all(layer.vera_A is square[0].vera_A and layer.vera_B is square[0].vera_B for layer in square)
    assert wide[0].vera_A is wide[1].vera_A and wide[0].vera_B.shape == (64, 6)
    assert count_parameters(model).adapter_buffers == 6 * (32 + 32) + 6 * (32 + 64)  # one pair per shape
    moved = model.to(torch.float64)  # moving the model keeps one shared copy
    moved_layers = list(adapted_layers(moved).values())
    assert moved_layers[0].vera_A is moved_layers[1].vera_A and moved_layers[0].vera_A.dtype == torch.float64
    again = apply_adapters(tiny_model(seed=5), config)  # the same seed draws the same projections
    assert torch.equal(next(iter(adapted_layers(again).values())).vera_A.double(), moved_layers[0].vera_A)
    lam = next(iter(adapted_layers(again).values()))
    assert torch.count_nonzero(lam.vera_lambda_b) == 0 and torch.all(lam.vera_lambda_d == 0.1)


def test_vera_matches_peft_for_the_same_frozen_matrices():
    from peft import VeraConfig, get_peft_model

    ours = apply_adapters(tiny_model(), VeRAConfig(rank=4, target_modules=["query", "value"], modules_to_save=()))
    ref = get_peft_model(tiny_model(), VeraConfig(r=4, target_modules=["query", "value"], vera_dropout=0.0))
    ours, ref = ours.double(), ref.double()
    randomize(ours)
    peft_layers = {n.removeprefix("base_model.model."): m for n, m in ref.named_modules() if hasattr(m, "vera_lambda_d")}
    with torch.no_grad():
        for name, layer in adapted_layers(ours).items():
            peft = peft_layers[name]
            peft.vera_A["default"].copy_(layer.vera_A)  # the same frozen matrices (one pair: every layer is 32 × 32)
            peft.vera_B["default"].copy_(layer.vera_B)
            peft.vera_lambda_d["default"].copy_(layer.vera_lambda_d)
            peft.vera_lambda_b["default"].copy_(layer.vera_lambda_b)
    peft_trainable = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    assert count_parameters(ours).trainable == peft_trainable == 4 * (4 + 32)
    batch = {"input_ids": tiny_batch(0)["input_ids"]}
    np.testing.assert_allclose(ours(**batch).logits.detach().numpy(), ref(**batch).logits.detach().numpy(),
                               rtol=0, atol=1e-12)
    for name, layer in adapted_layers(ours).items():
        np.testing.assert_allclose(layer.delta_weight().numpy(),
                                   peft_layers[name].get_delta_weight("default").detach().numpy(), rtol=0, atol=1e-14)


def test_lora_xs_factors_come_from_w0s_svd_and_its_update_stays_in_the_top_subspaces(tmp_path):
    run = make_tiny_run(tmp_path, method="lora-xs", steps=5, rank=4, lr=5e-2)
    for layer in run.layers:
        w0 = run.base_weight(layer).double().numpy()
        u, s, vt = np.linalg.svd(w0)
        frozen = {k: v.double().numpy() for k, v in run.frozen(layer).items()}
        np.testing.assert_allclose(frozen["loraxs_A"] @ frozen["loraxs_B"], (u[:, :4] * s[:4]) @ vt[:4], atol=1e-5)
        dw = run.update(layer, run.steps[-1]).dense()
        assert np.linalg.norm(dw) > 1e-3
        off_left = dw - u[:, :4] @ (u[:, :4].T @ dw)  # the part outside W0's top-4 left singular subspace
        off_right = dw - (dw @ vt[:4].T) @ vt[:4]
        assert np.linalg.norm(off_left) < 1e-5 * np.linalg.norm(dw)
        assert np.linalg.norm(off_right) < 1e-5 * np.linalg.norm(dw)


@pytest.mark.parametrize("method", ADAPTERS)
def test_recorded_runs_read_back_the_layers_update(tmp_path, method):
    run = make_tiny_run(tmp_path, method=method, steps=3)
    assert run.method == method and run.verify().ok, str(run.verify())
    model = apply_adapters(tiny_model(), tiny_config(method))
    for name, layer in adapted_layers(model).items():  # step 0 is the model as apply_adapters made it
        np.testing.assert_allclose(run.update(name, 0).dense(), layer.factored_update().dense(), atol=1e-12)
    last = run.steps[-1]
    for layer in run.layers:
        tensors = {**run.frozen(layer), **run.trainable(layer, last)}
        want = dense_update(method, tensors, run.layer_info(layer).get("scaling", 1.0))
        np.testing.assert_allclose(run.update(layer, last).dense(), want, rtol=1e-12, atol=1e-14)
        assert np.linalg.norm(want) > 0


def test_vera_stores_its_shared_pair_once_and_checks_it(tmp_path):
    run = make_tiny_run(tmp_path, method="vera", steps=2)
    tensors, _ = load_tensors(run.path / FROZEN_FILE)
    shared = sorted(k for k in tensors if k.startswith("vera_shared."))
    assert shared == ["vera_shared.32x32.vera_A", "vera_shared.32x32.vera_B"]
    assert not any(k.endswith(("vera_A", "vera_B")) for k in tensors if not k.startswith("vera_shared."))
    assert run.frozen_keys(run.layers[0]) == {"vera_A": shared[0], "vera_B": shared[1]}
    assert all(run.layer_info(layer)["frozen_group"] == "vera_shared.32x32" for layer in run.layers)
    tensors["vera_shared.32x32.vera_B"] = tensors["vera_shared.32x32.vera_B"] * 2  # another seed's projections
    from tlora_analysis.fileio import save_tensors

    _, meta = load_tensors(run.path / FROZEN_FILE)
    save_tensors(run.path / FROZEN_FILE, tensors, {k: v for k, v in meta.items() if k != "sha256"})
    report = Run(run.path).verify()
    assert not report.ok and "fingerprint" in str(report)


@pytest.mark.parametrize("method", ["vera", "lora-xs"])
def test_adapter_files_round_trip_and_refuse_damaged_frozen_tensors(tmp_path, method):
    model = apply_adapters(tiny_model(), tiny_config(method))
    randomize(model)
    save_adapter(model, tmp_path / "ad")
    restored = load_adapter(tiny_model(), tmp_path / "ad")
    for name, layer in adapted_layers(restored).items():
        for key, t in layer_tensors(adapted_layers(model)[name]).items():
            assert torch.equal(layer_tensors(layer)[key], t), (name, key)
    if method == "vera":  # the shared pair is in the file once
        saved, _ = load_tensors(tmp_path / "ad" / "adapter_model.safetensors")
        assert sum(k.endswith(".vera_A") for k in saved) == 1
    weights = tmp_path / "ad" / "adapter_model.safetensors"
    saved, meta = load_tensors(weights)
    frozen_key = next(k for k in saved if k.endswith(("vera_B", "loraxs_B")))
    saved[frozen_key] = saved[frozen_key] + 1
    from tlora_analysis.fileio import save_tensors

    save_tensors(weights, saved, {k: v for k, v in meta.items() if k != "sha256"})
    with pytest.raises(CorruptFileError, match="does not match its fingerprint"):
        load_adapter(tiny_model(), tmp_path / "ad")


@pytest.mark.parametrize("make, exc, words", [
    (lambda: VeRAConfig(rank=0), ValueError, "positive"),
    (lambda: VeRAConfig(d_initial=float("nan")), ValueError, "d_initial must be a finite number"),
    (lambda: VeRAConfig(dropout=1.0), ValueError, "dropout"),
    (lambda: LoRAXSConfig(init_std=-1.0), ValueError, "init_std must be ≥ 0"),
    (lambda: LoRAXSConfig(target_modules="re:["), ValueError, "not a valid regular expression"),
    (lambda: LoRAXSConfig(seed="0"), TypeError, "seed must be an int"),
])
def test_bad_configs_of_the_new_methods(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


def test_lora_xs_rank_is_bounded_by_the_layer_and_vera_is_not():
    with pytest.raises(ValueError, match="exceeds min"):
        apply_adapters(tiny_model(), LoRAXSConfig(rank=40, modules_to_save=()))
    model = apply_adapters(tiny_model(), VeRAConfig(rank=40, modules_to_save=()))  # VeRA's shared rank may exceed
    assert next(iter(adapted_layers(model).values())).vera_lambda_d.shape == (40,)
