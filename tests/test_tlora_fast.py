"""The fast TLoRA paths compute the plain formula W0 x + b + Dropout(α·((x A) B) C) exactly.

The reference is written out here with torch.nn.functional (not the package's code); forward
outputs and gradients of x, B and α are compared in float64 and float32, with dropout off and
on at both positions. On the CPU every path draws the documented dropout mask, an element kept
iff its uniform float32 draw from the default generator is ≥ p (written out in :func:`drop`), and
the fast paths redraw it in the backward from the saved generator state; matching gradients show
the redraw is the same mask.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from scipy.stats import binomtest

from tlora_analysis.adapters import TLoRAConfig, TLoRALinear, adapted_layers, apply_adapters
from tlora_analysis.adapters.dropout import Dropout, apply_keep, draw_keep, dropout
from tlora_analysis.adapters.tlora import IMPLEMENTATIONS

FAST = ("adapter", "fused", "merged")
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def make_layer(dtype, impl, dropout=0.0, position="output", rank=4, bias=True, seed=0, train_alpha=True,
               dropout_mask="redraw"):  # "redraw" by default: the CPU tests then cover the redraw
    torch.manual_seed(seed)
    base = nn.Linear(12, 10, bias=bias).to(dtype)
    config = TLoRAConfig(rank=rank, dropout=dropout, dropout_position=position, alpha_init=0.8,
                         seed=seed, train_alpha=train_alpha)
    layer = TLoRALinear(base, "layer", config)
    with torch.no_grad():
        layer.tlora_B.normal_()  # B starts at zero; a random B exercises every term
    layer.impl = impl
    layer.dropout_mask = dropout_mask
    return layer


def drop(t: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """The CPU dropout as documented: t ∘ (u ≥ p) / (1 − p), u uniform float32 draws in t's element order."""
    if not training or p == 0:
        return t
    keep = torch.rand(t.shape, dtype=torch.float32) >= p
    return t * (keep.to(t.dtype) * (1.0 / (1.0 - p)))


def reference(layer: TLoRALinear, x: torch.Tensor, p: float, position: str, training: bool) -> torch.Tensor:
    """W0 x + b + Dropout(α·((x A) B) C), written from the paper's formula."""
    a, b, c, alpha = layer.tlora_A, layer.tlora_B, layer.tlora_C, layer.tlora_alpha
    base = F.linear(x, layer.base_layer.weight, layer.base_layer.bias)
    if position == "input":
        return base + alpha * (((drop(x, p, training) @ a) @ b) @ c)
    return base + drop(alpha * (((x @ a) @ b) @ c), p, training)


def outputs_and_grads(fn, layer, x, seed):
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    for t in layer.trainable_state().values():
        t.grad = None
    y = fn(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)
    (y * weights).sum().backward()  # a loss whose gradient differs per element
    grads = {"x": x.grad.clone()}
    for name, t in layer.trainable_state().items():
        if t.requires_grad:
            grads[name] = t.grad.clone()
    return y.detach(), grads


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("position", ["output", "input"])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_plain_formula(impl, dtype, dropout, position, bias):
    layer = make_layer(dtype, impl, dropout, position, bias=bias)
    x = torch.randn(3, 5, 12, dtype=dtype)
    y_fast, g_fast = outputs_and_grads(layer, layer, x, seed=7)
    y_ref, g_ref = outputs_and_grads(lambda t: reference(layer, t, dropout, position, True), layer, x, seed=7)
    torch.testing.assert_close(y_fast, y_ref, **TOL[dtype])
    assert g_fast.keys() == g_ref.keys() == {"x", "tlora_B", "tlora_alpha"}
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], **TOL[dtype], msg=f"gradient of {name}")


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("position", ["output", "input"])
@pytest.mark.parametrize("dropout_mask", ["store", "auto", "redraw"])
def test_stored_mask_matches_plain_formula(impl, position, dropout_mask):
    layer = make_layer(torch.float64, impl, 0.3, position, dropout_mask=dropout_mask)
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    y_fast, g_fast = outputs_and_grads(layer, layer, x, seed=9)
    y_ref, g_ref = outputs_and_grads(lambda t: reference(layer, t, 0.3, position, True), layer, x, seed=9)
    torch.testing.assert_close(y_fast, y_ref, **TOL[torch.float64])
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], **TOL[torch.float64], msg=f"gradient of {name}")


