"""The speed targets: what ngdfast is built to reach, as data, and how a run is judged against them.

Each :class:`SpeedTarget` names the cases it holds for (a section of the table,
a size and a dtype; None: every case of the section), a measure of the result
row, a bound and what it means. docs/performance.md lists the same targets.
A missed target is reported, never turned into a failing exit status: timings
on a shared machine are noise-prone. Only a wrong answer fails the bench.

Measures: ``gemm_fraction`` (the kernel's GFLOP/s over the GEMM rate),
``ratio:PEER`` (PEER's time over ngdfast's; the first peer whose name is or
contains PEER), ``time_vs:SECTION`` (this time over that of SECTION's case of
the same size and dtype), ``error`` (largest relative difference from a peer),
``time_us`` (microseconds per call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SpeedTarget:
    section: str
    size: str | None  #: None: every size of the section
    dtype: str | None  #: None: both dtypes
    measure: str
    op: str  #: ">=" or "<="
    bound: float
    meaning: str

    def holds_for(self, section: str, size: str, dtype: str) -> bool:
        return (self.section == section and self.size in (None, size) and self.dtype in (None, dtype))


def _fisher(dtype: str) -> list[SpeedTarget]:
    size = "N=512 P=4096"
    return [
        SpeedTarget("fisher", size, dtype, "gemm_fraction", ">=", 0.8, "the Fisher product near GEMM speed"),
        SpeedTarget("fisher", size, dtype, "ratio:numpy", ">=", 2.0, "twice NumPy's J.T @ J / N (both triangles)"),
        SpeedTarget("fisher", size, dtype, "ratio:syrk", ">=", 1.0, "as fast as BLAS syrk (one triangle)"),
    ]


#: The targets of the kernel table, in the order they are printed for a case.
KERNEL_TARGETS: tuple[SpeedTarget, ...] = (
    *_fisher("float64"),
    *_fisher("float32"),
    *(SpeedTarget("fisher_ema", "N=512 P=4096", dt, "time_vs:fisher", "<=", 1.05,
                  "the EMA form (out=, decay=) costs no more than fisher (5 % for noise)")
      for dt in ("float64", "float32")),
    SpeedTarget("damped_solve", "P=4096", "float64", "gemm_fraction", ">=", 0.6,
                "the damped Cholesky solve near GEMM speed"),
    SpeedTarget("damped_solve", "P=4096", "float64", "ratio:scipy-cho", ">=", 1.3,
                "faster than SciPy's cho_factor + cho_solve"),
    SpeedTarget("damped_solve", "P=4096", "float64", "ratio:scipy-cho", ">=", 2.0,
                "twice SciPy with precision=\"auto\" (float32 factor, refined)"),
    SpeedTarget("damped_solve", "P=4096", "float64", "error", "<=", 1e-10,
                "precision=\"auto\" keeps float64 accuracy"),
    SpeedTarget("natural_gradient", "N=256 P=16384", "float64", "ratio:numpy-woodbury", ">=", 1.5,
                "faster than the Woodbury solve written in NumPy"),
    SpeedTarget("natural_gradient", "N=256 P=16384", "float32", "ratio:numpy-woodbury", ">=", 1.2,
                "faster than the Woodbury solve written in NumPy"),
    *(SpeedTarget("lowrank_solve", "N=256 P=16384", dt, "ratio:numpy-woodbury", ">=", 1.2,
                  "faster than the Woodbury solve written in NumPy") for dt in ("float64", "float32")),
    SpeedTarget("kfac_precondition", "out=512 in=1024", "float64", "ratio:scipy-cho", ">=", 1.0,
                "as fast as SciPy's cho_factor + cho_solve of both factors"),
    SpeedTarget("natural_gradient", "N=256 P=16384", "float64", "error", "<=", 1e-8, "the answer of the float64 peers"),
    SpeedTarget("natural_gradient", "N=256 P=16384", "float64", "error", "<=", 1e-10,
                "precision=\"auto\" keeps float64 accuracy"),
    SpeedTarget("overhead", None, None, "time_us", "<=", 20.0, "small calls stay cheap (fixed cost per call)"),
)

#: The factor-reuse experiment (:mod:`ngdfast.bench.reuse`): mean ``DenseFisher.solve``
#: with reuse over one SciPy Cholesky solve, and its largest error; over fresh minibatches,
#: where reuse cannot pay, mean solve with reuse over that without (never slower).
REUSE_TARGET = {"ratio": 0.2, "max_error": 1e-10, "fresh_ratio": 1.0}

#: The torch section (:mod:`ngdfast.bench.torch`): ``(case, measure, bound, "ge"|"le")``.
TORCH_TARGETS = [
    ("exact", "hand torch.func Woodbury / ngdfast", 1.5, "ge"),
    ("kfac-mlp", "peer / ngdfast", 1.5, "ge"),
    ("kfac-cnn", "peer / ngdfast", 1.5, "ge"),
    ("overhead", "K-FAC step / Adam step", 1.5, "le"),
    ("time-to-adam", "Adam time / K-FAC time", 2.0, "ge"),
]


def apply_targets(plan: dict[str, list[Any]], sweep: bool) -> dict[str, list[Any]]:
    """Attach to every case of ``plan`` the targets that hold for it, in place; returns ``plan``.

    The targets are stated for the default cases; a ``--sizes`` sweep (``sweep``)
    keeps only those of every size (the per-call cost)."""
    for section, cases in plan.items():
        for case in cases:
            case.targets += [t for t in KERNEL_TARGETS if t.holds_for(section, case.size, case.dtype)
                             and not (sweep and t.size is not None)]
    return plan


def _value(measure: str, r: dict[str, Any], by_key: dict) -> float | None:
    if measure == "gemm_fraction":
        return r["gemm_fraction"]
    if measure == "error":
        return r["error"]
    if measure == "time_us":
        return r["seconds"] * 1e6
    if measure.startswith("ratio:"):
        want = measure.split(":", 1)[1]
        ratios = [p["ratio"] for peer, p in r["peers"].items() if peer == want]
        ratios += [p["ratio"] for peer, p in r["peers"].items() if want in peer]
        return ratios[0] if ratios else None
    if measure.startswith("time_vs:"):
        other = by_key.get((measure.split(":", 1)[1], r["size"], r["dtype"]))
        return r["seconds"] / other["seconds"] if other else None
    raise ValueError(measure)


def measure_label(measure: str) -> str:
    """A measure in words, for the printed list."""
    if measure.startswith("ratio:"):
        return f"speed-up over {measure.split(':', 1)[1]}"
    if measure.startswith("time_vs:"):
        return f"time / time of {measure.split(':', 1)[1]}"
    return {"gemm_fraction": "fraction of GEMM rate", "error": "relative difference",
            "time_us": "microseconds per call"}[measure]


def met(value: float, op: str, bound: float) -> bool:
    return bool(value >= bound if op == ">=" else value <= bound)


def check_targets(results: list[tuple[Any, dict[str, Any]]]) -> list[tuple[SpeedTarget, dict[str, Any]]]:
    """``(target, verdict)`` for every target of every ``(case, result row)`` that could be measured;
    the verdicts (``kernel, size, dtype, measure, op, bound, value, met``) go to the JSON."""
    by_key = {(r["kernel"], r["size"], r["dtype"]): r for _, r in results}
    checked = []
    for case, r in results:
        for t in case.targets:
            value = _value(t.measure, r, by_key)
            if value is None:
                continue
            checked.append((t, {"kernel": r["kernel"], "size": r["size"], "dtype": r["dtype"],
                                "measure": t.measure, "op": t.op, "bound": t.bound, "value": value,
                                "met": met(value, t.op, t.bound)}))
    return checked


def reuse_met(reuse: dict[str, Any]) -> bool:
    """Whether the factor-reuse experiment reached :data:`REUSE_TARGET`."""
    return reuse["ratio"] <= REUSE_TARGET["ratio"] and reuse["reuse"]["max_error"] <= REUSE_TARGET["max_error"]


def check_torch_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per row of a target's case that has a ratio (the ngdfast rows excepted);
    a target none of whose rows was measured gets one verdict with value None, not met."""
    out = []
    for case, measure, bound, op in TORCH_TARGETS:
        sign = ">=" if op == "ge" else "<="
        measured = [r for r in rows if r["case"] == case and r["ratio"] is not None
                    and not r["variant"].startswith("ngdfast")]
        for r in measured:
            out.append({"case": case, "versus": r["variant"], "measure": measure, "value": r["ratio"],
                        "op": sign, "bound": bound, "met": met(r["ratio"], sign, bound)})
        if not measured:
            out.append({"case": case, "versus": "-", "measure": measure, "value": None,
                        "op": sign, "bound": bound, "met": False})
    return out
