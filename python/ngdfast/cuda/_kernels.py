"""The CUDA kernels of ``ngdfast.cuda`` (Numba), built per dtype and tile geometry.

Every kernel is made by a cached factory: the dtype and the tile sizes are
compile-time constants of the kernel (Numba freezes closure variables), so the
shared-memory tiles and the per-thread register tiles have fixed sizes and the
inner loops unroll.  The factories take a :class:`Geometry`; the defaults
(:data:`FLOAT32`, :data:`FLOAT64`) are sized for current NVIDIA GPUs, and the
simulator tests also run a tiny geometry so that multi-tile, split-K and
blocked-Cholesky paths are exercised at the small sizes the simulator can
afford.

Storage convention of the Cholesky kernels: a factored ``n x n`` work matrix
``W`` holds ``L`` in its lower triangle (diagonal included) and ``L^T`` in its
strict upper triangle, so that both triangular solves read rows (coalesced
loads) whatever the direction.

Failure convention: ``info`` is a 1-element int32 device array, 0 on success,
``k > 0`` when the leading minor of order ``k`` is not positive definite (as
LAPACK).  A kernel that finds ``info[0] != 0`` on entry returns at once, so a
failed factorisation stops all later work without a host round trip; the host
reads ``info`` once at the end.

Kernels must stay runnable in Numba's CUDA simulator too: only ``cuda.*``
through the module-level name ``cuda``, one ``cuda.shared.array`` per line,
every shared/local buffer written before it is read, and no arithmetic on
values that could overflow or be NaN when the simulator's NumPy scalars would
warn (pivots are checked before the square root and the divisions).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import cuda, float32, float64, int32, uint32

from . import _platform

_NUMBA_TYPES = {np.dtype(np.float32): float32, np.dtype(np.float64): float64}


@dataclass(frozen=True)
class Geometry:
    """Tile sizes of the kernels for one dtype.

    Attributes
    ----------
    tile : int
        Side of the output tile a SYRK thread block computes (``tile x tile``).
    micro : int
        Each SYRK thread accumulates ``micro x micro`` outputs in registers, so a
        block has ``(tile / micro)^2`` threads.
    depth : int
        Slice of the inner (summed) dimension staged in shared memory per step.
    chol_block : int
        Panel width of the blocked Cholesky factorisation and of the blocked
        triangular solves.
    threads : int
        Threads per block of the one-dimensional kernels (reductions, solves,
        matrix-vector products); a power of two.
    panel_rows : int
        Rows of the sub-diagonal panel one block solves in the Cholesky step.
    min_blocks : int
        Split the inner dimension of a SYRK (partial sums, then a fixed-order
        reduction) until about this many blocks run; 0 means twice the number
        of multiprocessors.
    batched_max : int
        K-FAC factors up to this order are factored by one thread block each in
        a single launch; larger ones by the blocked factorisation.
    max_grid : int
        Most blocks per grid dimension of the grid-stride kernels (finiteness
        checks, copies, reductions).
    """

    tile: int
    micro: int
    depth: int
    chol_block: int
    threads: int
    panel_rows: int
    min_blocks: int = 0
    batched_max: int = 128
    max_grid: int = 1024

    def __post_init__(self):
        per_side = self.tile // self.micro
        nthreads = per_side * per_side
        if self.tile % self.micro or (self.depth * self.tile) % nthreads:
            raise ValueError(f"inconsistent SYRK geometry {self}")
        if self.threads & (self.threads - 1) or self.threads < 2:
            raise ValueError(f"threads must be a power of two >= 2, got {self.threads}")


#: 128 x 128 output tiles, 8 x 8 per thread (256 threads), 34 KiB of shared memory.
FLOAT32 = Geometry(tile=128, micro=8, depth=16, chol_block=64, threads=256, panel_rows=64)
#: 64 x 64 output tiles, 4 x 4 per thread (256 threads), 34 KiB of shared memory.
FLOAT64 = Geometry(tile=64, micro=4, depth=16, chol_block=32, threads=256, panel_rows=64)


def _nb(dtype):
    return _NUMBA_TYPES[np.dtype(dtype)]


def _supports_alignment() -> bool:
    # cuda.shared.array(..., alignment=) is recent in numba-cuda; the simulator rejects it
    if _platform.SIMULATOR:
        return False
    try:
        return "alignment" in inspect.signature(cuda.shared.array).parameters
    except (TypeError, ValueError):
        return False


def _shared_allocator(nb, size, aligned):
    """Device function returning a kernel's ``size``-element shared array, 16-byte aligned if asked."""
    if aligned:

        @cuda.jit(device=True, inline="always")
        def allocate():
            return cuda.shared.array(size, nb, alignment=16)

    else:

        @cuda.jit(device=True, inline="always")
        def allocate():
            return cuda.shared.array(size, nb)

    return allocate


