"""Layers K-FAC factors: ``nn.Linear`` and ``nn.Conv2d`` (groups = 1) as matrices.

A layer is a matrix ``W̄`` of shape (out, in) acting on rows ``ā`` (bias as an extra input
column of ones, as in ``ngdfast.models``): ``z = ā W̄ᵀ``.

* ``nn.Linear``: ``W̄ = [W, b]``; every leading position of the input (N, *, in) is a row.
* ``nn.Conv2d``: ``W̄ = [W.reshape(out, C_in·kh·kw), b]``; the rows are the unfolded input
  patches (Grosse & Martens' KFC), one per sample and output location, with the layer's own
  stride, padding (any mode, also ``"same"``), dilation.

For a layer whose input in sample i has rows ``ā_it`` (t over T_i locations) and output
gradients ``δ_it = ∂ log p / ∂z_it``, the factors are (KFC's spatially uncorrelated
approximation; T = 1 for a Linear layer on (N, in) inputs, which is exactly
``ngdfast.models.MLP.kfac_stats``)::

    A = mean over all rows (i, t) of ā āᵀ,      S = (1/N) Σ_i Σ_t δ_it δ_itᵀ,

so that ``F_layer ≈ S ⊗ A`` for the row-major flattening of ``W̄``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def supported(module: nn.Module) -> bool:
    """Whether K-FAC handles ``module``: Linear, or Conv2d with groups = 1 (trainable weight)."""
    if type(module) is nn.Linear or (type(module) is nn.Conv2d and module.groups == 1):
        return module.weight.requires_grad and (module.bias is None or module.bias.requires_grad)
    return False


class Layer:
    """One K-FAC layer: its module, name and matrix shape (out, in)."""

    def __init__(self, name: str, module: nn.Module):
        self.name = name
        self.module = module
        self.conv = isinstance(module, nn.Conv2d)
        w = module.weight
        self.has_bias = module.bias is not None
        self.out_dim = w.shape[0]
        self.in_dim = w[0].numel() + int(self.has_bias)
        self.params = [w] + ([module.bias] if self.has_bias else [])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_dim, self.in_dim)

    def input_rows(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows ``ā`` (R, in) of the layer input ``x``, in ``dtype``, with the ones column."""
        rows = self.weight_rows(x, dtype)
        if self.has_bias:
            rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
        return rows

    def weight_rows(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows ``a`` (R, in − bias) of the layer input ``x``, in ``dtype``, without the ones column."""
        x = x.detach()
        if self.conv:
            m = self.module
            if isinstance(m.padding, str):
                pad = (0, 0)
                if m.padding == "same":
                    x = F.pad(x, _same_padding(m), mode=_pad_mode(m))
            elif m.padding_mode != "zeros":
                x = F.pad(x, tuple(p for p in reversed(m.padding) for _ in range(2)), mode=_pad_mode(m))
                pad = (0, 0)
            else:
                pad = m.padding
            patches = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=pad, stride=m.stride)
            rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        else:
            rows = x.reshape(-1, x.shape[-1])
        return rows.to(dtype)

    def output_rows(self, delta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows (R, out) of an output gradient ``delta`` shaped like the layer output."""
        if self.conv:
            delta = delta.movedim(1, -1)
        return delta.reshape(-1, self.out_dim).to(dtype)

    def grad_matrix(self, grads: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """``[∇W, ∇b]`` as one (out, in) matrix in ``dtype``."""
        g = grads[0].reshape(self.out_dim, -1).to(dtype)
        if self.has_bias:
            g = torch.cat([g, grads[1].reshape(self.out_dim, 1).to(dtype)], dim=1)
        return g

    def split(self, X: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of :meth:`grad_matrix`: tensors shaped like the weight (and bias)."""
        w = self.params[0]
        parts = [X[:, : self.in_dim - int(self.has_bias)].reshape(w.shape)]
        if self.has_bias:
            parts.append(X[:, -1].reshape(self.params[1].shape))
        return parts


def _pad_mode(m: nn.Conv2d) -> str:
    return "constant" if m.padding_mode == "zeros" else m.padding_mode


def _same_padding(m: nn.Conv2d) -> tuple[int, int, int, int]:
    """F.pad widths (left, right, top, bottom) of ``padding="same"``, as torch splits them."""
    pads = []
    for d, k in zip(reversed(m.dilation), reversed(m.kernel_size)):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def classify(model: nn.Module, curvature: str, fallback, func: str):
    """K-FAC layers, diagonal modules and plain-gradient modules ``(name, module, param names)``."""
    layers, diagonal, gradient_only, unsupported, seen = [], [], [], [], set()
    if curvature == "exact":
        return layers, diagonal, gradient_only  # torch.func differentiates every parameter
    for name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad and id(p) not in seen]
        if not own:
            continue
        seen.update(id(p) for _, p in own)
        names = [n for n, _ in own]
        label = name or "<model>"
        if curvature == "kfac" and supported(module):
            layers.append(Layer(label, module))
        elif curvature == "diagonal" or (curvature == "kfac" and fallback == "diagonal"):
            diagonal.append((label, module, names))
        elif curvature == "kfac" and fallback == "gradient":
            gradient_only.append((label, module, names))
        else:
            unsupported.append(f"{label} ({type(module).__name__}: {', '.join(names)})")
    if unsupported:
        raise ValueError(
            f"{func}: K-FAC cannot factor these modules with trainable parameters: {'; '.join(unsupported)}. "
            "Choose fallback='diagonal' or 'gradient', or freeze them (requires_grad=False)")
    return layers, diagonal, gradient_only
