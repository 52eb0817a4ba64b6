"""out = X W (+ bias) + U V in one GEMM: a rank-r term added in the accumulator (Triton, Hopper+).

Why: a fused TLoRA layer made of cuBLAS calls (functions.py) accumulates the base product onto
the adapter's output u M (``addmm_`` with β = 1), so every adapted layer writes one extra
activation in the forward (u M, tokens × out) and one in the backward (∂u Aᵀ, tokens × in), and
reads each back in the β = 1 epilogue: 4.6 ms of a 110 ms step on the benchmark model
(docs/benchmarks.md, "Where the fused layer's GPU time goes"). Here each output tile gets its
low-rank term from one more (BM × r)·(r × BN) tensor-core product on the accumulator before the
only store: no extra pass over memory, and one rounding to the output dtype instead of two.

A persistent kernel with tensor-memory-accelerator (TMA) loads and one tile shape, chosen by
measurement (``_TILE``; device code in kernels.py). It runs on CUDA GPUs of compute capability
≥ 9 (Hopper), and under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors) for tests;
:func:`supported` says when it applies, the backend's ``set_backend`` when it is used (by
default wherever it applies on a GPU, eager mode included), launch.py how it is launched
cheaply, and :func:`lowrank_matmul` falls back to cuBLAS otherwise.
:func:`lowrank_matmul_with_core_grads` is the layer's ∂x product: the persistent grid leaves some
programs a tile short, and those compute ∂B and ∂α after their tiles (core_grads.py's algorithm)
instead of a launch of their own; with ``add_to`` it adds ∂x onto a sibling layer's in its epilogue
(shared_projection.py). :func:`dropout_lowrank_matmul` is the layer's forward under
output dropout: the rank-r term goes into the accumulator first, is dropped out there with the
hashed keep-mask of (seed, element) (kernel_mask.py), and the base product accumulates onto it.
"""

from __future__ import annotations

import torch

from . import core_grads as _core_grads
from .kernel_mask import KernelDropout, draw_seed, keep_below
from .launch import cdiv, kernel_dtype, next_power_of_2, tma_ok
from .state import backend

__all__ = ["dropout_lowrank_matmul", "lowrank_matmul", "lowrank_matmul_with_core_grads", "supported"]


def _applies(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
             core: torch.Tensor | None, scale: torch.Tensor | None, y: torch.Tensor | None, n: int, r: int) -> bool:
    """:func:`supported`'s conditions on operands whose shapes chain (:func:`_chain`), w and v as
    stored. Straight-line: this runs on every eager call."""
    dtype = x.dtype
    if not kernel_dtype(dtype, x.device.type) or not backend.launcher.ready(x.device.type):
        return False
    device = x.get_device()
    for t in (w, u, v) if core is None else (w, u, v, core):
        if t.dtype != dtype or t.get_device() != device:
            return False
    if scale is not None and (scale.get_device() != device or not scale.dtype.is_floating_point):
        return False
    if bias is not None and (bias.dtype != dtype or bias.get_device() != device or bias.dim() != 1
                             or bias.shape[0] != n or bias.stride(0) != 1):
        return False
    if y is not None and (y.dtype != dtype or y.get_device() != device or y.stride(1) != 1):
        return False
    return (0 < r <= 64 and n * x.element_size() % 16 == 0 and x.numel() > 0
            and tma_ok(x) and tma_ok(w) and tma_ok(u) and tma_ok(v))


