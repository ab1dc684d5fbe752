"""Numerical decisions shared by every backend (no argument checking: see ``_validation``).

The reference, compiled and CUDA kernels, ``ngdfast.torch`` and the curvature objects all
take these decisions here, so that they agree on them:

* :func:`choose_method`: dense or sample-space (Woodbury) natural gradient for
  ``method="auto"``, by flop count and memory;
* :func:`kfac_damping`: how λ is split between the two K-FAC factors;
* :func:`kl_step_from_quadratic`: the KL trust-region step size β from q = gᵀñ.

The mixed-precision thresholds and their report live in ``ngdfast._precision``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

from ._errors import NumericOverflowError

__all__ = ["DENSE_BYTES_LIMIT", "choose_method", "kfac_damping", "kl_step_from_quadratic"]

#: Above this size of the P x P matrix, ``method="auto"`` prefers the sample-space solve
#: whenever its N x N matrix is smaller, whatever the flop counts say.
DENSE_BYTES_LIMIT = 2 * 1024**3




def choose_method(n: int, p: int, dtype: Any, damping: float) -> str:
    """Pick the cheaper natural-gradient solve for ``method="auto"``.

    Flop counts (one right-hand side):

    * dense: form F = J^T W J and factor F + λI,       N P^2 + P^3 / 3;
    * low-rank (Woodbury): form K = J_w J_w^T, factor K + λI, two products with J,
      N^2 P + N^3 / 3 + 4 N P.

    The low-rank solve divides by λ, so it is only chosen when ``damping > 0``.  When the
    P x P matrix would take more than :data:`DENSE_BYTES_LIMIT` bytes and the N x N one is
    smaller, the low-rank solve is chosen whatever the flop counts say.

    Returns
    -------
    "dense" or "lowrank"
    """
    if not damping > 0.0:
        return "dense"
    itemsize = np.dtype(dtype).itemsize
    n = float(n)
    p = float(p)
    if p * p * itemsize > DENSE_BYTES_LIMIT and n < p:
        return "lowrank"
    dense = n * p * p + p**3 / 3.0
    lowrank = n * n * p + n**3 / 3.0 + 4.0 * n * p
    return "lowrank" if lowrank < dense else "dense"


def kfac_damping(
    trace_a: float, dim_a: int, trace_s: float, dim_s: int, damping: float, factored_damping: bool
) -> Tuple[float, float]:
    """Split λ between the K-FAC factors: ``(π sqrt(λ), sqrt(λ) / π)``.

    π = sqrt((tr A / dim A) / (tr S / dim S)) balances the two factors; π = 1 when
    ``factored_damping`` is False or the ratio is not a finite positive number (a zero trace).
    """
    pi = 1.0
    if factored_damping:
        mean_s = trace_s / dim_s
        if mean_s != 0.0:
            ratio = (trace_a / dim_a) / mean_s
            if 0.0 < ratio < math.inf:
                pi = math.sqrt(ratio)
    root = math.sqrt(damping)
    return pi * root, root / pi


def kl_step_from_quadratic(q: float, epsilon: float, max_step: Optional[float], func: str = "kl_step_size") -> float:
    """β = sqrt(2 ε / q) capped at ``max_step``, from q = gᵀñ; 0.0 when q == 0.

    Raises
    ------
    ValueError
        When q is negative or not finite (ñ does not come from a positive definite solve).
    NumericOverflowError
        When β overflows (ε huge against q) and there is no ``max_step`` to cap it.
    """
    q = float(q)
    if not (0.0 <= q < math.inf):
        raise ValueError(
            f"{func}: g^T nat_grad = {q!r} must be finite and >= 0; nat_grad should be "
            "(F + damping*I)^-1 g for a positive semi-definite F"
        )
    if q == 0.0:
        return 0.0
    # sqrt(2) sqrt(eps) / sqrt(q) rather than sqrt(2 eps / q): no intermediate overflow for
    # subnormal q or eps near the largest float.
    beta = math.sqrt(2.0) * math.sqrt(epsilon) / math.sqrt(q)
    if max_step is not None and beta > max_step:
        beta = max_step
    if beta == math.inf:
        raise NumericOverflowError(
            f"{func}: the step size beta = sqrt(2 epsilon / q) overflows float64 (epsilon = {epsilon!r}, "
            f"q = g^T nat_grad = {q!r}); lower epsilon or pass max_step"
        )
    return float(beta)
