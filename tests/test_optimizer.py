"""NaturalGradient and natural_gradient_step: step sizes, retries and rollback."""

import numpy as np
import pytest

from ngdfast import (
    DenseFisher,
    DiagonalFisher,
    KFACFisher,
    LowRankFisher,
    NaturalGradient,
    NotPositiveDefiniteError,
    StepInfo,
    natural_gradient_step,
)
from ngdfast.models import MLP, SoftmaxRegression


def _problem(model, n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, model.n_features))
    y = rng.integers(0, model.n_classes, n)
    theta = model.init(rng) + 0.1 * rng.standard_normal(model.n_params)
    return theta, X, y


def _mean_kl(p, q):
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


@pytest.mark.parametrize(
    "model, n, kl_radius",
    [
        (SoftmaxRegression(6, 4), 40, 1e-4),
        (SoftmaxRegression(6, 4), 40, 1e-3),
        # The MLP is not linear in θ: the second-order KL model holds for smaller steps.
        (MLP([6, 8, 4], "tanh"), 400, 1e-6),
        (MLP([6, 8, 4], "tanh"), 400, 1e-5),
    ],
    ids=["softmax-1e-4", "softmax-1e-3", "mlp-1e-6", "mlp-1e-5"],
)
def test_actual_kl_of_a_step_is_the_kl_radius(model, n, kl_radius):
    theta, X, y = _problem(model, n=n)
    opt = NaturalGradient(DenseFisher(model.n_params, decay=0.0), kl_radius=kl_radius, damping=1e-6)
    _, g = model.loss_and_grad(theta, X, y)
    before = model.predict_proba(theta, X)
    info = opt.step(theta, g, *model.scores(theta, X, None, "exact"))
    assert isinstance(info, StepInfo) and info.retries == 0 and not info.clipped
    assert info.predicted_kl == pytest.approx(kl_radius)
    assert info.predicted_kl == pytest.approx(0.5 * info.beta**2 * info.quadratic)
    assert _mean_kl(before, model.predict_proba(theta, X)) == pytest.approx(kl_radius, rel=0.1)


@pytest.mark.parametrize(
    "make",
    [
        lambda P, shapes: DenseFisher(P),
        lambda P, shapes: LowRankFisher(P, max_rows=128),
        lambda P, shapes: DiagonalFisher(P),
        lambda P, shapes: KFACFisher(shapes),
    ],
    ids=["dense", "lowrank", "diagonal", "kfac"],
)
def test_every_representation_trains(make):
    model = MLP([6, 8, 3])
    theta, X, y = _problem(model, n=60)
    curvature = make(model.n_params, model.layer_shapes)
    opt = NaturalGradient(curvature, kl_radius=1e-2, damping=1e-2, max_step=1.0)
    rng = np.random.default_rng(1)
    first = model.loss(theta, X, y)
    for _ in range(15):
        _, g = model.loss_and_grad(theta, X, y)
        if isinstance(curvature, KFACFisher):
            stats = model.kfac_stats(theta, X, y, "sampled", rng)
        else:
            stats = model.scores(theta, X, y, "sampled", rng)
        info = opt.step(theta, g, *stats)
        assert info.beta > 0
    assert model.loss(theta, X, y) < 0.8 * first
    assert opt.n_steps == 15 and opt.last_info is info


def test_max_step_caps_beta():
    model = SoftmaxRegression(5, 3)
    theta, X, y = _problem(model)
    opt = NaturalGradient(DenseFisher(model.n_params), kl_radius=10.0, damping=1e-3, max_step=0.5)
    _, g = model.loss_and_grad(theta, X, y)
    info = opt.step(theta, g, *model.scores(theta, X, y, "empirical"))
    assert info.clipped and info.beta == 0.5
    assert info.predicted_kl < 10.0


def _state(theta, curvature):
    return theta.copy(), curvature.snapshot()


def _assert_same(state, theta, curvature):
    """params and every array of the curvature's state exactly as before."""
    np.testing.assert_array_equal(theta, state[0])
    now = curvature.snapshot()
    assert now.keys() == state[1].keys()
    for key, value in state[1].items():
        if isinstance(value, list):
            for u, v in zip(value, now[key]):
                np.testing.assert_array_equal(u, v, err_msg=key)
        else:
            np.testing.assert_array_equal(value, now[key], err_msg=key)