# ----------------------------------------------------------------------------------------
# SYRK: out = beta * out + alpha * X^T X (lower tiles computed, mirrored)


@cuda.jit(device=True)
def _lower_tile(t):
    """(row, col) of the t-th tile of the lower triangle, row-major: t = r(r+1)/2 + c."""
    r = int32((math.sqrt(8.0 * t + 1.0) - 1.0) * 0.5)
    # the float estimate can be off by one for large t
    while (r + 1) * (r + 2) // 2 <= t:
        r += 1
    while r * (r + 1) // 2 > t:
        r -= 1
    return r, t - r * (r + 1) // 2


@cuda.jit(device=True, inline="always")
def _block_sum(buf, tid, T):
    """Tree-sum the block's shared ``buf[0:T]`` (T a power of two) into ``buf[0]``."""
    cuda.syncthreads()
    h = T // 2
    while h > 0:
        if tid < h:
            buf[tid] = buf[tid] + buf[tid + h]
        cuda.syncthreads()
        h //= 2


@cuda.jit(device=True, inline="always")
def _store_symmetric(out, i, j, v, beta):
    """``out[i, j] = out[j, i] = v + beta * out`` (the EMA rule), out not read when beta == 0."""
    if beta != 0:
        out[i, j] = v + beta * out[i, j]
        if i != j:
            out[j, i] = v + beta * out[j, i]
    else:
        out[i, j] = v
        if i != j:
            out[j, i] = v


