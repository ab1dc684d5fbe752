"""Which arithmetic a float64 solve runs in, and what it reports.

``precision="mixed"`` factors F + λI (or the Woodbury Gram) in float32, about
twice the float64 rate, and refines the answer with float64 residuals until it
meets LAPACK dsposv's normwise backward-error test
(``‖r‖∞ ≤ ‖x‖∞ ‖A‖∞ ε₆₄ √n``) or the correction falls below float64 rounding;
when the float32 factorisation fails or refinement stalls (condition numbers
beyond ~1e6–1e7, where refinement converges at a rate of about cond·ε₃₂), the
float64 factorisation runs instead. The answer is the float64 one either way;
:class:`SolveInfo` says which path produced it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

# The crossovers below are those of 256-bit (AVX2) kernels; the ones in use are chosen for
# the tile engine's kernels at run time (``ngdfast._tiles``, :func:`thresholds`).

#: Smallest P for which ``precision="auto"`` refines a dense solve (damped_solve,
#: natural_gradient method="dense"): below it the refinement's passes over F cost
#: more than the float32 factorisation saves (measured on 2 cores with Haswell
#: kernels, same process: P=256 mixed/double time 1.4, P=512 0.57, P=1024 0.85,
#: P=2048 0.79, P=4096 0.62).
MIXED_MIN_DENSE = 512
#: Smallest N for which ``precision="auto"`` refines a Woodbury solve: the Gram
#: (N²P) must outweigh the refinement's passes over J (a few NP each); measured
#: with Haswell kernels, mixed/double time N=32 P=4096 1.3, N=64 0.93, N=128 0.61,
#: N=256 0.54 (P=16384). 512 with AVX-512 kernels (``ngdfast._tiles``).
MIXED_MIN_SAMPLES = 128
#: ...and P at least this (smaller problems take microseconds either way).
MIXED_MIN_PARAMS = 2048


class Thresholds(NamedTuple):
    """The ``precision="auto"`` crossovers in use: P (dense), N and P (Woodbury)."""

    dense: int
    samples: int
    params: int


def thresholds() -> Thresholds:
    """The crossovers chosen for the tile engine's kernels (``ngdfast._tiles``), or the
    module's defaults while no compiled core is set up (the reference alone)."""
    from . import _tiles  # imports no compiled code until a profile is applied

    profile = _tiles.current()
    if profile is None:
        return Thresholds(MIXED_MIN_DENSE, MIXED_MIN_SAMPLES, MIXED_MIN_PARAMS)
    c = profile.crossovers
    return Thresholds(c["mixed_min_dense"], c["mixed_min_samples"], c["mixed_min_params"])

_FALLBACK = {1: "float32 factorisation failed", 2: "refinement did not converge"}


class SolveInfo(NamedTuple):
    """How a solve ran (``return_info=True``).

    Attributes
    ----------
    precision : {"single", "double", "mixed"}
        The arithmetic the returned answer came from: "single" for float32 data,
        "mixed" for a float32 factor refined to the float64 answer, "double" for a
        float64 factorisation.
    iterations : int
        Refinement steps taken (also those of a refinement that was abandoned).
    fallback : str or None
        Why the mixed path was abandoned for the float64 factorisation, or None.

    Examples
    --------
    >>> import numpy as np
    >>> import ngdfast
    >>> F = ngdfast.fisher(np.random.default_rng(0).standard_normal((600, 520)))
    >>> x, info = ngdfast.damped_solve(F, np.ones(520), 1e-2, precision="mixed", return_info=True)
    >>> info.precision, info.fallback
    ('mixed', None)
    >>> ngdfast.damped_solve(F[:4, :4], np.ones(4), 1e-2, precision="double", return_info=True)[1]
    SolveInfo(precision='double', iterations=0, fallback=None)
    """

    precision: str
    iterations: int = 0
    fallback: Optional[str] = None


def use_mixed(precision: str, dtype, kind: str, n: int, p: int = 0) -> bool:
    """Whether a solve of float ``dtype`` runs the mixed path.

    ``kind`` "dense": ``n`` is P; "lowrank": ``n`` is N and ``p`` is P.
    """
    if np.dtype(dtype) != np.float64 or precision == "double":
        return False
    if precision == "mixed":
        return True
    limits = thresholds()
    if kind == "dense":
        return n >= limits.dense
    # Beside running NumPy threads the Woodbury products go to NumPy's BLAS (see
    # host_blas.hpp), where the refinement's fused passes over J become two
    # products each: the float64 solve is then the faster.
    from . import _backend  # here: the reference imports this module without the compiled core

    return n >= limits.samples and p >= limits.params and not _backend.borrowing_now()


def plain(dtype, precision: str = "auto", where: str = "") -> SolveInfo:
    """The info of a solve that ran in the data dtype; ``where`` names a backend
    without a mixed path when ``precision="mixed"`` was asked for float64 data."""
    if np.dtype(dtype) != np.float64:
        return SolveInfo("single")
    if precision == "mixed" and where:
        return SolveInfo("double", 0, f"no mixed-precision path in {where}")
    return SolveInfo("double")


def mixed(status: int, iterations: int) -> SolveInfo:
    """The info of a call to a ``*_mixed`` core routine."""
    fallback = _FALLBACK.get(int(status))
    return SolveInfo("double" if fallback else "mixed", int(iterations), fallback)


def answer(X: np.ndarray, vector: bool, return_info: bool, info: SolveInfo):
    """A solve's result as the caller asked: X's single column when g was a vector, and
    ``(x, info)`` with ``return_info``."""
    x = X[:, 0] if vector else X
    return (x, info) if return_info else x