@pytest.mark.parametrize("cls", [DenseFisher, LowRankFisher, DiagonalFisher])
def test_nan_batch_leaves_params_and_curvature_untouched(cls):
    model = SoftmaxRegression(5, 3)
    theta, X, y = _problem(model)
    curvature = cls(model.n_params)
    opt = NaturalGradient(curvature, kl_radius=1e-3)
    _, g = model.loss_and_grad(theta, X, y)
    J, _ = model.scores(theta, X, y)
    opt.step(theta, g, J)
    state = _state(theta, curvature)
    bad = J.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        opt.step(theta, g, bad)
    bad_g = g.copy()
    bad_g[0] = np.inf
    with pytest.raises(ValueError, match="grad"):
        opt.step(theta, bad_g, J)
    with pytest.raises(ValueError, match="weights"):
        opt.step(theta, g, J, weights=np.full(len(J), np.nan))
    _assert_same(state, theta, curvature)
    assert opt.n_steps == 1


def test_kfac_nan_batch_leaves_state_untouched():
    model = MLP([5, 4, 3])
    theta, X, y = _problem(model)
    kfac = KFACFisher(model.layer_shapes)
    opt = NaturalGradient(kfac)
    _, g = model.loss_and_grad(theta, X, y)
    acts, grads = model.kfac_stats(theta, X, y)
    opt.step(theta, g, acts, grads)
    state = _state(theta, kfac)
    grads[-1][0, 0] = np.nan
    with pytest.raises(ValueError):
        opt.step(theta, g, acts, grads)
    _assert_same(state, theta, kfac)


def test_not_positive_definite_retries_with_more_damping():
    model = SoftmaxRegression(5, 3)
    theta, X, y = _problem(model)
    _, g = model.loss_and_grad(theta, X, y)
    J, _ = model.scores(theta, X, y)
    J[:, 2] = 0.0  # F gets a zero row: not positive definite at λ = 0
    g[2] = 0.0

    strict = DenseFisher(model.n_params)
    opt = NaturalGradient(strict, damping=0.0, max_retries=0)
    state = _state(theta, strict)
    with pytest.raises(NotPositiveDefiniteError, match="retries"):
        opt.step(theta, g, J)
    _assert_same(state, theta, strict)  # the update was rolled back

    lenient = DenseFisher(model.n_params)
    opt = NaturalGradient(lenient, damping=0.0, max_retries=2, min_damping=1e-6)
    info = opt.step(theta, g, J)
    assert info.retries == 1 and info.damping == 1e-6
    assert opt.damping == 0.0  # raised for that step only
    assert lenient.n_updates == 1


class _NeedsDamping:
    """A DenseFisher whose solve fails below a damping threshold (an indefinite F)."""

    def __init__(self, n_params, threshold):
        self.inner = DenseFisher(n_params)
        self.threshold = threshold
        self.n_params = n_params
        self.decay = self.inner.decay
        self.tried = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def solve(self, g, damping):
        self.tried.append(damping)
        if damping < self.threshold:
            raise NotPositiveDefiniteError(f"pivot 1 failed at damping {damping}", pivot=1, damping=damping)
        return self.inner.solve(g, damping)


def test_damping_grows_tenfold_per_retry_and_failure_rolls_back():
    model = SoftmaxRegression(5, 3)
    theta, X, y = _problem(model)
    _, g = model.loss_and_grad(theta, X, y)
    J, _ = model.scores(theta, X, y)

    curv = _NeedsDamping(model.n_params, threshold=0.5)
    info = NaturalGradient(curv, damping=1e-3, max_retries=3).step(theta.copy(), g, J)
    assert info.retries == 3 and info.damping == pytest.approx(1.0)
    np.testing.assert_allclose(curv.tried, [1e-3, 1e-2, 1e-1, 1.0])

    curv = _NeedsDamping(model.n_params, threshold=0.5)
    curv.update(J)
    state = _state(theta, curv)
    with pytest.raises(NotPositiveDefiniteError, match="increase the damping"):
        NaturalGradient(curv, damping=1e-3, max_retries=2).step(theta, g, J)
    _assert_same(state, theta, curv)

    adaptive = NaturalGradient(_NeedsDamping(model.n_params, 0.5), damping=1e-3, adaptive_damping=True)
    adaptive.step(theta, g, J)
    assert adaptive.damping == pytest.approx(1.0)  # kept when adapting


