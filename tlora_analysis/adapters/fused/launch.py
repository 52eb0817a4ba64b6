"""How the fused layer's Triton kernels are launched cheaply, and what the launches keep.

Why: in eager mode a training step of a 1B model with every linear layer adapted is close to
host-bound (docs/benchmarks.md, "Host time per layer"), so what a kernel launch costs the host
decides whether a faster kernel speeds up the step. Triton's JIT binds and specializes the
arguments and looks up its cache on every call, and its launcher asks the driver about every
pointer. Here each compiled kernel is kept by what selects it and called through its launcher
directly, with the pointers as integers.

:class:`TritonLauncher` holds all of it, as part of the fused path's backend (state.py):
whether Triton runs on a device type, the kernels (kernels.py, imported with Triton on first
use), the compiled launches, buffers kept per device and stream, and the long-lived constexpr
dicts of each layout. Triton's allocator is set only around its own JIT launches, in a copy of
the caller's context, so other Triton users in the process keep theirs.
"""

from __future__ import annotations

import contextvars
import importlib
import importlib.util
import operator
import os
from types import ModuleType
from typing import Any, Callable

import torch

__all__ = ["TritonLauncher", "cdiv", "kernel_dtype", "next_power_of_2", "tma_ok"]

_INT32_MAX = 2**31 - 1
_data_ptr, _dtype = torch.Tensor.data_ptr, operator.attrgetter("dtype")  # run()'s per-tensor reads, without a generator


def kernel_dtype(dtype: torch.dtype, device_type: str) -> bool:
    """Whether the kernels take tensors of ``dtype`` on ``device_type``: a half-precision dtype (in
    float32 Triton's tensor cores would round to TF32), and float16 only under Triton's
    interpreter (CPU tensors), whose ``tl.dot`` multiplies bfloat16 bit patterns as integers."""
    return dtype is torch.float16 or dtype is torch.bfloat16 and device_type != "cpu"


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ on the host (``triton.cdiv`` is a JIT function: 2 µs a call)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ≥ n ≥ 1 (``triton.next_power_of_2`` is a JIT function)."""
    return 1 << (n - 1).bit_length()


def tma_ok(t: torch.Tensor) -> bool:
    """TMA's rules for a row-major 2-D operand: unit column stride, rows that do not overlap, the
    row stride and the base address 16-byte aligned."""
    s0, s1 = t.stride()
    return s1 == 1 and s0 >= t.shape[1] and s0 * t.element_size() % 16 == 0 and t.data_ptr() % 16 == 0


def _triton_runs_on(device_type: str) -> bool:
    """Triton importable, and either interpreting (CPU tensors) or on a CUDA GPU with TMA."""
    if importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return device_type == "cpu"
    return device_type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


def _cpu_allocator(size: int, alignment: int, stream: object) -> torch.Tensor:
    """Scratch under Triton's interpreter (CPU tensors)."""
    return torch.empty(size, dtype=torch.int8)


def _hooked(hook: object) -> bool:
    """Whether a Triton launch hook (None, or a chain of callables) would call anything."""
    return hook is not None and bool(getattr(hook, "calls", True))


