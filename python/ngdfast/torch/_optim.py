"""``NGD``: the preconditioner and the parameter update in one ``torch.optim.Optimizer``."""

from __future__ import annotations

import torch
from torch import nn

from .. import _validation
from ._preconditioner import Preconditioner

#: ``NGD``'s default momentum μ (see docs/performance.md, "Defaults").
MOMENTUM = 0.6


class NGD(torch.optim.Optimizer):
    r"""All-in-one optimizer: :class:`Preconditioner`, then a step along a running average of the
    natural-gradient steps::

        m ← μ m + (1 − μ) β ñ,        θ ← θ − lr · m

    (``torch.optim.SGD(lr=1 − μ, momentum=μ)`` on the preconditioned gradient, exactly). With
    ``momentum=0`` and ``lr=1`` each step is the KL-sized natural-gradient step itself; with
    momentum, steps that keep their direction still add up to β ñ each (the average of equal
    steps is that step) and steps that keep changing it partly cancel. The loop is the usual
    one::

        opt = ngdfast.torch.NGD(model)
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()

    Parameters
    ----------
    model : nn.Module
    lr : float
        Multiplies the step (1: the average of KL-sized steps).
    momentum : float in [0, 1)
        μ.
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

    def __init__(self, model: nn.Module, lr: float = 1.0, momentum: float = MOMENTUM, **kwargs):
        lr = _validation.nonnegative(lr, "NGD", "lr")
        momentum = _validation.decay_arg(momentum, "NGD", running=True, name="momentum")
        self.preconditioner = Preconditioner(model, **kwargs)
        super().__init__([p for p in model.parameters() if p.requires_grad], {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None, *, inputs=None, targets=None):
        """Precondition the gradients and move: ``θ ← θ − lr · β ñ``; returns ``closure()``'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.preconditioner.step(inputs, targets)
        for group in self.param_groups:
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if mu == 0.0:
                    p.add_(p.grad, alpha=-group["lr"])
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(p.grad, alpha=1.0 - mu)
                p.add_(buf, alpha=-group["lr"])
        return loss

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["preconditioner"] = self.preconditioner.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.preconditioner.load_state_dict(state_dict.pop("preconditioner"))
        super().load_state_dict(state_dict)
