"""Argument rules of ``ngdfast.torch``: one function per kind of argument, shared by
``Preconditioner``/``NGD`` and ``natural_gradient`` (the numeric ones, such as damping and
kl_radius, are ``ngdfast._validation``'s, shared with the NumPy side).

Messages start with the public callable's name and name the argument, as everywhere in
ngdfast.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _linalg



def choice(value, allowed, name: str, func: str):
    """``value`` if it is one of ``allowed``, else a ``ValueError`` naming the argument."""
    if not any(value is a or (isinstance(value, str) and value == a) for a in allowed):
        raise ValueError(f"{func}: {name} must be one of {allowed}, got {value!r}")
    return value


def module(model, func: str) -> nn.Module:
    """``model`` if it is a ``torch.nn.Module``, else ``TypeError``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{func}: model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def uncompiled(model: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (``OptimizedModule._orig_mod``), else ``model``: hooks
    and parameters are the original module's, and its compiled forward calls them."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) and type(model).__name__ == "OptimizedModule" else model


def generator(gen, func: str):
    """None or a ``torch.Generator``, else ``TypeError``."""
    if gen is not None and not isinstance(gen, torch.Generator):
        raise TypeError(f"{func}: generator must be a torch.Generator, got {type(gen).__name__}")
    return gen


def trainable(model: nn.Module, func: str) -> tuple[list[str], list[torch.nn.Parameter]]:
    """Names and tensors of the parameters with ``requires_grad``; ``ValueError`` when there are none."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"{func}: the model has no trainable parameters")
    return [n for n, _ in named], [p for _, p in named]


def finite(t: torch.Tensor, func: str, what: str) -> torch.Tensor:
    """``t`` unless it holds NaN/Inf: then ``ValueError`` naming ``what``."""
    if not _linalg.finite(t):
        raise ValueError(f"{func}: {what} contains NaN or Inf")
    return t


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
