"""Pure-NumPy reference kernels: the readable specification of ``ngdfast``.

Every kernel here has the same signature, argument checks (shared through
``ngdfast._validation``), dtype rules and errors as the compiled kernels in
``ngdfast`` and the GPU kernels in ``ngdfast.cuda``; the test-suite compares
those against these.  The code favours clarity over speed and uses no compiled
code of ours.

Notation: J ∈ R^{N×P} holds one score row j_i per sample, w ∈ R^N non-negative
weights (uniform when omitted), λ >= 0 the damping and g ∈ R^P (or R^{P×K}) a
gradient.  Computations run in the data dtype (float32 stays float32).

Non-finite values and overflow (the same in every kernel module):

* ``check_finite=True`` scans the inputs first: NaN/Inf raise ``ValueError``.
* A quantity of finite inputs that overflows the dtype raises
  :class:`ngdfast.NumericOverflowError` (a ``ValueError``), never an Inf/NaN, zero or
  ``g / damping`` answer: the Fisher of ``fisher`` (when ``check_finite``), the Gram
  matrix a solve forms from J, the solution of a solve, K-FAC's preconditioned
  gradient, ``kl_step_size``'s β.  Near the overflow threshold (within a factor of
  about N or P of the largest float) whether an intermediate overflows depends on the
  order of summation, so the kernel modules may differ there.
* ``check_finite=False`` skips the up-front scans only.  ``fisher`` then returns the
  floats as they fall (NaN/Inf entries for NaN/Inf input or overflow).  The solves
  still never return a result computed from NaN/Inf: they notice it where they look
  anyway (the diagonal of the Gram matrix they form, a failed factorisation, a
  non-finite solution) and raise the same ``ValueError`` naming the input, or
  ``NotPositiveDefiniteError`` when NaN/Inf in F stops ``damped_solve``'s Cholesky.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import numpy as np

from . import _policy
from . import _precision as _p
from . import _validation as _v

__all__ = [
    "damped_solve",
    "fisher",
    "kfac_precondition",
    "kl_step_size",
    "lowrank_solve",
    "natural_gradient",
]

_all_finite = _v.numpy_all_finite


# --------------------------------------------------------------------------------------------
# building blocks


def _symmetric_from_lower(M: np.ndarray) -> np.ndarray:
    """The symmetric matrix whose lower triangle is M's (the upper triangle is not read).

    A copy of M mirrored a band of rows at a time: each diagonal block by ``tril(B) +
    tril(B, -1).T``, the rows right of it from the transposed columns below it. One new P x P
    matrix (the formula on the whole of M made four, and at P in the thousands their first
    touch cost seconds).
    """
    S = np.array(M, order="C", copy=True)
    p = S.shape[0]
    band = 256
    for i0 in range(0, p, band):
        i1 = min(p, i0 + band)
        block = S[i0:i1, i0:i1]
        S[i0:i1, i0:i1] = np.tril(block) + np.tril(block, -1).T
        S[i0:i1, i1:] = S[i1:, i0:i1].T
    return S


def _scaled_rows(J: np.ndarray, w: Optional[np.ndarray]) -> np.ndarray:
    """J_w = diag(sqrt(w)) J with w summing to 1, so that J_wᵀ J_w = Σ_i w_i j_i j_iᵀ."""
    n = J.shape[0]
    if w is None:
        scale = np.full(n, np.sqrt(1.0 / n), dtype=J.dtype)
    else:
        scale = np.sqrt(w)
    return J * scale[:, None]


def _gram(B: np.ndarray) -> np.ndarray:
    """Bᵀ B, made exactly symmetric by mirroring its lower triangle."""
    return _symmetric_from_lower(B.T @ B)


def _failing_pivot(M: np.ndarray) -> int:
    """1-based order of the first leading minor of symmetric M that is not positive definite.

    A column-by-column Cholesky, M = L Lᵀ, stopping where the pivot
    d_j = M_jj - Σ_{k<j} L_jk² is not > 0 (LAPACK's ``info`` convention).  Returns the
    order of M if rounding lets every pivot through after ``np.linalg.cholesky`` failed.
    """
    p = M.shape[0]
    L = np.zeros_like(M)
    for j in range(p):
        row = L[j, :j]
        d = M[j, j] - row @ row
        if not d > 0:
            return j + 1
        L[j, j] = np.sqrt(d)
        L[j + 1 :, j] = (M[j + 1 :, j] - L[j + 1 :, :j] @ row) / L[j, j]
    return p


def _cholesky(M: np.ndarray) -> Tuple[Optional[np.ndarray], int]:
    """``(L, 0)`` with M = L Lᵀ (lower), or ``(None, pivot)`` when M is not positive definite."""
    try:
        L = np.linalg.cholesky(M)
    except np.linalg.LinAlgError:
        return None, _failing_pivot(M)
    if not (np.diagonal(L) > 0).all():  # some LAPACKs let a NaN pivot through
        return None, _failing_pivot(M)
    return L, 0


def _cholesky_solve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """X with L Lᵀ X = B: a forward then a backward substitution."""
    return np.linalg.solve(L.T, np.linalg.solve(L, B))


def _add_diagonal(M: np.ndarray, value: float) -> np.ndarray:
    """M + value·I, the shift added to the diagonal only and rounded to M's dtype: a damping
    beyond float32's range is +inf there, as in the compiled kernels, and then acts as an
    infinite shift (the solution is 0, correctly rounded), never as inf·0 = NaN off the diagonal."""
    out = np.array(M, copy=True)
    with np.errstate(over="ignore"):
        shift = M.dtype.type(value)
    diag = np.arange(M.shape[0])
    out[diag, diag] += shift
    return out


def _dense_solve(F: np.ndarray, G: np.ndarray, damping: float, func: str) -> np.ndarray:
    """(F + λI)⁻¹ G for symmetric F, by Cholesky (the solution may hold Inf/NaN: see
    :func:`_finite_solution`)."""
    M = _add_diagonal(F, damping)
    L, pivot = _cholesky(M)
    if pivot:
        raise _v.not_positive_definite(func, _v.DENSE_MATRIX, pivot, M.shape[0], damping)
    return _cholesky_solve(L, G)


def _check_gram(M: np.ndarray, J: np.ndarray, gram: str, func: str) -> None:
    """A Gram matrix of J with a non-finite diagonal: NaN/Inf in J, or its squares overflowed."""
    if not _all_finite(np.diagonal(M)):
        raise _v.scores_not_finite(J, func, gram, _all_finite)


_finite_solution = functools.partial(_v.finite_solution, all_finite=_all_finite)


def _woodbury_solve(J: np.ndarray, w: Optional[np.ndarray], G: np.ndarray, damping: float, func: str) -> np.ndarray:
    """(J_wᵀ J_w + λI)⁻¹ G in sample space.

    Woodbury: (J_wᵀ J_w + λI)⁻¹ = (I - J_wᵀ (J_w J_wᵀ + λI)⁻¹ J_w) / λ, so with
    K = J_w J_wᵀ + λI (N×N), x = (g - J_wᵀ K⁻¹ J_w g) / λ.
    """
    Jw = _scaled_rows(J, w)
    gram = _gram(Jw.T)
    _check_gram(gram, J, _v.SAMPLE_GRAM, func)
    K = _add_diagonal(gram, damping)
    L, pivot = _cholesky(K)
    if pivot:
        raise _v.not_positive_definite(func, _v.SAMPLE_MATRIX, pivot, K.shape[0], damping)
    return (G - Jw.T @ _cholesky_solve(L, Jw @ G)) / damping


def _answer(X: np.ndarray, vector: bool, return_info: bool):
    """The answer, with the info of a solve in the data dtype: the reference states
    the answer every ``precision`` must give, not a path."""
    return _p.answer(X, vector, return_info, _p.plain(X.dtype))



# --------------------------------------------------------------------------------------------
# public kernels


def fisher(J, weights=None, *, out=None, decay=0.0, check_finite=True):
    r"""Empirical Fisher matrix of score rows, or its running (EMA) update.

    .. math::

        F = \frac{\sum_i w_i\, j_i j_i^T}{\sum_i w_i} = J_w^T J_w,
        \qquad J_w = \operatorname{diag}\big(\sqrt{w / \textstyle\sum_i w_i}\big)\, J

    (w = 1: F = JᵀJ / N).  With ``out``: ``out ← decay·out + (1 − decay)·F`` in place.

    Parameters
    ----------
    J : array_like, shape (N, P)
        Score rows j_i = ∇θ log p(y_i | x_i, θ) (or per-sample loss gradients), N >= 1.
    weights : array_like, shape (N,), optional
        Non-negative sample weights, not all zero; cast to J's dtype. Default: uniform.
    out : ndarray, shape (P, P), optional
        Running estimate updated in place. Must have exactly the result dtype, be writeable
        and C- or Fortran-contiguous. With ``decay == 0`` it is overwritten without being read.
    decay : float in [0, 1]
        EMA decay; non-zero only together with ``out``; 1 leaves ``out`` unchanged.
    check_finite : bool
        Reject NaN/Inf in J (and in ``out`` when ``decay > 0``), and an F that overflows
        the dtype (``NumericOverflowError``). Weights are always checked. When False,
        NaN/Inf input or overflow gives NaN/Inf entries in F.

    Returns
    -------
    ndarray, shape (P, P)
        F with both triangles filled and exactly symmetric (``out`` itself when given).
        dtype: float32 for float32/float16 J, float64 otherwise.

    Raises
    ------
    ValueError
        Bad shapes, empty J, bad weights, decay outside [0, 1] or without ``out``, a bad
        ``out``, NaN/Inf. A rejected call never writes to ``out``.
    NumericOverflowError
        F of a finite J overflows the dtype (``check_finite`` only), e.g. J ~ 1e160 in
        float64 or 1e20 in float32; ``out`` is not written.
    TypeError
        Complex, object, string or extended-precision data.

    Notes
    -----
    The reference forms ``J_w`` explicitly and mirrors the lower triangle of ``J_wᵀ J_w``.

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast import reference
    >>> J = np.array([[1.0, 2.0], [3.0, 4.0]])
    >>> reference.fisher(J)                                  # J.T @ J / N
    array([[ 5.,  7.],
           [ 7., 10.]])
    """
    J, w, out, decay = _v.fisher_args(J, weights, out, decay, check_finite, _all_finite)
    with np.errstate(all="ignore"):  # overflow is reported below, or returned as Inf/NaN unchecked
        F = _gram(_scaled_rows(J, w))
    if check_finite and not _all_finite(F):  # J is finite here: F overflowed
        raise _v.gram_overflow("fisher", _v.FISHER_GRAM, "J", F.dtype)
    if out is None:
        return F
    if decay == 0.0:
        out[...] = F  # out is not read: a NaN left in it must not survive as 0*NaN
    elif decay < 1.0:
        with np.errstate(all="ignore"):
            out[...] = decay * out + (1.0 - decay) * F
    # decay == 1: out is kept as it is (not 0*F, which would be NaN where F overflowed)
    return out


def damped_solve(F, g, damping, *, check_finite=True, precision="auto", return_info=False):
    r"""Solve the damped system :math:`(F + \lambda I)\, x = g` by Cholesky.

    Parameters
    ----------
    F : array_like, shape (P, P)
        Symmetric positive semi-definite matrix. **Only the lower triangle**
        ``F[i, j], i >= j`` is read; the upper triangle is taken as its mirror.
    g : array_like, shape (P,) or (P, K)
        Right-hand side(s), K >= 1.
    damping : float
        λ >= 0.
    check_finite : bool
        Reject NaN/Inf anywhere in F or g.
    precision : {"auto", "double", "mixed"}
        Validated only: the answer is the float64 one for float64 data whichever path
        the compiled kernels take (see ``ngdfast._precision``).
    return_info : bool
        Also return a :class:`ngdfast.SolveInfo`.

    Returns
    -------
    ndarray, shape of ``g``
        x = (F + λI)⁻¹ g, in the wider dtype of F and g.

    Raises
    ------
    NotPositiveDefiniteError
        F + λI is not positive definite; the message gives the failing pivot (also for
        NaN/Inf in F's lower triangle with ``check_finite=False``).
    NumericOverflowError
        The solution (or an intermediate) overflows the dtype.
    ValueError, TypeError
        See the error table in the package documentation.

    Notes
    -----
    F + λI = L Lᵀ (``np.linalg.cholesky``), then L y = g and Lᵀ x = y.

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast import reference
    >>> F = np.array([[2.0, 1.0], [1.0, 2.0]])
    >>> reference.damped_solve(F, np.array([1.0, 1.0]), damping=1.0)   # (F + I) x = g
    array([0.25, 0.25])
    """
    _v.precision_arg(precision, "damped_solve")
    F, G, damping, vector = _v.damped_solve_args(F, g, damping, check_finite, _all_finite)
    with np.errstate(all="ignore"):
        X = _dense_solve(_symmetric_from_lower(F), G, damping, "damped_solve")
    X = _finite_solution(X, "damped_solve", [(np.tril(F), "F"), (G, "g")])
    return _answer(X, vector, return_info)


def lowrank_solve(J, g, damping, weights=None, *, check_finite=True, precision="auto", return_info=False):
    r"""Solve :math:`(F + \lambda I)\, x = g` for F = fisher(J, weights) without forming F.

    Woodbury identity in sample space, with :math:`J_w` as in :func:`fisher`:

    .. math::

        K = J_w J_w^T + \lambda I \;(N \times N), \qquad
        x = \frac{g - J_w^T K^{-1} J_w\, g}{\lambda}

    O(N²P + N³) work and O(N² + NP) memory: preferable when N < P.

    Parameters
    ----------
    J : array_like, shape (N, P)
        Score rows.
    g : array_like, shape (P,) or (P, K)
        Right-hand side(s).
    damping : float
        λ > 0 (the identity divides by λ).
    weights : array_like, shape (N,), optional
        As in :func:`fisher`.
    check_finite : bool
        Reject NaN/Inf in J and g.
    precision, return_info
        As in :func:`damped_solve`.

    Returns
    -------
    ndarray, shape of ``g``
        The same x as ``damped_solve(fisher(J, weights), g, damping)`` up to rounding.

    Raises
    ------
    ValueError
        NaN/Inf in J, found through the diagonal of K even with ``check_finite=False``
        (and in g, by the solution, then); see also the error table.
    NumericOverflowError
        K or the solution overflows the dtype although J and g are finite.
    NotPositiveDefiniteError
        K + λI is not positive definite (rounding with a tiny λ).

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast import reference
    >>> rng = np.random.default_rng(0)
    >>> J, g = rng.standard_normal((3, 50)), rng.standard_normal(50)
    >>> x = reference.lowrank_solve(J, g, damping=0.1)
    >>> bool(np.allclose(x, reference.damped_solve(reference.fisher(J), g, 0.1)))
    True
    """
    _v.precision_arg(precision, "lowrank_solve")
    J, w, G, damping, vector = _v.lowrank_solve_args(J, g, damping, weights, check_finite, _all_finite)
    with np.errstate(all="ignore"):
        X = _woodbury_solve(J, w, G, damping, "lowrank_solve")
    return _answer(_finite_solution(X, "lowrank_solve", [(G, "g")]), vector, return_info)


def natural_gradient(
    J, g, damping, weights=None, *, method="auto", check_finite=True, precision="auto", return_info=False
):
    r"""Damped natural gradient :math:`\tilde n = (F + \lambda I)^{-1} g` with F = fisher(J, weights).

    Parameters
    ----------
    J, g, weights, check_finite
        As in :func:`lowrank_solve`.
    damping : float
        λ >= 0 (> 0 for ``method="lowrank"``).
    method : {"auto", "dense", "lowrank"}
        ``"dense"``: form F (P×P) and factor F + λI, O(NP² + P³).
        ``"lowrank"``: Woodbury in sample space, O(N²P + N³), needs λ > 0.
        ``"auto"``: the cheaper by flop count (see ``ngdfast._policy.choose_method``):
        dense ≈ NP² + P³/3 against low-rank ≈ N²P + N³/3 + 4NP; low-rank only when λ > 0,
        and also when the P×P matrix would exceed 2 GiB while the N×N one is smaller.
    precision, return_info
        As in :func:`damped_solve`.

    Returns
    -------
    ndarray, shape of ``g``

    Raises
    ------
    ValueError, NumericOverflowError, NotPositiveDefiniteError
        As in :func:`lowrank_solve` (the dense method reads F's diagonal).

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast import reference
    >>> rng = np.random.default_rng(0)
    >>> J, g = rng.standard_normal((8, 60)), rng.standard_normal(60)
    >>> nat = reference.natural_gradient(J, g, damping=1e-2)
    >>> bool(np.allclose(nat, reference.natural_gradient(J, g, damping=1e-2, method="dense")))
    True
    """
    _v.precision_arg(precision, "natural_gradient")
    J, w, G, damping, vector, method = _v.natural_gradient_args(
        J, g, damping, weights, method, check_finite, _all_finite
    )
    func = "natural_gradient"
    with np.errstate(all="ignore"):
        if method == "dense":
            F = _gram(_scaled_rows(J, w))
            _check_gram(F, J, _v.FISHER_GRAM, func)
            X = _dense_solve(F, G, damping, func)
        else:
            X = _woodbury_solve(J, w, G, damping, func)
    return _answer(_finite_solution(X, func, [(G, "g")]), vector, return_info)


def kl_step_size(g, nat_grad, epsilon, *, max_step=None):
    r"""Step size that keeps the predicted KL divergence of one step at ε.

    With q = gᵀñ (computed in float64), KL(p_θ ‖ p_{θ−βñ}) ≈ ½ β² ñᵀFñ ≈ ½ β² q, so

    .. math::

        \beta = \min\Big(\sqrt{2\varepsilon / q},\ \text{max\_step}\Big), \qquad \beta = 0 \text{ when } q = 0.

    Parameters
    ----------
    g : array_like
        Gradient, any shape (usually (P,)).
    nat_grad : array_like
        Natural gradient ñ, same shape as g.
    epsilon : float
        KL radius ε >= 0.
    max_step : float, optional
        Upper bound on β, > 0.

    Returns
    -------
    float
        β as a Python float.

    Raises
    ------
    ValueError
        q < 0 or not finite, shapes differ, ε < 0, max_step <= 0.
    NumericOverflowError
        β overflows (ε huge against q) and there is no ``max_step``.

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast import reference
    >>> g, nat = np.array([3.0, 4.0]), np.array([1.0, 2.0])          # g^T nat = 11
    >>> round(reference.kl_step_size(g, nat, epsilon=0.5), 6)         # sqrt(2 * 0.5 / 11)
    0.301511
    >>> reference.kl_step_size(g, nat, epsilon=0.5, max_step=0.1)
    0.1
    """
    g, nat_grad, epsilon, max_step = _v.kl_step_size_args(g, nat_grad, epsilon, max_step)
    g64 = np.asarray(g, dtype=np.float64).ravel()
    n64 = np.asarray(nat_grad, dtype=np.float64).ravel()
    with np.errstate(over="ignore", invalid="ignore"):  # an infinite or NaN q is rejected below
        q = float(g64 @ n64)
    return _policy.kl_step_from_quadratic(q, epsilon, max_step)


def kfac_precondition(grad, A, S, damping, *, factored_damping=True, check_finite=True):
    r"""K-FAC preconditioned gradient of one linear layer.

    With F_layer ≈ S ⊗ A for the row-major flattening of W (out×in),

    .. math::

        \pi = \sqrt{\frac{\operatorname{tr} A / d_A}{\operatorname{tr} S / d_S}}, \quad
        \tilde A = A + \pi\sqrt{\lambda}\, I, \quad
        \tilde S = S + \frac{\sqrt{\lambda}}{\pi} I, \quad
        X = \tilde S^{-1}\, \text{grad}\; \tilde A^{-1},

    i.e. (S̃ ⊗ Ã) vec_row(X) = vec_row(grad).  π = 1 when ``factored_damping`` is False or
    the trace ratio is not a finite positive number (e.g. a zero trace).

    Parameters
    ----------
    grad : array_like, shape (out, in)
        Layer gradient (bias as the last input column).
    A : array_like, shape (in, in)
        Input-activation factor, symmetric; only its lower triangle is read.
    S : array_like, shape (out, out)
        Output-gradient factor, symmetric; only its lower triangle is read.
    damping : float
        λ >= 0.
    factored_damping : bool
        Split λ between the factors with π (True) or use π = 1.
    check_finite : bool
        Reject NaN/Inf in grad, A and S (``ValueError`` naming the array). Without it a
        non-finite input still never comes back as an answer: the factorisation fails
        (``NotPositiveDefiniteError``) or the result check names the input.

    Returns
    -------
    ndarray, shape (out, in)

    Raises
    ------
    NotPositiveDefiniteError
        Ã (checked first) or S̃ is not positive definite; the message names the factor.
    ValueError
        Bad shapes, negative damping, NaN/Inf (with ``check_finite``).
    NumericOverflowError
        The preconditioned gradient overflows the dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast import reference
    >>> A, S = np.diag([1.0, 2.0, 4.0]), np.diag([1.0, 4.0])
    >>> reference.kfac_precondition(np.ones((2, 3)), A, S, damping=0.0)
    array([[1.    , 0.5   , 0.25  ],
           [0.25  , 0.125 , 0.0625]])
    """
    grad, A, S, damping = _v.kfac_args(grad, A, S, damping, check_finite, _all_finite)
    n_out, n_in = grad.shape
    damping_a, damping_s = _policy.kfac_damping(
        float(np.trace(A, dtype=np.float64)), n_in, float(np.trace(S, dtype=np.float64)), n_out,
        damping, factored_damping,
    )
    L_a, pivot = _cholesky(_add_diagonal(_symmetric_from_lower(A), damping_a))
    if pivot:
        raise _v.kfac_not_positive_definite("kfac_precondition", "A", pivot, n_in, damping, damping_a, damping_s)
    L_s, pivot = _cholesky(_add_diagonal(_symmetric_from_lower(S), damping_s))
    if pivot:
        raise _v.kfac_not_positive_definite("kfac_precondition", "S", pivot, n_out, damping, damping_a, damping_s)
    with np.errstate(all="ignore"):
        Y = _cholesky_solve(L_s, grad)  # S̃⁻¹ grad
        # (Ã⁻¹ Yᵀ)ᵀ = Y Ã⁻¹ since Ã is symmetric
        X = np.ascontiguousarray(_cholesky_solve(L_a, Y.T).T)
    return _finite_solution(X, "kfac_precondition", [(grad, "grad")], _v.KFAC_RESULT)
