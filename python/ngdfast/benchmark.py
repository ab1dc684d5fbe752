r"""Time the compiled kernels beside NumPy and SciPy: ``python -m ngdfast bench``.

For every kernel and size the table shows

- ``time``: the median over ``--repeats`` samples, after one warm-up call
  (calls of a few microseconds are repeated inside each sample so that one
  sample lasts at least a millisecond);
- ``GFLOP/s``: the kernel's useful work divided by that time, with the flop
  counts below (2 flops per multiply-add, whatever an implementation does);
- ``of GEMM``: that rate as a fraction of the machine's matrix-multiply rate,
  measured at start as NumPy ``A @ B`` with n = 2048 and counted as
  :math:`2n^3` (float32 cases are compared with the float32 rate);
- ``vs peers``: peer time / ngdfast time for every peer timed in the same
  process (> 1 means ngdfast is faster). Each function is timed in a block of
  its own after a short pause: NumPy's OpenBLAS workers keep spinning for
  ~0.1 s after each NumPy call, and whatever runs next on a 2-core machine
  pays for that (measured: a 18 ms Woodbury solve took 31 ms right after a
  NumPy matmul). That interference is real for trainers, so the alternating
  section below measures it on purpose;
- ``max err``: the largest relative difference
  :math:`\|x - x_\text{peer}\|_F / \|x_\text{peer}\|_F` between ngdfast's
  answer and a peer's; every answer is checked, and the exit status is 1 when
  one disagrees beyond the dtype's tolerance.

Flop counts (N samples, P parameters, K right-hand sides, K-FAC factors of
size a (inputs + bias) and s (outputs)):

==================  =====================================================
fisher              :math:`N P^2` (one triangle of :math:`J^T J`)
damped_solve        :math:`P^3/3 + 2P^2K`
lowrank_solve       :math:`N^2 P + N^3/3 + 4NPK`
natural_gradient    the cheaper of fisher + damped_solve and lowrank_solve
kfac_precondition   :math:`(a^3 + s^3)/3 + 2as(a + s)`
kl_step_size        :math:`2P`
==================  =====================================================

The alternating section repeats a trainer's loop: NumPy BLAS work (a
512 x 512 matmul) and a kernel call every step. Its slowdown is the
alternating time over the sum of the two parts timed alone; well above 1
means the thread pools of the two libraries get in each other's way.

The default set holds the cases the speed targets are stated for (issue 3)
and prints them with their targets at the end; a missed timing target is
reported, never turned into a failing exit status, because timings on a shared
machine are noise-prone.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# Relative Frobenius-norm tolerance between ngdfast's and a peer's answer.
# Products (fisher) only accumulate rounding; solves also multiply it by the
# condition number of the damped matrix (below 2e3 for the problems built here).
TOLERANCE = {
    "product": {"float64": 1e-10, "float32": 1e-4},
    "solve": {"float64": 1e-8, "float32": 2e-3},
}

DAMPING = 1e-2  # keeps the benchmark problems' damped matrices well conditioned
DECAY = 0.9  # EMA decay for the fisher(out=, decay=) form
KL_RADIUS = 1e-3

KERNELS = (
    "fisher",
    "fisher_ema",
    "damped_solve",
    "lowrank_solve",
    "natural_gradient",
    "kfac_precondition",
    "overhead",
    "alternating",
    "reuse",
)
#: Sections run only when named in ``--kernels`` (they need an optional dependency).
OPTIONAL_SECTIONS = ("torch",)  # ngdfast.bench_torch: ngdfast.torch beside the torch libraries


# ---------------------------------------------------------------------------
# timing


def _samples_per_call(fn: Callable[[], Any], min_sample: float, once: float | None = None) -> int:
    """Calls per timed sample so that a sample lasts at least ``min_sample``
    seconds: for microsecond calls the timer's resolution and the loop then
    stay negligible. ``once``: the duration of a call already made (saves a
    probe call of a slow kernel)."""
    if once is None or once < min_sample:  # a single cold call overstates small ones: probe warm
        t0 = time.perf_counter()
        fn()
        once = time.perf_counter() - t0
    if once >= min_sample:
        return 1
    return min(int(min_sample / max(once, 1e-7)) + 1, 100_000)


#: Seconds to wait before each timed block: longer than the ~0.1 s that NumPy's
#: OpenBLAS workers spin after a call (their ``THREAD_TIMEOUT``).
SETTLE = 0.15


def time_blocks(
    fns: dict[str, Callable[[], Any]], repeats: int, min_sample: float = 1e-3,
    once: dict[str, float] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each function, after a warm-up call.

    Each function runs its ``repeats`` samples back to back, after a pause of
    :data:`SETTLE` seconds and one untimed call, so that no function is charged
    for the spinning threads another library left behind. ``once`` holds the
    durations of warm-up calls the caller already made.
    """
    once = once or {}
    numbers = {name: _samples_per_call(fn, min_sample, once.get(name)) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one sample would be charged to that kernel
    try:
        for name, fn in fns.items():
            number = numbers[name]
            time.sleep(SETTLE)
            fn()
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(number):
                    fn()
                samples[name].append((time.perf_counter() - t0) / number)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: statistics.median(s) for name, s in samples.items()}


