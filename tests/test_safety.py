"""No crashes, no hangs: sizes near the limits, fork() while ngdfast runs, Ctrl-C.

Anything that could crash or hang runs in a subprocess with a timeout, so that a
failure fails the test instead of killing or blocking pytest.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ngdfast
from ngdfast import _backend, _core, reference


def run_script(code, timeout, env=None):
    """Run ``code`` in a fresh interpreter; returns (returncode, output). A timeout fails."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True, text=True, timeout=timeout, env=full_env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"subprocess hung (> {timeout} s); output so far:\n{exc.stdout}\n{exc.stderr}")
    return proc.returncode, proc.stdout + proc.stderr


def woodbury(J, g, lam):
    """(J^T J / N + lam I)^-1 g by hand, through the N x N system (float64)."""
    J = np.asarray(J, dtype=np.float64)
    n = J.shape[0]
    Jd = J / np.sqrt(n)
    K = Jd @ Jd.T + lam * np.eye(n)
    return (g - Jd.T @ np.linalg.solve(K, Jd @ g)) / lam


# --- sizes -------------------------------------------------------------------------------------


def test_checked_mul():
    assert _core._checked_mul(3, 4, 8) == 12
    assert _core._checked_mul(0, 2**62, 8) == 0
    assert _core._checked_mul(2**31, 2**31, 1) == 2**62
    for a, b, elem in [(2**32, 2**32, 1), (2**31, 2**31, 8), (2**62, 3, 1), (-1, 5, 8), (2**40, 2**20, 8)]:
        with pytest.raises(MemoryError, match="exceeds the address space"):
            _core._checked_mul(a, b, elem)


@pytest.mark.skipif(os.environ.get("NGDFAST_SANITIZED") == "1",
                    reason="AddressSanitizer aborts on a failed operator new instead of throwing")
def test_workspace_too_large_is_memory_error():
    # N x N workspace of 2**17 rows: 128 GiB, from a J that takes no memory.
    J = np.broadcast_to(np.ones((1, 1)), (2**17, 1))
    with pytest.raises(MemoryError):
        ngdfast.lowrank_solve(J, np.ones(1), 0.1, check_finite=False)


