"""Compiled kernels: thin wrappers over ``ngdfast._core``.

Each wrapper validates and normalises its arguments with ``ngdfast._validation``
(the same checks and messages as ``ngdfast.reference``, with the finiteness
test done by ``_core.all_finite`` without temporaries) and then makes one call
into the C++ core, which releases the GIL.

Score rows J are the largest input and the kernels read them anyway, so J's
finiteness is read off the diagonal of the Gram product the kernel forms
(``sum_p J[i, p]**2``, non-finite exactly when row i holds NaN/Inf, or when its
squares overflow): a separate pass over J would cost as much memory traffic as
the rest of a low-rank solve outside its Gram product. Only when that diagonal
is non-finite is J scanned, to raise the same error the reference raises: a
``ValueError`` naming J, or ``NumericOverflowError`` when a finite J's squares
overflowed. The solves read that diagonal whatever ``check_finite`` says (it is
free), and check their result (O(P K)) so that NaN/Inf input passed with
``check_finite=False`` or an overflow never comes back as an answer.

Semantics are those of the reference kernels; their docstrings hold the full
formulas.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import numpy as np

from . import _core
from . import _policy
from . import _precision as _p
from . import _settings
from . import _validation as _v

__all__ = [
    "damped_solve",
    "fisher",
    "get_num_threads",
    "kfac_precondition",
    "kl_step_size",
    "lowrank_solve",
    "natural_gradient",
    "num_threads",
    "set_num_threads",
]

_all_finite = _core.all_finite


def _cast(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a`` in ``dtype`` as the core takes it: no copy for float32/float64 with any strides
    that are whole elements; one copy for strides that split an element (byte-offset views)."""
    if a.dtype != dtype:
        return a.astype(dtype)
    if not (a.flags.c_contiguous or a.flags.f_contiguous) and any(s % a.itemsize for s in a.strides):
        return np.ascontiguousarray(a)
    return a


_answer = _p.answer


def _mixed_core(core, report: list):
    """``core`` (a ``*_mixed`` routine) called as the float64 ones are, ``(X, info)``;
    the last call's (status, iterations) left in ``report``."""

    def call(J, w, G, damping):
        X, info, status, iterations = core(J, w, G, damping)
        report[:] = [status, iterations]
        return X, info

    return call


def _solve_from_scores(core, func: str, gram: str, J, w, G, damping: float, check_finite: bool):
    """``core(J, w, G, damping)``; g is scanned first when ``check_finite`` (small). The core
    reads J's finiteness off its Gram diagonal either way (free) and raises
    ``_core.NonFiniteScores``, turned here into the reference's error; errors name J before g,
    as the reference does."""
    if check_finite and not _all_finite(G):
        _v.require_finite(J, func, "J", _all_finite)
        _v.require_finite(G, func, "g", _all_finite)
    try:
        return core(J, w, G, damping)
    except _core.NonFiniteScores:
        pass  # J is scanned outside the handler: the public error carries no internal context
    raise _v.scores_not_finite(J, func, gram, _all_finite)


_finite_solution = functools.partial(_v.finite_solution, all_finite=_all_finite)


def _check_info(info: int, func: str, matrix: str, size: int, damping: float) -> None:
    """Turn a LAPACK-style ``info`` from the core into an exception."""
    if info > 0:
        raise _v.not_positive_definite(func, matrix, info, size, damping)
    if info < 0:  # an argument the wrappers should have caught: a bug, not bad input
        raise RuntimeError(f"{func}: internal error, the compiled core returned info={info}")


# Factor reuse for ngdfast.curvature (arguments validated there; F is float32/float64, (P, P)).


def _dense_factor(F: np.ndarray, damping: float, func: str) -> np.ndarray:
    """The lower Cholesky factor of ``F + damping I`` (F's lower triangle read), Fortran-ordered
    with a zero strict upper part; ``NotPositiveDefiniteError`` naming ``func`` when it fails."""
    L, info = _core.cholesky_factor(F, damping)
    _check_info(info, func, _v.DENSE_MATRIX, F.shape[0], damping)
    return L


