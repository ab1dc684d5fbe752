"""Type stubs for the compiled module ``ngdfast._core``.

Low-level entry points: every argument has already been validated and
normalised by ``ngdfast._kernels`` (dtype float32/float64, all arrays of one
dtype, shapes consistent, weights normalised to sum 1, finiteness checked).
Arrays may have any strides; C- and Fortran-contiguous arrays (and arrays with
one unit stride) are used without copies, others are copied once. All compute
runs with the GIL released.

``info`` results follow LAPACK: 0 on success, ``k > 0`` when the leading minor
of order ``k`` of the damped matrix is not positive definite.
"""

from typing import Literal, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

_Float = Union[npt.NDArray[np.float32], npt.NDArray[np.float64]]

def all_finite(a: _Float) -> bool:
    """True when no element of ``a`` (any shape, any strides) is NaN or Inf."""

def fisher(
    J: _Float, w: Optional[_Float], out: Optional[_Float] = None, alpha: float = 1.0, beta: float = 0.0
) -> _Float:
    """``out = beta * out + alpha * J.T @ diag(w) @ J`` elementwise, in place; returns ``out``.

    Without ``out`` a new C-ordered (P, P) array is allocated and returned
    (``alpha * J.T @ diag(w) @ J``; ``beta`` is then not used).

    ``w`` is None (meaning ``w_i = 1/N``) or non-negative weights of shape (N,).
    ``out`` is (P, P), C- or Fortran-contiguous; with ``beta == 0`` it is not read.
    Both triangles are written.
    """

def damped_solve(F: _Float, G: _Float, damping: float) -> Tuple[_Float, int]:
    """Solve ``(F + damping I) X = G`` by Cholesky; G is (P, K). Only the lower
    triangle ``F[i, j], i >= j`` is read. Returns ``(X, info)`` with X of shape (P, K)."""

def cholesky_factor(F: _Float, damping: float) -> Tuple[_Float, int]:
    """``(L, info)``: the lower Cholesky factor of ``F + damping I`` (lower
    triangle of F read) as a Fortran-ordered (P, P) array, strict upper part zero."""

def cholesky_solve(L: _Float, G: _Float) -> _Float:
    """``X = (L L^T)^-1 G`` for a factor from :func:`cholesky_factor`; G (P, K)."""

class NonFiniteScores(ValueError):
    """Raised by the solves from score rows (``lowrank_solve``, ``natural_gradient_dense``
    and their ``_mixed`` forms) when the diagonal of their Gram product is not finite: J holds
    NaN/Inf, or its squares overflow. Internal: ``ngdfast._kernels`` raises the public error."""

def lowrank_solve(J: _Float, w: Optional[_Float], G: _Float, damping: float) -> Tuple[_Float, int]:
    """Solve ``(J.T diag(w) J + damping I) X = G`` by Woodbury in sample space
    (N x N Cholesky), never forming P x P. ``damping > 0``. Returns ``(X, info)``."""

def natural_gradient_dense(J: _Float, w: Optional[_Float], G: _Float, damping: float) -> Tuple[_Float, int]:
    """Form ``F = J.T diag(w) J`` in one P x P buffer, factor ``F + damping I`` in
    place and solve for G (P, K). Returns ``(X, info)``."""

def kfac_precondition(
    grad: _Float, A: _Float, S: _Float, damping_a: float, damping_s: float
) -> Tuple[_Float, int, Literal["", "A", "S"]]:
    """``X = (S + damping_s I)^-1 grad (A + damping_a I)^-1`` with grad (out, in),
    A (in, in), S (out, out). Returns ``(X, info, factor)`` where ``factor`` names
    the factor whose Cholesky failed ("" on success)."""

def set_num_threads(n: int) -> None:
    """Number of threads used by the compiled kernels (>= 1)."""

def get_num_threads() -> int: ...

def set_default_num_threads(n: int) -> None:
    """Size the pool gets when first used (from ``ngdfast._settings``; n < 1: the hardware's count)."""

