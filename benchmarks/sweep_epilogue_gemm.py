"""The Triton GEMM's design sweep: TMA GEMMs with and without a rank-r term, against cuBLAS (GPU).

For the six GEMMs of the benchmark model's layers (forward x W0ᵀ and backward g W0 for the
q/k/v/o, gate/up and down shapes; 8192 tokens, bf16, r = 32) it times cuBLAS's plain GEMM, the
fused layer's cuBLAS composition (u v, then the GEMM accumulated onto it with β = 1), and every
(kernel variant × tile) below, by CUDA-graph replay (``bench_layer_kernels.time_us``):

- rank-r term: none (how fast a plain Triton GEMM is), "pre" (before the K loop) or "post";
- ``SUBTILE``: store the output tile in two halves (frees shared memory for the rank-r tiles);
- ``FLATTEN``: software-pipeline the persistent loop across tiles; ``WS``: warp specialization.

The package's kernel (tlora_analysis/adapters/fused/kernels.py) is the H200's winner: post, subtile,
flatten, 128 × 256 × 64 tiles, 3 stages, 8 warps (on an H100, not flattening wins on three of
the six GEMMs: docs/benchmarks.md). Also the host time per call of a raw launch,
of the package's ``lowrank_matmul`` (backend "triton") and of the cuBLAS composition.

    PYTHONPATH=. python benchmarks/sweep_epilogue_gemm.py --out sweep.json
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time

import torch

from bench_layer_kernels import SHAPES, kernel_parser, time_us
from tlora_analysis.adapters import fused
from tlora_analysis.adapters.fused import lowrank_matmul

if not torch.cuda.is_available():
    raise SystemExit("sweep_epilogue_gemm.py times Triton kernels on a CUDA GPU; none is visible")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from tlora_analysis.adapters.fused.kernels import tile_coords  # noqa: E402


NUM_SMS = torch.cuda.get_device_properties(0).multi_processor_count
TILES = [(128, 256, 64, 3, 8), (128, 128, 64, 4, 4), (256, 128, 64, 3, 8)]  # BM, BN, BK, stages, warps
# name: (rank-r term: 0 none, 1 pre, 2 post; SUBTILE; FLATTEN; WS)
VARIANTS = {"plain flatten": (0, False, True, False), "plain flatten subtile": (0, True, True, False),
            "post flatten subtile": (2, True, True, False), "pre flatten subtile": (1, True, True, False),
            "pre flatten": (1, False, True, False), "post subtile": (2, True, False, False),
            "pre subtile": (1, True, False, False), "post subtile ws": (2, True, False, True),
            "plain subtile ws": (0, True, False, True), "pre subtile ws": (1, True, False, True)}


# The package's kernel plus the switches this sweep explores; kept apart on purpose, so that the
# production kernel carries none of them (the descriptor set-up is therefore the same code).
@triton.jit
def sweep_kernel(x_ptr, w_ptr, u_ptr, v_ptr, out_ptr, M, N, K, R,
         W_T: tl.constexpr, V_T: tl.constexpr, RP: tl.constexpr, LR: tl.constexpr, SUBTILE: tl.constexpr,
         WS: tl.constexpr, FLATTEN: tl.constexpr, NUM_SMS: tl.constexpr,
         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
    if W_T:
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BN, BK])
    else:
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[K, N], strides=[N, 1], block_shape=[BK, BN])
    u_desc = tl.make_tensor_descriptor(u_ptr, shape=[M, R], strides=[R, 1], block_shape=[BM, RP])
    if V_T:
        v_desc = tl.make_tensor_descriptor(v_ptr, shape=[N, R], strides=[R, 1], block_shape=[BN, RP])
    else:
        v_desc = tl.make_tensor_descriptor(v_ptr, shape=[R, N], strides=[N, 1], block_shape=[RP, BN])
    if SUBTILE:
        o_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN // 2])
    else:
        o_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN])
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    k_tiles = tl.cdiv(K, BK)
    for tile_id in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_SMS, flatten=FLATTEN, warp_specialize=WS):
        pid_m, pid_n = tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        om = pid_m * BM
        on = pid_n * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        if LR == 1:  # pre: the rank-r product first
            if V_T:
                acc = tl.dot(u_desc.load([om, 0]), v_desc.load([on, 0]).T, acc)
            else:
                acc = tl.dot(u_desc.load([om, 0]), v_desc.load([0, on]), acc)
        for ki in range(k_tiles):
            ok = ki * BK
            a = x_desc.load([om, ok])
            if W_T:
                acc = tl.dot(a, w_desc.load([on, ok]).T, acc)
            else:
                acc = tl.dot(a, w_desc.load([ok, on]), acc)
        if LR == 2:  # post
            if V_T:
                acc = tl.dot(u_desc.load([om, 0]), v_desc.load([on, 0]).T, acc)
            else:
                acc = tl.dot(u_desc.load([om, 0]), v_desc.load([0, on]), acc)
        if SUBTILE:
            acc = tl.reshape(acc, (BM, 2, BN // 2))
            acc = tl.permute(acc, (0, 2, 1))
            acc0, acc1 = tl.split(acc)
            o_desc.store([om, on], acc0.to(o_desc.dtype))
            o_desc.store([om, on + BN // 2], acc1.to(o_desc.dtype))
        else:
            o_desc.store([om, on], acc.to(o_desc.dtype))


def launch(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
           variant: tuple, tile: tuple) -> torch.Tensor:
    """out = x w (+ u v) with one kernel variant and tile; w and v row-major or transposed views."""
    lr, subtile, flatten, ws = variant
    bm, bn, bk, stages, warps = tile
    (m, k), n, r = x.shape, w.shape[1], u.shape[1]
    w_rm = w if w.stride(-1) == 1 else w.T
    v_rm = v if v.stride(-1) == 1 else v.T
    triton.set_allocator(lambda size, align, stream: torch.empty(size, device="cuda", dtype=torch.int8))
    grid = (min(NUM_SMS, triton.cdiv(m, bm) * triton.cdiv(n, bn)),)
    sweep_kernel[grid](x, w_rm, u, v_rm, out, m, n, k, r, W_T=w.stride(-1) != 1, V_T=v.stride(-1) != 1,
                       RP=max(16, r), LR=lr, SUBTILE=subtile, WS=ws, FLATTEN=flatten, NUM_SMS=NUM_SMS,
                       BM=bm, BN=bn, BK=bk, GROUP_M=8, num_stages=stages, num_warps=warps)
    return out


def sweep_shape(out_f: int, in_f: int, tokens: int, rank: int) -> dict[str, dict]:
    """µs per call of every arm, forward and backward GEMM of one layer shape."""
    g = torch.Generator(device="cuda").manual_seed(0)
    rnd = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=g)  # noqa: E731
    x, gout, w0, a, m, u = rnd(tokens, in_f), rnd(tokens, out_f), rnd(out_f, in_f) * 0.02, rnd(in_f, rank) * 0.1, \
        rnd(rank, out_f) * 0.1, rnd(tokens, rank)
    rows = {}
    for direction, (xx, ww, vv) in {"fwd": (x, w0.T, m), "bwd": (gout, w0, a.T)}.items():
        o = torch.empty(tokens, ww.shape[1], device="cuda", dtype=torch.bfloat16)
        ref = xx.float() @ ww.float() + u.float() @ vv.float()
        row = {"cublas floor": time_us(lambda: torch.mm(xx, ww), "cuda", 30),
               "cublas u v + beta=1": time_us(lambda: torch.mm(u, vv, out=o).addmm_(xx, ww), "cuda", 30)}
        for (name, variant), tile in itertools.product(VARIANTS.items(), TILES):
            try:
                launch(xx, ww, u, vv, o, variant, tile)
                if variant[0]:
                    err = ((o.float() - ref).norm() / ref.norm()).item()
                    assert err < 1e-2, f"relative error {err}"
                row[f"{name} {tile}"] = time_us(lambda: launch(xx, ww, u, vv, o, variant, tile), "cuda", 20)
            except Exception as e:  # shared memory exceeded, or a variant the compiler rejects
                row[f"{name} {tile}"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
        rows[direction] = row
    return rows


def host_us_per_call() -> dict[str, float]:
    """Host time of one call on a small problem (the GPU keeps up; the host is what is timed)."""
    rnd = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16)  # noqa: E731
    x, w, u, v, o = rnd(256, 256), rnd(256, 256), rnd(256, 32), rnd(32, 256), rnd(256, 256)
    fused.set_backend("triton")
    calls = {"raw launch": lambda: launch(x, w.T, u, v, o, (2, True, False, False), TILES[1]),
             "lowrank_matmul, backend triton": lambda: lowrank_matmul(x, w.T, u, v),
             "cublas mm + addmm_": lambda: torch.mm(u, v, out=o).addmm_(x, w.T)}
    out = {}
    for name, fn in calls.items():
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(500):
                fn()
            times.append((time.perf_counter() - t0) / 500 * 1e6)
            torch.cuda.synchronize()
        out[name] = statistics.median(times)
    fused.set_backend("auto")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = kernel_parser(__doc__)
    args = parser.parse_args(argv)
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    for label, (out_f, in_f) in SHAPES.items():
        for direction, row in sweep_shape(out_f, in_f, args.tokens, args.rank).items():
            report[f"{label} {direction}"] = row
            timed = {k: v for k, v in row.items() if isinstance(v, float)}
            best = {kind: min(((v, k) for k, v in timed.items() if k.startswith(kind)), default=None)
                    for kind in ("plain", "pre", "post")}
            print(label, direction, f"cuBLAS {row['cublas floor']:.1f}, composition {row['cublas u v + beta=1']:.1f}",
                  json.dumps(best), file=sys.stderr, flush=True)
            args.out.write_text(json.dumps(report, indent=1))
    report["host_us_per_call"] = host_us_per_call()
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["host_us_per_call"], indent=1))


if __name__ == "__main__":
    main()