def _factor_solve(L: np.ndarray, G: np.ndarray) -> np.ndarray:
    """``(L Lᵀ)⁻¹ G`` for a factor from :func:`_dense_factor`; G (P, K)."""
    return _core.cholesky_solve(L, G)


def _reuse_factor(F: np.ndarray, damping: float):
    """A float32 factor of ``F + damping I`` (float64 F) to precondition :func:`_pcg_solve`
    with, or None when float32 cannot factor it."""
    factor, info = _core.mixed_factor(F, damping)
    return factor if info == 0 else None


def _pcg_solve(F: np.ndarray, damping: float, factor, G: np.ndarray, tol: float, max_iter: int,
               factor_of_F: bool = False):
    """``(X, iterations, converged)``: CG on ``(F + damping I) X = G`` (float64) preconditioned by
    ``factor`` to a normwise backward error of ``tol``, given up after ``max_iter`` iterations or
    as soon as the observed rate predicts that they cannot suffice (``iterations`` is what was
    spent). ``factor_of_F``: the factor is of this very F + damping I (its norm serves)."""
    return _core.pcg_solve(F, damping, factor, G, tol, max_iter, factor_of_F)


def fisher(J, weights=None, *, out=None, decay=0.0, check_finite=True):
    r"""Empirical Fisher matrix :math:`F = \sum_i w_i j_i j_i^T / \sum_i w_i`, or its EMA update.

    Parameters
    ----------
    J : array_like, shape (N, P)
        Score rows, N >= 1.
    weights : array_like, shape (N,), optional
        Non-negative sample weights, not all zero. Default: uniform (F = JᵀJ / N).
    out : ndarray, shape (P, P), optional
        Updated in place, ``out ← decay·out + (1 − decay)·F``; exactly the result dtype,
        writeable, C- or Fortran-contiguous. Not read when ``decay == 0``.
    decay : float in [0, 1]
        EMA decay; non-zero only together with ``out``; 1 leaves ``out`` unchanged.
    check_finite : bool
        Reject NaN/Inf in J (and in ``out`` when ``decay > 0``), and an F that overflows
        the dtype (``NumericOverflowError``).

    Returns
    -------
    ndarray, shape (P, P)
        F, exactly symmetric (``out`` itself when given). A rejected call never writes ``out``;
        a call interrupted by Ctrl-C (``KeyboardInterrupt``) may leave ``out`` partially updated
        (some blocks hold the new value, the others the old one).

    See Also
    --------
    ngdfast.reference.fisher : the specification.

    Examples
    --------
    >>> import numpy as np
    >>> import ngdfast
    >>> J = np.array([[1.0, 2.0], [3.0, 4.0]])
    >>> ngdfast.fisher(J)                                    # J.T @ J / N
    array([[ 5.,  7.],
           [ 7., 10.]])
    >>> ngdfast.fisher(J, weights=[1.0, 0.0])                # only the first row counts
    array([[1., 2.],
           [2., 4.]])

    The running estimate, updated in place:

    >>> F = ngdfast.fisher(J)
    >>> ngdfast.fisher(np.array([[2.0, 0.0]]), out=F, decay=0.5) is F
    True
    >>> F                                                    # 0.5 F + 0.5 F_batch
    array([[4.5, 3.5],
           [3.5, 5. ]])
    """
    return _fisher(J, weights, out, decay, check_finite, "fisher")


def _fits(J: np.ndarray) -> bool:
    """Whether J is finite and every F (any weights summing to 1) and its partial sums
    N max|J|² stay at most a quarter of the largest float: then the product cannot overflow.
    Two reductions, no temporaries; NaN fails both comparisons."""
    hi = float(J.max())
    lo = float(J.min())
    m = max(hi, -lo)
    return J.shape[0] * m * m <= float(np.finfo(J.dtype).max) / 4.0


