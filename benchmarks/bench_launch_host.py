"""Host cost of one ``lowrank_matmul`` call: the cached Triton launch, Triton's JIT launch, and cuBLAS.

In eager mode a training step of the benchmark model is close to host-bound (docs/benchmarks.md,
"Host time per layer"), so what a layer costs the host decides whether a faster kernel speeds up
the step.
For each layer shape of the LLaMA-shaped benchmark model (8192 tokens, bf16, r = 32) and each way
to run x W0ᵀ + α (u B) C, this times ``--calls`` calls issued back to back without synchronizing
(host µs per call; the GPU queue does not fill at these sizes) and until the GPU is done (wall
µs per call), median of ``--repeats`` rounds:

- ``triton``: the package's path (the compiled kernel cached and launched directly);
- ``triton-jit``: the same kernel launched through Triton's JIT on every call (argument binding,
  specialization and cache lookup);
- ``cublas``: the cuBLAS composition (α B C folded first, then two GEMMs).

    PYTHONPATH=. python benchmarks/bench_launch_host.py --out launch_host.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from bench_layer_kernels import SHAPES, kernel_parser

from tlora_analysis.adapters import fused
from tlora_analysis.adapters.fused import lowrank_matmul


class _NoCache(dict):
    """A compiled-kernel cache that never keeps anything: every call goes through Triton's JIT."""

    def __setitem__(self, key: object, value: object) -> None:
        pass


def per_call_us(fn, calls: int, repeats: int) -> tuple[float, float]:
    """(host µs per call, wall µs per call): medians over ``repeats`` rounds of ``calls`` calls."""
    host, wall = [], []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        host.append(1e6 * (t1 - t0) / calls)
        wall.append(1e6 * (t2 - t0) / calls)
    return statistics.median(host), statistics.median(wall)


def main(argv: list[str] | None = None) -> None:
    parser = kernel_parser(__doc__)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (the host cost of a GPU launch)")
    dtype, dev = torch.bfloat16, "cuda"
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": __import__("triton").__version__, "tokens": args.tokens, "rank": args.rank,
              "calls": args.calls, "repeats": args.repeats, "shapes": {}}
    cache = fused.backend.launcher.compiled
    for label, (out, inp) in SHAPES.items():
        x = torch.randn(args.tokens, inp, device=dev, dtype=dtype)
        w0 = torch.randn(out, inp, device=dev, dtype=dtype) / inp**0.5
        u = torch.randn(args.tokens, args.rank, device=dev, dtype=dtype)
        b = torch.randn(args.rank, args.rank, device=dev, dtype=dtype)
        c = torch.randn(args.rank, out, device=dev, dtype=dtype)
        alpha = torch.tensor(0.5, device=dev, dtype=dtype)
        call = lambda: lowrank_matmul(x, w0.T, u, c, core=b, scale=alpha)  # noqa: E731
        row = {}
        for name, backend, kernels in (("triton", "triton", cache), ("triton-jit", "triton", _NoCache()),
                                       ("cublas", "cublas", cache)):
            fused.set_backend(backend)
            fused.backend.launcher.compiled = kernels
            for _ in range(3):
                call()
            host, wall = per_call_us(call, args.calls, args.repeats)
            row[name] = {"host_us": host, "wall_us": wall}
        fused.backend.launcher.compiled, report["shapes"][label] = cache, row
        print(label, json.dumps(row), file=sys.stderr, flush=True)
    fused.set_backend("auto")
    args.out.write_text(json.dumps(report, indent=1))
    print("| shape | " + " | ".join(f"{k}: host / wall µs" for k in ("triton", "triton-jit", "cublas")) + " |")
    print("|---|---|---|---|")
    for label, row in report["shapes"].items():
        print(f"| {label} | " + " | ".join(f"{v['host_us']:.1f} / {v['wall_us']:.1f}" for v in row.values()) + " |")


if __name__ == "__main__":
    main()
