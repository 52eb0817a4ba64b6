"""The backward's g Cᵀ folded into the ∂x GEMM: one pass over g instead of two (GPU).

The fused layer's backward reads the output gradient g twice: once for gc = g Cᵀ (a cuBLAS
GEMM, r columns wide, bound by memory), once as the ∂x GEMM's left operand, g W0 + α (gc Bᵀ) Aᵀ.
This sweep times, for the benchmark model's three layer shapes (8192 tokens, bf16, r = 32), by
``triton.testing.do_bench`` (median ms per call, L2 flushed between calls):

- ``g W0``: cuBLAS's ∂x GEMM alone (the floor's);
- ``package``: ``F.linear(g, C)`` then the package's ∂x GEMM (``lowrank_matmul``) on it;
- ``package GEMM, gc given``: the package's ∂x GEMM alone;
- ``folded``: one persistent kernel in which each block of rows' gc is computed once, stored,
  and announced by a flag; the tiles of that block that did not compute it wait for the flag
  after their own K loop, then add α (gc Bᵀ) Aᵀ. Who computes gc (``ORDERS``): the block's
  first-column tile, beside g W0 in the same K loop (one load of each g tile for both), with
  the tiles in the grouped order or with every block's first tile ahead of all others; or a
  thin tile of its own (g Cᵀ only), all of them ahead of the output tiles. A tile waits only on
  tiles ahead of it, and one program per multiprocessor (all resident at once) runs them in
  order, so no tile waits on one that cannot start.

Each folded output is checked against the package's (and its gc against ``F.linear(g, C)``).

    PYTHONPATH=. python benchmarks/sweep_folded_projection.py --out folded_projection_sweep.json
"""

from __future__ import annotations

import itertools
import json

import torch
from torch.nn import functional as F

from bench_layer_kernels import SHAPES, gpu_report, kernel_parser, print_ms_table

from tlora_analysis.adapters.fused.lowrank_gemm import lowrank_matmul

if not torch.cuda.is_available():
    raise SystemExit("sweep_folded_projection.py times Triton kernels on a CUDA GPU; none is visible")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from tlora_analysis.adapters.fused.kernels import load_core, scaled_rows, tile_coords  # noqa: E402

NUM_SMS = torch.cuda.get_device_properties(0).multi_processor_count
ORDERS = {0: "gc by the first column's tiles", 1: "gc by the first column's tiles, run first",
          2: "gc tiles first"}
TILES = [(128, 256, 64, 3, 8)]  # BM, BN, BK, stages, warps (4 stages do not fit: 248 KB of shared memory)


