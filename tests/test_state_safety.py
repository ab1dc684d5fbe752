"""Curvature objects and the optimizer keep a usable state (issue 9, defects 4, 5 and 7).

* huge finite weights are normalised, never summed to Inf (defect 4);
* a batch whose statistics are not representable (the Fisher of finite scores overflows)
  is rejected with ``NumericOverflowError`` and changes nothing (defect 5);
* arguments that make every later step fail or do nothing are rejected up front, and
  counts are integers (defect 7);
* every layer validates an argument kind with the one rule in ``ngdfast._validation``.
"""

import pickle

import numpy as np
import pytest

import ngdfast
from ngdfast import (
    DenseFisher,
    DiagonalFisher,
    KFACFisher,
    LowRankFisher,
    NaturalGradient,
    NumericOverflowError,
    natural_gradient_step,
)
from ngdfast import reference as ref

P = 5
SHAPES = [(2, 3), (1, 2)]  # K-FAC layers: P = 2*3 + 1*2 = 8

FLAT = {
    "dense": lambda: DenseFisher(P),
    "lowrank": lambda: LowRankFisher(P, max_rows=16),
    "diagonal": lambda: DiagonalFisher(P),
}


def _rows(seed=0, n=8, p=P):
    return np.random.default_rng(seed).standard_normal((n, p))


def _kfac_stats(seed=0, n=6, scale=1.0):
    rng = np.random.default_rng(seed)
    acts = [rng.standard_normal((n, i)) * scale for _, i in SHAPES]
    grads = [rng.standard_normal((n, o)) * scale for o, _ in SHAPES]
    return acts, grads


def _state(curv):
    """Everything observable about a curvature object, as bytes."""
    return pickle.dumps((curv.snapshot(), curv.n_updates, curv.to_dense()))


# --------------------------------------------------------------------------------------------
# defect 4: huge finite weights


@pytest.mark.parametrize("kind", list(FLAT))
@pytest.mark.parametrize("scale", [1e308, 1e300, 5e-324])
def test_huge_or_tiny_finite_weights_are_normalised(kind, scale):
    J = _rows()
    w = np.linspace(1.0, 1.7, 8) * scale
    curv = FLAT[kind]()
    curv.update(J, weights=w)
    expected = ref.fisher(J, w)
    F = curv.to_dense()
    if kind == "diagonal":
        expected = np.diag(np.diagonal(expected))
    np.testing.assert_allclose(F, expected, rtol=1e-12, atol=1e-14)
    assert curv.n_updates == 1


