"""The fused paths as autograd Functions: the same function as α·((x A) B) C, fewer passes over memory.

Why: the plain formula (adapters/tlora.py) runs as five autograd nodes per layer; on a GPU each
is a pass over a (tokens × out) tensor, and autograd keeps x·A·B·C (tokens × out) alive for α's
gradient (docs/benchmarks.md, "TLoRA's options on a GPU"). The layer's ``impl`` picks one (route.py):

- ``"adapter"``: :class:`TLoRAAdapterFunction`, the adapter alone; α and B are folded into C
  once per forward (M = α B C, r × out) so the forward is two products, and only u = x A
  (tokens × r) is saved for the backward.
- ``"fused"`` (default): :class:`TLoRALinearFunction`, base layer and adapter in one node:
  x W0ᵀ + α (u B) C and g W0 + α (gc Bᵀ) Aᵀ each through :func:`~.lowrank_gemm.lowrank_matmul`,
  where cuBLAS folds α B into the small factor and accumulates the base product onto the
  adapter's (``addmm_``, β = 1) or, by default on Hopper GPUs in half precision, one Triton
  GEMM applies α and B and carries the rank-r term in its accumulator. With output dropout and
  ``dropout_mask="auto"`` (the default) that GEMM drops the rank-r term out in its accumulator with a
  hashed keep-mask of (seed, element) (kernel_mask.py), and the backward regenerates the mask
  in its one pass over g, gc = (g ∘ keep) Cᵀ / (1 − p̂); where it does not run (and with
  "redraw" or "store"), and with input dropout (∂x), that direction stays with the β = 1
  accumulation. Without input dropout, u may come from a sibling layer's call, and sibling
  layers sum their ∂x in their GEMMs' epilogues rather than through autograd
  (shared_projection.py).
- ``"merged"`` (opt-in): :class:`TLoRAMergedFunction`, one product with W0 + ΔW, rebuilt from
  the factors in the forward and again in the backward (weight-sized passes instead of
  activation-sized ones). Without dropout only (else "fused"); W0 + ΔW is rounded to W0's
  dtype, which in bfloat16 drops updates below W0's rounding step.

Dropout masks on CUDA are not stored by default. "auto" (``TLoRALinear.dropout_mask``) is the
in-kernel hashed mask where the fused layer's Triton GEMM runs (output dropout; nothing
mask-sized is kept, no extra pass over memory); elsewhere on CUDA it redraws a torch mask in the
backward from the saved generator state (peak memory stays at the no-dropout level; the redraw
costs a second pass of random numbers), and on the CPU it stores the mask. "redraw" and "store"
choose the torch mask everywhere. On the CPU the torch mask is the one the layer's ``Dropout``
module draws (adapters/dropout.py: uniform draws compared with p, drawn and applied in under
half the time of ``nn.Dropout``'s kernel), so every path computes the same function from the
same seed.

Gradients are exact for B, α and x: with gc = g Cᵀ (tokens × r) and G = uᵀ gc (r × r),
∂L/∂B = α G, ∂L/∂α = Σ B ∘ G, ∂L/∂u = gc (α B)ᵀ, ∂L/∂x = ∂L/∂u Aᵀ (+ g W0 for the base).
∂L/∂B and ∂L/∂α come from the fused layer's ∂x GEMM where the Triton kernel runs
(:func:`~.lowrank_gemm.lowrank_matmul_with_core_grads`), else from :func:`~.core_grads.core_grads`
(one Triton launch where that kernel runs, else torch).
A and C are frozen buffers and get no gradient; neither does a frozen W0 or bias.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from ..dropout import apply_keep, draw_keep, dropout_with_mask
from .core_grads import core_grads
from .lowrank_gemm import dropout_lowrank_matmul, lowrank_matmul, lowrank_matmul_with_core_grads
from .kernel_mask import KernelDropout, masked_projection
from .shared_projection import InputGradShare

__all__ = ["TLoRAAdapterFunction", "TLoRALinearFunction", "TLoRAMergedFunction"]


class _DropoutMask:
    """A Bernoulli(1 − p) keep-mask that the backward redraws from the saved generator state.

    Storing the mask would cost one byte per element of every adapted layer's output (about 20%
    of the peak memory of a 1B model with all linear layers adapted); redrawing it costs one
    pass. The mask is :func:`~tlora_analysis.adapters.dropout.draw_keep`'s, a fresh bool tensor,
    so it depends only on the generator state and the shape, never on the values or memory layout
    of the tensor it is applied to; on the CPU it is the very mask the layer's ``Dropout`` module
    (the plain formula) draws from the same seed.
    """

    def __init__(self, shape: torch.Size, p: float, device: torch.device) -> None:
        self.shape, self.p, self.device = shape, p, device
        if device.type == "cuda":
            self.generator = torch.cuda.default_generators[device.index if device.index is not None
                                                           else torch.cuda.current_device()]
        else:
            self.generator = torch.default_generator
        self.state = self.generator.get_state()

    def _draw(self) -> torch.Tensor:
        return draw_keep(self.shape, self.p, self.device, self.generator)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return apply_keep(t, self._draw(), self.p)  # advances the generator like the Dropout module

    def backward(self, g: torch.Tensor) -> torch.Tensor:
        now = self.generator.get_state()
        self.generator.set_state(self.state)
        mask = self._draw()
        self.generator.set_state(now)  # the random stream goes on as if nothing was redrawn
        return apply_keep(g, mask, self.p)


class _StoredMask:
    """The keep-mask of the forward (the Dropout module's on the CPU, ``torch.native_dropout``'s on
    CUDA), stored: no redraw, one byte per element."""

    def __init__(self, mask: torch.Tensor, p: float) -> None:
        self.mask, self.p = mask, p

    def backward(self, g: torch.Tensor) -> torch.Tensor:
        return apply_keep(g, self.mask, self.p)


def _dropout(t: torch.Tensor, p: float, store: bool) -> tuple[torch.Tensor, _DropoutMask | _StoredMask | None]:
    """Inverted dropout of ``t`` (no-op for p = 0) and what the backward needs to redo it."""
    if p <= 0:
        return t, None
    if store:
        out, keep = dropout_with_mask(t, p)
        return out, _StoredMask(keep, p)
    dm = _DropoutMask(t.shape, p, t.device)
    return dm.forward(t), dm


def _core_grads(
    ctx: Any, go: torch.Tensor, u: torch.Tensor, b: torch.Tensor, c: torch.Tensor, alpha: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(gc = go Cᵀ, ∂L/∂B, ∂L/∂α) from the gradient ``go`` of the adapter output (tokens × out);
    ∂L/∂u = gc (α B)ᵀ is left to the caller, who may fold it into the next product."""
    gc = F.linear(go, c)  # go Cᵀ (tokens × r): the one pass over go
    grad_b, grad_alpha = core_grads(u, gc, b, alpha, need_b=ctx.needs_input_grad[ctx.b_index],
                                    need_alpha=ctx.needs_input_grad[ctx.b_index + 2])
    return gc, grad_b, grad_alpha