def _fisher(
    J, weights, out, decay, check_finite: bool, func: str, name: str = "J", trusted_out: bool = False
) -> np.ndarray:
    """``fisher`` for every caller (the curvature objects pass their own ``func``/``name``,
    and ``trusted_out`` for an estimate they keep finite, which is then not scanned).

    A given out is not written by a rejected call: with ``check_finite`` J is checked
    first, and when its magnitude does not rule out an overflow of F, F is formed and
    checked once before the update of out.
    """
    J, w, out, decay = _v.fisher_args(J, weights, out, decay, False, _all_finite, _cast, func, name)
    if out is None:
        out = _core.fisher(J, w)
        if check_finite and not _all_finite(out.diagonal()):
            raise _v.scores_not_finite(J, func, _v.FISHER_GRAM, _all_finite, name)
        return out
    if check_finite:
        fits = _fits(J)
        if not fits:
            _v.require_finite(J, func, name, _all_finite)
        if decay > 0.0 and not trusted_out:
            _v.require_finite(out, func, "out", _all_finite)
        if not fits:  # rare: large scores; form F once to see whether it overflows
            F = _core.fisher(J, w)
            if not _all_finite(F.diagonal()):
                raise _v.gram_overflow(func, _v.FISHER_GRAM, name, J.dtype)
    if decay == 1.0:
        return out  # a no-op: out is kept, not updated with 0*F
    if np.may_share_memory(out, J):
        J = J.copy()  # the core would read J while overwriting it
    _core.fisher(J, w, out, 1.0 - decay, decay)
    return out


def damped_solve(F, g, damping, *, check_finite=True, precision="auto", return_info=False):
    r"""Solve :math:`(F + \lambda I)\, x = g` by Cholesky.

    Parameters
    ----------
    F : array_like, shape (P, P)
        Symmetric; **only the lower triangle** ``F[i, j], i >= j`` is read.
    g : array_like, shape (P,) or (P, K)
        Right-hand side(s).
    damping : float
        λ >= 0.
    check_finite : bool
        Reject NaN/Inf in F and g.
    precision : {"auto", "double", "mixed"}
        For float64 data: "mixed" factors in float32 and refines to the float64 answer
        (falling back to the float64 factorisation when that fails, see
        ``ngdfast._precision``); "double" factors in float64; "auto" refines from
        P >= 512 (the crossover of the kernels in use: ``ngdfast._precision.thresholds``).
        Ignored for float32 data.
    return_info : bool
        Also return a :class:`ngdfast.SolveInfo` (path taken, refinement steps, fallback).

    Returns
    -------
    ndarray, shape of ``g``
        (and the :class:`ngdfast.SolveInfo` with ``return_info``)

    Raises
    ------
    NotPositiveDefiniteError
        F + λI is not positive definite (the message gives the pivot).

    See Also
    --------
    ngdfast.reference.damped_solve : the specification.

    Examples
    --------
    >>> import numpy as np
    >>> import ngdfast
    >>> F = np.array([[2.0, 1.0], [1.0, 2.0]])
    >>> ngdfast.damped_solve(F, np.array([1.0, 1.0]), damping=1.0)     # (F + I) x = g
    array([0.25, 0.25])
    >>> ngdfast.damped_solve(F, np.eye(2), damping=1.0)                # K = 2 right-hand sides
    array([[ 0.375, -0.125],
           [-0.125,  0.375]])
    """
    precision = _v.precision_arg(precision, "damped_solve")
    F, G, damping, vector = _v.damped_solve_args(F, g, damping, check_finite, _all_finite, _cast)
    if _p.use_mixed(precision, F.dtype, "dense", F.shape[0]):
        X, info, status, iterations = _core.damped_solve_mixed(F, G, damping)
        how = _p.mixed(status, iterations)
    else:
        X, info = _core.damped_solve(F, G, damping)
        how = _p.plain(F.dtype)
    _check_info(info, "damped_solve", _v.DENSE_MATRIX, F.shape[0], damping)
    if not _all_finite(X):  # the lower triangle (what is read) is copied on this error path only
        _finite_solution(X, "damped_solve", [(np.tril(F), "F"), (G, "g")])
    return _answer(X, vector, return_info, how)


