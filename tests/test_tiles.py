"""The blocking chosen at run time for the kernels in use (``ngdfast._tiles``, ``Tiles`` in the core).

The rules (from the tile library's core type and the L2 cache), the kernels' answers under
every shape those rules can pick (tall Gram blocks, square tiles, the Cholesky panels of
other core types), both tile engines, one and two threads, bitwise reproducible calls, the
profile of each OpenBLAS core type setting (a subprocess with ``OPENBLAS_CORETYPE=Haswell``
and one without), the mixed-precision crossovers that follow the profile, and the bench's
``--native`` restart.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ngdfast
from ngdfast import _backend, _core, _precision, _tiles, reference
from ngdfast.bench import report, timing

TOL = {np.float64: 1e-10, np.float32: 2e-4}


def rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


@pytest.fixture
def restore_profile():
    before = _tiles.current()
    yield
    _tiles.apply(before)


@pytest.fixture(params=["blas", "eigen"])
def engine(request):
    if request.param == "blas" and not _backend.BLAS_LOADED:
        pytest.skip("scipy-openblas32 tile engine not loaded")
    before = ngdfast.get_tile_backend()
    ngdfast.set_tile_backend(request.param)
    yield request.param
    ngdfast.set_tile_backend(before)


@pytest.fixture(params=[1, 2])
def threads(request):
    before = ngdfast.get_num_threads()
    ngdfast.set_num_threads(request.param)
    yield request.param
    ngdfast.set_num_threads(before)


# ---------------------------------------------------------------------------
# the rules


def test_haswell_blocking_gives_the_sizes_measured_under_it():
    p = _tiles.derive("blas", "Haswell", 1 << 20)
    assert p.tiles["float64"] == {"gram_split": 384, "gram_panel": 384, "gram_rows": 2048, "gram_square": 256,
                                  "gram_depth": 256, "chol_panel": 192, "chol_rows": 512}
    assert p.tiles["float32"]["gram_depth"] == 320 and p.tiles["float32"]["gram_square"] == 360
    assert (p.tiles["float32"]["chol_panel"], p.tiles["float32"]["chol_rows"]) == (192, 512)
    assert p.crossovers == {"mixed_min_dense": 512, "mixed_min_samples": 128, "mixed_min_params": 2048}
    assert p.core == "Haswell" and "Haswell blocking" in p.blocking


def test_avx512_blocking_changes_the_shapes_and_crossovers():
    p = _tiles.derive("blas", "SkylakeX", 2 << 20)
    t = p.tiles["float64"]
    assert t["gram_depth"] == 384 and t["gram_square"] == 360 and t["gram_rows"] == 768
    assert (t["chol_panel"], t["chol_rows"]) == (288, 576)
    assert p.crossovers["mixed_min_samples"] == 512
    # The Fisher of N = 512 rows: passes of 256 under Haswell's GEMM_Q = 256 (tall blocks),
    # two passes of 256 under SkylakeX's 384 (square tiles kept in L2).
    assert _core.gram_deep(512, 256) and not _core.gram_deep(512, 384)


@pytest.mark.parametrize("k,depth,deep", [(100, 256, False), (191, 256, False), (192, 256, True), (256, 256, True),
                                          (300, 256, False), (384, 256, True), (5000, 256, True), (512, 448, False)])
def test_gram_deep_counts_the_blas_passes(k, depth, deep):
    assert _core.gram_deep(k, depth) is deep


@pytest.mark.parametrize("engine_name,core", [("blas", "NoSuchCore"), ("blas", ""), ("eigen", "Haswell")])
def test_unknown_core_and_eigen_take_the_default_blocking(engine_name, core):
    p = _tiles.derive(engine_name, core, None)
    assert p.tiles == _tiles.derive("blas", "Haswell", None).tiles
    assert p.l2_bytes == _tiles.DEFAULT_L2 and p.l2_source == "default"
    assert ("unknown" in p.blocking) if engine_name == "blas" else ("Eigen" in p.blocking and p.core == "")


@pytest.mark.parametrize("l2,f64,f32", [(256 << 10, 128, 176), (1 << 20, 256, 360), (2 << 20, 360, 512),
                                        (32 << 20, 512, 512), (16 << 10, 64, 64)])
def test_square_tiles_fill_half_the_l2(l2, f64, f32):
    p = _tiles.derive("blas", "Haswell", l2)
    assert (p.tiles["float64"]["gram_square"], p.tiles["float32"]["gram_square"]) == (f64, f32)


@pytest.mark.parametrize("text,size", [("1024K", 1 << 20), ("2M", 2 << 20), ("512", 512), ("K", None), ("0K", None)])
def test_cache_sizes_parse(text, size):
    assert _tiles._parse_size(text) == size


def test_the_profile_in_use_is_the_loaded_library_s():
    p = _tiles.current()
    info = _core.build_info()
    assert p.engine == info["tile_backend"]
    assert p.core == (info["blas_corename"] if p.engine == "blas" else "")
    for dtype in ("float64", "float32"):
        assert _core.get_tiles(dtype) == p.tiles[dtype]
    assert p.summary() and json.dumps(p.as_dict())


def test_set_tiles_rejects_bad_sizes_and_changes_nothing():
    before = _core.get_tiles("float64")
    with pytest.raises(ValueError, match="chol_panel"):
        _core.set_tiles("float64", {"chol_panel": 4})
    with pytest.raises(ValueError, match="gram_rows"):
        _core.set_tiles("float64", {"gram_rows": 16, "gram_panel": 64})
    with pytest.raises(ValueError, match="unknown field"):
        _core.set_tiles("float64", {"gram_panle": 64})
    with pytest.raises(ValueError, match="dtype"):
        _core.set_tiles("float16", {})
    assert _core.get_tiles("float64") == before


def test_switching_the_engine_rederives_the_profile(restore_profile):
    if not _backend.BLAS_LOADED:
        pytest.skip("scipy-openblas32 tile engine not loaded")
    before = ngdfast.get_tile_backend()
    try:
        ngdfast.set_tile_backend("eigen")
        assert _tiles.current().engine == "eigen"
        ngdfast.set_tile_backend("blas")
        assert _tiles.current().engine == "blas" and _tiles.current().core == _core.build_info()["blas_corename"]
    finally:
        ngdfast.set_tile_backend(before)


def test_mixed_crossovers_follow_the_profile(restore_profile):
    _tiles.apply(_tiles.derive("blas", "SkylakeX", 1 << 20))
    assert _precision.thresholds().samples == 512
    assert not _precision.use_mixed("auto", np.float64, "lowrank", 256, 16384)
    _tiles.apply(_tiles.derive("blas", "Haswell", 1 << 20))
    assert _precision.thresholds() == (_precision.MIXED_MIN_DENSE, _precision.MIXED_MIN_SAMPLES,
                                       _precision.MIXED_MIN_PARAMS)
    assert _precision.use_mixed("auto", np.float64, "dense", 4096)


# ---------------------------------------------------------------------------
# the kernels under every shape the rules can pick


# Profiles: the two derived ones, and each Gram shape forced for every contraction.
PROFILES = {
    "haswell": lambda: _tiles.derive("blas", "Haswell", 1 << 20),
    "skylakex": lambda: _tiles.derive("blas", "SkylakeX", 2 << 20),
    "tall": lambda: _shape(gram_depth=8),
    "square": lambda: _shape(gram_depth=100_000, gram_square=64),
}


def _shape(**fields):
    p = _tiles.derive("blas", "Haswell", 1 << 20)
    tiles = {dt: dict(t, **fields) for dt, t in p.tiles.items()}
    return _tiles.TileProfile(p.engine, p.core, "test", p.l2_bytes, p.l2_source, tiles, p.crossovers)


@pytest.fixture(params=sorted(PROFILES))
def profile(request, restore_profile):
    # Products on ngdfast's pool only: borrowing NumPy's BLAS (while the reference's NumPy
    # workers spin) changes the last bits, and the reruns below must give the same ones.
    before = ngdfast.get_borrow_blas()
    ngdfast.set_borrow_blas("never")
    _tiles.apply(PROFILES[request.param]())
    yield request.param
    ngdfast.set_borrow_blas(before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n,p", [(100, 700), (200, 650), (520, 600), (9, 1300)])
def test_fisher_under_every_shape(engine, threads, profile, dtype, n, p):
    rng = np.random.default_rng(n + p)
    J = rng.standard_normal((n, p)).astype(dtype)
    w = rng.random(n)
    F = ngdfast.fisher(J, w)
    assert np.array_equal(F, F.T)
    assert rel(F, reference.fisher(J, w)) < TOL[dtype]
    assert all(np.array_equal(ngdfast.fisher(J, w), F) for _ in range(3))  # bitwise, same settings
    out = np.asfortranarray(rng.standard_normal((p, p)).astype(dtype))  # not symmetric: both triangles' EMA
    expect = reference.fisher(J, out=out.copy(), decay=0.5)
    ngdfast.fisher(J, out=out, decay=0.5)
    assert rel(out, expect) < TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("p", [300, 700])
def test_damped_solve_under_every_shape(engine, threads, profile, dtype, p):
    rng = np.random.default_rng(p)
    m = rng.standard_normal((p, p + 5))
    F = (m @ m.T / (p + 5)).astype(dtype)
    g = rng.standard_normal((p, 2)).astype(dtype)
    for precision in ("double", "mixed") if dtype == np.float64 else ("auto",):
        x = ngdfast.damped_solve(F, g, 1e-2, precision=precision)
        assert rel(x, reference.damped_solve(F, g, 1e-2)) < 50 * TOL[dtype]
        assert np.array_equal(ngdfast.damped_solve(F, g, 1e-2, precision=precision), x)


@pytest.mark.parametrize("n,p", [(40, 3000), (500, 1400)])
def test_sample_space_solves_under_every_shape(engine, threads, profile, n, p):
    rng = np.random.default_rng(n)
    J = rng.standard_normal((n, p))
    g = rng.standard_normal(p)
    expect = reference.lowrank_solve(J, g, 1e-2)
    for precision in ("double", "mixed"):
        x = ngdfast.lowrank_solve(J, g, 1e-2, precision=precision)
        assert rel(x, expect) < 1e-8
        assert np.array_equal(ngdfast.lowrank_solve(J, g, 1e-2, precision=precision), x)
    x = ngdfast.natural_gradient(J[:, :900], g[:900], 1e-2, method="dense")
    assert rel(x, reference.natural_gradient(J[:, :900], g[:900], 1e-2, method="dense")) < 1e-8


def test_kfac_under_every_shape(engine, threads, profile):
    rng = np.random.default_rng(5)
    a, s = 601, 400
    xa = rng.standard_normal((2 * a, a))
    xs = rng.standard_normal((2 * s, s))
    A, S = xa.T @ xa / (2 * a), xs.T @ xs / (2 * s)
    grad = rng.standard_normal((s, a))
    x = ngdfast.kfac_precondition(grad, A, S, 1e-2)
    assert rel(x, reference.kfac_precondition(grad, A, S, 1e-2)) < 1e-8
    assert np.array_equal(ngdfast.kfac_precondition(grad, A, S, 1e-2), x)


# ---------------------------------------------------------------------------
# each OpenBLAS core type setting, in its own process

_CHILD = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    import ngdfast
    from ngdfast import _core, _tiles, reference
    rng = np.random.default_rng(0)
    J = rng.standard_normal((512, 900))
    m = rng.standard_normal((700, 705))
    F = m @ m.T / 705
    g = rng.standard_normal(700)
    ngdfast.set_borrow_blas("never")  # bit-identical reruns whatever NumPy's threads do
    out = {"core": _core.build_info()["blas_corename"], "profile": _tiles.current().as_dict(), "threads": {}}
    for threads in (1, 2):
        ngdfast.set_num_threads(threads)
        fisher = ngdfast.fisher(J)
        x = ngdfast.damped_solve(F, g, 1e-2)
        same = all(np.array_equal(ngdfast.fisher(J), fisher) and np.array_equal(ngdfast.damped_solve(F, g, 1e-2), x)
                   for _ in range(3))
        err = max(float(np.abs(fisher - reference.fisher(J)).max() / np.abs(fisher).max()),
                  float(np.abs(x - reference.damped_solve(F, g, 1e-2)).max() / np.abs(x).max()))
        out["threads"][threads] = {"same": same, "error": err}
    print(json.dumps(out))
""")


