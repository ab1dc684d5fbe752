"""Shared setup for the pytest-benchmark files in bench/.

Run with::

    python -m pytest bench/ --benchmark-only                      # small sweep, a few minutes
    python -m pytest bench/ --benchmark-only --bench-size medium  # adds the speed targets' sizes
    NGDFAST_BENCH_SIZE=large python -m pytest bench/ --benchmark-only  # up to P=8192, N=4096
    python -m pytest bench/ --benchmark-disable                   # answers only, one call each

Every benchmark checks its own answer against a float64 NumPy result computed
outside the timed region, so a fast wrong kernel fails here; the tolerances
are those of ``python -m ngdfast bench`` (``ngdfast.bench.peers.TOLERANCE``).
Each kernel, size and dtype is one benchmark group: ngdfast and its peers
(NumPy, SciPy BLAS/LAPACK, ``ngdfast.reference``) appear side by side in it.

The size sweep lives here (``SWEEP``) so all files grow together; an entry is
included at its level and every larger one.
"""

from __future__ import annotations

import os
import time

import pytest

LEVELS = ("small", "medium", "large")

# fixture name -> [(first level that includes it, value), ...]
SWEEP = {
    # (N, P) score matrices for fisher and its EMA form
    "fisher_shape": [
        ("small", (16, 64)), ("small", (256, 512)), ("small", (512, 2048)),
        ("medium", (512, 4096)), ("medium", (2048, 2048)),
        ("large", (4096, 4096)), ("large", (4096, 8192)),
    ],
    # P for damped_solve
    "solve_size": [
        ("small", 64), ("small", 512), ("small", 2048),
        ("medium", 4096),
        ("large", 8192),
    ],
    # (N, P) for lowrank_solve and natural_gradient (N < P: the low-rank regime)
    "lowrank_shape": [
        ("small", (16, 64)), ("small", (64, 1024)), ("small", (256, 4096)),
        ("medium", (256, 16384)), ("medium", (1024, 8192)),
        ("large", (4096, 8192)),
    ],
    # (out, in) of one linear layer for kfac_precondition (A is (in+1) x (in+1))
    "kfac_shape": [
        ("small", (8, 7)), ("small", (128, 255)), ("small", (512, 1023)),
        ("medium", (1024, 2047)),
        ("large", (4096, 4095)),
    ],
    "dtype": [("small", "float64"), ("small", "float32")],
}


def pytest_addoption(parser):
    parser.addoption(
        "--bench-size",
        choices=LEVELS,
        default=None,
        help="size sweep for bench/: small (default, a few minutes on 2 cores), medium (the speed "
        "targets' sizes), large (up to P=8192, N=4096). Also from NGDFAST_BENCH_SIZE.",
    )


def bench_level(config) -> str:
    level = config.getoption("--bench-size") or os.environ.get("NGDFAST_BENCH_SIZE", "small")
    if level not in LEVELS:
        raise pytest.UsageError(f"NGDFAST_BENCH_SIZE must be one of {', '.join(LEVELS)}, got {level!r}")
    return level


def _label(value) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)


def pytest_generate_tests(metafunc):
    level = LEVELS.index(bench_level(metafunc.config))
    for name, entries in SWEEP.items():
        if name in metafunc.fixturenames:
            values = [v for first, v in entries if LEVELS.index(first) <= level]
            metafunc.parametrize(name, values, ids=[_label(v) for v in values])


def pytest_report_header(config):
    return f"ngdfast bench size: {bench_level(config)} (--bench-size / NGDFAST_BENCH_SIZE)"


@pytest.fixture
def assert_close():
    """``assert_close(actual, expected, dtype, kind)``: relative Frobenius error
    within the per-dtype tolerance of ``kind`` ("product" or "solve"), the one
    ``python -m ngdfast bench`` uses (``ngdfast.bench.peers.TOLERANCE``)."""
    peers = _import_or_skip("ngdfast.bench.peers", "ngdfast (with its compiled _core) is not importable")

    def check(actual, expected, dtype, kind):
        err = peers.relative_error(actual, expected)
        tol = peers.tolerance(kind, dtype)
        assert err <= tol, f"relative error {err:.3e} > {tol:.0e} ({dtype}, {kind})"

    return check


@pytest.fixture
def run_benchmark(benchmark):
    """``run_benchmark(group, fn, *args, **kwargs)``: time ``fn`` in ``group``
    and return its result.

    Calls slower than 0.25 s get 3 rounds instead of pytest-benchmark's
    one-second minimum of 5, which keeps the large sweep to minutes; with
    ``--benchmark-disable`` it is a single call.
    """

    def run(group, fn, *args, **kwargs):
        benchmark.group = group
        if not benchmark.enabled:
            return benchmark(fn, *args, **kwargs)
        t0 = time.perf_counter()
        fn(*args, **kwargs)  # warm-up, and a first look at the cost
        if time.perf_counter() - t0 > 0.25:
            return benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=3, iterations=1)
        return benchmark(fn, *args, **kwargs)

    return run


@pytest.fixture(scope="session")
def bench_size(request) -> str:
    """The sweep level: "small", "medium" or "large"."""
    return bench_level(request.config)


def _import_or_skip(name: str, what: str):
    """Import ``name`` or skip with the import error in the reason."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.skip(f"{what}: {type(exc).__name__}: {exc}")


@pytest.fixture(scope="session")
def ngdfast():
    return _import_or_skip("ngdfast", "ngdfast (with its compiled _core) is not importable")


@pytest.fixture(scope="session")
def reference():
    return _import_or_skip("ngdfast.reference", "ngdfast.reference is not importable")


@pytest.fixture(scope="session")
def scipy_linalg():
    return _import_or_skip("scipy.linalg", "SciPy peers need scipy")