def _forward_u(x2: torch.Tensor, a: torch.Tensor, p_in: float,
               store: bool) -> tuple[torch.Tensor, _DropoutMask | _StoredMask | None]:
    """u = dropout(x) A (tokens × r) and the input dropout's mask (None without input dropout)."""
    xd, mask = _dropout(x2, p_in, store)
    return torch.mm(xd, a), mask


def _input_grad_from_u(grad_u: torch.Tensor, a: torch.Tensor, mask: _DropoutMask | _StoredMask | None) -> torch.Tensor:
    """∂L/∂x of the adapter branch (tokens × in)."""
    gx = grad_u @ a.T
    return gx if mask is None else mask.backward(gx)


def _output(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, u: torch.Tensor, b: torch.Tensor,
            c: torch.Tensor, alpha: torch.Tensor, p_out: float, store_mask: bool,
            kernel_mask: bool) -> tuple[torch.Tensor, KernelDropout | _DropoutMask | _StoredMask | None]:
    """The fused layer's output x W0ᵀ + bias + dropout(α (u B) C) (tokens × out) and what the
    backward needs to redo its output dropout."""
    if p_out > 0 and kernel_mask:  # one GEMM, the rank-r term dropped out in its accumulator
        fused = dropout_lowrank_matmul(x2, weight, u, c, bias, p=p_out, core=b, scale=alpha, transpose_w=True)
        if fused is not None:
            return fused
    if p_out > 0:
        m = (alpha * b) @ c  # r × out: α and B folded into C once per forward
        out, mask = _dropout(u @ m, p_out, store_mask)
        if bias is not None:
            out.add_(bias)
        # The large product accumulates onto the adapter's output in its GEMM epilogue (β = 1):
        # the adapter costs one write of (tokens × out), not a separate add pass.
        return out.addmm_(x2, weight.T), mask
    # x W0ᵀ + α (u B) C in one GEMM where Triton runs (no activation written twice), else as above
    return lowrank_matmul(x2, weight, u, c, bias, core=b, scale=alpha, transpose_w=True), None


