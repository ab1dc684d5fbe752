"""The dense Fisher and its factor reuse across EMA updates (float64): the old float32
factor preconditions CG on the new F + λI, attempts that cannot pay are given up early and
backed off, and ``SolveReport`` says what a solve did."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _validation as _v
from .._kernels import _dense_factor, _factor_solve, _fisher, _pcg_solve, _reuse_factor, damped_solve
from ._running import _RunningFisher


#: Smallest P for which ``DenseFisher`` reuses factors by default (float64).
REUSE_MIN_PARAMS = 1024

#: Most solves ``DenseFisher`` lets pass without trying its old factor after failed attempts
#: (the wait doubles with each failure, 1, 2, 4, ..., up to this; a success resets it).
REUSE_MAX_WAIT = 16


class SolveReport(NamedTuple):
    """How a curvature's last ``solve`` ran (its ``last_solve`` attribute).

    Attributes
    ----------
    refactored : bool
        Whether the solve factored F + λI (False: an earlier factor served as the
        preconditioner of conjugate gradients).
    iterations : int
        Preconditioned CG iterations of the solve that gave the answer (0 for a plain
        factor-and-solve).
    reuse : str
        What became of the old factor: ``"reused"`` (it preconditioned CG to the
        answer), ``"abandoned"`` (CG with it was given up, then F + λI was factored),
        ``"skipped"`` (not tried: recent attempts failed, see ``REUSE_MAX_WAIT``) or
        ``"none"`` (no factor of this damping, or reuse off).
    reuse_iterations : int
        CG iterations run with the old factor: those of the answer when reused, the
        ones spent in vain when abandoned, else 0.

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast import DenseFisher
    >>> rng = np.random.default_rng(0)
    >>> F = DenseFisher(50, decay=0.99, max_reuse_iters=10)
    >>> F.update(rng.standard_normal((100, 50)))
    >>> x = F.solve(np.ones(50), 1e-2)
    >>> F.last_solve.refactored                             # the first solve factors
    True
    >>> F.update(rng.standard_normal((100, 50)))            # F moves by 1 %
    >>> x = F.solve(np.ones(50), 1e-2)
    >>> F.last_solve.refactored, F.last_solve.reuse, 0 < F.last_solve.iterations <= 10   # CG, old factor
    (False, 'reused', True)
    >>> bool(np.allclose(F.mv(x) + 1e-2 * x, 1.0))
    True
    """

    refactored: bool = True
    iterations: int = 0
    reuse: str = "none"
    reuse_iterations: int = 0


class DenseFisher(_RunningFisher):
    """The full P×P Fisher matrix.

    ``update(J, weights=None)`` forms ``F_batch = Σ_i w_i j_i j_iᵀ / Σ_i w_i``
    and applies the EMA in place (the ``fisher(out=..., decay=...)`` kernel);
    ``solve`` is a Cholesky solve of ``(F + λI) x = g`` (``damped_solve``).

    Parameters
    ----------
    n_params : int
        P.
    decay : float in [0, 1)
        EMA factor; 0 keeps only the latest batch (1, which would keep the first batch
        forever, is rejected).
    dtype : float32 or float64
        Storage and compute precision; score rows are cast to it.
    max_reuse_iters : int >= 0, optional
        float64 only: factor reuse. Each solve keeps a float32 Cholesky factor of
        D(F + λI)D (D the unit-diagonal scaling); the next solve, after the EMA has
        moved F a little, runs preconditioned conjugate gradients on the new
        F + λI with that old factor as preconditioner, and factors afresh only when
        CG needs more than ``max_reuse_iters`` iterations or λ changed. An attempt is
        given up as soon as CG's observed rate predicts that ``max_reuse_iters``
        iterations cannot suffice (usually after one or two), and after a failed
        attempt the next 1, 2, 4, ... (at most ``REUSE_MAX_WAIT``) solves refactor
        without trying, so an F that moves too fast for reuse (small fresh batches,
        a small λ) costs what a plain solve costs. A fresh
        factor is also refined by CG on its own matrix (mixed precision), and when
        float32 cannot hold F + λI (condition number beyond ~1e7) the solve is a
        float64 Cholesky solve. 0 turns reuse off (every solve factors in the
        ``damped_solve`` default way). Default: 10 from P >= ``REUSE_MIN_PARAMS``
        (1024), 0 below, where a factorisation costs about as much as CG's passes
        and their Python overhead. ``last_solve`` tells what a solve did.
    reuse_tol : float
        CG's stopping test, a normwise backward error:
        ``‖g − (F + λI)x‖∞ <= reuse_tol · ‖F + λI‖∞ · ‖x‖∞``. The default, about
        9 float64 rounding units, is what a float64 Cholesky solve attains.

    Raises
    ------
    NumericOverflowError
        From ``update``, when the batch Fisher of finite rows overflows the dtype (the
        estimate is left as it was).

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast import DenseFisher
    >>> F = DenseFisher(2, decay=0.5)
    >>> F.update(np.array([[1.0, 2.0], [3.0, 4.0]]))        # the first update replaces: J.T @ J / N
    >>> F.update(np.array([[2.0, 0.0]]))                    # then the EMA: 0.5 F + 0.5 F_batch
    >>> F.to_dense()
    array([[4.5, 3.5],
           [3.5, 5. ]])
    >>> x = F.solve(np.array([1.0, 1.0]), damping=0.5)
    >>> bool(np.allclose(F.mv(x) + 0.5 * x, 1.0))
    True
    """

    def __init__(self, n_params: int, *, decay: float = 0.95, dtype=np.float64, max_reuse_iters: int | None = None,
                 reuse_tol: float = 1e-15):
        super().__init__(n_params, decay, dtype)
        self._F = np.zeros((self.n_params, self.n_params), dtype=self.dtype)
        if max_reuse_iters is None:
            max_reuse_iters = 10 if self.n_params >= REUSE_MIN_PARAMS else 0
        max_reuse_iters = _v.integer(max_reuse_iters, "DenseFisher", "max_reuse_iters", minimum=0)
        self.max_reuse_iters = max_reuse_iters
        self.reuse_tol = _v.open_unit(reuse_tol, "DenseFisher", "reuse_tol")
        # (float32 factor, damping, version) of the last factored F + λI: immutable, replaced
        # on refactoring, so snapshots hold it by reference and a restore brings it back.
        self._reuse = None
        # Failed attempts back off: solves left to refactor without trying, and the wait
        # after the next failure (state, so a restore brings them back with the factor).
        self._reuse_wait = 0
        self._reuse_backoff = 1
        self.last_solve = SolveReport()

    @property
    def nbytes(self) -> int:
        extra = self._cache.nbytes if isinstance(self._cache, np.ndarray) else 0
        if self._reuse is not None:
            extra += self._reuse[0].nbytes
        return self._F.nbytes + extra

    def update(self, J, weights=None) -> None:
        """Fold the score rows ``J`` (N, P) with optional weights (N,) into F."""
        func = self._func("update")
        J = _v.score_rows(J, self.n_params, self.dtype, func)
        # checks J's finiteness and the overflow of F before out is written; F itself is finite
        _fisher(J, weights, self._F, self._batch_decay(), True, func, trusted_out=True)
        self._updated()

    def solve(self, g, damping: float) -> np.ndarray:
        """``(F + damping·I)⁻¹ g``; see the module notes on reuse."""
        g, damping = self._rhs(g, damping)
        if self.max_reuse_iters and self.dtype == np.float64:
            return self._solve_reusing(g.astype(np.float64, copy=False), damping)
        self.last_solve = SolveReport()
        key = (self._version, damping)
        if self._cache_key != key or g.dtype != self.dtype:  # mixed dtypes promote, as damped_solve does
            x = damped_solve(self._F, g, damping, check_finite=False)
            if self._cache_key != key:
                self._cache_key, self._cache = key, None
            return x
        if self._cache is None:
            self._cache = _dense_factor(self._F, damping, "DenseFisher.solve")
        x = _factor_solve(self._cache, g.reshape(self.n_params, -1))
        return self._finite(x.reshape(g.shape))

    def _solve_reusing(self, g: np.ndarray, damping: float) -> np.ndarray:
        G = g.reshape(self.n_params, -1)
        reuse, spent = "none", 0
        if self._reuse is not None and self._reuse[1] == damping:
            factor, _, version = self._reuse
            if version == self._version:  # F unchanged since it was factored: its own factor
                X, iterations, ok = _pcg_solve(self._F, damping, factor, G, self.reuse_tol, 30, True)
                if ok:
                    self.last_solve = SolveReport(False, iterations, "reused", iterations)
                    return X.reshape(g.shape)
            elif self._reuse_wait:
                self._reuse_wait -= 1
                reuse = "skipped"
            else:
                X, spent, ok = _pcg_solve(self._F, damping, factor, G, self.reuse_tol, self.max_reuse_iters)
                if ok:
                    self._reuse_backoff = 1
                    self.last_solve = SolveReport(False, spent, "reused", spent)
                    return X.reshape(g.shape)
                # F moves too fast for this factor: refactor, and try again only after a wait
                # that doubles with each failure in a row.
                reuse = "abandoned"
                self._reuse_wait = self._reuse_backoff
                self._reuse_backoff = min(2 * self._reuse_backoff, REUSE_MAX_WAIT)
        self._reuse = None
        factor = _reuse_factor(self._F, damping)
        if factor is not None:  # CG on its own matrix: mixed-precision refinement
            X, iterations, ok = _pcg_solve(self._F, damping, factor, G, self.reuse_tol, 30, True)
            if ok:
                self._reuse = (factor, damping, self._version)
                self.last_solve = SolveReport(True, iterations, reuse, spent)
                return X.reshape(g.shape)
        # float32 cannot factor or precondition F + λI: float64 Cholesky (its errors too)
        self.last_solve = SolveReport(True, 0, reuse, spent)
        return damped_solve(self._F, g, damping, check_finite=False, precision="double")

    def mv(self, v) -> np.ndarray:
        """``F v``."""
        return self._F @ _v.finite_vector(v, self.n_params, self._func("mv"), "v")

    def to_dense(self) -> np.ndarray:
        return self._F.copy()
