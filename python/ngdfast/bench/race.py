r"""The race: ``python -m ngdfast bench --race``, wall time to AdamW's tuned final loss.

AlgoPerf judges an optimizer by the time it needs to reach a fixed target on fixed
hardware, each method with its own declared tuning space; this is that measurement,
small enough for a laptop, between ngdfast and the optimizers a torch user picks.

Tasks (defined once in :mod:`ngdfast._workloads`, as the demos train them)
--------------------------------------------------------------------------
``cnn``
    The digits CNN (:func:`~ngdfast._workloads.torch.make_cnn`), full batch, on the
    penalised training objective :math:`\mathrm{CE} + \tfrac{l_2}{2}\|\theta\|^2`,
    ``CNN_CONFIG["steps"]`` steps, evaluated after every step. Metric: the training
    objective.
``gpt``
    The character-level GPT (:data:`~ngdfast._workloads.torch.GPT_CONFIG`) on Python's
    help text, random minibatches (the same for every optimizer), evaluated every
    ``eval_every`` steps. Metric: the held-out loss.

The target of a task is AdamW's tuned final metric: AdamW runs its grid first, its
configuration with the lowest final metric is "tuned AdamW", and its final metric
is the target :math:`L^\star` (the runs repeat one computation, so their finals agree;
should they differ in the last bits, the largest is taken, so every AdamW run reaches it).

What is measured
----------------
For every run, the cumulative wall time of the optimisation work only: forward,
backward, the preconditioner, the optimizer step (:func:`ngdfast._workloads.torch.optimisation_step`);
evaluation, data sampling and bookkeeping are not timed. For a run with curve
:math:`(s_k, t_k, L_k)` (steps, seconds, metric after evaluation k),

.. math::

    \text{steps to target} = s_{k^\star},\quad \text{seconds to target} = t_{k^\star},\quad
    k^\star = \min\{k : L_k \le L^\star\}

(never reached: infinite). Per optimizer, every configuration of its grid runs once; the
one that reaches :math:`L^\star` soonest in wall time is its best (if none does, the
one with the lowest final metric); the best runs again until there are ``runs`` runs,
and the table reports their medians (infinite, printed "-", when at most half reach
the target): steps and seconds to target, speed relative to AdamW (AdamW's median
seconds / the optimizer's: > 1 is faster) and the final metric.

Fairness rules
--------------
* One process, one thread count: torch runs with ngdfast's threads
  (``torch.set_num_threads(ngdfast.get_num_threads())``, restored afterwards).
* The same initial weights, minibatches and seeds for everyone; every run repeats
  its computation exactly (global RNGs seeded per run, the caller's state restored),
  so repeats differ only in the clock.
* No decoupled weight decay for anyone (``weight_decay=0`` where a library has it):
  the CNN's objective carries its own L2 penalty, and decay rates differ between
  libraries (torch's Muon defaults to 0.1, AdamW to 0.01); the race compares how fast
  each method minimises the same objective. Every other setting is the library's default.
* Each optimizer gets three values of its one tuned setting, spaced ×3 (ngdfast's
  KL radius ×10, which is ×√10 ≈ 3.2 in step length, since :math:`\beta \propto \sqrt{\varepsilon}`):

  =========================  ==========================  =====================  ========================
  optimizer                  setting                     cnn                    gpt
  =========================  ==========================  =====================  ========================
  AdamW (torch)              lr                          0.01, 0.03, 0.1        0.003, 0.01, 0.03
  SOAP                       lr                          0.01, 0.03, 0.1        0.003, 0.01, 0.03
  Shampoo                    lr                          0.3, 1, 3              0.1, 0.3, 1
  PSGD-Kron                  lr                          0.003, 0.01, 0.03      0.003, 0.01, 0.03
  Muon + AdamW               Muon's lr                   0.03, 0.1, 0.3         0.003, 0.01, 0.03
  SINGD                      lr                          0.3, 1, 3              0.1, 0.3, 1
  Schedule-Free AdamW        lr                          0.01, 0.03, 0.1        0.003, 0.01, 0.03
  ngdfast                    kl_radius                   default × 0.1, 1, 10   default × 0.1, 1, 10
  ngdfast defaults           none                        ``NGD(model)``
  =========================  ==========================  =====================  ========================

  Why those values: each peer's grid is centred on the learning rate with the lowest final
  metric in a sweep over decades (10⁻⁴ … 1, refined by ×3 steps where the best lay at an
  edge; one run each, one thread, on these tasks: 200 CNN steps, 150 GPT steps, AdamW's
  GPT grid at 300), so that the tuned value lies inside the grid with a neighbour on each
  side; the sweep is not part of the race. The CNN's AdamW centre, 0.03, is also the
  torch demo's Adam winner. ngdfast's grid is read from the constructor's default KL
  radius, never written here; "ngdfast defaults" is ``ngdfast.torch.NGD(model)`` with
  nothing set (the preconditioner's defaults and ``momentum=0.6``): the untuned entry, as
  Schedule-Free AdamW (the AlgoPerf self-tuning winner) is the untuned peer.

How each peer is wired
----------------------
* AdamW: ``torch.optim.AdamW(params, lr, weight_decay=0)``.
* SOAP, Shampoo, PSGD-Kron: ``pytorch_optimizer.SOAP``, ``.Shampoo``, ``.Kron`` with
  ``lr`` (and ``weight_decay=0``), their defaults otherwise: SOAP refreshes its eigenbases
  every 10 steps, Shampoo recomputes its inverse roots every step
  (``preconditioning_compute_steps=1``), Kron updates its preconditioner with a probability
  annealed from 1; Kron's einsums need ``opt_einsum`` (torch's contraction order without it
  turns a step of milliseconds into seconds), so Kron without it is skipped.
* Muon + AdamW: ``torch.optim.Muon(hidden, lr, weight_decay=0,
  adjust_lr_fn="match_rms_adamw")`` on the hidden layers' weight matrices (every
  ``nn.Linear`` but the last, the head; a convolution's filters as their
  (out, in·kh·kw) view, as Keller Jordan's Muon flattens them), ``AdamW`` at tuned
  AdamW's learning rate on the rest (embeddings, the head, biases, norms).
* SINGD: ``singd.optim.optimizer.SINGD(model, params, lr, loss_average=...)`` on every
  ``nn.Linear``/``nn.Conv2d`` (it keeps its own structured K, C per layer, dense by
  default), ``loss_average="batch"`` on the CNN and ``"batch+sequence"`` on the GPT
  (its loss is a mean over batch and positions); the GPT's embeddings and norms, which
  SINGD does not handle, go to AdamW at tuned AdamW's learning rate.
* Schedule-Free AdamW: ``schedulefree.AdamWScheduleFree(params, lr, weight_decay=0)``,
  ``optimizer.train()`` before training and ``optimizer.eval()`` around every
  evaluation, as its documentation requires
  (:func:`ngdfast._workloads.torch.evaluation_mode`).
* ngdfast: ``ngdfast.torch.NGD(model, **config)``: its preconditioner, then
  ``θ ← θ − m`` with ``m ← 0.6 m + 0.4 β ñ`` (``torch.optim.SGD(lr=0.4, momentum=0.6)`` on the
  preconditioned gradient), everything else at its defaults.

A peer that does not import (or fails on a task) is reported as skipped, with its
error, never a crash. Timings come from a machine that may be shared: read the
speeds as indicative, and repeat.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import math
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

#: The tasks, in the order they run.
TASKS = ("cnn", "gpt")
#: Metric each task is judged on: the training objective (CNN) or the held-out loss (GPT).
METRIC = {"cnn": "loss", "gpt": "test_loss"}
#: The CNN in quick mode: steps, training and held-out images (the GPT's quick settings are
#: ``GPT_CONFIG["quick"]``). Quick mode checks the bookkeeping and each peer's wiring; it measures nothing.
QUICK_CNN = {"steps": 6, "train": 256, "test": 128}
SEED = 0

#: The learning-rate grid of each peer, per task (ngdfast's comes from its defaults): three
#: values ×3 apart, centred on the best of a sweep over decades (the module's docstring says how).
GRIDS: dict[str, dict[str, list[float]]] = {
    "cnn": {
        "AdamW": [0.01, 0.03, 0.1],
        "SOAP": [0.01, 0.03, 0.1],
        "Shampoo": [0.3, 1.0, 3.0],
        "PSGD-Kron": [0.003, 0.01, 0.03],
        "Muon+AdamW": [0.03, 0.1, 0.3],
        "SINGD": [0.3, 1.0, 3.0],
        "Schedule-Free AdamW": [0.01, 0.03, 0.1],
    },
    "gpt": {
        "AdamW": [0.003, 0.01, 0.03],
        "SOAP": [0.003, 0.01, 0.03],
        "Shampoo": [0.1, 0.3, 1.0],
        "PSGD-Kron": [0.003, 0.01, 0.03],
        "Muon+AdamW": [0.003, 0.01, 0.03],
        "SINGD": [0.1, 0.3, 1.0],
        "Schedule-Free AdamW": [0.003, 0.01, 0.03],
    },
}
#: ngdfast's grid: the default KL radius times these.
KL_RADIUS_FACTORS = (0.1, 1.0, 10.0)


# ---------------------------------------------------------------------------- bookkeeping
def reach(run, target: float, metric: str) -> tuple[int, float] | None:
    """(steps, seconds) at the first evaluation with ``metric`` ≤ ``target``; None if never."""
    return run.reach(target, metric)


def target_of(adamw_runs, metric: str) -> float:
    """AdamW's final ``metric``: the largest over its runs (they repeat one computation)."""
    finals = [run.final_of(metric) for run in adamw_runs]
    target = max(finals)
    if not math.isfinite(target):
        raise RuntimeError(f"the race needs a finite target, but tuned AdamW ended at {finals}")
    return target