def test_functional_step_matches_the_stateful_one():
    model = MLP([5, 6, 3])
    theta, X, y = _problem(model)
    _, g = model.loss_and_grad(theta, X, y)
    J, w = model.scores(theta, X, None, "exact")
    original = theta.copy()
    new, info = natural_gradient_step(theta, g, J, 1e-2, 1e-3, w)
    np.testing.assert_array_equal(theta, original)
    opt = NaturalGradient(DenseFisher(model.n_params), kl_radius=1e-3, damping=1e-2)
    info2 = opt.step(theta, g, J, weights=w)
    np.testing.assert_allclose(new, theta, rtol=1e-8, atol=1e-12)
    assert info.beta == pytest.approx(info2.beta) and info.quadratic == pytest.approx(info2.quadratic)
    low, _ = natural_gradient_step(original, g, J, 1e-2, 1e-3, w, method="lowrank", max_step=1.0)
    np.testing.assert_allclose(low, theta, rtol=1e-8, atol=1e-12)
    J0 = J.copy()
    J0[:, 0] = 0.0
    g0 = g.copy()
    g0[0] = 0.0
    _, info = natural_gradient_step(original, g0, J0, 0.0, 1e-3, w)
    assert info.retries == 1 and info.damping > 0
    with pytest.raises(ValueError):
        natural_gradient_step(original, g[:-1], J, 1e-2, 1e-3)


def test_adaptive_damping_follows_the_loss_ratio():
    model = SoftmaxRegression(5, 3)
    theta, X, y = _problem(model)
    opt = NaturalGradient(DenseFisher(model.n_params), kl_radius=1e-4, damping=1.0, adaptive_damping=True)
    loss, g = model.loss_and_grad(theta, X, y)
    info = opt.step(theta, g, *model.scores(theta, X, None, "exact"), loss=loss)
    assert info.predicted_change < 0
    rho = opt.report_loss(model.loss(theta, X, y))
    assert rho > 0.75 and opt.damping == pytest.approx(2 / 3)  # a small, well-modelled step
    loss, g = model.loss_and_grad(theta, X, y)
    opt.step(theta, g, loss=loss)
    assert opt.report_loss(loss + 1.0) < 0 and opt.damping == pytest.approx(1.0)  # the loss went up
    with pytest.raises(ValueError, match="loss"):
        opt.report_loss(0.0)

    fixed = NaturalGradient(DenseFisher(model.n_params), damping=1.0)
    fixed.step(theta, g, *model.scores(theta, X, y), loss=loss)
    fixed.report_loss(loss + 1.0)
    assert fixed.damping == 1.0  # off by default


def test_invalid_arguments():
    curv = DenseFisher(4)
    with pytest.raises(ValueError, match="kl_radius"):
        NaturalGradient(curv, kl_radius=-1.0)
    with pytest.raises(ValueError, match="damping"):
        NaturalGradient(curv, damping=np.nan)
    with pytest.raises(TypeError, match="curvature"):
        NaturalGradient(object())
    opt = NaturalGradient(curv)
    with pytest.raises(TypeError, match="params"):
        opt.step([0.0] * 4, np.zeros(4))
    with pytest.raises(ValueError, match="params"):
        opt.step(np.zeros(5), np.zeros(5))
    frozen = np.zeros(4)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.step(frozen, np.zeros(4))
    with pytest.raises(ValueError, match="weights"):
        opt.step(np.zeros(4), np.zeros(4), weights=np.ones(3))
    info = opt.step(np.zeros(4), np.zeros(4))  # a zero gradient is a zero step
    assert info.beta == 0.0 and info.step_norm == 0.0


def test_adaptive_kl_radius_shrinks_after_a_bad_step_and_grows_after_good_ones():
    model = SoftmaxRegression(5, 3)
    theta, X, y = _problem(model)
    opt = NaturalGradient(DenseFisher(model.n_params), kl_radius=1e-4, damping=1e-3, adaptive_kl_radius=True,
                          max_kl_radius=3e-4)
    loss, g = model.loss_and_grad(theta, X, y)
    opt.step(theta, g, *model.scores(theta, X, None, "exact"), loss=loss)
    assert opt.report_loss(model.loss(theta, X, y)) > 0.75
    assert opt.kl_radius == pytest.approx(2e-4) and opt.damping == 1e-3  # λ adapts only on request
    loss, g = model.loss_and_grad(theta, X, y)
    opt.step(theta, g, loss=loss)
    opt.report_loss(model.loss(theta, X, y))
    assert opt.kl_radius == pytest.approx(3e-4)  # capped
    loss, g = model.loss_and_grad(theta, X, y)
    opt.step(theta, g, loss=loss)
    opt.report_loss(loss + 1.0)
    assert opt.kl_radius == pytest.approx(1.5e-4)
    # A failed step forgets the pending report.
    opt.step(theta, g, loss=loss)
    with pytest.raises(ValueError):
        opt.step(theta, g * np.nan, loss=loss)
    with pytest.raises(ValueError, match="report_loss"):
        opt.report_loss(loss)
