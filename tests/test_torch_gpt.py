"""A tiny GPT behind ``Preconditioner(model)``, three steps, against the same steps by hand.

The hand computation below shares nothing with ``ngdfast.torch`` but the definitions of its
documentation: every counted position a sample; K-FAC "expand" factors of the Linear layers
(A = mean of ā āᵀ over all rows, ones column for the bias; S = (1/n) Σ δ δᵀ with the empirical
δ = n ∂L/∂z), the Embedding's diagonal A (token frequencies), the LayerNorms' closed-form
diagonal (row gradients δ ⊙ x̂ and δ), the loose parameter's diagonal n (∂L/∂θ)²; running
averages with ``decay``; factored damping π√λ, √λ/π; β = sqrt(2ε / gᵀñ).
"""

import math

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import ngdfast.torch as ngt  # noqa: E402

V, T, D, H = 11, 6, 8, 2


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.fc, self.proj = nn.Linear(D, 2 * D), nn.Linear(2 * D, D)

    def forward(self, x):
        b, t, d = x.shape
        y = self.ln1(x)
        q, k, v = (m(y).view(b, t, H, d // H).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.o(a)
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """``per_sample``: positions looked up per sample and no loose parameter, so that every
    statistic is a sum over samples (what data parallelism needs to be exact; see
    docs/distributed.md); otherwise a positional lookup shared by the batch and a loose gain."""

    def __init__(self, per_sample=False):
        super().__init__()
        self.per_sample = per_sample
        self.tok, self.pos = nn.Embedding(V, D), nn.Embedding(T, D)
        self.block = Block()
        self.ln = nn.LayerNorm(D)
        self.gain = None if per_sample else nn.Parameter(torch.linspace(0.8, 1.2, D))  # a loose parameter
        self.head = nn.Linear(D, V)

    def forward(self, idx):
        positions = torch.arange(idx.shape[1])
        x = self.tok(idx) + self.pos(positions.expand(idx.shape) if self.per_sample else positions)
        h = self.ln(self.block(x))
        return self.head(h if self.gain is None else h * self.gain)


def tiny_gpt(per_sample=False):
    torch.manual_seed(0)
    return TinyGPT(per_sample).double()


def batches(steps, n=4):
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(steps):
        x = torch.randint(0, V, (n, T), generator=g)
        y = torch.randint(0, V, (n, T), generator=g)
        y[0, :2] = -100  # positions the loss ignores
        y[2, -1] = -100
        out.append((x, y))
    return out


def loss_of(logits, y):
    return F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))


def hand_statistics(model, x, y):
    """One batch's factors and diagonals, from hooks of this test's own and autograd.grad."""
    kinds = {nn.Linear: "linear", nn.Embedding: "embedding", nn.LayerNorm: "norm"}
    seen = {}
    hooks = [m.register_forward_hook(lambda m, a, o, name=name: seen.__setitem__(name, (a[0].detach(), o)))
             for name, m in model.named_modules() if type(m) in kinds]
    logits = model(x)
    for h in hooks:
        h.remove()
    loss = loss_of(logits, y)
    n = int((y != -100).sum())
    names = list(seen)
    grads = torch.autograd.grad(loss, [seen[k][1] for k in names] + [model.gain], retain_graph=True)
    stats = {}
    for name, dz in zip(names, grads[:-1]):
        module = dict(model.named_modules())[name]
        x_in = seen[name][0]
        delta = (n * dz).reshape(-1, dz.shape[-1])
        if type(module) is nn.Linear:
            a = x_in.reshape(-1, x_in.shape[-1])
            a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
            stats[name] = ("kfac", a.T @ a / a.shape[0], delta.T @ delta / n)
        elif type(module) is nn.Embedding:
            counts = torch.zeros(module.num_embeddings, dtype=torch.float64)
            counts.index_add_(0, x_in.reshape(-1), torch.ones(x_in.numel(), dtype=torch.float64))
            stats[name] = ("kfac", counts / x_in.numel(), delta.T @ delta / n)
        else:
            mu = x_in.mean(-1, keepdim=True)
            xh = ((x_in - mu) / torch.sqrt(x_in.var(-1, unbiased=False, keepdim=True) + module.eps)).reshape(-1, D)
            stats[name] = ("diag", [((delta * xh) ** 2).sum(0) / n, (delta**2).sum(0) / n])
    stats["<model>"] = ("diag", [n * grads[-1] ** 2])
    return loss, stats, n