def test_kfac_huge_weights():
    acts, grads = _kfac_stats()
    w = np.full(6, 1e308)
    kfac = KFACFisher(SHAPES)
    kfac.update(acts, grads, weights=w)
    for (A, S), a, d in zip(kfac.factors, acts, grads):
        np.testing.assert_allclose(A, ref.fisher(a), rtol=1e-12)
        np.testing.assert_allclose(S, ref.fisher(d), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# defect 5: statistics that overflow are rejected, state unchanged


@pytest.mark.parametrize("kind", list(FLAT))
@pytest.mark.parametrize("first", [True, False])
def test_overflowing_batch_is_rejected_state_unchanged(kind, first):
    curv = FLAT[kind]()
    if not first:
        curv.update(_rows(1))
    before = _state(curv)
    with pytest.raises(NumericOverflowError, match="overflow"):
        curv.update(_rows(2) * 1e200)
    assert _state(curv) == before
    # still usable, and the next good batch is taken as usual
    curv.update(_rows(3))
    x = curv.solve(np.ones(P), 0.1)
    assert np.all(np.isfinite(x))


def test_float64_rows_that_do_not_fit_float32_storage_are_an_overflow():
    for make in (lambda: DenseFisher(P, dtype=np.float32), lambda: LowRankFisher(P, dtype=np.float32),
                 lambda: DiagonalFisher(P, dtype=np.float32)):
        curv = make()
        with pytest.raises(NumericOverflowError, match="float32"):
            curv.update(_rows() * 1e100)
        assert curv.n_updates == 0


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("which", ["activations", "output_grads"])
def test_kfac_overflowing_layer_is_rejected_state_unchanged(layer, which):
    kfac = KFACFisher(SHAPES)
    kfac.update(*_kfac_stats(1))
    before = _state(kfac)
    acts, grads = _kfac_stats(2)
    (acts if which == "activations" else grads)[layer] *= 1e200
    with pytest.raises(NumericOverflowError, match=rf"{which}\[{layer}\]"):
        kfac.update(acts, grads)
    assert _state(kfac) == before


@pytest.mark.parametrize("kind", list(FLAT) + ["kfac"])
def test_step_with_overflowing_statistics_changes_nothing(kind):
    rng = np.random.default_rng(4)
    if kind == "kfac":
        curv = KFACFisher(SHAPES)
        n = curv.n_params
        good, bad = _kfac_stats(1), _kfac_stats(2, scale=1e200)
    else:
        curv, n = FLAT[kind](), P
        good, bad = (_rows(1),), (_rows(2) * 1e200,)
    opt = NaturalGradient(curv, kl_radius=1e-2, damping=1e-2)
    theta = rng.standard_normal(n)
    g = rng.standard_normal(n)
    opt.step(theta, g, *good, loss=1.0)
    params, state, last = theta.copy(), _state(curv), opt.last_info
    with pytest.raises(NumericOverflowError):
        opt.step(theta, g, *bad, loss=1.0)
    assert _state(curv) == state
    np.testing.assert_array_equal(theta, params)
    # (a failed step forgets a pending report_loss, by design: test_optimizer)
    assert opt.n_steps == 1 and opt.last_info is last and opt.damping == 1e-2 and opt.kl_radius == 1e-2
    info = opt.step(theta, g, *good)  # later steps move again (beta > 0)
    assert info.beta > 0 and opt.n_steps == 2


# --------------------------------------------------------------------------------------------
# defect 7: arguments that can only fail later


@pytest.mark.parametrize("name, value", [("max_step", 0.0), ("max_step", -1.0), ("kl_radius", 0.0),
                                         ("kl_radius", -1e-3), ("max_step", np.nan), ("kl_radius", np.inf)])
def test_optimizer_rejects_useless_step_limits(name, value):
    with pytest.raises(ValueError, match=name):
        NaturalGradient(DenseFisher(P), **{name: value})
    with pytest.raises(ValueError, match=name):
        natural_gradient_step(np.zeros(P), np.ones(P), _rows(), 0.1, **{"kl_radius": 1e-3, name: value})


def test_max_step_inf_means_no_cap():
    opt = NaturalGradient(DenseFisher(P), max_step=np.inf)
    theta = np.zeros(P)
    assert opt.step(theta, np.ones(P), _rows()).beta > 0


@pytest.mark.parametrize("bad", [2.5, "3", True, None, 3.0, np.float64(3.0)])
@pytest.mark.parametrize("cls", [DenseFisher, LowRankFisher, DiagonalFisher])
def test_n_params_must_be_an_integer(cls, bad):
    with pytest.raises(TypeError, match="n_params"):
        cls(bad)


@pytest.mark.parametrize("bad", [0, -3])
@pytest.mark.parametrize("cls", [DenseFisher, LowRankFisher, DiagonalFisher])
def test_n_params_must_be_positive(cls, bad):
    with pytest.raises(ValueError, match="n_params"):
        cls(bad)


def test_integer_like_counts_are_accepted():
    assert DenseFisher(np.int64(4)).n_params == 4
    assert type(DenseFisher(np.int32(4)).n_params) is int
    assert LowRankFisher(4, max_rows=np.uint8(3)).max_rows == 3
    assert KFACFisher([(np.int64(2), 3)]).layer_shapes == [(2, 3)]


@pytest.mark.parametrize("bad, exc", [(2.5, TypeError), ("8", TypeError), (True, TypeError), (0, ValueError)])
def test_max_rows_is_a_positive_integer(bad, exc):
    with pytest.raises(exc, match="max_rows"):
        LowRankFisher(P, max_rows=bad)


@pytest.mark.parametrize("shapes, exc", [
    ([(2.5, 3)], TypeError), ([("2", 3)], TypeError), ([(True, 3)], TypeError), ([(0, 3)], ValueError),
    ([(2, -1)], ValueError), ([(3,)], ValueError), ([], ValueError), ([(1, 2, 3)], ValueError),
])
def test_layer_shapes_are_positive_integer_pairs(shapes, exc):
    with pytest.raises(exc, match="layer_shapes"):
        KFACFisher(shapes)


def test_max_retries_is_a_nonnegative_integer():
    for bad, exc in ((2.5, TypeError), (-1, ValueError), (True, TypeError)):
        with pytest.raises(exc, match="max_retries"):
            NaturalGradient(DenseFisher(P), max_retries=bad)


# --------------------------------------------------------------------------------------------
# one rule and one wording per argument kind


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5, np.nan])
def test_running_decay_rule(decay):
    # decay = 1 would keep the first batch forever: rejected for running estimates
    for make in (lambda: DenseFisher(P, decay=decay), lambda: KFACFisher(SHAPES, decay=decay)):
        with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
            make()