def lowrank_solve(J, g, damping, weights=None, *, check_finite=True, precision="auto", return_info=False):
    r"""Solve :math:`(F + \lambda I)\, x = g` for F = fisher(J, weights) in sample space.

    Woodbury: K = J_w J_wᵀ + λI (N×N), x = (g − J_wᵀ K⁻¹ J_w g) / λ; O(N²P), never P×P.

    Parameters
    ----------
    J : array_like, shape (N, P)
    g : array_like, shape (P,) or (P, K)
    damping : float
        λ > 0.
    weights : array_like, shape (N,), optional
    check_finite : bool
    precision : {"auto", "double", "mixed"}
        For float64 data: "mixed" forms and factors the N x N Gram in float32 and
        refines the sample-space system with float64 residuals (one pass over J per
        step); "double" runs in float64; "auto" refines from N >= 128 (512 with AVX-512
        kernels) and P >= 2048, the crossovers of the kernels in use
        (``ngdfast._precision.thresholds``). Ignored for float32 data.
    return_info : bool
        Also return a :class:`ngdfast.SolveInfo`.

    Returns
    -------
    ndarray, shape of ``g``
        (and the :class:`ngdfast.SolveInfo` with ``return_info``)

    See Also
    --------
    ngdfast.reference.lowrank_solve : the specification.

    Examples
    --------
    >>> import numpy as np
    >>> import ngdfast
    >>> rng = np.random.default_rng(0)
    >>> J, g = rng.standard_normal((3, 500)), rng.standard_normal(500)
    >>> x = ngdfast.lowrank_solve(J, g, damping=0.1)                   # a 3 x 3 system inside
    >>> bool(np.allclose(x, ngdfast.damped_solve(ngdfast.fisher(J), g, 0.1)))
    True
    """
    precision = _v.precision_arg(precision, "lowrank_solve")
    J, w, G, damping, vector = _v.lowrank_solve_args(J, g, damping, weights, False, _all_finite, _cast)
    X, how = _woodbury(J, w, G, damping, check_finite, precision, "lowrank_solve")
    return _answer(X, vector, return_info, how)


def _woodbury(J, w, G, damping, check_finite, precision, func):
    N, P = J.shape
    return _solve_scores(
        _core.lowrank_solve, _core.lowrank_solve_mixed, _p.use_mixed(precision, J.dtype, "lowrank", N, P),
        func, _v.SAMPLE_GRAM, _v.SAMPLE_MATRIX, N, J, w, G, damping, check_finite,
    )


def _solve_scores(plain, mixed, use_mixed: bool, func: str, gram: str, matrix: str, size: int,
                  J, w, G, damping: float, check_finite: bool):
    """``(X, SolveInfo)`` of a solve from score rows, by the ``mixed`` core when ``use_mixed``
    else the ``plain`` one (Woodbury or dense): J's finiteness from the Gram diagonal, a
    failed factorisation of ``matrix`` (``size`` x ``size``) raised, a non-finite X rejected."""
    if use_mixed:
        report = [0, 0]
        X, info = _solve_from_scores(_mixed_core(mixed, report), func, gram, J, w, G, damping, check_finite)
        how = _p.mixed(*report)
    else:
        X, info = _solve_from_scores(plain, func, gram, J, w, G, damping, check_finite)
        how = _p.plain(J.dtype)
    _check_info(info, func, matrix, size, damping)
    return _finite_solution(X, func, [(G, "g")]), how


