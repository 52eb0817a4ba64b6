"""The rank-r term as one more pipelined K step of the GEMM, operands padded by 64 (GPU).

The package's fused GEMM adds the rank-r term after its K loop: loads of the u and v tiles that
the loop's pipeline does not prefetch, and one more product, for every output tile. Here the
term is instead the K loop's last step, loaded through the same pipeline as the base steps:

- right operand: W0 stored padded, [W0 | Cᵀ | 0] (N × (K + 64)) for the forward x W0ᵀ + s C,
  [W0 ; Aᵀ ; 0] ((N + 64) × K) for the backward's g W0 + t Aᵀ, so the last step reads Cᵀ or Aᵀ;
- left operand: one 3-D TMA descriptor with two planes, the activation (x or g) and a scratch of
  the same row stride whose first 64 columns hold [s | 0] (s = α u B, or t = α gc Bᵀ); the
  plane stride is the two buffers' address difference, and the last step reads the scratch.

For the benchmark model's three layer shapes (8192 tokens, bf16, r = 32), median ms per call
(``time_us``: 20 calls captured in a CUDA graph, so that Triton's host-side launch, which a lone
call between two events would include, is left out as in a training step's stream) of cuBLAS's
base GEMM, the package's GEMM (s and t computed in it from u or gc and the core), the padded
kernel with the persistent loop flattened or not (s and t given in the scratch), cuBLAS on the
padded operands as contiguous buffers (a bound for any kernel of this design); then each GEMM
with the r-wide projection that precedes it in the layer (x A, or g Cᵀ): the package's with
cuBLAS's projection, the padded one with a fill kernel that computes the projection and writes
[α u B | 0] into the scratch in the same launch (the fastest of FILL_CONFIGS, each timed). Each
padded output is checked against float32. Without dropout only: the dropout mask applies to the
rank-r product alone, which this design sums into the base.

    PYTHONPATH=. python benchmarks/sweep_padded_k_gemm.py --out padded_k_gemm_sweep.json
"""

from __future__ import annotations

import json

import torch

from bench_layer_kernels import LAYERS_PER_STEP, SHAPES, gpu_report, kernel_parser, print_ms_table, time_us

from tlora_analysis.adapters.fused.lowrank_gemm import lowrank_matmul

if not torch.cuda.is_available():
    raise SystemExit("sweep_padded_k_gemm.py times Triton kernels on a CUDA GPU; none is visible")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from tlora_analysis.adapters.fused.kernels import load_core, tile_coords  # noqa: E402

NUM_SMS = torch.cuda.get_device_properties(0).multi_processor_count
BM, BN, PAD = 128, 256, 64  # the output tile; PAD, the rank-r step's width, is its BK (r, then zeros)
FILL_CONFIGS = [(64, 128, 4, 8), (32, 128, 4, 4), (64, 64, 4, 4), (32, 256, 3, 4), (64, 256, 3, 8), (16, 256, 4, 4)]
"""The fill kernel's (rows per program, K block, stages, warps) tried on each shape."""


