"""Output distributions, Fisher kinds and the output-space score rows.

The model's output ``f(x)``, as R rows of C values (one row per output position: see
``ngdfast.torch._outputs``), parameterises a distribution per row:

* ``loss="cross_entropy"``: categorical, ``p = softmax(f)``,
  ``log p(y | x) = f_y − log Σ_k exp f_k``; targets are class indices (N,).
* ``loss="mse"``: Gaussian with unit variance, ``log p(y | x) = −½ ‖y − f‖² + const``;
  targets have the output's shape (N, D). The matching mean loss is
  ``L = (1/N) Σ_i ½ ‖y_i − f_i‖²``; ``torch.nn.functional.mse_loss`` (mean over all N·D
  elements) is ``(2/D)·L``, which the KL-sized step does not notice (β ñ is invariant to a
  scale of g) but ``ngdfast.torch.natural_gradient`` returns ñ for ``L`` itself.

A score row at the output is ``δ = ∂ log p(y | x) / ∂f`` (``e_y − p`` for the categorical,
``y − f`` for the Gaussian). The Fisher kinds choose the labels y:

* ``"sampled"``: y ~ p(· | x) drawn with a ``torch.Generator`` (Monte-Carlo estimate of the
  Fisher of the model's output distribution; ``δ = e_y − p`` or ``δ = ξ``, ξ ~ N(0, I));
* ``"empirical"``: the data's labels;
* ``"exact"``: every outcome weighted by its probability. Categorical: C rows per sample,
  ``√p_k (e_k − p)``; Gaussian: the D rows ``e_k`` (the output Fisher is I). Then
  ``Σ_rows δ δᵀ`` is the exact output Fisher of the sample.

One scale convention everywhere: ``F = (1/N) Σ_i E_y[∇ log p(y | x_i) ∇ log p(y | x_i)ᵀ]``,
the mean over samples, as ``ngdfast.fisher`` and ``ngdfast.models``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("cross_entropy", "mse")
FISHERS = ("sampled", "empirical", "exact")
CURVATURES = ("kfac", "exact", "diagonal")
FALLBACKS = ("diagonal", "gradient", None)


def working(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the precision statistics are computed in: float32 for half and bfloat16, else as is."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def stats_dtype(param: torch.Tensor) -> torch.dtype:
    """Statistics precision: float64 for float64 parameters, float32 otherwise (also bfloat16)."""
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def log_likelihood(loss: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(y_i | x_i)`` per sample (N,), up to the Gaussian's constant."""
    if loss == "cross_entropy":
        return -F.cross_entropy(outputs, targets, reduction="none")
    return -0.5 * (outputs - targets).square().sum(dim=1)


def mean_loss(loss: str, outputs: torch.Tensor, targets: torch.Tensor, mask=None) -> torch.Tensor:
    """The mean negative log-likelihood ``L = −(1/n) Σ_r log p(y_r | x_r)`` over the n rows that
    ``mask`` keeps (all rows without one), whose gradient is g."""
    if mask is None:
        return -log_likelihood(loss, outputs, targets).mean()
    kept = torch.where(mask, targets, torch.zeros_like(targets)) if loss == "cross_entropy" else targets
    return -(log_likelihood(loss, outputs, kept) * mask).sum() / mask.sum()


def sample_targets(loss: str, outputs: torch.Tensor, generator) -> torch.Tensor:
    """Labels drawn from the model's own output distribution (one per sample)."""
    out = outputs.detach()
    if loss == "cross_entropy":
        # inverse CDF, as ngdfast.models samples (torch.multinomial is several times slower here)
        probs = torch.softmax(working(out), dim=1)
        u = torch.rand((out.shape[0], 1), generator=generator, device=out.device, dtype=probs.dtype)
        y = (torch.cumsum(probs, dim=1) < u).sum(dim=1)
        return y.clamp_(max=out.shape[1] - 1)  # round-off can leave the last sum just below u
    noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=torch.float32)
    return out + noise.to(out.dtype)


def output_rows(loss: str, kind: str, outputs: torch.Tensor, targets, generator) -> list[torch.Tensor]:
    """Score rows at the output: a list of (N, C) blocks ``δ`` (one block for sampled and
    empirical, C or D blocks for exact) with ``Σ_blocks δ_i δ_iᵀ`` the Fisher kind's estimate of
    sample i's output Fisher (weights folded in as square roots)."""
    out = working(outputs.detach())
    if kind == "exact":
        n, c = out.shape
        if loss == "cross_entropy":
            p = torch.softmax(out, dim=1)
            eye = torch.eye(c, dtype=out.dtype, device=out.device)
            return [p[:, k : k + 1].sqrt() * (eye[k] - p) for k in range(c)]
        blocks = []
        for k in range(c):
            e = torch.zeros_like(out)
            e[:, k] = 1.0
            blocks.append(e)
        return blocks
    y = sample_targets(loss, out, generator) if kind == "sampled" else targets
    if loss == "cross_entropy":
        p = torch.softmax(out, dim=1)
        return [F.one_hot(y, out.shape[1]).to(out.dtype) - p]
    return [working(y) - out]
