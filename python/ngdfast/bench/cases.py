"""The problems the bench times: one builder of inputs per kernel, the cases built on them, the plans.

A problem builder (:func:`fisher_problem`, :func:`damped_solve_problem`, ...)
returns a kernel's inputs for given sizes; ``python -m ngdfast bench`` and the
pytest-benchmark files in ``bench/`` both take their inputs from it. A
:class:`Case` adds the ngdfast call, its peers and the flop count; a plan maps
each section of the table to its cases. Adding a kernel to the bench means a
problem builder, a case builder and a line in the plans.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .peers import (
    numpy_kfac_precondition,
    numpy_woodbury,
    relative_error,
    relative_error_upper,
    scipy,
    scipy_cho_solve,
    tolerance,
)
from .targets import SpeedTarget, apply_targets
from .timing import time_blocks

DAMPING = 1e-2  # keeps the benchmark problems' damped matrices well conditioned
DECAY = 0.9  # EMA decay for the fisher(out=, decay=) form
KL_RADIUS = 1e-3

#: The sections of the table that are made of cases, in the order they run.
CASE_SECTIONS = ("fisher", "fisher_ema", "damped_solve", "lowrank_solve", "natural_gradient",
                 "kfac_precondition", "overhead")


# ---------------------------------------------------------------------------
# problems: the inputs of each kernel


def scores(n: int, p: int, dtype: str, seed: int = 0) -> np.ndarray:
    """An N x P matrix of standard normal score rows."""
    return np.random.default_rng(seed).standard_normal((n, p)).astype(dtype)


def gram(J: np.ndarray) -> np.ndarray:
    """``J.T @ J / N`` computed in float64 and returned in J's dtype, exactly
    symmetric: the problem's Fisher, built without the kernel under test."""
    J64 = J.astype(np.float64)
    F = J64.T @ J64
    F = 0.5 * (F + F.T)
    F /= J.shape[0]
    return F.astype(J.dtype)


