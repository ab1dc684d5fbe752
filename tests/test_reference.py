"""ngdfast.reference against first principles: explicit sums, dense solves, Kronecker products."""

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import (
    FISHER_DTYPE_RULES, LAYOUTS, assert_close, assert_woodbury_equals_dense, damped_condition, layout, random_spd,
    woodbury_problems,
)
from ngdfast import NotPositiveDefiniteError, _policy
from ngdfast import reference as ref

SHAPES = [(1, 1), (1, 6), (4, 9), (9, 4), (25, 25), (6, 1)]


def outer_product_fisher(J, w=None):
    """Σ_i w_i j_i j_iᵀ / Σ_i w_i, one outer product at a time, in float64."""
    J = np.asarray(J, dtype=np.float64)
    w = np.ones(J.shape[0]) if w is None else np.asarray(w, dtype=np.float64)
    F = np.zeros((J.shape[1], J.shape[1]))
    for wi, row in zip(w, J):
        F += wi * np.outer(row, row)
    return F / w.sum()


def dense_solution(F, g, damping):
    F = np.asarray(F, dtype=np.float64)
    return np.linalg.solve(F + damping * np.eye(F.shape[0]), np.asarray(g, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# fisher


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_fisher_is_mean_of_outer_products(rng, dtype, shape, weighted):
    J = rng.standard_normal(shape).astype(dtype)
    w = rng.uniform(0.0, 2.0, shape[0]) if weighted else None
    F = ref.fisher(J, w)
    assert F.dtype == dtype and F.shape == (shape[1], shape[1])
    assert_close(F, outer_product_fisher(J, w))
    assert np.array_equal(F, F.T)


@pytest.mark.parametrize("p", [1, 2, 255, 256, 257, 513, 700])
@pytest.mark.parametrize("order", ["C", "F"])
def test_symmetric_from_lower_is_the_mirrored_lower_triangle(rng, dtype, p, order):
    """The band-wise mirror equals ``tril(M) + tril(M, -1).T`` (around the 256-row bands), reads
    no upper element (NaN there changes nothing) and leaves M alone."""
    M = np.asarray(rng.standard_normal((p, p)), dtype=dtype, order=order)
    M[np.triu_indices(p, 1)] = np.nan
    before = M.copy()
    S = ref._symmetric_from_lower(M)
    lower = np.tril(np.nan_to_num(M))
    assert S.dtype == dtype and np.array_equal(S, lower + np.tril(lower, -1).T)
    assert np.array_equal(M, before, equal_nan=True)


def test_fisher_uniform_weights_match_no_weights(rng):
    J = rng.standard_normal((7, 5))
    assert_close(ref.fisher(J, np.full(7, 3.5)), ref.fisher(J))
    assert_close(ref.fisher(J), J.T @ J / 7)


def test_fisher_huge_weights_do_not_overflow(rng):
    J = rng.standard_normal((3, 2))
    assert_close(ref.fisher(J, [1e308, 1e308, 1e308]), ref.fisher(J))


def test_fisher_zero_weight_drops_row(rng):
    J = rng.standard_normal((6, 4))
    w = np.array([1.0, 0.0, 2.0, 0.0, 1.0, 1.0])
    assert_close(ref.fisher(J, w), outer_product_fisher(J[w > 0], w[w > 0]))


@pytest.mark.parametrize("kind", LAYOUTS)
def test_fisher_any_layout(rng, kind):
    J = rng.standard_normal((8, 5))
    assert_close(ref.fisher(layout(J, kind)), outer_product_fisher(J))


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("decay", [0.0, 0.25, 0.9, 1.0])
def test_fisher_ema_in_place(rng, dtype, order, decay):
    J = rng.standard_normal((10, 6)).astype(dtype)
    old = random_spd(rng, 6, dtype)
    out = np.array(old, order=order)
    result = ref.fisher(J, out=out, decay=decay)
    assert result is out
    assert_close(out, decay * old.astype(np.float64) + (1 - decay) * outer_product_fisher(J))
    assert np.array_equal(out, out.T)
    if decay == 1.0:
        assert np.array_equal(out, old)


def test_fisher_decay_zero_does_not_read_out(rng):
    J = rng.standard_normal((5, 3))
    out = np.full((3, 3), np.nan)
    ref.fisher(J, out=out, decay=0.0)
    assert_close(out, outer_product_fisher(J))


def test_fisher_is_positive_semidefinite_for_rank_deficient_batches(rng):
    J = rng.standard_normal((3, 12))
    eig = np.linalg.eigvalsh(ref.fisher(J))
    assert eig.min() > -1e-12 * eig.max()
    assert np.sum(eig > 1e-10 * eig.max()) == 3


@pytest.mark.parametrize("J_dtype, w_dtype, expected", FISHER_DTYPE_RULES)
def test_fisher_dtype_rules(J_dtype, w_dtype, expected):
    J = (np.arange(12).reshape(4, 3) % 3).astype(J_dtype)
    w = None if w_dtype is None else np.array([1, 2, 3, 4], dtype=w_dtype)
    F = ref.fisher(J, w)
    assert F.dtype == expected
    assert_close(F, outer_product_fisher(J.astype(np.float64), w))


def test_fisher_accepts_lists():
    J = [[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]]
    assert_close(ref.fisher(J, [1, 1, 2]), outer_product_fisher(J, [1, 1, 2]))


# --------------------------------------------------------------------------------------------
# damped_solve, lowrank_solve, natural_gradient


@pytest.mark.parametrize("p", [1, 2, 17, 60])
@pytest.mark.parametrize("k", [None, 1, 3])
def test_damped_solve_matches_dense_solve(rng, dtype, p, k):
    F = random_spd(rng, p, dtype, cond=30.0)
    g = rng.standard_normal(p if k is None else (p, k)).astype(dtype)
    x = ref.damped_solve(F, g, 0.1)
    assert x.shape == g.shape and x.dtype == dtype
    assert_close(x, dense_solution(F, g, 0.1), cond=damped_condition(F, 0.1))


def test_damped_solve_reads_only_the_lower_triangle(rng):
    F = random_spd(rng, 8)
    garbage = F + np.triu(rng.standard_normal((8, 8)) * 100, 1)
    g = rng.standard_normal(8)
    assert np.array_equal(ref.damped_solve(garbage, g, 0.5), ref.damped_solve(F, g, 0.5))


def test_damped_solve_zero_damping(rng):
    F = random_spd(rng, 5)
    g = rng.standard_normal(5)
    assert_close(ref.damped_solve(F, g, 0), np.linalg.solve(F, g), cond=10)


def test_damped_solve_promotes_mixed_dtypes(rng):
    F = random_spd(rng, 4, np.float32)
    assert ref.damped_solve(F, np.ones(4), 1.0).dtype == np.float64
    assert ref.damped_solve(F, np.ones(4, dtype=np.float32), 1.0).dtype == np.float32
    assert ref.damped_solve(F, np.ones(4, dtype=np.int8), 1.0).dtype == np.float64
    assert ref.damped_solve(F, np.ones(4, dtype=np.float16), 1.0).dtype == np.float32


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [None, 2])
def test_lowrank_solve_is_the_dense_solve(rng, dtype, shape, weighted, k):
    n, p = shape
    J = rng.standard_normal(shape).astype(dtype)
    w = rng.uniform(0.1, 2.0, n) if weighted else None
    g = rng.standard_normal(p if k is None else (p, k)).astype(dtype)
    damping = 0.3
    F = outer_product_fisher(J, w)
    x = ref.lowrank_solve(J, g, damping, w)
    assert x.shape == g.shape and x.dtype == dtype
    assert_close(x, dense_solution(F, g, damping), cond=damped_condition(F, damping))


@pytest.mark.parametrize("method", ["dense", "lowrank", "auto"])
@pytest.mark.parametrize("shape", [(3, 20), (20, 3), (1, 1)])
def test_natural_gradient_methods(rng, method, shape):
    J = rng.standard_normal(shape)
    g = rng.standard_normal(shape[1])
    w = rng.uniform(0.5, 1.5, shape[0])
    F = outer_product_fisher(J, w)
    x = ref.natural_gradient(J, g, 0.05, w, method=method)
    assert_close(x, dense_solution(F, g, 0.05), cond=damped_condition(F, 0.05))


def test_natural_gradient_dense_without_damping(rng):
    J = rng.standard_normal((30, 4))
    g = rng.standard_normal(4)
    F = outer_product_fisher(J)
    assert_close(ref.natural_gradient(J, g, 0.0), np.linalg.solve(F, g), cond=damped_condition(F, 0.0))


@given(**woodbury_problems(12, -3))
def test_woodbury_equals_dense_property(n, p, k, log_damping, weighted, seed):
    assert_woodbury_equals_dense(ref, n, p, k, log_damping, weighted, seed)


# --------------------------------------------------------------------------------------------
# failing pivots


def test_pivot_of_diagonal_matrix():
    F = np.diag([1.0, 1.0, -5.0, 1.0])
    with pytest.raises(NotPositiveDefiniteError) as info:
        ref.damped_solve(F, np.ones(4), 1.0)
    assert info.value.pivot == 3 and info.value.damping == 1.0
    assert "pivot 3 of 4" in str(info.value)


@given(p=st.integers(1, 10), shift=st.floats(0.5, 3.0), seed=st.integers(0, 2**32 - 1))
def test_failing_pivot_is_first_non_pd_leading_minor(p, shift, seed):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((p, p))
    M = B @ B.T / p - shift * np.eye(p) * rng.uniform(0, 1)
    minima = [np.linalg.eigvalsh(M[:k, :k]).min() for k in range(1, p + 1)]
    first = next((k for k, m in enumerate(minima, 1) if m <= 0), None)
    if first is None or min(abs(m) for m in minima) < 1e-8:  # PD, or too close to call
        return
    with pytest.raises(np.linalg.LinAlgError) as info:
        ref.damped_solve(M, np.ones(p), 0.0)
    assert info.value.pivot == first
    assert f"pivot {first} of {p}" in str(info.value)


# --------------------------------------------------------------------------------------------
# kl_step_size


def test_kl_step_size_formula(rng):
    g = rng.standard_normal(10)
    n = rng.standard_normal(10) * 0.1 + g
    q = float(g @ n)
    beta = ref.kl_step_size(g, n, 1e-3)
    assert type(beta) is float
    assert math.isclose(beta, math.sqrt(2e-3 / q), rel_tol=1e-14)
    assert ref.kl_step_size(g, n, 1e-3, max_step=beta / 2) == beta / 2
    assert ref.kl_step_size(g, n, 1e-3, max_step=2 * beta) == beta
    assert ref.kl_step_size(g, n, 0.0) == 0.0


def test_kl_step_size_zero_quadratic():
    assert ref.kl_step_size(np.zeros(3), np.ones(3), 0.1) == 0.0
    assert ref.kl_step_size([1.0, 0.0], [0.0, 5.0], 0.1) == 0.0


def test_kl_step_size_in_float64_for_float32_inputs(rng):
    g = rng.standard_normal(1000).astype(np.float32)
    n = (g * 3).astype(np.float32)
    q = float(g.astype(np.float64) @ n.astype(np.float64))
    assert math.isclose(ref.kl_step_size(g, n, 0.01), math.sqrt(0.02 / q), rel_tol=1e-14)


def test_kl_step_size_matrix_shaped():
    g = np.ones((2, 3))
    assert math.isclose(ref.kl_step_size(g, 2 * g, 0.5), math.sqrt(1.0 / 12.0), rel_tol=1e-14)


def test_kl_step_size_subnormal_quadratic_is_finite():
    beta = ref.kl_step_size([5e-324], [1.0], 1e-3)
    assert math.isfinite(beta) and beta > 1e150


# --------------------------------------------------------------------------------------------
# kfac_precondition


def kron_solution(grad, A, S, damping_a, damping_s):
    """Solve (S̃ ⊗ Ã) vec_row(X) = vec_row(grad) with the explicit Kronecker product."""
    out, inp = grad.shape
    At = np.asarray(A, np.float64) + damping_a * np.eye(inp)
    St = np.asarray(S, np.float64) + damping_s * np.eye(out)
    return np.linalg.solve(np.kron(St, At), np.asarray(grad, np.float64).ravel()).reshape(out, inp)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (6, 2), (10, 10)])
