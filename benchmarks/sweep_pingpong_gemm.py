"""A warp-specialized ping-pong GEMM for the fused layer's products, against the package's Triton GEMM (GPU).

The package's GEMM (lowrank_gemm.py) is one partition of 8 warps: its rank-r term, the output
dropout's hash and the store run while the tensor cores wait. This sweep times a Gluon kernel in
which those steps overlap the tensor-core work, the way CUTLASS's ping-pong GEMMs hide theirs:

- one producer warp issues every TMA load into a ring of shared-memory stages;
- two consumer warpgroups take alternate 128 × BN output tiles; turn barriers let one issue its
  K loop's products while the other computes its rank-r product, its mask and its store;
- the rank-r term is one more product of K = r onto the accumulator, before the K loop; with
  dropout it is masked in the accumulator first (kernel_mask.py's keep-mask, the same elements).

For the benchmark model's six GEMM shapes (8192 tokens, bf16, r = 32) it times, in median ms per
call (``triton.testing.do_bench``): cuBLAS's plain product, the package's GEMM (and masked GEMM
for the forward), and the ping-pong kernel per (stages, BN) with and without the mask, each checked
against the package's output, and with its first configuration the base product alone (a bound). The ping-pong kernel takes s = α (u B) precomputed (the package's
kernel forms it per tile); its time here leaves that M × r product out.

    PYTHONPATH=. python benchmarks/sweep_pingpong_gemm.py --out pingpong_gemm_sweep.json
    PYTHONPATH=. python benchmarks/sweep_pingpong_gemm.py --compile-only   # sm_90a, no GPU needed
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from bench_layer_kernels import gpu_report, kernel_parser
from tlora_analysis.adapters.fused.kernels import fmix32, row_hash, tile_coords

# TMA copies: async_load / async_store since Triton 3.7, the longer names before (the GPUs run 3.6)
TMA_LOAD = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
TMA_STORE = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
CONFIGS = [(4, 128), (3, 128)]  # (stages, BN); BM = 128 and BK = 64 throughout


@gluon.jit
def dropped(acc, om, on, seed_lo, seed_hi, keep_below, scale, BM: gl.constexpr, BN: gl.constexpr):
    """acc (rows om…, columns on…) with kernel_mask.py's keep-mask: kept elements × scale, others 0."""
    lo, hi = acc.reshape([BM, BN // 2, 2]).split()
    layout: gl.constexpr = lo.type.layout
    rows = (om + gl.arange(0, BM, layout=gl.SliceLayout(1, layout))).to(gl.int64)
    h_row = row_hash(seed_lo, seed_hi, rows)
    pairs = (on // 2 + gl.arange(0, BN // 2, layout=gl.SliceLayout(0, layout))).to(gl.uint32) * 0x9E3779B9
    h = fmix32(h_row[:, None] ^ pairs[None, :])
    below = keep_below.to(gl.uint32)
    lo = gl.where((h & 0xFFFF) >= below, lo * scale, 0.0)
    hi = gl.where(h >= (below << 16), hi * scale, 0.0)
    return gl.convert_layout(gl.join(lo, hi).reshape([BM, BN]), acc.type.layout)


@gluon.jit
def tile_counts(x_desc, out_desc):
    """(blocks of rows, blocks of columns, K steps) of the product x op(w)."""
    return (gl.cdiv(x_desc.shape[0], x_desc.block_type.shape[0]),
            gl.cdiv(out_desc.shape[1], out_desc.block_type.shape[1]),
            gl.cdiv(x_desc.shape[1], x_desc.block_type.shape[1]))


@gluon.jit
def producer(shared, out_bufs, mask_args, W_T: gl.constexpr, V_T: gl.constexpr, TERM: gl.constexpr,
             GROUP_M: gl.constexpr, NUM_SMS: gl.constexpr):
    """One warp: for each of this program's tiles in turn, its rank-r operands into the consumer's
    own buffers, then its K steps into the ring."""
    x_desc, w_desc, s_desc, v_desc, out_desc, ring_a, ring_b, s_bufs, v_bufs, ready, empty, rr_ready, rr_empty, \
        turn = shared
    BM: gl.constexpr = x_desc.block_type.shape[0]
    BK: gl.constexpr = x_desc.block_type.shape[1]
    BN: gl.constexpr = out_desc.block_type.shape[1]
    STAGES: gl.constexpr = ring_a.type.shape[0]
    num_pid_m, num_pid_n, k_tiles = tile_counts(x_desc, out_desc)
    step = 0
    local = 0
    for tile in range(gl.program_id(0), num_pid_m * num_pid_n, NUM_SMS):
        pid_m, pid_n = tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
        om = pid_m * BM
        on = pid_n * BN
        c = local % 2
        mbarrier.wait(rr_empty.index(c), ((local // 2) & 1) ^ 1)
        mbarrier.expect(rr_ready.index(c), s_desc.block_type.nbytes + v_desc.block_type.nbytes)
        TMA_LOAD(s_desc, [om, 0], rr_ready.index(c), s_bufs.index(c))
        if V_T:
            TMA_LOAD(v_desc, [on, 0], rr_ready.index(c), v_bufs.index(c))
        else:
            TMA_LOAD(v_desc, [0, on], rr_ready.index(c), v_bufs.index(c))
        for ki in range(k_tiles):
            idx = step % STAGES
            mbarrier.wait(empty.index(idx), ((step // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(idx), x_desc.block_type.nbytes + w_desc.block_type.nbytes)
            TMA_LOAD(x_desc, [om, ki * BK], ready.index(idx), ring_a.index(idx))
            if W_T:
                TMA_LOAD(w_desc, [on, ki * BK], ready.index(idx), ring_b.index(idx))
            else:
                TMA_LOAD(w_desc, [ki * BK, on], ready.index(idx), ring_b.index(idx))
            step += 1
        local += 1


@gluon.jit
def consumer(C: gl.constexpr, shared, out_bufs, mask_args, W_T: gl.constexpr, V_T: gl.constexpr,
             TERM: gl.constexpr, GROUP_M: gl.constexpr, NUM_SMS: gl.constexpr):
    """One warpgroup: tiles C, C + 2, … of this program's. Rank-r product (and mask) before its turn,
    the K loop's products in its turn, the store after handing the turn on."""
    x_desc, w_desc, s_desc, v_desc, out_desc, ring_a, ring_b, s_bufs, v_bufs, ready, empty, rr_ready, rr_empty, \
        turn = shared
    seed_lo, seed_hi, keep_below, scale_bits = mask_args
    BM: gl.constexpr = x_desc.block_type.shape[0]
    BN: gl.constexpr = out_desc.block_type.shape[1]
    STAGES: gl.constexpr = ring_a.type.shape[0]
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BN, 16])
    num_pid_m, num_pid_n, k_tiles = tile_counts(x_desc, out_desc)
    scale = scale_bits.to(gl.float32, bitcast=True)
    out_buf = out_bufs.index(C)
    j = 0
    for tile in range(gl.program_id(0) + C * NUM_SMS, num_pid_m * num_pid_n, 2 * NUM_SMS):
        pid_m, pid_n = tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
        om = pid_m * BM
        on = pid_n * BN
        # the rank-r term (and its mask) outside the turn: it overlaps the other warpgroup's K loop
        mbarrier.wait(rr_ready.index(C), j & 1)
        acc = gl.zeros((BM, BN), dtype=gl.float32, layout=acc_layout)
        if TERM == 0:  # a bound, not the layer: the base product alone
            pass
        elif V_T:
            acc = warpgroup_mma_wait(0, deps=(warpgroup_mma(s_bufs.index(C), v_bufs.index(C).permute((1, 0)), acc,
                                                            use_acc=False, is_async=True),))
        else:
            acc = warpgroup_mma_wait(0, deps=(warpgroup_mma(s_bufs.index(C), v_bufs.index(C), acc, use_acc=False,
                                                            is_async=True),))
        mbarrier.arrive(rr_empty.index(C), count=1)
        if TERM == 2:
            acc = dropped(acc, om, on, seed_lo, seed_hi, keep_below, scale, BM, BN)
        # this warpgroup's turn: the other has issued its K loop (C = 0's first tile needs no turn)
        mbarrier.wait(turn.index(C), (j & 1) ^ (1 - C))
        step = (2 * j + C) * k_tiles
        prev = 0
        for ki in range(k_tiles):
            idx = step % STAGES
            mbarrier.wait(ready.index(idx), (step // STAGES) & 1)
            if W_T:
                acc = warpgroup_mma_wait(1, deps=(warpgroup_mma(ring_a.index(idx), ring_b.index(idx).permute((1, 0)),
                                                                acc, is_async=True),))
            else:
                acc = warpgroup_mma_wait(1, deps=(warpgroup_mma(ring_a.index(idx), ring_b.index(idx), acc,
                                                                is_async=True),))
            if ki > 0:
                mbarrier.arrive(empty.index(prev), count=1)
            prev = idx
            step += 1
        mbarrier.arrive(turn.index(1 - C), count=1)
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(empty.index(prev), count=1)
        tma.store_wait(0)  # this warpgroup's previous tile has left its buffer
        out_buf.store(acc.to(out_desc.dtype))
        fence_async_shared()
        TMA_STORE(out_desc, [om, on], out_buf)
        j += 1
    tma.store_wait(0)


@gluon.jit
def consumer_one(shared, out_bufs, mask_args, W_T: gl.constexpr, V_T: gl.constexpr, TERM: gl.constexpr,
                 GROUP_M: gl.constexpr, NUM_SMS: gl.constexpr):
    consumer(1, shared, out_bufs, mask_args, W_T, V_T, TERM, GROUP_M, NUM_SMS)


@gluon.jit
def pingpong_kernel(x_ptr, w_ptr, s_ptr, v_ptr, out_ptr, M, N, K, R, seed_lo, seed_hi, keep_below, scale_bits,
                    W_T: gl.constexpr, V_T: gl.constexpr, TERM: gl.constexpr, STAGES: gl.constexpr,
                    BN: gl.constexpr, RK: gl.constexpr, GROUP_M: gl.constexpr, NUM_SMS: gl.constexpr):
    """out = x op(w) + s op(v) for row-major x (M × K), w (N × K if W_T else K × N), s (M × R),
    v (N × R if V_T else R × N), R ≤ RK; out (M × N). TERM: 1 as written, 2 with s op(v) dropped
    out, 0 without it (a bound: the base product alone)."""
    BM: gl.constexpr = 128
    BK: gl.constexpr = 64
    dtype: gl.constexpr = gl.bfloat16
    a_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BM, BK], dtype)
    w_block: gl.constexpr = [BN, BK] if W_T else [BK, BN]
    w_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for(w_block, dtype)
    s_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BM, RK], dtype)
    v_block: gl.constexpr = [BN, RK] if V_T else [RK, BN]
    v_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for(v_block, dtype)
    o_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BM, BN], dtype)
    x_desc = tma.make_tensor_descriptor(x_ptr, [M, K], [K, 1], [BM, BK], a_layout)
    if W_T:
        w_desc = tma.make_tensor_descriptor(w_ptr, [N, K], [K, 1], w_block, w_layout)
    else:
        w_desc = tma.make_tensor_descriptor(w_ptr, [K, N], [N, 1], w_block, w_layout)
    s_desc = tma.make_tensor_descriptor(s_ptr, [M, R], [R, 1], [BM, RK], s_layout)
    if V_T:
        v_desc = tma.make_tensor_descriptor(v_ptr, [N, R], [R, 1], v_block, v_layout)
    else:
        v_desc = tma.make_tensor_descriptor(v_ptr, [R, N], [N, 1], v_block, v_layout)
    out_desc = tma.make_tensor_descriptor(out_ptr, [M, N], [N, 1], [BM, BN], o_layout)

    ring_a = gl.allocate_shared_memory(dtype, [STAGES, BM, BK], a_layout)
    ring_b = gl.allocate_shared_memory(dtype, [STAGES] + w_block, w_layout)
    s_bufs = gl.allocate_shared_memory(dtype, [2, BM, RK], s_layout)
    v_bufs = gl.allocate_shared_memory(dtype, [2] + v_block, v_layout)
    out_bufs = gl.allocate_shared_memory(dtype, [2, BM, BN], o_layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    rr_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    rr_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    for i in gl.static_range(2):
        mbarrier.init(rr_ready.index(i), count=1)
        mbarrier.init(rr_empty.index(i), count=1)
        mbarrier.init(turn.index(i), count=1)
    fence_async_shared()

    shared = (x_desc, w_desc, s_desc, v_desc, out_desc, ring_a, ring_b, s_bufs, v_bufs, ready, empty, rr_ready,
              rr_empty, turn)
    mask_args = (seed_lo, seed_hi, keep_below, scale_bits)
    gl.warp_specialize([
        (consumer, (0, shared, out_bufs, mask_args, W_T, V_T, TERM, GROUP_M, NUM_SMS)),
        (consumer_one, (shared, out_bufs, mask_args, W_T, V_T, TERM, GROUP_M, NUM_SMS)),
        (producer, (shared, out_bufs, mask_args, W_T, V_T, TERM, GROUP_M, NUM_SMS)),
    ], [4, 1], [232, 40])


CONSTEXPRS = ("W_T", "V_T", "TERM", "STAGES", "BN", "RK", "GROUP_M", "NUM_SMS")


def compile_only() -> None:
    """Compile every configuration for sm_90a (no GPU) and print ptxas's register and spill report."""
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.experimental.gluon._runtime import GluonASTSource

    fn = pingpong_kernel
    names = [p.name for p in fn.params]
    signature = {p.name: "constexpr" if p.is_constexpr else "*bf16" if p.name.endswith("_ptr") else "i32"
                 for p in fn.params}
    for w_t, v_t, term in ((True, False, 1), (True, False, 2), (False, True, 1), (True, False, 0)):
        for stages, bn in CONFIGS:
            values = dict(zip(CONSTEXPRS, (w_t, v_t, term, stages, bn, 32, 8, 132)))
            source = GluonASTSource(fn=fn, signature=signature,
                                    constexprs={(names.index(k),): v for k, v in values.items()})
            label = f"W_T={w_t} V_T={v_t} TERM={term} stages={stages} BN={bn}"
            try:
                compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                          options={"num_warps": 4, "maxnreg": 168})
            except Exception as error:  # report and go on: a sweep of designs
                print(f"{label}: failed: {type(error).__name__}: {str(error)[-3000:]}", flush=True)
                continue
            with tempfile.TemporaryDirectory() as tmp:
                ptx = Path(tmp) / "k.ptx"
                ptx.write_text(compiled.asm["ptx"])
                report = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", str(ptx), "-o",
                                         str(Path(tmp) / "k.cubin")], capture_output=True, text=True)
            lines = [line for line in (report.stdout + report.stderr).splitlines() if "spill" in line or "Used" in line]
            print(f"{label}: shared {compiled.metadata.shared} B; " + " | ".join(s.strip() for s in lines), flush=True)


def launch(x, w, s, v, out, *, w_t: bool, v_t: bool, dropout=None, stages: int = 4, bn: int = 128,
           term: bool = True) -> torch.Tensor:
    """out = x op(w) + [dropout](s op(v)) by the ping-pong kernel; dropout a KernelDropout or None;
    without ``term`` x op(w) alone (a bound)."""
    (m, k), n, r = x.shape, out.shape[1], s.shape[1]
    num_sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    triton.set_allocator(lambda size, align, stream: torch.empty(size, device=x.device, dtype=torch.int8))
    args = (0, 0, 0, 0) if dropout is None else dropout.args
    grid = (min(num_sms, triton.cdiv(m, 128) * triton.cdiv(n, bn)),)
    term_mode = 0 if not term else 1 if dropout is None else 2
    pingpong_kernel[grid](x, w, s, v, out, m, n, k, r, *args, W_T=w_t, V_T=v_t, TERM=term_mode, STAGES=stages, BN=bn,
                          RK=32, GROUP_M=8, NUM_SMS=num_sms, num_warps=4, maxnreg=168)
    return out


def sweep(tokens: int, rank: int, p: float) -> dict:
    """ms per call of every arm for the six GEMMs, and each ping-pong arm's largest deviation from the package."""
    from bench_layer_kernels import SHAPES
    from torch.nn import functional as F

    from tlora_analysis.adapters.fused.kernel_mask import KernelDropout
    from tlora_analysis.adapters.fused.lowrank_gemm import dropout_lowrank_matmul, lowrank_matmul

    bench = lambda fn: triton.testing.do_bench(fn, warmup=10, rep=60)  # noqa: E731  (median ms)
    g = torch.Generator(device="cuda").manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g)  # noqa: E731
    results = {}
    for label, (out_f, in_f) in SHAPES.items():
        w0, a, c, b = rnd(out_f, in_f) / in_f**0.5, rnd(in_f, rank), rnd(rank, out_f), rnd(rank, rank)
        alpha = torch.ones((), device="cuda")
        for direction in ("fwd", "bwd"):
            if direction == "fwd":  # x W0ᵀ + α (x A B) C
                x, u, v, w_t, v_t, n = rnd(tokens, in_f), rnd(tokens, rank), c, True, False, out_f
                core, package_w = b, w0
            else:  # g W0 + α (g Cᵀ Bᵀ) Aᵀ
                x, u, v, w_t, v_t, n = rnd(tokens, out_f), rnd(tokens, rank), a, False, True, in_f
                core, package_w = b.T, w0
            s = (alpha * (u.float() @ core.float())).to(torch.bfloat16)
            out = torch.empty(tokens, n, device="cuda", dtype=torch.bfloat16)
            row = {}
            if w_t:
                row["cuBLAS"] = bench(lambda: F.linear(x, w0))
                package = lambda: lowrank_matmul(x, w0, u, c, core=b, scale=alpha, transpose_w=True)  # noqa: E731
            else:
                row["cuBLAS"] = bench(lambda: torch.mm(x, w0))
                package = lambda: lowrank_matmul(x, w0, u, a, core=b, scale=alpha, transpose_v=True,  # noqa: E731
                                                 transpose_core=True)
            ref = package().float()
            row["package"] = bench(package)
            arms = [(None, cfg, True) for cfg in CONFIGS] + [(None, CONFIGS[0], False)]
            if direction == "fwd":
                dropout = KernelDropout(7, p)
                masked = lambda: dropout_lowrank_matmul(x, w0, u, c, p=p, core=b, scale=alpha,  # noqa: E731
                                                        transpose_w=True, seed=7)[0]
                masked_ref = masked().float()
                row["package, mask"] = bench(masked)
                arms += [(dropout, cfg, True) for cfg in CONFIGS]
            for drop, (stages, bn), term in arms:
                name = f"ping-pong{', mask' if drop else '' if term else ', base product alone'} s{stages} BN{bn}"
                try:
                    run = lambda: launch(x, package_w, s, v, out, w_t=w_t, v_t=v_t, dropout=drop,  # noqa: E731
                                         stages=stages, bn=bn, term=term)
                    got = run().float()
                    if term:  # the bound computes another product
                        want = masked_ref if drop else ref
                        row[name + ": deviation"] = ((got - want).abs().max() / want.abs().max()).item()
                    row[name] = bench(run)
                except Exception as error:  # a configuration that fails is reported, not fatal
                    row[name] = f"failed: {type(error).__name__}: {str(error)[:300]}"
                print(f"{label} {direction} {name}: {row[name]} dev {row.get(name + ': deviation')}", flush=True)
            results[f"{label} {direction}"] = row
            print(f"{label} {direction}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                       if isinstance(v, float) and "deviation" not in k), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = kernel_parser(__doc__, out_required=False)
    parser.add_argument("--compile-only", action="store_true", help="compile for sm_90a and report registers")
    parser.add_argument("--p", type=float, default=0.5)
    args = parser.parse_args(argv)
    if args.compile_only:
        compile_only()
        return
    if not torch.cuda.is_available() or args.out is None:
        sys.exit("sweep_pingpong_gemm.py times kernels on a CUDA GPU and needs --out (or use --compile-only)")
    report = gpu_report(args, p=args.p, ms_per_call=sweep(args.tokens, args.rank, args.p))
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
