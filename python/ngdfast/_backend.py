"""Selects the tile engine of the compiled core at import, from ``ngdfast._settings``.

The blocked kernels in ``csrc/`` are built from single-threaded tile products
(GEMM, SYRK, TRSM, POTRF on blocks of a few hundred rows); all threading is
ngdfast's own. Two engines can run those tiles: Eigen's (always compiled in)
and a private copy of OpenBLAS from the ``scipy-openblas32`` wheel, whose
kernels are chosen for the running CPU at load time (so a portable build of
ngdfast still runs AVX2/AVX-512 tiles). ``NGDFAST_TILE_BACKEND=eigen`` or
:func:`ngdfast.set_tile_backend` selects Eigen.

The private copy must stay private. Importing the ``scipy_openblas32`` package
dlopens its library with ``RTLD_GLOBAL`` (meant for building against it), and
every extension module loaded afterwards then binds its ``scipy_dgemm_`` ...
to that copy: SciPy imported after it ran its BLAS and LAPACK on ngdfast's
one-threaded tile engine, at about half speed, while threadpoolctl still
showed SciPy's own library at full thread count. So the package is never
imported: its library is found on disk and loaded ``RTLD_LOCAL``, which keeps
its symbols out of everybody's reach; a copy already loaded by someone else is
left alone (its thread count is not ours to change) and Eigen runs the tiles.
(Importing ``scipy_openblas32`` *after* ngdfast would promote ngdfast's copy to
the global scope, as that package is designed to; nothing in a normal program
imports it, and SciPy and NumPy do not.)

NumPy's own OpenBLAS is also located (the copy NumPy loaded, never a second
one): a kernel call made while another thread of the process is running, which
is the case for ~0.1 s after every NumPy BLAS call because NumPy's OpenBLAS
workers busy-wait, hands its dominant products (the Gram of ``fisher`` and of
the low-rank solves) to that library, whose spinning workers then do the work
instead of competing with ngdfast's. ``NGDFAST_BORROW_BLAS=never`` turns this
off (``always`` forces it, for tests); results then differ from the pool's in
the last bits only. NumPy's library cannot run the tiles themselves: its
thread count is process-wide (``openblas_set_num_threads_local`` of a pthreads
OpenBLAS sets the global count too), so a one-thread tile engine on it would
slow NumPy.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os

import numpy as np

from . import _core, _settings, _tiles


def openblas32_library() -> str:
    """Path of scipy-openblas32's shared library, found without importing the package ('' if absent)."""
    try:
        spec = importlib.util.find_spec("scipy_openblas32")  # finds, does not execute, the package
    except (ImportError, ValueError):
        return ""
    if spec is None or not spec.submodule_search_locations:
        return ""
    for folder in spec.submodule_search_locations:
        for pattern in ("libscipy_openblas*.so*", "libscipy_openblas*.dylib"):
            found = sorted(glob.glob(os.path.join(folder, "lib", pattern)))
            if found:
                return found[0]
    return ""


def _load_openblas() -> str:
    path = openblas32_library()
    return path if path and _core.load_blas(path, "scipy_") else ""


BLAS_PATH = _load_openblas()  # the private tile library, '' when Eigen runs the tiles
BLAS_LOADED = bool(BLAS_PATH)
_core.use_blas(BLAS_LOADED and _settings.tile_backend() == "blas")


# Spellings of NumPy's bundled OpenBLAS symbols (64-bit integers): NumPy >= 2
# wheels (scipy-openblas64) and NumPy 1.x wheels (openblas64_).
_HOST_SYMBOLS = (("scipy_", "_64_"), ("", "_64_"))


def _load_numpy_blas() -> str:
    """Path of NumPy's OpenBLAS when the core could bind to it, else ''."""
    np_dir = os.path.dirname(np.__file__)
    candidates = sorted(glob.glob(os.path.join(os.path.dirname(np_dir), "numpy.libs", "*openblas*")))
    candidates += sorted(glob.glob(os.path.join(np_dir, ".libs", "*openblas*")))
    for path in candidates:
        for prefix, suffix in _HOST_SYMBOLS:
            if _core.load_host_blas(path, prefix, suffix):
                return path
    return ""


