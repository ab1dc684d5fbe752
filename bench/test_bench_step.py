r"""One full natural-gradient step for ``MLP([64, 128, 10])`` at N=256 (P=9610).

A step is everything a trainer pays per batch: loss gradient, statistics
(score rows or K-FAC activations/output gradients), curvature update, damped
solve, KL step size :math:`\beta = \sqrt{2\epsilon / g^T\tilde n}` and the
update :math:`\theta \leftarrow \theta - \beta\tilde n`. Variants:

- ``ngdfast-auto``: ``natural_gradient_step`` (this batch's Fisher; the cost
  model picks Woodbury here since N << P);
- ``ngdfast-LowRankFisher`` / ``ngdfast-KFACFisher``: ``NaturalGradient``
  with that curvature, including its per-step snapshot;
- ``numpy-woodbury``: the same step written by hand in NumPy;
- ``numpy-kfac``: K-FAC by hand (EMA factors, SciPy Cholesky per layer);
- ``ngdfast-dense`` / ``scipy-dense-cholesky``: the P x P Fisher and its
  Cholesky (740 MB, seconds per step: only with ``--bench-size medium`` or
  larger).

Every round starts from the same θ0 and batch, so the batch Fisher and the
K-FAC running factors (which start at the batch factors: a fixed point of the
EMA) are the same each time, and the step of the last round is checked against
a float64 NumPy step.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

SIZES = [64, 128, 10]
N = 256
DAMPING = 1e-3
KL_RADIUS = 1e-3
DECAY = 0.95
TOLERANCE = 1e-9  # relative error of the step β ñ, float64 (measured ~1e-13)

BATCH_VARIANTS = ("ngdfast-auto", "ngdfast-LowRankFisher", "numpy-woodbury", "ngdfast-dense", "scipy-dense-cholesky")
KFAC_VARIANTS = ("ngdfast-KFACFisher", "numpy-kfac")
DENSE_VARIANTS = ("ngdfast-dense", "scipy-dense-cholesky")


@pytest.fixture(scope="module")
def api(request):
    """The parts of ngdfast a step uses; skip with the reason when one is missing."""
    ngdfast = request.getfixturevalue("ngdfast")
    missing = [name for name in ("models", "NaturalGradient", "LowRankFisher", "KFACFisher", "natural_gradient_step")
               if not hasattr(ngdfast, name)]
    if missing:
        pytest.skip(f"ngdfast has no {', '.join(missing)} yet (models/curvature/optimizer not written)")
    from ngdfast.bench import peers

    return ngdfast, peers


@functools.lru_cache(maxsize=1)
def problem(ngdfast):
    model = ngdfast.models.MLP(SIZES)
    rng = np.random.default_rng(20)
    theta0 = model.init(rng)
    X = rng.standard_normal((N, SIZES[0]))
    y = rng.integers(0, SIZES[-1], N)
    return model, theta0, X, y


def kl_update(theta, g, nat):
    """θ ← θ − β ñ with β = sqrt(2ε / gᵀñ)."""
    beta = math.sqrt(2.0 * KL_RADIUS / float(g @ nat))
    theta -= beta * nat
    return theta


def numpy_kfac_step(model, X, y, peers, solve):
    """K-FAC by hand: EMA factors per layer (the first batch replaces them)."""
    factors = {}

    def step(theta):
        _, g = model.loss_and_grad(theta, X, y)
        acts, grads = model.kfac_stats(theta, X, y, "empirical")
        parts = []
        for l, (G, a, d) in enumerate(zip(model.layers(g), acts, grads)):
            A, S = a.T @ a / a.shape[0], d.T @ d / d.shape[0]
            if l in factors:
                A0, S0 = factors[l]
                A, S = DECAY * A0 + (1.0 - DECAY) * A, DECAY * S0 + (1.0 - DECAY) * S
            factors[l] = (A, S)
            parts.append(peers.numpy_kfac_precondition(G, A, S, DAMPING, solve).ravel())
        return kl_update(theta, g, np.concatenate(parts))

    return step


def make_step(variant, ngdfast, peers, model, X, y):
    """One training step as ``step(theta) -> theta`` (θ updated in place)."""
    P = model.n_params
    if variant == "ngdfast-auto":
        def step(theta):
            _, g = model.loss_and_grad(theta, X, y)
            J, w = model.scores(theta, X, y, "empirical")
            theta[...], _ = ngdfast.natural_gradient_step(theta, g, J, DAMPING, KL_RADIUS, w)
            return theta
    elif variant == "ngdfast-dense":
        def step(theta):
            _, g = model.loss_and_grad(theta, X, y)
            J, w = model.scores(theta, X, y, "empirical")
            theta[...], _ = ngdfast.natural_gradient_step(theta, g, J, DAMPING, KL_RADIUS, w, method="dense")
            return theta
    elif variant in ("ngdfast-LowRankFisher", "ngdfast-KFACFisher"):
        if variant == "ngdfast-LowRankFisher":
            # max_rows = N: the window is this batch, so the step equals the batch-Fisher step.
            curvature = ngdfast.LowRankFisher(P, max_rows=N, decay=DECAY)
        else:
            curvature = ngdfast.KFACFisher(model.layer_shapes, decay=DECAY)
        opt = ngdfast.NaturalGradient(curvature, kl_radius=KL_RADIUS, damping=DAMPING)

        def step(theta):
            _, g = model.loss_and_grad(theta, X, y)
            if variant == "ngdfast-KFACFisher":
                stats = model.kfac_stats(theta, X, y, "empirical")
            else:
                stats = model.scores(theta, X, y, "empirical")
            opt.step(theta, g, *stats)
            return theta
    elif variant == "numpy-woodbury":
        def step(theta):
            _, g = model.loss_and_grad(theta, X, y)
            J, _ = model.scores(theta, X, y, "empirical")
            return kl_update(theta, g, peers.numpy_woodbury(J, g, DAMPING))
    elif variant == "scipy-dense-cholesky":
        eye = np.eye(P)

        def step(theta):
            _, g = model.loss_and_grad(theta, X, y)
            J, _ = model.scores(theta, X, y, "empirical")
            F = J.T @ J
            F /= J.shape[0]
            F += DAMPING * eye
            return kl_update(theta, g, peers.scipy_cho_solve(F, g))
    elif variant == "numpy-kfac":
        step = numpy_kfac_step(model, X, y, peers, peers.scipy_cho_solve)
    else:
        raise ValueError(variant)
    return step


@functools.lru_cache(maxsize=2)
def expected_step(ngdfast, peers, kind):
    """θ0 − θ1 of the float64 NumPy step: batch Fisher by Woodbury, or K-FAC."""
    model, theta0, X, y = problem(ngdfast)
    if kind == "batch":
        step = make_step("numpy-woodbury", ngdfast, peers, model, X, y)
    else:
        step = numpy_kfac_step(model, X, y, peers, np.linalg.solve)
    return theta0 - step(theta0.copy())


@pytest.mark.parametrize("variant", BATCH_VARIANTS + KFAC_VARIANTS)
def test_ngd_step(variant, api, benchmark, request, bench_size):
    ngdfast, peers = api
    if variant in DENSE_VARIANTS and bench_size == "small":
        pytest.skip("the dense step at P=9610 forms a 740 MB Fisher and takes seconds: --bench-size medium")
    if variant in ("scipy-dense-cholesky", "numpy-kfac"):
        request.getfixturevalue("scipy_linalg")
    model, theta0, X, y = problem(ngdfast)
    step = make_step(variant, ngdfast, peers, model, X, y)

    benchmark.group = f"ngd-step MLP{SIZES} N={N} P={model.n_params} float64"
    benchmark.extra_info["n_params"] = model.n_params
    dense = variant in DENSE_VARIANTS
    theta1 = benchmark.pedantic(
        step, setup=lambda: ((theta0.copy(),), {}),
        rounds=3 if dense else 10, warmup_rounds=0 if dense else 1,
    )

    delta = theta0 - theta1
    expected = expected_step(ngdfast, peers, "kfac" if variant in KFAC_VARIANTS else "batch")
    err = np.linalg.norm(delta - expected) / np.linalg.norm(expected)
    assert err <= TOLERANCE, f"{variant}: step differs from the NumPy step by {err:.2e} (relative)"
