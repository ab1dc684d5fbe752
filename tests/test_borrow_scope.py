"""``_backend.not_borrowing``: a per-thread switch off of borrowing NumPy's BLAS.

ngdfast.torch runs its kernels inside it: in a torch loop the other running threads are
torch's OpenMP team, which borrowing cannot use.
"""

import threading

import numpy as np

import ngdfast
from ngdfast import _backend, _core


def _fisher_in_mode(J, mode, scoped):
    previous = ngdfast.get_borrow_blas()
    ngdfast.set_borrow_blas(mode)
    try:
        if scoped:
            with _backend.not_borrowing():
                return ngdfast.fisher(J)
        return ngdfast.fisher(J)
    finally:
        ngdfast.set_borrow_blas(previous)


def test_scope_is_per_thread_nests_and_restores():
    seen = {}

    def other():
        seen["other"] = _core.thread_borrow_never()

    assert not _core.thread_borrow_never()
    with _backend.not_borrowing():
        assert _core.thread_borrow_never()
        with _backend.not_borrowing():
            assert _core.thread_borrow_never()
        assert _core.thread_borrow_never()
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert ngdfast.get_borrow_blas() in ("never", "auto", "always")  # the global mode is untouched
    assert not _core.thread_borrow_never()
    assert seen["other"] is False


def test_scope_overrides_always_and_gives_the_pool_result(rng):
    # Large enough to pass the borrowing size bound (N P^2 >= 2e7 flops).
    J = rng.standard_normal((300, 600))
    never = _fisher_in_mode(J, "never", scoped=False)
    always = _fisher_in_mode(J, "always", scoped=False)
    scoped_always = _fisher_in_mode(J, "always", scoped=True)
    np.testing.assert_array_equal(scoped_always, never)  # the pool's bits, not the borrowed ones
    np.testing.assert_allclose(always, never, rtol=1e-12, atol=1e-12)


def test_scope_restored_after_an_error():
    try:
        with _backend.not_borrowing():
            raise KeyError("x")
    except KeyError:
        pass
    assert not _core.thread_borrow_never()
