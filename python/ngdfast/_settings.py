"""ngdfast's settings: every environment variable it reads, read once, with one rule.

======================  ==================================  =====================  ==========================
variable                Python equivalent                   valid values           default
======================  ==================================  =====================  ==========================
``NGDFAST_NUM_THREADS``  ``set_num_threads``, ``num_threads``  an integer >= 1        ``OMP_NUM_THREADS``, else
                                                                                   the CPUs this process may
                                                                                   run on
``NGDFAST_TILE_BACKEND``  ``set_tile_backend``                ``blas``, ``eigen``    ``blas``
``NGDFAST_BORROW_BLAS``  ``set_borrow_blas``                  ``never``, ``auto``,   ``auto``
                                                            ``always``
======================  ==================================  =====================  ==========================

The rule, the same for every variable: the value is read at ``import ngdfast``,
surrounding blanks are ignored, names are case-insensitive and an empty value
counts as unset. An invalid value gives one ``RuntimeWarning`` naming the
variable, the value and the valid values, and the default is used (an import
that fails over a typo in the environment would take every program using
ngdfast down with it; a silent default would hide the typo).

``OMP_NUM_THREADS`` is honoured when ``NGDFAST_NUM_THREADS`` is unset, although
ngdfast does not use OpenMP: it is the variable users set to keep every
library of a process to N threads (NumPy's OpenBLAS and threadpoolctl-based
libraries honour it too), e.g. one thread per process under MPI or
multiprocessing. Only its first entry counts (OpenMP allows a nested list such
as ``4,2``). The environment is never written.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable, Iterator, Optional, TypeVar

__all__ = ["borrow_blas", "num_threads", "tile_backend"]

T = TypeVar("T")

TILE_BACKENDS = ("blas", "eigen")
BORROW_MODES = ("never", "auto", "always")


@contextlib.contextmanager
def temporarily(get: Callable[[], T], set_: Callable[[T], None], value: T) -> Iterator[None]:
    """``set_(value)`` for a ``with`` block; what ``get()`` gave before is restored on exit,
    also when the block raises (``ngdfast.num_threads``, ``_backend.not_borrowing``)."""
    previous = get()
    set_(value)
    try:
        yield
    finally:
        set_(previous)


def _read(name: str, parse: Callable[[str], Optional[T]], valid: str) -> Optional[T]:
    """The parsed value of ``name``; ``None`` when unset, empty or invalid (then with a warning)."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    value = parse(raw.strip())
    if value is None:
        warnings.warn(f"ngdfast: ignoring {name}={raw!r}: valid values are {valid}; using the default",
                      RuntimeWarning, stacklevel=3)
    return value


def _positive_int(text: str) -> Optional[int]:
    try:
        n = int(text, 10)
    except ValueError:
        return None
    return n if 1 <= n <= MAX_THREADS else None


def _choice(options: tuple[str, ...]) -> Callable[[str], Optional[str]]:
    def parse(text: str) -> Optional[str]:
        text = text.lower()
        return text if text in options else None
    return parse


# More threads than this is a typo (2**31 would try to start two billion
# threads); ngdfast's pool is one thread per core.
MAX_THREADS = 1024


def available_cpus() -> int:
    """CPUs this process may run on (affinity and cgroup-cpuset aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def num_threads() -> int:
    """Initial pool size: ``NGDFAST_NUM_THREADS``, else ``OMP_NUM_THREADS``'s first entry, else the CPUs."""
    valid = f"an integer from 1 to {MAX_THREADS}"
    n = _read("NGDFAST_NUM_THREADS", _positive_int, valid)
    if n is None:  # unset or invalid (warned): as if unset
        n = _read("OMP_NUM_THREADS", lambda t: _positive_int(t.split(",")[0].strip()),
                  valid + " (or a comma-separated list of them)")
    return n if n is not None else available_cpus()


def tile_backend() -> str:
    """``NGDFAST_TILE_BACKEND``: which engine runs the single-threaded tile products."""
    return _read("NGDFAST_TILE_BACKEND", _choice(TILE_BACKENDS), ", ".join(map(repr, TILE_BACKENDS))) or "blas"


def borrow_blas() -> str:
    """``NGDFAST_BORROW_BLAS``: when the large products may run on NumPy's own BLAS."""
    return _read("NGDFAST_BORROW_BLAS", _choice(BORROW_MODES), ", ".join(map(repr, BORROW_MODES))) or "auto"