def pick_best(candidates, target: float, metric: str) -> int:
    """Index of the run that reaches ``target`` soonest in wall time; if none does, of the
    lowest final ``metric`` (ties: the first)."""
    hits = [(hit[1], i) for i, run in enumerate(candidates) if (hit := reach(run, target, metric))]
    if hits:
        return min(hits)[1]
    return min(range(len(candidates)), key=lambda i: candidates[i].final_of(metric))


def median(values) -> float:
    """Median, with inf for "never": more than half must be finite for a finite answer."""
    return float(statistics.median(values))


def summarise(runs, target: float, metric: str, adamw_seconds: float | None = None) -> dict[str, Any]:
    """Medians over ``runs`` of steps and seconds to ``target`` (inf when not reached) and of
    the final ``metric``; ``speed``: ``adamw_seconds`` / the median seconds (> 1: faster),
    the median's own when ``adamw_seconds`` is None (AdamW itself: 1)."""
    hits = [reach(run, target, metric) for run in runs]
    steps = median([h[0] if h else math.inf for h in hits])
    seconds = median([h[1] if h else math.inf for h in hits])
    reference = seconds if adamw_seconds is None else adamw_seconds
    speed = reference / seconds if math.isfinite(seconds) and seconds > 0 and math.isfinite(reference) else None
    return {"steps_to_target": steps, "seconds_to_target": seconds, "speed_vs_adamw": speed,
            "final": median([run.final_of(metric) for run in runs]), "reached": sum(h is not None for h in hits),
            "runs": len(runs)}


