"""Fast TLoRA layer paths: the same function as α·((x A) B) C, fewer passes over memory.

Why: the plain formula runs as five autograd nodes per layer; on a GPU each is a pass over an
(tokens × out) tensor, and autograd keeps x·A·B·C (tokens × out) alive for α's gradient.
Measured in benchmarks/bench_train_step.py (docs/benchmarks.md, "Training step").

Three implementations, selected per layer by ``TLoRALinear.impl``:

- ``"plain"``: the formula as written (the reference, and the fallback for autocast, mixed
  dtypes, a trainable base weight or hooks on ``base_layer``).
- ``"adapter"``: :class:`TLoRAAdapterFunction`, the adapter alone; α and B are folded into C
  once per forward (M = α B C, r × out) so the forward is two products, and only u = x A
  (tokens × r) is saved for the backward.
- ``"fused"`` (default): :class:`TLoRALinearFunction`, base layer and adapter in one node:
  the base product accumulates onto the adapter's output in its GEMM epilogue (``addmm_``
  with β = 1), and the base input-gradient onto the adapter's input-gradient the same way.

Gradients are exact for B, α and x: with gc = g Cᵀ (tokens × r) and G = uᵀ gc (r × r),
∂L/∂B = α G, ∂L/∂α = Σ B ∘ G, ∂L/∂u = gc (α B)ᵀ, ∂L/∂x = ∂L/∂u Aᵀ (+ g W0 for the base).
A and C are frozen buffers and get no gradient; neither does a frozen W0 or bias.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["IMPLEMENTATIONS", "TLoRAAdapterFunction", "TLoRALinearFunction", "plain_adapter_output"]

IMPLEMENTATIONS = ("plain", "adapter", "fused")


def plain_adapter_output(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, alpha: torch.Tensor,
    dropout: torch.nn.Module, dropout_position: str,
) -> torch.Tensor:
    """α·((x A) B) C with dropout on x ("input") or on the product ("output"), through autograd."""
    if dropout_position == "input":
        return alpha * (((dropout(x) @ a) @ b) @ c)
    return dropout(alpha * (((x @ a) @ b) @ c))


def _drop(t: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverted dropout (the kernel nn.Dropout uses), returning the kept-mask for the backward."""
    return torch.native_dropout(t, p, True)


def _undrop(g: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    return torch.ops.aten.native_dropout_backward(g, mask, 1.0 / (1.0 - p))


def _core_grads(
    ctx: Any, go: torch.Tensor, u: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
    alpha: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(∂L/∂u, ∂L/∂B, ∂L/∂α) from the gradient ``go`` of the adapter output (tokens × out)."""
    gc = go @ c.T  # tokens × r: the one pass over go
    need_u, need_b, need_alpha = ctx.needs_u, ctx.needs_input_grad[ctx.b_index], ctx.needs_input_grad[ctx.b_index + 2]
    g_core = u.T @ gc if (need_b or need_alpha) else None  # r × r
    grad_b = alpha * g_core if need_b else None
    grad_alpha = (b * g_core).sum().reshape(alpha.shape) if need_alpha else None
    grad_u = gc @ (alpha * b).T if need_u else None
    return grad_u, grad_b, grad_alpha


def _forward_u(x2: torch.Tensor, a: torch.Tensor, p_in: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """u = dropout(x) A (tokens × r) and the input dropout mask (None without input dropout)."""
    if p_in > 0:
        xd, mask = _drop(x2, p_in)
        return xd @ a, mask
    return x2 @ a, None


def _input_grad_from_u(grad_u: torch.Tensor, a: torch.Tensor, mask: torch.Tensor | None, p_in: float) -> torch.Tensor:
    """∂L/∂x of the adapter branch (tokens × in)."""
    gx = grad_u @ a.T
    return gx if mask is None else _undrop(gx, mask, p_in)


class TLoRAAdapterFunction(torch.autograd.Function):
    """The adapter α·((dropout(x) A) B) C → dropout alone; saves u = x A and the dropout mask."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                alpha: torch.Tensor, p_in: float, p_out: float) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        u, in_mask = _forward_u(x2, a, p_in)
        out = u @ ((alpha * b) @ c)
        out_mask = None
        if p_out > 0:
            out, out_mask = _drop(out, p_out)
        ctx.save_for_backward(u, a, b, c, alpha, in_mask, out_mask)
        ctx.p_in, ctx.p_out, ctx.x_shape = p_in, p_out, x.shape
        ctx.needs_u, ctx.b_index = ctx.needs_input_grad[0], 2
        return out.view(*x.shape[:-1], c.shape[1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, a, b, c, alpha, in_mask, out_mask = ctx.saved_tensors
        go = grad_out.reshape(-1, grad_out.shape[-1])
        if out_mask is not None:
            go = _undrop(go, out_mask, ctx.p_out)
        grad_u, grad_b, grad_alpha = _core_grads(ctx, go, u, a, b, c, alpha)
        grad_x = None
        if grad_u is not None:
            grad_x = _input_grad_from_u(grad_u, a, in_mask, ctx.p_in).view(ctx.x_shape)
        return grad_x, None, grad_b, None, grad_alpha, None, None


class TLoRALinearFunction(torch.autograd.Function):
    """W0 x + bias + the adapter, in one node; needs a frozen W0 and bias (no gradient for them)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, alpha: torch.Tensor,
                p_in: float, p_out: float) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        u, in_mask = _forward_u(x2, a, p_in)
        m = (alpha * b) @ c  # r × out: α and B folded into C once per forward
        out_mask = None
        if p_out > 0:
            out, out_mask = _drop(u @ m, p_out)
            if bias is not None:
                out.add_(bias)
        else:
            out = u @ m if bias is None else torch.addmm(bias, u, m)
        # The large product accumulates onto the adapter's output in its GEMM epilogue (β = 1):
        # the adapter costs one write of (tokens × out), not a separate add pass.
        out.addmm_(x2, weight.T)
        ctx.save_for_backward(weight, u, a, b, c, alpha, in_mask, out_mask)
        ctx.p_in, ctx.p_out, ctx.x_shape = p_in, p_out, x.shape
        ctx.needs_u, ctx.b_index = ctx.needs_input_grad[0], 4
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, u, a, b, c, alpha, in_mask, out_mask = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])
        go = _undrop(g, out_mask, ctx.p_out) if out_mask is not None else g
        grad_u, grad_b, grad_alpha = _core_grads(ctx, go, u, a, b, c, alpha)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad_from_u(grad_u, a, in_mask, ctx.p_in).addmm_(g, weight).view(ctx.x_shape)
        return grad_x, None, None, None, grad_b, None, grad_alpha, None, None