def test_kernel_decay_one_is_a_no_op():
    out = ref.fisher(_rows(1))
    before = out.copy()
    for m in (ngdfast, ref):
        assert m.fisher(_rows(2), out=out, decay=1.0) is out
        np.testing.assert_array_equal(out, before)


def test_curvature_messages_come_from_the_shared_validators():
    dense = DenseFisher(P)
    with pytest.raises(ValueError, match=r"DenseFisher.update: J must have shape \(N, P\) with P = 5"):
        dense.update(np.ones((3, 4)))
    with pytest.raises(ValueError, match="DenseFisher.update: J contains NaN or Inf"):
        dense.update(np.full((3, P), np.nan))
    with pytest.raises(ValueError, match=r"DenseFisher.update: weights must be >= 0"):
        dense.update(_rows(), weights=-np.ones(8))
    with pytest.raises(ValueError, match="DenseFisher.update: weights are all zero"):
        dense.update(_rows(), weights=np.zeros(8))
    with pytest.raises(TypeError, match="DenseFisher.update: J has complex dtype"):
        dense.update(_rows() * 1j)
    with pytest.raises(ValueError, match=r"DenseFisher.solve: damping must be a finite number >= 0"):
        dense.solve(np.ones(P), -1.0)
    with pytest.raises(ValueError, match="DenseFisher.solve: g contains NaN or Inf"):
        dense.solve(np.full(P, np.nan), 1.0)
    with pytest.raises(ValueError, match="NaturalGradient.step: grad contains NaN or Inf"):
        NaturalGradient(dense).step(np.zeros(P), np.full(P, np.inf))
    assert dense.n_updates == 0


@pytest.mark.parametrize("kind", list(FLAT))
def test_solve_that_overflows_is_reported_not_returned(kind):
    # g / (d + damping) beyond the largest float: an error, not Inf (every solve path,
    # including the cached second solve and the empty low-rank estimate)
    curv = FLAT[kind]()
    if kind == "lowrank":
        with pytest.raises(NumericOverflowError, match="LowRankFisher.solve"):
            curv.solve(np.full(P, 1e300), 1e-300)
    curv.update(_rows() * 1e-150)
    g = np.full(P, 1e300)
    for _ in range(2):  # first solve and the cached one
        with pytest.raises(NumericOverflowError, match="overflows"):
            curv.solve(g, 1e-300)


def test_step_that_overflows_params_is_rejected():
    # a step of ~1e150 does not fit float32 parameters
    opt = NaturalGradient(DiagonalFisher(P), kl_radius=1e300, damping=1e-3)
    theta = np.full(P, 1.0, dtype=np.float32)
    with pytest.raises(NumericOverflowError, match="params"):
        opt.step(theta, np.ones(P), _rows())
    assert np.all(theta == 1.0) and opt.n_steps == 0 and opt.curvature.n_updates == 0
