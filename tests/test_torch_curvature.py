"""ngdfast.torch curvatures against independent computations.

Exact: per-sample gradients by torch.func in this file, F built by hand, torch.linalg.solve.
K-FAC: hand factors of one Linear layer, unfold-based Conv2d factors, and the NumPy models of
ngdfast (``MLP.scores`` / ``MLP.kfac_stats``) with the same weights.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, grad, jacrev, vmap  # noqa: E402

import ngdfast  # noqa: E402
import ngdfast.torch as ngt  # noqa: E402
from ngdfast import _kernels  # noqa: E402
from ngdfast.models import MLP  # noqa: E402
from ngdfast.torch import _exact, _linalg  # noqa: E402
from ngdfast.torch._outputs import Outputs  # noqa: E402

KINDS = ["empirical", "exact", "sampled"]


def mlp(sizes=(5, 7, 3), dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).to(dtype)


def batch(n=20, d=5, c=3, seed=1, loss="cross_entropy", dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, c, (n,), generator=g) if loss == "cross_entropy" else torch.randn(n, c, generator=g, dtype=dtype)
    return x, y


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def log_p(loss, out, y):
    if loss == "cross_entropy":
        return -F.cross_entropy(out, y, reduction="none")
    return -0.5 * ((out - y) ** 2).sum(-1)


def dense_fisher(model, x, y, loss, kind):
    """F (P, P) and g (P,) by hand: per-sample gradients with torch.func, mean over samples."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    n = x.shape[0]

    def out1(p, xi):
        return functional_call(model, p, (xi[None],))[0]

    if kind == "empirical":
        G = vmap(grad(lambda p, xi, yi: log_p(loss, out1(p, xi)[None], yi[None])[0]), in_dims=(None, 0, 0))(params, x, y)
        J = torch.cat([G[k].reshape(n, -1) for k in params], 1)
        Fm = J.T @ J / n
    else:
        jac = vmap(jacrev(out1), in_dims=(None, 0))(params, x)
        Jz = torch.cat([jac[k].reshape(n, jac[k].shape[1], -1) for k in params], 2)  # (N, C, P)
        out = model(x).detach()
        if loss == "cross_entropy":
            p = torch.softmax(out, 1)
            H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # output Fisher of the categorical
        else:
            H = torch.eye(out.shape[1], dtype=out.dtype).expand(n, -1, -1)
        Fm = torch.einsum("ncp,ncd,ndq->pq", Jz, H, Jz) / n
    out = functional_call(model, params, (x,))
    params_list = list(params.values())
    for t in params_list:
        t.requires_grad_(True)
    out = functional_call(model, params, (x,))
    g = torch.autograd.grad(-log_p(loss, out, y).mean(), params_list)
    return Fm, flat(g)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_exact_curvature_matches_dense_fisher(loss, kind):
    model = mlp()
    x, y = batch(loss=loss)
    lam = 1e-3
    Fm, g = dense_fisher(model, x, y, loss, kind)
    expected = torch.linalg.solve(Fm + lam * torch.eye(Fm.shape[0], dtype=Fm.dtype), g)
    nat = ngt.natural_gradient(model, x, y, loss=loss, curvature="exact", fisher=kind, damping=lam)
    assert [t.shape for t in nat] == [p.shape for p in model.parameters()]
    err = float((flat(nat) - expected).norm() / expected.norm())
    assert err < 1e-10, err


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_sampled_fisher_estimates_the_exact_fisher(loss):
    """The sampled score rows of R draws per sample average to the exact F within 5 standard errors."""
    model = mlp(sizes=(4, 5, 3))
    x, y = batch(n=6, d=4, loss=loss)
    reps = 3000
    xr = x.repeat(reps, 1)
    names = [k for k, _ in model.named_parameters()]
    J, w = _exact.score_rows(model, names, xr, None, Outputs(loss), "sampled", torch.Generator().manual_seed(3),
                             torch.float64)
    assert w is None
    outer = J[:, :, None] * J[:, None, :]
    F_mc = outer.mean(0)
    se = outer.std(0) / math.sqrt(J.shape[0])
    F_exact, _ = dense_fisher(model, x, y, loss, "exact")
    z = (F_mc - F_exact).abs() / (se + 1e-12 * F_exact.abs().max())
    assert float(z.max()) < 5.0, float(z.max())
    # and the estimate is not trivially loose: the standard error is small against F
    assert float(se.max()) < 0.05 * float(F_exact.abs().max())