@pytest.fixture
def borrow_always():
    if not _backend.HOST_BLAS:
        pytest.skip("NumPy's OpenBLAS was not found")
    before = _core.get_borrow_mode()
    _core.set_borrow_mode("always")
    yield
    _core.set_borrow_mode(before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_borrowed_gram_in_panels(borrow_always, dtype):
    # The borrowed Gram is cut into column panels of at most 2048 (OpenBLAS's
    # threaded SYRK overruns its packing buffer on wide outputs): 2 panels + a
    # ragged one, in fisher (mirrored upper, symmetric EMA) and lowrank_solve.
    rng = np.random.default_rng(5)
    tol = 1e-10 if dtype == np.float64 else 2e-4
    J = rng.standard_normal((6, 4133)).astype(dtype)
    F = ngdfast.fisher(J)
    assert np.array_equal(F, F.T)
    expect = reference.fisher(J)
    assert np.abs(F - expect).max() <= tol * np.abs(expect).max()
    out = np.asfortranarray(ngdfast.fisher(J[::-1] * 2))
    expect = reference.fisher(J, out=out.copy(), decay=0.5)
    ngdfast.fisher(J, out=out, decay=0.5)
    assert np.array_equal(out, out.T)
    assert np.abs(out - expect).max() <= tol * np.abs(expect).max()
    Jl = rng.standard_normal((2100, 3)).astype(dtype)
    g = rng.standard_normal(3).astype(dtype)
    x = ngdfast.lowrank_solve(Jl, g, 0.1)
    want = woodbury(Jl, g, 0.1)
    assert np.abs(x - want).max() <= 50 * tol * np.abs(want).max()


def test_large_lowrank_reproducer_in_subprocess():
    """Issue 9, defect 2 at the largest size CI can afford, borrowing on (where the
    crash was): N = 4500 rows of one column after a pool-starting fisher call."""
    code = """
        import numpy as np, ngdfast
        from ngdfast import _core
        _core.set_borrow_mode("always")
        ngdfast.fisher(np.ones((1000, 1000)))
        N = 4500
        J = np.linspace(0.5, 1.5, N)[:, None]
        x = ngdfast.lowrank_solve(J, np.ones(1), 0.1)
        # P = 1: (J^T J / N + lam)^-1 g by hand.
        want = 1.0 / (np.dot(J[:, 0], J[:, 0]) / N + 0.1)
        assert abs(x[0] - want) <= 1e-9 * abs(want), (x, want)
        print("ok")
    """
    if not _backend.HOST_BLAS:
        pytest.skip("NumPy's OpenBLAS was not found")
    rc, out = run_script(code, timeout=300)
    assert rc == 0 and "ok" in out, out


@pytest.mark.skipif(os.environ.get("NGDFAST_BIG_TESTS") != "1",
                    reason="needs ~20 GB and about an hour (set NGDFAST_BIG_TESTS=1)")
def test_issue_reproducer_46340():
    """The exact reproducer of issue 9 (crashed within seconds before the fix; now
    the Gram completes and the 46340 x 46340 Cholesky takes its time)."""
    code = """
        import numpy as np, ngdfast
        ngdfast.fisher(np.ones((1000, 1000)))
        try:
            x = ngdfast.lowrank_solve(np.ones((46340, 1)), np.ones(1), 0.1)
        except MemoryError:
            print("MemoryError")
        else:
            assert abs(x[0] - 1 / 1.1) < 1e-9, x
            print("ok")
    """
    rc, out = run_script(code, timeout=10800)
    assert rc == 0 and ("ok" in out or "MemoryError" in out), out


# --- fork --------------------------------------------------------------------------------------

FORK_WHILE_RUNNING = """
    import os, sys, threading, time
    import numpy as np
    import ngdfast
    from ngdfast import _core
    _core.set_borrow_mode("{mode}")
    rng = np.random.default_rng(0)
    J = rng.standard_normal((300, 2000))
    g = rng.standard_normal(2000)
    x_want = ngdfast.reference.lowrank_solve(J[:50], g, 0.1)
    F_want = ngdfast.reference.fisher(J[:, :400])
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            ngdfast.fisher(J)
            ngdfast.lowrank_solve(J, g, 0.1)

    t = threading.Thread(target=loop)
    t.start()
    time.sleep(0.2)
    for i in range(6):
        pid = os.fork()
        if pid == 0:  # the child computes on a fresh pool, then leaves at once
            ok = np.allclose(ngdfast.lowrank_solve(J[:50], g, 0.1), x_want)
            ok = ok and np.allclose(ngdfast.fisher(J[:, :400]), F_want)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        time.sleep(0.05)
    stop.set()
    t.join()
    print("ok")
"""


@pytest.mark.parametrize("mode", ["always", "auto", "never"])
def test_fork_while_another_thread_runs_ngdfast(mode):
    if mode == "always" and not _backend.HOST_BLAS:
        pytest.skip("NumPy's OpenBLAS was not found")
    rc, out = run_script(FORK_WHILE_RUNNING.format(mode=mode), timeout=120)
    assert rc == 0 and "ok" in out, out


def test_multiprocessing_fork_pool_after_parent_used_the_pool():
    code = """
        import multiprocessing as mp
        import numpy as np
        import ngdfast

        def work(seed):
            rng = np.random.default_rng(seed)
            J = rng.standard_normal((400, 600))
            g = rng.standard_normal(600)
            return ngdfast.fisher(J).sum(), ngdfast.lowrank_solve(J, g, 0.1).sum()

        if __name__ == "__main__":
            want = [work(s) for s in range(4)]  # the parent's pool runs first
            with mp.get_context("fork").Pool(2) as pool:
                got = pool.map(work, range(4))
            assert np.allclose(got, want), (got, want)
            print("ok")
    """
    rc, out = run_script(code, timeout=120)
    assert rc == 0 and "ok" in out, out


# --- Ctrl-C ------------------------------------------------------------------------------------

# The child restores Python's own SIGINT handler first: a test run started in the background
# of a non-interactive shell inherits SIGINT ignored, and Python then installs no handler.
INTERRUPT = """
    import os, signal, threading, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import numpy as np
    import ngdfast
    before = signal.getsignal(signal.SIGINT)
    rng = np.random.default_rng(1)
    {setup}
    sent = []

    def send():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Timer(0.5, send).start()
    t0 = time.perf_counter()
    try:
        {call}
    except KeyboardInterrupt:
        print("interrupted after %.3f s" % (time.perf_counter() - sent[0]))
    else:
        print("not interrupted: call took %.1f s" % (time.perf_counter() - t0))
    assert signal.getsignal(signal.SIGINT) is before
    J2 = rng.standard_normal((300, 500))
    g2 = rng.standard_normal(500)
    assert np.allclose(ngdfast.lowrank_solve(J2, g2, 0.1), ngdfast.reference.lowrank_solve(J2, g2, 0.1))
    print("works after")
"""

INTERRUPT_CASES = {
    # issue 9, defect 8: ~13 s of Cholesky at N = 15000; 12000 keeps memory near 1 GiB.
    "lowrank_solve": ("J = rng.standard_normal((12000, 1))", "ngdfast.lowrank_solve(J, np.ones(1), 0.1)"),
    "fisher": ("J = rng.standard_normal((2500, 8000))", "ngdfast.fisher(J)"),
    # the mixed-precision path (float32 Gram and Cholesky, ~2 s): its bindings poll too
    "lowrank_solve_mixed": ("J = rng.standard_normal((12000, 1))",
                            "ngdfast.lowrank_solve(J, np.ones(1), 0.1, precision='mixed')"),
}


@pytest.mark.parametrize("case", sorted(INTERRUPT_CASES))
def test_ctrl_c_interrupts_a_long_call(case):
    setup, call = INTERRUPT_CASES[case]
    rc, out = run_script(INTERRUPT.format(setup=setup, call=call), timeout=300)
    assert rc == 0, out
    assert "interrupted after" in out, out
    # A responsiveness bound, generous: polls are 0.1 s apart and blocks are short.
    delay = float(out.split("interrupted after ")[1].split(" s")[0])
    assert delay < 2.5, out
    assert "works after" in out, out


def test_signal_handler_exception_propagates():
    # A user's handler runs (none is replaced) and its exception ends the call.
    code = """
        import os, signal, threading
        import numpy as np
        import ngdfast

        class Stop(Exception):
            pass

        def handler(signum, frame):
            raise Stop()

        signal.signal(signal.SIGUSR1, handler)
        J = np.random.default_rng(2).standard_normal((12000, 1))
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGUSR1)).start()
        try:
            ngdfast.lowrank_solve(J, np.ones(1), 0.1)
        except Stop:
            print("stopped")
        assert signal.getsignal(signal.SIGUSR1) is handler
    """
    rc, out = run_script(code, timeout=300)
    assert rc == 0 and "stopped" in out, out


def test_import_and_calls_leave_sigint_handler_alone():
    before = signal.getsignal(signal.SIGINT)
    ngdfast.lowrank_solve(np.ones((50, 3)), np.ones(3), 0.1)
    assert signal.getsignal(signal.SIGINT) is before
