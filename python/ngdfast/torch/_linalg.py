"""Where the linear algebra runs.

* CPU tensors (float32, float64) reach ngdfast's compiled kernels as NumPy *views*
  (``Tensor.numpy()`` shares memory: no copy of the score rows J or of the factors), and the
  results come back as tensors over the kernels' output arrays (``torch.from_numpy``, no copy).
* CUDA tensors go to ``ngdfast.cuda`` (which takes them through
  ``__cuda_array_interface__``) when it imports (numba-cuda and a GPU), else to torch's own
  ops (``torch.linalg.cholesky_ex``, ``torch.cholesky_inverse``, matrix products).

``_FORCE_TORCH_OPS`` (tests only) sends CPU tensors down the torch-ops path.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .. import _kernels, _policy, _validation
from .._backend import not_borrowing
from .._errors import NotPositiveDefiniteError

#: How the damped K-FAC factors are inverted (``Preconditioner(inverse=...)``).
INVERSES = ("cholesky", "eigh")

_FORCE_TORCH_OPS = False
_CUDA_KERNELS: object = None  # None: not tried yet; False: unavailable; else the module


def _compiled(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not _FORCE_TORCH_OPS


def _cuda_kernels():
    """``ngdfast.cuda`` when it imports, else None (tried once)."""
    global _CUDA_KERNELS
    if _CUDA_KERNELS is None:
        try:
            from .. import cuda
        except ImportError:
            _CUDA_KERNELS = False
        else:
            # Numba's CPU simulator (NUMBA_ENABLE_CUDASIM=1) cannot read torch's device memory
            _CUDA_KERNELS = False if cuda.SIMULATOR else cuda
    return _CUDA_KERNELS or None


def _on_cuda_kernels(t: torch.Tensor):
    return _cuda_kernels() if t.device.type == "cuda" and not _FORCE_TORCH_OPS else None


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """A NumPy array sharing ``t``'s memory (CPU tensors only)."""
    return t.detach().numpy()


def fisher_into(rows: torch.Tensor, out: torch.Tensor, decay: float) -> None:
    """``out ← decay·out + (1 − decay)·rowsᵀrows / R`` in place (``out`` not read when decay = 0)."""
    if _compiled(out) and rows.dtype == out.dtype and rows.device.type == "cpu":
        with not_borrowing():  # torch's OpenMP team, not NumPy's BLAS, is what runs beside us
            _kernels.fisher(numpy_view(rows), out=numpy_view(out), decay=decay, check_finite=False)
        return
    r = rows.shape[0]
    if decay == 0.0:
        torch.matmul(rows.T, rows, out=out)
        out.div_(r)
    else:
        out.mul_(decay).addmm_(rows.T, rows, alpha=(1.0 - decay) / r)


def trace(M: torch.Tensor) -> float:
    """tr M summed in float64, as ``ngdfast.kfac_precondition`` sums it (M a matrix, or the
    vector of a diagonal factor)."""
    if M.ndim == 1:
        return float(M.double().sum())
    if M.device.type == "cpu":
        return float(np.trace(numpy_view(M), dtype=np.float64))
    return float(torch.trace(M.double()))


def damped_inverse(M: torch.Tensor, shift: float, what: str) -> torch.Tensor:
    """``(M + shift·I)⁻¹`` for symmetric positive semi-definite M, by Cholesky.

    Raises
    ------
    NotPositiveDefiniteError
        ``M + shift·I`` is not positive definite (``what`` names the matrix).
    """
    n = M.shape[0]
    if _compiled(M):
        eye = np.eye(n, dtype=numpy_view(M).dtype)
        try:
            with not_borrowing():
                return torch.from_numpy(_kernels.damped_solve(numpy_view(M), eye, shift, check_finite=False))
        except NotPositiveDefiniteError as e:
            raise NotPositiveDefiniteError(f"{what}: {e}", pivot=e.pivot, damping=shift) from e
    cuda = _on_cuda_kernels(M)
    if cuda is not None:
        eye = torch.eye(n, dtype=M.dtype, device=M.device)
        try:
            return torch.as_tensor(cuda.damped_solve(M, eye, shift, check_finite=False), device=M.device)
        except NotPositiveDefiniteError as e:
            raise NotPositiveDefiniteError(f"{what}: {e}", pivot=e.pivot, damping=shift) from e
    shifted = M + shift * torch.eye(n, dtype=M.dtype, device=M.device)
    L, info = torch.linalg.cholesky_ex(shifted)
    if int(info):
        raise NotPositiveDefiniteError(
            f"{what}: {_validation.not_positive_definite('damped_inverse', 'M + shift*I', int(info), n, shift)}",
            pivot=int(info),
            damping=shift,
        )
    return torch.cholesky_inverse(L)