@lru_cache(maxsize=None)
def syrk_kernel(dtype, tile, micro, depth, walk_m, weighted):
    """``out = beta*out + alpha * X^T diag(w) X`` for X (K, M), out (M, M), both triangles.

    Launch: ``grid = (T (T + 1) / 2, splits)`` with ``T = ceil(M / tile)``,
    ``block = (tile / micro)^2``.  Block ``(t, s)`` computes the lower tile ``t``
    over the inner rows ``[s*kchunk, (s+1)*kchunk)``.  With one split it writes
    ``out`` (the EMA update) for ``i >= j`` and mirrors to ``(j, i)``, so the
    result is exactly symmetric whatever the rounding; with several it stores
    raw partial sums ``ws[s, i, j]`` (``i >= j``) for :func:`sym_reduce_kernel`.

    ``walk_m`` says which axis consecutive threads walk when loading a tile:
    the output axis (``X`` row-major, e.g. ``J`` for the Fisher) or the inner
    axis (e.g. ``J^T`` for the sample-space Gram matrix), so loads coalesce.
    ``weighted`` multiplies the row-operand by ``w[k]`` when staging it.
    """
    nb = _nb(dtype)
    bm, tm, bk = tile, micro, depth
    side = bm // tm
    nthreads = side * side
    loads = (bk * bm) // nthreads
    # A thread's rows (and columns) come in runs of `vec` adjacent ones, runs
    # `side * vec` apart: the runs of a warp tile shared memory densely, so the
    # fragments load as 16-byte vectors without bank conflicts.
    vec = min(tm, 16 // np.dtype(dtype).itemsize)
    stride = side * vec
    # Rows of a staged slice are padded by 16 bytes: when consecutive threads load
    # along k (walk_m False) their stores then spread over the banks instead of all
    # hitting one, and rows stay 16-byte aligned for the vector loads.
    bmp = bm + vec
    slab = 2 * bk * bmp  # two buffers of a (bk x bmp) slice, per operand
    # one shared array: the row operand's slab, then the column operand's
    allocate = _shared_allocator(nb, 2 * slab, _supports_alignment())
    if tm % vec:
        raise ValueError(f"micro={tm} must be a multiple of {vec} for {np.dtype(dtype)}")

    @cuda.jit(device=True, inline="always")
    def slot(l):
        # (k, m) in the (bk x bm) slice of this thread's l-th element
        e = cuda.threadIdx.x + l * nthreads
        if walk_m:
            kk = e // bm
            return kk, e - kk * bm
        mm = e // bk
        return e - mm * bk, mm

    @cuda.jit(device=True, inline="always")
    def gather(X, w, k0, kend, m0, regs, scale):
        # global -> registers: this thread's share of the (bk x bm) slice
        M = X.shape[1]
        for l in range(loads):
            kk, mm = slot(l)
            k = k0 + kk
            m = m0 + mm
            if k < kend and m < M:
                if weighted and scale:
                    regs[l] = X[k, m] * w[k]
                else:
                    regs[l] = X[k, m]
            else:
                regs[l] = 0

    @cuda.jit(device=True, inline="always")
    def scatter(smem, base, buf, regs):
        # smem[base:base + slab] is [buffer][k][m], rows bmp long
        for l in range(loads):
            kk, mm = slot(l)
            smem[uint32(base + buf * (bk * bmp) + kk * bmp + mm)] = regs[l]

    @cuda.jit
    def syrk(X, w, out, ws, alpha, beta, kchunk, info):
        if info[0] != 0:
            return
        tid = cuda.threadIdx.x
        tx = tid % side
        ty = tid // side
        bi, bj = _lower_tile(cuda.blockIdx.x)
        i0 = bi * bm
        j0 = bj * bm
        M = X.shape[1]
        kbeg = cuda.blockIdx.y * kchunk
        kend = min(X.shape[0], kbeg + kchunk)

        stage = allocate()
        ra = cuda.local.array(loads, nb)
        rb = cuda.local.array(loads, nb)
        af = cuda.local.array(tm, nb)
        bf = cuda.local.array(tm, nb)
        acc = cuda.local.array((tm, tm), nb)
        for r in range(tm):
            for c in range(tm):
                acc[r, c] = 0

        nk = (kend - kbeg + bk - 1) // bk
        gather(X, w, kbeg, kend, i0, ra, True)
        gather(X, w, kbeg, kend, j0, rb, False)
        for kt in range(nk):
            # Double buffering: slice kt goes to buffer kt & 1 while the loads of
            # slice kt + 1 are in flight; buffer kt & 1 was last read in step
            # kt - 2, before everybody passed the barrier of step kt - 1.
            buf = kt & 1
            scatter(stage, 0, buf, ra)
            scatter(stage, slab, buf, rb)
            cuda.syncthreads()
            if kt + 1 < nk:
                k0 = kbeg + (kt + 1) * bk
                gather(X, w, k0, kend, i0, ra, True)
                gather(X, w, k0, kend, j0, rb, False)
            for kk in range(bk):
                # Unsigned shared-memory offsets: Numba skips the negative-index
                # wraparound for them, which leaves base + constant addresses
                # that the compiler merges into 16-byte vector loads.
                a0 = uint32(buf * (bk * bmp) + kk * bmp + ty * vec)
                b0 = uint32(slab + buf * (bk * bmp) + kk * bmp + tx * vec)
                for r in range(tm):
                    af[r] = stage[a0 + uint32((r % vec) + (r // vec) * stride)]
                for c in range(tm):
                    bf[c] = stage[b0 + uint32((c % vec) + (c // vec) * stride)]
                for r in range(tm):
                    for c in range(tm):
                        acc[r, c] += af[r] * bf[c]

        split = cuda.gridDim.y > 1
        for r in range(tm):
            i = i0 + ty * vec + (r % vec) + (r // vec) * stride
            if i < M:
                for c in range(tm):
                    j = j0 + tx * vec + (c % vec) + (c // vec) * stride
                    # i >= j only: the value at (j, i) is the same number, so the
                    # result is exactly symmetric even where X^T W X rounds
                    # differently from (W X)^T X
                    if j <= i:
                        if split:
                            ws[cuda.blockIdx.y, i, j] = acc[r, c]
                        else:
                            _store_symmetric(out, i, j, alpha * acc[r, c], beta)

    return syrk


@lru_cache(maxsize=None)
def sym_reduce_kernel(dtype):
    """Sum the split-K partials ``ws[:, i, j]`` in a fixed order and apply the EMA update.

    Launch over a 2-D grid covering ``(M, M)`` (x along columns); only ``i >= j`` work
    and mirror to ``(j, i)``.
    """

    @cuda.jit
    def sym_reduce(ws, out, alpha, beta):
        j, i = cuda.grid(2)
        M = out.shape[0]
        if i < M and j <= i:
            s = ws[0, i, j]
            for p in range(1, ws.shape[0]):
                s += ws[p, i, j]
            _store_symmetric(out, i, j, alpha * s, beta)

    return sym_reduce


# ----------------------------------------------------------------------------------------
# elementwise helpers: finiteness, casts and copies, symmetric preparation


@cuda.jit
def nonfinite_1d(a, flag):
    """``flag[0] = 1`` when some element of the 1-D array ``a`` is NaN or Inf."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, a.shape[0], stride):
        if not math.isfinite(a[i]):
            flag[0] = 1


@cuda.jit
def nonfinite_2d(a, flag):
    """``flag[0] = 1`` when some element of the 2-D array ``a`` is NaN or Inf."""
    j0, i0 = cuda.grid(2)
    sj, si = cuda.gridsize(2)
    for i in range(i0, a.shape[0], si):
        for j in range(j0, a.shape[1], sj):
            if not math.isfinite(a[i, j]):
                flag[0] = 1


@cuda.jit
def copy_1d(src, dst):
    """``dst[:] = src`` with the dtype conversion of the store (any strides)."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, src.shape[0], stride):
        dst[i] = src[i]


@cuda.jit
def copy_2d(src, dst):
    """``dst[:, :] = src`` with the dtype conversion of the store (any strides)."""
    j0, i0 = cuda.grid(2)
    sj, si = cuda.gridsize(2)
    for i in range(i0, src.shape[0], si):
        for j in range(j0, src.shape[1], sj):
            dst[i, j] = src[i, j]


@cuda.jit
def sym_prepare(F, W, damping, s, scaled):
    """``W = sym(lower(F)) (* s s^T) + damping I``: reads only ``F[i, j], i >= j``.

    ``W`` may be ``F`` itself: element ``(i, j)`` is read by its own thread only.
    """
    j, i = cuda.grid(2)
    n = W.shape[0]
    if i < n and j <= i:
        v = F[i, j]
        if scaled:
            v = v * s[i] * s[j]
        if i == j:
            v += damping
        W[i, j] = v
        W[j, i] = v


# ----------------------------------------------------------------------------------------
# Cholesky


@cuda.jit(device=True)
def _potf2(W, k0, kb, info, flag, base):
    """Unblocked right-looking Cholesky of ``W[k0:k0+kb, k0:k0+kb]`` by one thread block.

    Writes L (lower) and L^T (strict upper) of the block.  On a pivot that is not
    > 0 and finite, sets ``info[0] = base + k0 + j + 1`` and stops (every thread
    leaves the loop together after the barrier).  ``flag`` is a 1-element shared array.
    """
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for j in range(kb):
        jj = k0 + j
        if tid == 0:
            d = W[jj, jj]
            if d > 0 and math.isfinite(d):
                W[jj, jj] = math.sqrt(d)
                flag[0] = 0
            else:
                info[0] = base + jj + 1
                flag[0] = 1
        cuda.syncthreads()
        if flag[0] != 0:
            return
        djj = W[jj, jj]
        for i in range(j + 1 + tid, kb, nt):
            v = W[k0 + i, jj] / djj
            W[k0 + i, jj] = v
            W[jj, k0 + i] = v
        cuda.syncthreads()
        # rank-1 update of the remaining lower triangle of the block
        m = kb - j - 1
        for e in range(tid, m * m, nt):
            a = e // m
            b = e - a * m
            if b <= a:
                i = jj + 1 + a
                l = jj + 1 + b
                W[i, l] -= W[i, jj] * W[l, jj]
        cuda.syncthreads()


@lru_cache(maxsize=None)
def potf2_kernel(dtype):
    """Factor the diagonal block ``W[k0:k0+kb, k0:k0+kb]`` (launch with one block)."""

    @cuda.jit
    def potf2(W, k0, kb, info):
        flag = cuda.shared.array(1, int32)
        if info[0] != 0:
            return
        _potf2(W, k0, kb, info, flag, 0)

    return potf2


@lru_cache(maxsize=None)
def potf2_batched_kernel(dtype):
    """Factor two whole matrices at once, one thread block each (K-FAC's A and S).

    Launch with ``grid = 2``; block 0 factors ``W0`` (failures in ``info0``), block 1 ``W1``.
    """

    @cuda.jit
    def potf2_batched(W0, info0, W1, info1):
        flag = cuda.shared.array(1, int32)
        if cuda.blockIdx.x == 0:
            if info0[0] == 0:
                _potf2(W0, 0, W0.shape[0], info0, flag, 0)
        else:
            if info1[0] == 0:
                _potf2(W1, 0, W1.shape[0], info1, flag, 0)

    return potf2_batched


@lru_cache(maxsize=None)
def trsm_panel_kernel(dtype, chol_block, panel_rows):
    """Sub-diagonal panel of a Cholesky step: ``L21 = A21 L11^-T``, rows ``i >= k0 + kb``.

    One block solves ``panel_rows`` rows (one row per thread) against ``L11``, both
    staged in shared memory; writes ``L21`` and its transpose (the upper triangle).
    Launch with ``grid = ceil((n - k0 - kb) / panel_rows)``, ``block = panel_rows``.
    """
    nb = _nb(dtype)
    NB = chol_block
    R = panel_rows
    padded = (R, NB + 1)

    @cuda.jit
    def trsm_panel(W, k0, kb, info):
        l11 = cuda.shared.array((NB, NB), nb)
        # one column of padding: threads read rows[tid, l], and a stride of NB words
        # would put a whole warp on one bank
        rows = cuda.shared.array(padded, nb)
        if info[0] != 0:
            return
        tid = cuda.threadIdx.x
        n = W.shape[0]
        r0 = k0 + kb + cuda.blockIdx.x * R
        for e in range(tid, kb * kb, R):
            a = e // kb
            b = e - a * kb
            l11[a, b] = W[k0 + a, k0 + b] if b <= a else 0
        for e in range(tid, R * kb, R):
            a = e // kb
            b = e - a * kb
            rows[a, b] = W[r0 + a, k0 + b] if r0 + a < n else 0
        cuda.syncthreads()
        if r0 + tid < n:
            for c in range(kb):
                v = rows[tid, c]
                for l in range(c):
                    v -= rows[tid, l] * l11[c, l]
                rows[tid, c] = v / l11[c, c]
        cuda.syncthreads()
        for e in range(tid, R * kb, R):
            a = e // kb
            b = e - a * kb
            if r0 + a < n:
                W[r0 + a, k0 + b] = rows[a, b]
        # transpose: consecutive threads take consecutive rows -> contiguous columns
        for e in range(tid, R * kb, R):
            b = e // R
            a = e - b * R
            if r0 + a < n:
                W[k0 + b, r0 + a] = rows[a, b]

    return trsm_panel


@lru_cache(maxsize=None)
def trsv_kernels(dtype, chol_block, threads):
    """Blocked triangular solves with a factored work matrix, in place on ``Y`` (n, K).

    ``forward``: ``L Y = Y``; ``backward``: ``L^T Y = Y``.  One block per right-hand
    side (``grid = K``, ``block = threads``).  Thread 0 solves each ``chol_block``
    diagonal block from a shared buffer; then all threads update the remaining
    rows, reading one row of the stored ``L^T`` (forward) or ``L`` (backward) at a
    time, so consecutive threads read consecutive words.
    """
    nb = _nb(dtype)
    NB = chol_block
    T = threads

    @cuda.jit
    def forward(W, Y, info):
        yb = cuda.shared.array(NB, nb)
        if info[0] != 0:
            return
        k = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        n = W.shape[0]
        for j0 in range(0, n, NB):
            jb = min(NB, n - j0)
            if tid == 0:
                for a in range(jb):
                    v = Y[j0 + a, k]
                    for b in range(a):
                        v -= W[j0 + a, j0 + b] * yb[b]
                    v = v / W[j0 + a, j0 + a]
                    yb[a] = v
                    Y[j0 + a, k] = v
            cuda.syncthreads()
            for i in range(j0 + jb + tid, n, T):
                v = Y[i, k]
                for b in range(jb):
                    v -= W[j0 + b, i] * yb[b]  # L^T[j0 + b, i] = L[i, j0 + b]
                Y[i, k] = v
            cuda.syncthreads()

    @cuda.jit
    def backward(W, Y, info):
        yb = cuda.shared.array(NB, nb)
        if info[0] != 0:
            return
        k = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        n = W.shape[0]
        nblk = (n + NB - 1) // NB
        for blk in range(nblk - 1, -1, -1):
            j0 = blk * NB
            jb = min(NB, n - j0)
            if tid == 0:
                for a in range(jb - 1, -1, -1):
                    v = Y[j0 + a, k]
                    for b in range(a + 1, jb):
                        v -= W[j0 + b, j0 + a] * yb[b]
                    v = v / W[j0 + a, j0 + a]
                    yb[a] = v
                    Y[j0 + a, k] = v
            cuda.syncthreads()
            for i in range(tid, j0, T):
                v = Y[i, k]
                for b in range(jb):
                    v -= W[j0 + b, i] * yb[b]  # L[j0 + b, i] = L^T[i, j0 + b]
                Y[i, k] = v
            cuda.syncthreads()

    return forward, backward


# ----------------------------------------------------------------------------------------
# reductions and matrix-vector products


@lru_cache(maxsize=None)
def dot_kernel(threads):
    """Per-block partial sums of ``a . b`` in float64 (``partial[blockIdx]``), 1-D inputs.

    The host adds the partials in a fixed order: the result is deterministic.
    """
    T = threads

    @cuda.jit
    def dot(a, b, partial):
        buf = cuda.shared.array(T, float64)
        tid = cuda.threadIdx.x
        # float(): float64 on the device; Python floats in the simulator, which
        # overflow to inf (as the device does) instead of raising NumPy warnings
        s = 0.0
        for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
            s += float(a[i]) * float(b[i])
        buf[tid] = s
        _block_sum(buf, tid, T)
        if tid == 0:
            partial[cuda.blockIdx.x] = buf[0]

    return dot


@lru_cache(maxsize=None)
def trace_kernel(threads):
    """``out[0] = sum_i A[i, i]`` in float64; launch with one block."""
    T = threads

    @cuda.jit
    def trace(A, out):
        buf = cuda.shared.array(T, float64)
        tid = cuda.threadIdx.x
        s = 0.0
        for i in range(tid, A.shape[0], T):
            s += float(A[i, i])
        buf[tid] = s
        _block_sum(buf, tid, T)
        if tid == 0:
            out[0] = buf[0]

    return trace


@lru_cache(maxsize=None)
def rows_dot_kernel(dtype, threads):
    """``V[i, k] = s[i] * (J[i, :] . G[:, k])`` (sample-space right-hand side ``W^1/2 J g``).

    Launch with ``grid = (N, K)``, ``block = threads``: one block per output, threads
    stride along the row of ``J`` (coalesced), then a shared-memory tree sum.
    """
    nb = _nb(dtype)
    T = threads

    @cuda.jit
    def rows_dot(J, G, s, V):
        buf = cuda.shared.array(T, nb)
        i = cuda.blockIdx.x
        k = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        acc = nb(0)
        for p in range(tid, J.shape[1], T):
            acc += J[i, p] * G[p, k]
        buf[tid] = acc
        _block_sum(buf, tid, T)
        if tid == 0:
            V[i, k] = buf[0] * s[i]

    return rows_dot


@lru_cache(maxsize=None)
def woodbury_update_kernel(dtype, threads):
    """``X[p, k] = (G[p, k] - sum_i J[i, p] s[i] U[i, k]) / damping`` (the Woodbury back-product).

    Launch with ``grid = (ceil(P / threads), K)``: one thread per parameter, reading
    ``J`` row by row (consecutive threads, consecutive words); the N coefficients
    ``s[i] U[i, k]`` are staged through shared memory ``threads`` at a time.
    """
    nb = _nb(dtype)
    T = threads

    @cuda.jit
    def woodbury_update(J, s, U, G, X, damping):
        coef = cuda.shared.array(T, nb)
        p = cuda.grid(1)
        k = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        n = J.shape[0]
        P = J.shape[1]
        acc = nb(0)
        for i0 in range(0, n, T):
            cuda.syncthreads()
            if i0 + tid < n:
                coef[tid] = s[i0 + tid] * U[i0 + tid, k]
            cuda.syncthreads()
            if p < P:
                for a in range(min(T, n - i0)):
                    acc += J[i0 + a, p] * coef[a]
        if p < P:
            X[p, k] = (G[p, k] - acc) / damping

    return woodbury_update


_MULTIPROCESSORS = {}


def multiprocessors() -> int:
    """Number of streaming multiprocessors of the current device (1 in the simulator)."""
    if _platform.SIMULATOR:
        return 1
    device = cuda.get_current_device()
    count = _MULTIPROCESSORS.get(device.id)
    if count is None:
        count = _MULTIPROCESSORS[device.id] = int(device.MULTIPROCESSOR_COUNT)
    return count
