"""The trainer's loop: NumPy BLAS work and curvature work alternating every step.

A training step does its forward/backward pass in NumPy (OpenBLAS threads),
then the natural-gradient work. When two thread pools take turns on the same
cores, a pool that keeps spinning after its call, or wakes slowly, makes the
alternation cost more than its parts. Each group holds

- ``matmul``: the NumPy part alone (a 512 x 512 matmul),
- ``ngdfast`` / ``peer``: the curvature part alone, by ngdfast or by
  NumPy/SciPy,
- ``ngdfast+matmul`` / ``peer+matmul``: both, alternating every call,

so ``(x+matmul) - matmul - x`` is the price of interference. The ``threads``
parameter repeats it all with one thread everywhere (``set_num_threads(1)``
and, with threadpoolctl, one BLAS thread), where there is nothing to collide.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest

peers = pytest.importorskip("ngdfast.bench.peers", exc_type=ImportError)

DAMPING = 1e-2
DECAY = 0.9
MATMUL = 512

WORKLOADS = {
    # the per-step curvature work of a dense-Fisher trainer
    "fisher_ema+damped_solve N=256 P=1024": (256, 1024),
    # a low-rank trainer: sample-space solve of this batch
    "natural_gradient N=256 P=8192": (256, 8192),
}


@functools.lru_cache(maxsize=1)
def matmul_operands():
    rng = np.random.default_rng(10)
    return rng.standard_normal((MATMUL, MATMUL)), rng.standard_normal((MATMUL, MATMUL))


@functools.lru_cache(maxsize=2)
def workload_problem(name):
    n, p = WORKLOADS[name]
    rng = np.random.default_rng(11)
    J = rng.standard_normal((n, p))
    g = rng.standard_normal(p)
    if name.startswith("fisher"):
        F = J.T @ J / n
        F = 0.5 * (F + F.T)
        # The EMA starts at the batch Fisher, its fixed point: the answer stays known.
        expected = np.linalg.solve(F + DAMPING * np.eye(p), g)
        return J, g, F, expected
    return J, g, None, peers.numpy_woodbury(J, g, DAMPING)


def curvature_step(name, impl, ngdfast):
    """The curvature part of one step as a no-argument callable returning ñ."""
    J, g, F0, _ = workload_problem(name)
    n, p = J.shape
    if name.startswith("fisher"):
        F = F0.copy()
        if impl == "ngdfast":
            def step():
                ngdfast.fisher(J, out=F, decay=DECAY)
                return ngdfast.damped_solve(F, g, DAMPING)
        else:
            eye = np.eye(p)
            solve = peers.scipy_cho_solve

            def step():
                F[...] *= DECAY
                F[...] += (J.T @ J) * ((1.0 - DECAY) / n)
                return solve(F + DAMPING * eye, g)
        return step
    if impl == "ngdfast":
        return lambda: ngdfast.natural_gradient(J, g, DAMPING)
    return lambda: peers.numpy_woodbury(J, g, DAMPING)


@contextlib.contextmanager
def thread_setting(setting, ngdfast):
    """One thread for ngdfast and for the BLAS libraries, or leave both alone."""
    if setting == "default":
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pytest.skip("threadpoolctl is needed to limit NumPy's BLAS threads")
    before = ngdfast.get_num_threads()
    ngdfast.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        ngdfast.set_num_threads(before)


@pytest.mark.parametrize("threads", ["default", "1thread"])
@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("variant", ["matmul", "ngdfast", "ngdfast+matmul", "peer", "peer+matmul"])
def test_alternating(variant, workload, threads, request, run_benchmark):
    ngdfast = request.getfixturevalue("ngdfast")
    if variant.startswith("peer") and workload.startswith("fisher"):
        request.getfixturevalue("scipy_linalg")
    A, B = matmul_operands()
    impl = variant.split("+")[0]
    if variant == "matmul":
        def fn():
            return A @ B
    else:
        curvature = curvature_step(workload, impl, ngdfast)
        if variant.endswith("+matmul"):
            def fn():
                _ = A @ B  # the model's share of the step
                return curvature()
        else:
            fn = curvature

    with thread_setting(threads, ngdfast):
        result = run_benchmark(f"alternating {workload} threads={threads}", fn)
    if variant == "matmul":
        assert result.shape == (MATMUL, MATMUL)
    else:
        expected = workload_problem(workload)[3]
        err = np.linalg.norm(result - expected) / np.linalg.norm(expected)
        assert err <= 1e-8, f"{variant}: relative error {err:.2e}"