@triton.jit
def padded_k_kernel(base_ptr, w_ptr, out_ptr, M, N, K, plane_stride, x_plane, W_T: tl.constexpr,
                    NUM_SMS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    GROUP_M: tl.constexpr, FLATTEN: tl.constexpr):
    """out = x op(W) with one K step more than x has: plane ``x_plane`` of the 3-D left operand is
    x (M × K, row stride K), the other plane [s | 0]; op(W) the padded right operand (K % BK = 0)."""
    a_desc = tl.make_tensor_descriptor(base_ptr, shape=[2, M, K], strides=[plane_stride, K, 1],
                                       block_shape=[1, BM, BK])
    if W_T:
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K + BK], strides=[K + BK, 1], block_shape=[BN, BK])
    else:
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[K + BK, N], strides=[N, 1], block_shape=[BK, BN])
    out_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN // 2])
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    k_tiles = K // BK
    for tile_id in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_SMS, flatten=FLATTEN):
        pid_m, pid_n = tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        om = pid_m * BM
        on = pid_n * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for ki in range(k_tiles + 1):
            last = ki == k_tiles  # the rank-r step: the scratch's plane, its first BK columns
            ok = ki * BK
            a = tl.reshape(a_desc.load([tl.where(last, 1 - x_plane, x_plane), om, tl.where(last, 0, ok)]), (BM, BK))
            if W_T:
                acc = tl.dot(a, w_desc.load([on, ok]).T, acc)
            else:
                acc = tl.dot(a, w_desc.load([ok, on]), acc)
        halves = tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1))
        left, right = tl.split(halves)
        out_desc.store([om, on], left.to(out_desc.dtype))
        out_desc.store([om, on + BN // 2], right.to(out_desc.dtype))


@triton.jit
def fill_kernel(x_ptr, a_ptr, core_ptr, scale_ptr, u_ptr, scratch_ptr, M, K, R, stride_a, stride_core0, stride_core1,
                A_T: tl.constexpr, RP: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, PAD: tl.constexpr):
    """u = x op(a) (M × R) and the scratch's first PAD columns = [scale · u core | 0], one program per
    BM rows reading x once: the padded design's one launch before its GEMM, in place of x A."""
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
    if A_T:  # a stored R × K (C, whose transpose the backward's projection uses)
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[R, K], strides=[stride_a, 1], block_shape=[RP, BK])
    else:  # a stored K × R (A)
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[K, R], strides=[stride_a, 1], block_shape=[BK, RP])
    om = tl.program_id(0) * BM
    acc = tl.zeros((BM, RP), dtype=tl.float32)
    for ok in range(0, K, BK):
        if A_T:
            acc = tl.dot(x_desc.load([om, ok]), a_desc.load([0, ok]).T, acc)
        else:
            acc = tl.dot(x_desc.load([om, ok]), a_desc.load([ok, 0]), acc)
    rows = (om + tl.arange(0, BM)).to(tl.int64)
    offs_r = tl.arange(0, RP)
    u = acc.to(u_ptr.dtype.element_ty)
    tl.store(u_ptr + rows[:, None] * R + offs_r[None, :], u, mask=(rows < M)[:, None] & (offs_r < R)[None, :])
    core = load_core(core_ptr, stride_core0, stride_core1, R, RP)
    s = (tl.dot(u, core) * tl.load(scale_ptr).to(tl.float32)).to(scratch_ptr.dtype.element_ty)  # zeros past R
    tl.store(scratch_ptr + rows[:, None] * K + offs_r[None, :], s, mask=(rows < M)[:, None])
    if RP < PAD:
        offs_z = RP + tl.arange(0, PAD - RP)
        tl.store(scratch_ptr + rows[:, None] * K + offs_z[None, :], tl.zeros((BM, PAD - RP), dtype=s.dtype),
                 mask=(rows < M)[:, None])


def fill(x: torch.Tensor, a: torch.Tensor, core: torch.Tensor, scale: torch.Tensor, u: torch.Tensor,
         scratch: torch.Tensor, a_t: bool, config: tuple[int, int, int, int]) -> torch.Tensor:
    """:func:`fill_kernel` on row-major x (M × K) and a (K × r, or r × K with ``a_t``); scratch M × K;
    ``config`` one of FILL_CONFIGS."""
    (m, k), r = x.shape, u.shape[1]
    bm, bk, stages, warps = config
    fill_kernel[(triton.cdiv(m, bm),)](x, a, core, scale, u, scratch, m, k, r, a.stride(0), core.stride(0),
                                       core.stride(1), A_T=a_t, RP=max(16, triton.next_power_of_2(r)), BM=bm,
                                       BK=bk, PAD=PAD, num_stages=stages, num_warps=warps)
    return u