class TLoRAAdapterFunction(torch.autograd.Function):
    """The adapter α·((dropout(x) A) B) C → dropout alone; saves u = x A only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                alpha: torch.Tensor, p_in: float, p_out: float, store_mask: bool) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        u, ctx.in_mask = _forward_u(x2, a, p_in, store_mask)
        out, ctx.out_mask = _dropout(u @ ((alpha * b) @ c), p_out, store_mask)
        ctx.save_for_backward(u, a, b, c, alpha)
        ctx.x_shape, ctx.b_index = x.shape, 2
        return out.view(*x.shape[:-1], c.shape[1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, a, b, c, alpha = ctx.saved_tensors
        go = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.out_mask is not None:
            go = ctx.out_mask.backward(go)
        gc, grad_b, grad_alpha = _core_grads(ctx, go, u, b, c, alpha)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad_from_u(gc @ (alpha * b).T, a, ctx.in_mask).view(ctx.x_shape)
        return grad_x, None, grad_b, None, grad_alpha, None, None, None


class TLoRALinearFunction(torch.autograd.Function):
    """W0 x + bias + the adapter, in one node; needs a frozen W0 and bias (no gradient for them)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, alpha: torch.Tensor,
                p_in: float, p_out: float, store_mask: bool, u: torch.Tensor | None = None,
                kernel_mask: bool = False, grad_share: InputGradShare | None = None,
                token: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``u``: x A when already computed (shared_projection.py; no input dropout), else computed
        here. ``kernel_mask``: output dropout with the in-kernel mask in the Triton GEMM where it
        runs. ``grad_share``: x's gradient summed with sibling layers' (shared_projection.py): a
        sibling passes the owner's ``token`` and adds its ∂x to the share; the owner (no token)
        also returns a token, an empty tensor its siblings take as an input, and returns the sum."""
        x2 = x.reshape(-1, x.shape[-1])
        if u is None:
            u, ctx.in_mask = _forward_u(x2, a, p_in, store_mask)
        else:
            ctx.in_mask = None
        out, ctx.out_mask = _output(x2, weight, bias, u, b, c, alpha, p_out, store_mask, kernel_mask)
        ctx.save_for_backward(weight, u, a, b, c, alpha)
        ctx.x_shape, ctx.grad_share, ctx.owner = x.shape, grad_share, grad_share is not None and token is None
        out = out.view(*x.shape[:-1], weight.shape[0])
        if not ctx.owner:
            return out
        ctx.set_materialize_grads(False)  # the owner's own output may get no gradient, its token gets none
        return out, x.new_empty(0)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor | None, *_: Any) -> tuple[torch.Tensor | None, ...]:
        share, token_grad = ctx.grad_share, None
        if share is not None and torch.compiler.is_compiling():  # compiled autograd: the backward traced
            if ctx.owner:
                share.drain()  # lets go of the token; nothing was summed
            elif ctx.needs_input_grad[-1]:  # its graph sums a gradient for every input that needs one
                token_grad = grad_out.new_empty(0)
            share = None  # each layer hands its ∂x to autograd as usual
        elif share is not None and not ctx.owner and not _runs_in_this_pass(ctx.next_functions[-1][0]):
            share = None  # a pass that skips the owner (only B or α asked for): ∂x to autograd as usual
        if grad_out is None:  # the owner's output unused: x's gradient is its siblings' sum, if any
            grad_x, grad_b, grad_alpha = None if share is None else share.drain(), None, None
        else:
            add_to = None if share is None else share.drain() if ctx.owner else share.take(ctx)
            grad_x, grad_b, grad_alpha = TLoRALinearFunction._gradients(ctx, grad_out, add_to)
            if share is not None and not ctx.owner:
                if grad_x is not None:
                    share.put(ctx, grad_x)
                grad_x = None  # in the owner's sum
        grad_x = None if grad_x is None else grad_x.view(ctx.x_shape)
        # then the 7 non-differentiable inputs, the owner's token last
        return grad_x, None, None, None, grad_b, None, grad_alpha, *(None,) * 6, token_grad

    @staticmethod
    def _gradients(ctx: Any, grad_out: torch.Tensor, add_to: torch.Tensor | None
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(∂x (tokens × in; added onto ``add_to`` in place where given), ∂B, ∂α), each None where
        not needed."""
        weight, u, a, b, c, alpha = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])
        need_x, need_b, need_alpha = ctx.needs_input_grad[0], ctx.needs_input_grad[4], ctx.needs_input_grad[6]
        if isinstance(ctx.out_mask, KernelDropout):  # (g ∘ keep) Cᵀ / (1 − p̂), the mask regenerated
            gc = masked_projection(g, c, ctx.out_mask)
        else:  # go Cᵀ (tokens × r): the one pass over go
            gc = F.linear(g if ctx.out_mask is None else ctx.out_mask.backward(g), c)
        grad_x = None
        if need_x and ctx.in_mask is None and (need_b or need_alpha):
            # g W0 + α (gc Bᵀ) Aᵀ in one GEMM with ∂B and ∂α in its epilogue (Triton), else β = 1
            # accumulation (cuBLAS) and core_grads
            grad_x, grad_b, grad_alpha = lowrank_matmul_with_core_grads(
                g, weight, gc, a, core=b, scale=alpha, y=u, transpose_v=True, transpose_core=True, add_to=add_to)
            grad_b, grad_alpha = (grad_b if need_b else None), (grad_alpha if need_alpha else None)
        else:
            grad_b, grad_alpha = core_grads(u, gc, b, alpha, need_b=need_b, need_alpha=need_alpha)
            if need_x and ctx.in_mask is None:
                grad_x = lowrank_matmul(g, weight, gc, a, core=b, scale=alpha, transpose_v=True, transpose_core=True,
                                        add_to=add_to)
            elif need_x:  # input dropout: never shared, so no add_to
                grad_x = _input_grad_from_u(gc @ (alpha * b).T, a, ctx.in_mask).addmm_(g, weight)
        return grad_x, grad_b, grad_alpha


