r"""The peers: what a user writes by hand instead of calling ngdfast, and how answers are compared.

The bench (``python -m ngdfast bench``) times these beside ngdfast, and the
pytest-benchmark files in ``bench/`` use them as their reference answers, so
both judge a kernel against the same code and the same :data:`TOLERANCE`.
SciPy is imported only when a SciPy peer runs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Relative Frobenius-norm difference allowed between ngdfast's answer and a peer's:
#: a float32 peer in ``python -m ngdfast bench``, the float64 answer in ``bench/``.
#: Products (``fisher``) only accumulate rounding. A solve's error is about
#: κu (u = 6e-8 in float32) with κ the condition number
#: of the damped matrix: below ~6/λ = 600 for ``damped_solve``'s rank-deficient
#: Fisher at λ = 1e-2 (measured 540-581 for P = 64..4096), far less for K-FAC's
#: π-damped factors and for Woodbury. Measured float32 errors, P up to 8192: at
#: most 3e-5 (``damped_solve`` against SciPy's float32 Cholesky: two rounding
#: errors), 1e-6 (Woodbury, N = 4096), 7e-7 (K-FAC). 2e-3 is ~30 times the
#: two-error estimate 2κu, room for other BLAS builds, while a wrong kernel
#: (errors of 1e-2 and more) still fails.
TOLERANCE = {
    "product": {"float64": 1e-10, "float32": 1e-4},
    "solve": {"float64": 1e-8, "float32": 2e-3},
}


def tolerance(kind: str, dtype: Any) -> float:
    """The tolerance of ``kind`` ("product" or "solve") for ``dtype``."""
    return TOLERANCE[kind][np.dtype(dtype).name]


def relative_error(actual: Any, expected: Any) -> float:
    r""":math:`\|a - b\|_F / \|b\|_F`, in float64."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(np.float64).tiny))


def relative_error_upper(actual: Any, expected: Any) -> float:
    """:func:`relative_error` of the upper triangles only: BLAS syrk writes one triangle."""
    return relative_error(np.triu(actual), np.triu(expected))


def scipy() -> Any:
    """The ``scipy`` module with ``scipy.linalg`` and its BLAS loaded, or None when SciPy is missing."""
    try:
        import scipy
        import scipy.linalg
        import scipy.linalg.blas  # noqa: F401
    except ImportError:
        return None
    return scipy


def numpy_woodbury(J: np.ndarray, g: np.ndarray, lam: float) -> np.ndarray:
    r"""The sample-space solve a user writes by hand, the peer of ``lowrank_solve``:
    :math:`(J^TJ/N + \lambda I)^{-1} g = (g - J^T (JJ^T + N\lambda I)^{-1} J g) / \lambda`."""
    n = J.shape[0]
    K = J @ J.T + n * lam * np.eye(n, dtype=J.dtype)
    return (g - J.T @ np.linalg.solve(K, J @ g)) / lam


def numpy_kfac_precondition(grad, A, S, lam, solve=np.linalg.solve):
    r"""The peer of ``kfac_precondition`` by hand: :math:`X = \tilde S^{-1} G \tilde A^{-1}`
    with :math:`\tilde A = A + \pi\sqrt\lambda I`, :math:`\tilde S = S + (\sqrt\lambda/\pi) I`,
    :math:`\pi = \sqrt{(\mathrm{tr} A/a)/(\mathrm{tr} S/s)}` (API.md). ``solve(M, B)`` solves
    :math:`MX = B` for symmetric positive definite M."""
    a, s = A.shape[0], S.shape[0]
    ta, ts = np.trace(A) / a, np.trace(S) / s
    pi = math.sqrt(ta / ts) if ta > 0 and ts > 0 else 1.0
    root = math.sqrt(lam)
    At = A + (pi * root) * np.eye(a, dtype=A.dtype)
    St = S + (root / pi) * np.eye(s, dtype=S.dtype)
    # G A~^-1 = (A~^-1 G^T)^T because A~ is symmetric.
    return solve(St, solve(At, grad.T).T)


def scipy_cho_solve(M: np.ndarray, B: np.ndarray) -> np.ndarray:
    """:math:`M^{-1} B` by ``scipy.linalg.cho_factor`` + ``cho_solve``, factoring M in place."""
    from scipy.linalg import cho_factor, cho_solve

    return cho_solve(cho_factor(M, overwrite_a=True), B)
