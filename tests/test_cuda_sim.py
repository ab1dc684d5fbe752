"""``ngdfast.cuda`` against ``ngdfast.reference`` in Numba's CUDA simulator.

The simulator runs every CUDA thread as a Python thread, so shapes stay small
(P <= 40, N <= 24).  To still cover the multi-tile paths at those sizes, most
tests run the kernels with a tiny tile geometry (8 x 8 SYRK tiles, 8-column
Cholesky panels, 16-thread blocks, split-K forced on): it is the same kernel
code, with other compile-time constants.  The default geometries run in a few
tests of their own, and ``test_kernels_compile_for_a_real_gpu`` compiles the
device code for sm_90, which the simulator never does.

What only a GPU can check (bench/gpu_check.py): speed, and the behaviour of the
real hardware (warp scheduling, memory coherence within a block).
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # before numba is imported (conftest sets it too)

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba_cuda", reason="numba-cuda is not installed (pip install ngdfast[cuda])")

import ngdfast  # noqa: E402
import ngdfast.cuda as nc  # noqa: E402
from conftest import (  # noqa: E402
    assert_close, assert_decay_zero_does_not_read_out, assert_fisher_ema, assert_kfac_zero_trace_factor, damped_condition, layout, random_spd,
    scores, weights_for,
)
from ngdfast import NotPositiveDefiniteError, _policy  # noqa: E402
from ngdfast import reference as ref  # noqa: E402
from ngdfast.cuda import _arrays, _kernels  # noqa: E402
from numba import cuda  # noqa: E402

#: Several 8 x 8 SYRK tiles, Cholesky panels and solve blocks at P <= 40, split-K on for
#: small outputs (min_blocks), the blocked K-FAC path above order 12, two-block grids.
TINY = _kernels.Geometry(
    tile=8, micro=2, depth=4, chol_block=8, threads=16, panel_rows=8, min_blocks=8, batched_max=12, max_grid=2
)

DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def fast_simulator():
    # The simulator's scheduler polls its threads; a short switch interval cuts the
    # wait at every barrier several-fold.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(before)


@pytest.fixture(autouse=True)
def tiny_geometry(request, monkeypatch):
    if "default_geometry" not in request.fixturenames:
        for dt in DTYPES:
            monkeypatch.setitem(_arrays._GEOMETRY, np.dtype(dt), TINY)


@pytest.fixture
def default_geometry():
    """Run with the geometries the GPU uses (128 x 128 float32 tiles, 8 x 8 per thread, ...)."""
    assert _arrays.geometry(np.float32) is _kernels.FLOAT32


def on_device(a):
    return cuda.to_device(np.ascontiguousarray(a))


def is_device_array(x):
    return not isinstance(x, np.ndarray) and _arrays.is_device(x)


def host(x):
    return x if isinstance(x, np.ndarray) else x.copy_to_host()


# --------------------------------------------------------------------------------------------
# fisher


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["C", "F", "negative"])
def test_fisher(rng, dtype, weighted, kind):
    J = scores(rng, (12, 20), dtype)  # 3 x 3 tiles: diagonal, lower and partial tiles
    w = weights_for(rng, 12, weighted)
    F = nc.fisher(layout(J, kind), w)
    assert isinstance(F, np.ndarray) and F.dtype == dtype and F.shape == (20, 20)
    assert_close(F, ref.fisher(J, w))
    assert np.array_equal(F, F.T)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fisher_split_k(rng, dtype):
    # one 8 x 8 tile and 40 rows: the inner dimension is split over blocks and the
    # partial sums are reduced by the second kernel
    J = scores(rng, (40, 6), dtype)
    w = weights_for(rng, 40, True)
    geo = _arrays.geometry(dtype)
    assert -(-6 // geo.tile) < geo.min_blocks and 40 // (4 * geo.depth) >= 2
    out = random_spd(rng, 6, dtype)
    expected = ref.fisher(J, w, out=out.copy(), decay=0.25)
    assert nc.fisher(J, w, out=out, decay=0.25) is out
    assert_close(out, expected)
    assert np.array_equal(out, out.T)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("decay", [0.0, 0.5, 1.0])
def test_fisher_ema_out(rng, dtype, order, decay):
    J = scores(rng, (10, 11), dtype)
    assert_fisher_ema(nc.fisher, J, weights_for(rng, 10, True), random_spd(rng, 11, dtype), order, decay)


def test_fisher_decay_zero_does_not_read_out(rng):
    assert_decay_zero_does_not_read_out(nc.fisher, rng, 6, 9)


@pytest.mark.parametrize("J_dtype, expected", [(np.int64, np.float64), (np.bool_, np.float64), (np.float16, np.float32)])
def test_fisher_dtype_rules(J_dtype, expected):
    J = (np.arange(20).reshape(5, 4) % 3).astype(J_dtype)
    F = nc.fisher(J, [1, 2, 3, 4, 5])
    assert F.dtype == expected
    assert_close(F, ref.fisher(J, [1, 2, 3, 4, 5]))


def test_fisher_check_finite_false_skips_check(rng):
    J = scores(rng, (4, 3), np.float64)
    J[1, 1] = np.nan
    assert np.isnan(nc.fisher(J, check_finite=False)[1, 1])


# --------------------------------------------------------------------------------------------
# solves


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [None, 3])
def test_damped_solve(rng, dtype, k):
    p = 20  # three Cholesky panels, two panel solves and trailing updates
    F = random_spd(rng, p, dtype, cond=50.0)
    g = scores(rng, p if k is None else (p, k), dtype)
    x = nc.damped_solve(layout(F, "strided"), g, 0.05)
    assert x.shape == g.shape and x.dtype == dtype
    assert_close(x, ref.damped_solve(F, g, 0.05), cond=damped_condition(F, 0.05))


def test_damped_solve_reads_only_the_lower_triangle(rng):
    F = random_spd(rng, 12)
    messy = F + np.triu(rng.standard_normal((12, 12)), 1) * 100
    g = scores(rng, 12, np.float64)
    assert_close(nc.damped_solve(messy, g, 0.1), ref.damped_solve(F, g, 0.1), cond=damped_condition(F, 0.1))


def test_damped_solve_promotion(rng):
    F = random_spd(rng, 9, np.float32)
    g = scores(rng, (9, 2), np.float64)
    x = nc.damped_solve(F, g, 0.1)
    assert x.dtype == np.float64
    assert_close(x, ref.damped_solve(F, g, 0.1), cond=damped_condition(F, 0.1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [None, 2])
def test_lowrank_solve(rng, dtype, weighted, k):
    n, p = 12, 36  # N x N = 2 x 2 tiles with split-K over P, 2 Cholesky panels
    J = scores(rng, (n, p), dtype)
    w = weights_for(rng, n, weighted)
    g = scores(rng, p if k is None else (p, k), dtype)
    x = nc.lowrank_solve(layout(J, "negative"), g, 0.1, w)
    assert x.shape == g.shape and x.dtype == dtype
    F = ref.fisher(J.astype(np.float64), w)
    assert_close(x, ref.lowrank_solve(J, g, 0.1, w), cond=damped_condition(F, 0.1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["dense", "lowrank", "auto"])
def test_natural_gradient(rng, dtype, method):
    J = scores(rng, (9, 17), dtype)
    w = weights_for(rng, 9, True)
    g = scores(rng, (17, 2), dtype)
    x = nc.natural_gradient(layout(J, "F"), g, 0.05, w, method=method)
    assert x.shape == g.shape and x.dtype == dtype
    cond = damped_condition(ref.fisher(J.astype(np.float64), w), 0.05)
    assert_close(x, ref.natural_gradient(J, g, 0.05, w, method=method), cond=cond)


def test_natural_gradient_dense_without_damping(rng):
    J = scores(rng, (24, 10), np.float64)
    g = scores(rng, 10, np.float64)
    F = ref.fisher(J)
    assert_close(nc.natural_gradient(J, g, 0.0), ref.natural_gradient(J, g, 0.0), cond=damped_condition(F, 0.0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_step_size(rng, dtype):
    g = scores(rng, 50, dtype)
    n = g * 2 + scores(rng, 50, dtype) * 0.1
    for kwargs in ({}, {"max_step": 1e-3}):
        assert nc.kl_step_size(g, n, 0.1, **kwargs) == pytest.approx(ref.kl_step_size(g, n, 0.1, **kwargs), rel=1e-12)
    G2 = scores(rng, (7, 3), dtype)
    assert nc.kl_step_size(G2, 3 * G2, 0.2) == pytest.approx(ref.kl_step_size(G2, 3 * G2, 0.2), rel=1e-12)
    assert nc.kl_step_size(np.zeros(4, dtype), np.ones(4, dtype), 0.1) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("factored", [True, False])
@pytest.mark.parametrize("shape", [(5, 7), (13, 5)], ids=["batched", "blocked"])
def test_kfac_precondition(rng, dtype, factored, shape):
    out, inp = shape
    grad = scores(rng, shape, dtype)
    A = random_spd(rng, inp, dtype, cond=20.0) * 2.0
    S = random_spd(rng, out, dtype, cond=20.0) * 0.1
    X = nc.kfac_precondition(grad, layout(A, "F"), S, 1e-2, factored_damping=factored)
    assert X.shape == shape and X.dtype == dtype
    da, ds = _policy.kfac_damping(np.trace(A), inp, np.trace(S), out, 1e-2, factored)
    cond = damped_condition(A, da) * damped_condition(S, ds)
    assert_close(X, ref.kfac_precondition(grad, A, S, 1e-2, factored_damping=factored), cond=cond)


def test_kfac_zero_trace_factor(rng):
    assert_kfac_zero_trace_factor(nc.kfac_precondition, rng)


def test_kernels_do_not_modify_inputs(rng):
    J = scores(rng, (9, 6), np.float64)
    g = scores(rng, (6, 2), np.float64)
    grad, A, S = scores(rng, (3, 4), np.float64), random_spd(rng, 4), random_spd(rng, 3)
    inputs = [J, g, grad, A, S]
    copies = [a.copy() for a in inputs]
    device = [on_device(a) for a in inputs]
    dJ, dg, dgrad, dA, dS = device
    nc.natural_gradient(dJ, dg, 0.1, method="dense")
    nc.lowrank_solve(dJ, dg, 0.1)
    nc.kfac_precondition(dgrad, dA, dS, 0.1)
    nc.damped_solve(dA, dgrad.copy_to_host().T, 0.1)
    for d, c in zip(device, copies):
        assert np.array_equal(d.copy_to_host(), c)


# --------------------------------------------------------------------------------------------
# errors: the same exceptions and messages as the reference


def _error_of(call):
    try:
        # The simulator runs kernels on NumPy scalars, which warn where a GPU overflows
        # silently (the overflow cases of the error table): not an error of ours.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            call()
    except Exception as exc:  # noqa: BLE001  (compared below, whatever it is)
        return exc
    return None


def _assert_same_error(call_cuda, call_ref):
    mine, spec = _error_of(call_cuda), _error_of(call_ref)
    assert spec is not None and mine is not None, (mine, spec)
    assert type(mine) is type(spec)
    assert str(mine) == str(spec)
    if isinstance(spec, NotPositiveDefiniteError):
        assert (mine.pivot, mine.damping) == (spec.pivot, spec.damping)


def _error_cases():
    from test_errors import CASES  # the API's error table, shared with the CPU modules

    return CASES


@pytest.mark.parametrize("call", [pytest.param(c[1], id=c[0]) for c in _error_cases()])
def test_error_table_matches_reference(call):
    _assert_same_error(lambda: call(nc), lambda: call(ref))


NPD_CASES = {
    "damped-pivot-3": lambda m: m.damped_solve(np.diag([1.0, 1.0, -5.0, 1.0]), np.ones(4), 1.0),
    "damped-float32": lambda m: m.damped_solve(np.diag([1.0, 1.0, -5.0, 1.0]).astype(np.float32), np.ones(4), 1.0),
    "damped-zero-pivot": lambda m: m.damped_solve(np.diag([2.0, 0.0, 1.0]), np.ones(3), 0.0),
    "damped-leading-minor": lambda m: m.damped_solve(
        np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0]]), np.ones((3, 2)), 0.5
    ),
    # the failing pivot lies in the third Cholesky panel (after two trailing updates)
    "damped-late-panel": lambda m: m.damped_solve(
        np.diag(np.where(np.arange(20) == 17, -1.0, 2.0)) + 0.01, np.ones(20), 0.0
    ),
    "natgrad-dense": lambda m: m.natural_gradient(np.array([[1.0, 0.0, 0.0]]), np.ones(3), 0.0, method="dense"),
    "natgrad-auto": lambda m: m.natural_gradient(np.array([[1.0, 0.0, 0.0]]), np.ones(3), 0.0),
    "kfac-A": lambda m: m.kfac_precondition(np.ones((3, 2)), -np.eye(2), np.eye(3), 0.01, factored_damping=False),
    "kfac-S": lambda m: m.kfac_precondition(np.ones((3, 2)), np.eye(2), -np.eye(3), 0.01, factored_damping=False),
    "kfac-A-first": lambda m: m.kfac_precondition(np.ones((3, 2)), -np.eye(2), -np.eye(3), 0.01),
    "kfac-blocked-S": lambda m: m.kfac_precondition(
        np.ones((16, 2)), np.eye(2), np.diag(np.where(np.arange(16) == 11, -1.0, 1.0)), 0.0
    ),
}


@pytest.mark.parametrize("case", list(NPD_CASES))
def test_not_positive_definite_matches_reference(case):
    _assert_same_error(lambda: NPD_CASES[case](nc), lambda: NPD_CASES[case](ref))


def test_nan_pivot_is_not_positive_definite():
    # with check_finite=False a NaN pivot stops the factorisation like a negative one
    # (as the compiled kernels do) instead of returning NaN
    with pytest.raises(NotPositiveDefiniteError, match="pivot 2 of 3") as info:
        nc.damped_solve(np.diag([1.0, np.nan, 1.0]), np.ones(3), 0.0, check_finite=False)
    assert info.value.pivot == 2


def test_rejected_fisher_leaves_device_out_untouched(rng):
    J = scores(rng, (4, 3), np.float64)
    J[2, 2] = np.nan
    old = random_spd(rng, 3)
    out = on_device(old)
    _assert_same_error(lambda: nc.fisher(on_device(J), out=out, decay=0.5), lambda: ref.fisher(J, out=old.copy(), decay=0.5))
    assert np.array_equal(out.copy_to_host(), old)
    nan_out = on_device(np.full((3, 3), np.nan))
    _assert_same_error(lambda: nc.fisher(np.ones((4, 3)), out=nan_out, decay=0.3), lambda: ref.fisher(np.ones((4, 3)), out=np.full((3, 3), np.nan), decay=0.3))


# --------------------------------------------------------------------------------------------
# device arrays in, device arrays out


def test_device_arrays_in_device_arrays_out(rng):
    J = scores(rng, (10, 13), np.float64)
    w = weights_for(rng, 10, True)
    g = scores(rng, 13, np.float64)
    F = nc.fisher(on_device(J), on_device(w))
    assert is_device_array(F) and F.shape == (13, 13)
    assert_close(F.copy_to_host(), ref.fisher(J, w))

    x = nc.damped_solve(F, g, 0.1)  # device F, host g: the result follows F
    assert is_device_array(x) and x.shape == (13,)
    Fh = ref.fisher(J, w)
    assert_close(x.copy_to_host(), ref.damped_solve(Fh, g, 0.1), cond=damped_condition(Fh, 0.1))

    x = nc.lowrank_solve(J, on_device(g), 0.1, w)  # host J, device g
    assert is_device_array(x)
    assert_close(x.copy_to_host(), ref.lowrank_solve(J, g, 0.1, w), cond=damped_condition(Fh, 0.1))

    beta = nc.kl_step_size(on_device(g), x, 1e-2)
    assert isinstance(beta, float)
    assert beta == pytest.approx(ref.kl_step_size(g, x.copy_to_host(), 1e-2), rel=1e-12)

    grad = scores(rng, (3, 4), np.float64)
    A, S = random_spd(rng, 4), random_spd(rng, 3)
    X = nc.kfac_precondition(on_device(grad), A, S, 0.1)
    assert is_device_array(X) and X.shape == (3, 4)
    assert_close(X.copy_to_host(), ref.kfac_precondition(grad, A, S, 0.1), cond=100)


def test_device_out_is_updated_in_place(rng):
    J = scores(rng, (10, 9), np.float32)
    old = random_spd(rng, 9, np.float32)
    out = on_device(old)
    assert nc.fisher(on_device(J), out=out, decay=0.5) is out
    assert_close(out.copy_to_host(), ref.fisher(J, out=old.copy(), decay=0.5))


def test_device_out_aliasing_J(rng):
    # out is J itself (N == P): the estimate is updated from its own old value
    base = random_spd(rng, 9)
    d = on_device(base)
    nc.fisher(d, out=d, decay=0.5)
    assert_close(d.copy_to_host(), ref.fisher(base, out=base.copy(), decay=0.5))


def test_device_views_and_casts(rng):
    # strided and transposed device views are read in place; integer device data is
    # converted on the device
    big = scores(rng, (14, 30), np.float64)
    d = on_device(big)
    view = d[::2, ::3]
    assert_close(host(nc.fisher(view)), ref.fisher(big[::2, ::3]))
    Ji = (np.arange(42).reshape(6, 7) % 5).astype(np.int32)
    F = nc.fisher(on_device(Ji))
    assert F.dtype == np.float64
    assert_close(F.copy_to_host(), ref.fisher(Ji))
    g = scores(rng, 7, np.float64)
    x = nc.natural_gradient(on_device(Ji), g, 0.1, method="lowrank")
    assert_close(x.copy_to_host(), ref.natural_gradient(Ji, g, 0.1, method="lowrank"), cond=1e3)


def test_device_odd_layouts(rng):
    # reversed device weights (gathered before the host copy), a 3-D strided and a
    # Fortran-ordered device gradient for kl_step_size
    J = scores(rng, (8, 5), np.float64)
    w = rng.uniform(0.5, 2.0, 8)
    F = nc.fisher(J, on_device(w[::-1].copy())[::-1])
    assert_close(host(F), ref.fisher(J, w))
    g3 = scores(rng, (3, 4, 6), np.float64)
    n3 = g3 * 1.5
    d3 = on_device(g3)[:, ::2, :]
    assert nc.kl_step_size(d3, on_device(n3)[:, ::2, :], 0.1) == pytest.approx(
        ref.kl_step_size(g3[:, ::2, :], n3[:, ::2, :], 0.1), rel=1e-12
    )
    gF = np.asfortranarray(scores(rng, (5, 3), np.float32))
    assert nc.kl_step_size(cuda.to_device(gF), gF * 2, 0.1) == pytest.approx(ref.kl_step_size(gF, gF * 2, 0.1), rel=1e-12)


def test_device_nan_is_found(rng):
    J = scores(rng, (5, 4), np.float32)
    J[3, 1] = np.inf
    _assert_same_error(lambda: nc.fisher(on_device(J)), lambda: ref.fisher(J))
    g = np.ones(4)
    g[2] = np.nan
    _assert_same_error(
        lambda: nc.damped_solve(on_device(np.eye(4)), on_device(g), 0.1), lambda: ref.damped_solve(np.eye(4), g, 0.1)
    )


# --------------------------------------------------------------------------------------------
# the default (GPU) geometries


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_geometry_fisher(rng, dtype, default_geometry):
    J = scores(rng, (24, 40), dtype)
    w = weights_for(rng, 24, True)
    F = nc.fisher(J, w)
    assert_close(F, ref.fisher(J, w))
    assert np.array_equal(F, F.T)


def test_default_geometry_cholesky(rng, default_geometry):
    # float64 panels are 32 columns wide: a panel solve and a trailing update run
    F = random_spd(rng, 34, np.float64, cond=50.0)
    g = scores(rng, 34, np.float64)
    assert_close(nc.damped_solve(F, g, 0.1), ref.damped_solve(F, g, 0.1), cond=damped_condition(F, 0.1))


# --------------------------------------------------------------------------------------------
# device code for a real GPU


def test_kernels_compile_for_a_real_gpu():
    """The simulator runs the kernels as Python; this compiles their device code.

    Skipped without NVVM (``pip install nvidia-nvvm nvidia-cuda-nvrtc``): no GPU needed.
    """
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run(
        [sys.executable, str(script), "--ptx", "--only", "syrk float32 walk_m=True weighted=True,potf2 float64"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if r.returncode == 3:
        pytest.skip(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all kernels compiled" in r.stdout


def test_overflowing_fisher_leaves_out_untouched_and_decay_one_is_a_no_op(rng):
    # issue 9, defect 6: out is not written when F overflows, on the host or the device
    J = scores(rng, (4, 3), np.float64)
    host = np.eye(3) * 2.0 + 0.5
    dev = cuda.to_device(host)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the simulator's NumPy scalars warn
        for out in (host, dev):
            with pytest.raises(ngdfast.NumericOverflowError, match="fisher"):
                nc.fisher(J * 1e160, out=out, decay=0.25)
    assert np.array_equal(host, np.eye(3) * 2.0 + 0.5)
    assert np.array_equal(dev.copy_to_host(), host)
    assert nc.fisher(J, out=host, decay=1.0) is host
    assert np.array_equal(host, np.eye(3) * 2.0 + 0.5)
    expected = ref.fisher(J, out=host.copy(), decay=0.25)
    assert_close(nc.fisher(J, out=host, decay=0.25), expected)