def padded_k(x: torch.Tensor, scratch: torch.Tensor, w_pad: torch.Tensor, out: torch.Tensor, w_t: bool,
             flatten: bool) -> torch.Tensor:
    """One launch: x and scratch (same shape, row-major) as the two planes, the lower address first."""
    (m, k), n = x.shape, out.shape[1]
    px, ps = x.data_ptr(), scratch.data_ptr()
    base, stride, x_plane = (x, (ps - px) // x.element_size(), 0) if ps > px else \
        (scratch, (px - ps) // x.element_size(), 1)
    grid = (min(NUM_SMS, triton.cdiv(m, BM) * triton.cdiv(n, BN)),)
    padded_k_kernel[grid](base, w_pad, out, m, n, k, stride, x_plane, W_T=w_t, NUM_SMS=NUM_SMS, BM=BM, BN=BN,
                          BK=PAD, GROUP_M=8, FLATTEN=flatten, num_stages=3, num_warps=8)
    return out


def sweep_shape(out_f: int, in_f: int, tokens: int, r: int) -> dict[str, dict[str, float | None]]:
    """ms per call of every arm, forward and backward, for one layer shape, and the padded kernel's
    largest deviation from float32 (× the largest entry); the fill kernel's time per config."""
    bench = lambda fn: time_us(fn, "cuda", repeats=15) / 1000  # noqa: E731  (median ms)
    gen = torch.Generator(device="cuda").manual_seed(0)
    rnd = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=gen)  # noqa: E731
    x, g, w0 = rnd(tokens, in_f), rnd(tokens, out_f), rnd(out_f, in_f) / in_f**0.5
    a, b, c = rnd(in_f, r) / in_f**0.5, rnd(r, r) / r**0.5, rnd(r, out_f)
    u, gc = rnd(tokens, r), rnd(tokens, r)
    alpha = torch.full((), 0.5, device="cuda")
    w_fwd = torch.zeros(out_f, in_f + PAD, device="cuda", dtype=torch.bfloat16)
    w_fwd[:, :in_f], w_fwd[:, in_f:in_f + r] = w0, c.T
    w_bwd = torch.zeros(out_f + PAD, in_f, device="cuda", dtype=torch.bfloat16)
    w_bwd[:out_f], w_bwd[out_f:out_f + r] = w0, a.T
    rows = {}
    for direction in ("forward", "backward"):
        if direction == "forward":  # x W0ᵀ + s C, s = α u B
            act, left, core, w_pad, w_t = x, u, b, w_fwd, True
            s = (alpha * (u.float() @ b.float())).to(torch.bfloat16)
            ref = x.float() @ w0.float().T + s.float() @ c.float()
            package = lambda: lowrank_matmul(x, w0, u, c, core=b, scale=alpha, transpose_w=True)  # noqa: E731
            base = lambda: torch.mm(x, w0.T)  # noqa: E731
            projection, proj_op, a_t = lambda: torch.mm(x, a), a, False  # noqa: E731
        else:  # g W0 + t Aᵀ, t = α gc Bᵀ
            act, left, core, w_pad, w_t = g, gc, b.T, w_bwd, False
            s = (alpha * (gc.float() @ b.float().T)).to(torch.bfloat16)
            ref = g.float() @ w0.float() + s.float() @ a.float().T
            package = lambda: lowrank_matmul(g, w0, gc, a, core=b, scale=alpha, transpose_v=True,  # noqa: E731
                                             transpose_core=True)
            base = lambda: torch.mm(g, w0)  # noqa: E731
            projection, proj_op, a_t = lambda: torch.mm(g, c.T), c, True  # noqa: E731
        scratch = torch.zeros_like(act)
        scratch[:, :r] = s
        act_pad = torch.cat([act, scratch[:, :PAD]], dim=1)
        out = torch.empty(tokens, ref.shape[1], device="cuda", dtype=torch.bfloat16)
        row: dict[str, float | None] = {"cuBLAS base GEMM": bench(base), "package": bench(package)}
        for flatten in (True, False):
            label = f"padded K, loop {'flattened' if flatten else 'not flattened'}"
            try:
                got = padded_k(act, scratch, w_pad, out, w_t, flatten).float()
                row[label + ": deviation"] = ((got - ref).abs().max() / ref.abs().max()).item()
                row[label] = bench(lambda: padded_k(act, scratch, w_pad, out, w_t, flatten))
            except Exception as err:  # a compiler or launch failure: recorded, the sweep goes on
                print(f"{label}: {type(err).__name__}: {str(err)[:300]}", flush=True)
                row[label] = None
        row["cuBLAS, padded operands (bound)"] = bench(lambda: torch.mm(act_pad, w_pad.T if w_t else w_pad))
        row["cuBLAS u B (a separate fill)"] = bench(lambda: torch.mm(left, core))
        # with the r-wide projection that precedes each GEMM: cuBLAS's (x A or g Cᵀ), or the fill
        # kernel, which also writes [α u B | 0] into the scratch
        proj_out, fill_scratch = torch.empty_like(left), torch.empty_like(act)
        fill_ms = {}
        for config in FILL_CONFIGS:
            try:
                fill_ms[config] = bench(lambda: fill(act, proj_op, core, alpha, proj_out, fill_scratch, a_t, config))
            except Exception as err:  # e.g. out of shared memory: recorded, the sweep goes on
                print(f"fill {config}: {type(err).__name__}: {str(err)[:200]}", flush=True)
        best = min(fill_ms, key=fill_ms.get)
        rows[f"{direction}: fill configs (ms)"] = {"×".join(map(str, c)): ms for c, ms in fill_ms.items()}
        fill(act, proj_op, core, alpha, proj_out, fill_scratch, a_t, best)
        proj_ref, fill_ref = projection().float(), alpha * (proj_out.float() @ core.float())
        row["fill: deviation"] = max(((proj_out.float() - proj_ref).abs().max() / proj_ref.abs().max()).item(),
                                     ((fill_scratch[:, :r].float() - fill_ref).abs().max()
                                      / fill_ref.abs().max()).item(),
                                     fill_scratch[:, r:PAD].float().abs().max().item())
        row["cuBLAS projection"] = bench(projection)
        row["fill kernel"] = fill_ms[best]
        row["package with cuBLAS's projection"] = bench(lambda: (projection(), package()))
        if row["padded K, loop flattened"] is not None:
            row["padded K (flattened) with the fill"] = bench(
                lambda: (fill(act, proj_op, core, alpha, proj_out, fill_scratch, a_t, best),
                         padded_k(act, fill_scratch, w_pad, out, w_t, True)))
        rows[direction] = row
        print(out_f, in_f, direction, json.dumps(row), rows[f"{direction}: fill configs (ms)"], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = kernel_parser(__doc__).parse_args(argv)
    if not 1 <= args.rank <= PAD:
        raise SystemExit(f"--rank must be 1 … {PAD} (the padded step is {PAD} wide), got {args.rank}")
    triton.set_allocator(lambda size, align, stream: torch.empty(size, device="cuda", dtype=torch.int8))
    report = gpu_report(args, ms_per_call={})
    for label, (out_f, in_f) in SHAPES.items():
        report["ms_per_call"][label] = sweep_shape(out_f, in_f, args.tokens, args.rank)
        args.out.write_text(json.dumps(report, indent=1))
    for direction in ("forward", "backward"):
        rows = {label: by_direction[direction] for label, by_direction in report["ms_per_call"].items()}
        print_ms_table(rows, "package", f"{direction} (ms, × the package's GEMM)")
        print({s: {k: f"{v:.2e}" for k, v in row.items() if "deviation" in k} for s, row in rows.items()})
        summed = {arm: sum(LAYERS_PER_STEP[s] * rows[s][arm] for s in rows) for arm in rows[next(iter(rows))]
                  if not arm.endswith("deviation") and all(rows[s].get(arm) is not None for s in rows)}
        report[f"{direction}: ms per step, summed over the layers"] = summed
        print(f"{direction}, ms per step summed over the model's layers:",
              ", ".join(f"{arm} {ms:.2f}" for arm, ms in summed.items()))
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
