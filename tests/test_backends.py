"""The compiled core's internal paths against the reference.

Both tile engines (OpenBLAS tiles and Eigen tiles), one and several threads,
and sizes that cross every blocking threshold of csrc/ (single output tile
with a split contraction, many tiles, blocked Cholesky with a ragged last
panel, a busy pool running a second caller serially), and the products both on
ngdfast's pool and on NumPy's own BLAS (borrowed while another thread runs).
"""

import concurrent.futures
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import ngdfast
from ngdfast import _backend, _core, reference

TOL = {np.float64: 1e-10, np.float32: 2e-4}
#: Under tools/sanitize.sh (an -O1 instrumented core): the dense 4000 x 4000 Cholesky of
#: test_lowrank_blocking's widest case ran 12-23 s per parameter set there, so only the
#: uninstrumented suite does it; its Gram's borrowed panels are test_safety's.
SANITIZED = os.environ.get("NGDFAST_SANITIZED") == "1"


@pytest.fixture(params=["blas", "eigen"])
def engine(request):
    if request.param == "blas" and not _backend.BLAS_LOADED:
        pytest.skip("scipy-openblas32 tile engine not loaded")
    _core.use_blas(request.param == "blas")
    yield request.param
    _core.use_blas(_backend.BLAS_LOADED)


@pytest.fixture(params=["never", "always"])
def borrow(request):
    """Products on ngdfast's own pool ("never") or on NumPy's OpenBLAS ("always";
    "auto" picks one per call, by whether another thread is running)."""
    if request.param == "always" and not _backend.HOST_BLAS:
        pytest.skip("NumPy's OpenBLAS was not found")
    before = _core.get_borrow_mode()
    _core.set_borrow_mode(request.param)
    yield request.param
    _core.set_borrow_mode(before)


@pytest.fixture(params=[1, 2])
def threads(request):
    before = ngdfast.get_num_threads()
    ngdfast.set_num_threads(request.param)
    yield request.param
    ngdfast.set_num_threads(before)


def rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


