"""ngdfast.torch on sequence models, block by block: every output position a sample of the Fisher.

Each block is checked against an independent computation: K-FAC factors from hand-built rows
(token counts, unfolded patches, gradients at a layer output by ``torch.autograd.grad``), norm
and loose-parameter diagonals from per-row / per-sample gradients by ``torch.func``, and the
step from ``S̃⁻¹ G Ã⁻¹`` with ngdfast's factored damping. Outputs with positions (exact
curvature, ignored positions, layouts, selectors, a tiny GPT, bad input): test_torch_positions.py.
"""

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import ngdfast.torch as ngt  # noqa: E402
from sequence_helpers import IGNORE, EmbLM, assert_step, ce, kfac_by_hand, loss_step, per_sample_scores, tokens, with_bias_column  # noqa: E402


# --------------------------------------------------------------------------- 1. Embedding
def test_embedding_factors_and_step_by_hand():
    torch.manual_seed(0)
    v, d, b, t, lam, eps = 7, 4, 3, 5, 1e-2, 1e-3
    model = EmbLM(v, d).double()
    x, y = tokens(b, t, v, ignored=[(0, 1), (2, 4)])
    precond = ngt.Preconditioner(model, fisher="empirical", damping=lam, kl_radius=eps)
    assert precond.kfac_layers == ["emb", "head"] and precond.diagonal_blocks == []
    info, g = loss_step(model, precond, x, y)

    # by hand: gradients of the loss at the embedding output and at the logits
    e = model.emb(x).detach().requires_grad_(True)
    h = torch.tanh(e)
    z = model.head(h)
    dL_de, dL_dz = torch.autograd.grad(ce(z, y), [e, z])
    r, n = x.numel(), int((y != IGNORE).sum())
    assert info.n_samples == n == r - 2
    A_emb = torch.bincount(x.reshape(-1), minlength=v).double() / r  # every row, ignored ones too
    de = n * dL_de.reshape(-1, d)  # δ = n ∂L/∂z
    S_emb = de.T @ de / n
    a = with_bias_column(h.detach().reshape(-1, d))
    A_head = a.T @ a / r
    dz = n * dL_dz.reshape(-1, v)
    S_head = dz.T @ dz / n

    A_got, S_got = precond.factors["emb"]
    assert A_got.shape == (v,)  # a vector: diag(token counts)/R
    torch.testing.assert_close(A_got, A_emb, rtol=1e-12, atol=0)
    torch.testing.assert_close(S_got, S_emb, rtol=1e-10, atol=1e-14)
    A_got, S_got = precond.factors["head"]
    torch.testing.assert_close(A_got, A_head, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(S_got, S_head, rtol=1e-10, atol=1e-14)

    nat_emb = kfac_by_hand(g["emb.weight"].T, A_emb, S_emb, lam).T  # W̄ = Wᵀ (d, V)
    G_head = torch.cat([g["head.weight"], g["head.bias"][:, None]], 1)
    nat_head = kfac_by_hand(G_head, A_head, S_head, lam)
    nat = {"emb.weight": nat_emb, "head.weight": nat_head[:, :-1], "head.bias": nat_head[:, -1]}
    assert_step(model, info, nat, g, eps)

    # the functional form gives ñ itself
    fresh = EmbLM(v, d).double()
    fresh.load_state_dict(model.state_dict())
    got = ngt.natural_gradient(fresh, x, y, curvature="kfac", fisher="empirical", damping=lam)
    for k, t_ in zip(["emb.weight", "head.weight", "head.bias"], got):
        torch.testing.assert_close(t_, nat[k], rtol=1e-10, atol=1e-14)


def test_embedding_padding_row_gets_a_zero_step():
    torch.manual_seed(0)
    model = EmbLM(7, 4, padding_idx=0).double()
    x, y = tokens(3, 6, 7, seed=2)
    x[:, 0] = 0  # the padding token occurs
    precond = ngt.Preconditioner(model, fisher="sampled", generator=torch.Generator().manual_seed(0))
    info, g = loss_step(model, precond, x, y)
    w = model.emb.weight.grad
    assert torch.equal(g["emb.weight"][0], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(w[0], torch.zeros_like(w[0]))
    assert info.beta > 0 and bool(torch.isfinite(w).all()) and float(w[1:].abs().max()) > 0
    nat = ngt.natural_gradient(model, x, y, curvature="kfac", fisher="empirical")
    assert torch.equal(nat[0][0], torch.zeros_like(nat[0][0]))


def test_embedding_factors_do_not_depend_on_kfac_approx():
    """An Embedding's rows are its tokens whatever ``kfac_approx``: "reduce" leaves it "expand"."""
    torch.manual_seed(0)
    x, y = tokens(3, 5, 7, ignored=[(1, 1)])
    factors = []
    for approx in ("expand", "reduce"):
        torch.manual_seed(0)
        model = EmbLM(7, 4).double()
        precond = ngt.Preconditioner(model, fisher="empirical", kfac_approx=approx)
        loss_step(model, precond, x, y)
        factors.append(precond.factors["emb"])
    for a, b in zip(*factors):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_sparse_embedding_is_refused_at_construction():
    model = EmbLM(7, 4, sparse=True)
    with pytest.raises(ValueError, match="emb.*sparse=True"):
        ngt.Preconditioner(model)
    x, y = tokens(2, 3, 7)
    with pytest.raises(ValueError, match="sparse=True"):
        ngt.natural_gradient(model, x, y)
    model.emb.weight.requires_grad_(False)  # a frozen sparse embedding is fine
    ngt.Preconditioner(model)


def test_large_vocabulary_keeps_vector_factors():
    """V = 50 000: A of the Embedding and S of the LM head are vectors (no V × V matrix; one of
    float32 would take 10 GB and this test would not finish in a second)."""
    torch.manual_seed(0)
    v, d = 50_000, 8
    model = EmbLM(v, d)
    x, y = tokens(2, 3, v)
    precond = ngt.Preconditioner(model, fisher="empirical")
    info, _ = loss_step(model, precond, x, y)
    A, S = precond.factors["emb"]
    assert A.shape == (v,) and S.shape == (d, d)
    A, S = precond.factors["head"]
    assert A.shape == (d + 1, d + 1) and S.shape == (v,)
    assert math.isfinite(info.beta) and info.beta > 0
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    # the rows looked up get a step, the others none (their gradient and counts are zero)
    w = model.emb.weight.grad
    looked_up = torch.zeros(v, dtype=torch.bool)
    looked_up[x.reshape(-1)] = True
    assert float(w[looked_up].abs().max()) > 0 and float(w[~looked_up].abs().max()) == 0


# --------------------------------------------------------------------------- 2. norm layers
def frozen_except(model, *names):
    for k, p in model.named_parameters():
        p.requires_grad_(any(k.startswith(nm + ".") for nm in names))
    return model


def check_diagonal_step(model, info, g, D, lam, eps):
    """``.grad == β g/(D + λ)`` with β from gᵀñ over the (only) trainable parameters ``D``."""
    assert_step(model, info, {k: g[k] / (D[k] + lam) for k in D}, g, eps)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_layernorm_rmsnorm_diagonal_is_the_per_position_diagonal(norm):
    """Rows are positions: D = (1/n) Σ_r (∇ log p(y_r | x_r))² over the counted positions."""
    torch.manual_seed(0)
    b, t, d_in, d, c, lam, eps = 3, 4, 3, 5, 4, 1e-3, 1e-3
    layer = nn.LayerNorm(d) if norm == "layernorm" else nn.RMSNorm(d)
    model = frozen_except(nn.Sequential(nn.Linear(d_in, d), layer, nn.Tanh(), nn.Linear(d, c)).double(), "1")
    with torch.no_grad():  # γ, β away from their initial values
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(b, t, d_in, dtype=torch.float64)
    _, y = tokens(b, t, c, ignored=[(1, 2)])
    precond = ngt.Preconditioner(model, fisher="empirical", damping=lam, kl_radius=eps)
    assert precond.diagonal_blocks == ["1"] and precond.kfac_layers == []
    info, g = loss_step(model, precond, x, y)
    n = int((y != IGNORE).sum())
    assert info.n_samples == n
    # the model is position-wise: each position alone through the model is a row
    scores = per_sample_scores(model, x.reshape(-1, 1, d_in), y.reshape(-1, 1))
    D = {k: s.square().sum(0) / n for k, s in scores.items()}
    check_diagonal_step(model, info, g, D, lam, eps)


def test_groupnorm_diagonal_is_the_per_sample_diagonal():
    """Rows are samples, summed over their positions: D = (1/n) Σ_i (Σ_t ∇ log p(y_it | x_i))²."""
    torch.manual_seed(0)
    n_s, c_in, ch, k, length, lam, eps = 4, 2, 4, 3, 5, 1e-3, 1e-3
    model = nn.Sequential(nn.Conv1d(c_in, ch, 3, padding=1), nn.GroupNorm(2, ch), nn.Tanh(), nn.Conv1d(ch, k, 1))
    model = frozen_except(model.double(), "1")
    x = torch.randn(n_s, c_in, length, dtype=torch.float64)
    _, y = tokens(n_s, length, k, ignored=[(0, 0), (3, 4)])
    precond = ngt.Preconditioner(model, fisher="empirical", class_dim=1, damping=lam, kl_radius=eps)
    info, g = loss_step(model, precond, x, y, loss_fn=lambda out, yy: F.cross_entropy(out, yy, ignore_index=IGNORE))
    n = int((y != IGNORE).sum())
    assert info.n_samples == n
    D = {k_: s.square().sum(0) / n for k_, s in per_sample_scores(model, x, y, class_dim=1).items()}
    check_diagonal_step(model, info, g, D, lam, eps)


def test_batchnorm1d_eval_statistics_is_the_per_sample_diagonal():
    """BatchNorm1d on (N, C, L) with its running statistics (the model itself in training mode)."""
    torch.manual_seed(0)
    n_s, c_in, ch, k, length, lam, eps = 4, 2, 3, 3, 5, 1e-3, 1e-3
    model = nn.Sequential(nn.Conv1d(c_in, ch, 3, padding=1), nn.BatchNorm1d(ch), nn.Tanh(), nn.Conv1d(ch, k, 1))
    model = frozen_except(model.double(), "1")
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    model[1].eval()
    x = torch.randn(n_s, c_in, length, dtype=torch.float64)
    _, y = tokens(n_s, length, k)
    precond = ngt.Preconditioner(model, fisher="empirical", class_dim=1, damping=lam, kl_radius=eps)
    info, g = loss_step(model, precond, x, y, loss_fn=F.cross_entropy)
    n = y.numel()
    D = {k_: s.square().sum(0) / n for k_, s in per_sample_scores(model, x, y, class_dim=1).items()}
    check_diagonal_step(model, info, g, D, lam, eps)


def test_batchnorm2d_training_mode_diagonal_by_hand():
    """Training mode: x̂ with the batch's statistics held constant; a sample's gradient of γ is
    Σ_hw δ ⊙ x̂ and of β Σ_hw δ, with δ = n ∂L/∂z (empirical)."""
    torch.manual_seed(0)
    n_s, ch, k, lam, eps = 6, 3, 4, 1e-3, 1e-3
    model = nn.Sequential(nn.Conv2d(2, ch, 2), nn.BatchNorm2d(ch), nn.ReLU(), nn.Flatten(), nn.Linear(ch * 9, k))
    model = frozen_except(model.double(), "1")
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.normal_()
    x = torch.randn(n_s, 2, 4, 4, dtype=torch.float64)
    y = torch.randint(0, k, (n_s,))
    precond = ngt.Preconditioner(model, fisher="empirical", damping=lam, kl_radius=eps)
    info, g = loss_step(model, precond, x, y)
    bn = model[1]
    h = model[0](x).detach()
    mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
    xh = (h - mean) / torch.sqrt(var + bn.eps)
    z = (xh * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]).detach().requires_grad_(True)
    (dL_dz,) = torch.autograd.grad(F.cross_entropy(model[2:](z), y), z)
    delta = n_s * dL_dz
    rows = {"1.weight": (delta * xh).sum((2, 3)), "1.bias": delta.sum((2, 3))}
    D = {k_: r.square().sum(0) / n_s for k_, r in rows.items()}
    check_diagonal_step(model, info, g, D, lam, eps)


def test_diagonal_curvature_of_a_position_wise_model_is_the_per_position_diagonal():
    """``curvature="diagonal"``: each position is a row of the Embedding, the LayerNorm and the
    Linear head alike, so D = (1/n) Σ_r (∇ log p(y_r | x_r))² for every parameter."""
    torch.manual_seed(0)
    v, d, lam, eps = 6, 4, 1e-3, 1e-3
    model = nn.Sequential(nn.Embedding(v, d), nn.LayerNorm(d), nn.Tanh(), nn.Linear(d, v)).double()
    x, y = tokens(3, 4, v, ignored=[(0, 3), (2, 1)])
    precond = ngt.Preconditioner(model, curvature="diagonal", fisher="empirical", damping=lam, kl_radius=eps)
    assert precond.diagonal_blocks == ["0", "1", "3"] and precond.kfac_layers == []
    info, g = loss_step(model, precond, x, y)
    n = int((y != IGNORE).sum())
    assert info.n_samples == n
    scores = per_sample_scores(model, x.reshape(-1, 1), y.reshape(-1, 1))
    D = {k: s_.square().sum(0) / n for k, s_ in scores.items()}
    check_diagonal_step(model, info, g, D, lam, eps)


# --------------------------------------------------------------------------- 3. Linear and Conv1d factors
@pytest.mark.parametrize("max_dim", [4096, 4], ids=["full", "max_factor_dim=4"])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_linear_on_sequences_factors_by_hand(approx, max_dim):
    """A side of more than ``max_factor_dim`` features keeps the diagonal of its factor (a
    vector): here A of both layers (5 and 7 inputs) and S of the first (6 outputs)."""
    torch.manual_seed(0)
    b, t, d, hdim, c, lam, eps = 3, 5, 4, 6, 3, 1e-2, 1e-3
    model = nn.Sequential(nn.Linear(d, hdim), nn.Tanh(), nn.Linear(hdim, c)).double()
    x = torch.randn(b, t, d, dtype=torch.float64)
    _, y = tokens(b, t, c, ignored=[(0, 3), (2, 0), (2, 1)])
    precond = ngt.Preconditioner(model, fisher="empirical", kfac_approx=approx, damping=lam, kl_radius=eps,
                                 max_factor_dim=max_dim)
    info, g = loss_step(model, precond, x, y)
    n = int((y != IGNORE).sum())
    assert info.n_samples == n

    z0 = model[0](x).detach().requires_grad_(True)
    h = torch.tanh(z0)
    z2 = model[2](h)
    dz0, dz2 = torch.autograd.grad(ce(z2, y), [z0, z2])
    nat = {}
    for name, inp, dz in (("0", x, dz0), ("2", h.detach(), dz2)):
        a = with_bias_column(inp.reshape(-1, inp.shape[-1])).reshape(b, t, -1)  # ignored rows stay in A
        delta = n * dz  # (B, T, out)
        if approx == "expand":
            a, delta = a.reshape(b * t, -1), delta.reshape(b * t, -1)
        else:
            a, delta = a.mean(1), delta.sum(1)
        A, S = a.T @ a / a.shape[0], delta.T @ delta / n
        A, S = (torch.diagonal(M).clone() if M.shape[0] > max_dim else M for M in (A, S))
        A_got, S_got = precond.factors[name]
        torch.testing.assert_close(A_got, A, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(S_got, S, rtol=1e-10, atol=1e-14)
        G = torch.cat([g[f"{name}.weight"], g[f"{name}.bias"][:, None]], 1)
        X = kfac_by_hand(G, A, S, lam)
        nat[f"{name}.weight"], nat[f"{name}.bias"] = X[:, :-1], X[:, -1]
    assert_step(model, info, nat, g, eps)


CONV1D = [
    dict(),
    dict(padding=1),
    dict(stride=2, dilation=2, padding=2, bias=False),
    dict(padding=1, padding_mode="reflect"),
    dict(padding="same", dilation=2),
]


def conv1d_pad(conv, x):
    """The input as the convolution sees it (padded by hand) and the padding left to F.conv1d."""
    span = conv.dilation[0] * (conv.kernel_size[0] - 1)
    if conv.padding == "same":
        return F.pad(x, (span // 2, span - span // 2))
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, (conv.padding[0], conv.padding[0]), mode=mode)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("conv_args", CONV1D, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_conv1d_factors_match_a_hand_unfold(conv_args, approx):
    torch.manual_seed(0)
    n_s, c_in, c_out, k, ksize, length = 3, 2, 4, 3, 3, 9
    conv = nn.Conv1d(c_in, c_out, ksize, **conv_args).double()
    model = nn.Sequential(conv, nn.Tanh(), nn.Conv1d(c_out, k, 1)).double()
    x = torch.randn(n_s, c_in, length, dtype=torch.float64)
    with torch.no_grad():
        lout = conv(x).shape[2]
    _, y = tokens(n_s, lout, k, ignored=[(1, 0)])
    precond = ngt.Preconditioner(model, fisher="empirical", class_dim=1, kfac_approx=approx)
    info, _ = loss_step(model, precond, x, y, loss_fn=lambda out, yy: F.cross_entropy(out, yy, ignore_index=IGNORE))
    n = int((y != IGNORE).sum())
    assert info.n_samples == n

    s, dil = conv.stride[0], conv.dilation[0]
    span = dil * (ksize - 1) + 1
    patches = conv1d_pad(conv, x).unfold(2, span, s)[..., ::dil]  # (N, C_in, L', k)
    rows = patches.permute(0, 2, 1, 3).reshape(n_s * lout, c_in * ksize)
    zz = (rows @ conv.weight.reshape(c_out, -1).T).reshape(n_s, lout, c_out).transpose(1, 2)
    if conv.bias is not None:
        zz = zz + conv.bias[None, :, None]
        rows = with_bias_column(rows)
    torch.testing.assert_close(zz, conv(x), rtol=1e-12, atol=1e-12)  # the patches are the convolution
    z = conv(x).detach().requires_grad_(True)
    (dz,) = torch.autograd.grad(F.cross_entropy(model[2](torch.tanh(z)), y, ignore_index=IGNORE), z)
    delta = n * dz.transpose(1, 2)  # (N, L', C_out)
    a = rows.reshape(n_s, lout, -1)
    if approx == "expand":
        a, delta = a.reshape(n_s * lout, -1), delta.reshape(n_s * lout, -1)
    else:
        a, delta = a.mean(1), delta.sum(1)
    A_got, S_got = precond.factors["0"]
    torch.testing.assert_close(S_got, delta.T @ delta / n, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(A_got, a.T @ a / a.shape[0], rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- 9. tied weights
class TiedLM(nn.Module):
    def __init__(self, v=6, d=4):
        super().__init__()
        self.emb = nn.Embedding(v, d)
        self.mid = nn.Linear(d, d)
        self.head = nn.Linear(d, v, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(torch.tanh(self.mid(self.emb(x))))


def test_tied_embedding_and_head_get_a_loose_diagonal():
    torch.manual_seed(0)
    lam, eps = 1e-3, 1e-3
    model = TiedLM().double()
    x, y = tokens(3, 4, 6, ignored=[(1, 1)])
    precond = ngt.Preconditioner(model, fisher="empirical", damping=lam, kl_radius=eps)
    assert precond.kfac_layers == ["mid"]
    assert "emb" in precond.diagonal_blocks and "head" not in precond.kfac_layers
    assert precond.fallback_modules == []
    info, g = loss_step(model, precond, x, y)
    n = int((y != IGNORE).sum())
    assert info.n_samples == n
    gw = g["emb.weight"]
    assert float(gw.abs().max()) > 0
    nat = {"emb.weight": gw / (n * gw.square() + lam)}  # D = n (∂L/∂W)²
    A, S = precond.factors["mid"]
    G = torch.cat([g["mid.weight"], g["mid.bias"][:, None]], 1)
    X = kfac_by_hand(G, A, S, lam)
    nat["mid.weight"], nat["mid.bias"] = X[:, :-1], X[:, -1]
    assert_step(model, info, nat, g, eps)
    assert model.head.weight is model.emb.weight


class ScaledLM(nn.Module):
    """EmbLM with a model-level ``nn.Parameter`` scaling the logits per class."""

    def __init__(self, v=5, d=3):
        super().__init__()
        self.lm = EmbLM(v, d)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, v))

    def forward(self, x):
        return self.lm(x) * self.scale


@pytest.mark.parametrize("kind", ["empirical", "exact"])
def test_model_level_parameter_gets_the_loose_diagonal(kind):
    """D = ĝ²/n with ĝ = ∂(Σ_r b_rᵀ f_r)/∂θ over the score blocks b (zero at ignored positions):
    empirical b = ∂L/∂f (D = n (∂L/∂θ)²); exact: one block per class k, b_r = √p_rk (e_k − p_r)."""
    torch.manual_seed(0)
    lam, eps, v = 1e-3, 1e-3, 5
    model = ScaledLM(v).double()
    x, y = tokens(3, 4, v, ignored=[(0, 2), (1, 0)])
    precond = ngt.Preconditioner(model, fisher=kind, damping=lam, kl_radius=eps)
    assert precond.diagonal_blocks == ["<model>"] and precond.kfac_layers == ["lm.emb", "lm.head"]
    info, g = loss_step(model, precond, x, y)
    mask = (y != IGNORE).reshape(-1, 1).double()
    n = int(mask.sum())
    if kind == "empirical":
        D = n * g["scale"].square()
    else:
        out = model(x).reshape(-1, v)
        p = torch.softmax(out.detach(), 1)
        D = torch.zeros(v, dtype=torch.float64)
        for k in range(v):
            b = mask * p[:, k : k + 1].sqrt() * (F.one_hot(torch.tensor(k), v).double() - p)
            (gk,) = torch.autograd.grad((b * out).sum(), model.scale, retain_graph=True)
            D += gk.square()
        D /= n
    torch.testing.assert_close(model.scale.grad, info.beta * g["scale"] / (D + lam), rtol=1e-10, atol=1e-15)


# --------------------------------------------------------------------------- 12. MultiheadAttention
class MHAModel(nn.Module):
    def __init__(self, v=6, d=4):
        super().__init__()
        self.emb = nn.Embedding(v, d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, v)

    def forward(self, x):
        e = self.emb(x)
        a, _ = self.attn(e, e, e, need_weights=False)
        return self.head(e + a)


def test_multihead_attention_gets_the_loose_diagonal():
    torch.manual_seed(0)
    lam, eps = 1e-3, 1e-3
    model = MHAModel().double()
    x, y = tokens(3, 4, 6, ignored=[(2, 2)])
    precond = ngt.Preconditioner(model, fisher="empirical", damping=lam, kl_radius=eps)
    assert precond.fallback_modules == ["attn"]
    assert "attn" in precond.diagonal_blocks and precond.kfac_layers == ["emb", "head"]
    info, g = loss_step(model, precond, x, y)
    n = int((y != IGNORE).sum())
    assert info.n_samples == n and math.isfinite(info.beta) and info.beta > 0
    for name, p in model.attn.named_parameters():
        gp = g[f"attn.{name}"]
        assert bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().max()) > 0, name
        # the loose diagonal of the empirical Fisher: D = n (∂L/∂θ)²
        torch.testing.assert_close(p.grad, info.beta * gp / (n * gp.square() + lam), rtol=1e-10, atol=1e-15)
