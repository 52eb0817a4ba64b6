"""The fused layer's Triton kernels (device code only; imported with Triton on first use).

- :func:`lowrank_matmul_kernel`: out = x op(w) + scale · (u op(core)) op(v) (+ bias) in one
  persistent GEMM with TMA loads, the rank-r term added in the accumulator before the only
  store (with ``ACCUMULATE``, added onto what out holds); optionally ∂B and ∂α
  (:func:`core_grads_program`) by its programs that have one tile fewer than the others.
  Host side: lowrank_gemm.py.
  With ``DROPOUT`` the rank-r term is computed first and dropped out in the accumulator
  (:func:`keep_tile`), then the base product accumulates onto it: the fused layer's output
  dropout at no extra pass over memory.
- :func:`core_grads_kernel`: ∂B = α G and ∂α = ⟨B, G⟩ with G = uᵀ gc in one launch. Host
  side: core_grads.py.
- :func:`row_hash` and :func:`keep_tile`: the output dropout's keep-mask of one tile, a 32-bit
  hash (:func:`fmix32`) of (seed, row, pair of columns) whose two 16-bit halves decide the
  pair's two elements, or for p = 1/2 of (seed, row, group of 32 columns) whose bits decide the
  group's elements; also behind
  :func:`masked_projection_kernel` ((g ∘ keep) Cᵀ / (1 − p̂), the backward's one pass over g) and
  :func:`keep_mask_kernel` (the mask itself, for tests). Host side: kernel_mask.py.

launch.py imports this module the first time a kernel can run, so a process that never runs
one (a CPU, a GPU older than Hopper, float32) never imports Triton.
"""

import triton
import triton.language as tl

__all__ = ["core_grads_kernel", "core_grads_program", "fmix32", "keep_mask_kernel", "keep_tile",
           "lowrank_matmul_kernel", "masked_projection_kernel", "row_hash", "scaled_rows", "tile_coords"]


@triton.jit
def core_grads_program(pid, programs, u_ptr, gc_ptr, b_ptr, alpha_ptr, share_ptr, count_ptr, grad_b_ptr,
                       grad_alpha_ptr, M, R, stride_u, stride_gc, stride_b0, stride_b1,
                       RP: tl.constexpr, BM: tl.constexpr, PB: tl.constexpr):
    """Program ``pid`` of ``programs``: its share of G (float32, zeros past r) over its blocks of
    rows; the last of them to finish sums all shares and writes ∂B = α G (r × r, row-major) and
    ∂α = ⟨B, G⟩. Also the epilogue of the fused layer's ∂x GEMM (:func:`lowrank_matmul_kernel`)."""
    offs_r = tl.arange(0, RP)
    share = tl.zeros((RP, RP), dtype=tl.float32)
    for start in range(pid * BM, M, programs * BM):  # this program's blocks of rows
        rows = (start + tl.arange(0, BM)).to(tl.int64)  # tokens × r can pass 2³¹
        mask = (rows < M)[:, None] & (offs_r < R)[None, :]
        u = tl.load(u_ptr + rows[:, None] * stride_u + offs_r[None, :], mask=mask, other=0.0)
        gc = tl.load(gc_ptr + rows[:, None] * stride_gc + offs_r[None, :], mask=mask, other=0.0)
        share = tl.dot(tl.trans(u), gc, share)
    tl.store(share_ptr + pid * RP * RP + offs_r[:, None] * RP + offs_r[None, :], share)
    # every thread's share stored before one thread's release; the last program then acquires
    tl.debug_barrier()
    if tl.atomic_add(count_ptr, 1, sem="acq_rel", scope="gpu") == programs - 1:
        entry = tl.arange(0, RP * RP)
        offs_p = tl.arange(0, PB)
        total = tl.zeros((PB, RP * RP), dtype=tl.float32)
        for p0 in range(0, programs, PB):  # a fixed order of summation
            p = p0 + offs_p
            total += tl.load(share_ptr + p[:, None] * (RP * RP) + entry[None, :], mask=(p < programs)[:, None],
                             other=0.0, cache_modifier=".cg")  # from L2: other programs wrote them
        g_core = tl.reshape(tl.sum(total, axis=0), (RP, RP))
        rr = (offs_r[:, None] < R) & (offs_r[None, :] < R)
        b = tl.load(b_ptr + offs_r[:, None] * stride_b0 + offs_r[None, :] * stride_b1, mask=rr, other=0.0)
        alpha = tl.load(alpha_ptr).to(tl.float32)
        tl.store(grad_b_ptr + offs_r[:, None] * R + offs_r[None, :],
                 (alpha * g_core).to(grad_b_ptr.dtype.element_ty), mask=rr)
        tl.store(grad_alpha_ptr, tl.sum(tl.sum(b.to(tl.float32) * g_core, axis=1), axis=0)
                 .to(grad_alpha_ptr.dtype.element_ty))
        tl.store(count_ptr, 0)  # ready for the next launch on this stream


