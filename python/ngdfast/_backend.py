"""Selects the tile engine of the compiled core at import.

The blocked kernels in ``csrc/`` are built from single-threaded tile products
(GEMM, SYRK, TRSM, POTRF on blocks of a few hundred rows); all threading is
ngdfast's own. Two engines can run those tiles: Eigen's (always compiled in)
and OpenBLAS from the ``scipy-openblas32`` wheel, whose single-thread DGEMM
measured about 1.25x Eigen 3.4's on the reference machine. OpenBLAS is used
when importable; set ``NGDFAST_TILE_BACKEND=eigen`` to force Eigen.
"""

import os

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