def test_sampled_natural_gradient_converges_to_exact():
    model = mlp(sizes=(4, 5, 3))
    x, y = batch(n=6, d=4)
    reps = 2000
    lam = 1e-1  # keeps F + λI well conditioned, so ñ's error follows F's
    xr, yr = x.repeat(reps, 1), y.repeat(reps)
    gen = torch.Generator().manual_seed(5)
    sampled = flat(ngt.natural_gradient(model, xr, yr, curvature="exact", fisher="sampled", damping=lam, generator=gen))
    exact = flat(ngt.natural_gradient(model, xr, yr, curvature="exact", fisher="exact", damping=lam))
    err = float((sampled - exact).norm() / exact.norm())
    # relative error of F ~ 1/sqrt(draws per sample), times the condition number of F + λI
    Fm, _ = dense_fisher(model, x, y, "cross_entropy", "exact")
    eig = torch.linalg.eigvalsh(Fm)
    cond = float((eig[-1] + lam) / (eig[0].clamp(min=0) + lam))
    assert err < 3.0 * cond / math.sqrt(reps), (err, cond)
    assert err > 0  # sampled labels really were drawn


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_kfac_one_linear_layer_is_the_kronecker_solve(bias, kind):
    torch.manual_seed(0)
    n, d, c, lam = 30, 6, 4, 1e-2
    layer = nn.Linear(d, c, bias=bias).double()
    x, y = batch(n=n, d=d, c=c)
    a = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1) if bias else x
    A = a.T @ a / n
    p = torch.softmax(layer(x).detach(), 1)
    if kind == "empirical":
        delta = F.one_hot(y, c).double() - p
        S = delta.T @ delta / n
    else:
        S = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    G = -((F.one_hot(y, c).double() - p).T @ a) / n  # gradient of the mean loss, bias last column
    pi = math.sqrt((torch.trace(A) / A.shape[0]) / (torch.trace(S) / c))
    At = A + pi * math.sqrt(lam) * torch.eye(A.shape[0], dtype=A.dtype)
    St = S + math.sqrt(lam) / pi * torch.eye(c, dtype=A.dtype)
    expected = torch.linalg.solve(torch.kron(St, At), G.reshape(-1)).reshape(G.shape)
    nat = ngt.natural_gradient(layer, x, y, curvature="kfac", fisher=kind, damping=lam)
    got = torch.cat([nat[0], nat[1][:, None]], 1) if bias else nat[0]
    assert float((got - expected).norm() / expected.norm()) < 1e-10
    # the same as ngdfast.kfac_precondition on the hand factors
    ref = ngdfast.kfac_precondition(G.numpy(), A.numpy(), S.numpy(), lam)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-14)


CONVS = [
    dict(stride=1, padding=0, dilation=1, bias=True),
    dict(stride=2, padding=1, dilation=1, bias=False),
    dict(stride=(2, 1), padding=(2, 1), dilation=2, bias=True),
    dict(stride=1, padding=1, dilation=1, bias=True, padding_mode="reflect"),
    dict(stride=1, padding="same", dilation=(1, 2), bias=True),
]


