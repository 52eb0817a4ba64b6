"""∂L/∂B = α G and ∂L/∂α = ⟨B, G⟩ with G = uᵀ gc (r × r), in one Triton launch.

Why: in the fused layer's backward (fast.py) G is a product of two tokens × r matrices (u = x A,
gc = g Cᵀ) with an inner dimension of 8192 tokens on the benchmark model. cuBLAS runs it as a
split-K GEMM and a reduction, and α G and the dot are two more launches (three kernels for the
dot's reduction included): 13.0 µs of GPU time per layer where reading u and gc takes about one
(docs/benchmarks.md, "Idea 13"). Here each program adds up uᵀ gc over its blocks of rows in
float32 and stores that share; the program that finishes last (an atomic counter) sums the
shares in a fixed order, so the result does not depend on scheduling, and writes α G and ⟨B, G⟩.
G stays in float32 until those two are rounded, where the torch composition rounds G to the
operands' dtype first.

Where the fused layer's ∂x goes through the Triton GEMM, that GEMM's own programs run this
algorithm (:func:`core_grads_program`, lowrank_gemm.py: "Idea 15"); this launch serves the other
cases (input dropout, the "adapter" and "merged" paths, no gradient for x). Where Triton does not
run (see :func:`supported`, and :func:`~.triton_launch.set_backend` for when it is used) the
torch composition runs instead, the same operations as before this module.
"""

from __future__ import annotations

import importlib.util

import torch

from .triton_launch import run as _run_kernel
from .triton_launch import HALF_DTYPES, cdiv, triton_allowed, triton_ready

__all__ = ["core_grads", "supported"]

_MAX_RANK = 64


