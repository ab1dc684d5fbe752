"""Every compiled kernel in ``ngdfast`` against ``ngdfast.reference``."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import ngdfast
from conftest import (
    FISHER_DTYPE_RULES, LAYOUTS, assert_close, assert_decay_zero_does_not_read_out, assert_fisher_ema,
    assert_kfac_zero_trace_factor, assert_woodbury_equals_dense, damped_condition, layout, random_spd, scores,
    weights_for, woodbury_problems,
)
from ngdfast import _policy
from ngdfast import reference as ref

# N = 1, N < P, N > P, N = P, P = 1
SHAPES = [(1, 1), (1, 7), (3, 10), (10, 3), (16, 16), (9, 1), (120, 45), (30, 140)]


# --------------------------------------------------------------------------------------------
# fisher


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("weighted", [False, True])
def test_fisher(rng, dtype, shape, kind, weighted):
    J = scores(rng, shape, dtype)
    w = weights_for(rng, shape[0], weighted)
    F = ngdfast.fisher(layout(J, kind), w)
    assert F.dtype == dtype and F.shape == (shape[1], shape[1])
    assert_close(F, ref.fisher(J, w))
    assert np.array_equal(F, F.T)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("decay", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_fisher_ema_out(rng, dtype, order, decay, weighted):
    J = scores(rng, (12, 9), dtype)
    assert_fisher_ema(ngdfast.fisher, J, weights_for(rng, 12, weighted), random_spd(rng, 9, dtype), order, decay)


def test_fisher_decay_zero_does_not_read_out(rng):
    assert_decay_zero_does_not_read_out(ngdfast.fisher, rng, 6, 4)


def test_fisher_out_aliasing_J(rng):
    # out is J itself (N == P): the running estimate is updated from its own old value.
    base = random_spd(rng, 5)
    J = base.copy()
    expected = ref.fisher(base, out=base.copy(), decay=0.5)
    ngdfast.fisher(J, out=J, decay=0.5)
    assert_close(J, expected)


def test_fisher_check_finite_false_skips_check(rng):
    J = scores(rng, (4, 3), np.float64)
    J[1, 1] = np.nan
    F = ngdfast.fisher(J, check_finite=False)
    assert np.isnan(F[1, 1])


@pytest.mark.parametrize("J_dtype, w_dtype, expected", FISHER_DTYPE_RULES)
def test_fisher_dtype_rules(J_dtype, w_dtype, expected):
    J = (np.arange(20).reshape(5, 4) % 3).astype(J_dtype)
    w = None if w_dtype is None else np.arange(1, 6).astype(w_dtype)
    F = ngdfast.fisher(J, w)
    assert F.dtype == expected
    assert_close(F, ref.fisher(J, w))


def test_fisher_non_native_byte_order(rng):
    J = scores(rng, (6, 3), np.float64)
    F = ngdfast.fisher(J.astype(">f8"))
    assert F.dtype == np.float64
    assert_close(F, ref.fisher(J))


def test_fisher_lists():
    J = [[1, 2, 3], [0, 1, 0]]
    assert_close(ngdfast.fisher(J, [2, 1]), ref.fisher(J, [2, 1]))


# --------------------------------------------------------------------------------------------
# damped_solve


@pytest.mark.parametrize("p", [1, 2, 7, 64, 150])
@pytest.mark.parametrize("k", [None, 4])
@pytest.mark.parametrize("kind", LAYOUTS)
def test_damped_solve(rng, dtype, p, k, kind):
    F = random_spd(rng, p, dtype, cond=50.0)
    g = scores(rng, p if k is None else (p, k), dtype)
    x = ngdfast.damped_solve(layout(F, kind), layout(g, kind), 0.05)
    assert x.shape == g.shape and x.dtype == dtype
    assert_close(x, ref.damped_solve(F, g, 0.05), cond=damped_condition(F, 0.05))


def test_damped_solve_reads_only_the_lower_triangle(rng, dtype):
    F = random_spd(rng, 20, dtype)
    messy = F + np.triu(rng.standard_normal((20, 20)), 1).astype(dtype) * 50
    g = scores(rng, 20, dtype)
    assert_close(ngdfast.damped_solve(messy, g, 0.1), ref.damped_solve(F, g, 0.1), cond=20)
    assert_close(ngdfast.damped_solve(np.asfortranarray(messy), g, 0.1), ref.damped_solve(F, g, 0.1), cond=20)


def test_damped_solve_does_not_modify_inputs(rng):
    F = random_spd(rng, 30)
    g = rng.standard_normal((30, 2))
    F0, g0 = F.copy(), g.copy()
    ngdfast.damped_solve(F, g, 1e-3)
    assert np.array_equal(F, F0) and np.array_equal(g, g0)


@pytest.mark.parametrize(
    "F_dtype, g_dtype, expected",
    [
        (np.float32, np.float64, np.float64),
        (np.float64, np.float32, np.float64),
        (np.float32, np.int64, np.float64),
        (np.float32, np.float16, np.float32),
        (np.int64, np.int64, np.float64),
    ],
)
def test_damped_solve_promotion(rng, F_dtype, g_dtype, expected):
    F = (random_spd(rng, 6) * 10).astype(F_dtype) + np.eye(6, dtype=F_dtype) * 10
    g = np.arange(6).astype(g_dtype)
    x = ngdfast.damped_solve(F, g, 0.5)
    assert x.dtype == expected
    assert_close(x, ref.damped_solve(F, g, 0.5), cond=50)


# --------------------------------------------------------------------------------------------
# lowrank_solve and natural_gradient


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["C", "strided", "negative"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [None, 3])
def test_lowrank_solve(rng, dtype, shape, kind, weighted, k):
    n, p = shape
    J = scores(rng, shape, dtype)
    w = weights_for(rng, n, weighted)
    g = scores(rng, p if k is None else (p, k), dtype)
    damping = 0.2
    x = ngdfast.lowrank_solve(layout(J, kind), layout(g, kind), damping, w)
    assert x.shape == g.shape and x.dtype == dtype
    cond = damped_condition(ref.fisher(J.astype(np.float64), w), damping)
    assert_close(x, ref.lowrank_solve(J, g, damping, w), cond=cond)


def test_lowrank_solve_transposed_scores(rng, dtype):
    Jt = scores(rng, (40, 6), dtype)  # stored (P, N): J = Jt.T is a Fortran-ordered view
    g = scores(rng, 40, dtype)
    x = ngdfast.lowrank_solve(Jt.T, g, 0.3)
    assert_close(x, ref.lowrank_solve(Jt.T, g, 0.3), cond=damped_condition(ref.fisher(Jt.T.astype(float)), 0.3))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", ["dense", "lowrank", "auto"])
@pytest.mark.parametrize("kind", ["F", "transposed"])
@pytest.mark.parametrize("weighted", [False, True])
def test_natural_gradient(rng, dtype, shape, method, kind, weighted):
    n, p = shape
    J = scores(rng, shape, dtype)
    w = weights_for(rng, n, weighted)
    g = scores(rng, p, dtype)
    damping = 0.1
    x = ngdfast.natural_gradient(layout(J, kind), layout(g, kind), damping, w, method=method)
    assert x.shape == g.shape and x.dtype == dtype
    cond = damped_condition(ref.fisher(J.astype(np.float64), w), damping)
    assert_close(x, ref.natural_gradient(J, g, damping, w, method="dense"), cond=cond)


def test_natural_gradient_multi_rhs(rng, dtype):
    J = scores(rng, (25, 12), dtype)
    g = scores(rng, (12, 5), dtype)
    cond = damped_condition(ref.fisher(J.astype(np.float64)), 0.01)
    for method in ("dense", "lowrank"):
        x = ngdfast.natural_gradient(J, g, 0.01, method=method)
        assert x.shape == (12, 5)
        assert_close(x, ref.natural_gradient(J, g, 0.01), cond=cond)


def test_natural_gradient_dense_without_damping(rng):
    J = scores(rng, (50, 6), np.float64)
    g = scores(rng, 6, np.float64)
    cond = damped_condition(ref.fisher(J), 0.0)
    assert_close(ngdfast.natural_gradient(J, g, 0.0), ref.natural_gradient(J, g, 0.0), cond=cond)


def test_natural_gradient_promotion(rng):
    J = scores(rng, (8, 5), np.float32)
    g = scores(rng, 5, np.float64)
    x = ngdfast.natural_gradient(J, g, 0.1)
    assert x.dtype == np.float64
    assert_close(x, ref.natural_gradient(J.astype(np.float64), g, 0.1), cond=100)


@pytest.mark.parametrize(
    "n, p, damping, expected",
    [(5, 200, 0.1, "lowrank"), (200, 5, 0.1, "dense"), (5, 200, 0.0, "dense"), (40, 40, 0.1, "dense")],
)
def test_auto_picks_by_cost_model(rng, monkeypatch, n, p, damping, expected):
    assert _policy.choose_method(n, p, np.float64, damping) == expected
    core = ngdfast._kernels._core
    calls = []

    def spy(name):
        original = getattr(core, name)

        def wrapped(*args):
            calls.append(name)
            return original(*args)

        return wrapped

    monkeypatch.setattr(core, "lowrank_solve", spy("lowrank_solve"))
    monkeypatch.setattr(core, "natural_gradient_dense", spy("natural_gradient_dense"))
    J = scores(rng, (n, p), np.float64)
    g = scores(rng, p, np.float64)
    try:
        ngdfast.natural_gradient(J, g, damping, method="auto")
    except ngdfast.NotPositiveDefiniteError:
        assert damping == 0.0 and n < p  # singular F without damping: still the dense path
    assert calls == ["lowrank_solve" if expected == "lowrank" else "natural_gradient_dense"]


def test_cost_model():
    choose = _policy.choose_method
    assert choose(1, 20, np.float64, 1.0) == "lowrank"
    assert choose(2, 2, np.float64, 1.0) == "dense"  # the 4NP products dominate tiny problems
    assert choose(20, 1, np.float64, 1.0) == "dense"
    assert choose(10, 1000, np.float32, 1e-3) == "lowrank"
    assert choose(1000, 10, np.float32, 1e-3) == "dense"
    assert choose(10, 1000, np.float64, 0.0) == "dense"
    # Flop counts favour dense here, but a float64 P x P matrix would take 3.2 GB.
    assert choose(19_999, 20_000, np.float64, 1e-3) == "lowrank"
    assert choose(19_999, 20_000, np.float32, 1e-3) == "dense"
    # Never trade a huge P x P for a bigger N x N.
    assert choose(40_000, 20_000, np.float64, 1e-3) == "dense"


# --------------------------------------------------------------------------------------------
# kl_step_size, kfac_precondition


def test_kl_step_size_matches_reference(rng, dtype):
    g = scores(rng, 50, dtype)
    n = g * 2 + scores(rng, 50, dtype) * 0.1
    for kwargs in ({}, {"max_step": 1e-3}):
        assert ngdfast.kl_step_size(g, n, 0.1, **kwargs) == ref.kl_step_size(g, n, 0.1, **kwargs)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1), (6, 9), (33, 17), (70, 120)])
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("factored", [True, False])
def test_kfac_precondition(rng, dtype, shape, kind, factored):
    out, inp = shape
    grad = scores(rng, shape, dtype)
    A = random_spd(rng, inp, dtype, cond=20.0) * 2.0
    S = random_spd(rng, out, dtype, cond=20.0) * 0.1
    damping = 1e-2
    X = ngdfast.kfac_precondition(layout(grad, kind), layout(A, kind), layout(S, kind), damping, factored_damping=factored)
    assert X.shape == shape and X.dtype == dtype
    da, ds = _policy.kfac_damping(np.trace(A), inp, np.trace(S), out, damping, factored)
    cond = damped_condition(A, da) * damped_condition(S, ds)
    assert_close(X, ref.kfac_precondition(grad, A, S, damping, factored_damping=factored), cond=cond)


@pytest.mark.parametrize("order", ["C", "F"])
def test_kfac_reads_only_lower_triangles(rng, order):
    grad = scores(rng, (4, 5), np.float64)
    A = random_spd(rng, 5)
    S = random_spd(rng, 4)
    messy_A = np.array(A + np.triu(rng.standard_normal((5, 5)), 1) * 10, order=order)
    messy_S = np.array(S + np.triu(rng.standard_normal((4, 4)), 1) * 10, order=order)
    assert_close(ngdfast.kfac_precondition(grad, messy_A, messy_S, 0.1), ref.kfac_precondition(grad, A, S, 0.1), cond=100)


def test_kernels_do_not_modify_inputs(rng):
    J = scores(rng, (9, 6), np.float64)
    g = scores(rng, (6, 2), np.float64)
    w = rng.uniform(0.5, 1.0, 9)
    grad, A, S = scores(rng, (3, 4), np.float64), random_spd(rng, 4), random_spd(rng, 3)
    inputs = [J, g, w, grad, A, S]
    copies = [a.copy() for a in inputs]
    ngdfast.fisher(J, w)
    for method in ("dense", "lowrank"):
        ngdfast.natural_gradient(J, g, 0.1, w, method=method)
    ngdfast.lowrank_solve(J, g, 0.1, w)
    ngdfast.kfac_precondition(grad, A, S, 0.1)
    ngdfast.damped_solve(A, grad.T, 0.1)
    for a, c in zip(inputs, copies):
        assert np.array_equal(a, c)


def test_kfac_zero_trace_factor(rng):
    assert_kfac_zero_trace_factor(ngdfast.kfac_precondition, rng)


def test_kfac_check_finite_switch_does_not_change_the_answer(rng):
    grad, A, S = scores(rng, (3, 5), np.float64), random_spd(rng, 5), random_spd(rng, 3)
    checked = ngdfast.kfac_precondition(grad, A, S, 0.1)
    assert np.array_equal(ngdfast.kfac_precondition(grad, A, S, 0.1, check_finite=False), checked)
    assert_close(ref.kfac_precondition(grad, A, S, 0.1, check_finite=False), checked, cond=100)


def test_kfac_promotion(rng):
    grad = scores(rng, (3, 2), np.float32)
    A = random_spd(rng, 2, np.float64)
    S = random_spd(rng, 3, np.float32)
    X = ngdfast.kfac_precondition(grad, A, S, 0.1)
    assert X.dtype == np.float64
    assert_close(X, ref.kfac_precondition(grad, A, S, 0.1), cond=100)


# --------------------------------------------------------------------------------------------
# properties


@given(single=st.booleans(), **woodbury_problems(24, -2))
def test_woodbury_equals_dense_property(n, p, k, log_damping, weighted, single, seed):
    dtype = np.float32 if single else np.float64
    assert_woodbury_equals_dense(ngdfast, n, p, k, log_damping, weighted, seed, dtype)


@given(
    n=st.integers(1, 30),
    p=st.integers(1, 30),
    scale=st.floats(1e-3, 1e3),
    single=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_fisher_symmetric_psd_property(n, p, scale, single, seed):
    rng = np.random.default_rng(seed)
    dtype = np.float32 if single else np.float64
    J = (rng.standard_normal((n, p)) * scale).astype(dtype)
    F = ngdfast.fisher(J, rng.uniform(0.0, 1.0, n) + 1e-3)
    assert np.array_equal(F, F.T)
    eig = np.linalg.eigvalsh(F.astype(np.float64))
    # Rounding perturbs F by at most ~ N eps tr(F): eigenvalues can dip below 0 only that far.
    assert eig.min() >= -2 * (n + p) * np.finfo(dtype).eps * np.trace(F.astype(np.float64))
    assert np.all(np.diag(F) >= 0)


@given(out=st.integers(1, 8), inp=st.integers(1, 8), log_damping=st.floats(-3, 0), seed=st.integers(0, 2**32 - 1))
def test_kfac_kronecker_identity_property(out, inp, log_damping, seed):
    rng = np.random.default_rng(seed)
    A = ngdfast.fisher(rng.standard_normal((15, inp)))
    S = ngdfast.fisher(rng.standard_normal((15, out)))
    grad = rng.standard_normal((out, inp))
    damping = 10.0**log_damping
    X = ngdfast.kfac_precondition(grad, A, S, damping)
    da, ds = _policy.kfac_damping(np.trace(A), inp, np.trace(S), out, damping, True)
    kron = np.kron(S + ds * np.eye(out), A + da * np.eye(inp))
    cond = damped_condition(A, da) * damped_condition(S, ds)
    assert_close(kron @ X.ravel(), grad.ravel(), cond=cond)


# --------------------------------------------------------------------------------------------
# one moderately large case: blocking and threads in the C++ core


def test_large_problem(rng, dtype):
    n, p = 1100, 1000
    J = scores(rng, (n, p), dtype)
    g = scores(rng, p, dtype)
    F = ngdfast.fisher(J)
    F_ref = ref.fisher(J)
    assert np.array_equal(F, F.T)
    assert_close(F, F_ref, rtol=5e-4 if dtype == np.float32 else 1e-10)
    damping = 0.5
    cond = damped_condition(F_ref, damping)
    x_ref = ref.damped_solve(F_ref, g, damping)
    assert_close(ngdfast.damped_solve(F, g, damping), x_ref, cond=cond)
    assert_close(ngdfast.natural_gradient(J, g, damping, method="dense"), x_ref, cond=cond)
    J_short = J[:300]
    cond_short = damped_condition(ref.fisher(J_short.astype(np.float64)), damping)
    assert_close(ngdfast.lowrank_solve(J_short, g, damping), ref.lowrank_solve(J_short, g, damping), cond=cond_short)
