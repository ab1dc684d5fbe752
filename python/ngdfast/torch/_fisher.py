"""Output distributions, Fisher kinds and the output-space score rows.

The model's output ``f(x)`` (shape (N, C)) parameterises a distribution:

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


def choice(value, allowed, name: str, func: str):
    """``value`` if it is one of ``allowed``, else a ``ValueError`` naming the argument."""
    if not any(value is a or (isinstance(value, str) and value == a) for a in allowed):
        raise ValueError(f"{func}: {name} must be one of {allowed}, got {value!r}")
    return value


def check_outputs(loss: str, outputs, func: str) -> torch.Tensor:
    """The model output: a floating (N, C) tensor."""
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(f"{func}: the model must return a tensor (N, C), got {type(outputs).__name__}")
    if outputs.ndim != 2 or outputs.shape[0] == 0:
        raise ValueError(f"{func}: the model output must have shape (N, C) with N >= 1, got {tuple(outputs.shape)}")
    if not outputs.is_floating_point():
        raise TypeError(f"{func}: the model output must be floating point, got {outputs.dtype}")
    if loss == "cross_entropy" and outputs.shape[1] < 2:
        raise ValueError(f"{func}: loss='cross_entropy' needs at least 2 classes, got output shape {tuple(outputs.shape)}")
    return outputs


def check_targets(loss: str, outputs: torch.Tensor, targets, func: str) -> torch.Tensor:
    """Targets matching ``outputs``: class indices (N,) for cross-entropy, (N, D) floats for mse."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{func}: targets must be a tensor, got {type(targets).__name__}")
    n, c = outputs.shape
    if loss == "cross_entropy":
        if targets.shape != (n,):
            raise ValueError(
                f"{func}: targets must be class indices of shape ({n},) to match the output {tuple(outputs.shape)}, "
                f"got shape {tuple(targets.shape)}"
            )
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(f"{func}: cross-entropy targets must be integer class indices, got {targets.dtype}")
        if n and (int(targets.min()) < 0 or int(targets.max()) >= c):
            raise ValueError(
                f"{func}: targets must lie in [0, {c}), got [{int(targets.min())}, {int(targets.max())}]"
            )
        return targets.to(outputs.device)
    if tuple(targets.shape) != (n, c):
        raise ValueError(
            f"{func}: mse targets must have the output's shape {tuple(outputs.shape)}, got {tuple(targets.shape)}"
        )
    if not targets.is_floating_point():
        raise TypeError(f"{func}: mse targets must be floating point, got {targets.dtype}")
    if not bool(torch.isfinite(targets).all()):
        raise ValueError(f"{func}: targets contain NaN or Inf")
    return targets.to(device=outputs.device, dtype=outputs.dtype)


def log_likelihood(loss: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(y_i | x_i)`` per sample (N,), up to the Gaussian's constant."""
    if loss == "cross_entropy":
        return -F.cross_entropy(outputs, targets, reduction="none")
    return -0.5 * (outputs - targets).square().sum(dim=1)


def mean_loss(loss: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean negative log-likelihood ``L = −(1/N) Σ_i log p(y_i | x_i)`` whose gradient is g."""
    return -log_likelihood(loss, outputs, targets).mean()


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
