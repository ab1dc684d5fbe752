"""The factor-reuse experiment: ``DenseFisher`` solves with and without reuse, where it pays and where it cannot.

``DenseFisher(P, decay=0.95)`` over 50 EMA steps (10 with ``--quick``) of the
same P/4 score rows, their weights jittered by 10 % a step: the mean solve
time per step with factor reuse (``max_reuse_iters=10``) and without, against
one SciPy Cholesky solve of the same size (median of ``repeats``); every
direction with reuse is checked against a float64 solve. Then the usual
running Fisher, where reuse cannot pay: a fresh batch of P/16 rows each step
(decay 0.95, λ = 1e-3) over 20 steps (10 at P = 1024), the two objects updated with the
same batches and their solves alternated; reuse must not make it slower.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .cases import DAMPING

#: λ of the fresh-minibatch run: small, so that each batch's new directions dominate.
FRESH_DAMPING = 1e-3
from .peers import relative_error, scipy, scipy_cho_solve
from .timing import time_blocks


def factor_reuse(quick: bool, repeats: int) -> dict[str, Any]:
    """``{p, steps, reuse: {...}, no_reuse: {...}, fresh: {...}}``, plus ``scipy_cho_seconds``
    and ``ratio`` (mean solve with reuse / one SciPy solve) when SciPy is installed; ``fresh``
    is :func:`fresh_minibatches`."""
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
    out["fresh"] = fresh_minibatches(quick)
    return out


def fresh_minibatches(quick: bool) -> dict[str, Any]:
    """``{p, steps, reuse_seconds, no_reuse_seconds, ratio, abandoned, abandoned_iterations,
    max_error}``: mean solve per step with reuse and without over fresh batches (the first,
    factoring in both, not counted), the attempts given up and the CG iterations they cost,
    and the largest difference between the two answers."""
    from .. import DenseFisher

    # quick: P = 1024 all the same, the smallest P at which reuse is on by default
    p, steps = (1024, 10) if quick else (4096, 20)
    rng = np.random.default_rng(8)
    fish = {"reuse": DenseFisher(p, decay=0.95, max_reuse_iters=10),
            "no_reuse": DenseFisher(p, decay=0.95, max_reuse_iters=0)}
    seconds = dict.fromkeys(fish, 0.0)
    x: dict[str, np.ndarray] = {}
    abandoned, spent, worst = 0, 0, 0.0
    for step in range(steps + 1):
        J, g = rng.standard_normal((max(1, p // 16), p)), rng.standard_normal(p)
        for label in (("reuse", "no_reuse") if step % 2 else ("no_reuse", "reuse")):
            fish[label].update(J)
            t0 = time.perf_counter()
            x[label] = fish[label].solve(g, FRESH_DAMPING)
            if step:
                seconds[label] += time.perf_counter() - t0
        report = fish["reuse"].last_solve
        abandoned += report.reuse == "abandoned"
        spent += report.reuse_iterations
        worst = max(worst, relative_error(x["reuse"], x["no_reuse"]))
    return {"p": p, "steps": steps, "reuse_seconds": seconds["reuse"] / steps,
            "no_reuse_seconds": seconds["no_reuse"] / steps, "ratio": seconds["reuse"] / seconds["no_reuse"],
            "abandoned": abandoned, "abandoned_iterations": spent, "max_error": worst}