@pytest.mark.parametrize("conv_args", CONVS, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_conv2d_factors_match_unfold(conv_args):
    torch.manual_seed(0)
    n, c_in, c_out, classes = 5, 3, 4, 3
    conv = nn.Conv2d(c_in, c_out, kernel_size=(3, 2), **conv_args).double()
    x = torch.randn(n, c_in, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        hw = conv(x).shape[2:]
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(c_out * hw[0] * hw[1], classes)).double()
    y = torch.randint(0, classes, (n,))
    precond = ngt.Preconditioner(model, fisher="empirical")
    out = model(x)
    F.cross_entropy(out, y).backward()
    precond.step()
    A_got, S_got = precond.factors["0"]

    # by hand: patches with unfold (padding applied first for the non-zero modes), bias column
    mode = conv_args.get("padding_mode", "zeros")
    padding = conv_args["padding"]
    xp = x
    if padding == "same":
        k, d = conv.kernel_size, conv.dilation
        tot = [d[1] * (k[1] - 1), d[0] * (k[0] - 1)]
        xp = F.pad(x, (tot[0] // 2, tot[0] - tot[0] // 2, tot[1] // 2, tot[1] - tot[1] // 2))
        padding = 0
    elif mode != "zeros":
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        xp = F.pad(x, (pw, pw, ph, ph), mode=mode)
        padding = 0
    cols = F.unfold(xp, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride)
    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    # the patches reproduce the convolution itself
    z = (rows @ conv.weight.reshape(c_out, -1).T).reshape(n, -1, c_out).transpose(1, 2).reshape(n, c_out, *hw)
    if conv.bias is not None:
        z = z + conv.bias[None, :, None, None]
        rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], 1)
    torch.testing.assert_close(z, conv(x), rtol=1e-12, atol=1e-12)
    A = rows.T @ rows / rows.shape[0]
    zz = conv(x).detach().requires_grad_(True)
    logits = model[3](model[2](model[1](zz)))
    (delta,) = torch.autograd.grad(log_p("cross_entropy", logits, y).sum(), zz)  # ∂ log p(y_i) / ∂z_i
    d = delta.permute(0, 2, 3, 1).reshape(-1, c_out)
    S = d.T @ d / n  # sum over locations, mean over samples
    torch.testing.assert_close(A_got, A, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(S_got, S, rtol=1e-10, atol=1e-14)


def to_torch(numpy_model, theta):
    net = mlp(numpy_model.sizes)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, W in zip(linears, numpy_model.layers(theta)):
            lin.weight.copy_(torch.from_numpy(W[:, :-1].copy()))
            lin.bias.copy_(torch.from_numpy(W[:, -1].copy()))
    return net


def torch_to_flat(net, tensors):
    """Per-parameter tensors (W, b per layer) to the NumPy model's flat layout ([W, b] row-major)."""
    out = []
    for W, b in zip(tensors[::2], tensors[1::2]):
        out.append(torch.cat([W, b[:, None]], 1).reshape(-1))
    return torch.cat(out).numpy()


@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_same_mlp_in_numpy_and_torch(kind):
    rng = np.random.default_rng(0)
    numpy_model = MLP([5, 8, 6, 3], "tanh")
    theta = numpy_model.init(rng)
    X = rng.standard_normal((25, 5))
    y = rng.integers(0, 3, 25)
    net = to_torch(numpy_model, theta)
    x_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    lam = 1e-3
    _, g = numpy_model.loss_and_grad(theta, X, y)

    J, w = numpy_model.scores(theta, X, y, kind)
    expected = ngdfast.natural_gradient(J, g, lam, w)
    got = torch_to_flat(net, ngt.natural_gradient(net, x_t, y_t, curvature="exact", fisher=kind, damping=lam))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())

    kfac = ngdfast.KFACFisher(numpy_model.layer_shapes)
    kfac.update(*numpy_model.kfac_stats(theta, X, y, kind))
    expected = kfac.solve(g, lam)
    got = torch_to_flat(net, ngt.natural_gradient(net, x_t, y_t, curvature="kfac", fisher=kind, damping=lam))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_diagonal_curvature_is_the_dense_diagonal(kind):
    model = mlp()
    x, y = batch()
    lam = 1e-3
    Fm, g = dense_fisher(model, x, y, "cross_entropy", kind)
    expected = g / (torch.diagonal(Fm) + lam)
    got = flat(ngt.natural_gradient(model, x, y, curvature="diagonal", fisher=kind, damping=lam))
    assert float((got - expected).norm() / expected.norm()) < 1e-10


class Scale(nn.Module):
    """A leaf module of a kind ngdfast has no block for: the fallback's."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x):
        return x * self.weight


class Mixed(nn.Module):
    """An Embedding and Linear layers (K-FAC), norms (closed-form diagonal), an unknown leaf."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.fc = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.bn = nn.BatchNorm1d(6)
        self.scale = Scale(6)
        self.out = nn.Linear(6, 3)

    def forward(self, idx):
        return self.out(self.scale(self.bn(torch.tanh(self.norm(self.fc(self.emb(idx)))))))


def test_norm_and_fallback_diagonals_are_the_per_sample_diagonal():
    torch.manual_seed(0)
    model = Mixed().double()
    model.bn.eval()  # per-sample gradients with fixed statistics: exactly those of torch.func below
    idx = torch.randint(0, 7, (16,))
    y = torch.randint(0, 3, (16,))
    lam = 1e-3
    with pytest.raises(ValueError, match=r"scale \(Scale: weight\)"):
        ngt.Preconditioner(model, fallback=None)
    precond = ngt.Preconditioner(model, fisher="empirical", fallback="diagonal", damping=lam)
    assert precond.kfac_layers == ["emb", "fc", "out"]
    assert precond.diagonal_blocks == ["norm", "bn", "scale"]
    assert precond.fallback_modules == ["scale"]
    F.cross_entropy(model(idx), y).backward()
    g = {k: p.grad.clone() for k, p in model.named_parameters()}
    precond.step()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    per_sample = vmap(
        grad(lambda p, i, t: log_p("cross_entropy", functional_call(model, (p, buffers), (i[None],)), t[None])[0]),
        in_dims=(None, 0, 0),
    )(params, idx, y)
    beta = precond.last_step.beta
    for name in ["norm.weight", "norm.bias", "bn.weight", "bn.bias", "scale.weight"]:
        d = per_sample[name].square().mean(0)
        expected = beta * g[name] / (d + lam)
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, expected, rtol=1e-10, atol=1e-14)