@triton.jit(do_not_specialize=["M", "N", "K", "R", "epoch"])
def folded_kernel(g_ptr, w_ptr, c_ptr, a_ptr, core_ptr, scale_ptr, gc_ptr, flag_ptr, out_ptr, M, N, K, R, epoch,
                  RP: tl.constexpr, NUM_SMS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  GROUP_M: tl.constexpr, ORDER: tl.constexpr):
    """out = g W0 + scale · (gc core) Aᵀ with gc = g Cᵀ computed once per block of rows (``ORDERS``:
    by its first-column tile, in the grouped order (0) or ahead of all other tiles (1), or by a
    thin tile of its own ahead of all output tiles (2)); g (M × K), W0 (K × N), C (R × K), A
    (N × R), core (R × R, applied as stored), gc (M × RP) written here, flags one int32 per block
    of rows (set to ``epoch`` when its gc is stored)."""
    g_desc = tl.make_tensor_descriptor(g_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[K, N], strides=[N, 1], block_shape=[BK, BN])
    c_desc = tl.make_tensor_descriptor(c_ptr, shape=[R, K], strides=[K, 1], block_shape=[RP, BK])
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[N, R], strides=[R, 1], block_shape=[BN, RP])
    out_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN // 2])
    offs_r = tl.arange(0, RP)
    core = load_core(core_ptr, R, 1, R, RP)
    scale = tl.load(scale_ptr).to(tl.float32)
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    k_tiles = tl.cdiv(K, BK)
    gc_tiles = num_pid_m if ORDER == 2 else 0
    for tile_id in tl.range(tl.program_id(0), gc_tiles + num_pid_m * num_pid_n, NUM_SMS):
        if ORDER == 2 and tile_id < gc_tiles:  # a gc tile: gc = g Cᵀ of one block of rows, nothing else
            rows = tile_id * BM + tl.arange(0, BM)
            gacc = tl.zeros((BM, RP), dtype=tl.float32)
            for ki in range(k_tiles):
                gacc = tl.dot(g_desc.load([tile_id * BM, ki * BK]), c_desc.load([0, ki * BK]).T, gacc)
            tl.store(gc_ptr + rows[:, None] * RP + offs_r[None, :], gacc.to(gc_ptr.dtype.element_ty),
                     mask=(rows < M)[:, None])
            tl.debug_barrier()
            tl.atomic_xchg(flag_ptr + tile_id, epoch, sem="release")
        else:
            if ORDER == 1:  # every block of rows' first tile before any other tile
                if tile_id < num_pid_m:
                    pid_m, pid_n = tile_id, tile_id * 0
                else:
                    pid_m, pid_n = tile_coords(tile_id - num_pid_m, num_pid_m, num_pid_n - 1, GROUP_M)
                    pid_n += 1
            else:
                pid_m, pid_n = tile_coords(tile_id - gc_tiles, num_pid_m, num_pid_n, GROUP_M)
            om = pid_m * BM
            on = pid_n * BN
            rows = om + tl.arange(0, BM)
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            if ORDER != 2 and pid_n == 0:  # this block of rows' gc, from the same g tiles as its base product
                gacc = tl.zeros((BM, RP), dtype=tl.float32)
                for ki in range(k_tiles):
                    a = g_desc.load([om, ki * BK])
                    acc = tl.dot(a, w_desc.load([ki * BK, on]), acc)
                    gacc = tl.dot(a, c_desc.load([0, ki * BK]).T, gacc)
                gc = gacc.to(gc_ptr.dtype.element_ty)
                tl.store(gc_ptr + rows[:, None] * RP + offs_r[None, :], gc, mask=(rows < M)[:, None])
                tl.debug_barrier()
                tl.atomic_xchg(flag_ptr + pid_m, epoch, sem="release")
            else:
                for ki in range(k_tiles):
                    acc = tl.dot(g_desc.load([om, ki * BK]), w_desc.load([ki * BK, on]), acc)
                while tl.atomic_add(flag_ptr + pid_m, 0, sem="acquire") != epoch:
                    pass
                gc = tl.load(gc_ptr + rows[:, None] * RP + offs_r[None, :], mask=(rows < M)[:, None], other=0.0,
                             cache_modifier=".cg")
            ut = scaled_rows(gc, core, scale, True, True)
            acc = tl.dot(ut, a_desc.load([on, 0]).T, acc)
            left, right = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
            out_desc.store([om, on], left.to(out_desc.dtype))
            out_desc.store([om, on + BN // 2], right.to(out_desc.dtype))


class Folded:
    """Launches of the folded kernel for one shape: its gc and flag buffers and the epoch."""

    def __init__(self, m: int, r: int, bm: int) -> None:
        self.gc = torch.empty(m, max(16, r), device="cuda", dtype=torch.bfloat16)
        self.flags = torch.zeros(triton.cdiv(m, bm), device="cuda", dtype=torch.int32)
        self.epoch = 0

    def __call__(self, g, w0, c, a, core, scale, out, tile, order: int) -> torch.Tensor:
        bm, bn, bk, stages, warps = tile
        (m, k), n, r = g.shape, w0.shape[1], c.shape[0]
        self.epoch = self.epoch % (2**31 - 1) + 1
        triton.set_allocator(lambda size, align, stream: torch.empty(size, device="cuda", dtype=torch.int8))
        grid = (min(NUM_SMS, triton.cdiv(m, bm) * (triton.cdiv(n, bn) + (order == 2))),)
        folded_kernel[grid](g, w0, c, a, core, scale, self.gc, self.flags, out, m, n, k, r, self.epoch,
                            RP=max(16, r), NUM_SMS=NUM_SMS, BM=bm, BN=bn, BK=bk, GROUP_M=8,
                            ORDER=order, num_stages=stages, num_warps=warps)
        return out


def sweep_shape(out_f: int, in_f: int, tokens: int, rank: int) -> dict[str, float | None]:
    """ms per call of every arm for one layer shape's ∂x, and the folded kernel's deviations."""
    bench = lambda fn: triton.testing.do_bench(fn, warmup=10, rep=50)  # noqa: E731  (median ms)
    gen = torch.Generator(device="cuda").manual_seed(0)
    rnd = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=gen)  # noqa: E731
    g, w0, c, a = rnd(tokens, out_f), rnd(out_f, in_f) / out_f**0.5, rnd(rank, out_f) / out_f**0.5, rnd(in_f, rank)
    bt = rnd(rank, rank).T.contiguous()  # Bᵀ, the ∂x GEMM's core as stored for the folded kernel
    alpha = torch.full((), 0.5, device="cuda")
    package = lambda: lowrank_matmul(g, w0, F.linear(g, c), a, core=bt, scale=alpha, transpose_v=True)  # noqa: E731
    gc = F.linear(g, c)
    ref, gc_ref = package().float(), gc.float()
    row: dict[str, float | None] = {
        "g W0": bench(lambda: torch.mm(g, w0)),
        "package": bench(package),
        "package GEMM, gc given": bench(lambda: lowrank_matmul(g, w0, gc, a, core=bt, scale=alpha, transpose_v=True)),
        "F.linear(g, C)": bench(lambda: F.linear(g, c))}
    out = torch.empty(tokens, in_f, device="cuda", dtype=torch.bfloat16)
    for tile, order in itertools.product(TILES, ORDERS):
        label = f"folded, {ORDERS[order]} {'×'.join(map(str, tile[:3]))} s{tile[3]} w{tile[4]}"
        folded = Folded(tokens, rank, tile[0])
        try:
            got = folded(g, w0, c, a, bt, alpha, out, tile, order).float()
            row[label + ": deviation"] = ((got - ref).abs().max() / ref.abs().max()).item()
            row[label + ": gc deviation"] = ((folded.gc[:, :rank].float() - gc_ref).abs().max()
                                             / gc_ref.abs().max()).item()
            row[label] = bench(lambda: folded(g, w0, c, a, bt, alpha, out, tile, order))
        except triton.runtime.errors.OutOfResources:  # a tile that does not fit in shared memory
            row[label] = None
        print(f"{out_f}x{in_f} {label}: {row[label]}", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = kernel_parser(__doc__)
    args = parser.parse_args(argv)
    report = gpu_report(args, ms_per_call={})
    for label, (out_f, in_f) in SHAPES.items():
        report["ms_per_call"][label] = sweep_shape(out_f, in_f, args.tokens, args.rank)
        args.out.write_text(json.dumps(report, indent=1))
    rows = report["ms_per_call"]
    print_ms_table(rows, "package", "arm (ms, × the package: F.linear(g, C), then its ∂x GEMM)")
    for s, row in rows.items():
        print(s, {k: f"{v:.2e}" for k, v in row.items() if "deviation" in k})


if __name__ == "__main__":
    main()
