"""The Fisher kept as weighted score rows, solved by Woodbury in sample space."""

from __future__ import annotations

import numpy as np

from .. import _validation as _v
from .._errors import NotPositiveDefiniteError
from .._kernels import damped_solve, fisher, lowrank_solve
from ._running import _frozen, _overflow_guard, _rows, _RunningFisher


class LowRankFisher(_RunningFisher):
    """The Fisher kept as weighted score rows: ``F = Σ_r w_r j_r j_rᵀ / Σ_r w_r``.

    Each update scales the stored rows' weights by ``decay`` and appends the
    batch's rows with total weight ``1 − decay`` (the first batch: weight 1),
    which is the EMA of the dense representation row by row. Past ``max_rows``
    rows the oldest are dropped; the remaining weights are renormalised by the
    kernels, i.e. the estimate becomes the EMA over the kept window. A single
    batch with more than ``max_rows`` rows keeps its ``max_rows`` heaviest rows,
    which loses little for ``kind="exact"`` scores whose weights p_ik are mostly
    tiny. Rows with zero weight are not stored.

    ``solve`` uses the Woodbury identity in sample space (``lowrank_solve``,
    O(N²P) with N stored rows); nothing P×P is ever formed, except by
    ``to_dense``, which builds F on request.

    The stored arrays are never modified in place: an update builds the new
    (N, P) block (the kept rows, oldest first, then the batch), so a
    :meth:`snapshot` is a set of references and costs nothing.

    Parameters
    ----------
    n_params : int
    max_rows : int
        Capacity in rows (memory ``max_rows·P``; solve cost grows as max_rows²).
    decay : float in [0, 1)
        A row whose squared norm overflows the dtype is rejected by ``update``
        (``NumericOverflowError``), as every Fisher entry is bounded by those norms.
    dtype : float32 or float64

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast import DenseFisher, LowRankFisher
    >>> rng = np.random.default_rng(0)
    >>> low, dense = LowRankFisher(100, max_rows=20, decay=0.5), DenseFisher(100, decay=0.5)
    >>> for _ in range(2):
    ...     J = rng.standard_normal((10, 100))
    ...     low.update(J)
    ...     dense.update(J)
    >>> low.n_rows                                          # rows kept, never a 100 x 100 matrix
    20
    >>> g = rng.standard_normal(100)
    >>> bool(np.allclose(low.solve(g, 0.1), dense.solve(g, 0.1)))
    True
    """

    def __init__(self, n_params: int, *, max_rows: int = 1024, decay: float = 0.95, dtype=np.float64):
        super().__init__(n_params, decay, dtype)
        self.max_rows = _v.integer(max_rows, "LowRankFisher", "max_rows")
        self._rows = _frozen(np.zeros((0, self.n_params), dtype=self.dtype))
        self._w = _frozen(np.zeros(0, dtype=self.dtype))

    @property
    def nbytes(self) -> int:
        extra = self._cache.nbytes if isinstance(self._cache, np.ndarray) else 0
        return self._rows.nbytes + self._w.nbytes + extra

    @property
    def n_rows(self) -> int:
        return self._rows.shape[0]

    @property
    def rows(self) -> np.ndarray:
        """The stored score rows (n_rows, P), oldest first (read-only)."""
        return self._rows

    @property
    def weights(self) -> np.ndarray:
        """Each stored row's weight, not normalised (read-only)."""
        return self._w

    def snapshot(self) -> dict:
        # The arrays are immutable, so references are a faithful copy.
        return dict(self._state())

    def restore(self, snapshot: dict) -> None:
        self._reinstate(dict(snapshot))

    def update(self, J, weights=None) -> None:
        """Append the score rows ``J`` (N, P) with optional weights (N,)."""
        given = J
        func = self._func("update")
        J = _rows(J, self.n_params, self.dtype, func)
        w = _v.normalized_weights(weights, J.shape[0], self.dtype, func, f"J of shape {J.shape}")
        # Every later Gram entry w_r w_s j_r.j_s / sum(w)^2 is bounded by the rows' squared norms.
        with np.errstate(over="ignore"):
            _overflow_guard(np.einsum("ij,ij->i", J, J), func, "the squared norm of a row of J (its Fisher)")
        if w is None:
            w = np.full(J.shape[0], 1.0 / J.shape[0], dtype=self.dtype)
        else:
            keep = w > 0
            if not keep.all():
                J, w = J[keep], w[keep]
        if J.shape[0] > self.max_rows:
            heaviest = np.sort(np.argpartition(-w, self.max_rows - 1)[: self.max_rows])
            J, w = J[heaviest], w[heaviest]
            w = w / w.sum()
        m = J.shape[0]
        kept = min(self.n_rows, self.max_rows - m)
        decay = self._batch_decay()
        if kept:
            rows = np.empty((kept + m, self.n_params), dtype=self.dtype)
            rows[:kept] = self._rows[self.n_rows - kept :]
            rows[kept:] = J
        elif np.shares_memory(J, given if isinstance(given, np.ndarray) else np.asarray(given)):
            rows = J.copy()  # never keep a reference to the caller's array
        else:
            rows = J  # already a private copy (converted or selected)
        self._rows = _frozen(rows)
        self._w = _frozen(np.concatenate([decay * self._w[self._w.shape[0] - kept :], (1.0 - decay) * w]))
        self._updated()

    def solve(self, g, damping: float) -> np.ndarray:
        """``(F + damping·I)⁻¹ g`` by Woodbury; ``damping = 0`` raises ``NotPositiveDefiniteError``."""
        g, damping = self._rhs(g, damping)
        if damping == 0:
            # Woodbury divides by λ; with N < P rows F is singular anyway.
            raise NotPositiveDefiniteError(
                f"LowRankFisher.solve needs damping > 0 (F from {self.n_rows} rows has rank < "
                f"{self.n_params} or the Woodbury form is unavailable); increase the damping",
                pivot=min(self.n_rows + 1, self.n_params),
                damping=damping,
            )
        if self.n_rows == 0:
            with np.errstate(over="ignore"):
                return self._finite(g / damping)
        R, w = self._rows, self._w
        key = (self._version, damping)
        if self._cache_key != key:
            x = lowrank_solve(R, g, damping, w, check_finite=False)
            self._cache_key, self._cache = key, None
            return x
        # Woodbury: with U = diag(s) R, s = sqrt(w / Σw),
        # (UᵀU + λI)⁻¹ g = (g − Uᵀ (UUᵀ + λI)⁻¹ U g) / λ; keep (UUᵀ + λI)⁻¹ (N×N).
        s = np.sqrt(w / w.sum())
        if self._cache is None:
            gram = (R @ R.T) * s[:, None] * s[None, :]
            self._cache = damped_solve(gram, np.eye(self.n_rows, dtype=self.dtype), damping)
        with np.errstate(over="ignore", invalid="ignore"):
            Ug = (R @ g) * (s if g.ndim == 1 else s[:, None])
            core = self._cache @ Ug
            x = (g - R.T @ (core * (s if g.ndim == 1 else s[:, None]))) / damping
        return self._finite(x)

    def mv(self, v) -> np.ndarray:
        """``F v = Rᵀ (w ⊙ R v) / Σw`` in O(N·P)."""
        v = _v.finite_vector(v, self.n_params, self._func("mv"), "v")
        if self.n_rows == 0:
            return np.zeros_like(v, dtype=np.result_type(v, self.dtype))
        R, w = self._rows, self._w
        wn = w / w.sum()
        return R.T @ ((R @ v) * (wn if v.ndim == 1 else wn[:, None]))

    def to_dense(self) -> np.ndarray:
        """F as a (P, P) array: the one place this class forms P×P."""
        if self.n_rows == 0:
            return np.zeros((self.n_params, self.n_params), dtype=self.dtype)
        return fisher(self._rows, self._w)
