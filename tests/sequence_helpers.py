"""Shared pieces of the sequence-model tests (test_torch_blocks.py, test_torch_positions.py):
token batches with ignored positions, a K-FAC step by hand, per-position score rows."""

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, grad, vmap  # noqa: E402


IGNORE = -100


# --------------------------------------------------------------------------- helpers
def ce(out, y):
    """Mean cross-entropy over the counted positions of (N, *, C) logits (classes last)."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=IGNORE)


def tokens(b, t, v, seed=1, ignored=()):
    """Inputs and next-token-like targets (B, T); ``ignored`` positions get IGNORE."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, v, (b, t), generator=g)
    y = torch.randint(0, v, (b, t), generator=g)
    for i, j in ignored:
        y[i, j] = IGNORE
    return x, y


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def eye_like(M):
    return torch.eye(M.shape[0], dtype=M.dtype)


def kfac_by_hand(G, A, S, lam):
    """``S̃⁻¹ G Ã⁻¹``: Ã = A + π√λ I, S̃ = S + (√λ/π) I, π = sqrt((tr A/in)/(tr S/out)); a
    vector factor is a diagonal (its trace is its sum)."""
    def tr(M):
        return float(M.sum() if M.ndim == 1 else torch.trace(M))

    pi = math.sqrt((tr(A) / A.shape[0]) / (tr(S) / S.shape[0]))
    da, ds = pi * math.sqrt(lam), math.sqrt(lam) / pi
    X = G / (S + ds)[:, None] if S.ndim == 1 else torch.linalg.solve(S + ds * eye_like(S), G)
    return X / (A + da)[None, :] if A.ndim == 1 else torch.linalg.solve(A + da * eye_like(A), X.T).T


def with_bias_column(rows):
    return torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], 1)


def loss_step(model, precond, x, y, loss_fn=ce, **kwargs):
    """zero_grad, loss, backward, ``precond.step``: ``(info, {name: g before the step})``."""
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    g = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return precond.step(**kwargs), g


def assert_step(model, info, nat, g, eps, rtol=1e-10):
    """``.grad == β ñ`` for every parameter in ``nat`` with ``β = sqrt(2ε / gᵀñ)`` (gᵀñ over ``nat``)."""
    q = math.fsum(float((g[k] * v).sum()) for k, v in nat.items())
    assert info.quadratic == pytest.approx(q, rel=rtol)
    assert info.beta == pytest.approx(math.sqrt(2 * eps / q), rel=rtol)
    params = dict(model.named_parameters())
    for k, v in nat.items():
        torch.testing.assert_close(params[k].grad, info.beta * v, rtol=rtol, atol=1e-14, msg=k)


def per_sample_scores(model, x, y, class_dim=-1):
    """``{name: (N, *shape)}``: ∇θ Σ_t log p(y_it | x_i) of each sample i (dim 0 of x and y),
    by torch.func on one sample at a time (the trainable parameters only)."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = dict(model.named_buffers())

    def log_p(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi[None],))
        if class_dim == 1:
            return -F.cross_entropy(out, yi[None], reduction="sum", ignore_index=IGNORE)
        return -F.cross_entropy(out.reshape(-1, out.shape[-1]), yi.reshape(-1), reduction="sum", ignore_index=IGNORE)

    return vmap(grad(log_p), in_dims=(None, 0, 0))(params, x, y)


class EmbLM(nn.Module):
    """Embedding, tanh, Linear head: (B, T) tokens to (B, T, V) logits."""

    def __init__(self, v=7, d=4, padding_idx=None, sparse=False):
        super().__init__()
        self.emb = nn.Embedding(v, d, padding_idx=padding_idx, sparse=sparse)
        self.head = nn.Linear(d, v)

    def forward(self, x):
        return self.head(torch.tanh(self.emb(x)))