def _chain(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, core: torch.Tensor | None,
           scale: torch.Tensor | None, y: torch.Tensor | None, w_t: bool, v_t: bool) -> tuple[int, int, int, int]:
    """(M, N, K, r) where x (M × K), op(w) (K × N), u (M × r), op(v) (r × N), core (r × r), a
    one-element scale and y (M × r) chain; else a ValueError that shows them."""
    if x.dim() == w.dim() == u.dim() == v.dim() == 2:
        m, k = x.shape
        kw, n = (w.shape[1], w.shape[0]) if w_t else w.shape
        mu, r = u.shape
        rv, nv = (v.shape[1], v.shape[0]) if v_t else v.shape
        if (kw == k and mu == m and rv == r and nv == n and (core is None or core.shape == (r, r))
                and (scale is None or scale.numel() == 1) and (y is None or y.shape == u.shape)):
            return m, n, k, r
    shapes = {"x": x, "w": w.T if w_t else w, "u": u, "v": v.T if v_t else v, "core": core, "y": y}
    shown = ", ".join(f"{name} {tuple(t.shape)}" for name, t in shapes.items() if t is not None)
    raise ValueError(f"shapes do not chain: {shown}; need x (M × K), w (K × N), u (M × r), v (r × N), core (r × r), "
                     f"y (M × r) and a one-element scale (w, v and core as the product uses them: transposed "
                     f"where transpose_w, transpose_v or transpose_core says so)")


def _stored(t: torch.Tensor, transposed: bool) -> tuple[torch.Tensor, bool]:
    """``t`` as row-major storage, and whether the product uses its transpose: a transposed view
    that was passed as is becomes its storage with the flag flipped (the kernel reads either)."""
    if t.stride(-1) == 1 or t.stride(0) != 1:
        return t, transposed
    return t.T, not transposed


def supported(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, *,
              core: torch.Tensor | None = None, scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
              transpose_w: bool = False, transpose_v: bool = False) -> bool:
    """Whether :func:`lowrank_matmul` runs the Triton kernel for these operands (else cuBLAS).

    Shapes that chain; x (M × K) and u (M × r) row-major; w and v row-major, or transposed views
    of row-major storage (or row-major with ``transpose_w`` / ``transpose_v``); core (r × r) any
    layout; all of one half-precision dtype (bfloat16 or float16: in float32 Triton's tensor
    cores would round inputs to TF32, cuBLAS does not; float16 only under Triton's interpreter),
    scale any floating dtype, bias (N) contiguous in x's dtype, all on one device; 1 ≤ rank ≤ 64
    (the largest tested; its tiles must fit in shared memory next to the main loop's); output
    rows (N) a multiple of 16 bytes.
    """
    (w, w_t), (v, v_t) = _stored(w, transpose_w), _stored(v, transpose_v)
    try:
        _, n, _, r = _chain(x, w, u, v, core, scale, None, w_t, v_t)
    except ValueError:
        return False
    return _applies(x, w, u, v, bias, core, scale, None, n, r)


# (BM, BN, BK, pipeline stages, warps): the fastest of 30 tiles and kernel variants measured on
# the H200 for the benchmark model's six GEMM shapes (docs/benchmarks.md, "The Triton GEMM's
# design"); the interpreter gets small tiles so that tests cover several tiles per program.
_TILE = (128, 256, 64, 3, 8)
_INTERPRETER_TILE = (32, 32, 16, 1, 4)
_INTERPRETER_MASKED_BN = 128  # the bit mask's group of columns (kernel_mask.py)
_GRAD_PROGRAMS = 32  # the most programs that share the core gradients' work (as in core_grads.py)


def _config(device: int, w_t: bool, v_t: bool, r: int, has_core: bool, has_scale: bool,
            has_bias: bool, core_grads: bool, dropout: bool, bits: bool,
            accumulate: bool) -> tuple[dict, int, int, int, int]:
    """(constexprs, BM, BN, stages, warps) for one operand layout on one device (its index, -1
    for the CPU), whether the rank-r term is dropped out and by the bit mask, whether the result
    is added onto the output's contents: built once (TritonLauncher.config)."""
    bm, bn, bk, stages, warps = _INTERPRETER_TILE if device < 0 else _TILE
    if device < 0 and dropout:
        bn = _INTERPRETER_MASKED_BN
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device >= 0 else 4
    rp = max(16, next_power_of_2(r))
    constexprs = {"W_T": w_t, "V_T": v_t, "RP": rp, "HAS_CORE": has_core,
                  "HAS_SCALE": has_scale, "HAS_BIAS": has_bias, "NUM_SMS": num_sms,
                  "BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8, "CORE_GRADS": core_grads,
                  "GRAD_PROGRAMS": _GRAD_PROGRAMS, "PB": _core_grads.shares_per_step(rp, _GRAD_PROGRAMS),
                  "DROPOUT": dropout, "BITS": bits, "ACCUMULATE": accumulate}
    return constexprs, bm, bn, stages, warps


