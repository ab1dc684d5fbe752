"""Mixed precision and factor reuse, beside their float64 peers (speed targets: docs/performance.md).

- ``damped_solve`` float64: ``precision="mixed"`` (float32 factor, float64
  refinement) vs ``"double"`` vs SciPy ``cho_factor + cho_solve``; target >= 2x
  SciPy at P = 4096, within 1e-10 relative of SciPy's answer.
- ``natural_gradient`` float64, N = 256, P = 16384: mixed vs double vs NumPy's
  Woodbury, alone and alternating with a NumPy matmul each step; target >= 1.5x
  NumPy, within 1e-10.
- ``DenseFisher(P, decay=0.95)`` over 50 EMA steps of a slowly changing Fisher
  (the same score rows, weights jittered by 10 % a step): mean solve time per
  step vs one SciPy Cholesky solve of the same size; target <= 0.2x, every
  step's direction within 1e-10 of the exact solve (checked outside the timing).
- The same over 20 steps of fresh batches (P/16 rows, λ = 1e-3), where reuse
  cannot pay: with reuse against without (no slower: the attempts are given up
  after at most 2 CG iterations and back off), every direction within 1e-10.

Sizes: small by default; ``--bench-size medium`` for the target sizes.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

cases = pytest.importorskip("ngdfast.bench.cases", exc_type=ImportError)
peers = pytest.importorskip("ngdfast.bench.peers", exc_type=ImportError)

EXACT = 1e-10  # relative agreement with the float64 peer


def _sizes(bench_size):
    if bench_size == "small":
        return {"solve": 1024, "lowrank": (128, 4096), "reuse": 1024, "reuse_rows": 256}
    return {"solve": 4096, "lowrank": (256, 16384), "reuse": 4096, "reuse_rows": 1024}


@pytest.mark.parametrize("impl", ["ngdfast-mixed", "ngdfast-double", "scipy-cho"])
def test_damped_solve_mixed(impl, bench_size, request, run_benchmark):
    request.getfixturevalue("scipy_linalg")
    import ngdfast

    p = _sizes(bench_size)["solve"]
    F = cases.spd(p, "float64")
    g = np.random.default_rng(2).standard_normal(p)
    damping = cases.DAMPING
    eye = np.eye(p)
    expected = peers.scipy_cho_solve(F + damping * eye, g)
    if impl == "scipy-cho":
        def fn():
            return peers.scipy_cho_solve(F + damping * eye, g)
    else:
        precision = impl.split("-")[1]

        def fn():
            return ngdfast.damped_solve(F, g, damping, precision=precision)

    x = run_benchmark(f"damped_solve float64 P={p} (mixed precision)", fn)
    assert peers.relative_error(x, expected) <= EXACT
    if impl == "ngdfast-mixed":
        assert ngdfast.damped_solve(F, g, damping, precision="mixed", return_info=True)[1].precision == "mixed"


@pytest.mark.parametrize("alternating", [False, True], ids=["alone", "with-matmul"])
@pytest.mark.parametrize("impl", ["ngdfast-mixed", "ngdfast-double", "numpy-woodbury"])
def test_natural_gradient_mixed(impl, alternating, bench_size, run_benchmark):
    import ngdfast

    n, p = _sizes(bench_size)["lowrank"]
    J = cases.scores(n, p, "float64")
    g = np.random.default_rng(3).standard_normal(p)
    damping = cases.DAMPING
    expected = peers.numpy_woodbury(J, g, damping)
    rng = np.random.default_rng(6)
    A, B = rng.standard_normal((512, 512)), rng.standard_normal((512, 512))
    if impl == "numpy-woodbury":
        def solve():
            return peers.numpy_woodbury(J, g, damping)
    else:
        precision = impl.split("-")[1]

        def solve():
            return ngdfast.natural_gradient(J, g, damping, precision=precision)

    def fn():
        if alternating:
            A @ B
        return solve()

    mode = "alternating with a 512x512 matmul" if alternating else "alone"
    x = run_benchmark(f"natural_gradient float64 N={n} P={p} (mixed precision, {mode})", fn)
    assert peers.relative_error(x, expected) <= EXACT


def _ema_solves(fish, batches, damping, rng):
    """``(mean solve seconds, worst relative error, reports)``: per batch ``(J, w)`` an untimed
    update, one timed solve, and its answer checked against a float64 solve (untimed)."""
    import ngdfast

    seconds, worst, reports = 0.0, 0.0, []
    for J, w in batches:
        fish.update(J, w)
        g = rng.standard_normal(fish.n_params)
        t0 = time.perf_counter()
        x = fish.solve(g, damping)
        seconds += time.perf_counter() - t0
        reports.append(fish.last_solve)
        exact = ngdfast.damped_solve(fish.to_dense(), g, damping, precision="double")
        worst = max(worst, peers.relative_error(x, exact))
    return seconds / len(reports), worst, reports


@pytest.mark.parametrize("impl", ["DenseFisher-reuse", "DenseFisher-no-reuse", "scipy-cho-one-solve"])
def test_dense_fisher_reuse(impl, bench_size, request, benchmark):
    """Mean solve time per step over 50 EMA steps (each step's update untimed)."""
    request.getfixturevalue("scipy_linalg")
    import ngdfast

    sizes = _sizes(bench_size)
    p, n = sizes["reuse"], sizes["reuse_rows"]
    damping = cases.DAMPING
    benchmark.group = f"DenseFisher(P={p}, decay=0.95) solve per step, 50 slowly changing steps"
    if impl == "scipy-cho-one-solve":
        F = cases.spd(p, "float64")
        g = np.random.default_rng(2).standard_normal(p)
        eye = np.eye(p)
        benchmark.pedantic(lambda: peers.scipy_cho_solve(F + damping * eye, g), rounds=5, iterations=1)
        return
    max_reuse = 10 if impl == "DenseFisher-reuse" else 0
    steps = 50

    def run():
        rng = np.random.default_rng(7)
        J = rng.standard_normal((n, p))
        fish = ngdfast.DenseFisher(p, decay=0.95, max_reuse_iters=max_reuse)
        batches = ((J, 1.0 + 0.1 * rng.random(n)) for _ in range(steps))
        mean, worst, reports = _ema_solves(fish, batches, damping, rng)
        return mean, worst, sum(not r.refactored for r in reports)

    results = []
    benchmark.pedantic(lambda: results.append(run()), rounds=1, iterations=1)
    mean, worst, reused = results[-1]
    benchmark.extra_info.update({"mean_solve_seconds": mean, "worst_relative_error": worst, "reused_steps": reused})
    assert worst <= EXACT
    if max_reuse:
        assert reused >= steps // 2


@pytest.mark.parametrize("impl", ["DenseFisher-reuse", "DenseFisher-no-reuse"])
def test_dense_fisher_fresh_minibatches(impl, bench_size, benchmark):
    """Mean solve time per step over 20 EMA steps of fresh batches (P/16 rows, decay 0.95,
    λ = 1e-3), where reuse cannot pay: with reuse no slower than without (the attempts are
    given up after at most 2 CG iterations and back off), answers as exact."""
    import ngdfast

    p = _sizes(bench_size)["reuse"]
    max_reuse = 10 if impl == "DenseFisher-reuse" else 0
    steps, damping = 20, 1e-3
    benchmark.group = f"DenseFisher(P={p}, decay=0.95) solve per step, {steps} fresh minibatches"

    def run():
        rng = np.random.default_rng(8)
        fish = ngdfast.DenseFisher(p, decay=0.95, max_reuse_iters=max_reuse)
        fish.update(rng.standard_normal((2 * p, p)))  # full rank: F + λI well conditioned
        fish.solve(rng.standard_normal(p), damping)
        batches = ((rng.standard_normal((p // 16, p)), None) for _ in range(steps))
        mean, worst, reports = _ema_solves(fish, batches, damping, rng)
        return mean, worst, [r.reuse_iterations for r in reports if r.reuse == "abandoned"]

    results = []
    benchmark.pedantic(lambda: results.append(run()), rounds=1, iterations=1)
    mean, worst, spent = results[-1]
    benchmark.extra_info.update({"mean_solve_seconds": mean, "worst_relative_error": worst,
                                 "abandoned_attempts": len(spent), "abandoned_iterations": sum(spent)})
    assert worst <= EXACT
    assert all(k <= 2 for k in spent) and len(spent) <= 5
