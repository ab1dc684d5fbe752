"""ngdfast.torch: natural gradient descent in an ordinary PyTorch training loop.

Five added lines::

    import ngdfast.torch as ngt
    precond = ngt.Preconditioner(model, kl_radius=1e-3, damping=1e-3)   # K-FAC, sampled Fisher
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        precond.step()      # .grad <- β ñ,  ñ = (F + λI)⁻¹ g,  β = sqrt(2ε / gᵀñ)
        opt.step()          # θ <- θ − β ñ: the output distribution moves by KL ≈ ε

``ngt.NGD(model)`` is the same as one ``torch.optim.Optimizer`` (with a running average of the
steps: ``momentum=0.6``), and
a function for trainers that keep their own loop::

    nat = ngt.natural_gradient(model, x, y, curvature="exact", fisher="empirical", damping=1e-3)

Conventions (the same as ``ngdfast`` and ``ngdfast.models``): F is the mean over samples of
``∇log p ∇log pᵀ``; g is the gradient of the *mean* loss; a layer's bias is an extra input
column for K-FAC. Installed with ``pip install 'ngdfast[torch]'``; ``import ngdfast`` never
imports torch.
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "ngdfast.torch needs PyTorch (torch >= 2.1), which is not installed: "
        "pip install 'ngdfast[torch]'"
    ) from exc

from ._fisher import CURVATURES, FISHERS, LOSSES
from ._optim import NGD
from ._preconditioner import Preconditioner, StepInfo
from .functional import natural_gradient

__all__ = ["CURVATURES", "FISHERS", "LOSSES", "NGD", "Preconditioner", "StepInfo", "natural_gradient"]
