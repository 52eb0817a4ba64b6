"""∂L/∂B = α G and ∂L/∂α = ⟨B, G⟩ with G = uᵀ gc (r × r), in one Triton launch.

Why: in the fused layer's backward (functions.py) G is a product of two tokens × r matrices
(u = x A, gc = g Cᵀ) with an inner dimension of 8192 tokens on the benchmark model. cuBLAS runs
it as a split-K GEMM and a reduction, and α G and the dot are two more launches (three kernels
for the dot's reduction included): 13.0 µs of GPU time per layer where reading u and gc takes
about one (docs/benchmarks.md, "Where the fused layer's GPU time goes"). Here each program adds
up uᵀ gc over its blocks of rows in float32 and stores that share; the program that finishes last
(an atomic counter) sums the shares in a fixed order, so the result does not depend on
scheduling, and writes α G and ⟨B, G⟩. G stays in float32 until those two are rounded, where the
torch composition rounds G to the operands' dtype first.

Where the fused layer's ∂x goes through the Triton GEMM, that GEMM's own programs run this
algorithm (kernels.py's ``core_grads_program``, called by lowrank_gemm.py); this launch serves the
other cases (input dropout, the "adapter" and "merged" paths, no gradient for x). Where Triton
does not run (see :func:`supported`, and the backend's ``set_backend`` for when it is used) the
torch composition runs instead.
"""

from __future__ import annotations

import torch

from .launch import cdiv, kernel_dtype, next_power_of_2
from .state import backend

__all__ = ["core_grads", "dispatch", "program_buffers", "shares_per_step", "supported"]

_MAX_RANK = 64