def _runs_in_this_pass(node: Any) -> bool:
    """Whether the backward pass under way runs autograd ``node`` (a pass asked only for some
    inputs skips the nodes it does not need); True where torch cannot say."""
    will_run = getattr(torch._C, "_will_engine_execute_node", None)
    return will_run is None or node is None or will_run(node)


def _merged_weight(weight: torch.Tensor, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """W0 + α (A B C)ᵀ = W0 + mᵀ Aᵀ (out × in), one rank-r GEMM in W0's dtype."""
    return torch.addmm(weight, m.T, a.T)


class TLoRAMergedFunction(torch.autograd.Function):
    """W0 x + bias + the adapter as one product with W0 + ΔW, rebuilt in forward and backward.

    For no dropout only. Exact in exact arithmetic, but W0 + ΔW is rounded to W0's dtype: in
    bfloat16 a ΔW entry below half a unit in the last place of W0 is lost, so use it with float32
    (or wider) weights, or knowingly.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        u = x2 @ a
        m = (alpha * b) @ c
        out = F.linear(x2, _merged_weight(weight, a, m), bias)
        ctx.save_for_backward(weight, u, a, b, c, alpha, m)
        ctx.x_shape, ctx.b_index = x.shape, 4
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, u, a, b, c, alpha, m = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])
        _, grad_b, grad_alpha = _core_grads(ctx, g, u, b, c, alpha)
        grad_x = None
        if ctx.needs_input_grad[0]:  # ∂L/∂x = g (W0 + ΔW): one product, no separate adapter term
            grad_x = (g @ _merged_weight(weight, a, m)).view(ctx.x_shape)
        return grad_x, None, None, None, grad_b, None, grad_alpha
