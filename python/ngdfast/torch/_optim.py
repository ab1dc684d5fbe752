"""``NGD``: the preconditioner and the parameter update in one ``torch.optim.Optimizer``."""

from __future__ import annotations

import torch
from torch import nn

from .. import _validation
from ._preconditioner import Preconditioner


class NGD(torch.optim.Optimizer):
    r"""All-in-one optimizer: :class:`Preconditioner` then ``θ ← θ − lr · β ñ``.

    ``lr=1`` (the default) is the KL-sized natural-gradient step itself; the loop is the
    usual one::

        opt = ngdfast.torch.NGD(model, kl_radius=1e-3, damping=1e-3)
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()

    Parameters
    ----------
    model : nn.Module
    lr : float
        Multiplies the step (1: exactly ε of predicted KL).
    **kwargs
        :class:`Preconditioner` settings (curvature, loss, fisher, kl_radius, damping, ...).

    Attributes
    ----------
    preconditioner : Preconditioner
        ``preconditioner.last_step`` reports the last step.

    Examples
    --------
    >>> import torch
    >>> from ngdfast.torch import NGD
    >>> _ = torch.manual_seed(0)                              # the layers' initial weights
    >>> gen = torch.Generator().manual_seed(0)               # the data and the sampled labels
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> x, y = torch.randn(64, 4, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    >>> opt = NGD(model, kl_radius=1e-2, damping=1e-2, generator=gen)
    >>> before = torch.nn.functional.cross_entropy(model(x), y).item()
    >>> for _ in range(5):
    ...     opt.zero_grad()
    ...     torch.nn.functional.cross_entropy(model(x), y).backward()
    ...     info = opt.step()
    >>> torch.nn.functional.cross_entropy(model(x), y).item() < before
    True
    """

    def __init__(self, model: nn.Module, lr: float = 1.0, **kwargs):
        lr = _validation.nonnegative(lr, "NGD", "lr")
        self.preconditioner = Preconditioner(model, **kwargs)
        super().__init__([p for p in model.parameters() if p.requires_grad], {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None, *, inputs=None, targets=None):
        """Precondition the gradients and move: ``θ ← θ − lr · β ñ``; returns ``closure()``'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.preconditioner.step(inputs, targets)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return loss

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["preconditioner"] = self.preconditioner.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.preconditioner.load_state_dict(state_dict.pop("preconditioner"))
        super().load_state_dict(state_dict)