def gemm_rate(dtype: str, n: int, repeats: int) -> dict[str, Any]:
    """The machine's matrix-multiply rate: NumPy ``A @ B`` for n x n, 2n^3 flops."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    seconds = time_blocks({"gemm": lambda: a @ b}, repeats)["gemm"]
    return {"n": n, "seconds": seconds, "gflops": 2.0 * n**3 / seconds / 1e9}


# ---------------------------------------------------------------------------
# problems


@dataclass
class Case:
    """One kernel at one size: how to build its inputs and what to time.

    ``build()`` returns ``(run, peers, kind)``: the ngdfast call, the peers
    ``{name: (call, compare)}`` where ``compare(x_ngdfast, x_peer)`` gives the
    relative difference, and the tolerance kind ("product" or "solve").
    Inputs are built only when the case runs, so large ones do not pile up.
    """

    kernel: str
    size: str
    dtype: str
    flops: float
    build: Callable[[], tuple[Callable[[], Any], dict[str, tuple[Callable[[], Any], Callable]], str]]
    p: int
    targets: list[tuple[str, str, float]] = field(default_factory=list)


def _rel(a: Any, b: Any) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(np.float64).tiny))


def _rel_upper(a: Any, b: Any) -> float:
    """Compare upper triangles only: BLAS syrk writes one triangle."""
    return _rel(np.triu(a), np.triu(b))


def _scipy() -> Any:
    try:
        import scipy.linalg
        import scipy.linalg.blas
    except ImportError:
        return None
    return scipy


def _scores(n: int, p: int, dtype: str, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, p)).astype(dtype)


def _gram(J: np.ndarray) -> np.ndarray:
    """``J.T @ J / N`` computed in float64 and returned in J's dtype, exactly
    symmetric: the problem's Fisher, built without the kernel under test."""
    J64 = J.astype(np.float64)
    F = J64.T @ J64
    F = 0.5 * (F + F.T)
    F /= J.shape[0]
    return F.astype(J.dtype)


def _fisher_case(n: int, p: int, dtype: str) -> Case:
    def build():
        from . import fisher

        J = _scores(n, p, dtype)
        peers = {"numpy": (lambda: J.T @ J / n, _rel)}
        sp = _scipy()
        if sp is not None:
            syrk = sp.linalg.blas.get_blas_funcs("syrk", dtype=J.dtype)
            # J.T is Fortran-ordered (P, N): C = a a^T = J^T J without a copy of J.
            peers[f"scipy-{syrk.typecode}syrk"] = (lambda: syrk(1.0 / n, J.T, trans=0), _rel_upper)
        return (lambda: fisher(J)), peers, "product"

    return Case("fisher", f"N={n} P={p}", dtype, float(n) * p * p, build, p)


def _fisher_ema_case(n: int, p: int, dtype: str) -> Case:
    def build():
        from . import fisher

        J = _scores(n, p, dtype)
        # Starting every running estimate at the batch Fisher makes it a fixed
        # point of F <- d F + (1 - d) F_batch, so all answers stay comparable
        # however many times each one is updated.
        start = _gram(J)
        out = start.copy()
        F_np = start.copy()
        w = (1.0 - DECAY) / n

        def numpy_ema():
            F_np[...] *= DECAY
            F_np[...] += (J.T @ J) * w
            return F_np

        peers = {"numpy": (numpy_ema, _rel)}
        sp = _scipy()
        if sp is not None:
            syrk = sp.linalg.blas.get_blas_funcs("syrk", dtype=J.dtype)
            C = np.asfortranarray(start)

            def syrk_ema():
                return syrk(w, J.T, beta=DECAY, c=C, trans=0, overwrite_c=1)

            peers[f"scipy-{syrk.typecode}syrk"] = (syrk_ema, _rel_upper)
        return (lambda: fisher(J, out=out, decay=DECAY)), peers, "product"

    return Case("fisher_ema", f"N={n} P={p}", dtype, float(n) * p * p, build, p)