def hand_step(model, state, x, y, lam, eps, decay):
    loss, stats, n = hand_statistics(model, x, y)
    model.zero_grad()
    loss.backward()
    for name, s in stats.items():
        if name in state and s[0] == "kfac":
            s = ("kfac", decay * state[name][1] + (1 - decay) * s[1], decay * state[name][2] + (1 - decay) * s[2])
        elif name in state:
            s = ("diag", [decay * o + (1 - decay) * d for o, d in zip(state[name][1], s[1])])
        state[name] = s
    modules = dict(model.named_modules())
    nat = {}
    for name, s in state.items():
        if s[0] == "kfac":
            A, S = s[1], s[2]
            m = modules[name]
            if type(m) is nn.Embedding:
                G = m.weight.grad.T  # (d, V): W̄ = Wᵀ
                d_in, d_out = A.numel(), S.shape[0]
                pi = math.sqrt((float(A.sum()) / d_in) / (float(torch.trace(S)) / d_out))
                X = torch.linalg.solve(S + math.sqrt(lam) / pi * torch.eye(d_out, dtype=S.dtype), G)
                X = X / (A + pi * math.sqrt(lam))[None, :]
                nat[m.weight] = X.T
            else:
                G = torch.cat([m.weight.grad, m.bias.grad[:, None]], 1)
                d_out, d_in = G.shape
                pi = math.sqrt((float(torch.trace(A)) / d_in) / (float(torch.trace(S)) / d_out))
                At = A + pi * math.sqrt(lam) * torch.eye(d_in, dtype=A.dtype)
                St = S + math.sqrt(lam) / pi * torch.eye(d_out, dtype=S.dtype)
                X = torch.linalg.solve(St, G) @ torch.linalg.inv(At)
                nat[m.weight], nat[m.bias] = X[:, :-1], X[:, -1]
        else:
            params = [model.gain] if name == "<model>" else [modules[name].weight, modules[name].bias]
            for p, d in zip(params, s[1]):
                nat[p] = p.grad / (d + lam)
    q = sum(float((p.grad * v).sum()) for p, v in nat.items())
    beta = math.sqrt(2 * eps / q)
    with torch.no_grad():
        for p, v in nat.items():
            p -= beta * v
    return beta


def test_three_steps_equal_the_hand_computation():
    lam, eps, decay = 1e-2, 1e-2, 0.7
    data = batches(3)
    model = tiny_gpt()
    precond = ngt.Preconditioner(model, factor_interval=1, inverse_interval=1, fisher="empirical", damping=lam,
                                 kl_radius=eps, decay=decay)
    assert precond.fallback_modules == []
    assert sorted(precond.kfac_layers) == sorted(
        ["tok", "pos", "block.q", "block.k", "block.v", "block.o", "block.fc", "block.proj", "head"])
    assert precond.diagonal_blocks == ["<model>", "block.ln1", "block.ln2", "ln"]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    betas = []
    for x, y in data:
        opt.zero_grad()
        loss_of(model(x), y).backward()
        info = precond.step()
        opt.step()
        betas.append(info.beta)
        assert info.n_samples == int((y != -100).sum())

    ref = tiny_gpt()
    state = {}
    ref_betas = [hand_step(ref, state, x, y, lam, eps, decay) for x, y in data]
    assert betas == pytest.approx(ref_betas, rel=1e-10)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=name)


