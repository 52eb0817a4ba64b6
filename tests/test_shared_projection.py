"""Sibling layers that read one input share its projection x [A_1 | A_2 …] and sum its gradient in
their products: same function, learned from the calls' order, dropped when that order changes,
never stale (adapters/fused/shared_projection.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlora_analysis.adapters import TLoRAConfig, TLoRALinear, apply_adapters
from tlora_analysis.adapters.fused import backend, get_projection_sharing, lowrank_gemm, set_projection_sharing
from tlora_analysis.adapters.fused import shared_projection as sp
from tlora_analysis.adapters.fused.functions import TLoRALinearFunction

from test_lowrank_gemm import HOPPER

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(autouse=True)
def sharing_on():
    set_projection_sharing(True)
    yield
    set_projection_sharing(True)


def siblings(layer: TLoRALinear) -> list[str]:
    group = backend.projections.groups.get(layer)
    return [] if group is None else [ref().layer_name for ref in group.siblings if ref() is not None]


def layers(n=3, dtype=torch.float64, rank=4, dropout=0.0, position="output", device="cpu"):
    """n fused TLoRA layers of one input width (16), random B, as q/k/v of one block."""
    out = []
    for i in range(n):
        torch.manual_seed(i)
        layer = TLoRALinear(nn.Linear(16, 8 + 8 * i), f"layer{i}",
                            TLoRAConfig(rank=rank, alpha_init=0.6, dropout=dropout, dropout_position=position,
                                        seed=i)).to(device, dtype)
        with torch.no_grad():
            layer.tlora_B.normal_()
        out.append(layer)
    return out


def run(mods, x):
    """Outputs and (x, B, α) gradients of the layers applied to one input, in order."""
    x = x.detach().clone().requires_grad_(True)
    for m in mods:
        m.zero_grad(set_to_none=True)
    ys = [m(x) for m in mods]
    sum((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)).sum()
        for y in ys).backward()
    return [y.detach() for y in ys] + [x.grad] + [t.grad for m in mods for t in (m.tlora_B, m.tlora_alpha)]


def test_siblings_are_learned_then_share_one_product(monkeypatch):
    mods = layers()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    set_projection_sharing(False)
    want = run(mods, x)
    set_projection_sharing(True)
    first = run(mods, x)  # learns: layer1 and layer2 read layer0's input
    assert siblings(mods[0]) == ["layer1", "layer2"] and not siblings(mods[1])
    products = []
    matmul = sp._stacked_factors
    monkeypatch.setattr(sp, "_stacked_factors", lambda *a: products.append(1) or matmul(*a))
    second = run(mods, x)
    assert len(products) == 1  # one x [A_0 | A_1 | A_2] for the three layers
    for got in (first, second):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-13, atol=1e-13)


def shared_calls(monkeypatch):
    """The calls of the siblings' adds to x's shared gradient, recorded."""
    calls = []
    put = sp.InputGradShare.put
    monkeypatch.setattr(sp.InputGradShare, "put", lambda self, ctx, g: calls.append(1) or put(self, ctx, g))
    return calls


def test_siblings_sum_the_input_gradient_in_their_products(monkeypatch):
    """The siblings add their ∂x to one sum, the owner returns it: x gets one gradient from the group."""
    mods = layers()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    run(mods, x)  # learn
    calls = shared_calls(monkeypatch)
    xx = x.clone().requires_grad_(True)
    ys = [m(xx) for m in mods]
    edges = [y.grad_fn.next_functions for y in ys]
    assert len({id(fn) for e in edges for fn, _ in e if fn is not None and "TLoRA" in type(fn).__name__}) == 1
    sum(y.sum() for y in ys).backward()
    assert len(calls) == 2  # layer1 and layer2 added theirs; the owner returned the sum
    set_projection_sharing(False)
    want = x.clone().requires_grad_(True)
    sum(m(want).sum() for m in mods).backward()
    torch.testing.assert_close(xx.grad, want.grad, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("used", [(0,), (1,), (2,), (1, 2), (0, 2)])
def test_a_backward_through_some_of_the_siblings_sums_only_theirs(used):
    mods = layers()
    x = torch.randn(4, 16, dtype=torch.float64)
    run(mods, x)  # learn

    def grads():
        xx = x.clone().requires_grad_(True)
        ys = [m(xx) for m in mods]
        loss = sum((ys[i] * (i + 1)).sum() for i in used)
        return torch.autograd.grad(loss, [xx] + [mods[i].tlora_B for i in used])

    got = grads()
    set_projection_sharing(False)
    for g, w in zip(got, grads()):
        torch.testing.assert_close(g, w, rtol=1e-13, atol=1e-13)


def test_a_pass_that_skips_the_owner_leaves_the_sum_alone(monkeypatch):
    """A pass asked for a sibling's B only runs no owner: the sibling's ∂x is not put in the sum,
    which a later pass through all layers would otherwise add to x's gradient."""
    mods = layers()
    x = torch.randn(4, 16, dtype=torch.float64)
    run(mods, x)  # learn
    calls = shared_calls(monkeypatch)
    xx = x.clone().requires_grad_(True)
    ys = [m(xx) for m in mods]
    torch.autograd.grad(ys[1].sum(), mods[1].tlora_B, retain_graph=True)
    assert not calls
    (got,) = torch.autograd.grad(ys[2].sum() + ys[0].sum(), xx)  # layer1's old term must not come back
    set_projection_sharing(False)
    want = x.clone().requires_grad_(True)
    (mods[2](want).sum() + mods[0](want).sum()).backward()
    torch.testing.assert_close(got, want.grad, rtol=1e-13, atol=1e-13)