def natural_gradient(
    J, g, damping, weights=None, *, method="auto", check_finite=True, precision="auto", return_info=False
):
    r"""Damped natural gradient :math:`(F + \lambda I)^{-1} g` with F = fisher(J, weights).

    Parameters
    ----------
    J, g, weights, check_finite
        As in :func:`lowrank_solve`.
    damping : float
        λ >= 0 (> 0 for ``method="lowrank"``).
    method : {"auto", "dense", "lowrank"}
        "dense" forms F once and factors it in place; "lowrank" is :func:`lowrank_solve`;
        "auto" picks the cheaper by flop count (``ngdfast._policy.choose_method``).
    precision : {"auto", "double", "mixed"}
        As in :func:`damped_solve` (method "dense": F is formed in float64 and its
        factor refined) and :func:`lowrank_solve` (method "lowrank").
    return_info : bool
        Also return a :class:`ngdfast.SolveInfo`.

    Returns
    -------
    ndarray, shape of ``g``
        ñ (and how it was computed, a :class:`ngdfast.SolveInfo`, with ``return_info``).

    See Also
    --------
    ngdfast.reference.natural_gradient : the specification.

    Examples
    --------
    >>> import numpy as np
    >>> import ngdfast
    >>> rng = np.random.default_rng(0)
    >>> J, g = rng.standard_normal((8, 200)), rng.standard_normal(200)
    >>> nat = ngdfast.natural_gradient(J, g, damping=1e-2)             # "auto": low-rank, as N << P
    >>> dense = ngdfast.natural_gradient(J, g, damping=1e-2, method="dense")
    >>> bool(np.allclose(nat, dense))
    True
    """
    func = "natural_gradient"
    precision = _v.precision_arg(precision, func)
    J, w, G, damping, vector, method = _v.natural_gradient_args(
        J, g, damping, weights, method, False, _all_finite, _cast
    )
    if method == "lowrank":
        X, how = _woodbury(J, w, G, damping, check_finite, precision, func)
    else:
        P = J.shape[1]
        X, how = _solve_scores(
            _core.natural_gradient_dense, _core.natural_gradient_dense_mixed,
            _p.use_mixed(precision, J.dtype, "dense", P),
            func, _v.FISHER_GRAM, _v.DENSE_MATRIX, P, J, w, G, damping, check_finite,
        )
    return _answer(X, vector, return_info, how)


def kl_step_size(g, nat_grad, epsilon, *, max_step=None):
    r"""KL trust-region step size :math:`\beta = \min(\sqrt{2\varepsilon / g^T\tilde n},\ \text{max\_step})`.

    ``q = gᵀñ`` is one float64 BLAS dot (float64 inputs are not copied); β = 0 when q = 0.
    ``g`` and ``nat_grad`` share any non-empty shape, ``epsilon`` >= 0, ``max_step`` is None
    or > 0. Returns β as a Python float; ``ValueError`` when q < 0 or q is not finite,
    ``NumericOverflowError`` when β overflows without a ``max_step``.

    See Also
    --------
    ngdfast.reference.kl_step_size : the specification, with the derivation.

    Examples
    --------
    >>> import numpy as np
    >>> import ngdfast
    >>> g, nat = np.array([3.0, 4.0]), np.array([1.0, 2.0])          # g^T nat = 11
    >>> round(ngdfast.kl_step_size(g, nat, epsilon=22.0), 12)         # sqrt(2 * 22 / 11)
    2.0
    """
    g, nat_grad, epsilon, max_step = _v.kl_step_size_args(g, nat_grad, epsilon, max_step)
    with np.errstate(over="ignore", invalid="ignore"):  # an infinite or NaN q is rejected by the policy
        q = float(np.vdot(_cast(g, _v.FLOAT64), _cast(nat_grad, _v.FLOAT64)))
    return _policy.kl_step_from_quadratic(q, epsilon, max_step)