def solve_scores(J: torch.Tensor, g: torch.Tensor, damping: float, weights) -> torch.Tensor:
    """``(F + λI)⁻¹ g`` for ``F = Σ_r w_r j_r j_rᵀ / Σ_r w_r`` (``ngdfast.natural_gradient``:
    dense or Woodbury by cost)."""
    if _compiled(J):
        w = None if weights is None else numpy_view(weights)
        with not_borrowing():
            return torch.from_numpy(np.asarray(_kernels.natural_gradient(numpy_view(J), numpy_view(g), damping, w)))
    cuda = _on_cuda_kernels(J)
    if cuda is not None:
        w = None if weights is None else weights.detach().cpu().numpy()  # N numbers, normalised on the host
        return torch.as_tensor(cuda.natural_gradient(J, g, damping, w), device=J.device)
    return _torch_natural_gradient(J, g, damping, weights)


def _torch_natural_gradient(J, g, damping, weights):
    """The same solve with torch ops: dense Cholesky of F + λI, or Woodbury in sample space,
    chosen by ``ngdfast``'s cost model."""
    n, p = J.shape
    w = torch.full((n,), 1.0 / n, dtype=J.dtype, device=J.device) if weights is None else weights / weights.sum()
    Jw = J * w.sqrt()[:, None]
    method = _policy.choose_method(n, p, np.float64 if J.dtype == torch.float64 else np.float32, damping)
    if method == "dense":
        F = Jw.T @ Jw + damping * torch.eye(p, dtype=J.dtype, device=J.device)
        L, info = torch.linalg.cholesky_ex(F)
        if int(info):
            raise _validation.not_positive_definite("natural_gradient", _validation.DENSE_MATRIX, int(info), p, damping)
        return torch.cholesky_solve(g[:, None], L)[:, 0]
    K = Jw @ Jw.T + damping * torch.eye(n, dtype=J.dtype, device=J.device)
    L, info = torch.linalg.cholesky_ex(K)
    if int(info):
        raise _validation.not_positive_definite("natural_gradient", _validation.SAMPLE_MATRIX, int(info), n, damping)
    return (g - Jw.T @ torch.cholesky_solve((Jw @ g)[:, None], L)[:, 0]) / damping


def kl_beta(q: float, kl_radius: float, max_step, func: str) -> float:
    """β = sqrt(2ε / q) capped at ``max_step``: ``ngdfast.kl_step_size``'s rule."""
    return _policy.kl_step_from_quadratic(q, kl_radius, max_step, func)


def finite(t: torch.Tensor) -> bool:
    """No NaN or Inf in ``t``: one sum decides the common case (NaN and Inf propagate into it);
    only a non-finite sum (possibly an overflow of finite values) is checked elementwise."""
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def damped_factor_inverse(M: torch.Tensor, shift: float, what: str) -> torch.Tensor:
    """``(M + shift·I)⁻¹`` of a K-FAC factor: a matrix, or for a diagonal factor (a vector) the
    vector ``1 / (M + shift)``."""
    if M.ndim == 2:
        return damped_inverse(M, shift, what)
    shifted = M + shift
    if not bool((shifted > 0).all()):
        raise NotPositiveDefiniteError(f"{what}: the diagonal factor plus its damping is not positive "
                                       f"(damping {shift}); increase the damping",
                                       pivot=int(torch.nonzero((shifted <= 0).reshape(-1))[0, 0]) + 1, damping=shift)
    return 1.0 / shifted


def damped_inverses(layers, A, S, damping):
    """``{i: (Ã⁻¹, S̃⁻¹)}`` with ngdfast's factored Tikhonov damping (vectors for diagonal factors)."""
    out = {}
    for i, layer in enumerate(layers):
        if i not in A:
            continue
        n_out, n_in = layer.shape
        da, ds = _policy.kfac_damping(trace(A[i]), n_in, trace(S[i]), n_out, damping, True)
        out[i] = (damped_factor_inverse(A[i], da, f"layer {layer.name!r}, factor A + damping_a*I"),
                  damped_factor_inverse(S[i], ds, f"layer {layer.name!r}, factor S + damping_s*I"))
    return out


