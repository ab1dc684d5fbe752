"""Every kernel beside its peers, one benchmark group per kernel, size and dtype.

Peers are what a user would write by hand: NumPy expressions, SciPy's
BLAS/LAPACK wrappers, and ``ngdfast.reference`` (the pure-NumPy spec). Each
benchmark compares its own answer with a float64 NumPy result computed outside
the timed region. Sizes come from ``SWEEP`` in conftest.py (``--bench-size``).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

# The hand-written peers live beside `python -m ngdfast bench`, which times the same ones.
benchmark_module = pytest.importorskip("ngdfast.benchmark", exc_type=ImportError)
woodbury = benchmark_module.numpy_woodbury
kfac_by_hand = benchmark_module.numpy_kfac_precondition
cho_solve_in_place = benchmark_module.scipy_cho_solve

DAMPING = 1e-2  # keeps every damped matrix here well conditioned (see conftest TOLERANCE)
DECAY = 0.9


def _gram64(J: np.ndarray) -> np.ndarray:
    """Exactly symmetric float64 ``J.T @ J / N``."""
    J = J.astype(np.float64)
    F = J.T @ J
    return (0.5 * (F + F.T)) / J.shape[0]


# --------------------------------------------------------------------------
# problems, cached so the peers of one group share inputs (never mutated)


@functools.lru_cache(maxsize=2)
def fisher_problem(shape, dtype):
    n, p = shape
    J = np.random.default_rng(0).standard_normal((n, p)).astype(dtype)
    return J, _gram64(J)


@functools.lru_cache(maxsize=2)
def solve_problem(p, dtype):
    # P/2 score rows: rank-deficient like a real Fisher; the damping makes it
    # positive definite with condition number below ~6/DAMPING.
    rows = np.random.default_rng(1).standard_normal((max(p // 2, 1), p))
    F = _gram64(rows).astype(dtype)
    g = np.random.default_rng(2).standard_normal(p).astype(dtype)
    F64 = F.astype(np.float64)
    expected = np.linalg.solve(F64 + DAMPING * np.eye(p), g.astype(np.float64))
    return F, g, expected


@functools.lru_cache(maxsize=2)
def lowrank_problem(shape, dtype):
    n, p = shape
    J = np.random.default_rng(3).standard_normal((n, p)).astype(dtype)
    g = np.random.default_rng(4).standard_normal(p).astype(dtype)
    expected = woodbury(J.astype(np.float64), g.astype(np.float64), DAMPING)
    return J, g, expected


@functools.lru_cache(maxsize=2)
def kfac_problem(shape, dtype):
    n_out, n_in = shape
    a = n_in + 1
    rng = np.random.default_rng(5)
    acts = rng.standard_normal((2 * a, a))
    acts[:, -1] = 1.0  # the bias column
    A = _gram64(acts).astype(dtype)
    S = _gram64(rng.standard_normal((2 * n_out, n_out))).astype(dtype)
    grad = rng.standard_normal((n_out, a)).astype(dtype)
    g64, A64, S64 = (x.astype(np.float64) for x in (grad, A, S))
    expected = kfac_by_hand(g64, A64, S64, DAMPING)
    return grad, A, S, expected


def _syrk(request, dtype):
    """SciPy's ssyrk/dsyrk (skips when SciPy is missing)."""
    request.getfixturevalue("scipy_linalg")
    from scipy.linalg import blas

    return blas.get_blas_funcs("syrk", dtype=np.dtype(dtype))


# --------------------------------------------------------------------------
# fisher


@pytest.mark.parametrize("impl", ["ngdfast", "numpy", "scipy-syrk", "reference"])
def test_fisher(impl, fisher_shape, dtype, request, run_benchmark, assert_close):
    n, p = fisher_shape
    J, expected = fisher_problem(fisher_shape, dtype)
    if impl == "ngdfast":
        fn = request.getfixturevalue("ngdfast").fisher
    elif impl == "reference":
        fn = request.getfixturevalue("reference").fisher
    elif impl == "numpy":
        def fn(J):
            return J.T @ J / J.shape[0]
    else:
        syrk = _syrk(request, dtype)

        def fn(J):
            # J.T is Fortran-ordered (P, N): trans=0 gives J^T J with no copy of J.
            return syrk(1.0 / J.shape[0], J.T, trans=0)

    F = run_benchmark(f"fisher N={n} P={p} {dtype}", fn, J)
    assert F.shape == (p, p) and F.dtype == np.dtype(dtype)
    if impl == "scipy-syrk":  # BLAS fills the upper triangle only
        assert_close(np.triu(F), np.triu(expected), dtype, "product")
    else:
        assert_close(F, expected, dtype, "product")
        if impl in ("ngdfast", "reference"):
            assert np.array_equal(F, F.T), "fisher must be exactly symmetric"


