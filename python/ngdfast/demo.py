"""``python -m ngdfast demo``: natural gradient descent beside gradient descent and Adam.

Trains on scikit-learn's bundled handwritten digits (1797 8×8 images, 10
classes; no download) with a held-out test split, for two models:

* ``softmax``: multinomial logistic regression (P = 650);
* ``mlp``: a tanh MLP 64-32-10 (P = 2410);
* ``cnn`` (``--framework torch``): a small CNN in PyTorch, trained with
  ``ngdfast.torch`` beside torch's SGD and Adam (:mod:`ngdfast.demo_torch`);
* ``gpt`` (``--framework torch``): a character-level transformer on Python's
  help text, K-FAC NGD beside AdamW, judged on held-out loss (:mod:`ngdfast.demo_torch`).

The data, the torch models and the measurement of a run (:class:`Run`, the
learning-rate grid, ``--repeats``) live in :mod:`ngdfast._workloads`, shared with
the bench; this module holds the NumPy runs, the command line and the report.

The training objective is the mean cross-entropy plus a small L2 penalty,
``L(θ) = -(1/N) Σ log p(y_i | x_i, θ) + (l2/2)‖θ‖²``, with full-batch
gradients for every method. The natural-gradient variants estimate the Fisher
from labels *sampled from the model* on a random minibatch (the "true" Fisher),
solve ``(F + λI) ñ = ∇L`` with ``λ ≥ l2`` (so ``F + λI`` is the Gauss-Newton
matrix of the penalised objective plus extra damping) and step ``θ ← θ − βñ``
with ``β = min(sqrt(2ε / ∇Lᵀñ), 1)``; λ (Levenberg-Marquardt) and ε (trust
region) adapt to how well the quadratic model predicted each step's loss change.
Gradient descent and Adam get the same number of steps and the learning rate of
a small grid that ends lowest; the NGD settings are fixed (``CONFIG``).

Only the optimisation work (gradient, statistics, curvature, step) is timed;
the per-step bookkeeping (losses and accuracies recorded for the report) is not.
Each reported run is repeated (``--repeats``, default 2) with the same seeds and
the per-step minimum time kept, so that stalls of a shared machine do not decide
the comparison.

Outputs: a table (stdout) with the steps and seconds each method needs to reach
the final training loss of gradient descent and of Adam, and the final
train/test loss and accuracy; ``--plot PATH`` a PNG of the training loss against
steps and against seconds; ``--json PATH`` the curves::

    {"dataset": "digits", "model": "mlp",
     "runs": {"ngd-kfac": {"loss": [...], "seconds": [...], "accuracy": [...],
                           "test_loss": [...], "test_accuracy": [...], "settings": {...}},
              "gd": {...}, "adam": {...}}}

with one entry per step (after that step; ``seconds`` is cumulative wall time,
``loss`` the training objective, ``accuracy`` the training accuracy; a run that
diverged stops early, with ``"diverged": true`` and null for non-finite losses). With
``--model both`` (the default) ``"model"`` is the list ``["softmax", "mlp"]`` and
``"runs"`` maps each model name to its runs: ``{"softmax": {"ngd-dense": ...}, "mlp": {...}}``.
For ``gpt`` (``"dataset": "pydoc_data.topics"``) an entry follows every evaluation, not
every step: each run also has ``"step"``, the step after which each entry was taken.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from ._workloads import Run, fastest, grid_search, load_digits_split, progress, timed_run
from .curvature import DenseFisher, DiagonalFisher, KFACFisher, LowRankFisher
from .models import MLP, SoftmaxRegression
from .optimizer import NaturalGradient

#: Per model: L2 penalty, step budget, learning-rate grids, NGD variants.
#: NGD settings are fixed (chosen once for this data, not tuned per run): ``kl_radius``
#: the initial KL radius ε, ``damping`` the initial total λ (the L2 coefficient plus
#: 0.01), ``every`` how many steps one Fisher refresh serves (the curvature object
#: reuses its factorisation in between), ``max_rows`` the low-rank window.
CONFIG = {
    "softmax": {
        "l2": 1e-3,
        "steps": 200,
        "gd_grid": [0.3, 1.0, 3.0, 10.0],
        "adam_grid": [0.03, 0.1, 0.3, 1.0],
        "ngd": {
            "ngd-dense": {"curvature": "dense", "kl_radius": 0.1, "damping": 0.011, "every": 1},
            "ngd-lowrank": {"curvature": "lowrank", "kl_radius": 0.1, "damping": 0.011, "every": 4, "max_rows": 256},
            "ngd-kfac": {"curvature": "kfac", "kl_radius": 0.1, "damping": 0.011, "every": 1},
            "ngd-diagonal": {"curvature": "diagonal", "kl_radius": 0.1, "damping": 0.011, "every": 1},
        },
    },
    "mlp": {
        "l2": 1e-3,
        "steps": 200,
        "gd_grid": [0.3, 1.0, 3.0],
        "adam_grid": [0.003, 0.01, 0.03],
        # P = 2410: a dense P x P Fisher costs seconds per refresh here, so no ngd-dense.
        "ngd": {
            "ngd-lowrank": {"curvature": "lowrank", "kl_radius": 0.03, "damping": 0.011, "every": 4, "max_rows": 256},
            "ngd-kfac": {"curvature": "kfac", "kl_radius": 0.03, "damping": 0.011, "every": 1},
            "ngd-diagonal": {"curvature": "diagonal", "kl_radius": 0.1, "damping": 0.1, "every": 1},
        },
    },
}
FISHER_BATCH = 256  #: samples whose sampled-label scores feed each Fisher refresh
DECAY = 0.8  #: EMA factor of the Fisher estimates
MAX_STEP = 1.0  #: cap on β: never longer than the damped Gauss-Newton step


@dataclass
class Problem:
    """A model with its data and penalised objective."""

    name: str
    model: MLP
    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    l2: float

    def objective(self, theta):
        """``(L(θ), ∇L(θ))`` on the whole training set, penalty included."""
        loss, grad = self.model.loss_and_grad(theta, self.X, self.y)
        return loss + 0.5 * self.l2 * float(theta @ theta), grad + self.l2 * theta

    def evaluate(self, theta):
        """Training objective and accuracy, test cross-entropy and accuracy."""
        p = self.model.predict_proba(theta, self.X)
        train = -np.mean(np.log(np.maximum(p[np.arange(len(self.y)), self.y], 1e-300)))
        p_test = self.model.predict_proba(theta, self.X_test)
        test = -np.mean(np.log(np.maximum(p_test[np.arange(len(self.y_test)), self.y_test], 1e-300)))
        return (
            float(train + 0.5 * self.l2 * float(theta @ theta)),
            float(np.mean(p.argmax(axis=1) == self.y)),
            float(test),
            float(np.mean(p_test.argmax(axis=1) == self.y_test)),
        )


def _run_first_order(problem, theta0, steps, settings, bar, update) -> Run:
    """The loop GD and Adam share: ``update(theta, grad, t)`` changes theta in place;
    only the gradient and the update are timed."""
    theta = theta0.copy()

    def step(t):
        _, grad = problem.objective(theta)
        update(theta, grad, t)

    return timed_run(problem, theta, steps, settings, bar, step)


def run_gd(problem, theta0, steps, lr, bar) -> Run:
    def update(theta, grad, t):
        theta -= lr * grad

    return _run_first_order(problem, theta0, steps, {"lr": lr}, bar, update)


def run_adam(problem, theta0, steps, lr, bar, beta1=0.9, beta2=0.999, eps=1e-8) -> Run:
    m = np.zeros_like(theta0)
    v = np.zeros_like(theta0)

    def update(theta, grad, t):
        m[...] = beta1 * m + (1 - beta1) * grad
        v[...] = beta2 * v + (1 - beta2) * grad * grad
        theta -= lr * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)

    return _run_first_order(problem, theta0, steps, {"lr": lr, "beta1": beta1, "beta2": beta2}, bar, update)


def _make_curvature(settings, model):
    kind = settings["curvature"]
    if kind == "dense":
        return DenseFisher(model.n_params, decay=DECAY)
    if kind == "lowrank":
        return LowRankFisher(model.n_params, decay=DECAY, max_rows=settings["max_rows"])
    if kind == "kfac":
        return KFACFisher(model.layer_shapes, decay=DECAY)
    return DiagonalFisher(model.n_params, decay=DECAY)


def run_ngd(problem, theta0, steps, settings, rng, bar) -> Run:
    """NGD with a Fisher refresh from sampled labels every ``settings["every"]`` steps.

    Damping (Levenberg-Marquardt) and KL radius (trust region) adapt to the ratio
    of actual to predicted loss change; the actual loss comes for free with the
    next full-batch gradient.
    """
    model = problem.model
    opt = NaturalGradient(
        _make_curvature(settings, model),
        kl_radius=settings["kl_radius"],
        damping=settings["damping"],
        max_step=MAX_STEP,
        adaptive_damping=True,
        adaptive_kl_radius=True,
        min_damping=problem.l2,
    )
    theta = theta0.copy()
    n = len(problem.y)

    def step(t):
        loss, grad = problem.objective(theta)
        if t > 1:
            opt.report_loss(loss)
        stats = ()
        if (t - 1) % settings["every"] == 0:
            X = problem.X[rng.choice(n, size=min(FISHER_BATCH, n), replace=False)]
            if settings["curvature"] == "kfac":
                stats = model.kfac_stats(theta, X, None, "sampled", rng)
            else:
                stats = model.scores(theta, X, None, "sampled", rng)
        opt.step(theta, grad, *stats, loss=loss)

    recorded = dict(settings, fisher="sampled", fisher_batch=FISHER_BATCH, decay=DECAY, max_step=MAX_STEP)
    return timed_run(problem, theta, steps, recorded, bar, step)


def train(problem, steps, seed, enabled, config, repeats=1) -> dict:
    """All methods on one problem: {"gd": Run, "adam": Run, "ngd-...": Run}.

    Every method starts from the same θ0; the chosen GD and Adam runs and every
    NGD run are timed ``repeats`` times (same seeds, same work), keeping the
    per-step minimum.
    """
    theta0 = problem.model.init(np.random.default_rng(seed))
    print(f"\n{problem.name}: {problem.model!r}, P = {problem.model.n_params}, "
          f"{len(problem.y)} train / {len(problem.y_test)} test samples, l2 = {problem.l2:g}, {steps} steps")
    runs = {
        "gd": grid_search("gd", run_gd, problem, theta0, steps, config["gd_grid"], enabled, repeats),
        "adam": grid_search("adam", run_adam, problem, theta0, steps, config["adam_grid"], enabled, repeats),
    }
    for name, settings in config["ngd"].items():
        window = f", last {settings['max_rows']} rows" if "max_rows" in settings else ""
        print(f"  {name:<12} kl_radius {settings['kl_radius']:g}, damping {settings['damping']:g} (both adaptive), "
              f"Fisher from {FISHER_BATCH} sampled labels every {settings['every']} step(s){window}, "
              f"EMA decay {DECAY:g}")
        with progress(steps * repeats, f"{problem.name}: {name}", enabled) as bar:
            runs[name] = run_ngd(problem, theta0, steps, settings, np.random.default_rng(seed + 1), bar)
            for _ in range(repeats - 1):
                again = run_ngd(problem, theta0, steps, settings, np.random.default_rng(seed + 1), bar)
                fastest(runs[name], again)
    return runs


def _fmt_reach(hit):
    return ("-", "-") if hit is None else (str(hit[0]), f"{hit[1]:.3f}")


def table(problem_name, runs) -> str:
    """Steps/seconds to reach GD's and Adam's final losses, final metrics, and a summary
    (for a run against AdamW alone, :func:`held_out_table`)."""
    if "gd" not in runs:
        return held_out_table(problem_name, runs)
    targets = {"GD": runs["gd"].final, "Adam": runs["adam"].final}
    header = (
        f"{'method':<13}{'steps->GD':>10}{'s->GD':>8}{'steps->Adam':>12}{'s->Adam':>8}"
        f"{'train loss':>12}{'train acc':>10}{'test loss':>11}{'test acc':>9}{'ms/step':>9}"
    )
    lines = [
        f"{problem_name}: targets = final training loss of GD {targets['GD']:.6f} and of Adam {targets['Adam']:.6f}",
        header,
        "-" * len(header),
    ]
    order = [k for k in runs if k.startswith("ngd")] + ["adam", "gd"]
    for name in order:
        run = runs[name]
        gd_steps, gd_secs = _fmt_reach(run.reach(targets["GD"]))
        adam_steps, adam_secs = _fmt_reach(run.reach(targets["Adam"]))
        ms = 1e3 * run.seconds[-1] / len(run.seconds) if run.seconds else math.nan
        lines.append(
            f"{name:<13}{gd_steps:>10}{gd_secs:>8}{adam_steps:>12}{adam_secs:>8}"
            f"{run.loss[-1]:>12.6f}{run.accuracy[-1]:>10.3f}{run.test_loss[-1]:>11.5f}"
            f"{run.test_accuracy[-1]:>9.3f}{ms:>9.2f}"
        )
    lines.append("steps/s->X: steps and seconds of optimisation work until the training loss first reaches "
                 "X's final loss ('-': not within the budget).")
    lines.extend(_summary(runs, targets))
    return "\n".join(lines)


def held_out_table(problem_name, runs, baseline="adamw", label="AdamW") -> str:
    """Steps/seconds to reach the baseline's final held-out loss, final metrics, and a summary.

    For minibatch runs evaluated every few steps (``Run.step``): a target is reached at
    the first evaluation at or below it.
    """
    target = runs[baseline].final_of("test_loss")
    header = (
        f"{'method':<13}{'steps->' + label:>13}{'s->' + label:>10}"
        f"{'train loss':>12}{'train acc':>10}{'held-out loss':>15}{'held-out acc':>13}{'ms/step':>9}"
    )
    lines = [f"{problem_name}: target = final held-out loss of {label} {target:.6f}", header, "-" * len(header)]
    order = [k for k in runs if k.startswith("ngd")] + [k for k in runs if not k.startswith("ngd")]
    for name in order:
        run = runs[name]
        steps, secs = _fmt_reach(run.reach(target, "test_loss"))
        ms = 1e3 * run.seconds[-1] / run.steps if run.seconds else math.nan
        lines.append(
            f"{name:<13}{steps:>13}{secs:>10}{run.loss[-1]:>12.6f}{run.accuracy[-1]:>10.3f}"
            f"{run.test_loss[-1]:>15.5f}{run.test_accuracy[-1]:>13.3f}{ms:>9.2f}"
        )
    every = runs[baseline].step[0] if runs[baseline].step else 1
    lines.append(f"steps/s->{label}: steps and seconds of optimisation work until the held-out loss (evaluated "
                 f"every {every} steps) first reaches {label}'s final held-out loss ('-': not within the budget); "
                 "train loss/acc: the minibatches since the last evaluation.")
    hits = {k: r.reach(target, "test_loss") for k, r in runs.items() if k.startswith("ngd")}
    hits = {k: h for k, h in hits.items() if h is not None}
    if not hits:
        lines.append(f"No NGD variant reached {label}'s final held-out loss within the budget.")
    else:
        best = min(hits, key=lambda k: hits[k][1])
        steps, secs = hits[best]
        base_steps, base_secs = runs[baseline].steps, runs[baseline].seconds[-1]
        verdict = "faster" if secs < base_secs else "slower"
        lines.append(f"{label}'s final held-out loss: {best} in {steps} steps ({base_steps / steps:.1f}x fewer than "
                     f"{label}'s {base_steps}) and {secs:.3f} s, {base_secs / secs:.1f}x the speed of {label} "
                     f"({base_secs:.3f} s): {verdict}.")
    return "\n".join(lines)


def _summary(runs, targets) -> list:
    """One sentence per target: the quickest NGD variant against GD's steps and Adam's time."""
    out = []
    ngd = {k: r for k, r in runs.items() if k.startswith("ngd")}
    for label, target in targets.items():
        hits = {k: r.reach(target) for k, r in ngd.items()}
        hits = {k: h for k, h in hits.items() if h is not None}
        if not hits:
            out.append(f"No NGD variant reached {label}'s final loss within the budget.")
            continue
        best = min(hits, key=lambda k: hits[k][1])
        steps, secs = hits[best]
        adam = runs["adam"].reach(target)
        baseline = len(runs["gd"].loss) if label == "GD" else len(runs["adam"].loss)
        text = (f"{label}'s final loss: {best} in {steps} steps "
                f"({baseline / steps:.1f}x fewer than {label}'s {baseline})")
        if adam is None:
            text += f" and {secs:.3f} s; Adam never got there."
        else:
            verdict = "faster" if secs < adam[1] else "slower"
            text += f" and {secs:.3f} s, {adam[1] / secs:.1f}x the speed of Adam ({adam[1]:.3f} s): {verdict}."
        out.append(text)
    return out


#: JSON "dataset" of each model
DATASETS = {"softmax": "digits", "mlp": "digits", "cnn": "digits", "gpt": "pydoc_data.topics"}

COLOURS = {"gd": "0.35", "adam": "tab:orange", "adamw": "tab:orange", "ngd-dense": "tab:blue",
           "ngd-lowrank": "tab:green", "ngd-kfac": "tab:red", "ngd-diagonal": "tab:purple",
           "ngd-exact": "tab:brown"}


def plot(path, results) -> None:
    """Training loss against steps and against seconds, one row per model, log scales.

    Softmax regression is convex and the NGD runs converge, so its panels show the
    loss above the lowest loss reached (≈ the optimum), where linear and
    faster-than-linear convergence are easy to tell apart. The MLP has no known
    optimum; its panels show the loss itself. Grey line: gradient descent's final loss.
    The GPT (runs without GD) shows its held-out loss at each evaluation; grey line:
    AdamW's final held-out loss.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4 * len(results)), layout="constrained")
    axes = fig.subplots(len(results), 2, squeeze=False)
    for row, (name, runs) in zip(axes, results.items()):
        if "gd" not in runs:
            metric, baseline, shift = "test_loss", "adamw", 0.0
            ylabel, title = "held-out loss (cross-entropy)", f"{DATASETS.get(name, name)}, {name}: held-out loss"
        elif name == "softmax":
            metric, baseline = "loss", "gd"
            best = min(min(r.loss) for r in runs.values() if r.loss)
            shift = best - 1e-6 * max(1.0, abs(best))  # keeps the best point itself on the log scale
            ylabel, title = f"training loss − {best:.6f}", f"digits, {name}: loss above the optimum"
        else:
            metric, baseline, shift = "loss", "gd", 0.0
            ylabel, title = "training loss (cross-entropy + L2)", f"digits, {name}: training loss"
        for method, run in runs.items():
            style = "-" if method.startswith("ngd") else ("--" if method == "gd" else ":")
            label = f"{method} (lr {run.settings['lr']:g})" if "lr" in run.settings else method
            y = np.asarray(getattr(run, metric)) - shift
            steps = run.step if run.step else np.arange(1, len(y) + 1)
            row[0].plot(steps, y, style, color=COLOURS.get(method), label=label)
            row[1].plot(run.seconds, y, style, color=COLOURS.get(method), label=label)
        for ax, xlabel in zip(row, ("step", "seconds (optimisation work only)")):
            ax.axhline(runs[baseline].final_of(metric) - shift, color="grey", lw=0.8, alpha=0.7)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
        row[1].set_xscale("log")
        row[0].legend(fontsize=8)
    fig.savefig(path, dpi=110)


