"""The Gram shapes the run-time blocking chooses between, side by side (``ngdfast._tiles``).

``fisher`` runs its product in tall blocks when the tile BLAS's passes over the
contraction (N) are deep enough for its kernels, in square L2-resident tiles otherwise.
Each group times the choice made for this machine's kernels (``chosen``) beside both
shapes forced, at a shallow and a deep contraction, so that the rule can be checked on
any CPU and core type (``OPENBLAS_CORETYPE=...`` or unset); every answer is checked.
"""

from __future__ import annotations

import numpy as np
import pytest

cases = pytest.importorskip("ngdfast.bench.cases", exc_type=ImportError)


@pytest.fixture
def shape(request, ngdfast):
    """Apply one Gram shape for the benchmark: "chosen", "tall" or "square"."""
    from ngdfast import _tiles

    before = _tiles.current()
    if request.param != "chosen":
        forced = {"tall": {"gram_depth": 8}, "square": {"gram_depth": 1 << 30}}[request.param]
        tiles = {dt: dict(t, **forced) for dt, t in before.tiles.items()}
        _tiles.apply(_tiles.TileProfile(before.engine, before.core, f"forced {request.param}", before.l2_bytes,
                                        before.l2_source, tiles, before.crossovers))
    yield request.param
    _tiles.apply(before)


@pytest.mark.parametrize("shape", ["chosen", "tall", "square"], indirect=True)
@pytest.mark.parametrize("n", [128, 512])
def test_fisher_gram_shape(shape, n, dtype, bench_size, ngdfast, run_benchmark, assert_close):
    p = 4096 if bench_size != "small" else 2048
    J = cases.fisher_problem(n, p, dtype)
    expected = cases.gram(J.astype(np.float64))
    F = run_benchmark(f"fisher Gram shape N={n} P={p} {dtype}", ngdfast.fisher, J)
    assert_close(F, expected, dtype, "product")
    assert np.array_equal(F, F.T)