class TritonLauncher:
    """The fused layer's Triton kernels and what their launches keep between calls.

    - ``kernels``: the kernels module (kernels.py), imported with Triton the first time
      :meth:`ready` says yes; None before.
    - ``compiled``: compiled launches by what selects them (see :meth:`run`).
    - ``buffers``: buffers kept per (kind, device, stream) in eager mode (:meth:`kept`): the
      kernels' descriptor scratch, the core gradients' counter and shares.
    - ``configs``: each layout's constexprs and launch shape, built once (:meth:`config`); the
      constexpr dicts must live as long as the launches keyed by their identity.
    """

    def __init__(self) -> None:
        self.kernels: ModuleType | None = None
        self.compiled: dict[tuple, _Launch] = {}
        self.buffers: dict[tuple[str, int, int], torch.Tensor] = {}
        self.configs: dict[tuple, Any] = {}
        self._triton: ModuleType | None = None
        self._ready: dict[str, bool] = {}
        self._unspecialized: dict[tuple, bool] = {}

    def ready(self, device_type: str) -> bool:
        """Whether the kernels run on tensors of ``device_type`` (Triton installed; the
        interpreter for the CPU, a Hopper or newer GPU for CUDA); loads them the first time."""
        ready = self._ready.get(device_type)
        if ready is None:
            ready = self._ready[device_type] = _triton_runs_on(device_type)
            if ready and self.kernels is None:
                self._triton = importlib.import_module("triton")
                self.kernels = importlib.import_module(".kernels", __package__)
        return ready

    def config(self, key: tuple, build: Callable[..., Any]) -> Any:
        """``build(*key[1:])``, once per key (``key[0]`` names the kernel)."""
        config = self.configs.get(key)
        if config is None:
            config = self.configs[key] = build(*key[1:])
        return config

    def kept(self, kind: str, device: int, stream: int, size: int, dtype: torch.dtype,
             zeroed: bool = False) -> torch.Tensor:
        """A buffer of at least ``size`` elements kept for ``kind`` on one device (its index) and
        stream, where launches run one after another; grown when too small, zeros when made if
        ``zeroed``."""
        key = (kind, device, stream)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < size:
            make = torch.zeros if zeroed else torch.empty
            buffer = self.buffers[key] = make(size, device=device, dtype=dtype)
        return buffer

    def scratch(self, size: int, stream: int, reuse: bool = True, device: int | None = None) -> int | torch.Tensor:
        """Scratch for a kernel's device-side TMA descriptors: in eager mode one buffer per device
        and stream, reused (kernels on one stream run one after another), so a launch allocates
        nothing. A fresh one under CUDA graph capture (from the graph's memory pool) and where
        ``reuse`` is False: from compiled code, whose CUDA graph trees own the memory allocated
        while they warm up and refuse tensors that outlive their graphs. ``device``: the current
        device's index, where the caller knows it."""
        if not reuse or torch.cuda.is_current_stream_capturing():
            return torch.empty(size, device="cuda", dtype=torch.int8)
        device = torch.cuda.current_device() if device is None else device
        return self.kept("scratch", device, stream, size, torch.int8).data_ptr()

    def _scratch_allocator(self, size: int, alignment: int, stream: int) -> int | torch.Tensor:
        """Triton's allocator for its JIT launches in eager mode: the same scratch as cached launches."""
        return self.scratch(size, stream)

    def _fresh_scratch_allocator(self, size: int, alignment: int, stream: int) -> torch.Tensor:
        """Triton's allocator for its JIT launches from compiled code: a fresh scratch."""
        return self.scratch(size, stream, reuse=False)

    def run(self, kernel: Any, grid: int, tensors: tuple[torch.Tensor, ...], ints: tuple[int, ...],
            constexprs: dict, stages: int, warps: int, compiled: bool = False) -> None:
        """``kernel[(grid,)](*tensors, *ints, **constexprs)``: the cached launch where one exists,
        else Triton's JIT (first call of a layout, the interpreter, launch hooks set, 64-bit
        integers), whose compiled kernel is then cached.

        ``constexprs`` must be one long-lived dict per layout (it is keyed by identity: see
        :meth:`config`). The cache key adds the kernel, the device, the tensors' dtypes and their
        16-byte alignment: all that Triton specializes on besides the constexprs, provided the
        kernel lists its integer parameters in ``do_not_specialize`` (else Triton would also
        specialize on integers being 1 or multiples of 16, which the key does not see: such a
        kernel is never cached, only JIT-launched). ``compiled``: called from
        ``torch.compile``d code (a custom operator), where every launch gets a fresh descriptor
        scratch (see :meth:`scratch`).
        """
        device = tensors[0].get_device()  # -1 on the CPU (the interpreter), where nothing is cached
        pointers = tuple(map(_data_ptr, tensors))
        key = (id(kernel), device, id(constexprs), tuple(map(_dtype, tensors)), tuple([p & 15 == 0 for p in pointers]))
        ready = self.compiled.get(key)
        hooks = self._triton.knobs.runtime
        fits_int32 = max(ints) <= _INT32_MAX
        if (ready is not None and fits_int32 and device == torch.cuda.current_device()
                and not (_hooked(hooks.launch_enter_hook) or _hooked(hooks.launch_exit_hook))):
            ready(grid, device, torch._C._cuda_getCurrentRawStream(device), (*pointers, *ints, *constexprs.values()),
                  not compiled)
            return
        allocator = (_cpu_allocator if device < 0 else self._fresh_scratch_allocator if compiled
                     else self._scratch_allocator)
        launched = contextvars.copy_context().run(self._jit_launch, kernel, grid, tensors, ints, constexprs, stages,
                                                  warps, allocator)
        if device >= 0 and fits_int32 and self.ints_unspecialized(kernel, len(tensors), len(ints)) \
                and (ready := _Launch.of(launched, self.scratch)) is not None:
            self.compiled[key] = ready

    def _jit_launch(self, kernel: Any, grid: int, tensors: tuple[torch.Tensor, ...], ints: tuple[int, ...],
                    constexprs: dict, stages: int, warps: int, allocator: Callable[..., Any]) -> Any:
        """Triton's own launch with ``allocator`` set: called in a copy of the caller's context, so
        the allocator (a context variable: the backward runs in autograd's own thread) is set
        for this launch only and other Triton users keep theirs."""
        self._triton.set_allocator(allocator)
        return kernel[(grid,)](*tensors, *ints, **constexprs, num_stages=stages, num_warps=warps)

    def ints_unspecialized(self, kernel: Any, first: int, count: int) -> bool:
        """Whether the kernel's integer parameters (``count`` of them after ``first`` pointers) are
        all in its ``do_not_specialize``, so that one compiled kernel serves any of their values."""
        key = (kernel, first, count)
        known = self._unspecialized.get(key)
        if known is None:
            known = self._unspecialized[key] = all(p.do_not_specialize for p in kernel.params[first:first + count])
        return known


