"""Where and how the fused layer's Triton kernels run: the backend switch, and a cheap launch.

Why: in eager mode a training step of a 1B model with every linear layer adapted is close to
host-bound (docs/benchmarks.md, "Idea 10"), so what a kernel launch costs the host decides
whether a faster kernel speeds up the step. Triton's JIT binds and specializes the arguments and
looks up its cache on every call, and its launcher asks the driver about every pointer. Here each
compiled kernel is kept by what selects it and called through its launcher directly, with the
pointers as integers (docs/benchmarks.md, "Idea 11" and "Idea 12").

Used by ``lowrank_gemm`` (the fused layer's two large products) and ``core_grads`` (its ∂B and
∂α); a new kernel of the layer's launches through :func:`run` as well.
"""

from __future__ import annotations

import functools
import importlib.util
import operator
import os

import torch

if importlib.util.find_spec("triton") is not None:
    import triton

__all__ = ["BACKENDS", "HALF_DTYPES", "cdiv", "get_backend", "run", "set_backend", "triton_allowed", "triton_ready"]

BACKENDS = ("auto", "triton", "cublas")
HALF_DTYPES = (torch.bfloat16, torch.float16)  # what the kernels take (in float32 tensor cores would round to TF32)
_backend = "auto"
_INT32_MAX = 2**31 - 1
_compiled: dict[tuple, "_Launch"] = {}  # see run()
_data_ptr, _dtype = torch.Tensor.data_ptr, operator.attrgetter("dtype")  # run()'s per-tensor reads, without a generator
_scratch: dict[tuple[int, int], torch.Tensor] = {}  # (device, stream) → descriptor scratch


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ on the host (``triton.cdiv`` is a JIT function: 2 µs a call)."""
    return -(-a // b)


def set_backend(backend: str) -> None:
    """Where the fused layer's Triton kernels may run (process-wide).

    - ``"auto"`` (default): wherever they apply on a CUDA GPU, in eager mode and in
      ``torch.compile``d code; Triton's interpreter (CPU tensors) only inside compiled code. Until
      idea 12 this was compiled code only: in eager mode the kernel's Python launch made the step
      of a 1B model with every linear layer adapted host-bound; with the leaner launch it is
      3.8–4.5 ms per step faster than cuBLAS there (docs/benchmarks.md, "Idea 12").
    - ``"triton"``: wherever they apply, the interpreter in eager mode too (tests, debugging).
    - ``"cublas"``: never (A/B runs, debugging, bit-for-bit comparisons with older results).
    """
    global _backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _backend = backend


def get_backend() -> str:
    """The backend :func:`set_backend` chose."""
    return _backend


def triton_allowed(compiling: bool, device_type: str = "cuda") -> bool:
    """Whether the backend lets a Triton kernel run on tensors of ``device_type``, inside compiled
    code or in eager mode."""
    if compiling:
        return _backend != "cublas"
    return _backend == "triton" or (_backend == "auto" and device_type == "cuda")


@functools.cache
def triton_ready(device_type: str) -> bool:
    """Triton importable, and either interpreting (CPU tensors) or on a CUDA GPU with TMA."""
    if importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return device_type == "cpu"
    return device_type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


def _cuda_scratch(size: int, stream: int, reuse: bool = True, device: int | None = None) -> int | torch.Tensor:
    """Scratch for a kernel's device-side TMA descriptors: in eager mode one buffer per device and
    stream, reused (kernels on one stream run one after another), so a launch allocates nothing.
    A fresh one under CUDA graph capture (from the graph's memory pool) and where ``reuse`` is
    False: from compiled code, whose CUDA graph trees own the memory allocated while they warm up
    and refuse tensors that outlive their graphs. ``device``: the current device's index, where
    the caller knows it."""
    if not reuse or torch.cuda.is_current_stream_capturing():
        return torch.empty(size, device="cuda", dtype=torch.int8)
    key = (torch.cuda.current_device() if device is None else device, stream)
    buffer = _scratch.get(key)
    if buffer is None or buffer.numel() < size:
        buffer = _scratch[key] = torch.empty(size, device="cuda", dtype=torch.int8)
    return buffer.data_ptr()


def _cuda_allocator(size: int, alignment: int, stream: int) -> int | torch.Tensor:
    """Triton's allocator hook for its JIT launches in eager mode: the same scratch as cached launches."""
    return _cuda_scratch(size, stream)


def _fresh_cuda_allocator(size: int, alignment: int, stream: int) -> torch.Tensor:
    """Triton's allocator hook for its JIT launches from compiled code: a fresh scratch."""
    return _cuda_scratch(size, stream, reuse=False)


def _cpu_allocator(size: int, alignment: int, stream: object) -> torch.Tensor:
    """Scratch under Triton's interpreter (CPU tensors)."""
    return torch.empty(size, dtype=torch.int8)


def _hooked(hook: object) -> bool:
    """Whether a Triton launch hook (None, or a chain of callables) would call anything."""
    return hook is not None and bool(getattr(hook, "calls", True))


class _Launch:
    """A compiled kernel's launcher entry point and what it needs besides the arguments, read once.

    Calls Triton's compiled launcher directly, with the pointers as integers: the launcher then
    neither calls ``data_ptr()`` nor asks the driver about each pointer.
    """

    def __init__(self, kernel: object) -> None:
        launcher = kernel.run  # Triton's CudaLauncher, built on first use
        self.launch = launcher.launch
        self.function, self.metadata = kernel.function, kernel.packed_metadata
        self.cooperative, self.pdl = launcher.launch_cooperative_grid, launcher.launch_pdl
        self.scratch_per_program = launcher.global_scratch_size * launcher.num_ctas
        if launcher.profile_scratch_size or launcher.global_scratch_align > 512:  # torch's blocks: 512-byte aligned
            raise ValueError("a profiling build, or a scratch alignment torch does not give: use Triton's launch")

    @classmethod
    def of(cls, kernel: object) -> "_Launch | None":
        """The ready launch, or None where this Triton's internals differ from what it expects."""
        try:
            return cls(kernel)
        except (AttributeError, ValueError):
            return None

    def __call__(self, grid: int, device: int, stream: int, args: tuple, reuse_scratch: bool) -> None:
        scratch = _cuda_scratch(grid * self.scratch_per_program, stream, reuse_scratch, device) \
            if self.scratch_per_program else None
        self.launch(grid, 1, 1, stream, self.function, self.cooperative, self.pdl, scratch, None,
                    self.metadata, None, None, None, *args)


def run(kernel: object, grid: int, tensors: tuple[torch.Tensor, ...], ints: tuple[int, ...], constexprs: dict,
        stages: int, warps: int, compiled: bool = False) -> None:
    """``kernel[(grid,)](*tensors, *ints, **constexprs)``: the cached launch where one exists, else
    Triton's JIT (first call of a layout, the interpreter, launch hooks set, 64-bit integers),
    whose compiled kernel is then cached.

    ``constexprs`` must be one long-lived dict per layout (it is keyed by identity). The cache key
    adds the kernel, the device, the tensors' dtypes and their 16-byte alignment: all that Triton
    specializes on besides the constexprs, provided the kernel lists its integer parameters in
    ``do_not_specialize`` (else Triton would also specialize on integers being 1 or multiples of
    16, which the key does not see: such a kernel is never cached, only JIT-launched).
    ``compiled``: called from ``torch.compile``d code (a custom operator), where every launch
    gets a fresh descriptor scratch (see ``_cuda_scratch``).
    """
    device = tensors[0].get_device()  # -1 on the CPU (the interpreter), where nothing is cached
    pointers = tuple(map(_data_ptr, tensors))
    key = (id(kernel), device, id(constexprs), tuple(map(_dtype, tensors)), tuple([p & 15 == 0 for p in pointers]))
    ready = _compiled.get(key)
    hooks = triton.knobs.runtime
    fits_int32 = max(ints) <= _INT32_MAX
    if (ready is not None and fits_int32 and device == torch.cuda.current_device()
            and not (_hooked(hooks.launch_enter_hook) or _hooked(hooks.launch_exit_hook))):
        ready(grid, device, torch._C._cuda_getCurrentRawStream(device), (*pointers, *ints, *constexprs.values()),
              not compiled)
        return
    # Triton keeps the allocator in a context variable, and the backward runs in autograd's own thread
    triton.set_allocator(_cpu_allocator if device < 0 else _fresh_cuda_allocator if compiled else _cuda_allocator)
    compiled = kernel[(grid,)](*tensors, *ints, **constexprs, num_stages=stages, num_warps=warps)
    if device >= 0 and fits_int32 and _ints_unspecialized(kernel, len(tensors), len(ints)) \
            and (ready := _Launch.of(compiled)) is not None:
        _compiled[key] = ready


@functools.cache
def _ints_unspecialized(kernel: object, first: int, count: int) -> bool:
    """Whether the kernel's integer parameters (``count`` of them after ``first`` pointers) are all
    in its ``do_not_specialize``, so that one compiled kernel serves any of their values."""
    return all(p.do_not_specialize for p in kernel.params[first:first + count])
