"""ngdfast.models: gradients, score rows and K-FAC statistics."""

import numpy as np
import pytest

from ngdfast.models import MLP, SoftmaxRegression

MODELS = [
    pytest.param(lambda: SoftmaxRegression(5, 3), id="softmax"),
    pytest.param(lambda: MLP([5, 7, 3], "tanh"), id="mlp-tanh"),
    pytest.param(lambda: MLP([5, 6, 4, 3], "relu"), id="mlp-relu-2hidden"),
]


def _data(model, n=11, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, model.n_features))
    y = rng.integers(0, model.n_classes, n)
    theta = 0.7 * rng.standard_normal(model.n_params)
    return theta, X, y


@pytest.mark.parametrize("make", MODELS)
def test_gradient_matches_finite_differences(make):
    model = make()
    theta, X, y = _data(model)
    loss, grad = model.loss_and_grad(theta, X, y)
    assert loss == pytest.approx(model.loss(theta, X, y))
    h = 1e-6
    fd = np.empty_like(theta)
    for j in range(len(theta)):
        e = np.zeros_like(theta)
        e[j] = h
        fd[j] = (model.loss(theta + e, X, y) - model.loss(theta - e, X, y)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("make", MODELS)
def test_empirical_scores_average_to_minus_gradient(make):
    model = make()
    theta, X, y = _data(model)
    J, w = model.scores(theta, X, y, "empirical")
    assert w is None and J.shape == (len(X), model.n_params)
    np.testing.assert_allclose(J.mean(axis=0), -model.loss_and_grad(theta, X, y)[1], atol=1e-12)


@pytest.mark.parametrize("make", MODELS)
def test_exact_scores_have_zero_expectation(make):
    model = make()
    theta, X, _ = _data(model)
    C = model.n_classes
    J, w = model.scores(theta, X, None, "exact")
    assert J.shape == (len(X) * C, model.n_params)
    np.testing.assert_allclose(w.reshape(-1, C), model.predict_proba(theta, X))
    # E_{k ~ p_i}[∇ log p(k | x_i)] = 0 for every sample.
    expectation = np.einsum("nk,nkp->np", w.reshape(-1, C), J.reshape(-1, C, model.n_params))
    np.testing.assert_allclose(expectation, 0.0, atol=1e-12)


def test_exact_fisher_is_the_softmax_formula():
    model = SoftmaxRegression(4, 3)
    theta, X, _ = _data(model, n=6)
    J, w = model.scores(theta, X, None, "exact")
    F = (J * w[:, None]).T @ J / w.sum()
    p = model.predict_proba(theta, X)
    Xb = np.hstack([X, np.ones((len(X), 1))])
    expected = sum(np.kron(np.diag(pi) - np.outer(pi, pi), np.outer(xi, xi)) for pi, xi in zip(p, Xb))
    np.testing.assert_allclose(F, expected / len(X), atol=1e-12)


@pytest.mark.parametrize("make", MODELS[:2])
def test_sampled_fisher_converges_to_exact(make):
    model = make()
    theta, X, _ = _data(model, n=8)
    J, w = model.scores(theta, X, None, "exact")
    exact = (J * w[:, None]).T @ J / w.sum()
    rng = np.random.default_rng(1)
    errors = []
    for reps in (10, 3000):
        Xr = np.tile(X, (reps, 1))
        Js, ws = model.scores(theta, Xr, None, "sampled", rng)
        assert ws is None
        errors.append(np.linalg.norm(Js.T @ Js / len(Js) - exact) / np.linalg.norm(exact))
    assert errors[1] < 0.05
    assert errors[1] < errors[0] / 5  # Monte-Carlo error falls like 1/sqrt(samples)


def test_sampled_labels_follow_the_model_and_ignore_y():
    model = SoftmaxRegression(3, 4)
    theta, X, y = _data(model, n=5)
    a, _ = model.scores(theta, X, y, "sampled", rng=3)
    b, _ = model.scores(theta, X, None, "sampled", rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="rng"):
        model.scores(theta, X, None, "sampled")


@pytest.mark.parametrize("make", MODELS)
@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_kfac_stats_rebuild_the_score_rows(make, kind):
    model = make()
    theta, X, y = _data(model, n=7)
    C = model.n_classes
    J, w = model.scores(theta, X, y, kind)
    acts, grads = model.kfac_stats(theta, X, y, kind)
    assert [a.shape[1] for a in acts] == [s[1] for s in model.layer_shapes]
    assert [g.shape[1] for g in grads] == [s[0] for s in model.layer_shapes]
    offset = 0
    for a, g, (out, inp) in zip(acts, grads, model.layer_shapes):
        np.testing.assert_array_equal(a[:, -1], 1.0)
        if kind == "exact":
            g = g / np.sqrt(C * w)[:, None]
            a = np.repeat(a, C, axis=0)
        block = (g[:, :, None] * a[:, None, :]).reshape(len(g), -1)
        np.testing.assert_allclose(J[:, offset : offset + out * inp], block, atol=1e-12)
        offset += out * inp
    assert offset == model.n_params


def test_kfac_exact_output_factor_is_weighted_average():
    model = MLP([4, 5, 3])
    theta, X, _ = _data(model, n=6)
    _, grads = model.kfac_stats(theta, X, None, "exact")
    p = model.predict_proba(theta, X)
    delta = (np.eye(3)[None] - p[:, None, :]).reshape(-1, 3)
    expected = (delta * p.reshape(-1, 1)).T @ delta / len(X)
    np.testing.assert_allclose(grads[-1].T @ grads[-1] / len(grads[-1]), expected, atol=1e-12)


def test_layers_are_views_and_flatten_inverts():
    model = MLP([3, 4, 2])
    theta = model.init(np.random.default_rng(0))
    Ws = model.layers(theta)
    assert [W.shape for W in Ws] == [(4, 4), (2, 5)]
    Ws[1][0, -1] = 42.0  # the bias of the first output unit
    assert theta[4 * 4 + 4] == 42.0
    np.testing.assert_array_equal(model.flatten(Ws), theta)
    np.testing.assert_array_equal(Ws[0][:, -1], 0.0)  # biases start at zero
    assert np.all(SoftmaxRegression(3, 2).init() == 0)


def test_predict_proba_and_dtypes():
    model = MLP([3, 4, 2], "relu")
    theta, X, y = _data(model)
    p = model.predict_proba(theta, X)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    p32 = model.predict_proba(theta.astype(np.float32), X.astype(np.float32))
    assert p32.dtype == np.float32
    np.testing.assert_allclose(p32, p, rtol=1e-4, atol=1e-6)
    loss, grad = model.loss_and_grad(theta.astype(np.float32), X, y)
    assert grad.dtype == np.float32
    # Huge logits must not overflow.
    assert np.isfinite(model.loss(theta * 1e4, X, y))


def test_invalid_inputs():
    model = MLP([3, 4, 2])
    theta, X, y = _data(model)
    with pytest.raises(ValueError, match="theta"):
        model.loss_and_grad(theta[:-1], X, y)
    with pytest.raises(ValueError, match="X"):
        model.loss_and_grad(theta, X[:, :2], y)
    with pytest.raises(ValueError, match="empty"):
        model.loss_and_grad(theta, X[:0], y[:0])
    with pytest.raises(ValueError, match="y"):
        model.loss_and_grad(theta, X, y[:-1])
    with pytest.raises(ValueError, match="labels"):
        model.loss_and_grad(theta, X, y + 5)
    with pytest.raises(ValueError, match="kind"):
        model.scores(theta, X, y, "fisher")
    with pytest.raises(ValueError, match="y"):
        model.scores(theta, X, None, "empirical")
    with pytest.raises(TypeError):
        model.predict_proba(theta, X.astype(complex))
    with pytest.raises(ValueError):
        MLP([3])
    with pytest.raises(ValueError):
        MLP([3, 4, 2], "sigmoid")