class FactorEigen(NamedTuple):
    """A K-FAC layer's factors in their eigenbases: ``A = Q_A diag(a) Q_Aᵀ``, ``S = Q_S diag(s) Q_Sᵀ``
    (``Q`` None for a diagonal factor, whose values are the factor itself), with the traces that set
    the damping split π."""

    QA: torch.Tensor | None
    a: torch.Tensor
    trace_a: float
    QS: torch.Tensor | None
    s: torch.Tensor
    trace_s: float


def factor_eigh(M: torch.Tensor, what: str):
    """``(Q, w)`` with ``M = Q diag(w) Qᵀ`` (``torch.linalg.eigh``), or ``(None, M)`` for a diagonal
    factor (a vector)."""
    if M.ndim == 1:
        return None, M
    w, Q = torch.linalg.eigh(M)
    if not (finite(w) and finite(Q)):
        raise ValueError(f"{what}: its eigendecomposition is not finite")
    return Q, w


def eigen_decompositions(layers, A, S):
    """``{i: FactorEigen}`` of every layer with factors (no damping: any λ applies later)."""
    out = {}
    for i, layer in enumerate(layers):
        if i not in A:
            continue
        QA, a = factor_eigh(A[i], f"layer {layer.name!r}, factor A")
        QS, s = factor_eigh(S[i], f"layer {layer.name!r}, factor S")
        out[i] = FactorEigen(QA, a, trace(A[i]), QS, s, trace(S[i]))
    return out


def _damped_values(w: torch.Tensor, shift: float, what: str) -> torch.Tensor:
    """``w + shift``, refused as ``damped_factor_inverse`` refuses: not positive anywhere."""
    shifted = w + shift
    if not bool((shifted > 0).all()):
        raise NotPositiveDefiniteError(f"{what}: an eigenvalue of the factor plus its damping is not positive "
                                       f"(damping {shift}); increase the damping",
                                       pivot=int(torch.nonzero((shifted <= 0).reshape(-1))[0, 0]) + 1, damping=shift)
    return shifted


def eigen_apply(E: FactorEigen, G: torch.Tensor, damping: float, layer) -> torch.Tensor:
    """``S̃⁻¹ G Ã⁻¹`` from the eigenbases, with the damping of this call (same split and value as
    :func:`damped_inverses` + :func:`kfac_apply`)::

        S̃⁻¹ G Ã⁻¹ = Q_S [(Q_Sᵀ G Q_A) ⊘ ((s + d_S) (a + d_A)ᵀ)] Q_Aᵀ.
    """
    n_out, n_in = layer.shape
    da, ds = _policy.kfac_damping(E.trace_a, n_in, E.trace_s, n_out, damping, True)
    a = _damped_values(E.a, da, f"layer {layer.name!r}, factor A + damping_a*I")
    s = _damped_values(E.s, ds, f"layer {layer.name!r}, factor S + damping_s*I")
    X = G if E.QS is None else E.QS.T @ G
    if E.QA is not None:
        X = X @ E.QA
    X = X / (s[:, None] * a[None, :])
    if E.QS is not None:
        X = E.QS @ X
    return X if E.QA is None else X @ E.QA.T


def kfac_apply(S_inv: torch.Tensor, G: torch.Tensor, A_inv: torch.Tensor) -> torch.Tensor:
    """``S̃⁻¹ G Ã⁻¹``, a diagonal inverse (a vector) scaling rows or columns instead of a product."""
    X = S_inv[:, None] * G if S_inv.ndim == 1 else S_inv @ G
    return X * A_inv[None, :] if A_inv.ndim == 1 else X @ A_inv


def diagonal_solve(d: torch.Tensor, g: torch.Tensor, damping: float, name: str) -> torch.Tensor:
    """``g / (d + λ)``; ``NotPositiveDefiniteError`` where ``d + λ`` is 0."""
    shifted = d + damping
    if not bool((shifted > 0).all()):
        raise NotPositiveDefiniteError(
            f"{name}: diag(F) + damping is not positive (damping {damping}); increase the damping",
            pivot=int(torch.nonzero((shifted <= 0).reshape(-1))[0, 0]) + 1, damping=damping)
    return g.to(d.dtype) / shifted


__all__ = [
    "FactorEigen",
    "damped_inverse",
    "damped_factor_inverse",
    "damped_inverses",
    "eigen_apply",
    "eigen_decompositions",
    "factor_eigh",
    "diagonal_solve",
    "finite",
    "fisher_into",
    "kfac_apply",
    "kl_beta",
    "numpy_view",
    "solve_scores",
    "trace",
]