def _triton_lowrank_matmul(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                           bias: torch.Tensor | None, core: torch.Tensor | None, scale: torch.Tensor | None,
                           y: torch.Tensor | None, w_t: bool, v_t: bool, core_t: bool, m: int, n: int, k: int, r: int,
                           compiled: bool, dropout: KernelDropout | None = None, add_to: torch.Tensor | None = None
                           ) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The kernel's output, w and v as stored; with ``y`` (core and scale then required) also
    scale · yᵀ u and ⟨op(core), uᵀ y⟩; with ``dropout`` the rank-r term dropped out; with
    ``add_to`` (M × N, contiguous, x's dtype) the result added onto it in place."""
    out = x.new_empty((m, n)) if add_to is None else add_to
    launcher = backend.launcher
    constexprs, bm, bn, stages, warps = launcher.config(
        ("lowrank_matmul", x.get_device(), w_t, v_t, r, core is not None, scale is not None, bias is not None,
         y is not None, dropout is not None, dropout is not None and dropout.bits, add_to is not None), _config)
    if core is None:
        core_strides = (0, 0)
    else:
        core_strides = core.stride()[::-1] if core_t else core.stride()
    grid = min(constexprs["NUM_SMS"], cdiv(m, bm) * cdiv(n, bn))
    if y is None:
        grads = (out,) * 5
    else:  # room for the most shares the kernel's core-gradient programs write (kept per stream in eager mode)
        grads = (y, *_core_grads.program_buffers(y, core, scale, _GRAD_PROGRAMS, constexprs["RP"], compiled))
    tensors = (x, w, u, v, out if core is None else core, out if scale is None else scale,
               out if bias is None else bias, out, *grads)
    ints = (m, n, k, r, x.stride(0), w.stride(0), u.stride(0), v.stride(0), *core_strides,
            0 if y is None else y.stride(0), *((0, 0, 0, 0) if dropout is None else dropout.args))
    launcher.run(launcher.kernels.lowrank_matmul_kernel, grid, tensors, ints, constexprs, stages, warps, compiled)
    return out if y is None else (out, grads[3], grads[4])


def _cublas_lowrank_matmul(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                           bias: torch.Tensor | None, core: torch.Tensor | None = None,
                           scale: torch.Tensor | None = None, add_to: torch.Tensor | None = None) -> torch.Tensor:
    """scale · core folded into v first (r × N, the cheap side), the rank-r product, then the large
    one accumulated onto it in cuBLAS's epilogue (β = 1). Then added onto ``add_to`` where given,
    as autograd adds gradients, so the sum has the bits autograd's would have."""
    if core is not None:
        v = (core if scale is None else scale * core) @ v
    elif scale is not None:
        v = scale * v
    out = (torch.mm(u, v) if bias is None else torch.addmm(bias, u, v)).addmm_(x, w)
    return out if add_to is None else add_to.add_(out)


def _lowrank(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
             core: torch.Tensor | None, scale: torch.Tensor | None, y: torch.Tensor | None, w_t: bool, v_t: bool,
             core_t: bool, allowed: bool, compiled: bool,
             add_to: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Both public functions' work: the kernel where ``allowed`` and it applies, else cuBLAS (and
    core_grads.py for the core gradients). w, v and core as the caller passed them, op() by flag;
    the product added onto ``add_to`` in place where given."""
    (w, w_t), (v, v_t) = _stored(w, w_t), _stored(v, v_t)
    m, n, k, r = _chain(x, w, u, v, core, scale, y, w_t, v_t)
    if add_to is not None:
        _check_add_to(add_to, x, m, n)
    if allowed and _applies(x, w, u, v, bias, core, scale, y, n, r) and (add_to is None or add_to.is_contiguous()):
        return _triton_lowrank_matmul(x, w, u, v, bias, core, scale, y, w_t, v_t, core_t, m, n, k, r, compiled,
                                      None, add_to)
    op_core = None if core is None else (core.T if core_t else core)
    out = _cublas_lowrank_matmul(x, w.T if w_t else w, u, v.T if v_t else v, bias, op_core, scale, add_to)
    if y is None:
        return out
    return (out, *_core_grads.dispatch(y, u, core if core_t else core.T, scale, allowed, compiled))


def _check_add_to(add_to: torch.Tensor, x: torch.Tensor, m: int, n: int) -> None:
    """A ValueError unless ``add_to`` is the M × N result's shape, dtype and device."""
    if add_to.shape != (m, n) or add_to.dtype != x.dtype or add_to.device != x.device:
        raise ValueError(f"add_to must be the result's shape ({m}, {n}), dtype {x.dtype} and device {x.device}, got "
                         f"{tuple(add_to.shape)}, {add_to.dtype} on {add_to.device}")


@torch.library.custom_op("tlora_analysis::lowrank_matmul", mutates_args=())
def _lowrank_matmul_op(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                       bias: torch.Tensor | None, core: torch.Tensor | None, scale: torch.Tensor | None,
                       transpose_w: bool, transpose_v: bool, transpose_core: bool) -> torch.Tensor:
    return _lowrank(x, w, u, v, bias, core, scale, None, transpose_w, transpose_v, transpose_core,
                    backend.triton_allowed(compiling=True), True)  # runs from compiled code only


@_lowrank_matmul_op.register_fake
def _(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
      core: torch.Tensor | None, scale: torch.Tensor | None, transpose_w: bool, transpose_v: bool,
      transpose_core: bool) -> torch.Tensor:
    return x.new_empty(x.shape[0], w.shape[0] if transpose_w else w.shape[1])


def lowrank_matmul(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                   bias: torch.Tensor | None = None, *, core: torch.Tensor | None = None,
                   scale: torch.Tensor | None = None, transpose_w: bool = False, transpose_v: bool = False,
                   transpose_core: bool = False, add_to: torch.Tensor | None = None) -> torch.Tensor:
    """x op(w) + scale · (u op(core)) op(v) (+ bias) for x (M × K), op(w) (K × N), u (M × r),
    op(v) (r × N), op(core) (r × r), scale (one element), bias (N): M × N. Without core or
    scale, x op(w) + u op(v) (+ bias). op(t) is tᵀ where ``transpose_t`` says so (as BLAS's
    transa), else t: the fused layer passes W0, A and B as stored, with no transposed views to
    build on every call.

    The Triton kernel where the backend (``set_backend``) allows it and :func:`supported`
    says it runs (float32 accumulation; scale · u core rounded once to x's dtype, then one
    rounding of the output), else cuBLAS (scale · core v, the rank-r product, then the large one
    accumulated onto it). Under ``torch.compile`` a custom operator, which keeps it whole; in
    eager mode a plain call (the operator's dispatch would cost the host more than the launch).
    ``add_to`` (M × N, x's dtype and device): the result is added onto it in place and it is
    returned; the kernel adds it in its epilogue (one rounding of the sum, no pass of its own)
    where it is contiguous, else the result is added as a tensor (autograd's bits). No autograd:
    for use inside autograd Functions (functions.py).
    """
    if torch.compiler.is_compiling():
        _chain(x, w, u, v, core, scale, None, transpose_w, transpose_v)  # a clear error while tracing
        out = _lowrank_matmul_op(x, w, u, v, bias, core, scale, transpose_w, transpose_v, transpose_core)
        return out if add_to is None else add_to.add_(out)
    return _lowrank(x, w, u, v, bias, core, scale, None, transpose_w, transpose_v, transpose_core,
                    backend.triton_allowed(compiling=False, device_type=x.device.type), False, add_to)


@torch.library.custom_op("tlora_analysis::lowrank_matmul_with_core_grads", mutates_args=())
def _with_core_grads_op(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, core: torch.Tensor,
                        scale: torch.Tensor, y: torch.Tensor, transpose_w: bool, transpose_v: bool,
                        transpose_core: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _lowrank(x, w, u, v, None, core, scale, y, transpose_w, transpose_v, transpose_core,
                    backend.triton_allowed(compiling=True), True)


@_with_core_grads_op.register_fake
def _(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, core: torch.Tensor, scale: torch.Tensor,
      y: torch.Tensor, transpose_w: bool, transpose_v: bool,
      transpose_core: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (x.new_empty(x.shape[0], w.shape[0] if transpose_w else w.shape[1]), core.new_empty(core.shape),
            torch.empty_like(scale))


def lowrank_matmul_with_core_grads(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, *,
                                   core: torch.Tensor, scale: torch.Tensor, y: torch.Tensor,
                                   transpose_w: bool = False, transpose_v: bool = False, transpose_core: bool = False,
                                   add_to: torch.Tensor | None = None
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x op(w) + scale · (u op(core)) op(v), scale · yᵀ u, ⟨op(core), uᵀ y⟩) for y (M × r)
    besides :func:`lowrank_matmul`'s operands; the second result has core's dtype, the third scale's.

    In the fused TLoRA layer's backward (x = g, w = W0, u = g Cᵀ, op(v) = Aᵀ, op(core) = Bᵀ,
    scale = α, y = the forward's x A) these are ∂L/∂x, ∂L/∂B and ∂L/∂α. Where the kernel runs,
    the last two come from its own launch: the programs that have one output tile fewer than the
    others compute them after their tiles (:func:`~.core_grads.core_grads`' algorithm: float32
    shares summed in a fixed order), instead of a launch of their own. Else :func:`lowrank_matmul`
    and :func:`~.core_grads.core_grads`. ``add_to``: the first result added onto it, as in
    :func:`lowrank_matmul` (the fused layer's ∂x added to its sibling layers').
    """
    if torch.compiler.is_compiling():
        _chain(x, w, u, v, core, scale, y, transpose_w, transpose_v)
        out, grad_core, grad_scale = _with_core_grads_op(x, w, u, v, core, scale, y, transpose_w, transpose_v,
                                                         transpose_core)
        return (out if add_to is None else add_to.add_(out)), grad_core, grad_scale
    return _lowrank(x, w, u, v, None, core, scale, y, transpose_w, transpose_v, transpose_core,
                    backend.triton_allowed(compiling=False, device_type=x.device.type), False, add_to)


def dropout_lowrank_matmul(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                           bias: torch.Tensor | None = None, *, p: float, core: torch.Tensor | None = None,
                           scale: torch.Tensor | None = None, seed: int | None = None, transpose_w: bool = False,
                           transpose_v: bool = False,
                           transpose_core: bool = False) -> tuple[torch.Tensor, KernelDropout] | None:
    """(x op(w) + dropout_p(scale · (u op(core)) op(v)) (+ bias), the dropout) in one launch of the
    kernel, with :func:`lowrank_matmul`'s operands; None where it does not run (nothing drawn then).

    The dropout is inverted (kept elements × 1 / (1 − p̂), p̂ the mask's drop probability, in
    float32) with kernel_mask.py's keep-mask of ``seed``, drawn from torch's default generator
    when None. It runs where :func:`supported` says the kernel runs and the backend allows it in
    eager mode, with p that the mask resolves (``keep_below(p)`` not None); not under
    ``torch.compile`` nor CUDA graph capture (the seed is a launch argument, not part of the
    graph's state). The rank-r term is rounded to x's dtype after scale · (u core)
    as in :func:`lowrank_matmul`, dropped out in float32 in the accumulator, and the base product
    accumulates onto it.
    """
    if (keep_below(p) is None or torch.compiler.is_compiling()
            or not backend.triton_allowed(compiling=False, device_type=x.device.type)
            or (x.is_cuda and torch.cuda.is_current_stream_capturing())):
        return None
    (w, w_t), (v, v_t) = _stored(w, transpose_w), _stored(v, transpose_v)
    m, n, k, r = _chain(x, w, u, v, core, scale, None, w_t, v_t)
    if not _applies(x, w, u, v, bias, core, scale, None, n, r):
        return None
    dropout = KernelDropout(draw_seed() if seed is None else seed, p)
    return (_triton_lowrank_matmul(x, w, u, v, bias, core, scale, None, w_t, v_t, transpose_core, m, n, k, r, False,
                                   dropout), dropout)