class _Launch:
    """A compiled kernel's launcher entry point and what it needs besides the arguments, read once.

    Calls Triton's compiled launcher directly, with the pointers as integers: the launcher then
    neither calls ``data_ptr()`` nor asks the driver about each pointer.
    """

    def __init__(self, kernel: Any, scratch: Callable[..., int | torch.Tensor]) -> None:
        launcher = kernel.run  # Triton's CudaLauncher, built on first use
        self.launch = launcher.launch
        self.scratch = scratch
        self.function, self.metadata = kernel.function, kernel.packed_metadata
        self.cooperative, self.pdl = launcher.launch_cooperative_grid, launcher.launch_pdl
        self.scratch_per_program = launcher.global_scratch_size * launcher.num_ctas
        if launcher.profile_scratch_size or launcher.global_scratch_align > 512:  # torch's blocks: 512-byte aligned
            raise ValueError("a profiling build, or a scratch alignment torch does not give: use Triton's launch")

    @classmethod
    def of(cls, kernel: Any, scratch: Callable[..., int | torch.Tensor]) -> "_Launch | None":
        """The ready launch, or None where this Triton's internals differ from what it expects."""
        try:
            return cls(kernel, scratch)
        except (AttributeError, ValueError):
            return None

    def __call__(self, grid: int, device: int, stream: int, args: tuple, reuse_scratch: bool) -> None:
        scratch = self.scratch(grid * self.scratch_per_program, stream, reuse_scratch, device) \
            if self.scratch_per_program else None
        self.launch(grid, 1, 1, stream, self.function, self.cooperative, self.pdl, scratch, None,
                    self.metadata, None, None, None, *args)