def test_fallback_gradient_keeps_the_gradient():
    torch.manual_seed(0)
    model = Mixed().double()
    idx, y = torch.randint(0, 7, (16,)), torch.randint(0, 3, (16,))
    precond = ngt.Preconditioner(model, fallback="gradient")
    assert precond.fallback_modules == ["scale"]
    F.cross_entropy(model(idx), y).backward()
    g = model.scale.weight.grad.clone()
    info = precond.step()
    torch.testing.assert_close(model.scale.weight.grad, info.beta * g, rtol=1e-12, atol=0)


def test_cpu_tensors_reach_the_kernels_without_copies(monkeypatch):
    model = mlp()
    x, y = batch()
    seen = {}
    score_rows = _exact.score_rows

    def record_rows(*args, **kwargs):
        J, w = score_rows(*args, **kwargs)
        seen["J"] = J
        return J, w

    natural_gradient = _kernels.natural_gradient

    def record_kernel(J, g, damping, weights=None, **kwargs):
        seen["J_array"] = J
        return natural_gradient(J, g, damping, weights, **kwargs)

    monkeypatch.setattr(_exact, "score_rows", record_rows)
    monkeypatch.setattr(_kernels, "natural_gradient", record_kernel)
    ngt.natural_gradient(model, x, y, curvature="exact", fisher="empirical")
    assert isinstance(seen["J_array"], np.ndarray)
    assert seen["J_array"].__array_interface__["data"][0] == seen["J"].data_ptr()

    # K-FAC: the factors are accumulated in place and inverted from views of the same memory
    factor_ptrs, solved_ptrs = [], []
    fisher, damped_solve = _kernels.fisher, _kernels.damped_solve

    def record_fisher(J, weights=None, *, out=None, **kwargs):
        factor_ptrs.append(out.__array_interface__["data"][0])
        return fisher(J, weights, out=out, **kwargs)

    def record_solve(Fm, g, damping, **kwargs):
        solved_ptrs.append(Fm.__array_interface__["data"][0])
        return damped_solve(Fm, g, damping, **kwargs)

    monkeypatch.setattr(_kernels, "fisher", record_fisher)
    monkeypatch.setattr(_kernels, "damped_solve", record_solve)
    precond = ngt.Preconditioner(model, fisher="exact")
    F.cross_entropy(model(x), y).backward()
    precond.step()
    A, _ = precond._A[0], precond._S[0]
    assert A.data_ptr() in factor_ptrs  # A was written by the kernel, no copy afterwards
    assert A.data_ptr() in solved_ptrs  # and read by the solve in place


@pytest.mark.parametrize("curvature", ["kfac", "exact"])
def test_torch_ops_path_matches_the_compiled_kernels(monkeypatch, curvature):
    """The route CUDA tensors take without numba-cuda (torch.linalg), exercised on CPU tensors."""
    model = mlp()
    for n in (6, 60):  # Woodbury (N < P) and dense (N > P) for the exact solve
        x, y = batch(n=n)
        compiled = flat(ngt.natural_gradient(model, x, y, curvature=curvature, fisher="exact"))
        monkeypatch.setattr(_linalg, "_FORCE_TORCH_OPS", True)
        ops = flat(ngt.natural_gradient(model, x, y, curvature=curvature, fisher="exact"))
        monkeypatch.setattr(_linalg, "_FORCE_TORCH_OPS", False)
        assert float((ops - compiled).norm() / compiled.norm()) < 1e-10