def supported(u: torch.Tensor, gc: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> bool:
    """Whether :func:`core_grads` runs the Triton kernel for these operands (else torch).

    u and gc (M × r) with unit column stride, b (r × r) any strides, all of one half-precision
    dtype on one device (:func:`~.launch.kernel_dtype`); alpha one
    element of any floating dtype; 1 ≤ r ≤ 64; M ≥ 1.
    """
    dtype = u.dtype
    if not kernel_dtype(dtype, u.device.type) or not backend.launcher.ready(u.device.type):
        return False
    device = u.get_device()
    for t in (u, gc, b):
        if t.dtype != dtype or t.get_device() != device or t.dim() != 2 or t.numel() == 0:
            return False
    return (alpha.get_device() == device and alpha.dtype.is_floating_point and alpha.numel() == 1
            and u.stride(1) == 1 and gc.stride(1) == 1 and u.shape[1] <= _MAX_RANK)


# Rows per block, the most shares (programs), warps: 8192 tokens give 32 programs of one block
# each; the interpreter gets small blocks and few shares, so that tests cover several of both.
_TILE = (256, 32, 4)
_INTERPRETER_TILE = (16, 4, 4)
_SUM_ELEMENTS_PER_STEP = 8192  # the last program adds this many float32 of the shares at a time


def _kept_buffers(device: int, shares: int, reuse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Room for ``shares`` float32 elements of shares, and the counter of finished programs: zero
    before a launch, and reset to zero by its last program. In eager mode both are kept by the
    backend per device (its index; -1 for the CPU) and stream, where launches run one after
    another; otherwise fresh: on the CPU, under CUDA graph capture (a memset in the graph zeroes
    the counter on every replay), and from compiled code, whose CUDA graph trees own the memory
    allocated while they warm up and refuse tensors that outlive their graphs."""
    if not reuse or device < 0 or torch.cuda.is_current_stream_capturing():
        where = "cpu" if device < 0 else device
        return torch.empty(shares, device=where, dtype=torch.float32), torch.zeros(1, device=where, dtype=torch.int32)
    stream = torch._C._cuda_getCurrentRawStream(device)
    kept = backend.launcher.kept
    return (kept("shares", device, stream, shares, torch.float32),
            kept("counter", device, stream, 1, torch.int32, zeroed=True))


def shares_per_step(rp: int, max_shares: int) -> int:
    """How many shares the last program adds at a time (the constexpr PB of ``core_grads_program``)."""
    return min(next_power_of_2(max_shares), max(1, _SUM_ELEMENTS_PER_STEP // (rp * rp)))


def program_buffers(u: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, shares: int, rp: int,
                    compiled: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What kernels.py's ``core_grads_program`` writes: the shares, the counter, ∂B and ∂α."""
    return (*_kept_buffers(u.get_device(), shares * rp * rp, not compiled), b.new_empty(b.shape),
            alpha.new_empty(alpha.shape))


def _constexprs(rp: int, bm: int, max_shares: int) -> dict:
    """The kernel's constexprs for one layout: built once (TritonLauncher.config), one dict each."""
    return {"RP": rp, "BM": bm, "PB": shares_per_step(rp, max_shares)}


def _triton_core_grads(u: torch.Tensor, gc: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor,
                       compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    m, r = u.shape
    bm, max_shares, warps = _INTERPRETER_TILE if u.device.type == "cpu" else _TILE
    rp = max(16, next_power_of_2(r))
    programs = min(max_shares, cdiv(m, bm))
    launcher = backend.launcher
    constexprs = launcher.config(("core_grads", rp, bm, max_shares), _constexprs)
    buffers = program_buffers(u, b, alpha, programs, rp, compiled)
    launcher.run(launcher.kernels.core_grads_kernel, programs, (u, gc, b, alpha, *buffers),
                 (m, r, u.stride(0), gc.stride(0), *b.stride()), constexprs, 1, warps, compiled)
    return buffers[2], buffers[3]


def _torch_core_grads(u: torch.Tensor, gc: torch.Tensor, b: torch.Tensor,
                      alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g_core = u.T @ gc  # r × r
    return alpha * g_core, torch.dot(b.reshape(-1), g_core.reshape(-1)).reshape(alpha.shape)


def dispatch(u: torch.Tensor, gc: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, allowed: bool,
             compiled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂B, ∂α) in b's and alpha's dtypes: the kernel where ``allowed`` and supported, else torch."""
    if allowed and supported(u, gc, b, alpha):
        return _triton_core_grads(u, gc, b, alpha, compiled)
    grad_b, grad_alpha = _torch_core_grads(u, gc, b, alpha)
    return grad_b.to(b.dtype), grad_alpha.to(alpha.dtype)


@torch.library.custom_op("tlora_analysis::core_grads", mutates_args=())
def _core_grads_op(u: torch.Tensor, gc: torch.Tensor, b: torch.Tensor,
                   alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch(u, gc, b, alpha, backend.triton_allowed(compiling=True), True)  # runs from compiled code only


@_core_grads_op.register_fake
def _(u: torch.Tensor, gc: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return b.new_empty(b.shape), torch.empty_like(alpha)


def core_grads(u: torch.Tensor, gc: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, *,
               need_b: bool = True, need_alpha: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(∂L/∂B = α G, ∂L/∂α = ⟨B, G⟩) with G = uᵀ gc, for u and gc (M × r), b (r × r) and a
    one-element alpha; a gradient that is not needed comes back as None.

    The Triton kernel where the backend allows it and :func:`supported` says it runs, else the
    torch composition. Under ``torch.compile`` a custom operator, which keeps the kernel whole.
    No autograd: for use inside autograd Functions (functions.py).
    """
    if u.dim() != 2 or gc.shape != u.shape or b.shape != (u.shape[1], u.shape[1]) or alpha.numel() != 1:
        raise ValueError(f"shapes do not chain: u {tuple(u.shape)}, gc {tuple(gc.shape)}, b {tuple(b.shape)}, "
                         f"alpha {tuple(alpha.shape)}; need u and gc (M × r), b (r × r) and a one-element alpha")
    if not (need_b or need_alpha):
        return None, None
    if torch.compiler.is_compiling():
        grad_b, grad_alpha = _core_grads_op(u, gc, b, alpha)
    else:
        grad_b, grad_alpha = dispatch(u, gc, b, alpha, backend.triton_allowed(compiling=False, device_type=u.device.type),
                                      False)
    return grad_b if need_b else None, grad_alpha if need_alpha else None