@triton.jit(do_not_specialize=["M", "R", "stride_u", "stride_gc", "stride_b0", "stride_b1"])
def core_grads_kernel(u_ptr, gc_ptr, b_ptr, alpha_ptr, share_ptr, count_ptr, grad_b_ptr, grad_alpha_ptr,
                      M, R, stride_u, stride_gc, stride_b0, stride_b1,
                      RP: tl.constexpr, BM: tl.constexpr, PB: tl.constexpr):
    core_grads_program(tl.program_id(0), tl.num_programs(0), u_ptr, gc_ptr, b_ptr, alpha_ptr, share_ptr,
                       count_ptr, grad_b_ptr, grad_alpha_ptr, M, R, stride_u, stride_gc, stride_b0, stride_b1,
                       RP, BM, PB)


@triton.jit
def tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Grouped order: GROUP_M row-blocks share each column-block of W while it is in L2."""
    num_in_group = GROUP_M * num_pid_n
    first_m = (tile_id // num_in_group) * GROUP_M
    group_m = min(num_pid_m - first_m, GROUP_M)
    return first_m + (tile_id % group_m), (tile_id % num_in_group) // group_m


@triton.jit
def fmix32(x):
    """MurmurHash3's finalizer on uint32 words (every operation modulo 2³²): a bijection in
    which each output bit depends on each input bit."""
    x = x ^ (x >> 16)
    x = x * 0x85EBCA6B  # a uint32 constant (≥ 2³¹): the product stays uint32 and wraps
    x = x ^ (x >> 13)
    x = x * 0xC2B2AE35
    return x ^ (x >> 16)


@triton.jit
def row_hash(seed_lo, seed_hi, rows):
    """h_row = fmix32(s_lo ^ fmix32(i_lo ^ fmix32(i_hi ^ s_hi))) (uint32) for rows i (int64 ≥ 0,
    halves i_lo = i mod 2³², i_hi = ⌊i / 2³²⌋) and the seed's halves s_lo, s_hi (int32 ≥ 0):
    the dropout mask's per-row state (kernel_mask.py)."""
    h = fmix32((rows >> 32).to(tl.uint32) ^ seed_hi.to(tl.uint32))
    h = fmix32(rows.to(tl.uint32) ^ h)  # int64 → uint32 keeps the low 32 bits
    return fmix32(seed_lo.to(tl.uint32) ^ h)


