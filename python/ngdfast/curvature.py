"""Running estimates of the Fisher information matrix.

Four representations of ``F ∈ R^{P×P}`` share one protocol, so the optimizer
does not care which one it holds:

=========================  ========================  ==================  ==================
class                      stores                    memory              solve cost
=========================  ========================  ==================  ==================
:class:`DenseFisher`       F                         P²                  P³/3 (Cholesky)
:class:`LowRankFisher`     ≤ max_rows weighted rows  max_rows·P          N²P (Woodbury)
:class:`DiagonalFisher`    diag F                    P                   P
:class:`KFACFisher`        A_l, S_l per layer        Σ in_l² + out_l²    Σ in_l³ + out_l³
=========================  ========================  ==================  ==================

Protocol
--------
``update(...)``
    Fold a batch into the running estimate with the exponential moving average
    ``F ← decay·F + (1 − decay)·F_batch``. The first update *replaces* the empty
    estimate (``F = F_batch``) instead of averaging it with zeros, so the scale
    of F is right from the first step; ``decay`` is in [0, 1) (1 would keep the
    first batch forever). Inputs are validated first, by the same rules and with
    the same wording as the kernels (``ngdfast._validation``: ``ValueError``
    naming the argument, ``TypeError`` for complex/object data or non-integer
    sizes); a batch whose statistics are NaN/Inf, or overflow the estimate's
    dtype (``NumericOverflowError``, a ``ValueError``), is rejected too, and a
    rejected update changes no state.
``solve(g, damping)``
    ``(F + damping·I)⁻¹ g`` for g of shape (P,) or (P, K).
    ``NotPositiveDefiniteError`` when the damped matrix is not positive definite,
    ``NumericOverflowError`` when the solution overflows the dtype.
``mv(v)``
    ``F v``.
``to_dense()``
    F as a new (P, P) array.
``nbytes``, ``n_params``, ``decay``, ``n_updates``
    Memory held, P, the EMA factor and the number of updates so far.
``snapshot()`` / ``restore(snapshot)``
    Copy of the state and its reinstatement, used by the optimizer to undo an
    update whose step failed.

Reuse of factorisations: the first ``solve`` after an update (or with a new
damping) factors and solves in one kernel call, which is the optimizer's pattern
of one solve per update and costs nothing extra. A *second* ``solve`` with the
same state and damping keeps a factorisation until the next ``update`` or
damping change (dense: the P×P Cholesky factor of F + λI, so later solves are
two triangular solves; low-rank: the inverse of the N×N Woodbury core, so later
solves are matrix-vector products); a trainer that refreshes the curvature every
k steps pays for one factorisation per refresh. The diagonal keeps ``1 / (d + λ)`` from its first solve. K-FAC
factors are small (layer widths) and are refactored on each solve by
``kfac_precondition``.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from . import _validation as _v
from ._errors import NotPositiveDefiniteError
from ._kernels import _all_finite as all_finite
from ._kernels import _dense_factor, _factor_solve, _pcg_solve, _reuse_factor
from ._kernels import _fisher, damped_solve, fisher, kfac_precondition, lowrank_solve

__all__ = ["Curvature", "DenseFisher", "DiagonalFisher", "KFACFisher", "LowRankFisher", "SolveReport"]


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


@runtime_checkable
class Curvature(Protocol):
    """What :class:`ngdfast.NaturalGradient` needs from a Fisher estimate.

    Examples
    --------
    >>> import ngdfast
    >>> from ngdfast.curvature import Curvature
    >>> all(isinstance(c, Curvature) for c in
    ...     (ngdfast.DenseFisher(6), ngdfast.LowRankFisher(6), ngdfast.DiagonalFisher(6), ngdfast.KFACFisher([(2, 3)])))
    True
    """

    n_params: int
    decay: float

    def update(self, *stats, weights=None) -> None: ...
    def solve(self, g: np.ndarray, damping: float) -> np.ndarray: ...
    def mv(self, v: np.ndarray) -> np.ndarray: ...
    def to_dense(self) -> np.ndarray: ...
    def snapshot(self) -> object: ...
    def restore(self, snapshot: object) -> None: ...

    @property
    def nbytes(self) -> int: ...


# --------------------------------------------------------------------- checks
# Every argument rule lives in ngdfast._validation (one per argument kind, the wording
# shared with the kernels); these only adapt it to a running estimate.


def _rows(J, n_cols: int, dtype, func: str, name: str = "J") -> np.ndarray:
    """Finite score rows (N, n_cols) in the estimate's dtype."""
    J = _v.score_rows(J, n_cols, dtype, func, name)
    _v.require_finite(J, func, name, all_finite)
    return J


def _overflow_guard(values: np.ndarray, func: str, what: str) -> np.ndarray:
    """``values`` (a batch statistic), unless it overflowed: a running estimate keeps only
    representable statistics (a rejected update changes nothing)."""
    if not all_finite(values):
        raise _v.overflow(func, what, values.dtype)
    return values