@pytest.mark.parametrize("coretype", ["Haswell", None])
def test_each_core_type_setting(coretype):
    if not _backend.BLAS_LOADED:
        pytest.skip("scipy-openblas32 tile engine not loaded")
    env = {k: v for k, v in os.environ.items() if k not in timing.KERNEL_VARIABLES}
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    run = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    if coretype:
        assert out["core"] == coretype
    assert out["profile"]["core"] == out["core"]
    assert out["profile"]["tiles"] == _tiles.derive("blas", out["core"], out["profile"]["l2_bytes"]).tiles
    for result in out["threads"].values():
        assert result["same"] and result["error"] < 1e-10


# ---------------------------------------------------------------------------
# the bench: which kernels it measures


def test_kernel_settings_name_the_forcing_variables(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    monkeypatch.delenv(timing.NATIVE_MARK, raising=False)
    settings = timing.kernel_settings()
    assert settings == {"forced": {"OPENBLAS_CORETYPE": "Haswell"}, "unset": None}
    assert "forced by OPENBLAS_CORETYPE=Haswell" in report.describe_kernels(settings)
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    monkeypatch.setenv(timing.NATIVE_MARK, "OPENBLAS_CORETYPE=Haswell")
    text = report.describe_kernels(timing.kernel_settings())
    assert "own choice" in text and "without OPENBLAS_CORETYPE=Haswell" in text


def test_restart_native_does_nothing_without_forcing_variables(monkeypatch):
    for name in timing.KERNEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("restarted although nothing was forced"))
    timing.restart_native(["--quick"])


def test_bench_native_restarts_without_the_forced_core_type(tmp_path):
    path = tmp_path / "bench.json"
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell", OPENBLAS_L2_SIZE="512")
    env.pop(timing.NATIVE_MARK, None)
    run = subprocess.run([sys.executable, "-m", "ngdfast", "bench", "--native", "--quick", "--kernels", "overhead",
                          "--repeats", "1", "--json", str(path)], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    machine = json.loads(path.read_text())["machine"]
    assert machine["blas_kernels"] == {"forced": {}, "unset": "OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512"}
    assert "--native restarted the bench without OPENBLAS_CORETYPE=Haswell" in run.stdout
    assert machine["tiles"]["core"] == machine["build"]["blas_corename"]
    # every BLAS's core type and threads in the header, ngdfast's private copy among them
    assert "ngdfast tiles (scipy-openblas32)" in run.stdout and "ngdfast tiles: OpenBLAS" in run.stdout