def test_functional_leaves_model_and_grads_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = batch()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    for curvature in ["kfac", "diagonal"]:
        for kind in KINDS:
            nat = ngt.natural_gradient(model, x, y, curvature=curvature, fisher=kind, generator=torch.Generator().manual_seed(0))
            assert all(bool(torch.isfinite(t).all()) for t in nat)
    model.eval()  # exact needs per-sample forwards: BatchNorm with running statistics
    ngt.natural_gradient(model, x, y, curvature="exact", fisher="sampled")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert not model._forward_hooks and not model[0]._forward_hooks


def test_functional_sampled_is_reproducible_with_a_generator():
    model = mlp()
    x, y = batch()
    a = ngt.natural_gradient(model, x, y, generator=torch.Generator().manual_seed(7))
    b = ngt.natural_gradient(model, x, y, generator=torch.Generator().manual_seed(7))
    c = ngt.natural_gradient(model, x, y, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(s, t) for s, t in zip(a, b))
    assert not all(torch.equal(s, t) for s, t in zip(a, c))


@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_kfac_mse_one_linear_layer(kind):
    torch.manual_seed(0)
    n, d, c, lam = 30, 5, 3, 1e-2
    layer = nn.Linear(d, c).double()
    x, y = batch(n=n, d=d, c=c, loss="mse")
    a = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
    A = a.T @ a / n
    r = y - layer(x).detach()  # ∂ log p / ∂f for the unit-variance Gaussian
    S = r.T @ r / n if kind == "empirical" else torch.eye(c, dtype=x.dtype)  # exact: the output Fisher is I
    G = -(r.T @ a) / n
    expected = ngdfast.kfac_precondition(G.numpy(), A.numpy(), S.numpy(), lam)
    nat = ngt.natural_gradient(layer, x, y, loss="mse", curvature="kfac", fisher=kind, damping=lam)
    got = torch.cat([nat[0], nat[1][:, None]], 1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("curvature", ["exact", "kfac"])
def test_float32_models_agree_with_float64(curvature):
    model = mlp()
    x, y = batch()
    nat64 = flat(ngt.natural_gradient(model, x, y, curvature=curvature, fisher="exact", damping=1e-2))
    model32 = copy_to(model, torch.float32)
    nat32 = ngt.natural_gradient(model32, x.float(), y, curvature=curvature, fisher="exact", damping=1e-2)
    assert all(t.dtype == torch.float32 for t in nat32)
    assert float((flat(nat32).double() - nat64).norm() / nat64.norm()) < 1e-4


def copy_to(model, dtype):
    import copy

    return copy.deepcopy(model).to(dtype)


@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_diagonal_curvature_of_a_cnn(kind):
    """Conv2d and Linear per-sample gradients in closed form against torch.func's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 2, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (10,), generator=g)
    lam = 1e-3
    Fm, grad_ = dense_fisher(model, x, y, "cross_entropy", kind)
    expected = grad_ / (torch.diagonal(Fm) + lam)
    got = flat(ngt.natural_gradient(model, x, y, curvature="diagonal", fisher=kind, damping=lam))
    assert float((got - expected).norm() / expected.norm()) < 1e-10


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(27, 4)).double()


def with_layernorm():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 4)).double()


@pytest.mark.parametrize("make", [small_cnn, with_layernorm], ids=["cnn-closed-form", "layernorm-torch.func"])
@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_exact_curvature_of_other_models(make, kind):
    model = make()
    g = torch.Generator().manual_seed(2)
    shape = (2, 6, 6) if make is small_cnn else (5,)
    x = torch.randn(10, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (10,), generator=g)
    lam = 1e-3
    Fm, grad_ = dense_fisher(model, x, y, "cross_entropy", kind)
    expected = torch.linalg.solve(Fm + lam * torch.eye(Fm.shape[0], dtype=Fm.dtype), grad_)
    got = flat(ngt.natural_gradient(model, x, y, curvature="exact", fisher=kind, damping=lam))
    assert float((got - expected).norm() / expected.norm()) < 1e-10
