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
is non-finite is J scanned, to raise the same error the reference raises.

Semantics are those of the reference kernels; their docstrings hold the full
formulas.
"""

from __future__ import annotations

import numpy as np

from . import _core
from . import _validation as _v
from .reference import kl_step_size

__all__ = [
    "damped_solve",
    "fisher",
    "get_num_threads",
    "kfac_precondition",
    "kl_step_size",
    "lowrank_solve",
    "natural_gradient",
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


def _result(X: np.ndarray, vector: bool) -> np.ndarray:
    return X[:, 0] if vector else X


def _solve_from_scores(core, func: str, J, w, G, damping: float, check_finite: bool):
    """``core(J, w, G, damping, check_scores)`` with the checks of ``check_finite``:
    g first scanned (small), J through the kernel's Gram diagonal; errors name J
    before g, as the reference does."""
    if not check_finite:
        return core(J, w, G, damping, False)
    if not _all_finite(G):
        _v.require_finite(J, func, "J", _all_finite)
        _v.require_finite(G, func, "g", _all_finite)
    X, info = core(J, w, G, damping, True)
    if info == _core.NON_FINITE_SCORES:
        _v.require_finite(J, func, "J", _all_finite)
        X, info = core(J, w, G, damping, False)  # J is finite: its Gram product overflowed
    return X, info


def _check_info(info: int, func: str, matrix: str, size: int, damping: float) -> None:
    """Turn a LAPACK-style ``info`` from the core into an exception."""
    if info > 0:
        raise _v.not_positive_definite(func, matrix, info, size, damping)
    if info < 0:  # an argument the wrappers should have caught: a bug, not bad input
        raise RuntimeError(f"{func}: internal error, the compiled core returned info={info}")


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
        EMA decay; non-zero only together with ``out``.
    check_finite : bool
        Reject NaN/Inf in J (and in ``out`` when ``decay > 0``).

    Returns
    -------
    ndarray, shape (P, P)
        F, exactly symmetric (``out`` itself when given). A rejected call never writes ``out``;
        a call interrupted by Ctrl-C (``KeyboardInterrupt``) may leave ``out`` partially updated
        (some blocks hold the new value, the others the old one).

    See Also
    --------
    ngdfast.reference.fisher : the specification.
    """
    # A given out must not be written for a rejected J: check J first then.
    J, w, out, decay = _v.fisher_args(J, weights, out, decay, check_finite and out is not None, _all_finite, _cast)
    p = J.shape[1]
    if out is None:
        out = np.empty((p, p), dtype=J.dtype)
        _core.fisher(J, w, out, 1.0, 0.0, True)
        if check_finite and not _all_finite(out.diagonal()):
            _v.require_finite(J, "fisher", "J", _all_finite)  # raises unless J J^T merely overflowed
        return out
    if np.may_share_memory(out, J):
        J = J.copy()  # the core would read J while overwriting it
    _core.fisher(J, w, out, 1.0 - decay, decay)
    return out


def damped_solve(F, g, damping, *, check_finite=True):
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

    Returns
    -------
    ndarray, shape of ``g``

    Raises
    ------
    NotPositiveDefiniteError
        F + λI is not positive definite (the message gives the pivot).

    See Also
    --------
    ngdfast.reference.damped_solve : the specification.
    """
    F, G, damping, vector = _v.damped_solve_args(F, g, damping, check_finite, _all_finite, _cast)
    X, info = _core.damped_solve(F, G, damping, False)
    _check_info(info, "damped_solve", _v.DENSE_MATRIX, F.shape[0], damping)
    return _result(X, vector)


def lowrank_solve(J, g, damping, weights=None, *, check_finite=True):
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

    Returns
    -------
    ndarray, shape of ``g``

    See Also
    --------
    ngdfast.reference.lowrank_solve : the specification.
    """
    J, w, G, damping, vector = _v.lowrank_solve_args(J, g, damping, weights, False, _all_finite, _cast)
    X, info = _solve_from_scores(_core.lowrank_solve, "lowrank_solve", J, w, G, damping, check_finite)
    _check_info(info, "lowrank_solve", _v.SAMPLE_MATRIX, J.shape[0], damping)
    return _result(X, vector)


def natural_gradient(J, g, damping, weights=None, *, method="auto", check_finite=True):
    r"""Damped natural gradient :math:`(F + \lambda I)^{-1} g` with F = fisher(J, weights).

    Parameters
    ----------
    J, g, weights, check_finite
        As in :func:`lowrank_solve`.
    damping : float
        λ >= 0 (> 0 for ``method="lowrank"``).
    method : {"auto", "dense", "lowrank"}
        "dense" forms F once and factors it in place; "lowrank" is :func:`lowrank_solve`;
        "auto" picks the cheaper by flop count (``ngdfast._validation.choose_method``).

    Returns
    -------
    ndarray, shape of ``g``

    See Also
    --------
    ngdfast.reference.natural_gradient : the specification.
    """
    J, w, G, damping, vector, method = _v.natural_gradient_args(
        J, g, damping, weights, method, False, _all_finite, _cast
    )
    func = "natural_gradient"
    if method == "dense":
        X, info = _solve_from_scores(_core.natural_gradient_dense, func, J, w, G, damping, check_finite)
        _check_info(info, func, _v.DENSE_MATRIX, J.shape[1], damping)
    else:
        X, info = _solve_from_scores(_core.lowrank_solve, func, J, w, G, damping, check_finite)
        _check_info(info, func, _v.SAMPLE_MATRIX, J.shape[0], damping)
    return _result(X, vector)


def kfac_precondition(grad, A, S, damping, *, factored_damping=True):
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
    """
    grad, A, S, damping = _v.kfac_args(grad, A, S, damping, _all_finite, _cast)
    n_out, n_in = grad.shape
    damping_a, damping_s = _v.kfac_damping(
        float(np.trace(A, dtype=np.float64)), n_in, float(np.trace(S, dtype=np.float64)), n_out,
        damping, factored_damping,
    )
    X, info, factor = _core.kfac_precondition(grad, A, S, damping_a, damping_s)
    if info > 0:
        size = n_in if factor == "A" else n_out
        raise _v.kfac_not_positive_definite("kfac_precondition", factor, info, size, damping, damping_a, damping_s)
    _check_info(info, "kfac_precondition", "", 0, damping)  # only a negative info is left
    return X


def set_num_threads(n: int) -> None:
    """Set the number of threads the compiled kernels use (an integer >= 1)."""
    _core.set_num_threads(_v.num_threads_arg(n))


def get_num_threads() -> int:
    """Number of threads the compiled kernels use."""
    return _core.get_num_threads()
