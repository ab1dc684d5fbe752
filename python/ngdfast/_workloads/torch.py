"""The torch workloads: the digits CNN, its objective and loops.

Every loop is the plain torch one a user writes; the natural-gradient runs put
``ngdfast.torch.Preconditioner`` between ``loss.backward()`` and
``torch.optim.SGD(lr=1).step()``. Only the optimisation work is timed (forward,
backward, preconditioner, optimizer step); evaluation and bookkeeping are not.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .runs import Run, timed_run

# ---------------------------------------------------------------------------- digits CNN
#: The CNN on digits: L2 penalty, step budget, learning-rate grids and the NGD settings (chosen
#: once for this data, not tuned per run): KL radius ε and the initial damping λ (adapted, ≥ l2).
CNN_CONFIG = {
    "l2": 1e-3,
    "steps": 200,
    "gd_grid": [0.1, 0.3, 1.0, 3.0],
    "adam_grid": [0.003, 0.01, 0.03, 0.1],
    "ngd": {
        "ngd-kfac": {"curvature": "kfac", "kl_radius": 0.1, "damping": 0.011},
        "ngd-exact": {"curvature": "exact", "kl_radius": 0.03, "damping": 0.011},
    },
}
FISHER_BATCH = 256  #: images whose sampled-label scores give ngd-exact's Fisher
DECAY = 0.8  #: EMA factor of the K-FAC factors, as the NumPy demo's
MAX_STEP = 1.0  #: cap on β: never longer than the damped Gauss-Newton step
CHANNELS = 16


def make_cnn(channels: int = CHANNELS) -> nn.Module:
    """The digits CNN for 8×8 single-channel images, 10 classes (P = 2730 with 16 channels)::

        Conv2d(1, 16, 3, padding=1) -> tanh -> AvgPool2d(2) -> Flatten -> Linear(256, 10)
    """
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * 16, 10),
    )


def digit_images(X) -> torch.Tensor:
    """Rows of 64 pixels (:func:`ngdfast._workloads.load_digits_split`) as (N, 1, 8, 8) float32."""
    return torch.as_tensor(X, dtype=torch.float32).reshape(-1, 1, 8, 8)


@dataclass
class DigitsProblem:
    """A torch model's data and penalised objective ``CE + (l2/2)‖θ‖²`` (full batch)."""

    name: str
    X: torch.Tensor
    y: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    l2: float

    @classmethod
    def from_split(cls, X, y, X_test, y_test, l2=CNN_CONFIG["l2"], name="cnn") -> DigitsProblem:
        """From :func:`~ngdfast._workloads.load_digits_split`'s arrays."""
        return cls(name, digit_images(X), torch.as_tensor(y), digit_images(X_test), torch.as_tensor(y_test), l2)

    def objective(self, model: nn.Module) -> torch.Tensor:
        """The training objective on the whole training set, with its graph."""
        penalty = sum(p.pow(2).sum() for p in model.parameters())
        return F.cross_entropy(model(self.X), self.y) + 0.5 * self.l2 * penalty

    @torch.no_grad()
    def evaluate(self, model: nn.Module):
        """Training objective and accuracy, test cross-entropy and accuracy (eval mode, no graph)."""
        model.eval()
        try:
            logits = model(self.X)
            penalty = sum(float(p.pow(2).sum()) for p in model.parameters())
            train = float(F.cross_entropy(logits, self.y)) + 0.5 * self.l2 * penalty
            logits_test = model(self.X_test)
            return (
                train,
                float((logits.argmax(1) == self.y).float().mean()),
                float(F.cross_entropy(logits_test, self.y_test)),
                float((logits_test.argmax(1) == self.y_test).float().mean()),
            )
        finally:
            model.train()


def _fresh_cnn(state0) -> nn.Module:
    model = make_cnn()
    model.load_state_dict(copy.deepcopy(state0))
    return model


def _first_order(problem, state0, steps, settings, bar, optimizer) -> Run:
    model = _fresh_cnn(state0)
    opt = optimizer(model.parameters())

    def step(t):
        opt.zero_grad()
        problem.objective(model).backward()
        opt.step()

    return timed_run(problem, model, steps, settings, bar, step)


def run_gd(problem, state0, steps, lr, bar) -> Run:
    """Full-batch ``torch.optim.SGD``: gradient descent."""
    return _first_order(problem, state0, steps, {"lr": lr, "optimizer": "torch.optim.SGD"}, bar,
                        lambda params: torch.optim.SGD(params, lr=lr))


def run_adam(problem, state0, steps, lr, bar) -> Run:
    """Full-batch ``torch.optim.Adam``."""
    return _first_order(problem, state0, steps, {"lr": lr, "optimizer": "torch.optim.Adam"}, bar,
                        lambda params: torch.optim.Adam(params, lr=lr))


def run_ngd(problem, state0, steps, settings, seed, bar) -> Run:
    """``loss.backward(); precond.step(); opt.step()`` with ``torch.optim.SGD(lr=1)``.

    ``settings``: ``curvature`` (``"kfac"``: factors from sampled labels, EMA ``DECAY``;
    ``"exact"``: the exact sampled Fisher of ``FISHER_BATCH`` random training images),
    ``kl_radius`` and the initial ``damping``, adapted (Levenberg-Marquardt, λ ≥ l2).
    """
    import ngdfast.torch as ngt

    model = _fresh_cnn(state0)
    generator = torch.Generator().manual_seed(seed)
    exact = settings["curvature"] == "exact"
    precond = ngt.Preconditioner(
        model, curvature=settings["curvature"], loss="cross_entropy", fisher="sampled",
        kl_radius=settings["kl_radius"], damping=settings["damping"], max_step=MAX_STEP,
        decay=DECAY, adaptive_damping=True, min_damping=problem.l2, generator=generator,
    )
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    n = len(problem.y)

    def step(t):
        opt.zero_grad()
        loss = problem.objective(model)
        if t > 1:  # Levenberg-Marquardt: how well the last step's quadratic model predicted this loss
            precond.report_loss(loss.detach())
        loss.backward()
        if exact:  # this step's Fisher: a random batch, labels sampled from the model
            idx = torch.randperm(n, generator=generator)[:FISHER_BATCH]
            precond.step(inputs=problem.X[idx], targets=problem.y[idx], loss=loss)
        else:
            precond.step(loss=loss)
        opt.step()

    recorded = dict(settings, fisher="sampled", decay=DECAY, max_step=MAX_STEP, adaptive_damping=True,
                    optimizer="torch.optim.SGD(lr=1)")
    if exact:
        recorded["fisher_batch"] = FISHER_BATCH
    return timed_run(problem, model, steps, recorded, bar, step)
