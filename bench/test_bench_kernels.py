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

# The problems and the hand-written peers are those of `python -m ngdfast bench`
# (ngdfast.bench.cases, ngdfast.bench.peers): a kernel's benchmark problem is written once.
cases = pytest.importorskip("ngdfast.bench.cases", exc_type=ImportError)
peers = pytest.importorskip("ngdfast.bench.peers", exc_type=ImportError)
woodbury = peers.numpy_woodbury
kfac_by_hand = peers.numpy_kfac_precondition
cho_solve_in_place = peers.scipy_cho_solve

DAMPING = cases.DAMPING  # keeps every damped matrix here well conditioned (see peers.TOLERANCE)
DECAY = cases.DECAY


def _float64(*arrays):
    return (a.astype(np.float64) for a in arrays)


# --------------------------------------------------------------------------
# the bench's problems with their float64 answers, cached so the peers of one
# group share inputs (never mutated)


@functools.lru_cache(maxsize=2)
def fisher_problem(shape, dtype):
    J = cases.fisher_problem(*shape, dtype)
    return J, cases.gram(J.astype(np.float64))


@functools.lru_cache(maxsize=2)
def solve_problem(p, dtype):
    F, g = cases.damped_solve_problem(p, dtype)
    F64, g64 = _float64(F, g)
    return F, g, np.linalg.solve(F64 + DAMPING * np.eye(p), g64)


@functools.lru_cache(maxsize=2)
def lowrank_problem(shape, dtype):
    J, g = cases.lowrank_problem(*shape, dtype)
    return J, g, woodbury(*_float64(J, g), DAMPING)


@functools.lru_cache(maxsize=2)
def kfac_problem(shape, dtype):
    grad, A, S = cases.kfac_problem(*shape, dtype)
    return grad, A, S, kfac_by_hand(*_float64(grad, A, S), DAMPING)


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


def _bench_woodbury_case(name, solve, lowrank_shape, dtype, run_benchmark, assert_close):
    """Time ``solve(J, g)`` (None: the NumPy Woodbury peer) on the low-rank problem; check its answer."""
    n, p = lowrank_shape
    J, g, expected = lowrank_problem(lowrank_shape, dtype)
    if solve is None:
        def solve(J, g):
            return woodbury(J, g, DAMPING)
    x = run_benchmark(f"{name} N={n} P={p} {dtype}", solve, J, g)
    assert x.shape == (p,) and x.dtype == np.dtype(dtype)
    assert_close(x, expected, dtype, "solve")


@pytest.mark.parametrize("impl", ["ngdfast", "numpy-woodbury", "reference"])
def test_lowrank_solve(impl, lowrank_shape, dtype, request, run_benchmark, assert_close):
    fn = None
    if impl in ("ngdfast", "reference"):
        lowrank_solve = request.getfixturevalue(impl).lowrank_solve

        def fn(J, g):
            return lowrank_solve(J, g, DAMPING)
    _bench_woodbury_case("lowrank_solve", fn, lowrank_shape, dtype, run_benchmark, assert_close)


@pytest.mark.parametrize("impl", ["ngdfast-auto", "ngdfast-lowrank", "ngdfast-dense", "numpy-woodbury", "reference"])
def test_natural_gradient(impl, lowrank_shape, dtype, request, run_benchmark, assert_close):
    p = lowrank_shape[1]
    if impl == "ngdfast-dense" and p > 4096:
        pytest.skip(f"the dense method at P={p} forms a {p}x{p} Fisher: minutes, not the point here")
    fn = None
    if impl != "numpy-woodbury":
        module, _, method = impl.partition("-")
        natural_gradient = request.getfixturevalue(module).natural_gradient

        def fn(J, g):
            return natural_gradient(J, g, DAMPING, method=method or "auto")
    _bench_woodbury_case("natural_gradient", fn, lowrank_shape, dtype, run_benchmark, assert_close)


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