def test_unknown_dropout_mask_is_rejected():
    layer = make_layer(torch.float64, "fused")
    assert TLoRALinear(torch.nn.Linear(4, 4), "l", TLoRAConfig(rank=2)).dropout_mask == "auto"
    with pytest.raises(ValueError, match="dropout_mask must be"):
        layer.dropout_mask = "keep"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_eval_mode_has_no_dropout(impl):
    layer = make_layer(torch.float64, impl, dropout=0.5).eval()
    x = torch.randn(4, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference(layer, x, 0.5, "output", False), rtol=1e-12, atol=1e-12)


def test_dropout_actually_drops():
    layer = make_layer(torch.float64, "fused", dropout=0.5)
    x = torch.randn(64, 12, dtype=torch.float64)
    adapter = layer(x) - layer.base_layer(x)
    zero = adapter.abs() < 1e-12
    assert 0.3 < zero.double().mean().item() < 0.7
    full = reference(layer, x, 0.0, "output", False) - layer.base_layer(x)
    torch.testing.assert_close(adapter[~zero], 2.0 * full[~zero], rtol=1e-10, atol=1e-10)


def test_dropout_module_draws_the_documented_mask():
    x = torch.randn(20, 30, dtype=torch.float64) + 10.0  # no zeros but the dropped ones
    torch.manual_seed(3)
    u = torch.rand(20, 30)
    torch.manual_seed(3)
    y = Dropout(0.4)(x)
    torch.testing.assert_close(y, torch.where(u >= 0.4, x / 0.6, 0.0), rtol=1e-15, atol=0)
    torch.manual_seed(3)
    assert torch.equal(draw_keep((600,), 0.4, torch.device("cpu")), (u >= 0.4).flatten())  # shape-free order
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.4, training=True), y)
    assert dropout(x, 0.4, training=False) is x and dropout(x, 0.0) is x


def test_dropout_keep_rate_and_hand_case():
    torch.manual_seed(0)
    kept = int(draw_keep((200_000,), 0.5, torch.device("cpu")).sum())
    assert binomtest(kept, 200_000, 0.5).pvalue > 1e-4  # Bernoulli(1 − p) keeps
    keep = torch.tensor([True, False, True])
    t = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64, requires_grad=True)
    y = apply_keep(t, keep, 0.25)
    assert y.tolist() == [4 / 3, 0.0, -4.0]
    y.sum().backward()
    assert t.grad.tolist() == [4 / 3, 0.0, 4 / 3]  # the mask and scale again: differentiable in t


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rejects_p_outside_0_1(p):
    with pytest.raises(ValueError, match=r"probability in \[0, 1\)"):
        Dropout(p)
    with pytest.raises(ValueError, match=r"probability in \[0, 1\)"):
        dropout(torch.ones(2), p)


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("position", ["output", "input"])
def test_backward_redraw_leaves_the_random_stream_alone(impl, position):
    layer = make_layer(torch.float64, impl, dropout=0.3, position=position)
    x = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    layer(x).sum().backward()
    after_fast = torch.rand(3)
    torch.manual_seed(5)
    reference(layer, x, 0.3, position, True).sum().backward()
    assert torch.equal(after_fast, torch.rand(3))


def test_merged_runs_one_product_and_falls_back_to_fused_under_dropout():
    layer = make_layer(torch.float64, "merged", dropout=0.3)
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert type(y.grad_fn).__name__ == "TLoRALinearFunctionBackward"
    layer.eval()
    assert type(layer(x).grad_fn).__name__ == "TLoRAMergedFunctionBackward"


