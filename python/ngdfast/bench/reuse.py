"""The factor-reuse experiment: ``DenseFisher`` solves over a slowly changing Fisher, with and without reuse.

``DenseFisher(P, decay=0.95)`` over 50 EMA steps (10 with ``--quick``) of the
same P/4 score rows, their weights jittered by 10 % a step: the mean solve
time per step with factor reuse (``max_reuse_iters=10``) and without, against
one SciPy Cholesky solve of the same size (median of ``repeats``); every
direction with reuse is checked against a float64 solve.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .cases import DAMPING
from .peers import relative_error, scipy, scipy_cho_solve
from .timing import time_blocks


def factor_reuse(quick: bool, repeats: int) -> dict[str, Any]:
    """``{p, steps, reuse: {...}, no_reuse: {...}}``, plus ``scipy_cho_seconds`` and
    ``ratio`` (mean solve with reuse / one SciPy solve) when SciPy is installed."""
    from .. import DenseFisher, damped_solve

    p, steps = (256, 10) if quick else (4096, 50)
    rng = np.random.default_rng(7)
    J = rng.standard_normal((p // 4, p))
    out: dict[str, Any] = {"p": p, "steps": steps}
    for label, max_reuse in (("reuse", 10), ("no_reuse", 0)):
        fish = DenseFisher(p, decay=0.95, max_reuse_iters=max_reuse)
        seconds, worst, reused, iterations = 0.0, 0.0, 0, 0
        for _ in range(steps):
            fish.update(J, 1.0 + 0.1 * rng.random(J.shape[0]))
            g = rng.standard_normal(p)
            t0 = time.perf_counter()
            x = fish.solve(g, DAMPING)
            seconds += time.perf_counter() - t0
            reused += not fish.last_solve.refactored
            iterations += fish.last_solve.iterations
            if max_reuse:  # (without reuse the solve is the float64/mixed one itself)
                exact = damped_solve(fish.to_dense(), g, DAMPING, precision="double")
                worst = max(worst, relative_error(x, exact))
        out[label] = {"mean_solve_seconds": seconds / steps, "max_error": worst, "reused_steps": reused,
                      "mean_cg_iterations": iterations / steps}
    if scipy() is not None:
        M = fish.to_dense() + DAMPING * np.eye(p)
        g = rng.standard_normal(p)
        out["scipy_cho_seconds"] = time_blocks({"cho": lambda: scipy_cho_solve(M.copy(), g)}, repeats)["cho"]
        out["ratio"] = out["reuse"]["mean_solve_seconds"] / out["scipy_cho_seconds"]
    return out
