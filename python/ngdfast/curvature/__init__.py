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
``kfac_precondition``. Across updates, ``DenseFisher`` (float64) lets its previous
factor precondition CG on the new F + λI, and gives up an attempt, and waits before
the next, as soon as F moves too fast for that to pay (its ``max_reuse_iters``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ._dense import REUSE_MAX_WAIT, REUSE_MIN_PARAMS, DenseFisher, SolveReport
from ._diagonal import DiagonalFisher
from ._kfac import KFACFisher
from ._lowrank import LowRankFisher

__all__ = ["Curvature", "DenseFisher", "DiagonalFisher", "KFACFisher", "LowRankFisher", "SolveReport"]

# Defined in private modules, one job each (_running: the shared state and snapshots;
# _dense: the dense Fisher and its factor reuse; _lowrank, _diagonal, _kfac), but public
# here: pickles, reprs and the API docs name ngdfast.curvature, as before the split.
for _cls in (SolveReport, DenseFisher, LowRankFisher, DiagonalFisher, KFACFisher):
    _cls.__module__ = __name__
del _cls


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
