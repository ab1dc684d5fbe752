"""Per-sample gradients of one module's own parameters, for the diagonal Fisher.

The K-FAC layer kinds have them in closed form (:func:`layer_square_sums`), ``Σ_t δ_it ā_itᵀ``
over the layer's positions (rows as in ``ngdfast.torch._layers``), or ``δ_r ā_rᵀ`` per row
when each row of the layer is an output position of its own. For any other leaf module with input ``x_i`` and an output gradient (cotangent) ``δ_i`` of sample i, the
per-sample gradient of its parameters θ_m is the vector-Jacobian product
``∂⟨m(x_i), δ_i⟩ / ∂θ_m``, computed for all samples at once with
``torch.func.vmap(torch.func.grad(...))`` over ``functional_call(module, ...)`` on one sample
at a time. The diagonal Fisher of θ_m is then ``mean_i (∂⟨m(x_i), δ_i⟩/∂θ_m)²``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ._layers import Layer


def square_sums(module: nn.Module, names: list[str], args: tuple, deltas: list[torch.Tensor], dtype) -> list[torch.Tensor]:
    """``Σ_blocks Σ_i (per-sample gradient)²`` for each parameter ``names`` of ``module``.

    ``args`` are the module's positional inputs (N, ...); each block of ``deltas`` is an output
    gradient (N, ...) shaped like the module's output. Sums come back in ``dtype``.
    """
    params = {n: module.get_parameter(n).detach() for n in names}

    def fn(p, *sample):
        return functional_call(module, p, tuple(a.unsqueeze(0) for a in sample))

    def inner(p, d, *sample):
        return (fn(p, *sample) * d.unsqueeze(0)).sum()

    per_sample = vmap(grad(inner), in_dims=(None, 0) + (0,) * len(args))
    sums = [torch.zeros(params[n].shape, dtype=dtype, device=params[n].device) for n in names]
    for d in deltas:
        g = per_sample(params, d.to(next(iter(params.values())).dtype), *args)
        for s, n in zip(sums, names):
            s.add_(g[n].to(dtype).square().sum(0))
    return sums


def layer_of(module: nn.Module) -> Layer:
    """The K-FAC view of a Linear/Conv/Embedding module (its rows, gradient matrix and split)."""
    return Layer("", module)


def layer_square_sums(layer: Layer, x: torch.Tensor, deltas, dtype, per_row: bool) -> list[torch.Tensor]:
    """Squared per-sample gradients of a K-FAC kind of layer, summed: sample i's gradient of W̄
    is ``Σ_t δ_it ā_itᵀ`` over its rows, or, ``per_row``, each row ``δ_r ā_rᵀ`` is a sample."""
    if per_row or layer.embedding:
        return [sum(parts) for parts in zip(*(layer.square_rows(x, d, dtype) for d in deltas))]
    g = layer.groups(x)
    rows = layer.input_rows(x, dtype).reshape(g, -1, layer.in_dim)  # (N, T, in)
    total = torch.zeros(layer.shape, dtype=dtype, device=rows.device)
    for d in deltas:
        d_rows = layer.output_rows(d, dtype).reshape(g, -1, layer.out_dim)  # (N, T, out)
        total += torch.bmm(d_rows.transpose(1, 2), rows).square().sum(0)
    return layer.split(total)
