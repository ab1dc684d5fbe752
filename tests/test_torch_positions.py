"""ngdfast.torch on outputs with positions: the exact curvature against a dense Fisher with one
score row per counted position, ignored positions, the (N, C, *) layout, mse, output
selectors, a tiny GPT's KL step and bad input. The blocks one by one: test_torch_blocks.py.
"""

import copy
import math
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, jacrev  # noqa: E402

import ngdfast.torch as ngt  # noqa: E402
from sequence_helpers import IGNORE, assert_step, ce, eye_like, flat, loss_step, tokens, with_bias_column  # noqa: E402


# --------------------------------------------------------------------------- 4. exact curvature
class TinySeq(nn.Module):
    """Embedding, a Linear across the positions, tanh, Linear head: (B, T) tokens to (B, T, V)."""

    def __init__(self, v=5, d=3, t=4):
        super().__init__()
        self.emb = nn.Embedding(v, d)
        self.mix = nn.Linear(t, t, bias=False)
        self.head = nn.Linear(d, v)

    def forward(self, x):
        e = self.emb(x)
        return self.head(torch.tanh(self.mix(e.transpose(1, 2)).transpose(1, 2)))


class LinearSeq(nn.Module):
    """Only Linear layers (one across the positions): (B, T, D) inputs to (B, T, C) logits."""

    def __init__(self, d=3, t=4, c=5):
        super().__init__()
        self.inp = nn.Linear(d, 3)
        self.mix = nn.Linear(t, t)
        self.head = nn.Linear(3, c)

    def forward(self, x):
        h = self.inp(x)
        return self.head(torch.tanh(self.mix(h.transpose(1, 2)).transpose(1, 2)))