@pytest.mark.parametrize("impl", ["ngdfast", "numpy", "scipy-syrk", "reference"])
def test_fisher_ema(impl, fisher_shape, dtype, request, run_benchmark, assert_close):
    """``F <- d F + (1 - d) J^T J / N`` in place. The running estimate starts
    at the batch Fisher, a fixed point of the update, so the answer is known
    however many rounds the benchmark runs."""
    n, p = fisher_shape
    J, expected = fisher_problem(fisher_shape, dtype)
    out = expected.astype(dtype)
    w = (1.0 - DECAY) / n
    if impl in ("ngdfast", "reference"):
        fisher = request.getfixturevalue(impl).fisher

        def fn(J):
            return fisher(J, out=out, decay=DECAY)
    elif impl == "numpy":
        def fn(J):
            out[...] *= DECAY
            out[...] += (J.T @ J) * w  # the P x P temporary a hand-written EMA pays
            return out
    else:
        syrk = _syrk(request, dtype)
        out = np.asfortranarray(out)

        def fn(J):
            return syrk(w, J.T, beta=DECAY, c=out, trans=0, overwrite_c=1)

    F = run_benchmark(f"fisher-ema N={n} P={p} {dtype}", fn, J)
    assert F is out, f"{impl} EMA must update out in place"
    if impl == "scipy-syrk":
        assert_close(np.triu(F), np.triu(expected), dtype, "product")
    else:
        assert_close(F, expected, dtype, "product")


# --------------------------------------------------------------------------
# damped_solve


@pytest.mark.parametrize("impl", ["ngdfast", "scipy-cho", "numpy-solve", "reference"])
def test_damped_solve(impl, solve_size, dtype, request, run_benchmark, assert_close):
    F, g, expected = solve_problem(solve_size, dtype)
    eye = np.eye(solve_size, dtype=dtype)
    if impl in ("ngdfast", "reference"):
        solve = request.getfixturevalue(impl).damped_solve

        def fn(F, g):
            return solve(F, g, DAMPING)
    elif impl == "scipy-cho":
        request.getfixturevalue("scipy_linalg")

        def fn(F, g):
            return cho_solve_in_place(F + DAMPING * eye, g)
    else:
        def fn(F, g):
            return np.linalg.solve(F + DAMPING * eye, g)

    x = run_benchmark(f"damped_solve P={solve_size} {dtype}", fn, F, g)
    assert x.shape == g.shape and x.dtype == np.dtype(dtype)
    assert_close(x, expected, dtype, "solve")


# --------------------------------------------------------------------------
# lowrank_solve and natural_gradient


@pytest.mark.parametrize("impl", ["ngdfast", "numpy-woodbury", "reference"])
def test_lowrank_solve(impl, lowrank_shape, dtype, request, run_benchmark, assert_close):
    n, p = lowrank_shape
    J, g, expected = lowrank_problem(lowrank_shape, dtype)
    if impl in ("ngdfast", "reference"):
        solve = request.getfixturevalue(impl).lowrank_solve

        def fn(J, g):
            return solve(J, g, DAMPING)
    else:
        def fn(J, g):
            return woodbury(J, g, DAMPING)

    x = run_benchmark(f"lowrank_solve N={n} P={p} {dtype}", fn, J, g)
    assert x.shape == (p,) and x.dtype == np.dtype(dtype)
    assert_close(x, expected, dtype, "solve")


@pytest.mark.parametrize("impl", ["ngdfast-auto", "ngdfast-lowrank", "ngdfast-dense", "numpy-woodbury", "reference"])
def test_natural_gradient(impl, lowrank_shape, dtype, request, run_benchmark, assert_close):
    n, p = lowrank_shape
    if impl == "ngdfast-dense" and p > 4096:
        pytest.skip(f"the dense method at P={p} forms a {p}x{p} Fisher: minutes, not the point here")
    J, g, expected = lowrank_problem(lowrank_shape, dtype)
    if impl.startswith("ngdfast"):
        natural_gradient = request.getfixturevalue("ngdfast").natural_gradient
        method = impl.split("-", 1)[1]

        def fn(J, g):
            return natural_gradient(J, g, DAMPING, method=method)
    elif impl == "reference":
        natural_gradient = request.getfixturevalue("reference").natural_gradient

        def fn(J, g):
            return natural_gradient(J, g, DAMPING)
    else:
        def fn(J, g):
            return woodbury(J, g, DAMPING)

    x = run_benchmark(f"natural_gradient N={n} P={p} {dtype}", fn, J, g)
    assert x.shape == (p,) and x.dtype == np.dtype(dtype)
    assert_close(x, expected, dtype, "solve")


# --------------------------------------------------------------------------
# kfac_precondition


@pytest.mark.parametrize("impl", ["ngdfast", "scipy-cho", "numpy-solve", "reference"])
def test_kfac_precondition(impl, kfac_shape, dtype, request, run_benchmark, assert_close):
    grad, A, S, expected = kfac_problem(kfac_shape, dtype)
    if impl in ("ngdfast", "reference"):
        precondition = request.getfixturevalue(impl).kfac_precondition

        def fn(grad, A, S):
            return precondition(grad, A, S, DAMPING)
    elif impl == "scipy-cho":
        request.getfixturevalue("scipy_linalg")

        def fn(grad, A, S):
            return kfac_by_hand(grad, A, S, DAMPING, cho_solve_in_place)
    else:
        def fn(grad, A, S):
            return kfac_by_hand(grad, A, S, DAMPING)

    n_out, n_in = kfac_shape
    X = run_benchmark(f"kfac_precondition out={n_out} in={n_in}+1 {dtype}", fn, grad, A, S)
    assert X.shape == grad.shape and X.dtype == np.dtype(dtype)
    assert_close(X, expected, dtype, "solve")