def parse_args(argv=None) -> argparse.Namespace:
    """The demo's command line, shared by both frameworks (``--framework``)."""
    parser = argparse.ArgumentParser(
        prog="python -m ngdfast demo",
        description="Natural gradient descent beside gradient descent and Adam on the digits data "
        "(and beside AdamW on Python's help text: --framework torch --model gpt).",
        epilog="JSON: one object {dataset, model, runs}; with --model both, model is a list and runs "
        "maps each model to its runs.",
    )
    parser.add_argument("--framework", choices=["numpy", "torch"], default="numpy",
                        help="numpy: ngdfast's own models (default); torch: a small CNN trained with "
                        "ngdfast.torch beside torch's SGD and Adam, or a character-level GPT beside "
                        "AdamW (needs the torch extra)")
    parser.add_argument("--model", choices=["softmax", "mlp", "both", "cnn", "gpt"], default=None,
                        help="numpy: softmax, mlp or both (default); torch: cnn (the default) or gpt")
    parser.add_argument("--steps", type=int, default=None, help="steps per method (default: per model, 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps and a small grid (seconds; for tests)")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of loss against steps and seconds")
    parser.add_argument("--json", metavar="PATH", help="write the per-step curves as JSON")
    parser.add_argument("--repeats", type=int, default=None,
                        help="time each reported run this many times, keeping the per-step minimum "
                        "(default 2; 1 with --quick)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 2)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    models = {"numpy": ("softmax", "mlp", "both"), "torch": ("cnn", "gpt")}[args.framework]
    args.model = args.model or models[0 if args.framework == "torch" else 2]
    if args.model not in models:
        parser.error(f"--model {args.model} is not a {args.framework} model; choose from {', '.join(models)}")
    return args


def _train_numpy(args, X, y, X_test, y_test) -> dict:
    """{model name: runs} for ngdfast's own models."""
    results = {}
    for name in ["softmax", "mlp"] if args.model == "both" else [args.model]:
        config = dict(CONFIG[name])
        steps = args.steps or config["steps"]
        if args.quick:
            steps = args.steps or 12
            config["gd_grid"] = config["gd_grid"][1:3]
            config["adam_grid"] = config["adam_grid"][1:3]
        model = SoftmaxRegression(X.shape[1], 10) if name == "softmax" else MLP([X.shape[1], 32, 10], "tanh")
        problem = Problem(name, model, X, y, X_test, y_test, config["l2"])
        results[name] = train(problem, steps, args.seed, not args.no_progress, config, args.repeats)
    return results


def report(results, json_path=None, plot_path=None) -> None:
    """Print each model's table; write the JSON curves and the plot when asked."""
    names = list(results)
    for name, runs in results.items():
        print()
        print(table(name, runs))
    if json_path:
        runs_json = {name: {k: r.to_json() for k, r in runs.items()} for name, runs in results.items()}
        doc = {
            "dataset": DATASETS.get(names[0], "digits"),
            "model": names[0] if len(names) == 1 else names,
            "runs": runs_json[names[0]] if len(names) == 1 else runs_json,
        }
        with open(json_path, "w") as f:
            json.dump(doc, f)
        print(f"\nwrote {json_path}")
    if plot_path:
        plot(plot_path, results)
        print(f"wrote {plot_path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.framework == "torch":
        from .demo_torch import train_torch  # imports torch: only here

        results = train_torch(args)
    else:
        results = _train_numpy(args, *load_digits_split(args.seed))
    report(results, args.json, args.plot)
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