def _spd(p: int, dtype: str) -> np.ndarray:
    """A P x P Fisher of P/2 random score rows: rank-deficient like a real
    one, so the damping is what makes it positive definite."""
    return _gram(_scores(max(p // 2, 1), p, "float64", seed=1)).astype(dtype)


def _damped_solve_case(p: int, dtype: str) -> Case:
    def build():
        from . import damped_solve

        F = _spd(p, dtype)
        g = np.random.default_rng(2).standard_normal(p).astype(dtype)
        eye = np.eye(p, dtype=dtype)
        peers = {"numpy-solve": (lambda: np.linalg.solve(F + DAMPING * eye, g), _rel)}
        sp = _scipy()
        if sp is not None:
            peers["scipy-cho"] = (lambda: scipy_cho_solve(F + DAMPING * eye, g), _rel)
        if dtype == "float64":  # "auto" may refine a float32 factor: the float64 path beside it
            peers["ngdfast-double"] = (lambda: damped_solve(F, g, DAMPING, precision="double"), _rel)
        return (lambda: damped_solve(F, g, DAMPING)), peers, "solve"

    flops = p**3 / 3.0 + 2.0 * p * p
    return Case("damped_solve", f"P={p}", dtype, flops, build, p)


def numpy_woodbury(J: np.ndarray, g: np.ndarray, lam: float) -> np.ndarray:
    r"""The sample-space solve a user writes by hand, the peer of ``lowrank_solve``:
    :math:`(J^TJ/N + \lambda I)^{-1} g = (g - J^T (JJ^T + N\lambda I)^{-1} J g) / \lambda`."""
    n = J.shape[0]
    K = J @ J.T + n * lam * np.eye(n, dtype=J.dtype)
    return (g - J.T @ np.linalg.solve(K, J @ g)) / lam


def _lowrank_flops(n: int, p: int) -> float:
    return float(n) * n * p + n**3 / 3.0 + 4.0 * n * p


def _dense_flops(n: int, p: int) -> float:
    return float(n) * p * p + p**3 / 3.0 + 2.0 * p * p


def _lowrank_case(kernel: str, n: int, p: int, dtype: str) -> Case:
    def build():
        from . import lowrank_solve, natural_gradient

        J = _scores(n, p, dtype)
        g = np.random.default_rng(3).standard_normal(p).astype(dtype)
        peers = {"numpy-woodbury": (lambda: numpy_woodbury(J, g, DAMPING), _rel)}
        solve = lowrank_solve if kernel == "lowrank_solve" else natural_gradient
        if dtype == "float64":
            peers["ngdfast-double"] = (lambda: solve(J, g, DAMPING, precision="double"), _rel)
        return (lambda: solve(J, g, DAMPING)), peers, "solve"

    if kernel == "lowrank_solve":
        flops = _lowrank_flops(n, p)
    else:  # "auto" picks the cheaper method: credit it with the cheaper count
        flops = min(_lowrank_flops(n, p), _dense_flops(n, p))
    return Case(kernel, f"N={n} P={p}", dtype, flops, build, p)


def numpy_kfac_precondition(grad, A, S, lam, solve=np.linalg.solve):
    r"""The peer of ``kfac_precondition`` by hand: :math:`X = \tilde S^{-1} G \tilde A^{-1}`
    with :math:`\tilde A = A + \pi\sqrt\lambda I`, :math:`\tilde S = S + (\sqrt\lambda/\pi) I`,
    :math:`\pi = \sqrt{(\mathrm{tr} A/a)/(\mathrm{tr} S/s)}` (API.md). ``solve(M, B)`` solves
    :math:`MX = B` for symmetric positive definite M."""
    a, s = A.shape[0], S.shape[0]
    ta, ts = np.trace(A) / a, np.trace(S) / s
    pi = math.sqrt(ta / ts) if ta > 0 and ts > 0 else 1.0
    root = math.sqrt(lam)
    At = A + (pi * root) * np.eye(a, dtype=A.dtype)
    St = S + (root / pi) * np.eye(s, dtype=S.dtype)
    # G A~^-1 = (A~^-1 G^T)^T because A~ is symmetric.
    return solve(St, solve(At, grad.T).T)


def scipy_cho_solve(M: np.ndarray, B: np.ndarray) -> np.ndarray:
    """:math:`M^{-1} B` by ``scipy.linalg.cho_factor`` + ``cho_solve``, factoring M in place."""
    from scipy.linalg import cho_factor, cho_solve

    return cho_solve(cho_factor(M, overwrite_a=True), B)


def _kfac_case(n_out: int, n_in: int, dtype: str) -> Case:
    a = n_in + 1  # bias as the last input column

    def build():
        from . import kfac_precondition

        rng = np.random.default_rng(4)
        acts = rng.standard_normal((2 * a, a))
        acts[:, -1] = 1.0
        A = _gram(acts).astype(dtype)
        S = _gram(rng.standard_normal((2 * n_out, n_out))).astype(dtype)
        grad = rng.standard_normal((n_out, a)).astype(dtype)
        peers = {
            "numpy-solve": (lambda: numpy_kfac_precondition(grad, A, S, DAMPING), _rel)
        }
        sp = _scipy()
        if sp is not None:
            peers["scipy-cho"] = (lambda: numpy_kfac_precondition(grad, A, S, DAMPING, scipy_cho_solve), _rel)
        return (lambda: kfac_precondition(grad, A, S, DAMPING)), peers, "solve"

    s = n_out
    flops = (a**3 + s**3) / 3.0 + 2.0 * a * s * (a + s)
    return Case("kfac_precondition", f"out={n_out} in={n_in}", dtype, flops, build, a)


def _kl_step_case(p: int, dtype: str) -> Case:
    def build():
        from . import kl_step_size

        rng = np.random.default_rng(5)
        g = rng.standard_normal(p).astype(dtype)
        nat = (g * rng.uniform(0.5, 2.0, p)).astype(dtype)

        def numpy_beta():
            return min(math.sqrt(2.0 * KL_RADIUS / float(g @ nat)), 1.0)

        return (lambda: kl_step_size(g, nat, KL_RADIUS, max_step=1.0)), {"numpy": (numpy_beta, _rel)}, "solve"

    return Case("kl_step_size", f"P={p}", dtype, 2.0 * p, build, p)


def _overhead_cases(p: int = 64, n: int = 32) -> list[Case]:
    """Every kernel at P=64: the per-call cost a trainer pays every step."""
    side = int(math.isqrt(p))
    cases = [
        _fisher_case(n, p, "float64"),
        _fisher_ema_case(n, p, "float64"),
        _damped_solve_case(p, "float64"),
        _lowrank_case("lowrank_solve", n, p, "float64"),
        _lowrank_case("natural_gradient", n, p, "float64"),
        _kfac_case(side, side - 1, "float64"),  # side x side weights incl. bias: P = 64
        _kl_step_case(p, "float64"),
    ]
    for case in cases:
        case.targets.append(("time_us", "<=", 20.0))
    return cases


# ---------------------------------------------------------------------------
# plans


def default_plan(quick: bool) -> dict[str, list[Case]]:
    """Cases per kernel name. The full plan holds issue 3's target cases."""
    if quick:
        return {
            "fisher": [_fisher_case(32, 128, dt) for dt in ("float64", "float32")],
            "fisher_ema": [_fisher_ema_case(32, 128, "float64")],
            "damped_solve": [_damped_solve_case(128, dt) for dt in ("float64", "float32")],
            "lowrank_solve": [_lowrank_case("lowrank_solve", 16, 256, "float64")],
            "natural_gradient": [_lowrank_case("natural_gradient", 16, 256, dt) for dt in ("float64", "float32")],
            "kfac_precondition": [_kfac_case(16, 31, "float64")],
            "overhead": _overhead_cases(),
        }
    plan = {
        "fisher": [_fisher_case(512, 1024, "float64")]
        + [_fisher_case(512, 4096, dt) for dt in ("float64", "float32")],
        "fisher_ema": [_fisher_ema_case(512, 4096, dt) for dt in ("float64", "float32")],
        "damped_solve": [_damped_solve_case(1024, "float64")]
        + [_damped_solve_case(4096, dt) for dt in ("float64", "float32")],
        "lowrank_solve": [_lowrank_case("lowrank_solve", 256, 4096, "float64")]
        + [_lowrank_case("lowrank_solve", 256, 16384, dt) for dt in ("float64", "float32")],
        "natural_gradient": [_lowrank_case("natural_gradient", 256, 1024, "float64")]
        + [_lowrank_case("natural_gradient", 256, 16384, dt) for dt in ("float64", "float32")],
        "kfac_precondition": [_kfac_case(512, 1024, dt) for dt in ("float64", "float32")],
        "overhead": _overhead_cases(),
    }
    for dt in ("float64", "float32"):
        # Issue 3: >= 0.8 of the GEMM rate, >= 2x NumPy J.T@J/N, >= BLAS syrk.
        c = plan["fisher"][1 if dt == "float64" else 2]
        c.targets += [("gemm_fraction", ">=", 0.8), ("ratio:numpy", ">=", 2.0), ("ratio:syrk", ">=", 1.0)]
        # The EMA form is no slower than the plain one (5% allowed for noise).
        plan["fisher_ema"][0 if dt == "float64" else 1].targets.append(("time_vs:fisher", "<=", 1.05))
    plan["damped_solve"][1].targets += [("gemm_fraction", ">=", 0.6), ("ratio:scipy-cho", ">=", 1.3)]
    plan["natural_gradient"][1].targets += [("ratio:numpy-woodbury", ">=", 1.5), ("error", "<=", 1e-8)]
    # Issue 15: mixed precision (precision="auto") >= 2x SciPy within 1e-10.
    plan["damped_solve"][1].targets += [("ratio:scipy-cho", ">=", 2.0), ("error", "<=", 1e-10)]
    plan["natural_gradient"][1].targets.append(("error", "<=", 1e-10))
    return plan


def sized_plan(sizes: list[int], dtypes: list[str]) -> dict[str, list[Case]]:
    """Cases for the given parameter counts P: fisher with N=512, the
    sample-space solves with N=256 (or P/2 when smaller), K-FAC for a layer of
    P/2 outputs and P inputs (P is its input width here)."""
    plan: dict[str, list[Case]] = {k: [] for k in KERNELS if k not in ("overhead", "alternating")}
    for p in sizes:
        for dt in dtypes:
            n_low = min(256, max(p // 2, 1))
            plan["fisher"].append(_fisher_case(512, p, dt))
            plan["fisher_ema"].append(_fisher_ema_case(512, p, dt))
            plan["damped_solve"].append(_damped_solve_case(p, dt))
            plan["lowrank_solve"].append(_lowrank_case("lowrank_solve", n_low, p, dt))
            plan["natural_gradient"].append(_lowrank_case("natural_gradient", n_low, p, dt))
            plan["kfac_precondition"].append(_kfac_case(max(p // 2, 1), p, dt))
    plan["overhead"] = _overhead_cases()
    return plan


# ---------------------------------------------------------------------------
# running and printing


COLUMNS = (("kernel", 24, "<"), ("size", 16, "<"), ("dtype", 7, "<"), ("time", 10, ">"),
           ("GFLOP/s", 8, ">"), ("of GEMM", 7, ">"), ("max err", 8, ">"), ("vs peers (peer time / ngdfast time)", 0, "<"))


def _row(values: list[str]) -> str:
    cells = [f"{v:{align}{width}}" if width else v for v, (_, width, align) in zip(values, COLUMNS)]
    return "  ".join(cells).rstrip()


def _fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def run_case(case: Case, repeats: int, gemm: dict[str, dict[str, Any]]) -> dict[str, Any]:
    run, peers, kind = case.build()
    tol = TOLERANCE[kind][case.dtype]
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


def _print_result(r: dict[str, Any], section: str, out) -> None:
    peers = "  ".join(f"{name} {p['ratio']:.2f}x" + ("" if p["ok"] else " MISMATCH") for name, p in r["peers"].items())
    kernel = r["kernel"] if section != "overhead" else f"{r['kernel']} (call)"
    print(_row([kernel, r["size"], r["dtype"], _fmt_time(r["seconds"]), f"{r['gflops']:.2f}",
                f"{r['gemm_fraction']:.2f}", f"{r['error']:.1e}", peers]), file=out, flush=True)


def _alternating(quick: bool, repeats: int) -> list[dict[str, Any]]:
    """A trainer's step: NumPy matmul, then the curvature work, every step.

    Two workloads (a dense EMA Fisher + Cholesky solve, and a Woodbury natural
    gradient), each with ngdfast and with the NumPy/SciPy code a user would
    write. With threadpoolctl installed, ngdfast is also run with NumPy's
    BLAS limited to one thread, which removes NumPy's spinning workers, and
    without borrowing NumPy's BLAS for its products (see ngdfast._backend).
    """
    from . import _core, damped_solve, fisher, natural_gradient

    m = 128 if quick else 512
    rng = np.random.default_rng(6)
    A = rng.standard_normal((m, m))
    B = rng.standard_normal((m, m))

    def matmul():
        return A @ B

    have_scipy = _scipy() is not None
    solve = scipy_cho_solve if have_scipy else np.linalg.solve

    n, p = (32, 128) if quick else (256, 1024)
    J = _scores(n, p, "float64")
    g = rng.standard_normal(p)
    eye = np.eye(p)
    F_ng = _gram(J)
    F_np = F_ng.copy()

    def dense_ngd():
        fisher(J, out=F_ng, decay=DECAY)
        return damped_solve(F_ng, g, DAMPING)

    def dense_peer():
        F_np[...] *= DECAY
        F_np[...] += (J.T @ J) * ((1.0 - DECAY) / n)
        return solve(F_np + DAMPING * eye, g)

    nw, pw = (32, 512) if quick else (256, 16384)
    Jw = _scores(nw, pw, "float64")
    gw = rng.standard_normal(pw)
    workloads = [
        (f"fisher(out=) + damped_solve, N={n} P={p}", dense_ngd, dense_peer,
         "numpy+scipy-cho" if have_scipy else "numpy-solve"),
        (f"natural_gradient, N={nw} P={pw}", lambda: natural_gradient(Jw, gw, DAMPING),
         lambda: numpy_woodbury(Jw, gw, DAMPING), "numpy-woodbury"),
    ]
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None

    rows = []
    for step, ngd, peer, peer_name in workloads:
        fns = {
            "matmul": matmul,
            "ngdfast": ngd,
            "ngdfast+matmul": lambda ngd=ngd: (matmul(), ngd()),
            "peer": peer,
            "peer+matmul": lambda peer=peer: (matmul(), peer()),
        }
        t = time_blocks(fns, repeats)
        variants = [("ngdfast", t["ngdfast"], t["ngdfast+matmul"]), (peer_name, t["peer"], t["peer+matmul"])]
        if threadpool_limits is not None:
            with threadpool_limits(limits=1, user_api="blas"):
                # Limits every BLAS pool in the process, ngdfast's private one
                # included (it is single-threaded anyway); ngdfast's own
                # threads are not BLAS threads and keep running.
                t1 = time_blocks({"matmul": matmul, "both": lambda ngd=ngd: (matmul(), ngd())}, repeats)
            variants.append(("ngdfast, numpy 1 thread", t["ngdfast"], t1["both"]))
        if _core.get_borrow_mode() == "auto":
            # The same loop without borrowing NumPy's BLAS (NGDFAST_BORROW_BLAS=never).
            _core.set_borrow_mode("never")
            try:
                t0 = time_blocks({"ngdfast": ngd, "both": lambda ngd=ngd: (matmul(), ngd())}, repeats)
            finally:
                _core.set_borrow_mode("auto")
            variants.append(("ngdfast, no borrowing", t0["ngdfast"], t0["both"]))
        for label, alone, both in variants:
            rows.append({
                "variant": label,
                "step": step,
                "matmul_seconds": t["matmul"],
                "kernel_seconds": alone,
                "alternating_seconds": both,
                "slowdown": both / (t["matmul"] + alone),
            })
    return rows


def _reuse(quick: bool, repeats: int) -> dict[str, Any]:
    """Issue 15: ``DenseFisher(P, decay=0.95)`` over 50 EMA steps of a slowly changing
    Fisher (the same P/4 score rows, weights jittered by 10 % a step): mean solve time
    per step, with factor reuse and without, against one SciPy Cholesky solve of the
    same size (median of ``repeats``); every direction checked against a float64 solve."""
    from . import DenseFisher, damped_solve

    p, steps = (256, 10) if quick else (4096, 50)
    rng = np.random.default_rng(7)
    J = rng.standard_normal((p // 4, p))
    out: dict[str, Any] = {"p": p, "steps": steps}
    for label, max_reuse in (("reuse", 10), ("no_reuse", 0)):
        fish = DenseFisher(p, decay=0.95, max_reuse_iters=max_reuse)
        seconds, worst, reused, iterations = 0.0, 0.0, 0, 0
        for _ in range(steps):
            fish.update(J, 1.0 + 0.1 * rng.random(J.shape[0]))
            g = rng.standard_normal(p)
            t0 = time.perf_counter()
            x = fish.solve(g, DAMPING)
            seconds += time.perf_counter() - t0
            reused += not fish.last_solve.refactored
            iterations += fish.last_solve.iterations
            if max_reuse:  # (without reuse the solve is the float64/mixed one itself)
                worst = max(worst, _rel(x, damped_solve(fish.to_dense(), g, DAMPING, precision="double")))
        out[label] = {"mean_solve_seconds": seconds / steps, "max_error": worst, "reused_steps": reused,
                      "mean_cg_iterations": iterations / steps}
    if _scipy() is not None:
        M = fish.to_dense() + DAMPING * np.eye(p)
        g = rng.standard_normal(p)
        out["scipy_cho_seconds"] = time_blocks({"cho": lambda: scipy_cho_solve(M.copy(), g)}, repeats)["cho"]
        out["ratio"] = out["reuse"]["mean_solve_seconds"] / out["scipy_cho_seconds"]
    return out


def _target_value(name: str, r: dict[str, Any], by_key: dict) -> float | None:
    if name == "gemm_fraction":
        return r["gemm_fraction"]
    if name == "error":
        return r["error"]
    if name == "time_us":
        return r["seconds"] * 1e6
    if name.startswith("ratio:"):
        want = name.split(":", 1)[1]
        ratios = [p["ratio"] for peer, p in r["peers"].items() if peer == want]
        ratios += [p["ratio"] for peer, p in r["peers"].items() if want in peer]
        return ratios[0] if ratios else None
    if name.startswith("time_vs:"):
        other = by_key.get((name.split(":", 1)[1], r["size"], r["dtype"]))
        return r["seconds"] / other["seconds"] if other else None
    raise ValueError(name)


def _measure_label(name: str) -> str:
    if name.startswith("ratio:"):
        return f"speed-up over {name.split(':', 1)[1]}"
    if name.startswith("time_vs:"):
        return f"time / time of {name.split(':', 1)[1]}"
    return {"gemm_fraction": "fraction of GEMM rate", "error": "relative difference",
            "time_us": "microseconds per call"}[name]


def _check_targets(results: list[tuple[Case, dict[str, Any]]]) -> list[dict[str, Any]]:
    by_key = {(r["kernel"], r["size"], r["dtype"]): r for _, r in results}
    checked = []
    for case, r in results:
        for name, op, bound in case.targets:
            value = _target_value(name, r, by_key)
            if value is None:
                continue
            met = value >= bound if op == ">=" else value <= bound
            checked.append({"kernel": r["kernel"], "size": r["size"], "dtype": r["dtype"],
                            "measure": name, "op": op, "bound": bound, "value": value, "met": bool(met)})
    return checked


def _blas_pools() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return threadpool_info()


def peer_thread_share(fn: Callable[[], Any], repeats: int = 3) -> float | None:
    """Share of ``fn``'s CPU time spent on threads other than the caller (Linux; else None).

    A peer whose BLAS threads work gives ~(t-1)/t on t threads; ~0 means it ran
    on the calling thread alone (slowed, whatever threadpoolctl reports). CPU
    time, unlike wall time, does not depend on the machine's load.
    """
    if not os.path.isdir("/proc/self/task"):
        return None

    def ticks() -> dict[str, int]:
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[tid] = int(fields[11]) + int(fields[12])
        return out

    import threading

    fn()
    before = ticks()
    for _ in range(repeats):
        fn()
    after = ticks()
    total = sum(after[t] - before.get(t, 0) for t in after)
    mine = after.get(str(threading.get_native_id()), 0) - before.get(str(threading.get_native_id()), 0)
    return (total - mine) / total if total > 0 else None


def _header(gemm: dict[str, dict[str, Any]], out) -> dict[str, Any]:
    from . import __version__, _core

    try:
        build = dict(_core.build_info())
    except Exception as exc:  # an old build without build_info must not stop the benchmark
        build = {"error": repr(exc)}
    sp = _scipy()
    pools = _blas_pools()
    from .info import describe_pools

    machine = {
        "ngdfast": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": sp.__version__ if sp is not None else None,
        "platform": platform.platform(),
        "build": build,
        "thread_pools": pools,
    }
    print(f"ngdfast {__version__} bench: python {machine['python']}, numpy {machine['numpy']}, "
          f"scipy {machine['scipy'] or 'not installed (SciPy peers skipped)'}", file=out)
    print("build: " + ", ".join(f"{k}={_flat(v)}" for k, v in build.items()), file=out)
    if pools:
        for line in describe_pools(pools):
            print(f"thread pool: {line}", file=out)
    else:
        print("thread pools: threadpoolctl not installed", file=out)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        load = None
    if sp is not None and (os.cpu_count() or 1) > 1:
        J = np.random.default_rng(0).standard_normal((512, 2048))
        share = peer_thread_share(lambda: sp.linalg.blas.dsyrk(1.0, J, trans=1))
        machine["scipy_helper_thread_share"] = share
        if share is not None:
            slowed = " (SCIPY RAN ON ONE THREAD: its ratios below are not fair)" if share < 0.2 else ""
            print(f"peer check: SciPy dsyrk spent {share:.0%} of its CPU time on its helper threads{slowed}",
                  file=out)
    machine["load_average"] = load
    machine["cpu_count"] = os.cpu_count()
    if load is not None:
        busy = " (other work is running: timings and ratios are noisy)" if load > 0.5 else ""
        print(f"load average {load:.2f} on {os.cpu_count()} CPUs{busy}", file=out)
    print("GEMM rate (NumPy A@B, 2n^3 flops, median): "
          + ", ".join(f"{dt} {g['gflops']:.1f} GFLOP/s (n={g['n']})" for dt, g in gemm.items()), file=out)
    print(file=out, flush=True)
    return machine


def _flat(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return str(value).strip()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ngdfast bench",
        description="Time ngdfast's kernels beside NumPy/SciPy: median time, GFLOP/s, fraction of "
        "the machine's GEMM rate, and speed-up over each peer timed in the same process.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a few seconds)")
    parser.add_argument("--kernels", help=f"comma-separated subset of: {', '.join(KERNELS)} (default: all of "
                        f"these), or also {', '.join(OPTIONAL_SECTIONS)}")
    parser.add_argument("--sizes", help="comma-separated parameter counts P to sweep instead of the default "
                        "cases (fisher N=512, low-rank N=min(256, P/2), K-FAC layer of P inputs, P/2 outputs)")
    parser.add_argument("--dtypes", default="float64,float32", help="with --sizes: dtypes to sweep (default: both)")
    parser.add_argument("--repeats", type=int, help="timed samples per call, median reported (default 5; 3 with --quick)")
    parser.add_argument("--threads", type=int, help="ngdfast.set_num_threads(THREADS) before timing")
    parser.add_argument("--json", metavar="PATH", help="also write every number to PATH as JSON")
    args = parser.parse_args(argv)
    kernels = args.kernels.split(",") if args.kernels else list(KERNELS)
    unknown = sorted(set(kernels) - set(KERNELS) - set(OPTIONAL_SECTIONS))
    if unknown:
        parser.error(f"unknown kernel(s) {', '.join(unknown)}; choose from {', '.join(KERNELS + OPTIONAL_SECTIONS)}")
    args.kernels = kernels
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    except ValueError:
        parser.error(f"--sizes takes comma-separated integers, got {args.sizes!r}")
    if args.sizes is not None and any(p < 2 for p in args.sizes):
        parser.error("--sizes: every P must be at least 2")
    args.dtypes = args.dtypes.split(",")
    if set(args.dtypes) - {"float64", "float32"}:
        parser.error(f"--dtypes takes float64 and/or float32, got {','.join(args.dtypes)}")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """``python -m ngdfast bench``: print the table, optionally write JSON.

    Returns 0, or 1 when some kernel's answer disagreed with a peer's beyond
    the dtype's tolerance (timing targets never change the exit status).
    """
    args = _parse_args(argv)
    out = sys.stdout
    from . import get_num_threads, set_num_threads

    if args.threads is not None:
        set_num_threads(args.threads)

    gemm_n = 256 if args.quick else 2048
    # Every fraction divides by this rate: more samples than the kernels get, so
    # that one burst of load from elsewhere cannot skew the whole table.
    gemm = {dt: gemm_rate(dt, gemm_n, max(2 * args.repeats + 1, 5)) for dt in ("float64", "float32")}
    machine = _header(gemm, out)
    machine["ngdfast_threads"] = get_num_threads()

    plan = sized_plan(args.sizes, args.dtypes) if args.sizes else default_plan(args.quick)
    print(_row([name for name, _, _ in COLUMNS]), file=out)
    print(_row(["-" * (w or len(name)) for name, w, _ in COLUMNS]), file=out, flush=True)
    results: list[tuple[Case, dict[str, Any]]] = []
    for section in KERNELS:
        if section not in args.kernels or section not in plan:
            continue
        for case in plan[section]:
            r = run_case(case, args.repeats, gemm)
            r["section"] = section
            results.append((case, r))
            _print_result(r, section, out)

    alternating = []
    if "alternating" in args.kernels:
        alternating = _alternating(args.quick, args.repeats)
        print(file=out)
        print("Alternating with NumPy BLAS every step (matmul, then the kernel; kernel timed alone after a pause)",
              file=out)
        print(f"{'step':<46}  {'variant':<24}  {'matmul':>10}  {'kernel':>10}  {'alternating':>11}  "
              f"{'slowdown (alternating / sum alone)':<}", file=out)
        for a in alternating:
            print(f"{a['step']:<46}  {a['variant']:<24}  {_fmt_time(a['matmul_seconds']):>10}  "
                  f"{_fmt_time(a['kernel_seconds']):>10}  "
                  f"{_fmt_time(a['alternating_seconds']):>11}  {a['slowdown']:.2f}", file=out)

    reuse = None
    if "reuse" in args.kernels:
        reuse = _reuse(args.quick, args.repeats)
        print(file=out)
        print(f"Factor reuse: DenseFisher(P={reuse['p']}, decay=0.95), {reuse['steps']} slowly changing EMA steps",
              file=out)
        for label in ("reuse", "no_reuse"):
            r = reuse[label]
            print(f"  {label:<9} mean solve {_fmt_time(r['mean_solve_seconds']):>10}  reused {r['reused_steps']:>3} "
                  f"steps  CG iterations/step {r['mean_cg_iterations']:.1f}  max err {r['max_error']:.1e}", file=out)
        if "ratio" in reuse:
            met = reuse["ratio"] <= 0.2 and reuse["reuse"]["max_error"] <= 1e-10
            print(f"  one scipy cho_factor+cho_solve {_fmt_time(reuse['scipy_cho_seconds'])}: mean solve / that = "
                  f"{reuse['ratio']:.3f} (issue 15 target <= 0.2: {'met' if met else 'MISSED'})", file=out)

    targets = _check_targets(results)
    if targets:
        print(file=out)
        print("Issue-3 targets", file=out)
        for t in targets:
            value = f"{t['value']:.3g}"
            print(f"  {t['kernel']:<18} {t['size']:<14} {t['dtype']:<7} {_measure_label(t['measure']):<30} "
                  f"{value:>9} {t['op']} {t['bound']:<6g} {'met' if t['met'] else 'MISSED'}", file=out)

    torch_section = None
    if "torch" in args.kernels:
        from .bench_torch import run as run_torch  # imports torch: only when asked

        torch_section = run_torch(args.quick, args.repeats, out)

    bad = [r for _, r in results if not r["ok"]]
    for r in bad:
        print(f"MISMATCH: {r['kernel']} {r['size']} {r['dtype']}: max relative difference "
              f"{r['error']:.2e} > {r['tolerance']:.0e}", file=out)
    if args.json:
        data = {
            "machine": machine,
            "gemm": gemm,
            "repeats": args.repeats,
            "results": [r for _, r in results],
            "alternating": alternating,
            "reuse": reuse,
            "targets": targets,
            "torch": torch_section,
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
        print(f"\nwrote {args.json}", file=out)
    return 1 if bad or (torch_section and torch_section["mismatch"]) else 0


if __name__ == "__main__":
    sys.exit(main())
