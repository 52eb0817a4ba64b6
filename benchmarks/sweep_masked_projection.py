"""The backward's masked projection (g ∘ keep) Cᵀ / (1 − p̂) under tile configurations (GPU).

The fused layer's backward reads each output gradient g (tokens × out) once, in
``masked_projection_kernel``, to get gc under output dropout; the package launches it with one
configuration (kernel_mask.py's ``_TILE``). Here every configuration of CONFIGS (block of rows
BM, columns per step BN, pipeline stages, warps) runs on the benchmark model's two widths of g
(8192 tokens, bf16, r = 32, the bit mask of p = 1/2), timed as in bench_layer_kernels.py
(``time_us``: 20 calls in a CUDA graph, median of the replays), against cuBLAS's unmasked
``F.linear(g, C)`` and the package's own call; each output is checked against the package's. ms
per step sums each arm over the step's 112 layers (80 with g 2048 wide, 32 with 5632).

    PYTHONPATH=. python benchmarks/sweep_masked_projection.py --out masked_projection_sweep.json
"""

from __future__ import annotations

import itertools
import json

import torch
from torch.nn import functional as F

from bench_layer_kernels import LAYERS_PER_STEP, SHAPES, gpu_report, kernel_parser, time_us

from tlora_analysis.adapters.fused import backend, kernel_mask
from tlora_analysis.adapters.fused.kernel_mask import KernelDropout, masked_projection

if not torch.cuda.is_available():
    raise SystemExit("sweep_masked_projection.py times Triton kernels on a CUDA GPU; none is visible")

import triton  # noqa: E402  (after the check: a CPU-only install may lack it)

CONFIGS = list(itertools.product((32, 64, 128), (128, 256), (3, 4, 6), (4, 8)))  # (BM, BN, stages, warps)
REPEATS = 15


def widths() -> dict[int, int]:
    """g's widths (a layer's output width) and how many of the step's layers have each."""
    count: dict[int, int] = {}
    for label, (out_f, _) in SHAPES.items():
        count[out_f] = count.get(out_f, 0) + LAYERS_PER_STEP[label]
    return count


def launch(g: torch.Tensor, c: torch.Tensor, out: torch.Tensor, dropout: KernelDropout, config: tuple) -> None:
    """The package's kernel with one configuration, through Triton's own launch."""
    bm, bn, stages, warps = config
    (m, n), r = g.shape, c.shape[0]
    backend.launcher.kernels.masked_projection_kernel[(triton.cdiv(m, bm),)](
        g, c, out, m, n, r, g.stride(0), c.stride(0), out.stride(0), *dropout.args,
        RP=max(16, triton.next_power_of_2(r)), BM=bm, BN=bn, BITS=dropout.bits, num_stages=stages, num_warps=warps)


def sweep_width(n: int, tokens: int, r: int, p: float) -> dict[str, float | None]:
    """ms per call of every arm for g of width ``n``; a configuration that fails to compile or
    disagrees with the package's output is None (and reported)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    g = torch.randn(tokens, n, device="cuda", dtype=torch.bfloat16, generator=gen)
    c = torch.randn(r, n, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.05
    dropout = KernelDropout(12345, p)
    want = masked_projection(g, c, dropout)
    row: dict[str, float | None] = {
        "F.linear(g, C), no mask": time_us(lambda: F.linear(g, c), "cuda", REPEATS) / 1e3,
        "package": time_us(lambda: masked_projection(g, c, dropout), "cuda", REPEATS) / 1e3}
    out = torch.empty(tokens, r, device="cuda", dtype=torch.bfloat16)
    for config in CONFIGS:
        name = "BM {} BN {} stages {} warps {}".format(*config)
        try:
            launch(g, c, out, dropout, config)
            torch.cuda.synchronize()
        except Exception as error:  # noqa: BLE001 (out of shared memory or registers: report, go on)
            print(f"width {n}, {name}: {type(error).__name__}: {str(error)[:120]}")
            row[name] = None
            continue
        deviation = ((out.float() - want.float()).abs().max() / want.float().abs().max()).item()
        if deviation > 1e-2:  # the sums' order differs with BN, within bf16 rounding of the output
            print(f"width {n}, {name}: deviation {deviation:.2e} from the package's output")
            row[name] = None
            continue
        row[name] = time_us(lambda config=config: launch(g, c, out, dropout, config), "cuda", REPEATS) / 1e3
    return row


def main(argv: list[str] | None = None) -> None:
    parser = kernel_parser(__doc__)
    parser.add_argument("--p", type=float, default=0.5, help="dropout probability (default 0.5: the bit mask)")
    args = parser.parse_args(argv)
    triton.set_allocator(lambda size, align, stream: torch.empty(size, device="cuda", dtype=torch.int8))
    backend.launcher.ready("cuda")  # imports the kernels
    count = widths()
    report = gpu_report(args, p=args.p, package_tile=list(kernel_mask._TILE), ms_per_call={})
    for n in count:
        report["ms_per_call"][str(n)] = sweep_width(n, args.tokens, args.rank, args.p)
        args.out.write_text(json.dumps(report, indent=1))
    rows = report["ms_per_call"]
    arms = [a for a in rows[str(next(iter(count)))] if all(rows[str(n)].get(a) is not None for n in count)]
    summed = {a: sum(count[n] * rows[str(n)][a] for n in count) for a in arms}
    report["ms per step, summed over the layers"] = summed
    args.out.write_text(json.dumps(report, indent=1))
    print("| arm | " + " | ".join(f"g {n} wide, ms" for n in count) + " | ms per step | × the package |")
    print("|---" * (len(count) + 3) + "|")
    references = ["package", "F.linear(g, C), no mask"]
    for arm in [a for a in sorted(arms, key=summed.get) if a not in references][:12] + references:
        print(f"| {arm} | " + " | ".join(f"{rows[str(n)][arm]:.4f}" for n in count)
              + f" | {summed[arm]:.3f} | {summed[arm] / summed['package']:.3f} |")


if __name__ == "__main__":
    main()