@pytest.mark.parametrize("factored", [True, False])
def test_kfac_is_the_kronecker_solve(rng, dtype, shape, factored):
    out, inp = shape
    grad = rng.standard_normal(shape).astype(dtype)
    A = random_spd(rng, inp, dtype, cond=5.0) * 3.0
    S = random_spd(rng, out, dtype, cond=5.0) * 0.2
    damping = 0.01
    if factored:
        pi = math.sqrt((np.trace(A.astype(np.float64)) / inp) / (np.trace(S.astype(np.float64)) / out))
    else:
        pi = 1.0
    X = ref.kfac_precondition(grad, A, S, damping, factored_damping=factored)
    assert X.shape == shape and X.dtype == dtype
    expected = kron_solution(grad, A, S, pi * math.sqrt(damping), math.sqrt(damping) / pi)
    cond = damped_condition(A, pi * 0.1) * damped_condition(S, 0.1 / pi)
    assert_close(X, expected, cond=cond)


def test_kfac_zero_trace_uses_unit_pi(rng):
    grad = rng.standard_normal((3, 4))
    S = random_spd(rng, 3)
    X = ref.kfac_precondition(grad, np.zeros((4, 4)), S, 0.04)
    assert_close(X, kron_solution(grad, np.zeros((4, 4)), S, 0.2, 0.2), cond=100)


@given(out=st.integers(1, 6), inp=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_kfac_kronecker_identity_property(out, inp, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((20, inp))
    d = rng.standard_normal((20, out))
    A, S = ref.fisher(a), ref.fisher(d)
    grad = rng.standard_normal((out, inp))
    X = ref.kfac_precondition(grad, A, S, 0.1)
    da, ds = _policy.kfac_damping(np.trace(A), inp, np.trace(S), out, 0.1, True)
    At = A + da * np.eye(inp)
    St = S + ds * np.eye(out)
    assert_close(np.kron(St, At) @ X.ravel(), grad.ravel(), cond=damped_condition(A, da) * damped_condition(S, ds))