def dense_sequence_fisher(model, x, y, kind):
    """``(F, g)`` with one score row per counted position r: the output Jacobian J_r (C, P) of
    the whole batch's forward, F = (1/n) Σ_r J_rᵀ H_r J_r (exact) or (1/n) Σ_r s_r s_rᵀ with
    s_r = J_rᵀ(e_y − p_r) (empirical), g = −(1/n) Σ_r s_r."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    with torch.no_grad():
        out = model(x)
    c = out.shape[-1]
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    Jz = torch.cat([jac[k].reshape(-1, c, params[k].numel()) for k in params], 2)  # (R, C, P)
    yr = y.reshape(-1)
    mask = yr != IGNORE
    Jz, yk = Jz[mask], yr[mask]
    n = int(mask.sum())
    p = torch.softmax(out.reshape(-1, c)[mask], 1)
    scores = torch.einsum("rc,rcp->rp", F.one_hot(yk, c).double() - p, Jz)
    if kind == "empirical":
        Fm = scores.T @ scores / n
    else:
        H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        Fm = torch.einsum("rcp,rcd,rdq->pq", Jz, H, Jz) / n
    return Fm, -scores.sum(0) / n


def sequence_case(kind_of_model):
    torch.manual_seed(0)
    if kind_of_model == "embedding":
        model = TinySeq().double()
        x, y = tokens(3, 4, 5, ignored=[(0, 0), (2, 3)])
    else:
        model = LinearSeq().double()
        x = torch.randn(3, 4, 3, dtype=torch.float64)
        _, y = tokens(3, 4, 5, ignored=[(1, 1)])
    return model, x, y


@pytest.mark.parametrize("kind_of_model", ["embedding", "linear"])
@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_exact_curvature_of_a_sequence_model_is_the_dense_fisher(kind_of_model, kind):
    model, x, y = sequence_case(kind_of_model)
    lam, eps = 1e-3, 1e-3
    Fm, g = dense_sequence_fisher(model, x, y, kind)
    expected = torch.linalg.solve(Fm + lam * eye_like(Fm), g)
    nat = ngt.natural_gradient(model, x, y, curvature="exact", fisher=kind, damping=lam)
    assert [t.shape for t in nat] == [p.shape for p in model.parameters()]
    err = float((flat(nat) - expected).norm() / expected.norm())
    assert err < 1e-10, err

    precond = ngt.Preconditioner(model, curvature="exact", fisher=kind, damping=lam, kl_radius=eps)
    info, gd = loss_step(model, precond, x, y, inputs=x, targets=y)
    torch.testing.assert_close(flat(gd.values()), g, rtol=1e-10, atol=1e-14)
    names = [k for k, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    parts = dict(zip(names, [t.reshape(p.shape) for t, p in zip(expected.split(sizes), model.parameters())]))
    assert_step(model, info, parts, gd, eps, rtol=1e-9)


# --------------------------------------------------------------------------- 5. ignore_index
@pytest.mark.parametrize("kind", ["sampled", "empirical", "exact"])
def test_ignored_positions_have_no_effect(kind):
    """``ignore_index`` and the same positions left out of the loss give the same step."""
    torch.manual_seed(0)
    base = TinySeq(v=6, d=3, t=5).double()
    x, y = tokens(4, 5, 6, ignored=[(0, 0), (0, 1), (2, 4), (3, 2)])
    mask = y != IGNORE
    grads, infos, factors = [], [], []
    for loss_fn in (ce, lambda out, yy: F.cross_entropy(out[mask], yy[mask])):
        model = copy.deepcopy(base)
        precond = ngt.Preconditioner(model, factor_interval=1, inverse_interval=1, fisher=kind, damping=1e-3,
                                     generator=torch.Generator().manual_seed(3))
        info, _ = loss_step(model, precond, x, y, loss_fn=loss_fn)
        infos.append(info)
        grads.append([p.grad.clone() for p in model.parameters()])
        factors.append(precond.factors)
    assert infos[0].n_samples == infos[1].n_samples == int(mask.sum()) == 16
    assert infos[0].beta == pytest.approx(infos[1].beta, rel=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    for name in factors[0]:
        for a, b in zip(factors[0][name], factors[1][name]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    if kind != "sampled":  # the functional form reads ignore_index off the targets: the same ñ
        nat = ngt.natural_gradient(copy.deepcopy(base), x, y, fisher=kind, damping=1e-3)
        for gr, v in zip(grads[0], nat):
            torch.testing.assert_close(gr, infos[0].beta * v, rtol=1e-10, atol=1e-15)


def test_accumulated_forwards_with_ignored_positions_equal_the_whole_batch():
    """Two forwards before one step: n and the factors are those of the concatenated batch
    (exact Fisher: the factors do not depend on how the loss is scaled, only on its mask)."""
    torch.manual_seed(0)
    base = TinySeq(v=6, d=3, t=5).double()
    x, y = tokens(4, 5, 6, ignored=[(0, 0), (0, 1), (1, 4), (3, 2)])
    whole, parts = copy.deepcopy(base), copy.deepcopy(base)
    p_whole = ngt.Preconditioner(whole, fisher="exact")
    info_whole, _ = loss_step(whole, p_whole, x, y)
    p_parts = ngt.Preconditioner(parts, fisher="exact")
    for sl in (slice(0, 1), slice(1, 4)):
        ce(parts(x[sl]), y[sl]).backward()
    info_parts = p_parts.step()
    assert info_parts.n_samples == info_whole.n_samples == 16
    for name, (A, S) in p_whole.factors.items():
        torch.testing.assert_close(p_parts.factors[name][0], A, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(p_parts.factors[name][1], S, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- 6. class_dim=1
class ClassesLast(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).permute(0, 2, 3, 1)


@pytest.mark.parametrize("curvature,kind", [("kfac", "sampled"), ("kfac", "exact"), ("exact", "empirical")])
def test_segmentation_class_dim_1_equals_classes_last(curvature, kind):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 1)).double()
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 3, 4))
    y[0, 1, 2] = y[1, 0, 0] = IGNORE
    first, last = copy.deepcopy(net), ClassesLast(copy.deepcopy(net))
    steps = []
    for model, class_dim, loss_fn in (
        (first, 1, lambda out, yy: F.cross_entropy(out, yy, ignore_index=IGNORE)),
        (last, -1, ce),
    ):
        precond = ngt.Preconditioner(model, curvature=curvature, fisher=kind, class_dim=class_dim,
                                     generator=torch.Generator().manual_seed(5))
        info, _ = loss_step(model, precond, x, y, loss_fn=loss_fn, inputs=x, targets=y)
        assert info.n_samples == (22 if curvature == "kfac" else 0)
        steps.append([p.grad.clone() for p in model.parameters()])
        if curvature == "exact":
            steps.append(ngt.natural_gradient(model, x, y, curvature="exact", fisher=kind, class_dim=class_dim))
    for a, b in zip(steps[0], steps[-1 if curvature == "kfac" else 2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)
    if curvature == "exact":
        for a, b in zip(steps[1], steps[3]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)


# --------------------------------------------------------------------------- 7. mse
@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_mse_with_positions(kind):
    torch.manual_seed(0)
    b, t, d_in, hdim, d, lam = 3, 4, 2, 5, 3, 1e-3
    model = nn.Sequential(nn.Linear(d_in, hdim), nn.Tanh(), nn.Linear(hdim, d)).double()
    x = torch.randn(b, t, d_in, dtype=torch.float64)
    y = torch.randn(b, t, d, dtype=torch.float64)
    n = b * t

    # exact curvature: dense Fisher, one row per position (output Fisher I of the unit Gaussian)
    params = {k: v.detach() for k, v in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    Jz = torch.cat([jac[k].reshape(n, d, -1) for k in params], 2)  # (R, D, P)
    with torch.no_grad():
        out = model(x)
    r = (y - out).reshape(n, d)
    s = torch.einsum("rd,rdp->rp", r, Jz)
    Fm = s.T @ s / n if kind == "empirical" else torch.einsum("rdp,rdq->pq", Jz, Jz) / n
    g = -s.sum(0) / n
    expected = torch.linalg.solve(Fm + lam * eye_like(Fm), g)
    nat = ngt.natural_gradient(model, x, y, loss="mse", curvature="exact", fisher=kind, damping=lam)
    assert float((flat(nat) - expected).norm() / expected.norm()) < 1e-10

    # K-FAC: the head's S is (1/n) Σ (y − f)(y − f)ᵀ (empirical) or I (exact)
    precond = ngt.Preconditioner(model, loss="mse", fisher=kind, damping=lam)
    info, gd = loss_step(model, precond, x, y, loss_fn=lambda o, yy: 0.5 * (o - yy).square().sum(-1).mean())
    assert info.n_samples == n
    torch.testing.assert_close(flat(gd.values()), g, rtol=1e-10, atol=1e-14)
    h = torch.tanh(model[0](x)).detach().reshape(n, hdim)
    a = with_bias_column(h)
    A_got, S_got = precond.factors["2"]
    torch.testing.assert_close(A_got, a.T @ a / n, rtol=1e-12, atol=1e-14)
    S = r.T @ r / n if kind == "empirical" else torch.eye(d, dtype=torch.float64)
    torch.testing.assert_close(S_got, S, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------- 8. output selectors
@dataclass
class LMOutput:
    """Stands in for a Hugging Face ``ModelOutput``: the logits as an attribute."""

    logits: torch.Tensor
    hidden: torch.Tensor


class Returning(nn.Module):
    def __init__(self, net, how):
        super().__init__()
        self.net, self.how = net, how

    def forward(self, x):
        out = self.net(x)
        if self.how == "dict":
            return {"hidden": x, "logits": out}
        if self.how == "tuple":
            return (out, x)
        return LMOutput(logits=out, hidden=x)


SELECTORS = [
    ("dict", "logits"),
    ("dict", lambda o: o["logits"]),
    ("tuple", 0),
    ("object", "logits"),
    ("object", lambda o: o.logits),
]


@pytest.mark.parametrize("how,output", SELECTORS, ids=["dict-key", "dict-callable", "tuple-index", "object-attr",
                                                       "object-callable"])
def test_output_selectors_give_the_plain_models_step(how, output):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    x = torch.randn(2, 3, 3, dtype=torch.float64)
    _, y = tokens(2, 3, 4, ignored=[(0, 2)])
    plain, wrapped = copy.deepcopy(net), Returning(copy.deepcopy(net), how)

    def pick(o):
        return o if isinstance(o, torch.Tensor) else o["logits"] if isinstance(o, dict) else (
            o[0] if isinstance(o, tuple) else o.logits)

    steps = []
    for model, sel in ((plain, None), (wrapped, output)):
        precond = ngt.Preconditioner(model, output=sel, generator=torch.Generator().manual_seed(1))
        loss_step(model, precond, x, y, loss_fn=lambda o, yy: ce(pick(o), yy))
        steps.append([p.grad.clone() for p in model.parameters()])
        steps.append(ngt.natural_gradient(model, x, y, fisher="empirical", output=sel))
        steps.append(ngt.natural_gradient(model, x, y, curvature="exact", fisher="exact", output=sel))
    for k in range(3):
        for a, b in zip(steps[k], steps[k + 3]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("how", ["dict", "tuple", "object"])
def test_non_tensor_output_without_a_selector_is_a_type_error(how):
    model = Returning(nn.Linear(3, 4), how).double()
    x = torch.randn(2, 3, 3, dtype=torch.float64)
    _, y = tokens(2, 3, 4)
    ngt.Preconditioner(model)
    with pytest.raises(TypeError, match="must return a tensor.*pass output="):
        model(x)
    with pytest.raises(TypeError, match="must return a tensor.*pass output="):
        ngt.natural_gradient(model, x, y)


# --------------------------------------------------------------------------- 10. a tiny GPT
class TinyGPT(nn.Module):
    def __init__(self, v=7, t=5, d=8, heads=2):
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(v, d)
        self.pos = nn.Embedding(t, d)
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.lnf = nn.LayerNorm(d)
        self.head = nn.Linear(d, v)

    def forward(self, idx):
        b, t = idx.shape
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        a = self.ln1(h)

        def split(z):
            return z.reshape(b, t, self.heads, -1).transpose(1, 2)

        att = F.scaled_dot_product_attention(split(self.q(a)), split(self.k(a)), split(self.v(a)), is_causal=True)
        h = h + self.o(att.transpose(1, 2).reshape(b, t, -1))
        h = h + self.fc2(F.gelu(self.fc1(self.ln2(h))))
        return self.head(self.lnf(h))


@pytest.mark.parametrize("curvature,approx", [("kfac", "expand"), ("kfac", "reduce"), ("diagonal", "expand")])
def test_tiny_gpt_every_parameter_has_a_block(curvature, approx):
    torch.manual_seed(0)
    model = TinyGPT()
    x, y = tokens(4, 5, 7, ignored=[(0, 4)])
    precond = ngt.Preconditioner(model, factor_interval=1, inverse_interval=1, curvature=curvature, kfac_approx=approx,
                                 generator=torch.Generator().manual_seed(0))
    assert precond.fallback_modules == []
    blocks = set(precond.kfac_layers) | set(precond.diagonal_blocks)
    for name, _ in model.named_parameters():
        assert name.rsplit(".", 1)[0] in blocks, name
    if curvature == "kfac":
        assert set(precond.diagonal_blocks) == {"ln1", "ln2", "lnf"}
        assert set(precond.kfac_layers) == {"tok", "pos", "q", "k", "v", "o", "fc1", "fc2", "head"}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(2):
        info, _ = loss_step(model, precond, x, y)
        assert info.n_samples == 19 and math.isfinite(info.beta) and info.beta > 0
        assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
        opt.step()


# torch.func has no batching rule for CPU flash attention yet and says so; the result is exact
@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_tiny_gpt_exact_step_moves_the_outputs_by_the_kl_radius():
    torch.manual_seed(0)
    eps = 1e-6
    model = TinyGPT().double()
    x, y = tokens(3, 5, 7, seed=4)
    precond = ngt.Preconditioner(model, curvature="exact", fisher="exact", kl_radius=eps, damping=1e-9)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with torch.no_grad():
        before = model(x)
    info, _ = loss_step(model, precond, x, y, inputs=x, targets=y)
    opt.step()
    with torch.no_grad():
        after = model(x)
    lp, lq = F.log_softmax(before, -1), F.log_softmax(after, -1)
    kl = float((lp.exp() * (lp - lq)).sum(-1).mean())  # mean over the B·T positions
    assert info.predicted_kl == pytest.approx(eps, rel=1e-12)
    assert kl == pytest.approx(eps, rel=0.1)


# --------------------------------------------------------------------------- 11. bad input
@pytest.mark.parametrize("curvature", ["kfac", "exact"])
def test_natural_gradient_refuses_bad_targets(curvature):
    model = TinySeq().double()
    x, y = tokens(3, 4, 5)
    with pytest.raises(ValueError, match=r"targets must be class indices of shape \(3, 4\)"):
        ngt.natural_gradient(model, x, y.reshape(-1), curvature=curvature)
    bad = y.clone()
    bad[1, 2] = 5
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        ngt.natural_gradient(model, x, bad, curvature=curvature)
    bad[1, 2] = -1
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        ngt.natural_gradient(model, x, bad, curvature=curvature)
    with pytest.raises(ValueError, match="every target equals ignore_index"):
        ngt.natural_gradient(model, x, torch.full_like(y, IGNORE), curvature=curvature)
    with pytest.raises(TypeError, match="integer class indices"):
        ngt.natural_gradient(model, x, y.double(), curvature=curvature)
    # mse: targets shaped like the (N, T, D) output
    reg = nn.Linear(3, 2).double()
    xs = torch.randn(3, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"mse targets must have the output's shape \(3, 4, 2\)"):
        ngt.natural_gradient(reg, xs, torch.zeros(3, 4, dtype=torch.float64), loss="mse", curvature=curvature)


def test_a_loss_ignoring_every_position_is_refused_and_changes_nothing():
    torch.manual_seed(0)
    model = TinySeq().double()
    x, y = tokens(3, 4, 5)
    precond = ngt.Preconditioner(model, factor_interval=1, inverse_interval=1, fisher="empirical")
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loss_step(model, precond, x, y)
    opt.step()
    model.zero_grad(set_to_none=True)
    ce(model(x), torch.full_like(y, IGNORE)).backward()  # NaN loss, zero gradients
    params = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    factors = precond.factors
    n_steps = precond.n_steps
    with pytest.raises(ValueError, match="counted no output position"):
        precond.step()
    for p, before, g in zip(model.parameters(), params, grads):
        assert torch.equal(p.detach(), before) and torch.equal(p.grad, g)
    assert precond.n_steps == n_steps and precond.factors.keys() == factors.keys()
    for name, (A, S) in precond.factors.items():
        assert torch.equal(A, factors[name][0]) and torch.equal(S, factors[name][1])
    info, _ = loss_step(model, precond, x, y)  # and the next batch steps as usual
    assert info.n_samples == y.numel()
