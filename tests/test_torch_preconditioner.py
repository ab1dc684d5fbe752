"""ngdfast.torch.Preconditioner in an ordinary torch loop: the step, the KL radius, hooks,
accumulation, dtypes, intervals, resume, and bad input."""

import copy
import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import ngdfast.torch as ngt  # noqa: E402


def cnn(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.Tanh(),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 10),
    ).to(dtype)


def mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 4)).to(dtype)


def data(n=32, shape=(6,), classes=4, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def state(model):
    return [p.detach().clone() for p in model.parameters()]


def one_step(model, precond, x, y, **kwargs):
    for p in model.parameters():
        p.grad = None
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return precond.step(**kwargs), loss


def test_sgd_lr1_takes_exactly_theta_minus_beta_nat():
    model = mlp()
    x, y = data()
    lam, eps = 1e-2, 1e-3
    nat = ngt.natural_gradient(model, x, y, curvature="kfac", fisher="exact", damping=lam)
    before = state(model)
    precond = ngt.Preconditioner(model, fisher="exact", kl_radius=eps, damping=lam)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    info, _ = one_step(model, precond, x, y)
    g = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    q = math.fsum(float((gi * ni).sum()) for gi, ni in zip(g, nat))
    assert info.quadratic == pytest.approx(q, rel=1e-12)
    assert info.beta == pytest.approx(math.sqrt(2 * eps / q), rel=1e-12)
    assert info.predicted_kl == pytest.approx(eps, rel=1e-12)
    grads = [p.grad.clone() for p in model.parameters()]
    for gr, n in zip(grads, nat):
        torch.testing.assert_close(gr, info.beta * n, rtol=1e-12, atol=0)
    opt.step()
    for p, b, gr in zip(model.parameters(), before, grads):
        assert torch.equal(p.detach(), b - gr)  # SGD(lr=1): θ − β ñ exactly


def test_max_step_caps_beta():
    model = mlp()
    x, y = data()
    precond = ngt.Preconditioner(model, kl_radius=10.0, max_step=0.5)
    info, _ = one_step(model, precond, x, y)
    assert info.beta == 0.5 and info.clipped
    assert info.predicted_kl == pytest.approx(0.125 * info.quadratic)


def mean_kl(p_old_logits, p_new_logits):
    lp, lq = F.log_softmax(p_old_logits, 1), F.log_softmax(p_new_logits, 1)
    return float((lp.exp() * (lp - lq)).sum(1).mean())


def quadratic_kl(model, x, step):
    """½ mean_i (J_i s)ᵀ H_i (J_i s): the KL the exact Fisher predicts for the step θ → θ − s."""
    params = list(model.parameters())
    out = model(x)
    u = torch.zeros_like(out, requires_grad=True)  # J s by the double-vjp trick
    vjp = torch.autograd.grad(out, params, u, create_graph=True)
    (dz,) = torch.autograd.grad(sum((v * -s).sum() for v, s in zip(vjp, step)), u)
    out = out.detach()
    p = torch.softmax(out, 1)
    return float(0.5 * ((p * dz * dz).sum(1) - (p * dz).sum(1) ** 2).mean())


@pytest.mark.parametrize("curvature", ["exact", "kfac"])
def test_one_step_moves_the_output_distribution_by_the_kl_radius(curvature):
    model = mlp()
    x, y = data(n=64)
    eps = 1e-7  # small: the KL is quadratic in the step there
    precond = ngt.Preconditioner(model, curvature=curvature, fisher="exact", kl_radius=eps, damping=1e-5)
    with torch.no_grad():
        before = model(x)
    info, _ = one_step(model, precond, x, y, inputs=x, targets=y)
    step = [p.grad.clone() for p in model.parameters()]
    predicted = quadratic_kl(model, x, step)
    with torch.no_grad():
        for p in model.parameters():
            p -= p.grad
        after = model(x)
    kl = mean_kl(before, after)
    # the exact Fisher's quadratic model predicts the actual KL of the step
    assert kl == pytest.approx(predicted, rel=0.1)
    assert info.predicted_kl == pytest.approx(eps, rel=1e-12)
    if curvature == "exact":
        assert kl == pytest.approx(eps, rel=0.15)  # the step has the KL radius asked for (λ takes ~6%)
    else:
        # K-FAC sizes the step with its own F ≈ S ⊗ A: the KL is ε up to that approximation
        assert eps / 5 < kl < 5 * eps


def test_training_reduces_the_loss_cnn():
    model = cnn()
    x, y = data(n=48, shape=(1, 8, 8), classes=10)
    precond = ngt.Preconditioner(model, kl_radius=1e-2, damping=1e-2, max_step=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        precond.step()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_hooks_ignore_eval_mode_and_no_grad():
    model = mlp()
    x, y = data()
    x2, _ = data(seed=9)
    ref_model = copy.deepcopy(model)
    ref = ngt.Preconditioner(ref_model, factor_interval=1, inverse_interval=1, fisher="exact")
    one_step(ref_model, ref, x, y)

    precond = ngt.Preconditioner(model, factor_interval=1, inverse_interval=1, fisher="exact")
    with torch.no_grad():
        model(x2)  # ignored: no grad
    model.eval()
    model(x2).sum()  # ignored: eval mode (grad enabled)
    model.train()
    model[0](x2)  # ignored: a layer called outside the model's forward
    one_step(model, precond, x, y)
    for (A, S), (A2, S2) in zip(ref.factors.values(), precond.factors.values()):
        assert torch.equal(A, A2) and torch.equal(S, S2)

    # training in eval mode records nothing: a clear error, and nothing changes
    model.eval()
    before = precond.factors
    params = state(model)
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="no statistics"):
        precond.step()
    assert all(torch.equal(a, b) for a, b in zip(grads, [p.grad for p in model.parameters()]))
    assert all(torch.equal(a, b) for a, b in zip(params, state(model)))
    for k, (A, S) in precond.factors.items():
        assert torch.equal(A, before[k][0]) and torch.equal(S, before[k][1])


@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_gradient_accumulation_equals_the_whole_batch(kind):
    model = cnn()
    x, y = data(n=24, shape=(1, 8, 8), classes=10)
    whole_model = copy.deepcopy(model)
    whole = ngt.Preconditioner(whole_model, fisher=kind)
    info_whole, _ = one_step(whole_model, whole, x, y)

    precond = ngt.Preconditioner(model, fisher=kind)
    for part in (slice(0, 8), slice(8, 24)):  # unequal micro-batches, loss weighted by their share
        (F.cross_entropy(model(x[part]), y[part]) * (part.stop - part.start) / 24).backward()
    info = precond.step()
    assert info.n_samples == info_whole.n_samples == 24
    for (A, S), (A2, S2) in zip(whole.factors.values(), precond.factors.values()):
        torch.testing.assert_close(A, A2, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(S, S2, rtol=1e-10, atol=1e-15)
    for p, q in zip(whole_model.parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("curvature", ["kfac", "diagonal"])
def test_low_precision_models_keep_float32_statistics(dtype, curvature):
    model = cnn(dtype)
    x, y = data(n=16, shape=(1, 8, 8), classes=10, dtype=dtype)
    precond = ngt.Preconditioner(model, curvature=curvature, kl_radius=1e-2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x).float(), y).backward()
        info = precond.step()
        opt.step()
    assert math.isfinite(info.beta) and info.beta > 0
    assert all(p.grad.dtype == dtype and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    for A, S in precond.factors.values():
        assert A.dtype == S.dtype == torch.float32
    for ds in precond._D.values():
        assert all(d.dtype == torch.float32 for d in ds)


def run(model, precond, batches, opt):
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        precond.step()
        opt.step()


@pytest.mark.parametrize("curvature", ["kfac", "diagonal"])
def test_state_dict_resumes_bit_for_bit(curvature):
    batches = [data(n=16, shape=(1, 8, 8), classes=10, seed=s) for s in range(6)]
    settings = dict(curvature=curvature, kl_radius=1e-2, decay=0.9, inverse_interval=2, adaptive_damping=True)
    model = cnn()
    precond = ngt.Preconditioner(model, generator=torch.Generator().manual_seed(1), **settings)
    run(model, precond, batches, torch.optim.SGD(model.parameters(), lr=1.0))

    model_a = cnn()
    precond_a = ngt.Preconditioner(model_a, generator=torch.Generator().manual_seed(1), **settings)
    run(model_a, precond_a, batches[:3], torch.optim.SGD(model_a.parameters(), lr=1.0))
    saved_model, saved = copy.deepcopy(model_a.state_dict()), copy.deepcopy(precond_a.state_dict())
    model_b = cnn(seed=5)
    model_b.load_state_dict(saved_model)
    torch.manual_seed(123)  # the resumed sampler must not depend on the global RNG
    precond_b = ngt.Preconditioner(model_b, **settings)
    precond_b.load_state_dict(saved)
    run(model_b, precond_b, batches[3:], torch.optim.SGD(model_b.parameters(), lr=1.0))
    for p, q in zip(model.parameters(), model_b.parameters()):
        assert torch.equal(p, q)
    assert precond_b.n_steps == 6


def test_state_dict_of_other_settings_is_refused():
    model = mlp()
    sd = ngt.Preconditioner(model, fisher="exact").state_dict()
    with pytest.raises(ValueError, match="saved for"):
        ngt.Preconditioner(model, fisher="empirical").load_state_dict(sd)


def test_factor_and_inverse_intervals():
    model = mlp()
    precond = ngt.Preconditioner(model, fisher="exact", decay=0.5, factor_interval=3, inverse_interval=2)
    infos, saved = [], []
    for s in range(6):
        x, y = data(seed=s)
        for p in model.parameters():
            p.grad = None
        F.cross_entropy(model(x), y).backward()
        saved.append(precond.state_dict())  # before the step
        infos.append(precond.step())
        # hooks idle on the steps that do not update: nothing recorded
        assert precond._capture.batch.n == 0
    assert [i.factors_updated for i in infos] == [True, False, False, True, False, False]
    assert [i.inverses_updated for i in infos] == [True, False, True, False, True, False]
    assert [i.n_samples for i in infos] == [32, 0, 0, 32, 0, 0]
    # factors changed only on updates
    assert torch.equal(saved[1]["A"]["0"], saved[3]["A"]["0"])
    assert not torch.equal(saved[3]["A"]["0"], saved[4]["A"]["0"])


def test_stale_inverses_precondition_between_refreshes():
    model = mlp()
    precond = ngt.Preconditioner(model, factor_interval=1, fisher="exact", inverse_interval=2)
    x0, y0 = data(seed=0)
    one_step(model, precond, x0, y0)
    inverses = precond.state_dict()["inverses"]
    x1, y1 = data(seed=1)
    for p in model.parameters():
        p.grad = None
    F.cross_entropy(model(x1), y1).backward()
    lin = model[2]
    G = torch.cat([lin.weight.grad, lin.bias.grad[:, None]], 1)
    info = precond.step()
    assert info.factors_updated and not info.inverses_updated
    Ai, Si = inverses["2"]
    expected = info.beta * (Si @ G @ Ai)
    torch.testing.assert_close(torch.cat([lin.weight.grad, lin.bias.grad[:, None]], 1), expected, rtol=1e-12, atol=0)


def test_adaptive_damping_follows_report_loss():
    model = mlp()
    x, y = data()
    precond = ngt.Preconditioner(model, kl_radius=1e-3, damping=1e-2, adaptive_damping=True)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    info, loss = one_step(model, precond, x, y, loss=None)
    with pytest.raises(ValueError, match="report_loss"):
        precond.report_loss(1.0)
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    info = precond.step(loss=loss)
    opt.step()
    with torch.no_grad():
        new = F.cross_entropy(model(x), y)
    rho = precond.report_loss(new)
    assert rho == pytest.approx((float(new) - float(loss.detach())) / info.predicted_change)
    assert precond.damping == pytest.approx(1e-2 * (2 / 3 if rho > 0.75 else 1.5 if rho < 0.25 else 1.0))


def test_exact_curvature_needs_the_batch():
    model = mlp()
    x, y = data()
    precond = ngt.Preconditioner(model, curvature="exact", fisher="empirical")
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="needs step\\(inputs, targets\\)"):
        precond.step()
    F.cross_entropy(model(x), y).backward()
    info = precond.step(x, y)
    assert info.beta > 0


# ------------------------------------------------------------------------------ bad input
def snapshot(model, precond):
    return state(model), [None if p.grad is None else p.grad.clone() for p in model.parameters()], precond.factors


def assert_unchanged(model, precond, snap):
    params, grads, factors = snap
    assert all(torch.equal(a, b) for a, b in zip(params, state(model)))
    for g, p in zip(grads, model.parameters()):
        assert (g is None) == (p.grad is None)
        if g is not None:
            torch.testing.assert_close(p.grad, g, rtol=0, atol=0, equal_nan=True)
    now = precond.factors
    assert now.keys() == factors.keys()
    for k in now:
        assert torch.equal(now[k][0], factors[k][0]) and torch.equal(now[k][1], factors[k][1])


def test_non_finite_gradients_are_rejected():
    model = mlp()
    x, y = data()
    precond = ngt.Preconditioner(model)
    one_step(model, precond, x, y)
    for p in model.parameters():
        p.grad = None
    F.cross_entropy(model(x), y).backward()
    model[0].weight.grad[0, 0] = float("nan")
    snap = snapshot(model, precond)
    with pytest.raises(ValueError, match="gradient of '0.weight' contains NaN"):
        precond.step()
    assert_unchanged(model, precond, snap)
    assert precond.n_steps == 1


def test_non_finite_statistics_are_rejected():
    model = mlp()
    x, y = data()
    precond = ngt.Preconditioner(model, factor_interval=1, inverse_interval=1, fisher="empirical")
    one_step(model, precond, x, y)
    for p in model.parameters():
        p.grad = None
    xb = x.clone()
    xb[0, 0] = float("inf")
    out = model(xb)
    F.cross_entropy(torch.nan_to_num(out), y).backward()
    for p in model.parameters():
        p.grad = torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
    snap = snapshot(model, precond)
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        precond.step()
    assert_unchanged(model, precond, snap)


def test_step_without_backward():
    model = mlp()
    x, y = data()
    precond = ngt.Preconditioner(model)
    model(x)
    with pytest.raises(RuntimeError, match="no parameter has a gradient; call loss.backward"):
        precond.step()
    one_step(model, precond, x, y)
    snap = snapshot(model, precond)
    with pytest.raises(RuntimeError, match="no backward pass"):
        precond.step()  # the same gradient twice
    assert_unchanged(model, precond, snap)


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(6, 4)
        self.unused = nn.Linear(6, 4)
        self.norm_unused = nn.LayerNorm(4)

    def forward(self, x):
        return self.used(x)


def test_parameters_without_gradients_are_left_alone():
    torch.manual_seed(0)
    model = WithUnused().double()
    x, y = data()
    precond = ngt.Preconditioner(model, fisher="exact")
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(2):
        info, _ = one_step(model, precond, x, y)
        opt.step()
    assert model.unused.weight.grad is None and model.norm_unused.weight.grad is None
    assert math.isfinite(info.beta) and info.beta > 0
    nat = ngt.natural_gradient(model, x, y, fisher="exact")
    assert all(bool((t == 0).all()) for t in nat[2:])


def test_mismatched_targets_and_unsupported_loss():
    model = mlp()
    x, y = data()
    with pytest.raises(ValueError, match="targets must be class indices of shape \\(32,\\)"):
        ngt.natural_gradient(model, x, y[:5])
    with pytest.raises(ValueError, match="targets must lie in \\[0, 4\\)"):
        ngt.natural_gradient(model, x, y + 10)
    with pytest.raises(TypeError, match="integer class indices"):
        ngt.natural_gradient(model, x, y.double())
    with pytest.raises(ValueError, match="mse targets must have the output's shape"):
        ngt.natural_gradient(model, x, y, loss="mse")
    with pytest.raises(ValueError, match="loss must be one of"):
        ngt.natural_gradient(model, x, y, loss="hinge")
    with pytest.raises(ValueError, match="loss must be one of"):
        ngt.Preconditioner(model, loss="nll")
    precond = ngt.Preconditioner(model, curvature="exact", fisher="empirical")
    F.cross_entropy(model(x), y).backward()
    snap = snapshot(model, precond)
    with pytest.raises(ValueError, match="targets must be class indices"):
        precond.step(x, y[:3])
    assert_unchanged(model, precond, snap)


@pytest.mark.parametrize("kwargs,match", [
    (dict(curvature="full"), "curvature must be one of"),
    (dict(fisher="true"), "fisher must be one of"),
    (dict(kl_radius=-1.0), "kl_radius must be a finite number > 0"),
    (dict(kl_radius=0.0), "kl_radius must be a finite number > 0"),
    (dict(damping=float("nan")), "damping must be a finite number >= 0"),
    (dict(max_step=0.0), "max_step must be > 0"),
    (dict(decay=1.0), "decay must be in \\[0, 1\\) for a running estimate"),
    (dict(factor_interval=0), "factor_interval must be an integer >= 1"),
    (dict(inverse_interval=1.5), "inverse_interval must be an integer >= 1"),
    (dict(max_retries=-1), "max_retries must be an integer >= 0"),
    (dict(fallback="adam"), "fallback must be one of"),
    (dict(generator=3), "generator must be a torch.Generator"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ngt.Preconditioner(mlp(), **kwargs)


def test_model_output_must_be_a_matrix():
    model = nn.Sequential(nn.Linear(6, 4), nn.Flatten(0)).double()
    x, _ = data()
    ngt.Preconditioner(model)
    with pytest.raises(ValueError, match="must have shape \\(N, C\\)"):
        model(x)


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(x), x


def test_model_output_must_be_a_tensor():
    model = TupleOut().double()
    x, _ = data()
    ngt.Preconditioner(model)
    with pytest.raises(TypeError, match="the model must return a tensor"):
        model(x)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_ngd_optimizer_is_preconditioner_plus_sgd(momentum):
    """``NGD(momentum=μ)`` is the preconditioner and ``SGD(lr=1 − μ, momentum=μ)``, exactly."""
    x, y = data()
    model_a, model_b = mlp(), mlp()
    opt_a = ngt.NGD(model_a, fisher="exact", kl_radius=1e-2, momentum=momentum)
    pre_b = ngt.Preconditioner(model_b, fisher="exact", kl_radius=1e-2)
    sgd_b = torch.optim.SGD(model_b.parameters(), lr=1.0 - momentum, momentum=momentum)
    for _ in range(3):
        opt_a.zero_grad()
        F.cross_entropy(model_a(x), y).backward()
        opt_a.step()
        sgd_b.zero_grad()
        F.cross_entropy(model_b(x), y).backward()
        pre_b.step()
        sgd_b.step()
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)
    sd = opt_a.state_dict()
    opt_c = ngt.NGD(mlp(), fisher="exact", kl_radius=1e-2, momentum=momentum)
    opt_c.load_state_dict(sd)
    assert opt_c.preconditioner.n_steps == 3
    if momentum:  # the running average resumes with the rest
        assert all(torch.equal(opt_c.state[p]["momentum_buffer"], opt_a.state[q]["momentum_buffer"])
                   for p, q in zip(opt_c.param_groups[0]["params"], opt_a.param_groups[0]["params"]))


@pytest.mark.parametrize("momentum", [-0.1, 1.0, "0.9"])
def test_ngd_refuses_a_bad_momentum(momentum):
    with pytest.raises((TypeError, ValueError), match="momentum"):
        ngt.NGD(mlp(), momentum=momentum)


def test_sampled_kfac_factor_estimates_the_exact_one():
    """The hooks' sampled labels: S of the output layer within the Monte-Carlo error of the exact S.

    For the categorical output δ = e_y − p, ‖δδᵀ‖_F = ‖δ‖² ≤ 2, so the mean of M draws is within
    2/√M of its expectation in root-mean-square Frobenius norm; 5× that fails with probability < 4 %
    by Chebyshev, and the generator is seeded.
    """
    x, y = data(n=64)
    reps = 1000
    xr, yr = x.repeat(reps, 1), y.repeat(reps)
    exact_model, sampled_model = mlp(), mlp()
    exact = ngt.Preconditioner(exact_model, fisher="exact")
    one_step(exact_model, exact, xr, yr)
    sampled = ngt.Preconditioner(sampled_model, fisher="sampled", generator=torch.Generator().manual_seed(0))
    one_step(sampled_model, sampled, xr, yr)
    S_exact, S_mc = exact.factors["2"][1], sampled.factors["2"][1]
    err = float((S_mc - S_exact).norm())
    assert err < 5 * 2 / math.sqrt(xr.shape[0])
    assert err > 0
    torch.testing.assert_close(exact.factors["0"][0], sampled.factors["0"][0], rtol=1e-12, atol=0)


def test_autocast_bfloat16_activations():
    model = cnn(torch.float32)
    x, y = data(n=16, shape=(1, 8, 8), classes=10, dtype=torch.float32)
    precond = ngt.Preconditioner(model, fisher="exact", kl_radius=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    F.cross_entropy(out.float(), y).backward()
    info = precond.step()
    assert math.isfinite(info.beta) and info.beta > 0
    assert all(A.dtype == torch.float32 and bool(torch.isfinite(A).all()) for A, _ in precond.factors.values())


def test_remove_detaches_the_hooks():
    model = mlp()
    precond = ngt.Preconditioner(model)
    assert model._forward_hooks and model[0]._forward_hooks
    precond.remove()
    assert not model._forward_hooks and not model._forward_pre_hooks and not model[0]._forward_hooks
