"""``python -m ngdfast demo --framework torch``: NGD in a plain torch loop.

Two workloads (defined in :mod:`ngdfast._workloads.torch`, shared with the bench):

``--model cnn`` (the default): a small CNN on the same digits split and preprocessing
as the NumPy demo (the 64 pixels as one 8×8 channel)::

    Conv2d(1, 16, 3, padding=1) -> tanh -> AvgPool2d(2) -> Flatten -> Linear(256, 10)

(P = 2730, float32), trained on the full training set by

* ``gd``: ``torch.optim.SGD`` (full batch, so plain gradient descent) and
  ``adam``: ``torch.optim.Adam``, each with the learning rate of a small grid
  that ends lowest on the same budget, as in the NumPy demo;
* ``ngd-kfac``: ``ngdfast.torch.Preconditioner(curvature="kfac")`` between
  ``loss.backward()`` and ``torch.optim.SGD(lr=1).step()``: factors from labels
  sampled from the model, a step of KL radius ε, damping λ adapted
  (Levenberg-Marquardt, ``report_loss``, λ ≥ l2) from the initial value;
* ``ngd-exact``: the same loop with ``curvature="exact"``: the exact sampled
  Fisher of a random batch of 256 training images, solved by
  ``ngdfast.natural_gradient`` (Woodbury).

``--model gpt``: a character-level transformer (2 pre-norm blocks, width 64, 4
heads, context 64: token and positional embeddings, causal self-attention, a GELU
MLP, a final LayerNorm and a linear head returning (B, T, V) logits) on Python's
English help topics (``pydoc_data.topics``, 90 % train, the last 10 % held out),
minibatches of 32 random windows, the same for every method:

* ``adamw``: ``torch.optim.AdamW`` with the learning rate of a grid (3e-3, 1e-2,
  3e-2) whose final held-out loss is lowest on the same budget;
* ``ngd-kfac``: ``ngdfast.torch.NGD(model)`` with its defaults, untuned, in the same
  loop (``zero_grad; loss.backward(); opt.step()``).

The held-out loss is evaluated on fixed held-out windows every 25 steps; the
target is AdamW's final held-out loss.

The timing rules (only optimisation work timed, ``--repeats`` with the per-step
minimum kept), the table, plot and JSON are the NumPy demo's (:mod:`ngdfast.demo`,
which calls :func:`train_torch`); ``"model"`` in the JSON is ``"cnn"`` or ``"gpt"``.
torch is imported only by this module and :mod:`ngdfast._workloads.torch`, which
only the torch demo and the torch bench import.
"""

from __future__ import annotations

import torch

from ._workloads import HelpText, fastest, grid_search, load_digits_split, progress
from ._workloads import torch as workloads


def train_torch(args) -> dict:
    """``{model: {method: Run}}`` for the demo's command line (``--model cnn`` or ``gpt``)."""
    return train_gpt(args) if args.model == "gpt" else train_cnn(args)


def train_cnn(args) -> dict:
    """``{"cnn": {"gd": Run, "adam": Run, "ngd-...": Run}}``."""
    config = dict(workloads.CNN_CONFIG)
    steps = args.steps or config["steps"]
    if args.quick:
        steps = args.steps or 12
        config["gd_grid"] = config["gd_grid"][1:3]
        config["adam_grid"] = config["adam_grid"][1:3]
    X, y, X_test, y_test = load_digits_split(args.seed)
    problem = workloads.DigitsProblem.from_split(X, y, X_test, y_test, config["l2"])
    torch.manual_seed(args.seed)
    state0 = workloads.make_cnn().state_dict()
    n_params = sum(p.numel() for p in workloads.make_cnn().parameters())
    channels = workloads.CHANNELS
    enabled = not args.no_progress
    print(f"\ncnn: Conv2d(1, {channels}, 3, padding=1) -> tanh -> AvgPool2d(2) -> Linear({channels * 16}, 10), "
          f"P = {n_params}, float32, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{len(y)} train / {len(y_test)} test samples, l2 = {config['l2']:g}, {steps} steps")
    runs = {
        "gd": grid_search("gd", workloads.run_gd, problem, state0, steps, config["gd_grid"], enabled, args.repeats),
        "adam": grid_search("adam", workloads.run_adam, problem, state0, steps, config["adam_grid"], enabled,
                            args.repeats),
    }
    for name, settings in config["ngd"].items():
        fisher = (f"exact Fisher of {workloads.FISHER_BATCH} images" if settings["curvature"] == "exact"
                  else f"K-FAC factors (EMA decay {workloads.DECAY:g})")
        print(f"  {name:<12} kl_radius {settings['kl_radius']:g}, damping {settings['damping']:g} (adaptive), "
              f"{fisher} from sampled labels, every step; torch.optim.SGD(lr=1)")
        with progress(steps * args.repeats, f"cnn: {name}", enabled) as bar:
            runs[name] = workloads.run_ngd(problem, state0, steps, settings, args.seed + 1, bar)
            for _ in range(args.repeats - 1):
                fastest(runs[name], workloads.run_ngd(problem, state0, steps, settings, args.seed + 1, bar))
    return {"cnn": runs}


def train_gpt(args) -> dict:
    """``{"gpt": {"adamw": Run, "ngd-kfac": Run}}``; entries every ``eval_every`` steps."""
    config = workloads.gpt_config(args.quick)
    steps = args.steps or config["steps"]
    text = HelpText.load()
    problem = workloads.CharProblem.from_text(text, config, args.seed)
    torch.manual_seed(args.seed)
    state0 = workloads.make_gpt(problem.vocab, config).state_dict()
    n_params = sum(t.numel() for t in state0.values())
    enabled = not args.no_progress
    print(f"\ngpt: {config['blocks']} blocks, width {config['width']}, {config['heads']} heads, "
          f"context {config['context']}, vocabulary {problem.vocab}, P = {n_params}, float32, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); Python help text: "
          f"{len(text.train)} train / {len(text.test)} held-out characters; {steps} steps of "
          f"{config['batch']} windows, held-out loss on {problem.y_test.shape[0]} windows every "
          f"{config['eval_every']} steps")

    def adamw(problem, state0, steps, lr, bar):
        return workloads.run_adamw(problem, state0, config, steps, lr, args.seed, bar)

    runs = {"adamw": grid_search("adamw", adamw, problem, state0, steps, config["adamw_grid"], enabled,
                                 args.repeats, metric="test_loss")}
    for name, settings in config["ngd"].items():
        print(f"  {name:<12} ngdfast.torch.NGD(model{''.join(f', {k}={v!r}' for k, v in settings.items())}), "
              "factors from sampled labels")
        with progress(steps * args.repeats, f"gpt: {name}", enabled) as bar:
            runs[name] = workloads.run_lm_ngd(problem, state0, config, steps, settings, args.seed, bar)
            for _ in range(args.repeats - 1):
                fastest(runs[name], workloads.run_lm_ngd(problem, state0, config, steps, settings, args.seed, bar))
    return {"gpt": runs}