HOST_BLAS = _load_numpy_blas()
_core.set_borrow_mode(_settings.borrow_blas())
_core.set_default_num_threads(_settings.num_threads())
# after the thread count: detect() reads build_info(), whose thread query would fix the default first
_tiles.apply(_tiles.detect())  # tile sizes for the kernels that engine runs


def set_tile_backend(name: str) -> None:
    """Choose the engine of the single-threaded tile products: ``"blas"`` or ``"eigen"``.

    The Python equivalent of ``NGDFAST_TILE_BACKEND``. ``"blas"`` is OpenBLAS
    from the ``scipy-openblas32`` wheel (a private copy, kernels chosen for the
    running CPU); when that library is not available, ``"blas"`` raises
    ``RuntimeError`` and Eigen stays in use. Results of the two engines agree
    to rounding.

    Examples
    --------
    >>> import ngdfast
    >>> before = ngdfast.get_tile_backend()
    >>> ngdfast.set_tile_backend("eigen")
    >>> ngdfast.get_tile_backend()
    'eigen'
    >>> ngdfast.set_tile_backend(before)
    """
    if not isinstance(name, str) or name.strip().lower() not in _settings.TILE_BACKENDS:
        raise ValueError(f"set_tile_backend: name must be one of {_settings.TILE_BACKENDS}, got {name!r}")
    name = name.strip().lower()
    if name == "blas" and not _core.blas_loaded():
        note = _core.build_info().get("blas_note") or "scipy-openblas32 is not installed"
        raise RuntimeError(f"set_tile_backend('blas'): no OpenBLAS tile engine ({note}); Eigen stays in use")
    _core.use_blas(name == "blas")
    _tiles.apply(_tiles.detect())


def get_tile_backend() -> str:
    """The engine running the tile products now: ``"blas"`` or ``"eigen"``.

    Examples
    --------
    >>> import ngdfast
    >>> ngdfast.get_tile_backend() in ("blas", "eigen")
    True
    """
    return "blas" if _core.blas_active() else "eigen"


def set_borrow_blas(mode: str) -> None:
    """When large products may run on NumPy's own BLAS: ``"never"``, ``"auto"`` or ``"always"``.

    The Python equivalent of ``NGDFAST_BORROW_BLAS``. ``"auto"`` borrows only
    while another thread of the process is running (NumPy's spinning workers);
    ``"never"`` gives bit-identical reruns whatever other threads do.

    Examples
    --------
    >>> import ngdfast
    >>> before = ngdfast.get_borrow_blas()
    >>> ngdfast.set_borrow_blas("never")        # bit-identical reruns whatever other threads do
    >>> ngdfast.get_borrow_blas()
    'never'
    >>> ngdfast.set_borrow_blas(before)
    """
    if not isinstance(mode, str) or mode.strip().lower() not in _settings.BORROW_MODES:
        raise ValueError(f"set_borrow_blas: mode must be one of {_settings.BORROW_MODES}, got {mode!r}")
    _core.set_borrow_mode(mode.strip().lower())


def get_borrow_blas() -> str:
    """The borrowing mode now: ``"never"``, ``"auto"`` or ``"always"``.

    Examples
    --------
    >>> import ngdfast
    >>> ngdfast.get_borrow_blas() in ("never", "auto", "always")
    True
    """
    return _core.get_borrow_mode()


def borrowing_now() -> bool:
    """Whether a large compiled call made now would run its products on NumPy's BLAS
    (the process-wide mode and, in ``"auto"``, whether another thread is running)."""
    if not HOST_BLAS:
        return False
    mode = _core.get_borrow_mode()
    return mode == "always" or (mode == "auto" and _core.other_thread_running())


@contextlib.contextmanager
def not_borrowing():
    """Within this block, the calling thread's kernels never borrow NumPy's BLAS.

    For callers whose other running threads are not NumPy's BLAS workers: in a
    torch loop they are torch's OpenMP team, spinning between ops. Borrowing
    cannot put those to work; it would wake NumPy's OpenBLAS workers, whose
    spinning after the call then starves torch's next ops (measured: a Woodbury
    solve between torch ops at 2 threads took 0.6 s instead of 20 ms). Only this
    thread is affected; the process-wide mode is unchanged. Nests.
    """
    with _settings.temporarily(_core.thread_borrow_never, _core.set_thread_borrow_never, True):
        yield