def train(model, precond, data, adaptive=False):
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for x, y in data:
        opt.zero_grad()
        loss = loss_of(model(x), y)
        loss.backward()
        precond.step(loss=loss if adaptive else None)
        opt.step()
        if adaptive:
            with torch.no_grad():
                precond.report_loss(loss_of(model(x), y))


@pytest.mark.parametrize("settings", [
    dict(),  # sampled Fisher: the generator's state travels too
    dict(fisher="empirical", factor_interval=2, inverse_interval=3, adaptive_damping=True),
    dict(kfac_approx="reduce", max_factor_dim=8),  # diagonal factors for the 11-class head, the fc layer
])
def test_state_dict_resumes_bit_for_bit(settings):
    data = batches(5)
    adaptive = settings.get("adaptive_damping", False)
    model = tiny_gpt()
    gen = torch.Generator().manual_seed(3)
    precond = ngt.Preconditioner(model, generator=gen, kl_radius=1e-2, damping=1e-2, **settings)
    train(model, precond, data[:3], adaptive)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved = precond.state_dict()
    train(model, precond, data[3:], adaptive)

    other = tiny_gpt()
    other.load_state_dict(saved_model)
    resumed = ngt.Preconditioner(other, generator=torch.Generator().manual_seed(99), kl_radius=1e-2, damping=1e-2,
                                 **settings)
    resumed.load_state_dict(saved)
    train(other, resumed, data[3:], adaptive)
    assert resumed.damping == precond.damping
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)
    if "max_factor_dim" in settings:
        assert precond.factors["head"][1].ndim == 1 and precond.factors["block.fc"][1].ndim == 1


def test_a_second_backward_through_one_forward_counts_once():
    data = batches(1)
    x, y = data[0]
    once, twice = tiny_gpt(), tiny_gpt()
    infos = []
    for model, backwards in ((once, 1), (twice, 2)):
        precond = ngt.Preconditioner(model, fisher="empirical", kl_radius=1e-2, damping=1e-2)
        loss = loss_of(model(x), y)
        for _ in range(backwards):
            model.zero_grad()
            loss.backward(retain_graph=True)
        infos.append(precond.step())
        assert infos[-1].n_samples == int((y != -100).sum())
    for p, q in zip(once.parameters(), twice.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0)


class Lookup(nn.Module):
    def __init__(self, max_norm=None):
        super().__init__()
        self.emb = nn.Embedding(V, D, max_norm=max_norm)
        self.head = nn.Linear(D, V)

    def forward(self, idx):
        return self.head(torch.tanh(self.emb(idx)))


def test_embedding_max_norm_is_the_lookup_of_the_renormalised_rows():
    """``max_norm``: the forward renormalises the looked-up rows in place, then looks them up;
    the step is that of a plain Embedding whose rows were renormalised beforehand."""
    x, y = batches(1)[0]
    torch.manual_seed(0)
    renorming = Lookup(max_norm=0.5).double()
    with torch.no_grad():
        renorming.emb.weight.mul_(3.0)  # rows well over the norm bound
    plain = Lookup().double()
    plain.load_state_dict(renorming.state_dict())
    with torch.no_grad():
        torch.embedding_renorm_(plain.emb.weight, x.reshape(-1), 0.5, 2.0)
    steps = []
    for model in (renorming, plain):
        precond = ngt.Preconditioner(model, generator=torch.Generator().manual_seed(4), kl_radius=1e-2)
        loss_of(model(x), y).backward()
        steps.append((precond.step(), [p.grad.clone() for p in model.parameters()], precond.factors))
    (info_a, grads_a, factors_a), (info_b, grads_b, factors_b) = steps
    assert info_a.beta == pytest.approx(info_b.beta, rel=1e-12)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    for name in factors_a:
        for a, b in zip(factors_a[name], factors_b[name]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(renorming.emb.weight, plain.emb.weight)  # the forward renormalised alike