def test_backward_twice_through_a_retained_graph_and_after_a_failed_pass(monkeypatch):
    """A second pass sums afresh; so does one after a pass that failed after a sibling's backward,
    before the owner's (its partial sum is dropped)."""
    mods = layers()
    x = torch.randn(4, 16, dtype=torch.float64)
    run(mods, x)  # learn
    xx = x.clone().requires_grad_(True)
    loss = sum(m(xx).sum() for m in mods)
    (first,) = torch.autograd.grad(loss, xx, retain_graph=True)
    gradients = TLoRALinearFunction._gradients
    failed = []

    def fail_at_second_sibling(ctx, grad_out, add_to):
        if not ctx.owner and add_to is not None and not failed:
            failed.append(1)
            raise RuntimeError("stop")
        return gradients(ctx, grad_out, add_to)

    monkeypatch.setattr(TLoRALinearFunction, "_gradients", staticmethod(fail_at_second_sibling))
    with pytest.raises(RuntimeError, match="stop"):
        torch.autograd.grad(loss, xx, retain_graph=True)
    (again,) = torch.autograd.grad(loss, xx)
    set_projection_sharing(False)
    want = x.clone().requires_grad_(True)
    sum(m(want).sum() for m in mods).backward()
    for got in (first, again):
        torch.testing.assert_close(got, want.grad, rtol=1e-13, atol=1e-13)


def test_nothing_of_a_finished_step_is_kept_alive():
    """After the backward, the slot no longer holds the owner's token, whose node would keep every
    node before it alive with what their contexts hold (here the stored dropout masks)."""
    import gc
    import weakref

    mods = layers(dropout=0.5)  # output dropout; the CPU stores the mask in the node's context
    x = torch.randn(4, 16, dtype=torch.float64)
    run(mods, x)  # learn
    xx = x.clone().requires_grad_(True)
    ys = [m(xx) for m in mods]
    masks = [weakref.ref(y.grad_fn.out_mask.mask) for y in ys]
    assert backend.projections.slot.token.token is not None  # for layers still to come
    sum(y.sum() for y in ys).backward()
    assert backend.projections.slot.token.token is None
    del ys, xx
    gc.collect()
    assert all(m() is None for m in masks)


def test_an_input_that_needs_no_gradient_shares_the_projection_only(monkeypatch):
    mods = layers()
    x = torch.randn(4, 16, dtype=torch.float64)
    run(mods, x)  # learn
    calls = shared_calls(monkeypatch)
    ys = [m(x) for m in mods]  # x needs no gradient; B and α do
    sum(y.sum() for y in ys).backward()
    assert not calls and all(m.tlora_B.grad is not None for m in mods)


