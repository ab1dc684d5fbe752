"""What the running Fisher estimates share: size, EMA decay, update counter, the solve
cache's key, snapshots; and the checks that adapt ngdfast._validation to a running estimate."""

from __future__ import annotations

import numpy as np

from .. import _validation as _v
from .._kernels import _all_finite as all_finite


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
