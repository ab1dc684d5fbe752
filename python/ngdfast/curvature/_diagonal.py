"""The diagonal of the Fisher."""

from __future__ import annotations

import numpy as np

from .. import _validation as _v
from .._errors import NotPositiveDefiniteError
from ._running import _overflow_guard, _rows, _RunningFisher


class DiagonalFisher(_RunningFisher):
    """The diagonal of the Fisher: ``d = Σ_i w_i j_i² / Σ_i w_i`` (elementwise square).

    ``solve`` is ``g / (d + λ)``; it raises ``NotPositiveDefiniteError`` when
    some ``d_j + λ`` is 0 (a parameter no score row touches, with no damping).

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast import DiagonalFisher
    >>> D = DiagonalFisher(2)
    >>> D.update(np.array([[1.0, 2.0], [3.0, 4.0]]))
    >>> D.diagonal                                          # mean of J**2 per column
    array([ 5., 10.])
    >>> D.solve(np.array([6.0, 11.0]), damping=1.0)         # g / (d + damping)
    array([1., 1.])
    """

    def __init__(self, n_params: int, *, decay: float = 0.95, dtype=np.float64):
        super().__init__(n_params, decay, dtype)
        self._d = np.zeros(self.n_params, dtype=self.dtype)

    @property
    def nbytes(self) -> int:
        extra = self._cache.nbytes if isinstance(self._cache, np.ndarray) else 0
        return self._d.nbytes + extra

    @property
    def diagonal(self) -> np.ndarray:
        """diag F, a copy."""
        return self._d.copy()

    def update(self, J, weights=None) -> None:
        """Fold the score rows ``J`` (N, P) with optional weights (N,) into diag F."""
        func = self._func("update")
        J = _rows(J, self.n_params, self.dtype, func)
        n = J.shape[0]
        w = _v.normalized_weights(weights, n, self.dtype, func, f"J of shape {J.shape}")
        # rows scaled by sqrt(w) before squaring, as fisher does: d = diag(J_w^T J_w)
        scale = np.full(n, np.sqrt(1.0 / n), dtype=self.dtype) if w is None else np.sqrt(w)
        decay = self._batch_decay()
        with np.errstate(over="ignore", invalid="ignore"):
            Jw = J * scale[:, None]
            d = decay * self._d + (1.0 - decay) * np.einsum("ij,ij->j", Jw, Jw)
        self._d = _overflow_guard(d, func, f"the diagonal of {_v.FISHER_GRAM} of J")
        self._updated()

    def solve(self, g, damping: float) -> np.ndarray:
        """``g / (diag F + damping)``."""
        g, damping = self._rhs(g, damping)
        key = (self._version, damping)
        if self._cache_key != key:
            with np.errstate(over="ignore"):  # a damping beyond float32's range is +inf there
                shifted = self._d + damping
            bad = np.flatnonzero(shifted <= 0)
            if bad.size:
                raise NotPositiveDefiniteError(
                    f"diag(F) + damping is not positive at index {bad[0]} "
                    f"(pivot {bad[0] + 1}, damping {damping}); increase the damping",
                    pivot=int(bad[0]) + 1,
                    damping=damping,
                )
            with np.errstate(over="ignore"):  # 1/subnormal is Inf: the solve below reports it
                self._cache_key, self._cache = key, 1.0 / shifted
        with np.errstate(over="ignore"):
            return self._finite(g * (self._cache if g.ndim == 1 else self._cache[:, None]))

    def mv(self, v) -> np.ndarray:
        v = _v.finite_vector(v, self.n_params, self._func("mv"), "v")
        return v * (self._d if v.ndim == 1 else self._d[:, None])

    def to_dense(self) -> np.ndarray:
        return np.diag(self._d)
