"""Diagonal Fisher blocks of normalisation layers in closed form (no ``torch.func``).

A norm layer computes ``y = x̂ ⊙ γ + β`` with ``x̂`` its normalised input, so for an output
gradient δ the gradient of one row (or sample) is ``δ ⊙ x̂`` for γ and δ for β, summed over
whatever the parameter is shared across within that row:

* ``nn.LayerNorm`` / ``nn.RMSNorm``: x̂ over the trailing ``normalized_shape``; each leading
  position is a row (``x / rms(x)`` for RMSNorm, with its ``eps``, or the dtype's epsilon).
* ``nn.BatchNorm1d/2d/3d``: x̂ per channel with the batch's statistics in training mode (held
  constant: the usual diagonal approximation, since they couple the samples) or the running
  ones in eval mode; each sample is a row, summed over its locations.
* ``nn.GroupNorm``: x̂ per sample and group; each sample is a row, summed over its locations.

:func:`square_sums` returns ``Σ_rows (row gradient)²`` per parameter, which the capture scales
like every diagonal block (divided by the number of output positions counted). With
``stats_samples`` it keeps the chosen samples' rows; a BatchNorm in training mode normalises by
the whole batch's statistics first, as its forward did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_RMS = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
KINDS = (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm) + _RMS


def supported(module: nn.Module) -> bool:
    """Whether ``module`` is a norm layer with a closed-form block (for whichever of γ, β train)."""
    return isinstance(module, KINDS)


def normalised(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x̂``: the module's input normalised as its forward does, without γ and β."""
    x = x.detach()
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    if _RMS and isinstance(module, _RMS):
        dims = tuple(range(-len(module.normalized_shape), 0))
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        return x * torch.rsqrt(x.square().mean(dims, keepdim=True) + eps)
    if isinstance(module, nn.GroupNorm):
        return F.group_norm(x, module.num_groups, None, None, module.eps)
    # BatchNorm
    if module.training or module.running_mean is None:
        dims = [0] + list(range(2, x.ndim))
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
    else:
        mean, var = module.running_mean, module.running_var
    return F.batch_norm(x, mean, var, None, None, False, 0.0, module.eps)


def batched(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether the input has leading rows or samples: positions before LayerNorm's / RMSNorm's
    ``normalized_shape``, samples before a BatchNorm's or GroupNorm's channels."""
    if isinstance(module, (nn.LayerNorm,) + _RMS):
        return x.ndim > len(module.normalized_shape)
    return x.ndim >= 2


def row_grads(module: nn.Module, names: list[str], xh: torch.Tensor, delta: torch.Tensor, dtype):
    """Per-row gradients ``{name: (R, *param.shape)}`` of γ (``weight``) and β (``bias``), from
    the normalised input ``xh`` (:func:`normalised`) and the output gradient ``delta``."""
    xh = xh.to(dtype)
    d = delta.detach().to(dtype)
    out = {}
    if isinstance(module, (nn.LayerNorm,) + _RMS):
        shape = tuple(module.normalized_shape)
        if "weight" in names:
            out["weight"] = (d * xh).reshape((-1,) + shape)
        if "bias" in names:
            out["bias"] = d.reshape((-1,) + shape)
        return out
    # BatchNorm / GroupNorm: channels on dim 1, samples on dim 0 (an unbatched BatchNorm1d input
    # (N, C) has no locations)
    spatial = tuple(range(2, d.ndim))
    if "weight" in names:
        out["weight"] = (d * xh).sum(spatial) if spatial else d * xh
    if "bias" in names:
        out["bias"] = d.sum(spatial) if spatial else d
    return out


def square_sums(module: nn.Module, names: list[str], x: torch.Tensor, deltas: list[torch.Tensor], dtype,
                select=None):
    """``Σ_blocks Σ_rows (row gradient)²`` for each parameter ``names`` (in that order).

    ``select`` (optional): keeps the rows of some samples of x and of each δ (``stats_samples``).
    A BatchNorm in training mode normalises by the statistics of the whole batch, as its forward
    did, before the rows are selected; the other kinds normalise each row on its own.
    """
    if select is None:
        xh = normalised(module, x)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        xh = select(normalised(module, x))
    else:
        xh = normalised(module, select(x))
    if select is not None:
        deltas = [select(d) for d in deltas]
    sums = [torch.zeros(module.get_parameter(n).shape, dtype=dtype, device=x.device) for n in names]
    for d in deltas:
        grads = row_grads(module, names, xh, d, dtype)
        for s, n in zip(sums, names):
            s.add_(grads[n].square().sum(0))
    return sums