@triton.jit
def keep_tile(h_row, col0, keep_below, BN: tl.constexpr, BITS: tl.constexpr):
    """The dropout keep-mask (bool, rows × BN) of rows with :func:`row_hash` ``h_row`` and columns
    col0 … col0 + BN − 1, in the layout the mask is used in (kernel_mask.py defines both masks).

    Pairs (BN and col0 even; T = ``keep_below``, 0 < T < 2¹⁶): with h = fmix32(h_row(i) ^ (k ·
    0x9E3779B9 mod 2³²)) for the pair of columns k = ⌊j / 2⌋, element (i, 2k) is kept iff
    h mod 2¹⁶ ≥ T and (i, 2k + 1) iff ⌊h / 2¹⁶⌋ ≥ T (as h ≥ T · 2¹⁶): the two halves' decisions
    are joined as the even and odd columns, which the tensor cores' accumulator keeps in one thread.

    ``BITS`` (p = 1/2; BN and col0 multiples of 128): with h = fmix32(h_row(i) ^ (g · 0x9E3779B9
    mod 2³²)) for the group g = 4 ⌊j / 128⌋ + ⌊j / 2⌋ mod 4, element (i, j) is kept iff bit
    2 ⌊(j mod 128) / 8⌋ + j mod 2 of h is set: a group is the 32 elements of a row that one thread
    of the accumulator holds in each 128 columns (columns 8t + 2c and 8t + 2c + 1, t < 16), so one
    hash decides 32 elements and no data moves between threads."""
    if BITS:
        groups = (col0 // 32 + tl.arange(0, BN // 32)).to(tl.uint32) * 0x9E3779B9
        h = tl.reshape(fmix32(h_row[:, None] ^ groups[None, :]), (h_row.shape[0], BN // 128, 4))
        # each join adds a last axis of size 2 holding bit offsets 0 and 1, 2, 4, 8, 16 in turn:
        # j mod 2 first, then the four bits of t = ⌊(j mod 128) / 8⌋, lowest first
        h = tl.join(h, h >> 1)
        h = tl.join(h, h >> 2)
        h = tl.join(h, h >> 4)
        h = tl.join(h, h >> 8)
        h = tl.join(h, h >> 16)  # axes: i, ⌊j / 128⌋, c = ⌊j / 2⌋ mod 4, j mod 2, then t's bits 0 … 3
        return tl.reshape(tl.permute((h & 1) != 0, (0, 1, 7, 6, 5, 4, 2, 3)), (h_row.shape[0], BN))
    pairs = (col0 // 2 + tl.arange(0, BN // 2)).to(tl.uint32) * 0x9E3779B9
    h = fmix32(h_row[:, None] ^ pairs[None, :])
    below = keep_below.to(tl.uint32)
    return tl.reshape(tl.join((h & 0xFFFF) >= below, h >= (below << 16)), (h_row.shape[0], BN))


@triton.jit(do_not_specialize=["M", "N", "row_offset", "seed_lo", "seed_hi", "keep_below"])
def keep_mask_kernel(out_ptr, M, N, row_offset, seed_lo, seed_hi, keep_below, BM: tl.constexpr, BN: tl.constexpr,
                     BITS: tl.constexpr):
    """out (M × N bool, row-major) = the keep-mask of rows row_offset … row_offset + M − 1 of the
    output: :func:`keep_tile`, one tile per program."""
    num_pid_n = tl.cdiv(N, BN)
    rows = ((tl.program_id(0) // num_pid_n) * BM + tl.arange(0, BM)).to(tl.int64)
    col0 = (tl.program_id(0) % num_pid_n) * BN
    cols = col0 + tl.arange(0, BN)
    keep = keep_tile(row_hash(seed_lo, seed_hi, rows + row_offset), col0, keep_below, BN, BITS)
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], keep, mask=(rows < M)[:, None] & (cols < N)[None, :])


@triton.jit(do_not_specialize=["M", "N", "R", "stride_g", "stride_c", "stride_out", "seed_lo", "seed_hi",
                               "keep_below", "scale_bits"])
def masked_projection_kernel(g_ptr, c_ptr, out_ptr, M, N, R, stride_g, stride_c, stride_out, seed_lo, seed_hi,
                             keep_below, scale_bits, RP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                             BITS: tl.constexpr):
    """out = (g ∘ keep) cᵀ · scale for g (M × N) and c (R × N), both row-major with 16-byte
    aligned rows (TMA loads; zeros past the edges), the keep-mask of :func:`keep_tile` and
    ``scale_bits`` the bits of the float32 scale: one program per BM rows reads them once; the
    mask is applied exactly (a select), the scale once to the float32 sum."""
    g_desc = tl.make_tensor_descriptor(g_ptr, shape=[M, N], strides=[stride_g, 1], block_shape=[BM, BN])
    c_desc = tl.make_tensor_descriptor(c_ptr, shape=[R, N], strides=[stride_c, 1], block_shape=[RP, BN])
    om = tl.program_id(0) * BM
    rows = (om + tl.arange(0, BM)).to(tl.int64)
    h_row = row_hash(seed_lo, seed_hi, rows)
    acc = tl.zeros((BM, RP), dtype=tl.float32)
    for on in range(0, N, BN):
        g = tl.where(keep_tile(h_row, on, keep_below, BN, BITS), g_desc.load([om, on]), 0.0)
        acc = tl.dot(g, c_desc.load([0, on]).T, acc)
    acc = acc * scale_bits.to(tl.float32, bitcast=True)
    offs_r = tl.arange(0, RP)
    tl.store(out_ptr + rows[:, None] * stride_out + offs_r[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(rows < M)[:, None] & (offs_r < R)[None, :])


@triton.jit
def load_core(core_ptr, stride0, stride1, R, RP: tl.constexpr):
    """The r × r core as an RP × RP float tile, zeros past r: loaded once per program."""
    offs_r = tl.arange(0, RP)
    return tl.load(core_ptr + offs_r[:, None] * stride0 + offs_r[None, :] * stride1,
                   mask=(offs_r[:, None] < R) & (offs_r[None, :] < R), other=0.0)


@triton.jit
def scaled_rows(ut, core, scale, HAS_CORE: tl.constexpr, HAS_SCALE: tl.constexpr):
    """scale · (u core) for a (BM × r) tile of u, taken in float32 and rounded to u's dtype (u itself
    without core and scale): the left factor of the GEMM's rank-r term."""
    if HAS_CORE or HAS_SCALE:
        t = tl.dot(ut, core) if HAS_CORE else ut.to(tl.float32)
        if HAS_SCALE:
            t = t * scale
        ut = t.to(ut.dtype)
    return ut


# Integer arguments are not specialized on their values (Triton would compile again for every
# size that is, or is not, a multiple of 16): one compiled kernel per layout serves all shapes.
@triton.jit(do_not_specialize=["M", "N", "K", "R", "stride_x", "stride_w", "stride_u", "stride_v",
                               "stride_core0", "stride_core1", "stride_y", "seed_lo", "seed_hi",
                               "keep_below", "scale_bits"])
def lowrank_matmul_kernel(x_ptr, w_ptr, u_ptr, v_ptr, core_ptr, scale_ptr, bias_ptr, out_ptr,
                          y_ptr, share_ptr, count_ptr, grad_core_ptr, grad_scale_ptr, M, N, K, R,
                          stride_x, stride_w, stride_u, stride_v, stride_core0, stride_core1, stride_y,
                          seed_lo, seed_hi, keep_below, scale_bits, W_T: tl.constexpr, V_T: tl.constexpr,
                          RP: tl.constexpr, HAS_CORE: tl.constexpr,
                          HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, NUM_SMS: tl.constexpr,
                          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                          CORE_GRADS: tl.constexpr, GRAD_PROGRAMS: tl.constexpr, PB: tl.constexpr,
                          DROPOUT: tl.constexpr, BITS: tl.constexpr, ACCUMULATE: tl.constexpr):
    # TMA descriptors over the row-major storage; W and V may be stored transposed (W_T, V_T).
    x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[stride_x, 1], block_shape=[BM, BK])
    if W_T:
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[stride_w, 1], block_shape=[BN, BK])
    else:
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[K, N], strides=[stride_w, 1], block_shape=[BK, BN])
    u_desc = tl.make_tensor_descriptor(u_ptr, shape=[M, R], strides=[stride_u, 1], block_shape=[BM, RP])
    if V_T:
        v_desc = tl.make_tensor_descriptor(v_ptr, shape=[N, R], strides=[stride_v, 1], block_shape=[BN, RP])
    else:
        v_desc = tl.make_tensor_descriptor(v_ptr, shape=[R, N], strides=[stride_v, 1], block_shape=[RP, BN])
    # the output is stored in two halves: the freed shared memory leaves room for the rank-r tiles
    out_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN // 2])
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    k_tiles = tl.cdiv(K, BK)
    core = 0.0  # the r × r core, once per program (zeros past r), where there is one
    if HAS_CORE:
        core = load_core(core_ptr, stride_core0, stride_core1, R, RP)
    scale = 1.0
    if HAS_SCALE:
        scale = tl.load(scale_ptr).to(tl.float32)
    # persistent: one program per multiprocessor; flatten=True pipelines loads across tiles. Not
    # with DROPOUT: there (Triton 3.6 and 3.9, sm_90a, either mask), with the rank-r term first, the
    # flattened loop leaves the K loop's tensor-core products unpipelined (no wgmma.wait_group 1 in
    # the PTX); unflattened it pipelines them
    for tile_id in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_SMS, flatten=not DROPOUT):
        pid_m, pid_n = tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        om = pid_m * BM
        on = pid_n * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        if DROPOUT:  # the rank-r term first (as below), dropped out in the accumulator: keep · scale
            ut = scaled_rows(u_desc.load([om, 0]), core, scale, HAS_CORE, HAS_SCALE)
            acc = tl.dot(ut, v_desc.load([on, 0]).T, acc) if V_T else tl.dot(ut, v_desc.load([0, on]), acc)
            keep = keep_tile(row_hash(seed_lo, seed_hi, (om + tl.arange(0, BM)).to(tl.int64)), on, keep_below, BN,
                             BITS)
            acc = tl.where(keep, acc * scale_bits.to(tl.float32, bitcast=True), 0.0)
        for ki in range(k_tiles):
            ok = ki * BK
            a = x_desc.load([om, ok])
            if W_T:
                acc = tl.dot(a, w_desc.load([on, ok]).T, acc)
            else:
                acc = tl.dot(a, w_desc.load([ok, on]), acc)
        if not DROPOUT:
            # the rank-r term: one more tensor-core product onto the same accumulator (columns
            # past r are zeros from the descriptors' bounds)
            ut = scaled_rows(u_desc.load([om, 0]), core, scale, HAS_CORE, HAS_SCALE)
            acc = tl.dot(ut, v_desc.load([on, 0]).T, acc) if V_T else tl.dot(ut, v_desc.load([0, on]), acc)
        if HAS_BIAS:
            offs_n = on + tl.arange(0, BN)
            acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        halves = tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1))
        left, right = tl.split(halves)
        if ACCUMULATE:  # onto what out holds (a sibling layer's ∂x): one rounding of the sum
            left += out_desc.load([om, on]).to(tl.float32)
            right += out_desc.load([om, on + BN // 2]).to(tl.float32)
        out_desc.store([om, on], left.to(out_desc.dtype))
        out_desc.store([om, on + BN // 2], right.to(out_desc.dtype))
    if CORE_GRADS:
        # scale · yᵀ u and ⟨core, uᵀ y⟩ (the fused layer's ∂B and ∂α), after their tiles, by the
        # programs that have one tile fewer than the others (all of them if none has)
        grid = tl.num_programs(0)
        light = (grid - num_pid_m * num_pid_n % grid - 1) % grid + 1
        programs = min(min(light, GRAD_PROGRAMS), num_pid_m)
        pid = tl.program_id(0) - (grid - light)
        if (pid >= 0) & (pid < programs):
            core_grads_program(pid, programs, y_ptr, u_ptr, core_ptr, scale_ptr, share_ptr, count_ptr,
                               grad_core_ptr, grad_scale_ptr, M, R, stride_y, stride_u, stride_core1,
                               stride_core0, RP, BM, PB)