def spd(p: int, dtype: str) -> np.ndarray:
    """A P x P Fisher of P/2 random score rows: rank-deficient like a real
    one, so the damping is what makes it positive definite (condition number
    of ``F + λI`` below ~6/λ)."""
    return gram(scores(max(p // 2, 1), p, "float64", seed=1)).astype(dtype)


def fisher_problem(n: int, p: int, dtype: str) -> np.ndarray:
    """``J`` (N x P) of ``fisher`` and its EMA form."""
    return scores(n, p, dtype)


def damped_solve_problem(p: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``(F, g)`` of ``damped_solve``: :func:`spd` and a random gradient."""
    return spd(p, dtype), np.random.default_rng(2).standard_normal(p).astype(dtype)


def lowrank_problem(n: int, p: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``(J, g)`` of ``lowrank_solve`` and ``natural_gradient``."""
    return scores(n, p, dtype), np.random.default_rng(3).standard_normal(p).astype(dtype)


def kfac_problem(n_out: int, n_in: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grad, A, S)`` of ``kfac_precondition`` for a linear layer of ``n_in``
    inputs plus a bias column and ``n_out`` outputs: A and S are the Gram
    matrices of 2a activation and 2s output-gradient rows."""
    a = n_in + 1
    rng = np.random.default_rng(4)
    acts = rng.standard_normal((2 * a, a))
    acts[:, -1] = 1.0  # the bias column
    A = gram(acts).astype(dtype)
    S = gram(rng.standard_normal((2 * n_out, n_out))).astype(dtype)
    grad = rng.standard_normal((n_out, a)).astype(dtype)
    return grad, A, S


def kl_step_problem(p: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``(g, nat)`` of ``kl_step_size``: a gradient and a direction with ``g @ nat > 0``."""
    rng = np.random.default_rng(5)
    g = rng.standard_normal(p).astype(dtype)
    return g, (g * rng.uniform(0.5, 2.0, p)).astype(dtype)


# ---------------------------------------------------------------------------
# cases: a problem, the ngdfast call, its peers and its flops


Peers = dict[str, tuple[Callable[[], Any], Callable[[Any, Any], float]]]


@dataclass
class Case:
    """One kernel at one size: how to build its inputs and what to time.

    ``build()`` returns ``(run, peers, kind)``: the ngdfast call, the peers
    ``{name: (call, compare)}`` where ``compare(x_ngdfast, x_peer)`` gives the
    relative difference, and the tolerance kind ("product" or "solve").
    Inputs are built only when the case runs, so large ones do not pile up.
    ``targets``: the speed targets that hold for it (:mod:`ngdfast.bench.targets`).
    """

    kernel: str
    size: str
    dtype: str
    flops: float
    build: Callable[[], tuple[Callable[[], Any], Peers, str]]
    p: int
    targets: list[SpeedTarget] = field(default_factory=list)


def _syrk(dtype) -> Any:
    """SciPy's ssyrk/dsyrk, or None without SciPy."""
    sp = scipy()
    return None if sp is None else sp.linalg.blas.get_blas_funcs("syrk", dtype=np.dtype(dtype))


def fisher_case(n: int, p: int, dtype: str) -> Case:
    def build():
        from .. import fisher

        J = fisher_problem(n, p, dtype)
        peers: Peers = {"numpy": (lambda: J.T @ J / n, relative_error)}
        syrk = _syrk(dtype)
        if syrk is not None:
            # J.T is Fortran-ordered (P, N): C = a a^T = J^T J without a copy of J.
            peers[f"scipy-{syrk.typecode}syrk"] = (lambda: syrk(1.0 / n, J.T, trans=0), relative_error_upper)
        return (lambda: fisher(J)), peers, "product"

    return Case("fisher", f"N={n} P={p}", dtype, float(n) * p * p, build, p)


def fisher_ema_case(n: int, p: int, dtype: str) -> Case:
    def build():
        from .. import fisher

        J = fisher_problem(n, p, dtype)
        # Starting every running estimate at the batch Fisher makes it a fixed
        # point of F <- d F + (1 - d) F_batch, so all answers stay comparable
        # however many times each one is updated.
        start = gram(J)
        out = start.copy()
        F_np = start.copy()
        w = (1.0 - DECAY) / n

        def numpy_ema():
            F_np[...] *= DECAY
            F_np[...] += (J.T @ J) * w
            return F_np

        peers: Peers = {"numpy": (numpy_ema, relative_error)}
        syrk = _syrk(dtype)
        if syrk is not None:
            C = np.asfortranarray(start)

            def syrk_ema():
                return syrk(w, J.T, beta=DECAY, c=C, trans=0, overwrite_c=1)

            peers[f"scipy-{syrk.typecode}syrk"] = (syrk_ema, relative_error_upper)
        return (lambda: fisher(J, out=out, decay=DECAY)), peers, "product"

    return Case("fisher_ema", f"N={n} P={p}", dtype, float(n) * p * p, build, p)


def damped_solve_case(p: int, dtype: str) -> Case:
    def build():
        from .. import damped_solve

        F, g = damped_solve_problem(p, dtype)
        eye = np.eye(p, dtype=dtype)
        peers: Peers = {"numpy-solve": (lambda: np.linalg.solve(F + DAMPING * eye, g), relative_error)}
        if scipy() is not None:
            peers["scipy-cho"] = (lambda: scipy_cho_solve(F + DAMPING * eye, g), relative_error)
        if dtype == "float64":  # "auto" may refine a float32 factor: the float64 path beside it
            peers["ngdfast-double"] = (lambda: damped_solve(F, g, DAMPING, precision="double"), relative_error)
        return (lambda: damped_solve(F, g, DAMPING)), peers, "solve"

    flops = p**3 / 3.0 + 2.0 * p * p
    return Case("damped_solve", f"P={p}", dtype, flops, build, p)


def lowrank_flops(n: int, p: int) -> float:
    """Woodbury: the N x N Gram, its Cholesky, the products with J."""
    return float(n) * n * p + n**3 / 3.0 + 4.0 * n * p


def dense_flops(n: int, p: int) -> float:
    """The P x P Fisher, its Cholesky, the solves."""
    return float(n) * p * p + p**3 / 3.0 + 2.0 * p * p


def lowrank_case(kernel: str, n: int, p: int, dtype: str) -> Case:
    """``lowrank_solve`` or ``natural_gradient`` (``kernel``) on the same problem."""
    def build():
        from .. import lowrank_solve, natural_gradient

        J, g = lowrank_problem(n, p, dtype)
        peers: Peers = {"numpy-woodbury": (lambda: numpy_woodbury(J, g, DAMPING), relative_error)}
        solve = lowrank_solve if kernel == "lowrank_solve" else natural_gradient
        if dtype == "float64":
            peers["ngdfast-double"] = (lambda: solve(J, g, DAMPING, precision="double"), relative_error)
        return (lambda: solve(J, g, DAMPING)), peers, "solve"

    if kernel == "lowrank_solve":
        flops = lowrank_flops(n, p)
    else:  # "auto" picks the cheaper method: credit it with the cheaper count
        flops = min(lowrank_flops(n, p), dense_flops(n, p))
    return Case(kernel, f"N={n} P={p}", dtype, flops, build, p)


def kfac_case(n_out: int, n_in: int, dtype: str) -> Case:
    a, s = n_in + 1, n_out  # bias as the last input column

    def build():
        from .. import kfac_precondition

        grad, A, S = kfac_problem(n_out, n_in, dtype)
        peers: Peers = {
            "numpy-solve": (lambda: numpy_kfac_precondition(grad, A, S, DAMPING), relative_error)
        }
        if scipy() is not None:
            peers["scipy-cho"] = (lambda: numpy_kfac_precondition(grad, A, S, DAMPING, scipy_cho_solve),
                                  relative_error)
        return (lambda: kfac_precondition(grad, A, S, DAMPING)), peers, "solve"

    flops = (a**3 + s**3) / 3.0 + 2.0 * a * s * (a + s)
    return Case("kfac_precondition", f"out={n_out} in={n_in}", dtype, flops, build, a)


def kl_step_case(p: int, dtype: str) -> Case:
    def build():
        from .. import kl_step_size

        g, nat = kl_step_problem(p, dtype)

        def numpy_beta():
            return min(math.sqrt(2.0 * KL_RADIUS / float(g @ nat)), 1.0)

        return (lambda: kl_step_size(g, nat, KL_RADIUS, max_step=1.0)), {"numpy": (numpy_beta, relative_error)}, "solve"

    return Case("kl_step_size", f"P={p}", dtype, 2.0 * p, build, p)


def overhead_cases(p: int = 64, n: int = 32) -> list[Case]:
    """Every kernel at P=64: the per-call cost a trainer pays every step."""
    side = int(math.isqrt(p))
    return [
        fisher_case(n, p, "float64"),
        fisher_ema_case(n, p, "float64"),
        damped_solve_case(p, "float64"),
        lowrank_case("lowrank_solve", n, p, "float64"),
        lowrank_case("natural_gradient", n, p, "float64"),
        kfac_case(side, side - 1, "float64"),  # side x side weights incl. bias: P = 64
        kl_step_case(p, "float64"),
    ]


# ---------------------------------------------------------------------------
# plans: the cases of each section


def default_plan(quick: bool) -> dict[str, list[Case]]:
    """Cases per section. The full plan holds the cases the speed targets are stated for."""
    if quick:
        plan = {
            "fisher": [fisher_case(32, 128, dt) for dt in ("float64", "float32")],
            "fisher_ema": [fisher_ema_case(32, 128, "float64")],
            "damped_solve": [damped_solve_case(128, dt) for dt in ("float64", "float32")],
            "lowrank_solve": [lowrank_case("lowrank_solve", 16, 256, "float64")],
            "natural_gradient": [lowrank_case("natural_gradient", 16, 256, dt) for dt in ("float64", "float32")],
            "kfac_precondition": [kfac_case(16, 31, "float64")],
            "overhead": overhead_cases(),
        }
    else:
        plan = {
            "fisher": [fisher_case(512, 1024, "float64")]
            + [fisher_case(512, 4096, dt) for dt in ("float64", "float32")],
            "fisher_ema": [fisher_ema_case(512, 4096, dt) for dt in ("float64", "float32")],
            "damped_solve": [damped_solve_case(1024, "float64")]
            + [damped_solve_case(4096, dt) for dt in ("float64", "float32")],
            "lowrank_solve": [lowrank_case("lowrank_solve", 256, 4096, "float64")]
            + [lowrank_case("lowrank_solve", 256, 16384, dt) for dt in ("float64", "float32")],
            "natural_gradient": [lowrank_case("natural_gradient", 256, 1024, "float64")]
            + [lowrank_case("natural_gradient", 256, 16384, dt) for dt in ("float64", "float32")],
            "kfac_precondition": [kfac_case(512, 1024, dt) for dt in ("float64", "float32")],
            "overhead": overhead_cases(),
        }
    return apply_targets(plan, sweep=False)


def sized_plan(sizes: list[int], dtypes: list[str]) -> dict[str, list[Case]]:
    """Cases for the given parameter counts P: fisher with N=512, the
    sample-space solves with N=256 (or P/2 when smaller), K-FAC for a layer of
    P/2 outputs and P inputs (P is its input width here)."""
    plan: dict[str, list[Case]] = {k: [] for k in CASE_SECTIONS if k != "overhead"}
    for p in sizes:
        for dt in dtypes:
            n_low = min(256, max(p // 2, 1))
            plan["fisher"].append(fisher_case(512, p, dt))
            plan["fisher_ema"].append(fisher_ema_case(512, p, dt))
            plan["damped_solve"].append(damped_solve_case(p, dt))
            plan["lowrank_solve"].append(lowrank_case("lowrank_solve", n_low, p, dt))
            plan["natural_gradient"].append(lowrank_case("natural_gradient", n_low, p, dt))
            plan["kfac_precondition"].append(kfac_case(max(p // 2, 1), p, dt))
    plan["overhead"] = overhead_cases()
    return apply_targets(plan, sweep=True)


# ---------------------------------------------------------------------------
# running one case


def run_case(case: Case, repeats: int, gemm: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Time ``case`` beside its peers and check every answer: one row of the table, as a dict."""
    run, peers, kind = case.build()
    tol = tolerance(kind, case.dtype)
    fns = {"ngdfast": run, **{name: call for name, (call, _) in peers.items()}}
    answers, once = {}, {}
    for name, fn in fns.items():  # the warm-up calls, whose answers are checked
        t0 = time.perf_counter()
        # copy: the EMA forms return their running buffers, which later calls change
        answers[name] = np.array(fn(), copy=True)
        once[name] = time.perf_counter() - t0
    x = answers.pop("ngdfast")
    errors = {name: peers[name][1](x, answer) for name, answer in answers.items()}
    times = time_blocks(fns, repeats, once=once)
    seconds = times.pop("ngdfast")
    gflops = case.flops / seconds / 1e9
    return {
        "kernel": case.kernel,
        "size": case.size,
        "dtype": case.dtype,
        "p": case.p,
        "seconds": seconds,
        "flops": case.flops,
        "gflops": gflops,
        "gemm_fraction": gflops / gemm[case.dtype]["gflops"],
        "peers": {
            name: {"seconds": t, "ratio": t / seconds, "error": errors[name], "ok": bool(errors[name] <= tol)}
            for name, t in times.items()
        },
        "error": max(errors.values(), default=0.0),
        "tolerance": tol,
        "ok": all(e <= tol for e in errors.values()),
    }
