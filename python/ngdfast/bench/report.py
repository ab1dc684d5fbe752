"""What ``python -m ngdfast bench`` prints and writes: the header, the tables, the targets, the JSON."""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import numpy as np

from .peers import scipy
from .targets import REUSE_TARGET, measure_label, reuse_met
from .timing import kernel_settings, peer_thread_share

#: ``(name, width, alignment)`` of the kernel table's columns (width 0: as long as it needs).
COLUMNS = (("kernel", 24, "<"), ("size", 16, "<"), ("dtype", 7, "<"), ("time", 10, ">"),
           ("GFLOP/s", 8, ">"), ("of GEMM", 7, ">"), ("max err", 8, ">"), ("vs peers (peer time / ngdfast time)", 0, "<"))


def format_row(values: list[str]) -> str:
    cells = [f"{v:{align}{width}}" if width else v for v, (_, width, align) in zip(values, COLUMNS)]
    return "  ".join(cells).rstrip()


def format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def _flat(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return str(value).strip()


def _build_info() -> dict[str, Any]:
    """How the compiled core was built (``_core.build_info()``), or the error of an old build."""
    from .. import _core

    try:
        return dict(_core.build_info())
    except Exception as exc:  # an old build without build_info must not stop the benchmark
        return {"error": repr(exc)}


def _blas_pools() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return threadpool_info()


def describe_kernels(kernels: dict[str, Any]) -> str:
    """Which BLAS kernels this run measures (:func:`ngdfast.bench.timing.kernel_settings`), in words."""
    forced = " ".join(f"{k}={v}" for k, v in kernels["forced"].items())
    if forced:
        return (f"forced by {forced} for every OpenBLAS in the process (each pool's core type below; "
                "--native measures without them)")
    text = "each OpenBLAS's own choice for this CPU (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE not set)"
    if kernels.get("unset"):
        text += f"; --native restarted the bench without {kernels['unset']}"
    return text


def print_header(gemm: dict[str, dict[str, Any]], out) -> dict[str, Any]:
    """Print versions, build, thread pools, the SciPy peer check, the load and the GEMM rate;
    return them as the JSON's ``machine``."""
    from .. import __version__
    from ..info import describe_pools

    from .. import _tiles

    build = _build_info()
    sp = scipy()
    pools = _blas_pools()
    kernels = kernel_settings()
    profile = _tiles.current()
    machine = {
        "ngdfast": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": sp.__version__ if sp is not None else None,
        "platform": platform.platform(),
        "build": build,
        "thread_pools": pools,
        "blas_kernels": kernels,
        "tiles": profile.as_dict() if profile is not None else None,
    }
    print(f"ngdfast {__version__} bench: python {machine['python']}, numpy {machine['numpy']}, "
          f"scipy {machine['scipy'] or 'not installed (SciPy peers skipped)'}", file=out)
    print("build: " + ", ".join(f"{k}={_flat(v)}" for k, v in build.items()), file=out)
    print(f"BLAS kernels: {describe_kernels(kernels)}", file=out)
    if pools:
        for line in describe_pools(pools):
            print(f"thread pool: {line}", file=out)
    else:
        print("thread pools: threadpoolctl not installed (core types of NumPy's and SciPy's BLAS unknown)", file=out)
    if profile is not None:
        print(f"ngdfast tiles: {profile.summary()}", file=out)
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


def print_table_head(out) -> None:
    print(format_row([name for name, _, _ in COLUMNS]), file=out)
    print(format_row(["-" * (w or len(name)) for name, w, _ in COLUMNS]), file=out, flush=True)


def print_result(r: dict[str, Any], section: str, out) -> None:
    """One row of the kernel table (a result of :func:`ngdfast.bench.cases.run_case`)."""
    peers = "  ".join(f"{name} {p['ratio']:.2f}x" + ("" if p["ok"] else " MISMATCH") for name, p in r["peers"].items())
    kernel = r["kernel"] if section != "overhead" else f"{r['kernel']} (call)"
    print(format_row([kernel, r["size"], r["dtype"], format_time(r["seconds"]), f"{r['gflops']:.2f}",
                      f"{r['gemm_fraction']:.2f}", f"{r['error']:.1e}", peers]), file=out, flush=True)


def print_alternating(rows: list[dict[str, Any]], out) -> None:
    print(file=out)
    print("Alternating with NumPy BLAS every step (matmul, then the kernel; kernel timed alone after a pause)",
          file=out)
    print(f"{'step':<46}  {'variant':<24}  {'matmul':>10}  {'kernel':>10}  {'alternating':>11}  "
          f"{'slowdown (alternating / sum alone)':<}", file=out)
    for a in rows:
        print(f"{a['step']:<46}  {a['variant']:<24}  {format_time(a['matmul_seconds']):>10}  "
              f"{format_time(a['kernel_seconds']):>10}  "
              f"{format_time(a['alternating_seconds']):>11}  {a['slowdown']:.2f}", file=out)


def print_reuse(reuse: dict[str, Any], out) -> None:
    print(file=out)
    print(f"Factor reuse: DenseFisher(P={reuse['p']}, decay=0.95), {reuse['steps']} slowly changing EMA steps",
          file=out)
    for label in ("reuse", "no_reuse"):
        r = reuse[label]
        print(f"  {label:<9} mean solve {format_time(r['mean_solve_seconds']):>10}  reused {r['reused_steps']:>3} "
              f"steps  CG iterations/step {r['mean_cg_iterations']:.1f}  max err {r['max_error']:.1e}", file=out)
    fresh = reuse["fresh"]
    print(f"  fresh batches of P/16 rows (P={fresh['p']}, {fresh['steps']} steps, damping 1e-3): mean solve "
          f"{format_time(fresh['reuse_seconds'])} with reuse, {format_time(fresh['no_reuse_seconds'])} without "
          f"(ratio {fresh['ratio']:.3f}, target <= {REUSE_TARGET['fresh_ratio']:g}: "
          f"{'met' if fresh['ratio'] <= REUSE_TARGET['fresh_ratio'] else 'MISSED'}); {fresh['abandoned']} attempts "
          f"given up after {fresh['abandoned_iterations']} CG iterations in all", file=out)
    if "ratio" in reuse:
        print(f"  one scipy cho_factor+cho_solve {format_time(reuse['scipy_cho_seconds'])}: mean solve / that = "
              f"{reuse['ratio']:.3f} (speed target <= {REUSE_TARGET['ratio']:g} within "
              f"{REUSE_TARGET['max_error']:.0e}: {'met' if reuse_met(reuse) else 'MISSED'})", file=out)


def print_targets(checked, out) -> None:
    """The speed targets of the cases that ran (:func:`ngdfast.bench.targets.check_targets`)."""
    print(file=out)
    print("Speed targets (what ngdfast aims for on these cases; a miss is reported, never an error)", file=out)
    for target, t in checked:
        value = f"{t['value']:.3g}"
        print(f"  {t['kernel']:<18} {t['size']:<14} {t['dtype']:<7} {measure_label(t['measure']):<30} "
              f"{value:>9} {t['op']} {t['bound']:<6g} {'met' if t['met'] else 'MISSED':<6}  {target.meaning}",
              file=out)


def write_json(path: str, data: dict[str, Any], out) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
    print(f"\nwrote {path}", file=out)