def kfac_precondition(grad, A, S, damping, *, factored_damping=True, check_finite=True):
    r"""K-FAC preconditioned gradient :math:`X = \tilde S^{-1}\, \text{grad}\, \tilde A^{-1}`.

    Ã = A + π√λ I, S̃ = S + (√λ/π) I with π = sqrt((tr A / in) / (tr S / out))
    (π = 1 when ``factored_damping`` is False or a trace is 0).

    Parameters
    ----------
    grad : array_like, shape (out, in)
    A : array_like, shape (in, in)
    S : array_like, shape (out, out)
    damping : float
        λ >= 0.
    factored_damping : bool
    check_finite : bool
        Reject NaN/Inf in grad, A and S.

    Returns
    -------
    ndarray, shape (out, in)

    Raises
    ------
    NotPositiveDefiniteError
        Naming the factor whose damped Cholesky failed (A is checked first).

    See Also
    --------
    ngdfast.reference.kfac_precondition : the specification.

    Examples
    --------
    >>> import numpy as np
    >>> import ngdfast
    >>> A, S = np.diag([1.0, 2.0, 4.0]), np.diag([1.0, 4.0])
    >>> ngdfast.kfac_precondition(np.ones((2, 3)), A, S, damping=0.0)    # S^-1 grad A^-1
    array([[1.    , 0.5   , 0.25  ],
           [0.25  , 0.125 , 0.0625]])
    """
    grad, A, S, damping = _v.kfac_args(grad, A, S, damping, check_finite, _all_finite, _cast)
    n_out, n_in = grad.shape
    damping_a, damping_s = _policy.kfac_damping(
        float(np.trace(A, dtype=np.float64)), n_in, float(np.trace(S, dtype=np.float64)), n_out,
        damping, factored_damping,
    )
    X, info, factor = _core.kfac_precondition(grad, A, S, damping_a, damping_s)
    if info > 0:
        size = n_in if factor == "A" else n_out
        raise _v.kfac_not_positive_definite("kfac_precondition", factor, info, size, damping, damping_a, damping_s)
    _check_info(info, "kfac_precondition", "", 0, damping)  # only a negative info is left
    return _finite_solution(X, "kfac_precondition", [(grad, "grad")], _v.KFAC_RESULT)


def set_num_threads(n: int) -> None:
    """Set the number of threads the compiled kernels use, process-wide (an integer from 1 to 1024).

    The Python equivalent of ``NGDFAST_NUM_THREADS``; :func:`num_threads` sets
    it for a ``with`` block. ``threadpoolctl.threadpool_limits`` limits the
    same pool (its user API is ``"ngdfast"``).

    Examples
    --------
    >>> import ngdfast
    >>> n = ngdfast.get_num_threads()
    >>> ngdfast.set_num_threads(1)
    >>> ngdfast.get_num_threads()
    1
    >>> ngdfast.set_num_threads(n)
    """
    _core.set_num_threads(_v.num_threads_arg(n))


def get_num_threads() -> int:
    """Number of threads the compiled kernels use.

    Examples
    --------
    >>> import ngdfast
    >>> ngdfast.get_num_threads() >= 1
    True
    """
    return _core.get_num_threads()


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Context manager: the compiled kernels use ``n`` threads inside the ``with`` block.

    Like ``scipy.fft.set_workers``; the previous count is restored on exit,
    also when the block raises. The setting is process-wide (as
    ``threadpoolctl.threadpool_limits``), so concurrent blocks in several
    threads restore in the order they exit.

    Examples
    --------
    >>> import ngdfast
    >>> with ngdfast.num_threads(1):
    ...     ngdfast.get_num_threads()
    1
    """
    k = _v.num_threads_arg(n, "num_threads")
    with _settings.temporarily(_core.get_num_threads, _core.set_num_threads, k):
        yield
