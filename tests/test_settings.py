"""Settings in one place (ngdfast._settings): every environment variable gets the same rule,
each has a Python equivalent, and the private tile library stays private."""

import ctypes
import os
import subprocess
import sys

import pytest

import ngdfast
from ngdfast import _backend, _core, _settings

CLEAN = {k: v for k, v in os.environ.items()
         if k not in {"NGDFAST_NUM_THREADS", "OMP_NUM_THREADS", "NGDFAST_TILE_BACKEND", "NGDFAST_BORROW_BLAS"}}

REPORT = ("import ngdfast, sys; print(ngdfast.get_num_threads(), ngdfast.get_tile_backend(), "
          "ngdfast.get_borrow_blas(), 'scipy_openblas32' in sys.modules)")


def run(env, code=REPORT):
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=dict(CLEAN, **env),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split(), out.stderr


def test_defaults():
    (threads, tiles, borrow, imported), err = run({})
    assert int(threads) == _settings.available_cpus()
    assert tiles == ("blas" if _backend.BLAS_LOADED else "eigen")
    assert borrow == "auto"
    assert imported == "False"  # importing it would dlopen its OpenBLAS RTLD_GLOBAL
    assert "ngdfast" not in err


@pytest.mark.parametrize("env,expected", [
    ({"NGDFAST_NUM_THREADS": " 3 "}, ("3", None, None)),
    ({"OMP_NUM_THREADS": "2,1"}, ("2", None, None)),
    ({"NGDFAST_NUM_THREADS": "3", "OMP_NUM_THREADS": "1"}, ("3", None, None)),
    ({"NGDFAST_TILE_BACKEND": "Eigen"}, (None, "eigen", None)),
    ({"NGDFAST_BORROW_BLAS": "NEVER"}, (None, None, "never")),
    ({"NGDFAST_NUM_THREADS": ""}, (None, None, None)),  # empty counts as unset
])
def test_valid_values(env, expected):
    got, err = run(env)
    for value, want in zip(got, expected):
        if want is not None:
            assert value == want
    assert "ngdfast" not in err


@pytest.mark.parametrize("name,value,valid", [
    ("NGDFAST_NUM_THREADS", "four", "an integer from 1 to 1024"),
    ("NGDFAST_NUM_THREADS", "0", "an integer from 1 to 1024"),
    ("NGDFAST_NUM_THREADS", "4x", "an integer from 1 to 1024"),  # atoi would have read 4
    ("NGDFAST_NUM_THREADS", str(2**31), "an integer from 1 to 1024"),
    ("OMP_NUM_THREADS", "-2", "an integer from 1 to 1024"),
    ("NGDFAST_TILE_BACKEND", "mkl", "'blas', 'eigen'"),
    ("NGDFAST_BORROW_BLAS", "sometimes", "'never', 'auto', 'always'"),
])
def test_invalid_value_warns_once_and_uses_the_default(name, value, valid):
    (threads, tiles, borrow, _), err = run({name: value})
    assert err.count("RuntimeWarning") == 1, err
    assert name in err and repr(value) in err and valid in err and "using the default" in err
    assert int(threads) == _settings.available_cpus()
    assert tiles == ("blas" if _backend.BLAS_LOADED else "eigen")
    assert borrow == "auto"


def test_invalid_thread_variable_falls_back_to_omp():
    (threads, *_), err = run({"NGDFAST_NUM_THREADS": "many", "OMP_NUM_THREADS": "1"})
    assert threads == "1" and "NGDFAST_NUM_THREADS" in err


def test_set_num_threads_range():
    before = ngdfast.get_num_threads()
    for bad in (0, -1, 2**31, 2**64, 1025, 2.0, "3", True, None):
        with pytest.raises(ValueError, match="set_num_threads"):
            ngdfast.set_num_threads(bad)
    assert ngdfast.get_num_threads() == before  # a rejected input changes nothing


def test_num_threads_context_manager_restores():
    before = ngdfast.get_num_threads()
    with ngdfast.num_threads(1):
        assert ngdfast.get_num_threads() == 1
        with ngdfast.num_threads(3):
            assert ngdfast.get_num_threads() == 3
        assert ngdfast.get_num_threads() == 1
    assert ngdfast.get_num_threads() == before
    with pytest.raises(KeyError):
        with ngdfast.num_threads(2):
            raise KeyError("inside")
    assert ngdfast.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads"):
        with ngdfast.num_threads(0):
            pass
    assert ngdfast.get_num_threads() == before