def _copied(value):
    """Arrays (alone or in a list) copied; everything else in our state is immutable."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class _RunningFisher:
    """State shared by the representations: size, EMA decay, update counter.

    ``_version`` changes on every update and restore; solve caches are keyed
    by ``(_version, damping)``.
    """

    def __init__(self, n_params: int, decay: float, dtype):
        func = type(self).__name__
        self.n_params = _v.integer(n_params, func, "n_params")
        self.decay = _v.decay_arg(decay, func, running=True)
        self.dtype = _v.storage_dtype(dtype, func)
        self.n_updates = 0
        self._version = 0
        self._cache_key = None
        self._cache = None

    def _func(self, method: str) -> str:
        return f"{type(self).__name__}.{method}"

    def _rhs(self, g, damping, method: str = "solve"):
        """A finite right-hand side (P,) or (P, K) and a damping >= 0."""
        func = self._func(method)
        return _v.finite_vector(g, self.n_params, func, "g"), _v.nonnegative(damping, func, "damping")

    def _finite(self, x: np.ndarray, method: str = "solve") -> np.ndarray:
        """A result computed here (not by a kernel, which checks its own), unless it overflowed."""
        if not all_finite(x):
            raise _v.overflow(self._func(method), _v.SOLUTION, x.dtype)
        return x

    def _batch_decay(self) -> float:
        """Weight of the old estimate in this update: 0 for the first one."""
        return self.decay if self.n_updates else 0.0

    def _updated(self) -> None:
        self.n_updates += 1
        self._version += 1
        self._cache_key = self._cache = None

    def _state(self) -> dict:
        # The version and the solve cache are bookkeeping, not part of the estimate.
        return {k: v for k, v in vars(self).items() if k not in ("_version", "_cache_key", "_cache")}

    def snapshot(self) -> dict:
        """A copy of the estimate, restorable with :meth:`restore`."""
        return {k: _copied(v) for k, v in self._state().items()}

    def restore(self, snapshot: dict) -> None:
        """Reinstate a :meth:`snapshot` exactly (the snapshot stays reusable)."""
        self._reinstate({k: _copied(v) for k, v in snapshot.items()})

    def _reinstate(self, state: dict) -> None:
        vars(self).update(state)
        self._version += 1  # a new cache key: nothing solved before applies
        self._cache_key = self._cache = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_params={self.n_params}, decay={self.decay}, "
            f"n_updates={self.n_updates}, nbytes={self.nbytes})"
        )


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


class KFACFisher(_RunningFisher):
    """Kronecker-factored Fisher: block diagonal over layers, ``F_l ≈ S_l ⊗ A_l``.

    For a layer with weights ``W`` of shape (out, in) (bias as the last input
    column), ``A = fisher(ā)`` over its inputs ā (N, in) and ``S = fisher(δ)``
    over the gradients of log p with respect to its outputs δ (N, out); with the
    row-major flattening of W, ``F_layer ≈ S ⊗ A`` and the damped solve is
    ``X = S̃⁻¹ G Ã⁻¹`` (``kfac_precondition``, with factored Tikhonov damping
    ``Ã = A + π√λ I``, ``S̃ = S + (√λ/π) I``).

    Parameters
    ----------
    layer_shapes : sequence of (out, in)
        Shapes of the per-layer weight matrices, e.g. ``model.layer_shapes``.
    decay : float in [0, 1)
        EMA factor of both factors. A layer whose factor of finite statistics overflows
        the dtype is rejected by ``update`` (``NumericOverflowError``, no layer changed).
    dtype : float32 or float64
    factored_damping : bool
        Use the π-balanced damping (else π = 1).

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast import KFACFisher
    >>> rng = np.random.default_rng(0)
    >>> K = KFACFisher([(2, 3)])                            # one layer, W of shape (out=2, in=3)
    >>> K.update([rng.standard_normal((50, 3))], [rng.standard_normal((50, 2))])
    >>> (A, S), = K.factors
    >>> bool(np.allclose(K.to_dense(), np.kron(S, A)))      # F = S kron A
    True
    >>> x = K.solve(np.ones(6), damping=0.0)
    >>> bool(np.allclose(K.mv(x), 1.0))
    True
    """

    def __init__(self, layer_shapes: Sequence[tuple[int, int]], *, decay: float = 0.95, dtype=np.float64,
                 factored_damping: bool = True):
        func = "KFACFisher"
        shapes = _v.layer_shapes_arg(layer_shapes, func)
        super().__init__(sum(o * i for o, i in shapes), decay, dtype)
        self.layer_shapes = shapes
        self.factored_damping = bool(factored_damping)
        self._offsets = np.cumsum([0] + [o * i for o, i in shapes]).tolist()
        self._A = [np.zeros((i, i), dtype=self.dtype) for _, i in shapes]
        self._S = [np.zeros((o, o), dtype=self.dtype) for o, _ in shapes]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._A) + sum(s.nbytes for s in self._S)

    @property
    def factors(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(A_l, S_l)`` per layer (copies)."""
        return [(A.copy(), S.copy()) for A, S in zip(self._A, self._S)]

    def split(self, flat) -> list[np.ndarray]:
        """Per-layer (out, in) views of a flat (P,) vector."""
        flat = np.asarray(flat)
        if flat.shape != (self.n_params,):
            raise ValueError(f"KFACFisher.split: expected a flat vector of shape ({self.n_params},), got {flat.shape}")
        return [
            flat[a:b].reshape(shape)
            for a, b, shape in zip(self._offsets[:-1], self._offsets[1:], self.layer_shapes)
        ]

    def flatten(self, layers: Sequence[np.ndarray]) -> np.ndarray:
        """Concatenate per-layer matrices into a flat (P,) vector."""
        return np.concatenate([np.ravel(X) for X in self._check_layers(layers, "layers")])

    def _check_layers(self, layers, name: str, func: str = "KFACFisher") -> list[np.ndarray]:
        if len(layers) != len(self.layer_shapes):
            raise ValueError(f"{func}: {name} must hold {len(self.layer_shapes)} layers, got {len(layers)}")
        out = []
        for l, (X, shape) in enumerate(zip(layers, self.layer_shapes)):
            X, dtype = _v.real_array(X, func, f"{name}[{l}]")
            if tuple(X.shape) != shape:
                raise ValueError(f"{func}: {name}[{l}] must have shape {shape}, got shape {tuple(X.shape)}")
            X = _v.astype(X, dtype)
            _v.require_finite(X, func, f"{name}[{l}]", all_finite)
            out.append(X)
        return out

    def update(self, activations, output_grads, weights=None) -> None:
        """Fold per-layer statistics into the factors.

        Parameters
        ----------
        activations : sequence of ndarray (N_l, in_l)
            Layer inputs with the ones column (``model.kfac_stats``).
        output_grads : sequence of ndarray (M_l, out_l)
            Gradients of log p with respect to the layer outputs; M_l may
            differ from N_l (A and S are separate averages).
        weights : ndarray (N,), optional
            Row weights for both factors; then every layer needs N_l = M_l = N.
        """
        func = self._func("update")
        n = len(self.layer_shapes)
        if len(activations) != n or len(output_grads) != n:
            raise ValueError(
                f"{func}: expected {n} layers of activations and output_grads, "
                f"got {len(activations)} and {len(output_grads)}"
            )
        # The new factors are formed beside the old ones and swapped in only when every
        # layer passed (finite, no overflow), so a bad layer leaves all layers as they were.
        decay = self._batch_decay()
        new_A, new_S = [], []
        for l, (out, inp) in enumerate(self.layer_shapes):
            a = _v.score_rows(activations[l], inp, self.dtype, func, f"activations[{l}]")
            d = _v.score_rows(output_grads[l], out, self.dtype, func, f"output_grads[{l}]")
            if weights is not None and d.shape[0] != a.shape[0]:
                raise ValueError(
                    f"{func}: weights need as many rows in output_grads[{l}] {d.shape} "
                    f"as in activations[{l}] {a.shape}"
                )
            for stats, old, new, name in ((a, self._A[l], new_A, f"activations[{l}]"),
                                          (d, self._S[l], new_S, f"output_grads[{l}]")):
                F = old.copy() if decay else np.empty_like(old)
                new.append(_fisher(stats, weights, F, decay, True, func, name, trusted_out=True))
        self._A, self._S = new_A, new_S
        self._updated()

    def solve(self, g, damping: float):
        """Precondition per layer: ``X_l = S̃_l⁻¹ G_l Ã_l⁻¹``.

        ``g`` is a flat (P,) vector (returns flat) or a list of per-layer
        (out, in) gradients (returns a list).
        """
        func = self._func("solve")
        damping = _v.nonnegative(damping, func, "damping")
        flat = not isinstance(g, (list, tuple))
        if flat:
            layers = self.split(_v.finite_vector(g, self.n_params, func, "g", matrix=False))
        else:
            layers = self._check_layers(g, "g", func)
        result = []
        for l, (G, A, S) in enumerate(zip(layers, self._A, self._S)):
            try:
                result.append(kfac_precondition(G, A, S, damping, factored_damping=self.factored_damping))
            except NotPositiveDefiniteError as e:
                raise NotPositiveDefiniteError(f"layer {l}: {e}", pivot=e.pivot, damping=damping) from e
        return np.concatenate([X.ravel() for X in result]) if flat else result

    def mv(self, v):
        """``F v`` with ``(S ⊗ A) vec(V) = vec(S V A)`` per layer; flat or per-layer like solve."""
        func = self._func("mv")
        flat = not isinstance(v, (list, tuple))
        if flat:
            layers = self.split(_v.finite_vector(v, self.n_params, func, "v", matrix=False))
        else:
            layers = self._check_layers(v, "v", func)
        result = [S @ V @ A for V, A, S in zip(layers, self._A, self._S)]
        return np.concatenate([X.ravel() for X in result]) if flat else result

    def to_dense(self) -> np.ndarray:
        """Block-diagonal ``diag(S_1 ⊗ A_1, ..., S_L ⊗ A_L)`` (P, P)."""
        F = np.zeros((self.n_params, self.n_params), dtype=self.dtype)
        for a, b, A, S in zip(self._offsets[:-1], self._offsets[1:], self._A, self._S):
            F[a:b, a:b] = np.kron(S, A)
        return F
