"""Host-side drivers of the device kernels: launch shapes, split-K, the blocked Cholesky.

Everything here takes and returns Numba device arrays that are already
validated and of one float dtype; nothing synchronises with the host except
where a scalar result is read back (:func:`dot`, :func:`trace`).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from . import _kernels as K
from ._arrays import empty, geometry

#: Split-K workspaces are capped at this many bytes.
WORKSPACE_BYTES = 512 * 1024**2


def syrk(X, out, alpha: float, beta: float, info, *, w=None, geo: Optional[K.Geometry] = None, scratch=None) -> None:
    """``out = beta*out + alpha * X^T diag(w) X`` on the device, both triangles.

    X is (K, M) with any strides, ``out`` (M, M).  When the lower-triangle tiles
    alone would leave the GPU idle (few, long inner products: small M, large K)
    the inner dimension is split over more blocks; their partial sums are added in
    a fixed order by a second kernel, so the result does not depend on scheduling.
    ``beta == 0`` never reads ``out``.  ``scratch`` holds the placeholders for the
    unused arguments (:func:`placeholders`) when the caller launches many times.
    """
    dtype = np.dtype(X.dtype)
    geo = geo or geometry(dtype)
    k_len, m = X.shape
    # consecutive threads walk the axis with the smaller stride
    walk_m = abs(X.strides[1]) <= abs(X.strides[0])
    tiles = -(-m // geo.tile)
    ntiles = tiles * (tiles + 1) // 2
    side = geo.tile // geo.micro
    nthreads = side * side

    target = geo.min_blocks or 2 * K.multiprocessors()
    splits = 1
    if ntiles < target:
        by_depth = max(1, k_len // (4 * geo.depth))  # at least 4 staged slices per split
        by_memory = max(1, WORKSPACE_BYTES // (m * m * dtype.itemsize))
        splits = max(1, min(-(-target // ntiles), by_depth, by_memory))
    kchunk = -(-k_len // (splits * geo.depth)) * geo.depth
    splits = -(-k_len // kchunk)

    kernel = K.syrk_kernel(dtype, geo.tile, geo.micro, geo.depth, walk_m, w is not None)
    no_w, no_ws = scratch or placeholders(dtype)
    w_arg = w if w is not None else no_w
    a = dtype.type(alpha)
    b = dtype.type(beta)
    if splits == 1:
        kernel[(ntiles, 1), nthreads](X, w_arg, out, no_ws, a, b, kchunk, info)
        return
    ws = empty((splits, m, m), dtype)
    kernel[(ntiles, splits), nthreads](X, w_arg, out, ws, a, b, kchunk, info)
    bx = min(32, geo.threads)
    by = max(1, geo.threads // bx)
    K.sym_reduce_kernel(dtype)[(-(-m // bx), -(-m // by)), (bx, by)](ws, out, a, b)


def ema(batch, out, alpha: float, beta: float) -> None:
    """``out = beta*out + alpha*batch`` for symmetric device ``batch`` (P, P), both triangles
    (the fixed-order reduction kernel over one partial)."""
    dtype = np.dtype(out.dtype)
    geo = geometry(dtype)
    m = out.shape[0]
    bx = min(32, geo.threads)
    by = max(1, geo.threads // bx)
    ws = batch.reshape(1, m, m)
    K.sym_reduce_kernel(dtype)[(-(-m // bx), -(-m // by)), (bx, by)](ws, out, dtype.type(alpha), dtype.type(beta))


def placeholders(dtype):
    """Tiny arrays passed where a SYRK launch has no weights / no split-K workspace."""
    return empty(1, dtype), empty((1, 1, 1), dtype)


def prepare(F, W, damping: float, scale=None) -> None:
    """``W = sym(lower(F)) (* s s^T) + damping I`` (``W`` may be ``F``)."""
    dtype = np.dtype(W.dtype)
    geo = geometry(dtype)
    n = W.shape[0]
    bx = min(32, geo.threads)
    by = max(1, geo.threads // bx)
    s = scale if scale is not None else empty(1, dtype)
    K.sym_prepare[(-(-n // bx), -(-n // by)), (bx, by)](F, W, dtype.type(damping), s, scale is not None)


def cholesky(W, info, geo: Optional[K.Geometry] = None) -> None:
    """Blocked right-looking Cholesky of the symmetric work matrix ``W`` in place.

    Per panel of ``chol_block`` columns: factor the diagonal block (one thread
    block), solve the panel below it (rows spread over blocks), and update the
    trailing matrix with the SYRK kernel (``alpha = -1``, ``beta = 1``), reading
    the panel's transpose from the upper triangle (row-major, coalesced).
    """
    dtype = np.dtype(W.dtype)
    geo = geo or geometry(dtype)
    n = W.shape[0]
    nb = geo.chol_block
    potf2 = K.potf2_kernel(dtype)
    panel = K.trsm_panel_kernel(dtype, nb, geo.panel_rows)
    scratch = placeholders(dtype)
    for k0 in range(0, n, nb):
        kb = min(nb, n - k0)
        potf2[1, geo.threads](W, k0, kb, info)
        rest = n - k0 - kb
        if rest > 0:
            panel[-(-rest // geo.panel_rows), geo.panel_rows](W, k0, kb, info)
            syrk(W[k0 : k0 + kb, k0 + kb :], W[k0 + kb :, k0 + kb :], -1.0, 1.0, info, geo=geo, scratch=scratch)


def cholesky_pair(W0, info0, W1, info1) -> None:
    """Factor two matrices (K-FAC's factors): one launch, one block each, when both are small."""
    dtype = np.dtype(W0.dtype)
    geo = geometry(dtype)
    if max(W0.shape[0], W1.shape[0]) <= geo.batched_max:
        K.potf2_batched_kernel(dtype)[2, geo.threads](W0, info0, W1, info1)
    else:
        cholesky(W0, info0, geo)
        cholesky(W1, info1, geo)


def potrs(W, Y, info) -> None:
    """Solve ``L L^T X = Y`` in place with a factored work matrix; Y is (n, K)."""
    dtype = np.dtype(W.dtype)
    geo = geometry(dtype)
    forward, backward = K.trsv_kernels(dtype, geo.chol_block, geo.threads)
    k = Y.shape[1]
    forward[k, geo.threads](W, Y, info)
    backward[k, geo.threads](W, Y, info)


def sample_rhs(J, G, s):
    """``V = diag(s) J G``: (N, K), one block per output."""
    dtype = np.dtype(J.dtype)
    geo = geometry(dtype)
    V = empty((J.shape[0], G.shape[1]), dtype)
    K.rows_dot_kernel(dtype, geo.threads)[(J.shape[0], G.shape[1]), geo.threads](J, G, s, V)
    return V


def woodbury_back(J, s, U, G, damping: float):
    """``X = (G - J^T diag(s) U) / damping``: (P, K)."""
    dtype = np.dtype(J.dtype)
    geo = geometry(dtype)
    p = J.shape[1]
    X = empty((p, G.shape[1]), dtype)
    K.woodbury_update_kernel(dtype, geo.threads)[(-(-p // geo.threads), G.shape[1]), geo.threads](
        J, s, U, G, X, dtype.type(damping)
    )
    return X


def dot(a, b) -> float:
    """``a . b`` of two 1-D device arrays, accumulated in float64, deterministic."""
    geo = geometry(np.float64)
    blocks = min(-(-a.shape[0] // geo.threads), geo.max_grid)
    partial = empty(blocks, np.float64)
    K.dot_kernel(geo.threads)[blocks, geo.threads](a, b, partial)
    parts = partial.copy_to_host()
    try:
        return math.fsum(parts)
    except (OverflowError, ValueError):  # inf or nan among the partials: let them propagate
        return float(sum(float(v) for v in parts))


def trace(A) -> float:
    """``tr A`` of a square device array, accumulated in float64."""
    geo = geometry(np.float64)
    out = empty(1, np.float64)
    K.trace_kernel(geo.threads)[1, geo.threads](A, out)
    return float(out.copy_to_host()[0])