def test_a_new_input_each_call_gets_its_own_projections():
    mods = layers()
    x = torch.randn(4, 16, dtype=torch.float64)
    run(mods, x)
    y = torch.randn(4, 16, dtype=torch.float64)
    got = [m(y) for m in mods]
    set_projection_sharing(False)
    for g, m in zip(got, mods):
        torch.testing.assert_close(g, m(y), rtol=1e-13, atol=1e-13)


def test_an_input_or_factor_changed_in_place_is_projected_again():
    mods = layers(2)
    x = torch.randn(4, 16, dtype=torch.float64)
    run(mods, x)  # learn
    with torch.no_grad():
        mods[0](x)  # projects x for both
        x.mul_(3)  # a new version of the same tensor
        got = mods[1](x)
        mods[0](x)  # projects x for both again
        mods[1].tlora_A.mul_(2)  # the sibling's factor changed after its slice was computed
        got_a = mods[1](x)
        set_projection_sharing(False)
        torch.testing.assert_close(got_a, mods[1](x), rtol=1e-13, atol=1e-13)
        mods[1].tlora_A.div_(2)
        torch.testing.assert_close(got, mods[1](x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("which", [0, 1])
def test_a_factor_replaced_by_another_tensor_is_stacked_again(which):
    """A new A (another tensor, even at the same address with the same version) rebuilds the stack."""
    mods = layers(2)
    x = torch.randn(4, 16, dtype=torch.float64)
    run(mods, x), run(mods, x)  # learn, then share
    old = mods[which].tlora_A
    mods[which].tlora_A = torch.randn_like(old)  # a new buffer
    del old
    got = run(mods, x)
    set_projection_sharing(False)
    for g, w in zip(got, run(mods, x)):
        torch.testing.assert_close(g, w, rtol=1e-13, atol=1e-13)


def test_a_sibling_that_stops_reading_the_input_is_forgotten():
    mods = layers()
    x = torch.randn(4, 16, dtype=torch.float64)
    run(mods, x)
    assert siblings(mods[0]) == ["layer1", "layer2"]
    with torch.no_grad():
        mods[0](x), mods[2](x)  # layer1 is not called with x this time
        mods[0](torch.randn(4, 16, dtype=torch.float64))  # a new input: layer1's slice was not taken
    assert siblings(mods[0]) == ["layer2"]


def test_input_dropout_and_the_plain_path_do_not_share():
    mods = layers(2, dropout=0.5, position="input")
    x = torch.randn(4, 16, dtype=torch.float64)
    run(mods, x), run(mods, x)
    assert not siblings(mods[0])
    mods = layers(2)
    mods[1].impl = "plain"
    run(mods, x), run(mods, x)
    assert not siblings(mods[0])  # layer1 never asks for a projection


def test_sharing_off_keeps_no_state_and_the_switch_is_validated():
    set_projection_sharing(False)
    assert get_projection_sharing() is False
    mods = layers(2)
    run(mods, torch.randn(4, 16, dtype=torch.float64))
    assert not siblings(mods[0]) and backend.projections.slot.x is None
    with pytest.raises(TypeError, match="True or False"):
        set_projection_sharing("yes")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_llama_block_learns_attention_and_mlp_siblings_and_matches(checkpointing):
    """Also with activation checkpointing, whose backward runs the forward again (in autograd's thread)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, vocab_size=50,
                                         use_cache=False)).double()
    if checkpointing:
        model.train()
        if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5 (the older name is deprecated)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    apply_adapters(model, TLoRAConfig(rank=4, target_modules=TARGETS, dropout=0.0))
    for name, p in model.named_parameters():
        if "tlora_B" in name:
            nn.init.normal_(p)
    ids = torch.randint(0, 50, (2, 7))

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(ids, labels=ids).loss
        loss.backward()
        return [loss.detach()] + [p.grad for p in model.parameters() if p.requires_grad]

    set_projection_sharing(False)
    want = step()
    set_projection_sharing(True)
    for _ in range(2):
        for g, w in zip(step(), want):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert siblings(attn.q_proj) == ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"]
    assert siblings(mlp.gate_proj) == ["model.layers.0.mlp.up_proj"]
    assert not siblings(attn.o_proj) and not siblings(mlp.down_proj)


def test_torch_compile_traces_siblings_without_graph_breaks():
    mods = layers(2)
    x = torch.randn(4, 16, dtype=torch.float64)
    run(mods, x)  # learned in eager mode; compiled code computes each projection itself
    fn = lambda t: mods[0](t) + mods[1](t)[:, :8]  # noqa: E731
    explanation = torch._dynamo.explain(fn)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch.testing.assert_close(torch.compile(fn, backend="aot_eager", fullgraph=True)(x), fn(x), rtol=1e-13,
                               atol=1e-13)
    torch._dynamo.reset()


def compiled_autograd_run(mods, x, seed=0):
    """``run`` with the backward traced and compiled by compiled autograd (the forward eager)."""
    torch.manual_seed(seed)
    with torch._dynamo.compiled_autograd._enable(torch.compile(backend="aot_eager")):
        got = run(mods, x)
    torch._dynamo.reset()
    return got


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_compiled_autograd_gets_autograds_sum_and_lets_go_of_the_token(dropout, monkeypatch):
    """Under compiled autograd the backward is traced, so every layer hands its ∂x to autograd
    (no share): the same gradients as eager mode, nothing added to the share, and the owner's
    backward still empties the slot's token."""
    mods = layers(dropout=dropout)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    run(mods, x)  # learn
    torch.manual_seed(0)
    want = run(mods, x)
    calls = shared_calls(monkeypatch)
    for _ in range(2):  # traced, then the compiled graph reused
        got = compiled_autograd_run(mods, x)
        assert backend.projections.slot.token.token is None
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-13)
    assert not calls


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper (or newer) CUDA GPU and triton")
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_cuda_compiled_autograd_matches_eager(dropout):
    """The Triton path in bf16 (the in-kernel dropout mask where p > 0, regenerated in the traced
    backward) under compiled autograd: eager mode's gradients within bf16 rounding."""
    mods = layers(dtype=torch.bfloat16, rank=8, dropout=dropout, device="cuda")
    x = torch.randn(300, 16, dtype=torch.bfloat16, device="cuda")
    run(mods, x)  # learn
    torch.manual_seed(0)
    want = run(mods, x)
    got = compiled_autograd_run(mods, x)
    assert backend.projections.slot.token.token is None
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2 * w.float().abs().max().item())


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper (or newer) CUDA GPU and triton")
@pytest.mark.parametrize("rank", [32, 8])
def test_cuda_strided_slices_run_the_kernel_and_match(rank, monkeypatch):
    """The slices of x [A_0 | A_1 | A_2] are strided views; the Triton GEMM takes them (forward, and
    as y in the ∂x GEMM's core gradients) and gives what each layer's own projection gives; two
    of the three ∂x GEMMs add onto the sum of x's gradient."""
    calls, added = [], []
    kernel = lowrank_gemm._triton_lowrank_matmul
    monkeypatch.setattr(lowrank_gemm, "_triton_lowrank_matmul", lambda *a: calls.append(a[2].stride(0))
                        or added.append(len(a) > 17 and a[17] is not None) or kernel(*a))
    mods = layers(dtype=torch.bfloat16, rank=rank, device="cuda")
    x = torch.randn(300, 16, dtype=torch.bfloat16, device="cuda")
    set_projection_sharing(False)
    want = run(mods, x)
    set_projection_sharing(True)
    run(mods, x)
    calls.clear(), added.clear()
    got = run(mods, x)
    assert 3 * rank in calls  # the siblings' forward GEMMs read u with the stacked row stride
    assert len(calls) == 6 and sum(added) == 2  # forward and ∂x of each layer, all through the kernel
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2 * w.float().abs().max().item())
