"""How the bench measures: blocks of timed calls, the GEMM rate, and the thread share of a call.

Each function is timed in a block of its own after a pause of :data:`SETTLE`
seconds: NumPy's OpenBLAS workers keep spinning for ~0.1 s after each NumPy
call, and whatever runs next on a 2-core machine pays for that (measured: an
18 ms Woodbury solve took 31 ms right after a NumPy matmul). The alternating
experiment (:mod:`ngdfast.bench.interference`) measures that interference on
purpose.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import threading
import time
import warnings
from typing import Any, Callable

import numpy as np

#: Variables that choose OpenBLAS's kernels (``OPENBLAS_CORETYPE``) or their blocking
#: (``OPENBLAS_L2_SIZE``) for every OpenBLAS in the process, each library reading them when
#: it loads: NumPy's, SciPy's and ngdfast's private copy alike.
KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
#: Set by :func:`restart_native` in the process it starts: the settings it removed.
NATIVE_MARK = "_NGDFAST_BENCH_NATIVE_UNSET"

#: Seconds to wait before each timed block: longer than the ~0.1 s that NumPy's
#: OpenBLAS workers spin after a call (their ``THREAD_TIMEOUT``).
SETTLE = 0.15


def kernel_settings() -> dict[str, Any]:
    """The BLAS kernel settings of this process: ``forced`` (the :data:`KERNEL_VARIABLES`
    set, name to value) and ``unset`` (what ``--native`` removed before this run, or None)."""
    forced = {name: os.environ[name] for name in KERNEL_VARIABLES if name in os.environ}
    return {"forced": forced, "unset": os.environ.get(NATIVE_MARK)}


def restart_native(argv: list[str] | None) -> None:
    """``--native``: run this bench again without the :data:`KERNEL_VARIABLES`, as users run.

    Each OpenBLAS reads them once, when it loads, and by the time the bench parses its
    options NumPy's and ngdfast's copies are loaded (``python -m ngdfast`` imports the
    package first): unsetting them now would change nothing. So the process replaces itself
    (``os.execve``) with ``python -m ngdfast bench ARGV`` in the same environment minus those
    variables, and every library of the new process picks its own kernels for this CPU.
    Returns (nothing to do) when none is set, and also, with a warning, in the restarted
    process if something set them again at its start.
    """
    forced = {name: os.environ[name] for name in KERNEL_VARIABLES if name in os.environ}
    if not forced:
        return
    if NATIVE_MARK in os.environ:
        warnings.warn(f"--native: {', '.join(forced)} set again in the restarted process; measuring with them",
                      RuntimeWarning, stacklevel=2)
        return
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES}
    env[NATIVE_MARK] = " ".join(f"{k}={v}" for k, v in forced.items())
    args = list(sys.argv[1:] if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "ngdfast", "bench", *args], env)


def samples_per_call(fn: Callable[[], Any], min_sample: float, once: float | None = None) -> int:
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
    numbers = {name: samples_per_call(fn, min_sample, once.get(name)) for name, fn in fns.items()}
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


def thread_cpu_ticks() -> dict[int, int]:
    """``{thread id: user + system CPU time in clock ticks}`` of every thread of
    this process, from ``/proc/self/task`` (Linux)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(tid)] = int(fields[11]) + int(fields[12])
    return out


def peer_thread_share(fn: Callable[[], Any], repeats: int = 3, settle: float = 0.0) -> float | None:
    """Share of ``fn``'s CPU time spent on threads other than the caller (Linux; else None).

    A peer whose BLAS threads work gives ~(t-1)/t on t threads; ~0 means it ran
    on the calling thread alone (slowed, whatever threadpoolctl reports). CPU
    time, unlike wall time, does not depend on the machine's load. ``settle``:
    seconds to sleep before the warm-up call and again before the measured
    calls, so that threads still spinning from earlier work go idle and are not
    counted. None also when the calls used no measurable CPU time.
    """
    if not os.path.isdir("/proc/self/task"):
        return None
    me = threading.get_native_id()
    time.sleep(settle)
    fn()  # warm-up: threads started, buffers allocated
    time.sleep(settle)
    before = thread_cpu_ticks()
    for _ in range(repeats):
        fn()
    after = thread_cpu_ticks()
    total = sum(after[t] - before.get(t, 0) for t in after)
    mine = after.get(me, 0) - before.get(me, 0)
    return (total - mine) / total if total > 0 else None
