"""The measurement of a training run: its record, its timing, the learning-rate grid."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Run:
    """Record of one training run: one entry per evaluation.

    ``seconds`` is the cumulative optimisation time (bookkeeping excluded), ``loss``
    and ``accuracy`` the training objective and accuracy, ``test_loss`` and
    ``test_accuracy`` the held-out ones. ``step`` is the step after which each entry
    was taken when the run is not evaluated after every step (``None``: entry k
    follows step k + 1).
    """

    settings: dict
    loss: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    test_loss: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    diverged: bool = False
    step: list | None = None

    def add(self, elapsed, loss, accuracy, test_loss, test_accuracy, step=None) -> None:
        """Append one evaluation; a non-finite training loss marks the run diverged."""
        self.loss.append(loss)
        self.seconds.append(elapsed)
        self.accuracy.append(accuracy)
        self.test_loss.append(test_loss)
        self.test_accuracy.append(test_accuracy)
        if step is not None:
            self.step = [] if self.step is None else self.step
            self.step.append(step)
        if not math.isfinite(loss):
            self.diverged = True

    def record(self, problem, state, elapsed) -> None:
        """Append ``problem.evaluate(state)``."""
        self.add(elapsed, *problem.evaluate(state))

    @property
    def steps(self) -> int:
        """Steps taken."""
        return self.step[-1] if self.step else len(self.loss)

    def final_of(self, metric: str = "loss") -> float:
        """Last value of ``metric`` (``"loss"`` or ``"test_loss"``); inf for a diverged run."""
        values = getattr(self, metric)
        return values[-1] if values and not self.diverged else math.inf

    @property
    def final(self) -> float:
        return self.final_of("loss")

    def reach(self, target, metric: str = "loss"):
        """(steps, seconds) to first bring ``metric`` to ``target`` or below; None if never."""
        for k, value in enumerate(getattr(self, metric)):
            if value <= target:
                return (self.step[k] if self.step else k + 1), self.seconds[k]
        return None

    def to_json(self) -> dict:
        def finite(values):  # strict JSON has no NaN/Infinity
            return [v if math.isfinite(v) else None for v in values]

        doc = {
            "loss": finite(self.loss),
            "seconds": self.seconds,
            "accuracy": self.accuracy,
            "test_loss": finite(self.test_loss),
            "test_accuracy": self.test_accuracy,
            "settings": self.settings,
            "diverged": self.diverged,
        }
        if self.step is not None:
            doc["step"] = self.step
        return doc


def progress(total, desc, enabled):
    """A tqdm bar on stderr (``update()`` per step), hidden when not ``enabled``."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False, dynamic_ncols=True)


def timed_run(problem, state, steps, settings, bar, step) -> Run:
    """``step(t)`` (t = 1, 2, ...) does one step's optimisation work on ``state``, the
    only part timed; after each step the run records ``problem.evaluate(state)``."""
    run = Run(settings)
    elapsed = 0.0
    for t in range(1, steps + 1):
        start = time.perf_counter()
        step(t)
        elapsed += time.perf_counter() - start
        run.record(problem, state, elapsed)
        bar.update()
        if run.diverged:
            break
    return run


def fastest(first: Run, again: Run) -> None:
    """Keep, entry by entry, the shorter of two timings of the same run (in ``first``).

    A shared machine stalls a process now and then; a stall lands on different
    steps in two repeats, so the per-step minimum is the cost of the work itself.
    """
    n = min(len(first.seconds), len(again.seconds))
    a = np.diff(first.seconds[:n], prepend=0.0)
    b = np.diff(again.seconds[:n], prepend=0.0)
    first.seconds[:n] = np.cumsum(np.minimum(a, b)).tolist()


def grid_search(name, runner, problem, state0, steps, grid, enabled, repeats, metric="loss"):
    """``runner(problem, state0, steps, lr, bar)`` for each learning rate of ``grid``; the run
    whose final ``metric`` is lowest, its timing the per-step minimum of ``repeats`` runs.

    Prints one line: each rate's final ``metric`` and the one chosen.
    """
    runs = {}
    with progress(steps * (len(grid) + repeats - 1), f"{problem.name}: {name} grid", enabled) as bar:
        for lr in grid:
            runs[lr] = runner(problem, state0, steps, lr, bar)
        best = min(grid, key=lambda lr: runs[lr].final_of(metric))
        for _ in range(repeats - 1):
            fastest(runs[best], runner(problem, state0, steps, best, bar))
    finals = ", ".join(
        f"{lr:g}: {'diverged' if runs[lr].diverged else format(runs[lr].final_of(metric), '.4f')}" for lr in grid
    )
    print(f"  {name:<5} learning rates {{{finals}}} -> {best:g}")
    return runs[best]
