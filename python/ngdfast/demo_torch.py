"""``python -m ngdfast demo --framework torch``: K-FAC NGD in a plain torch loop.

A small CNN on the same digits split and preprocessing as the NumPy demo
(:func:`ngdfast.demo.load_digits_split`; the 64 pixels as one 8×8 channel)::

    Conv2d(1, 16, 3, padding=1) -> tanh -> AvgPool2d(2) -> Flatten -> Linear(256, 10)

(P = 2730, float32), trained on the full training set by

* ``gd``: ``torch.optim.SGD`` (full batch, so plain gradient descent) and
  ``adam``: ``torch.optim.Adam``, each with the learning rate of a small grid
  that ends lowest on the same budget, as in the NumPy demo;
* ``ngd-kfac``: ``ngdfast.torch.Preconditioner(curvature="kfac")`` between
  ``loss.backward()`` and ``torch.optim.SGD(lr=1).step()``: factors from labels
  sampled from the model, a step of KL radius ε, damping λ adapted
  (Levenberg-Marquardt, ``report_loss``, λ ≥ l2) from the initial ``CONFIG`` value;
* ``ngd-exact``: the same loop with ``curvature="exact"``: the exact sampled
  Fisher of a random batch of ``FISHER_BATCH`` training images, solved by
  ``ngdfast.natural_gradient`` (Woodbury).

The objective, the timing rules (only optimisation work timed, ``--repeats``
with the per-step minimum kept), the table, plot and JSON are the NumPy demo's
(:mod:`ngdfast.demo`); ``"model"`` in the JSON is ``"cnn"``. torch is imported
only by this module, which only the torch demo imports.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .demo import Run, _fastest, _grid_search, _progress, timed_run

#: L2 penalty, step budget, learning-rate grids and the NGD settings (chosen once for
#: this data, not tuned per run): KL radius ε and the initial damping λ (adapted, ≥ l2).
CONFIG = {
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
    """The demo's CNN for 8×8 single-channel images, 10 classes."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * 16, 10),
    )


@dataclass
class TorchProblem:
    """A torch model's data and penalised objective ``CE + (l2/2)‖θ‖²``."""

    name: str
    X: torch.Tensor
    y: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    l2: float

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


def _images(X) -> torch.Tensor:
    return torch.as_tensor(X, dtype=torch.float32).reshape(-1, 1, 8, 8)


def _fresh(state0) -> nn.Module:
    model = make_cnn()
    model.load_state_dict(copy.deepcopy(state0))
    return model


def _first_order(problem, state0, steps, settings, bar, optimizer) -> Run:
    model = _fresh(state0)
    opt = optimizer(model.parameters())

    def step(t):
        opt.zero_grad()
        problem.objective(model).backward()
        opt.step()

    return timed_run(problem, model, steps, settings, bar, step)


def run_gd(problem, state0, steps, lr, bar) -> Run:
    return _first_order(problem, state0, steps, {"lr": lr, "optimizer": "torch.optim.SGD"}, bar,
                        lambda params: torch.optim.SGD(params, lr=lr))


def run_adam(problem, state0, steps, lr, bar) -> Run:
    return _first_order(problem, state0, steps, {"lr": lr, "optimizer": "torch.optim.Adam"}, bar,
                        lambda params: torch.optim.Adam(params, lr=lr))


def run_ngd(problem, state0, steps, settings, seed, bar) -> Run:
    """``loss.backward(); precond.step(); opt.step()`` with ``torch.optim.SGD(lr=1)``."""
    import ngdfast.torch as ngt

    model = _fresh(state0)
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


def train_torch(args, X, y, X_test, y_test) -> dict:
    """``{"cnn": {"gd": Run, "adam": Run, "ngd-...": Run}}`` for the demo's command line."""
    config = dict(CONFIG)
    steps = args.steps or config["steps"]
    if args.quick:
        steps = args.steps or 12
        config["gd_grid"] = config["gd_grid"][1:3]
        config["adam_grid"] = config["adam_grid"][1:3]
    problem = TorchProblem("cnn", _images(X), torch.as_tensor(y), _images(X_test), torch.as_tensor(y_test),
                           config["l2"])
    torch.manual_seed(args.seed)
    state0 = make_cnn().state_dict()
    n_params = sum(p.numel() for p in make_cnn().parameters())
    progress = not args.no_progress
    print(f"\ncnn: Conv2d(1, {CHANNELS}, 3, padding=1) -> tanh -> AvgPool2d(2) -> Linear({CHANNELS * 16}, 10), "
          f"P = {n_params}, float32, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{len(y)} train / {len(y_test)} test samples, l2 = {config['l2']:g}, {steps} steps")
    runs = {
        "gd": _grid_search("gd", run_gd, problem, state0, steps, config["gd_grid"], progress, args.repeats),
        "adam": _grid_search("adam", run_adam, problem, state0, steps, config["adam_grid"], progress,
                             args.repeats),
    }
    for name, settings in config["ngd"].items():
        fisher = (f"exact Fisher of {FISHER_BATCH} images" if settings["curvature"] == "exact"
                  else f"K-FAC factors (EMA decay {DECAY:g})")
        print(f"  {name:<12} kl_radius {settings['kl_radius']:g}, damping {settings['damping']:g} (adaptive), "
              f"{fisher} from sampled labels, every step; torch.optim.SGD(lr=1)")
        with _progress(steps * args.repeats, f"cnn: {name}", progress) as bar:
            runs[name] = run_ngd(problem, state0, steps, settings, args.seed + 1, bar)
            for _ in range(args.repeats - 1):
                _fastest(runs[name], run_ngd(problem, state0, steps, settings, args.seed + 1, bar))
    return {"cnn": runs}