def supported(u: torch.Tensor, gc: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> bool:
    """Whether :func:`core_grads` runs the Triton kernel for these operands (else torch).

    u and gc (M × r) with unit column stride, b (r × r) any strides, all of one half-precision
    dtype on one device (in float32 Triton's tensor cores would round to TF32); alpha one
    element of any floating dtype; 1 ≤ r ≤ 64; M ≥ 1.
    """
    dtype = u.dtype
    if dtype not in HALF_DTYPES or not triton_ready(u.device.type):
        return False
    device = u.get_device()
    for t in (u, gc, b):
        if t.dtype != dtype or t.get_device() != device or t.dim() != 2 or t.numel() == 0:
            return False
    return (alpha.get_device() == device and alpha.dtype.is_floating_point and alpha.numel() == 1
            and u.stride(1) == 1 and gc.stride(1) == 1 and u.shape[1] <= _MAX_RANK)


if importlib.util.find_spec("triton") is not None:
    import triton
    import triton.language as tl

    @triton.jit
    def core_grads_program(pid, programs, u_ptr, gc_ptr, b_ptr, alpha_ptr, share_ptr, count_ptr, grad_b_ptr,
                           grad_alpha_ptr, M, R, stride_u, stride_gc, stride_b0, stride_b1,
                           RP: tl.constexpr, BM: tl.constexpr, PB: tl.constexpr):
        """Program ``pid`` of ``programs``: its share of G (float32, zeros past r) over its blocks of
        rows; the last of them to finish sums all shares and writes ∂B = α G (r × r, row-major) and
        ∂α = ⟨B, G⟩. Also the epilogue of the fused layer's ∂x GEMM (lowrank_gemm.py)."""
        offs_r = tl.arange(0, RP)
        share = tl.zeros((RP, RP), dtype=tl.float32)
        for start in range(pid * BM, M, programs * BM):  # this program's blocks of rows
            rows = (start + tl.arange(0, BM)).to(tl.int64)  # tokens × r can pass 2³¹
            mask = (rows < M)[:, None] & (offs_r < R)[None, :]
            u = tl.load(u_ptr + rows[:, None] * stride_u + offs_r[None, :], mask=mask, other=0.0)
            gc = tl.load(gc_ptr + rows[:, None] * stride_gc + offs_r[None, :], mask=mask, other=0.0)
            share = tl.dot(tl.trans(u), gc, share)
        tl.store(share_ptr + pid * RP * RP + offs_r[:, None] * RP + offs_r[None, :], share)
        # every thread's share stored before one thread's release; the last program then acquires
        tl.debug_barrier()
        if tl.atomic_add(count_ptr, 1, sem="acq_rel", scope="gpu") == programs - 1:
            entry = tl.arange(0, RP * RP)
            offs_p = tl.arange(0, PB)
            total = tl.zeros((PB, RP * RP), dtype=tl.float32)
            for p0 in range(0, programs, PB):  # a fixed order of summation
                p = p0 + offs_p
                total += tl.load(share_ptr + p[:, None] * (RP * RP) + entry[None, :], mask=(p < programs)[:, None],
                                 other=0.0, cache_modifier=".cg")  # from L2: other programs wrote them
            g_core = tl.reshape(tl.sum(total, axis=0), (RP, RP))
            rr = (offs_r[:, None] < R) & (offs_r[None, :] < R)
            b = tl.load(b_ptr + offs_r[:, None] * stride_b0 + offs_r[None, :] * stride_b1, mask=rr, other=0.0)
            alpha = tl.load(alpha_ptr).to(tl.float32)
            tl.store(grad_b_ptr + offs_r[:, None] * R + offs_r[None, :],
                     (alpha * g_core).to(grad_b_ptr.dtype.element_ty), mask=rr)
            tl.store(grad_alpha_ptr, tl.sum(tl.sum(b.to(tl.float32) * g_core, axis=1), axis=0)
                     .to(grad_alpha_ptr.dtype.element_ty))
            tl.store(count_ptr, 0)  # ready for the next launch on this stream

    @triton.jit(do_not_specialize=["M", "R", "stride_u", "stride_gc", "stride_b0", "stride_b1"])
    def _core_grads_kernel(u_ptr, gc_ptr, b_ptr, alpha_ptr, share_ptr, count_ptr, grad_b_ptr, grad_alpha_ptr,
                           M, R, stride_u, stride_gc, stride_b0, stride_b1,
                           RP: tl.constexpr, BM: tl.constexpr, PB: tl.constexpr):
        core_grads_program(tl.program_id(0), tl.num_programs(0), u_ptr, gc_ptr, b_ptr, alpha_ptr, share_ptr,
                           count_ptr, grad_b_ptr, grad_alpha_ptr, M, R, stride_u, stride_gc, stride_b0, stride_b1,
                           RP, BM, PB)


# Rows per block, the most shares (programs), warps: 8192 tokens give 32 programs of one block
# each; the interpreter gets small blocks and few shares, so that tests cover several of both.
_TILE = (256, 32, 4)
_INTERPRETER_TILE = (16, 4, 4)
_SUM_ELEMENTS_PER_STEP = 8192  # the last program adds this many float32 of the shares at a time
_constexprs: dict[tuple[int, int, int], dict] = {}  # (rp, bm, shares) → constexprs: one long-lived dict each
_counters: dict[tuple[int, int], torch.Tensor] = {}  # (device, stream) → the zeroed int32 counter
_shares: dict[tuple[int, int], torch.Tensor] = {}  # (device, stream) → float32 room for the shares


def _kept_buffers(device: int, shares: int, reuse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Room for ``shares`` float32 elements of shares, and the counter of finished programs: zero
    before a launch, and reset to zero by its last program. In eager mode both are kept per
    device (its index; -1 for the CPU) and stream, where launches run one after another;
    otherwise fresh: on the CPU, under CUDA graph capture (a memset in the graph zeroes the
    counter on every replay), and from compiled code, whose CUDA graph trees own the memory
    allocated while they warm up and refuse tensors that outlive their graphs."""
    if not reuse or device < 0 or torch.cuda.is_current_stream_capturing():
        where = "cpu" if device < 0 else device
        return torch.empty(shares, device=where, dtype=torch.float32), torch.zeros(1, device=where, dtype=torch.int32)
    key = (device, torch._C._cuda_getCurrentRawStream(device))
    counter, room = _counters.get(key), _shares.get(key)
    if counter is None:
        counter = _counters[key] = torch.zeros(1, device=device, dtype=torch.int32)
    if room is None or room.numel() < shares:
        room = _shares[key] = torch.empty(shares, device=device, dtype=torch.float32)
    return room, counter


def shares_per_step(rp: int, max_shares: int) -> int:
    """How many shares the last program adds at a time (the constexpr PB of :func:`core_grads_program`)."""
    return min(triton.next_power_of_2(max_shares), max(1, _SUM_ELEMENTS_PER_STEP // (rp * rp)))


def program_buffers(u: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, shares: int, rp: int,
                    compiled: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What :func:`core_grads_program` writes: the shares, the counter, ∂B and ∂α."""
    return (*_kept_buffers(u.get_device(), shares * rp * rp, not compiled), b.new_empty(b.shape),
            alpha.new_empty(alpha.shape))


def _triton_core_grads(u: torch.Tensor, gc: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor,
                       compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    m, r = u.shape
    bm, max_shares, warps = _INTERPRETER_TILE if u.device.type == "cpu" else _TILE
    rp = max(16, 1 << (r - 1).bit_length())  # the next power of two (triton's costs a JIT call)
    programs = min(max_shares, cdiv(m, bm))
    constexprs = _constexprs.get((rp, bm, max_shares))
    if constexprs is None:
        constexprs = _constexprs[(rp, bm, max_shares)] = {"RP": rp, "BM": bm, "PB": shares_per_step(rp, max_shares)}
    buffers = program_buffers(u, b, alpha, programs, rp, compiled)
    _run_kernel(_core_grads_kernel, programs, (u, gc, b, alpha, *buffers),
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
    return dispatch(u, gc, b, alpha, triton_allowed(compiling=True), True)  # runs from compiled code only


@_core_grads_op.register_fake
def _(u: torch.Tensor, gc: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return b.new_empty(b.shape), torch.empty_like(alpha)


def core_grads(u: torch.Tensor, gc: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, *,
               need_b: bool = True, need_alpha: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(∂L/∂B = α G, ∂L/∂α = ⟨B, G⟩) with G = uᵀ gc, for u and gc (M × r), b (r × r) and a
    one-element alpha; a gradient that is not needed comes back as None.

    The Triton kernel where the backend allows it and :func:`supported` says it runs, else the
    torch composition. Under ``torch.compile`` a custom operator, which keeps the kernel whole.
    No autograd: for use inside autograd Functions (adapters/fast.py).
    """
    if u.dim() != 2 or gc.shape != u.shape or b.shape != (u.shape[1], u.shape[1]) or alpha.numel() != 1:
        raise ValueError(f"shapes do not chain: u {tuple(u.shape)}, gc {tuple(gc.shape)}, b {tuple(b.shape)}, "
                         f"alpha {tuple(alpha.shape)}; need u and gc (M × r), b (r × r) and a one-element alpha")
    if not (need_b or need_alpha):
        return None, None
    if torch.compiler.is_compiling():
        grad_b, grad_alpha = _core_grads_op(u, gc, b, alpha)
    else:
        grad_b, grad_alpha = dispatch(u, gc, b, alpha, triton_allowed(compiling=False, device_type=u.device.type),
                                      False)
    return grad_b if need_b else None, grad_alpha if need_alpha else None