# ---------------------------------------------------------------------------- the contenders
@dataclass
class Task:
    """One race task: how to run a configuration, and what the peers need to know."""

    name: str
    metric: str
    steps: int
    eval_every: int
    train: Callable  # (settings, optimizer(model), preconditioner(model) or None, bar) -> Run
    loss_average: str  # SINGD's: over what the loss is a mean
    adamw_lr: float | None = None  # tuned AdamW's, for the parameters Muon and SINGD leave to AdamW
    description: str = ""


@dataclass
class Contender:
    """An optimizer of the race: its import, its grid on a task and how it is built."""

    name: str
    requires: str  # the module (or torch attribute) it needs, for the skip message
    optimizer: Callable  # (model, config, task) -> the torch optimizer (or an OptimizerChain)
    grid: Callable  # task -> list of configurations (dicts)
    family: str = ""  # contenders of one family share the runs of equal configurations
    describe: Callable = field(default=lambda config, task: {})  # recorded settings
    preconditioner: Callable | None = None  # (model, config) -> what rewrites .grad before the step

    def key(self, config: dict) -> tuple:
        return (self.family or self.name, tuple(sorted(config.items())))


def _load(requires: str):
    """The module (or ``torch.optim.Muon``) ``requires`` names; raises what importing raises.

    ``"a+b"``: both (PSGD-Kron needs ``opt_einsum``, without which torch contracts its
    einsums left to right: seconds for one step of a 64×256 matrix instead of milliseconds).
    """
    if "+" in requires:
        return [_load(part) for part in requires.split("+")][0]
    if requires == "torch.optim.Muon":
        import torch

        if not hasattr(torch.optim, "Muon"):
            raise ImportError(f"torch {torch.__version__} has no torch.optim.Muon (torch >= 2.9 has)")
        return torch.optim.Muon
    return importlib.import_module(requires)


