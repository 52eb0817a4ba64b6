"""The masked GEMM's design sweep: where the output dropout's hashed mask sits in the fused GEMM (GPU).

For the forward GEMMs of the benchmark model's three layer shapes (8192 tokens, bf16, r = 32) it
times, in median ms per call (``triton.testing.do_bench``), ``F.linear(x, W0)``, the package's
GEMM without and with the mask (``lowrank_matmul``, ``dropout_lowrank_matmul``, p = 0.5), and
every (variant × tile) below of a sweep kernel that computes x W0ᵀ + keep ∘ (α (u B) C) / (1 − p):

- ``before``: the rank-r term computed before the K loop and dropped out in the accumulator,
  the base product accumulated onto it (the package's kernel), with the persistent loop
  flattened across tiles (``flatten``) or not;
- ``halves``: the rank-r term after the K loop, half an output tile at a time, each half
  stored before the other's term is computed (no second full-tile accumulator);
- the mask: the pair mask (``keep_tile``, one 32-bit hash per two elements, 16-bit thresholds:
  the package's for p ≠ 1/2), unless named; ``quad``, one hash per four elements of one thread's
  accumulator (:func:`quad_keep`, 8-bit thresholds: p resolved to 2⁻⁸, exact for the paper's
  0.5); ``bits``, for p = 0.5 only, the package's bit mask (``keep_tile`` with ``BITS``, one hash
  per 32 elements of one thread's accumulator, one bit each); or two bounds that are not
  dropout: ``parity`` (keep iff row + column is even, no hash) and ``none`` (only the scaling);
- tiles (BM, BN, BK, stages, warps) and GROUP_M for ``before``.

Variants with the package's mask for this p are checked against the package's output (same
mask, so the same numbers up to the float32 order of summation).

    PYTHONPATH=. python benchmarks/sweep_dropout_gemm.py --out dropout_gemm_sweep.json
"""

from __future__ import annotations

import json

import torch
from torch.nn import functional as F

from bench_layer_kernels import SHAPES, gpu_report, kernel_parser, print_ms_table

from tlora_analysis.adapters.fused.kernel_mask import KernelDropout
from tlora_analysis.adapters.fused.lowrank_gemm import dropout_lowrank_matmul, lowrank_matmul

if not torch.cuda.is_available():
    raise SystemExit("sweep_dropout_gemm.py times Triton kernels on a CUDA GPU; none is visible")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from tlora_analysis.adapters.fused.kernels import (fmix32, keep_tile, load_core, row_hash, scaled_rows,  # noqa: E402
                                                   tile_coords)

NUM_SMS = torch.cuda.get_device_properties(0).multi_processor_count
TILES = [(128, 256, 64, 3, 8), (128, 128, 64, 4, 8), (256, 128, 64, 3, 8)]  # BM, BN, BK, stages, warps
# name: (HALVES, FLATTEN, MASK: 0 pairs, 1 parity, 2 none, 3 quad, 4 bits)
VARIANTS = {"before": (False, False, 0), "before flatten": (False, True, 0), "halves": (True, False, 0),
            "halves flatten": (True, True, 0), "before, parity mask": (False, False, 1),
            "before, no mask": (False, False, 2), "before, quad mask": (False, False, 3),
            "before, bit mask (p = 0.5)": (False, False, 4), "halves flatten, bit mask (p = 0.5)": (True, True, 4)}
GROUPS = (4, 16)  # GROUP_M besides 8, for "before" on the first tile


