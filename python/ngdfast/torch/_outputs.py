"""What the model returns, as rows of the output distribution.

Every *position* of the output is a sample of the Fisher. A model returns

* ``(N, C)``: one position per sample (a classifier);
* ``(N, *, C)`` with the classes (or, for ``loss="mse"``, the D values) on the last dimension,
  ``class_dim=-1``: the language-model convention, logits (B, T, V);
* ``(N, C, *)`` with ``class_dim=1``: the layout ``F.cross_entropy`` takes for segmentation.

:class:`Outputs` turns such a tensor into ``R = N·∏*`` rows of C values (a view where the
layout allows) and back, and checks targets against it. Targets equal to ``ignore_index``
(cross-entropy) are positions that contribute nothing: not to g, not to the Fisher, not to the
count of samples.

``output`` picks the tensor from what the model returns: ``None`` (the model returns a
tensor), a string (a key of a dict, or an attribute: Hugging Face ``ModelOutput`` has both,
e.g. ``"logits"``), an integer (an index of a tuple) or a callable.
"""

from __future__ import annotations

import torch

CLASS_DIMS = (-1, 1)


class Outputs:
    """How to read the model's output (see the module docstring)."""

    def __init__(self, loss: str, output=None, class_dim=-1, ignore_index=-100, func: str = "ngdfast.torch"):
        if not (output is None or isinstance(output, (str, int)) or callable(output)) or isinstance(output, bool):
            raise TypeError(f"{func}: output must be None, a key or attribute name, a tuple index or a callable, "
                            f"got {type(output).__name__}")
        if isinstance(class_dim, bool) or class_dim not in CLASS_DIMS:
            raise ValueError(f"{func}: class_dim must be one of {CLASS_DIMS}, got {class_dim!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"{func}: ignore_index must be an integer, got {type(ignore_index).__name__}")
        self.loss = loss
        self.output = output
        self.class_dim = class_dim
        self.ignore_index = ignore_index
        self.func = func

    def pick(self, returned):
        """The output tensor within what the model returned (unchecked)."""
        sel = self.output
        if sel is None:
            return returned
        if callable(sel):
            return sel(returned)
        if isinstance(sel, int):
            if not isinstance(returned, (tuple, list)):
                raise TypeError(f"{self.func}: output={sel} picks a tuple element, but the model returned "
                                f"{type(returned).__name__}")
            return returned[sel]
        if isinstance(returned, dict) and sel in returned:
            return returned[sel]
        if hasattr(returned, sel):
            return getattr(returned, sel)
        raise TypeError(f"{self.func}: output={sel!r}: the model returned {type(returned).__name__} "
                        f"without such a key or attribute")

    def tensor(self, returned) -> torch.Tensor:
        """The checked output tensor: floating point, (N, C) or (N, *, C) / (N, C, *)."""
        out = self.pick(returned)
        if not isinstance(out, torch.Tensor):
            hint = "" if self.output is not None else (
                "; pass output= to pick it (a key such as 'logits', a tuple index or a callable)")
            raise TypeError(f"{self.func}: the model must return a tensor (N, C) or (N, *, C), "
                            f"got {type(out).__name__}{hint}")
        if out.ndim < 2 or out.shape[0] == 0 or out.numel() == 0:
            raise ValueError(f"{self.func}: the model output must have shape (N, C) or (N, *, C) with N >= 1 "
                             f"and no empty dimension, got {tuple(out.shape)}")
        if not out.is_floating_point():
            raise TypeError(f"{self.func}: the model output must be floating point, got {out.dtype}")
        if self.loss == "cross_entropy" and out.shape[self.class_dim] < 2:
            raise ValueError(f"{self.func}: loss='cross_entropy' needs at least 2 classes on dimension "
                             f"{self.class_dim}, got output shape {tuple(out.shape)}")
        return out

    def classes(self, out: torch.Tensor) -> int:
        return out.shape[self.class_dim]

    def positions(self, out: torch.Tensor) -> tuple[int, ...]:
        """The shape of the positions, (N, *): the output's shape without the class dimension."""
        shape = list(out.shape)
        del shape[self.class_dim]
        return tuple(shape)

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` shaped like the output as (R, C) rows (a view when the layout allows)."""
        if self.class_dim == 1 and t.ndim > 2:
            t = t.movedim(1, -1)
        return t.reshape(-1, t.shape[-1])

    def unrows(self, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`rows`: (R, C) back to the output's shape."""
        if self.class_dim == 1 and out.ndim > 2:
            return rows.reshape(self.positions(out) + (rows.shape[-1],)).movedim(-1, 1)
        return rows.reshape(out.shape)

    def targets(self, out: torch.Tensor, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked targets as rows and the mask of counted positions: ``(y (R,) or (R, D), mask (R,))``."""
        func = self.func
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"{func}: targets must be a tensor, got {type(targets).__name__}")
        pos = self.positions(out)
        c = self.classes(out)
        if self.loss == "cross_entropy":
            if tuple(targets.shape) != pos:
                raise ValueError(f"{func}: targets must be class indices of shape {pos} to match the output "
                                 f"{tuple(out.shape)} (class_dim={self.class_dim}), got shape {tuple(targets.shape)}")
            if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
                raise TypeError(f"{func}: cross-entropy targets must be integer class indices, got {targets.dtype}")
            y = targets.reshape(-1).to(out.device)
            mask = y != self.ignore_index
            if not bool(mask.any()):
                raise ValueError(f"{func}: every target equals ignore_index={self.ignore_index}: no position to fit")
            valid = y[mask]
            lo, hi = int(valid.min()), int(valid.max())
            if lo < 0 or hi >= c:
                raise ValueError(f"{func}: targets must lie in [0, {c}) or equal ignore_index={self.ignore_index}, "
                                 f"got [{lo}, {hi}]")
            return y, mask
        if tuple(targets.shape) != tuple(out.shape):
            raise ValueError(f"{func}: mse targets must have the output's shape {tuple(out.shape)}, "
                             f"got {tuple(targets.shape)}")
        if not targets.is_floating_point():
            raise TypeError(f"{func}: mse targets must be floating point, got {targets.dtype}")
        if not bool(torch.isfinite(targets).all()):
            raise ValueError(f"{func}: targets contain NaN or Inf")
        y = self.rows(targets.to(device=out.device, dtype=out.dtype))
        return y, torch.ones(y.shape[0], dtype=torch.bool, device=out.device)
