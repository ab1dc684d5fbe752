"""Selects the tile engine of the compiled core at import.

The blocked kernels in ``csrc/`` are built from single-threaded tile products
(GEMM, SYRK, TRSM, POTRF on blocks of a few hundred rows); all threading is
ngdfast's own. Two engines can run those tiles: Eigen's (always compiled in)
and OpenBLAS from the ``scipy-openblas32`` wheel, whose single-thread DGEMM
measured about 1.25x Eigen 3.4's on the reference machine. OpenBLAS is used
when importable; set ``NGDFAST_TILE_BACKEND=eigen`` to force Eigen.

NumPy's own OpenBLAS is also located (the copy NumPy loaded, never a second
one): a kernel call made while another thread of the process is running, which
is the case for ~0.1 s after every NumPy BLAS call because NumPy's OpenBLAS
workers busy-wait, hands its dominant products (the Gram of ``fisher`` and of
the low-rank solves) to that library, whose spinning workers then do the work
instead of competing with ngdfast's. ``NGDFAST_BORROW_BLAS=never`` turns this
off (``always`` forces it, for tests); results then differ from the pool's in
the last bits only.
"""

import glob
import os
import warnings

import numpy as np

from . import _core


def _load_openblas() -> bool:
    if os.environ.get("NGDFAST_TILE_BACKEND", "blas").lower() == "eigen":
        return False
    try:
        import scipy_openblas32
    except ImportError:
        return False
    path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))
    return _core.load_blas(path, "scipy_")


BLAS_LOADED = _load_openblas()


# Spellings of NumPy's bundled OpenBLAS symbols (64-bit integers): NumPy >= 2
# wheels (scipy-openblas64) and NumPy 1.x wheels (openblas64_).
_HOST_SYMBOLS = (("scipy_", "_64_"), ("", "_64_"))


def _load_numpy_blas() -> str:
    """Path of NumPy's OpenBLAS when the core could bind to it, else ''."""
    mode = os.environ.get("NGDFAST_BORROW_BLAS", "auto").strip().lower()
    try:
        _core.set_borrow_mode(mode)  # the core knows the valid modes
    except ValueError as exc:
        warnings.warn(f"NGDFAST_BORROW_BLAS: {exc}; using 'auto'", RuntimeWarning, stacklevel=2)
        _core.set_borrow_mode("auto")
    np_dir = os.path.dirname(np.__file__)
    candidates = sorted(glob.glob(os.path.join(os.path.dirname(np_dir), "numpy.libs", "*openblas*")))
    candidates += sorted(glob.glob(os.path.join(np_dir, ".libs", "*openblas*")))
    for path in candidates:
        for prefix, suffix in _HOST_SYMBOLS:
            if _core.load_host_blas(path, prefix, suffix):
                return path
    return ""


HOST_BLAS = _load_numpy_blas()