@pytest.mark.parametrize("impl", FAST)
def test_fixed_alpha_gets_no_gradient(impl):
    layer = make_layer(torch.float64, impl, train_alpha=False)
    x = torch.randn(5, 12, dtype=torch.float64)
    _, g_fast = outputs_and_grads(layer, layer, x, seed=0)
    _, g_ref = outputs_and_grads(lambda t: reference(layer, t, 0.0, "output", True), layer, x, seed=0)
    assert set(g_fast) == {"x", "tlora_B"}
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-12, atol=1e-12)


def test_input_without_grad_still_trains_b():
    layer = make_layer(torch.float64, "fused")
    x = torch.randn(6, 12, dtype=torch.float64)  # no requires_grad: the first layer of a model
    layer(x).square().sum().backward()
    b_fast = layer.tlora_B.grad.clone()
    layer.tlora_B.grad = None
    reference(layer, x, 0.0, "output", True).square().sum().backward()
    torch.testing.assert_close(b_fast, layer.tlora_B.grad, rtol=1e-12, atol=1e-12)


def test_trainable_base_weight_falls_back_and_gets_its_gradient():
    layer = make_layer(torch.float64, "fused")
    layer.base_layer.weight.requires_grad_(True)
    x = torch.randn(6, 12, dtype=torch.float64)
    layer(x).sum().backward()
    g = layer.base_layer.weight.grad.clone()
    layer.base_layer.weight.grad = None
    reference(layer, x, 0.0, "output", True).sum().backward()
    torch.testing.assert_close(g, layer.base_layer.weight.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("name", ["tlora_A", "tlora_C"])
@pytest.mark.parametrize("as_parameter", [True, False])
def test_a_factor_made_trainable_falls_back_and_gets_its_gradient(impl, name, as_parameter):
    """The fast paths give A and C no gradient; a user who trains one gets the plain path."""
    layer = make_layer(torch.float64, impl)
    factor = getattr(layer, name)
    if as_parameter:
        delattr(layer, name)
        setattr(layer, name, nn.Parameter(factor.detach().clone()))
    else:
        factor.requires_grad_(True)
    x = torch.randn(6, 12, dtype=torch.float64)
    layer(x).square().sum().backward()
    got = getattr(layer, name).grad.clone()
    getattr(layer, name).grad = None
    reference(layer, x, 0.0, "output", True).square().sum().backward()
    torch.testing.assert_close(got, getattr(layer, name).grad, rtol=1e-12, atol=1e-12)


def test_hooks_on_base_layer_still_fire():
    layer = make_layer(torch.float64, "fused")
    seen = []
    layer.base_layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(2, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference(layer, x, 0.0, "output", False), rtol=1e-12, atol=1e-12)
    assert seen == [torch.Size([2, 10])]


def test_autocast_uses_the_plain_path():
    layer = make_layer(torch.float32, "fused")
    x = torch.randn(4, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    torch.testing.assert_close(y.float(), reference(layer, x, 0.0, "output", False), rtol=3e-2, atol=3e-2)


def test_merged_layer_skips_the_adapter():
    layer = make_layer(torch.float64, "fused")
    x = torch.randn(3, 12, dtype=torch.float64)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)


def test_unknown_impl_is_rejected():
    layer = make_layer(torch.float64, "fused")
    with pytest.raises(ValueError, match="impl must be one of"):
        layer.impl = "triton"
    assert "impl=fused" in repr(layer)


def tiny_adapted_bert(model_class: str, config: TLoRAConfig) -> nn.Module:
    """A seeded 2-layer float64 BERT (no hidden dropout) with TLoRA and a random B in every adapter."""
    transformers = pytest.importorskip("transformers")
    bert = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, vocab_size=100, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(bert).double()
    apply_adapters(model, config)
    for layer in adapted_layers(model).values():
        with torch.no_grad():
            layer.tlora_B.normal_()
    return model


def test_whole_model_fast_equals_plain():
    model = tiny_adapted_bert("BertModel", TLoRAConfig(rank=4, target_modules=r"re:encoder\..*\.(query|value|dense)",
                                                       dropout=0.2))
    ids = torch.randint(0, 100, (2, 7))
    results = {}
    for impl in IMPLEMENTATIONS:
        for layer in adapted_layers(model).values():
            layer.impl = impl
        model.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        out = model(input_ids=ids).last_hidden_state
        out.pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[impl] = (out.detach(), grads)
    y_plain, g_plain = results["plain"]
    for impl in FAST:
        y, g = results[impl]
        torch.testing.assert_close(y, y_plain, rtol=1e-12, atol=1e-12)
        for name in g_plain:
            torch.testing.assert_close(g[name], g_plain[name], rtol=1e-10, atol=1e-12, msg=name)


def test_torch_compile_traces_the_fused_layer_in_one_graph():
    """torch.compile sees through the autograd Functions: no graph break, the same loss and gradients.

    The "aot_eager" backend runs dynamo and AOTAutograd (what inductor builds on) without
    generating code, so the test stays fast; the GPU benchmark uses inductor itself.
    """
    model = tiny_adapted_bert("BertForSequenceClassification",
                              TLoRAConfig(rank=4, target_modules=r"re:.*(query|value)", dropout=0.0))
    assert all(layer.impl == "fused" for layer in adapted_layers(model).values())  # the default
    batch = {"input_ids": torch.randint(0, 100, (2, 7)), "labels": torch.tensor([0, 1])}
    explanation = torch._dynamo.explain(model)(**batch)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    losses, grads = [], []
    for run in (model, torch.compile(model, backend="aot_eager")):
        model.zero_grad(set_to_none=True)
        loss = run(**batch).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch._dynamo.reset()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-12, atol=1e-12)
    assert grads[0].keys() == grads[1].keys() and any("tlora_B" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("position", ["output", "input"])
def test_cuda_bf16_close_to_float64(impl, position):
    layer64 = make_layer(torch.float64, "plain", dropout=0.0, position=position, rank=8)
    layer = make_layer(torch.bfloat16, impl, dropout=0.0, position=position, rank=8).cuda()
    with torch.no_grad():
        layer.tlora_B.copy_(layer64.tlora_B)
        layer.base_layer.weight.copy_(layer64.base_layer.weight)
        layer.base_layer.bias.copy_(layer64.base_layer.bias)
    x = torch.randn(256, 12, dtype=torch.float64)
    y_ref, g_ref = outputs_and_grads(layer64, layer64, x, seed=0)
    y, g = outputs_and_grads(layer, layer, x.to("cuda", torch.bfloat16), seed=0)
    rel = lambda a, b: ((a.double().cpu() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(y, y_ref) < 2e-2
    for name in g_ref:
        assert rel(g[name], g_ref[name]) < 3e-2, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("position", ["output", "input"])
@pytest.mark.parametrize("dropout_mask", ["redraw", "store"])
def test_cuda_dropout_uses_the_forward_mask_in_backward(impl, position, dropout_mask):
    layer = make_layer(torch.float32, impl, dropout=0.4, position=position, rank=8, dropout_mask=dropout_mask).cuda()
    x = torch.randn(3, 40, 12, device="cuda")

    def drop(t):  # "store" uses nn.Dropout's kernel; "redraw" a Bernoulli bool mask of the 2-D shape
        if dropout_mask == "store":
            return F.dropout(t.reshape(-1, t.shape[-1]), 0.4, True).view(t.shape)
        keep = torch.empty(t.reshape(-1, t.shape[-1]).shape, dtype=torch.bool, device="cuda").bernoulli_(0.6)
        return t * keep.view(t.shape) / 0.6

    def with_explicit_mask(t):
        base = F.linear(t, layer.base_layer.weight, layer.base_layer.bias)
        a, b, c, alpha = layer.tlora_A, layer.tlora_B, layer.tlora_C, layer.tlora_alpha
        if position == "input":
            return base + alpha * (((drop(t) @ a) @ b) @ c)
        return base + drop(alpha * (((t @ a) @ b) @ c))

    y, g = outputs_and_grads(layer, layer, x, seed=4)
    y_ref, g_ref = outputs_and_grads(with_explicit_mask, layer, x, seed=4)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-4, atol=1e-4, msg=name)