def test_tile_backend_setter():
    try:
        ngdfast.set_tile_backend("eigen")
        assert ngdfast.get_tile_backend() == "eigen" == _core.build_info()["tile_backend"]
        if _backend.BLAS_LOADED:
            ngdfast.set_tile_backend(" BLAS ")
            assert ngdfast.get_tile_backend() == "blas"
        else:
            with pytest.raises(RuntimeError, match="no OpenBLAS tile engine"):
                ngdfast.set_tile_backend("blas")
        for bad in ("mkl", 1, None):
            with pytest.raises(ValueError, match="set_tile_backend"):
                ngdfast.set_tile_backend(bad)
    finally:
        _core.use_blas(_backend.BLAS_LOADED)


def test_borrow_setter():
    before = ngdfast.get_borrow_blas()
    try:
        for mode in ("never", "always", "auto"):
            ngdfast.set_borrow_blas(mode.upper())
            assert ngdfast.get_borrow_blas() == mode
        with pytest.raises(ValueError, match="set_borrow_blas"):
            ngdfast.set_borrow_blas("sometimes")
        assert ngdfast.get_borrow_blas() == "auto"
    finally:
        ngdfast.set_borrow_blas(before)


@pytest.mark.skipif(not _backend.BLAS_LOADED, reason="scipy-openblas32 tile engine not loaded")
def test_tile_library_symbols_stay_private():
    # Looked up the way a later extension module's relocations are: in the global scope.
    with pytest.raises(AttributeError):
        ctypes.CDLL(None).scipy_dgemm_


@pytest.mark.skipif(not _backend.BLAS_LOADED, reason="scipy-openblas32 tile engine not loaded")
def test_a_copy_loaded_by_someone_else_is_left_alone():
    # scipy_openblas32's import dlopens its library RTLD_GLOBAL: that copy may serve
    # SciPy, so ngdfast must neither use it nor change its thread count.
    code = ("import scipy_openblas32, ctypes, os; from threadpoolctl import threadpool_info\n"
            "lib = [p for p in threadpool_info() if 'scipy_openblas32' in p['filepath']][0]\n"
            "import ngdfast; from ngdfast import _core\n"
            "after = [p for p in threadpool_info() if p['filepath'] == lib['filepath']][0]\n"
            "print(lib['num_threads'], after['num_threads'], ngdfast.get_tile_backend(),\n"
            "      'already loaded' in _core.build_info()['blas_note'])")
    pytest.importorskip("threadpoolctl")
    (before, after, tiles, noted), _ = run({}, code)
    assert before == after and tiles == "eigen" and noted == "True"


def test_threadpoolctl_sees_and_limits_the_pool():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from ngdfast import _threadpool
    assert _threadpool.REGISTERED
    before = ngdfast.get_num_threads()
    ours = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "ngdfast"]
    assert len(ours) == 1
    assert ours[0]["internal_api"] == "ngdfast" and ours[0]["num_threads"] == before
    assert os.path.samefile(ours[0]["filepath"], _core.__file__)
    assert ours[0]["version"] == ngdfast.__version__
    with threadpoolctl.threadpool_limits(1):
        assert ngdfast.get_num_threads() == 1
    assert ngdfast.get_num_threads() == before
    with threadpoolctl.threadpool_limits(limits={"ngdfast": 3}):
        assert ngdfast.get_num_threads() == 3
        with threadpoolctl.threadpool_limits(limits=1, user_api="ngdfast"):
            assert ngdfast.get_num_threads() == 1
        assert ngdfast.get_num_threads() == 3
    assert ngdfast.get_num_threads() == before
    controller = threadpoolctl.ThreadpoolController().select(internal_api="ngdfast")
    with controller.limit(limits=2):
        assert ngdfast.get_num_threads() == 2
    assert ngdfast.get_num_threads() == before


@pytest.mark.skipif(not _backend.BLAS_LOADED, reason="scipy-openblas32 tile engine not loaded")
def test_tile_library_returns_to_one_thread_after_threadpool_limits():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numpy as np
    J = np.random.default_rng(0).standard_normal((300, 400))
    expected = ngdfast.fisher(J)

    def tile_threads():
        return [p["num_threads"] for p in threadpoolctl.threadpool_info() if os.path.realpath(p["filepath"]) == os.path.realpath(_backend.BLAS_PATH)]

    # The tiles must run for the check to mean anything: with another thread of the process
    # running (torch's or a spinning BLAS's, left by earlier tests) a call would borrow NumPy's
    # BLAS instead and never touch the tile library.
    mode = ngdfast.get_borrow_blas()
    ngdfast.set_borrow_blas("never")
    try:
        with threadpoolctl.threadpool_limits(2):
            np.testing.assert_allclose(ngdfast.fisher(J), expected, rtol=1e-12, atol=1e-12)
            assert tile_threads() == [1]  # the private copy runs single-threaded tiles
        assert tile_threads() == [1]
    finally:
        ngdfast.set_borrow_blas(mode)
