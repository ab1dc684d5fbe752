"""The public kernels of ``ngdfast.cuda``: same names, signatures and semantics as ``ngdfast``.

Arguments are validated by :mod:`ngdfast._validation` (identical exceptions and
messages to the other modules), then everything runs on the device.  See
:mod:`ngdfast.cuda._arrays` for which kind of array comes back.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import _policy, _precision
from .. import _validation as V
from . import _linalg as L
from ._arrays import (
    DeviceArg,
    all_finite,
    cast,
    contiguous,
    device,
    device_copy,
    empty,
    first_device,
    may_share_memory,
    result,
    transpose_view,
    upload,
    wrap,
    zeros_info,
)

__all__ = ["damped_solve", "fisher", "kfac_precondition", "kl_step_size", "lowrank_solve", "natural_gradient"]


def _raise_if_failed(info, make_error) -> None:
    pivot = int(info.copy_to_host()[0])
    if pivot != 0:
        raise make_error(pivot)


def _diagonal_finite(d) -> bool:
    """Whether the diagonal of the C-contiguous square device array ``d`` is finite."""
    n = d.shape[0]
    return all_finite(DeviceArg(d.reshape(n * n)[:: n + 1]))


def _finite_solution(X, func: str, inputs, what: str = V.SOLUTION):
    """Device X, unless it holds NaN/Inf: then name a non-finite input, else report the overflow."""
    if not all_finite(DeviceArg(X)):
        raise V.solution_not_finite(func, what, np.dtype(X.dtype), inputs, all_finite)
    return X


def _lower(F):
    """What ``damped_solve`` reads of F, for naming it on an error path (host: the lower triangle)."""
    return F if isinstance(F, DeviceArg) else np.tril(F)


def _shaped(X, vector: bool):
    # a (P, 1) result for a (P,) right-hand side comes back as (P,)
    return X.reshape(X.shape[0]) if vector else X


def _answer(x, dtype, precision: str, return_info: bool):
    # No mixed-precision path on the GPU: float64 data is factored in float64, and
    # SolveInfo says so when "mixed" was asked for.
    return (x, _precision.plain(dtype, precision, "ngdfast.cuda")) if return_info else x


def fisher(J: Any, weights: Any = None, *, out: Any = None, decay: float = 0.0, check_finite: bool = True):
    r"""Fisher information ``F = sum_i w_i j_i j_i^T / sum_i w_i`` from score rows, on the GPU.

    .. math:: F = J^T \operatorname{diag}(\hat w) J, \qquad \hat w = w / \textstyle\sum_i w_i
              \quad (\hat w_i = 1/N \text{ without weights})

    Computed by a tiled shared-memory kernel over the lower-triangle tiles
    only; each value is written to ``(i, j)`` and ``(j, i)``, so ``F`` is
    exactly symmetric.

    Parameters
    ----------
    J : array (N, P)
        Score rows, NumPy or device array.
    weights : array (N,), optional
        Non-negative row weights, not all zero (normalised on the host).
    out : array (P, P), optional
        Running estimate updated in place, ``out <- decay*out + (1 - decay)*F``,
        and returned (the same object).  With ``decay == 0`` it is not read.
    decay : float
        EMA decay in [0, 1]; non-zero only with ``out``.
    check_finite : bool
        Raise ``ValueError`` on NaN/Inf in ``J`` (and in ``out`` when it is read), and
        ``NumericOverflowError`` when F overflows; with ``out`` F is then formed in a
        temporary (P x P on the device) first, so that a rejected call leaves ``out`` as it was.

    Returns
    -------
    F : (P, P) array of the kind of the first device argument (NumPy if none), or ``out``.
    """
    template = first_device(J, weights, out)
    Jv, w, outv, decay = V.fisher_args(wrap(J), wrap(weights), wrap(out), decay, check_finite, all_finite, cast)
    dtype = Jv.dtype
    n, p = Jv.shape
    Jd = device(Jv)
    wd = upload(w) if w is not None else None
    alpha = (1.0 - decay) * (1.0 if w is not None else 1.0 / n)
    info = zeros_info()
    if outv is None:
        F = empty((p, p), dtype)
        L.syrk(Jd, F, alpha, 0.0, info, w=wd)
        if check_finite and not _diagonal_finite(F):
            raise V.scores_not_finite(Jv, "fisher", V.FISHER_GRAM, all_finite)
        return result(F, template)
    if decay == 1.0:
        return out  # a no-op: out is kept, not updated with 0*F
    batch = None
    if check_finite:
        # out must not be written when F overflows: form F first, then the EMA from it
        batch = empty((p, p), dtype)
        L.syrk(Jd, batch, 1.0 if w is not None else 1.0 / n, 0.0, info, w=wd)
        if not _diagonal_finite(batch):
            raise V.gram_overflow("fisher", V.FISHER_GRAM, "J", dtype)
    if isinstance(outv, DeviceArg):
        target = outv.array  # updated in place
    elif decay == 0.0:
        # not read: no upload, just the same memory order for the copy back
        order = "C" if out.flags.c_contiguous else "F"
        target = empty((p, p), dtype, order)
    else:
        target = upload(out)
    if batch is not None:
        L.ema(batch, target, 1.0 - decay, decay)
    else:
        if isinstance(Jv, DeviceArg) and isinstance(outv, DeviceArg) and may_share_memory(Jd, target):
            Jd = device_copy(Jv)  # the kernel would read J while overwriting it
        L.syrk(Jd, target, alpha, decay, info, w=wd)
    if not isinstance(outv, DeviceArg):
        target.copy_to_host(out)
    return out


def _dense_solve(Fd, Gv, damping: float, func: str, overwrite_f: bool = False):
    """``(F + damping I)^-1 G`` from device F (lower triangle read) and G (P, K), left untouched
    unless ``overwrite_f`` (F is ours and becomes the factor)."""
    p = Fd.shape[0]
    W = Fd if overwrite_f else empty((p, p), Fd.dtype)
    L.prepare(Fd, W, damping)
    info = zeros_info()
    L.cholesky(W, info)
    Y = device_copy(Gv)
    L.potrs(W, Y, info)
    _raise_if_failed(info, lambda k: V.not_positive_definite(func, V.DENSE_MATRIX, k, p, damping))
    return Y


def damped_solve(
    F: Any, g: Any, damping: float, *, check_finite: bool = True, precision: str = "auto", return_info: bool = False
):
    r"""Solve ``(F + λI) x = g`` by a Cholesky factorisation on the GPU.

    .. math:: x = (F + \lambda I)^{-1} g = L^{-T} L^{-1} g, \qquad L L^T = F + \lambda I

    Blocked right-looking Cholesky (diagonal block, panel solve, SYRK trailing
    update), then blocked forward and backward substitution, one thread block
    per right-hand side.  Only the lower triangle ``F[i, j], i >= j`` is read.

    Parameters
    ----------
    F : array (P, P)
        Symmetric positive semi-definite matrix.
    g : array (P,) or (P, K)
        Right-hand side(s).
    damping : float
        λ >= 0.
    precision : {"auto", "double", "mixed"}
        Validated; the GPU kernels have no mixed-precision path (float64 data is
        factored in float64; with "mixed" the :class:`ngdfast.SolveInfo` says so).
    return_info : bool
        Also return a :class:`ngdfast.SolveInfo`.

    Returns
    -------
    x : array of g's shape.

    Raises
    ------
    ngdfast.NotPositiveDefiniteError
        When a Cholesky pivot is not > 0 and finite; ``.pivot`` is its 1-based index.
    """
    precision = V.precision_arg(precision, "damped_solve")
    template = first_device(F, g)
    Fv, Gv, damping, vector = V.damped_solve_args(wrap(F), wrap(g), damping, check_finite, all_finite, cast)
    Y = _dense_solve(device(Fv), Gv, damping, "damped_solve")
    _finite_solution(Y, "damped_solve", [(_lower(Fv), "F"), (Gv, "g")])
    return _answer(result(_shaped(Y, vector), template), Fv.dtype, precision, return_info)


def _sample_scale(w: Optional[np.ndarray], n: int, dtype):
    """``s = sqrt(w_hat)`` on the device: the rows of ``J_w = diag(s) J``."""
    s = np.full(n, 1.0 / np.sqrt(n)) if w is None else np.sqrt(np.asarray(w, dtype=np.float64))
    return upload(s.astype(dtype))


def _lowrank(Jv, w, Gv, damping: float, func: str):
    """Woodbury solve in sample space; returns the (P, K) device result."""
    n, p = Jv.shape
    dtype = Jv.dtype
    Jd = device(Jv)
    Gd = device(Gv)
    s = _sample_scale(w, n, dtype)
    # K = J_w J_w^T + λI: the Gram matrix of the rows of J by the SYRK kernel on J^T
    # (a strided view, loads walk along P), scaled by s_i s_j afterwards
    W = empty((n, n), dtype)
    info = zeros_info()
    L.syrk(transpose_view(Jd), W, 1.0, 0.0, info)
    if not _diagonal_finite(W):  # NaN/Inf in J, or its squares overflowed (before the damping)
        raise V.scores_not_finite(Jv, func, V.SAMPLE_GRAM, all_finite)
    L.prepare(W, W, damping, scale=s)
    L.cholesky(W, info)
    U = L.sample_rhs(Jd, Gd, s)  # J_w g
    L.potrs(W, U, info)  # (J_w J_w^T + λI)^-1 J_w g
    X = L.woodbury_back(Jd, s, U, Gd, damping)  # (g - J_w^T u) / λ
    _raise_if_failed(info, lambda k: V.not_positive_definite(func, V.SAMPLE_MATRIX, k, n, damping))
    return _finite_solution(X, func, [(Gv, "g")])


def lowrank_solve(
    J: Any,
    g: Any,
    damping: float,
    weights: Any = None,
    *,
    check_finite: bool = True,
    precision: str = "auto",
    return_info: bool = False,
):
    r"""``(J^T W J + λI)^{-1} g`` in sample space (Woodbury), never forming P x P, on the GPU.

    .. math:: J_w = \operatorname{diag}(\sqrt{\hat w}) J, \qquad
              x = \frac{1}{\lambda}\left(g - J_w^T (J_w J_w^T + \lambda I)^{-1} J_w g\right)

    Steps on the device: the N x N Gram matrix by the tiled SYRK kernel, its
    Cholesky factorisation, ``J_w g`` (one block per row), two triangular
    solves, ``J_w^T u`` (one thread per parameter).  O(N^2 P) work, O(N^2 + NP) memory.

    Parameters
    ----------
    J : array (N, P)
    g : array (P,) or (P, K)
    damping : float
        λ > 0 (the formula divides by it).
    weights : array (N,), optional
    precision, return_info
        As in :func:`damped_solve`.

    Returns
    -------
    x : array of g's shape, equal to ``damped_solve(fisher(J, weights), g, damping)``.
    """
    precision = V.precision_arg(precision, "lowrank_solve")
    template = first_device(J, g, weights)
    Jv, w, Gv, damping, vector = V.lowrank_solve_args(
        wrap(J), wrap(g), damping, wrap(weights), check_finite, all_finite, cast
    )
    X = _lowrank(Jv, w, Gv, damping, "lowrank_solve")
    return _answer(result(_shaped(X, vector), template), Jv.dtype, precision, return_info)


def natural_gradient(
    J: Any,
    g: Any,
    damping: float,
    weights: Any = None,
    *,
    method: str = "auto",
    check_finite: bool = True,
    precision: str = "auto",
    return_info: bool = False,
):
    r"""Damped natural gradient ``ñ = (F + λI)^{-1} g`` with ``F = fisher(J, weights)``, on the GPU.

    Parameters
    ----------
    J : array (N, P)
    g : array (P,) or (P, K)
    damping : float
        λ >= 0 (> 0 for ``method="lowrank"``).
    weights : array (N,), optional
    method : {"auto", "dense", "lowrank"}
        ``"dense"``: form F (P x P, SYRK kernel) and solve by Cholesky, O(NP^2 + P^3/3);
        ``"lowrank"``: the sample-space solve of :func:`lowrank_solve`, O(N^2 P + N^3/3);
        ``"auto"``: the cheaper by the cost model shared with the CPU kernels
        (:func:`ngdfast._policy.choose_method`).
    check_finite : bool
        Raise ``ValueError`` on NaN/Inf in ``J`` or ``g``.
    precision, return_info
        As in :func:`damped_solve`.

    Returns
    -------
    ñ : array of g's shape.
    """
    precision = V.precision_arg(precision, "natural_gradient")
    template = first_device(J, g, weights)
    Jv, w, Gv, damping, vector, method = V.natural_gradient_args(
        wrap(J), wrap(g), damping, wrap(weights), method, check_finite, all_finite, cast
    )
    if method == "lowrank":
        X = _lowrank(Jv, w, Gv, damping, "natural_gradient")
    else:
        n, p = Jv.shape
        F = empty((p, p), Jv.dtype)
        wd = upload(w) if w is not None else None
        L.syrk(device(Jv), F, 1.0 if w is not None else 1.0 / n, 0.0, zeros_info(), w=wd)
        if not _diagonal_finite(F):  # NaN/Inf in J, or its squares overflowed
            raise V.scores_not_finite(Jv, "natural_gradient", V.FISHER_GRAM, all_finite)
        X = _dense_solve(F, Gv, damping, "natural_gradient", overwrite_f=True)
        _finite_solution(X, "natural_gradient", [(Gv, "g")])
    return _answer(result(_shaped(X, vector), template), Jv.dtype, precision, return_info)


def kl_step_size(g: Any, nat_grad: Any, epsilon: float, *, max_step: Optional[float] = None) -> float:
    r"""Step size of the KL trust region: ``β = sqrt(2ε / gᵀñ)``, capped at ``max_step``.

    .. math:: \mathrm{KL}(p_\theta \,\|\, p_{\theta - \beta \tilde n}) \approx
              \tfrac12 \beta^2\, \tilde n^T F \tilde n \approx \tfrac12 \beta^2 g^T \tilde n = \varepsilon

    ``gᵀñ`` is reduced on the device in float64 (fixed-order partial sums).

    Returns
    -------
    β : float (0.0 when gᵀñ == 0).

    Raises
    ------
    ValueError
        When gᵀñ is negative or not finite.
    """
    gv, nv, epsilon, max_step = V.kl_step_size_args(wrap(g), wrap(nat_grad), epsilon, max_step)
    q = L.dot(_flat(gv), _flat(nv))
    return _policy.kl_step_from_quadratic(q, epsilon, max_step)


def _flat(a):
    """A 1-D device array with the elements of ``a`` (a view when possible)."""
    if not isinstance(a, DeviceArg):
        return upload(np.ascontiguousarray(a).reshape(-1))
    d = a.array
    if a.ndim == 1:
        return d
    return contiguous(d).reshape(a.size)


def kfac_precondition(
    grad: Any, A: Any, S: Any, damping: float, *, factored_damping: bool = True, check_finite: bool = True
):
    r"""K-FAC preconditioned gradient of one layer, ``X = S̃^{-1} grad Ã^{-1}``, on the GPU.

    .. math:: \pi = \sqrt{\frac{\operatorname{tr} A / \dim A}{\operatorname{tr} S / \dim S}},\qquad
              \tilde A = A + \pi\sqrt\lambda\, I,\qquad \tilde S = S + \frac{\sqrt\lambda}{\pi} I

    (π = 1 when ``factored_damping`` is False or a trace is 0).  Both factors are
    factored in one launch, one thread block each (factors larger than the
    geometry's ``batched_max`` use the blocked factorisation); then
    ``Y = S̃^{-1} grad`` and ``X^T = Ã^{-1} Y^T``, one block per column.

    Parameters
    ----------
    grad, A, S, damping, factored_damping, check_finite
        As in :func:`ngdfast.kfac_precondition`: grad (out, in), the input-activation factor
        A (in, in) and the output-gradient factor S (out, out) as arrays on the host or device.

    Returns
    -------
    X : array (out, in).
    """
    template = first_device(grad, A, S)
    gv, Av, Sv, damping = V.kfac_args(wrap(grad), wrap(A), wrap(S), damping, check_finite, all_finite, cast)
    dtype = gv.dtype
    n_out, n_in = gv.shape
    Ad = device(Av)
    Sd = device(Sv)
    damping_a, damping_s = _policy.kfac_damping(L.trace(Ad), n_in, L.trace(Sd), n_out, damping, bool(factored_damping))
    WA = empty((n_in, n_in), dtype)
    WS = empty((n_out, n_out), dtype)
    L.prepare(Ad, WA, damping_a)
    L.prepare(Sd, WS, damping_s)
    info_a = zeros_info()
    info_s = zeros_info()
    L.cholesky_pair(WA, info_a, WS, info_s)
    Y = device_copy(gv)
    L.potrs(WS, Y, info_s)  # Y = S~^-1 grad
    L.potrs(WA, transpose_view(Y), info_a)  # Y^T <- A~^-1 Y^T
    for factor, info, size in (("A", info_a, n_in), ("S", info_s, n_out)):
        _raise_if_failed(
            info,
            lambda k: V.kfac_not_positive_definite(
                "kfac_precondition", factor, k, size, damping, damping_a, damping_s
            ),
        )
    _finite_solution(Y, "kfac_precondition", [(gv, "grad")], V.KFAC_RESULT)
    return result(Y, template)