def import_error(requires: str) -> str | None:
    """None when ``requires`` imports, else the reason it does not."""
    for part in requires.split("+"):
        try:
            _load(part)
        except Exception as exc:  # a peer broken on this torch raises more than ImportError
            return f"{part} does not import: {type(exc).__name__}: {exc}"
    return None


def _lr_grid(name):
    return lambda task: [{"lr": lr} for lr in GRIDS[task.name][name]]


def preconditioner_defaults() -> dict[str, Any]:
    """``ngdfast.torch.Preconditioner``'s keyword defaults, read from its signature."""
    import ngdfast.torch as ngt

    return {k: p.default for k, p in inspect.signature(ngt.Preconditioner).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _ngdfast_grid(task) -> list[dict]:
    radius = preconditioner_defaults()["kl_radius"]
    # the default itself is written {} so that it shares its runs with "ngdfast defaults"
    return [{} if f == 1.0 else {"kl_radius": radius * f} for f in KL_RADIUS_FACTORS]


def _adamw(params, lr):
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


class OptimizerChain:
    """Several optimizers over disjoint parameters, behind one ``zero_grad``/``step``.

    ``views``: pairs (2-D view parameter, parameter) whose view an optimizer steps in
    place of the parameter (a convolution's filters for Muon); its gradient is the
    parameter's, reshaped, before every step.
    """

    def __init__(self, model, optimizers, views=()):
        self.model, self.optimizers, self.views = model, list(optimizers), list(views)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for view, param in self.views:
            view.grad = None if param.grad is None else param.grad.reshape(view.shape)
        for opt in self.optimizers:
            opt.step()


def hidden_matrices(model):
    """(hidden, rest): the weights of every ``nn.Linear`` and convolution but the last
    ``nn.Linear`` (the head), and all other parameters (embeddings, head, biases, norms)."""
    from torch import nn

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    head = linears[-1] if linears else None
    hidden = [m.weight for m in layers if m is not head]
    ids = {id(p) for p in hidden}
    return hidden, [p for p in model.parameters() if id(p) not in ids]


def _build_adamw(model, config, task):
    return _adamw(model.parameters(), config["lr"])


def _build_pytorch_optimizer(cls_name):
    def build(model, config, task):
        cls = getattr(_load("pytorch_optimizer"), cls_name)
        return cls(model.parameters(), lr=config["lr"], weight_decay=0.0)
    return build


def _build_muon(model, config, task):
    import torch

    hidden, rest = hidden_matrices(model)
    views = [(torch.nn.Parameter(w.detach().view(w.shape[0], -1)), w) for w in hidden]
    muon = _load("torch.optim.Muon")([v for v, _ in views], lr=config["lr"], weight_decay=0.0,
                                     adjust_lr_fn="match_rms_adamw")
    return OptimizerChain(model, [muon, _adamw(rest, task.adamw_lr)], views)


def _build_singd(model, config, task):
    SINGD = _load("singd.optim.optimizer").SINGD
    supported = [p for m in model.modules() if isinstance(m, SINGD.SUPPORTED_MODULES) for p in m.parameters()]
    ids = {id(p) for p in supported}
    rest = [p for p in model.parameters() if id(p) not in ids]
    singd = SINGD(model, params=supported, lr=config["lr"], loss_average=task.loss_average)
    return OptimizerChain(model, [singd, _adamw(rest, task.adamw_lr)]) if rest else singd


def _build_schedulefree(model, config, task):
    sf = _load("schedulefree")
    return sf.AdamWScheduleFree(model.parameters(), lr=config["lr"], weight_decay=0.0)


def _build_ngd(model, config, task):
    import ngdfast.torch as ngt

    return ngt.NGD(model, **config)


def _describe(optimizer, **fixed):
    return lambda config, task: {"optimizer": optimizer, **fixed, **config}


def _describe_rest(optimizer, **fixed):
    return lambda config, task: {"optimizer": optimizer, **fixed, **config, "rest": "torch.optim.AdamW",
                                 "rest_lr": task.adamw_lr}


def _describe_ngdfast(config, task):
    import ngdfast.torch as ngt

    momentum = inspect.signature(ngt.NGD).parameters["momentum"].default
    return {"optimizer": "ngdfast.torch.NGD", "momentum": momentum,
            **{k: v for k, v in preconditioner_defaults().items() if k in ("kl_radius", "damping", "decay",
               "factor_interval", "inverse_interval", "adaptive_damping", "max_step")}, **config}


#: Every contender, in the order they run (AdamW first: it sets the target).
CONTENDERS = (
    Contender("AdamW", "torch", _build_adamw, _lr_grid("AdamW"),
              describe=_describe("torch.optim.AdamW", weight_decay=0.0)),
    Contender("SOAP", "pytorch_optimizer", _build_pytorch_optimizer("SOAP"), _lr_grid("SOAP"),
              describe=_describe("pytorch_optimizer.SOAP", weight_decay=0.0)),
    Contender("Shampoo", "pytorch_optimizer", _build_pytorch_optimizer("Shampoo"), _lr_grid("Shampoo"),
              describe=_describe("pytorch_optimizer.Shampoo", weight_decay=0.0)),
    Contender("PSGD-Kron", "pytorch_optimizer+opt_einsum", _build_pytorch_optimizer("Kron"), _lr_grid("PSGD-Kron"),
              describe=_describe("pytorch_optimizer.Kron", weight_decay=0.0)),
    Contender("Muon+AdamW", "torch.optim.Muon", _build_muon, _lr_grid("Muon+AdamW"),
              describe=_describe_rest("torch.optim.Muon", weight_decay=0.0, adjust_lr_fn="match_rms_adamw")),
    Contender("SINGD", "singd.optim.optimizer", _build_singd, _lr_grid("SINGD"),
              describe=lambda config, task: {**_describe_rest("singd SINGD")(config, task),
                                             "loss_average": task.loss_average}),
    Contender("Schedule-Free AdamW", "schedulefree", _build_schedulefree, _lr_grid("Schedule-Free AdamW"),
              describe=_describe("schedulefree.AdamWScheduleFree", weight_decay=0.0)),
    Contender("ngdfast defaults", "ngdfast.torch", _build_ngd, lambda task: [{}], family="ngdfast",
              describe=_describe_ngdfast),
    Contender("ngdfast", "ngdfast.torch", _build_ngd, _ngdfast_grid, family="ngdfast",
              describe=_describe_ngdfast),
)


def config_label(config: dict) -> str:
    """``lr=0.01``, ``kl_radius=0.0001``, or ``defaults`` for an empty configuration."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items()) or "defaults"


# ---------------------------------------------------------------------------- the tasks
@contextlib.contextmanager
def seeded(seed: int):
    """torch's and NumPy's global RNGs seeded with ``seed`` inside (PSGD-Kron draws from
    both; ngdfast's default generator from torch's), the caller's states restored after."""
    import numpy as np
    import torch

    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def make_task(name: str, quick: bool, seed: int = SEED) -> Task:
    """The ``cnn`` or ``gpt`` task of :mod:`ngdfast._workloads` (quick: a few steps)."""
    from .. import _workloads
    from .._workloads import torch as workloads

    if name == "cnn":
        X, y, X_test, y_test = _workloads.load_digits_split(seed)
        if quick:
            n, m = QUICK_CNN["train"], QUICK_CNN["test"]
            X, y, X_test, y_test = X[:n], y[:n], X_test[:m], y_test[:m]
        problem = workloads.DigitsProblem.from_split(X, y, X_test, y_test)
        with seeded(seed):
            state0 = workloads.make_cnn().state_dict()
        steps = QUICK_CNN["steps"] if quick else workloads.CNN_CONFIG["steps"]

        def train(settings, optimizer, preconditioner, bar):
            return workloads.train_cnn(problem, state0, steps, settings, bar, optimizer, preconditioner)

        return Task(name, METRIC[name], steps, 1, train, "batch",
                    description=f"digits CNN, full batch of {len(problem.y)}, {steps} steps, "
                                "metric: training objective")
    if name == "gpt":
        config = workloads.gpt_config(quick)
        problem = workloads.CharProblem.from_text(_workloads.HelpText.load(), config, seed)
        with seeded(seed):
            state0 = workloads.make_gpt(problem.vocab, config).state_dict()
        steps = config["steps"]

        def train(settings, optimizer, preconditioner, bar):
            return workloads.train_lm(problem, state0, config, steps, settings, seed, bar, optimizer, preconditioner)

        return Task(name, METRIC[name], steps, config["eval_every"], train, "batch+sequence",
                    description=f"character GPT (width {config['width']}, {config['blocks']} blocks, context "
                                f"{config['context']}), minibatches of {config['batch']}, {steps} steps, "
                                f"held-out loss every {config['eval_every']}")
    raise ValueError(f"race: unknown task {name!r}; choose from {', '.join(TASKS)}")


# ---------------------------------------------------------------------------- the race
def _runs_of(task, contender, config, cache, bar, at_least: int):
    """The runs of ``config``, at least ``at_least`` of them (the cache holds them: equal
    configurations of one family, "ngdfast defaults" and the default of ngdfast's grid,
    share their runs)."""
    runs = cache.setdefault(contender.key(config), [])
    pre = contender.preconditioner
    while len(runs) < at_least:
        with seeded(SEED + 1):
            runs.append(task.train(contender.describe(config, task),
                                   lambda model: contender.optimizer(model, config, task),
                                   None if pre is None else (lambda model: pre(model, config)), bar))
    return runs


def race_task(task: Task, runs: int, out, show_progress: bool = False, contenders=CONTENDERS) -> dict[str, Any]:
    """Run every contender on ``task``; print its table; return the task's record."""
    from .._workloads import progress

    print(f"\n{task.name}: {task.description}", file=out, flush=True)
    cache: dict[tuple, list] = {}
    entries: list[dict[str, Any]] = []
    target = adamw_seconds = None
    for contender in contenders:
        reason = import_error(contender.requires)
        if reason is not None:
            entries.append({"name": contender.name, "skipped": reason})
            print(f"  {contender.name:<20} skipped: {reason}", file=out, flush=True)
            continue
        grid = contender.grid(task)
        try:
            with progress(task.steps * (len(grid) + runs - 1), f"{task.name}: {contender.name}",
                          show_progress) as bar:
                firsts = [_runs_of(task, contender, config, cache, bar, 1)[0] for config in grid]
                if target is None:  # AdamW: its lowest final metric is tuned AdamW
                    best = min(range(len(grid)), key=lambda i: firsts[i].final_of(task.metric))
                else:
                    best = pick_best(firsts, target, task.metric)
                chosen = _runs_of(task, contender, grid[best], cache, bar, runs)[:runs]
        except Exception as exc:  # a peer failing on this model is reported, not fatal
            if target is None:
                raise
            reason = f"raised {type(exc).__name__}: {exc}"[:300]
            entries.append({"name": contender.name, "skipped": reason})
            print(f"  {contender.name:<20} skipped: {reason}", file=out, flush=True)
            continue
        if target is None:
            target = target_of(chosen, task.metric)
            task.adamw_lr = grid[best]["lr"]
            summary = summarise(chosen, target, task.metric)
            adamw_seconds = summary["seconds_to_target"]
            print(f"  target: tuned AdamW's ({config_label(grid[best])}) final {_metric_name(task.metric)} "
                  f"{target:.5f}", file=out, flush=True)
        else:
            summary = summarise(chosen, target, task.metric, adamw_seconds)
        entry = {
            "name": contender.name,
            "grid": [{"config": config, "label": config_label(config), "run": first.to_json(),
                      "reach": _reach_json(first, target, task.metric), "final": _finite(first.final_of(task.metric))}
                     for config, first in zip(grid, firsts)],
            "best": grid[best],
            "best_label": config_label(grid[best]),
            "runs": [dict(run.to_json(), reach=_reach_json(run, target, task.metric)) for run in chosen],
            "median": {k: _finite(v) if isinstance(v, float) else v for k, v in summary.items()},
        }
        entries.append(entry)
        grid_line = ", ".join(f"{g['label']}: {_hit_text(g['reach'], g['final'])}" for g in entry["grid"])
        print(f"  {contender.name:<20} {{{grid_line}}} -> {entry['best_label']}", file=out, flush=True)
    record = {"task": task.name, "description": task.description, "metric": task.metric, "steps": task.steps,
              "eval_every": task.eval_every, "target": target, "adamw_lr": task.adamw_lr, "runs": runs,
              "optimizers": entries}
    print_table(record, out)
    return record


def _metric_name(metric):
    return "training objective" if metric == "loss" else "held-out loss"


def _finite(value):
    return value if value is not None and math.isfinite(value) else None


def _reach_json(run, target, metric):
    hit = reach(run, target, metric)
    return None if hit is None else {"steps": hit[0], "seconds": hit[1]}


def _hit_text(hit, final):
    final_s = "diverged" if final is None else f"final {final:.4f}"
    return f"{hit['steps']} steps {hit['seconds']:.2f} s, {final_s}" if hit else f"not reached, {final_s}"


def print_table(record: dict[str, Any], out) -> None:
    """The task's table: per optimizer its best configuration and the medians of its runs."""
    print(f"\n{record['task']}: time to tuned AdamW's final {_metric_name(record['metric'])} "
          f"{record['target']:.5f}, medians of {record['runs']} runs (speed: AdamW seconds / its seconds)",
          file=out)
    print(f"  {'optimizer':<20}  {'best configuration':<22}  {'steps':>6}  {'seconds':>8}  {'speed':>6}  "
          f"{'final':>8}", file=out)
    for e in record["optimizers"]:
        if "skipped" in e:
            print(f"  {e['name']:<20}  skipped: {e['skipped']}", file=out)
            continue
        m = e["median"]

        def cell(value, fmt, width):
            return f"{'-' if value is None else format(value, fmt):>{width}}"

        print(f"  {e['name']:<20}  {e['best_label']:<22}  {cell(m['steps_to_target'], '.0f', 6)}  "
              f"{cell(m['seconds_to_target'], '.2f', 8)}  {cell(m['speed_vs_adamw'], '.2f', 6)}  "
              f"{cell(m['final'], '.4f', 8)}", file=out)
    out.flush()


def verify(record: dict[str, Any], runs: int, names=None) -> list[str]:
    """Problems in a task's record (JSON form), recomputed from its curves; ``[]`` when none.

    Every contender of ``names`` (default: :data:`CONTENDERS`) appears, run or skipped with a
    reason; the target is the largest final metric of AdamW's runs; each run's recorded
    reach is the first evaluation at or below the target; each optimizer's best is its grid's
    soonest (AdamW: lowest final); the medians are those of its ``runs`` runs.
    """
    metric, target, problems = record["metric"], record["target"], []
    names = [c.name for c in CONTENDERS] if names is None else list(names)
    entries = {e["name"]: e for e in record["optimizers"]}
    if list(entries) != names:
        problems.append(f"optimizers {list(entries)} are not {names}")
    for e in entries.values():
        if "skipped" in e and not e["skipped"]:
            problems.append(f"{e['name']}: skipped without a reason")

    def final(r):
        values = r[metric]
        return math.inf if r["diverged"] or not values or values[-1] is None else values[-1]

    def hit(r):
        for k, value in enumerate(r[metric]):
            if value is not None and value <= target:
                return {"steps": r["step"][k] if "step" in r else k + 1, "seconds": r["seconds"][k]}
        return None

    adamw = entries.get("AdamW")
    if adamw is None or "skipped" in adamw:
        return problems + ["AdamW did not run"]
    if target != max(final(r) for r in adamw["runs"]):
        problems.append(f"target {target} is not AdamW's final {[final(r) for r in adamw['runs']]}")
    adamw_seconds = None
    for e in entries.values():
        if "skipped" in e:
            continue
        name, grid = e["name"], e["grid"]
        if len(e["runs"]) != runs:
            problems.append(f"{name}: {len(e['runs'])} runs, not {runs}")
        for r in e["runs"] + [g["run"] for g in grid]:
            if r.get("reach", hit(r)) != hit(r):
                problems.append(f"{name}: recorded reach {r['reach']} is not the curve's {hit(r)}")
        for g in grid:
            if g["reach"] != hit(g["run"]):
                problems.append(f"{name} {g['label']}: recorded reach {g['reach']} is not the curve's {hit(g['run'])}")
        if name == "AdamW":
            best = min(range(len(grid)), key=lambda i: final(grid[i]["run"]))
        else:
            reached = [(g["reach"]["seconds"], i) for i, g in enumerate(grid) if g["reach"]]
            best = min(reached)[1] if reached else min(range(len(grid)), key=lambda i: final(grid[i]["run"]))
        if e["best"] != grid[best]["config"]:
            problems.append(f"{name}: best {e['best']} is not the grid's {grid[best]['config']}")
        if e["runs"] and e["runs"][0][metric] != grid[best]["run"][metric]:
            problems.append(f"{name}: the first run of the best is not its grid run")
        hits = [hit(r) for r in e["runs"]]
        seconds = median([h["seconds"] if h else math.inf for h in hits])
        expected = {"steps_to_target": median([h["steps"] if h else math.inf for h in hits]),
                    "seconds_to_target": seconds, "final": median([final(r) for r in e["runs"]])}
        if name == "AdamW":
            adamw_seconds = seconds
        if adamw_seconds is not None and math.isfinite(seconds) and seconds > 0:
            expected["speed_vs_adamw"] = adamw_seconds / seconds
        for key, value in expected.items():
            got = e["median"][key]
            got = math.inf if got is None else got
            if not (got == value or math.isclose(got, value, rel_tol=1e-12)):
                problems.append(f"{name}: median {key} {got} is not {value}")
    return problems


def machine() -> dict[str, Any]:
    """Versions, threads and load: the conditions of the race."""
    from importlib import metadata

    import torch

    import ngdfast

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return {"ngdfast": ngdfast.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "load_average": load,
            "threads": torch.get_num_threads(), "ngdfast_threads": ngdfast.get_num_threads(),
            "peers": {d: version(d) for d in ("pytorch-optimizer", "singd", "schedulefree")},
            "preconditioner_defaults": {k: v for k, v in preconditioner_defaults().items()
                                        if isinstance(v, (int, float, str, bool, type(None)))}}


def run(quick: bool = False, runs: int = 3, out=None, tasks=TASKS, show_progress: bool = False) -> dict[str, Any]:
    """The race on ``tasks``: every table printed to ``out``; returns everything (for JSON)."""
    import torch

    import ngdfast

    if runs < 1:
        raise ValueError(f"race: runs must be at least 1, got {runs}")
    out = sys.stdout if out is None else out
    threads_before = torch.get_num_threads()
    torch.set_num_threads(ngdfast.get_num_threads())
    try:
        conditions = machine()
        load = conditions["load_average"]
        print(f"ngdfast race: torch {torch.__version__} and ngdfast at {torch.get_num_threads()} threads, "
              f"{conditions['cpu_count']} CPUs" + ("" if load is None else f", load average {load:.2f}")
              + (" (quick: a check of the bookkeeping, not a measurement)" if quick else ""), file=out, flush=True)
        results = {name: race_task(make_task(name, quick), runs, out, show_progress) for name in tasks}
        return {"machine": conditions, "quick": quick, "runs": runs, "tasks": results}
    finally:
        torch.set_num_threads(threads_before)


def write_json(path: str, result: dict[str, Any], out) -> None:
    """Strict JSON (no NaN or Infinity: a diverged run's values are null)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(_strict(result), fh, indent=1, allow_nan=False)
    print(f"wrote {path}", file=out)


def _strict(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def plot(result: dict[str, Any], path: str, out) -> None:
    """Loss against optimisation seconds, one panel per task, every run of each optimizer's best
    configuration (one colour per optimizer), the target as a dashed line. Uses
    ``matplotlib.figure.Figure`` directly: no pyplot, no change to the process's backend."""
    from matplotlib.figure import Figure

    tasks = result["tasks"]
    fig = Figure(figsize=(6.5 * len(tasks), 4.8), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    colours = {c.name: f"C{i}" for i, c in enumerate(CONTENDERS)}
    for ax, (name, record) in zip(axes, tasks.items()):
        metric = record["metric"]
        for e in record["optimizers"]:
            if "skipped" in e:
                continue
            for k, r in enumerate(e["runs"]):
                values = [math.nan if v is None else v for v in r[metric]]
                ax.plot(r["seconds"], values, color=colours.get(e["name"]), lw=1.2, alpha=0.8,
                        label=f"{e['name']} ({e['best_label']})" if k == 0 else None)
        ax.axhline(record["target"], color="k", ls="--", lw=0.8, label="target: tuned AdamW's final")
        ax.set_yscale("log")
        ax.set_xlabel("optimisation seconds (forward, backward, preconditioner, step)")
        ax.set_ylabel(_metric_name(metric))
        ax.set_title(f"{name}: {record['description']}", fontsize=8)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}", file=out)