def load_blas(path: str, prefix: str) -> bool:
    """Load the BLAS/LAPACK library at ``path`` privately (``RTLD_LOCAL``, one thread) for tile
    kernels (symbols ``{prefix}dgemm_`` ...); False (Eigen tiles stay in use, ``build_info()
    ["blas_note"]`` says why) when it cannot be loaded or is already loaded by someone else."""

def blas_loaded() -> bool: ...
def blas_active() -> bool: ...

def use_blas(enabled: bool) -> None:
    """Switch between the loaded BLAS tile kernels and Eigen's own."""

def load_host_blas(path: str, prefix: str, suffix: str) -> bool:
    """Bind to NumPy's already loaded OpenBLAS at ``path`` (symbols
    ``{prefix}dsyrk{suffix}`` ..., 64-bit integers); False if it is not loaded or lacks them."""

def set_borrow_mode(mode: Literal["never", "auto", "always"]) -> None:
    """Whether the Gram products of ``fisher`` and the low-rank solves run on NumPy's
    OpenBLAS: ``"auto"`` when another thread of the process is running (NumPy's
    workers spin ~0.1 s after each NumPy call), ``"never"``, or ``"always"``."""

def get_borrow_mode() -> Literal["never", "auto", "always"]: ...

def other_thread_running() -> bool:
    """True when a thread other than the caller and ngdfast's workers is running."""

def set_thread_borrow_never(on: bool) -> None:
    """This thread's calls never borrow NumPy's BLAS (True) or follow the mode (False)."""

def thread_borrow_never() -> bool: ...

def set_tiles(dtype: Literal["float64", "float32"], values: dict) -> None:
    """Set fields of the blocking of one dtype (csrc/ngdfast/tiles.hpp; ngdfast._tiles derives them)."""

def get_tiles(dtype: Literal["float64", "float32"]) -> dict: ...
def gram_deep(k: int, depth: int) -> bool:
    """Whether the Gram of a contraction of k runs in tall blocks under a BLAS pass depth of ``depth``."""

def build_info() -> dict:
    """Compiler, flags, SIMD instruction sets (built and of this CPU), tile backend and the
    kernels OpenBLAS chose at run time, threads."""

# Mixed precision (float64 data only; see ngdfast._precision and csrc/ngdfast/refine.hpp).
# status: 0 refined in mixed precision, 1 float32 factorisation failed, 2 refinement
# stalled (both: the float64 path ran), 3 float64 path without trying.

def damped_solve_mixed(F: np.ndarray, G: np.ndarray, damping: float) -> tuple[np.ndarray, int, int, int]:
    """``(X, info, status, iterations)`` for (F + damping I) X = G."""

def natural_gradient_dense_mixed(
    J: np.ndarray, w: Optional[np.ndarray], G: np.ndarray, damping: float
) -> tuple[np.ndarray, int, int, int]: ...

def lowrank_solve_mixed(
    J: np.ndarray, w: Optional[np.ndarray], G: np.ndarray, damping: float
) -> tuple[np.ndarray, int, int, int]: ...

class MixedFactor:
    """Float32 Cholesky factor of D (F + damping I) D, D = diag(F + damping I)^-1/2 (opaque)."""

    @property
    def n(self) -> int: ...
    @property
    def nbytes(self) -> int: ...

def mixed_factor(F: np.ndarray, damping: float) -> tuple[MixedFactor, int]:
    """``(factor, info)``; info > 0: not positive definite in float32 (or a diagonal entry <= 0)."""

def pcg_solve(
    F: np.ndarray, damping: float, factor: MixedFactor, G: np.ndarray, tol: float, max_iter: int,
    factor_of_F: bool = False,
) -> tuple[np.ndarray, int, bool]:
    """``(X, iterations, converged)`` of CG on (F + damping I) X = G preconditioned by ``factor``,
    to a normwise backward error of ``tol``; given up after ``max_iter`` iterations, or once the
    observed rate predicts that ``max_iter`` cannot suffice. ``factor_of_F``: ``factor`` is of
    this F + damping I, whose norm it holds."""