def spd(rng, p, dtype):
    m = rng.standard_normal((p, p + 3))
    return (m @ m.T / (p + 3)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n,p", [(700, 40), (40, 520), (33, 1100), (1, 600), (9, 2600)])
def test_fisher_blocking(engine, threads, borrow, dtype, n, p):
    # (9, 2600): a column panel taller than one GEMM block (2048 rows).
    rng = np.random.default_rng(n * 7 + p)
    J = rng.standard_normal((n, p)).astype(dtype)
    w = rng.random(n)
    F = ngdfast.fisher(J, w)
    assert F.dtype == dtype
    assert np.array_equal(F, F.T)
    assert rel(F, reference.fisher(J, w)) < TOL[dtype]
    # A non-symmetric out: the EMA rule holds elementwise in both triangles
    # (always on the pool); a symmetric one (NumPy's BLAS when borrowing, the
    # upper triangle mirrored): the result stays exactly symmetric.
    out = np.asfortranarray(rng.standard_normal((p, p)).astype(dtype))
    expect = reference.fisher(J, out=out.copy(), decay=0.25)
    ngdfast.fisher(J, out=out, decay=0.25)
    assert rel(out, expect) < TOL[dtype]
    out = np.asfortranarray(spd(rng, p, dtype))
    assert np.array_equal(out, out.T)
    expect = reference.fisher(J, w, out=out.copy(), decay=0.25)
    ngdfast.fisher(J, w, out=out, decay=0.25)
    assert rel(out, expect) < TOL[dtype]
    assert np.array_equal(out, out.T)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("p,k", [(129, 1), (450, 3), (700, 2), (300, 21)])
def test_damped_solve_blocking(engine, threads, dtype, p, k):
    rng = np.random.default_rng(p)
    F = spd(rng, p, dtype)
    g = rng.standard_normal((p, k)).astype(dtype)
    x = ngdfast.damped_solve(F, g, 1e-2)
    assert rel(x, reference.damped_solve(F, g, 1e-2)) < 50 * TOL[dtype]


def test_not_positive_definite_pivot_in_late_panel(engine, threads):
    # The failing pivot lies past the first Cholesky panels: info is global.
    rng = np.random.default_rng(3)
    p = 700
    F = spd(rng, p, np.float64) + np.eye(p)
    F[650, 650] = -50.0
    with pytest.raises(ngdfast.NotPositiveDefiniteError) as compiled:
        ngdfast.damped_solve(F, np.ones(p), 0.0)
    with pytest.raises(ngdfast.NotPositiveDefiniteError) as ref:
        reference.damped_solve(F, np.ones(p), 0.0)
    assert "651" in str(compiled.value)
    assert str(compiled.value) == str(ref.value)


@pytest.mark.parametrize("n,p", [(64, 3000), (450, 1900), (520, 700), (700, 2900)])
def test_lowrank_several_right_hand_sides(engine, threads, borrow, n, p):
    # (64, 3000), (450, 1900): the Gram's contraction split in chunks, J X fused
    # with them; (520, 700) and (700, 2900): tiled Gram, J X a separate pass.
    rng = np.random.default_rng(n)
    J = rng.standard_normal((n, p))
    G = rng.standard_normal((p, 5))
    x = ngdfast.lowrank_solve(J, G, 0.05)
    assert rel(x, reference.lowrank_solve(J, G, 0.05)) < 20 * TOL[np.float64]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n,p,order", [(64, 3000, "C"), (520, 700, "F"), (5, 4000, "C")])
def test_lowrank_blocking(engine, threads, borrow, dtype, n, p, order):
    rng = np.random.default_rng(n + p)
    J = np.asarray(rng.standard_normal((n, p)), dtype=dtype, order=order)
    g = rng.standard_normal(p).astype(dtype)
    w = rng.random(n) + 0.1
    x = ngdfast.lowrank_solve(J, g, 0.05, w)
    assert rel(x, reference.lowrank_solve(J, g, 0.05, w)) < 20 * TOL[dtype]
    if SANITIZED and p > 3000:
        return
    x_dense = ngdfast.natural_gradient(J, g, 0.05, w, method="dense")
    assert rel(x_dense, x) < 20 * TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_out,n_in", [(150, 200), (37, 300), (300, 45)])
def test_kfac_blocked_factors(engine, threads, dtype, n_out, n_in):
    # Right-hand solves in row chunks of the gradient (ragged last chunk, or one).
    rng = np.random.default_rng(11)
    A, S = spd(rng, n_in, dtype), spd(rng, n_out, dtype)
    grad = rng.standard_normal((n_out, n_in)).astype(dtype)
    X = ngdfast.kfac_precondition(grad, A, S, 1e-2)
    assert rel(X, reference.kfac_precondition(grad, A, S, 1e-2)) < 50 * TOL[dtype]


def test_concurrent_callers_share_the_pool():
    # Several Python threads at once: one owns the pool, the others run their
    # tiles serially on their own thread; every answer is the serial one.
    rng = np.random.default_rng(5)
    Js = [rng.standard_normal((200, 700)) for _ in range(6)]
    expected = [ngdfast.fisher(J) for J in Js]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(pool.map(ngdfast.fisher, Js))
    for a, b in zip(got, expected):
        assert rel(a, b) < 1e-13


def test_set_num_threads_rejects_nonpositive():
    with pytest.raises(ValueError):
        ngdfast.set_num_threads(0)


def test_build_info_reports_engine():
    info = _core.build_info()
    assert info["tile_backend"] in {"blas", "eigen"}
    assert info["threads"] == ngdfast.get_num_threads()


@pytest.mark.parametrize("n,p", [(5, 12), (256, 2000), (64, 4500), (40, 700)])
def test_bitwise_reproducible(threads, borrow, n, p):
    # Dynamic scheduling must not change the summation order: identical calls
    # give identical bits (for a given thread count and borrowing mode). (64, 4500):
    # a shallow, wide Gram of many tiles, and 3 borrowed column panels of at most 2048.
    rng = np.random.default_rng(n * p)
    J = rng.standard_normal((n, p))
    g = rng.standard_normal(p)
    w = rng.random(n) + 0.5
    for call in (
        lambda: ngdfast.fisher(J, w),
        lambda: ngdfast.lowrank_solve(J, g, 1e-2, w),
        lambda: ngdfast.natural_gradient(J, g, 1e-2, method="dense") if p <= 2000 else ngdfast.fisher(J[:, :100]),
    ):
        first = np.ascontiguousarray(call()).view(np.uint8)
        assert all(np.array_equal(np.ascontiguousarray(call()).view(np.uint8), first) for _ in range(8))


@pytest.mark.parametrize("module", [ngdfast, reference])
def test_nan_pivot_is_not_positive_definite_without_finite_check(module):
    # check_finite=False skips the scan, not the pivot test: a NaN pivot is
    # reported, never returned as a NaN answer.
    F = np.diag([1.0, np.nan, 1.0])
    with pytest.raises(ngdfast.NotPositiveDefiniteError, match="pivot 2 of 3"):
        module.damped_solve(F, np.ones(3), 0.0, check_finite=False)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("p", [1, 70, 450])
def test_cholesky_factor_and_solve(engine, dtype, p):
    # The factor DenseFisher keeps between solves: L L^T = F + lam I with a
    # zero strict upper part, and solves with it match the reference.
    rng = np.random.default_rng(p)
    F = spd(rng, p, dtype)
    L, info = _core.cholesky_factor(F, 0.1)
    assert info == 0 and L.dtype == dtype and L.flags.f_contiguous
    assert not np.triu(L, 1).any()
    expect = np.linalg.cholesky(F.astype(np.float64) + 0.1 * np.eye(p))
    assert rel(L, expect) < 20 * TOL[dtype]
    G = rng.standard_normal((p, 3)).astype(dtype)
    assert rel(_core.cholesky_solve(L, G), reference.damped_solve(F, G, 0.1)) < 50 * TOL[dtype]
    bad = F.copy()
    bad[p // 2, p // 2] = -10.0
    assert _core.cholesky_factor(bad, 0.0)[1] == p // 2 + 1


def test_strides_that_split_elements_are_copied_once():
    # A byte-offset view whose strides are not whole float64 elements: the
    # core only takes element strides, so the wrapper copies it.
    rng = np.random.default_rng(9)
    J = np.ndarray((40, 30), dtype=np.float64, buffer=bytearray(40 * (30 * 8 + 4) + 8), offset=3,
                   strides=(30 * 8 + 4, 8))
    J[...] = rng.standard_normal((40, 30))
    assert J.strides[0] % J.itemsize
    g = rng.standard_normal(30)
    Jc = np.array(J)
    assert np.array_equal(ngdfast.fisher(J), ngdfast.fisher(Jc))
    assert rel(ngdfast.lowrank_solve(J, g, 0.1), reference.lowrank_solve(Jc, g, 0.1)) < 1e-10
    assert rel(ngdfast.natural_gradient(J, g, 0.1), reference.natural_gradient(Jc, g, 0.1)) < 1e-10


def test_other_thread_running_sees_a_busy_thread():
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.05)
        assert _core.other_thread_running()
    finally:
        stop.set()
        t.join()
    time.sleep(0.5)  # NumPy's/SciPy's OpenBLAS workers stop spinning after ~0.1 s
    assert not _core.other_thread_running()


def test_borrow_mode_is_checked():
    with pytest.raises(ValueError, match="never"):
        _core.set_borrow_mode("sometimes")
    assert _core.get_borrow_mode() in {"never", "auto", "always"}


@pytest.mark.parametrize("value,mode,warns", [("never", "never", False), (" Always ", "always", False),
                                              ("sometimes", "auto", True)])
def test_borrow_mode_from_environment(value, mode, warns):
    code = "import ngdfast; from ngdfast import _core; print(_core.get_borrow_mode())"
    env = dict(os.environ, NGDFAST_BORROW_BLAS=value)
    run = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == mode
    assert ("NGDFAST_BORROW_BLAS" in run.stderr) == warns