@triton.jit
def quad_keep(h_row, col0, keep_below, BM: tl.constexpr, BN: tl.constexpr):
    """A keep-mask with one hash per four elements (rows × BN, col0 and BN multiples of 16): h =
    fmix32(h_row(i) ^ (g · 0x9E3779B9)) for the group g = 4 ⌊j / 16⌋ + ⌊j / 2⌋ mod 4 decides element
    (i, j) by its byte 2 (⌊j / 8⌋ mod 2) + j mod 2, kept iff that byte ≥ T8 = ⌊keep_below / 2⁸⌋ (the
    16-bit threshold's 8 bits). A thread of the tensor cores' accumulator holds columns 2c, 2c + 1,
    2c + 8, 2c + 9 of each 16: the four elements of a group, so no data moves between threads."""
    groups = (col0 // 4 + tl.arange(0, BN // 4)).to(tl.uint32) * 0x9E3779B9
    h = tl.reshape(fmix32(h_row[:, None] ^ groups[None, :]), (BM, BN // 16, 4))  # (i, ⌊j / 16⌋, ⌊j / 2⌋ mod 4)
    below = (keep_below >> 8).to(tl.uint32)
    first = tl.join((h & 0xFF) >= below, ((h >> 8) & 0xFF) >= below)  # ⌊j / 8⌋ even: j mod 2 = 0, 1
    second = tl.join(((h >> 16) & 0xFF) >= below, h >= (below << 24))
    return tl.reshape(tl.permute(tl.join(first, second), (0, 1, 4, 2, 3)), (BM, BN))


@triton.jit
def dropped(t, om, on, seed_lo, seed_hi, keep_below, scale_bits, MASK: tl.constexpr, BM: tl.constexpr,
            BN: tl.constexpr):
    """t (rows om…, columns on…) dropped out and scaled, or one of the two bounds."""
    t = t * scale_bits.to(tl.float32, bitcast=True)
    if MASK == 0 or MASK == 4:  # the package's pair or bit mask
        keep = keep_tile(row_hash(seed_lo, seed_hi, (om + tl.arange(0, BM)).to(tl.int64)), on, keep_below, BN,
                         MASK == 4)
        t = tl.where(keep, t, 0.0)
    elif MASK == 3:
        t = tl.where(quad_keep(row_hash(seed_lo, seed_hi, (om + tl.arange(0, BM)).to(tl.int64)), on, keep_below,
                               BM, BN), t, 0.0)
    elif MASK == 1:
        t = tl.where((((om + tl.arange(0, BM))[:, None] + (on + tl.arange(0, BN))[None, :]) & 1) == 0, t, 0.0)
    return t


@triton.jit
def sweep_kernel(x_ptr, w_ptr, u_ptr, v_ptr, core_ptr, scale_ptr, out_ptr, M, N, K, R, seed_lo, seed_hi,
                 keep_below, scale_bits, RP: tl.constexpr, HALVES: tl.constexpr, FLATTEN: tl.constexpr,
                 MASK: tl.constexpr, NUM_SMS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 GROUP_M: tl.constexpr):
    """x W0ᵀ + dropped(scale · (u core) v) for row-major x (M × K), W0 (N × K), u (M × R), v (R × N)."""
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BN, BK])
    u_desc = tl.make_tensor_descriptor(u_ptr, shape=[M, R], strides=[R, 1], block_shape=[BM, RP])
    if HALVES:
        v_desc = tl.make_tensor_descriptor(v_ptr, shape=[R, N], strides=[N, 1], block_shape=[RP, BN // 2])
    else:
        v_desc = tl.make_tensor_descriptor(v_ptr, shape=[R, N], strides=[N, 1], block_shape=[RP, BN])
    out_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN // 2])
    core = load_core(core_ptr, R, 1, R, RP)
    scale = tl.load(scale_ptr).to(tl.float32)
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    for tile_id in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_SMS, flatten=FLATTEN):
        pid_m, pid_n = tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        om = pid_m * BM
        on = pid_n * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        if not HALVES:
            ut = scaled_rows(u_desc.load([om, 0]), core, scale, True, True)
            acc = dropped(tl.dot(ut, v_desc.load([0, on]), acc), om, on, seed_lo, seed_hi, keep_below, scale_bits,
                          MASK, BM, BN)
        for ki in range(tl.cdiv(K, BK)):
            acc = tl.dot(x_desc.load([om, ki * BK]), w_desc.load([on, ki * BK]).T, acc)
        left, right = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
        if HALVES:
            ut = scaled_rows(u_desc.load([om, 0]), core, scale, True, True)
            low = tl.dot(ut, v_desc.load([0, on]), tl.zeros((BM, BN // 2), dtype=tl.float32))
            left += dropped(low, om, on, seed_lo, seed_hi, keep_below, scale_bits, MASK, BM, BN // 2)
        out_desc.store([om, on], left.to(out_desc.dtype))
        if HALVES:
            ut = scaled_rows(u_desc.load([om, 0]), core, scale, True, True)
            low = tl.dot(ut, v_desc.load([0, on + BN // 2]), tl.zeros((BM, BN // 2), dtype=tl.float32))
            right += dropped(low, om, on + BN // 2, seed_lo, seed_hi, keep_below, scale_bits, MASK, BM, BN // 2)
        out_desc.store([om, on + BN // 2], right.to(out_desc.dtype))


def launch(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, core: torch.Tensor,
           scale: torch.Tensor, dropout: KernelDropout, out: torch.Tensor, variant: tuple, tile: tuple,
           group_m: int) -> torch.Tensor:
    """out = x W0ᵀ + dropped(α (u B) C) by the sweep kernel, one variant, tile and GROUP_M."""
    halves, flatten, mask = variant
    bm, bn, bk, stages, warps = tile
    (m, k), n, r = x.shape, w.shape[0], u.shape[1]
    triton.set_allocator(lambda size, align, stream: torch.empty(size, device="cuda", dtype=torch.int8))
    grid = (min(NUM_SMS, triton.cdiv(m, bm) * triton.cdiv(n, bn)),)
    sweep_kernel[grid](x, w, u, v, core, scale, out, m, n, k, r, *dropout.args, RP=max(16, r), HALVES=halves,
                       FLATTEN=flatten, MASK=mask, NUM_SMS=NUM_SMS, BM=bm, BN=bn, BK=bk, GROUP_M=group_m,
                       num_stages=stages, num_warps=warps)
    return out


def sweep_shape(out_f: int, in_f: int, tokens: int, rank: int, p: float, variants: list[str],
                tiles: list[tuple]) -> dict[str, float | None]:
    """ms per call of every arm for one layer shape, and each hashed variant's largest deviation
    from the package's output (relative to its largest entry)."""
    bench = lambda fn: triton.testing.do_bench(fn, warmup=10, rep=50)  # noqa: E731  (median ms)
    g = torch.Generator(device="cuda").manual_seed(0)
    rnd = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=g)  # noqa: E731
    x, w0, u, c, b = rnd(tokens, in_f), rnd(out_f, in_f) / in_f**0.5, rnd(tokens, rank), rnd(rank, out_f), \
        rnd(rank, rank)
    alpha = torch.ones((), device="cuda")
    seed = 7
    dropout, out = KernelDropout(seed, p), torch.empty(tokens, out_f, device="cuda", dtype=torch.bfloat16)
    package = lambda: dropout_lowrank_matmul(x, w0, u, c, p=p, core=b, scale=alpha, transpose_w=True,  # noqa: E731
                                             seed=seed)[0]
    ref = package().float()
    row: dict[str, float | None] = {
        "F.linear": bench(lambda: F.linear(x, w0)),
        "package, no dropout": bench(lambda: lowrank_matmul(x, w0, u, c, core=b, scale=alpha, transpose_w=True)),
        "package, mask": bench(package)}
    configs = [(name, VARIANTS[name], tile, 8) for name in variants for tile in tiles
               if VARIANTS[name][2] != 4 or p == 0.5]  # the bit mask is dropout with p = 1/2 only
    if "before" in variants and len(tiles) == len(TILES):
        configs += [("before", VARIANTS["before"], TILES[0], gm) for gm in GROUPS]
    for name, variant, tile, gm in configs:
        label = f"{name} {'×'.join(map(str, tile[:3]))} s{tile[3]} w{tile[4]} G{gm}"
        try:
            got = launch(x, w0, u, c, b, alpha, dropout, out, variant, tile, gm).float()
            row[label] = bench(lambda: launch(x, w0, u, c, b, alpha, dropout, out, variant, tile, gm))
            if variant[2] == (4 if dropout.bits else 0):  # the package's mask
                row[label + ": deviation"] = ((got - ref).abs().max() / ref.abs().max()).item()
        except triton.runtime.errors.OutOfResources:  # a tile that does not fit in shared memory
            row[label] = None
        print(f"{out_f}x{in_f} {label}: {row[label]}", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = kernel_parser(__doc__)
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="the sweep kernel's variants to time (default: all)")
    parser.add_argument("--first-tile", action="store_true",
                        help=f"only the first tile, {TILES[0][:3]}, and GROUP_M 8 (default: all tiles and GROUP_M)")
    args = parser.parse_args(argv)
    tiles = TILES[:1] if args.first_tile else TILES
    report = gpu_report(args, p=args.p, ms_per_call={})
    for label, (out_f, in_f) in SHAPES.items():
        report["ms_per_call"][label] = sweep_shape(out_f, in_f, args.tokens, args.rank, args.p,
                                                      args.variants, tiles)
        args.out.write_text(json.dumps(report, indent=1))
    print_ms_table(report["ms_per_call"], "package, mask", "arm (ms, × the package's masked GEMM)")


if __name__ == "__main__":
    main()
