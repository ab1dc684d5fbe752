"""The end of the process: no abort, no hang, the exit status the program asks for.

Each case is a small program run in a fresh interpreter, five times: threads inside an ngdfast
kernel while the interpreter finalises, a thread started during finalisation that calls a
kernel, ``sys.exit`` from a worker thread and from the main thread, ``os._exit`` and Ctrl-C.
Its exit status must be the status of the same program without ngdfast (NumPy's ``J.T @ J``
doing the work instead), which ``test_same_program_without_ngdfast`` checks once per case. No
timing is asserted; a hang fails through a generous timeout.

Under the sanitizer build (tools/sanitize.sh) the children inherit the preloaded ASan/UBSan
runtime through the environment, and any report in a child's output fails the test.
"""

import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

SANITIZED = os.environ.get("NGDFAST_SANITIZED") == "1"
REPEATS = 5
TIMEOUT = 240 if SANITIZED else 60  # a hang fails; generous for a shared 2-core machine
SANITIZER_REPORTS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "SUMMARY: AddressSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")

# `work` does one call; its arrays and function are bound as default arguments, so that it needs
# no module global (a finaliser may run it while the interpreter tears its modules down).
WORK = {
    "fisher": "work = lambda J=rng.standard_normal((256, 1024)), f=ng.fisher: f(J)",
    "damped_solve": """
        F = ng.fisher(rng.standard_normal((300, 1024))) + np.eye(1024)
        work = lambda F=F, g=rng.standard_normal(1024), f=ng.damped_solve: f(F, g, 0.1)
    """,
    "damped_solve_mixed": """
        F = ng.fisher(rng.standard_normal((300, 1024))) + np.eye(1024)
        work = lambda F=F, g=rng.standard_normal(1024), f=ng.damped_solve: f(F, g, 0.1, precision="mixed")
    """,
    "lowrank_solve": """
        work = lambda J=rng.standard_normal((512, 1024)), g=rng.standard_normal(1024), f=ng.lowrank_solve: (
            f(J, g, 0.1))
    """,
    "lowrank_solve_mixed": """
        work = lambda J=rng.standard_normal((512, 1024)), g=rng.standard_normal(1024), f=ng.lowrank_solve: (
            f(J, g, 0.1, precision="mixed"))
    """,
    "natural_gradient": """
        work = lambda J=rng.standard_normal((512, 1024)), g=rng.standard_normal(1024), f=ng.natural_gradient: (
            f(J, g, 0.1))
    """,
    "natural_gradient_mixed": """
        work = lambda J=rng.standard_normal((256, 1024)), g=rng.standard_normal(1024), f=ng.natural_gradient: (
            f(J, g, 0.1, method="dense", precision="mixed"))
    """,
    "kfac_precondition": """
        A = ng.fisher(rng.standard_normal((600, 512))) + np.eye(512)
        S = ng.fisher(rng.standard_normal((600, 256))) + np.eye(256)
        work = lambda G=rng.standard_normal((256, 512)), A=A, S=S, f=ng.kfac_precondition: f(G, A, S, 0.1)
    """,
}
# The same program without ngdfast.
# The NumPy-only control's daemon work releases the GIL like a kernel but stays out of BLAS:
# OpenBLAS itself can crash at exit under a daemon thread's product (SIGSEGV seen in a CI run
# with one BLAS thread: its buffers are freed by its destructor), which says nothing about the
# statuses Python gives these programs.
NUMPY_WORK = "work = lambda J=rng.standard_normal(1 << 18): np.sort(J)"
# A call of about a second (Ctrl-C lands inside it), with and without ngdfast.
LONG_CALL = "long_call = lambda: {}"

PRELUDE = """
import atexit, os, signal, sys, threading
import numpy as np
{imports}
rng = np.random.default_rng(0)
{work}
{long_call}
inside = threading.Event()  # set by a thread about to call work()

def loop():
    while True:
        inside.set()
        work()

def start_daemons(n=2):
    for _ in range(n):
        threading.Thread(target=loop, daemon=True).start()
    inside.wait()
"""

# name -> (program after the prelude, the exit status the program asks for)
SCENARIOS = {
    # Two daemon threads calling kernels in a loop when the main thread returns (the reproducer).
    "daemon_at_exit": ("""
        start_daemons()
        print("exit", flush=True)
    """, 0),
    "sys_exit_main": ("""
        start_daemons()
        sys.exit(3)
    """, 3),
    # SystemExit ends only the worker; the process ends with 0 while daemons are inside kernels.
    "sys_exit_worker": ("""
        def worker():
            work()
            sys.exit(4)
        start_daemons()
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    """, 0),
    "os_exit_main": ("""
        start_daemons()
        os._exit(5)
    """, 5),
    # A worker ends the process while the main thread and a daemon are inside kernels.
    "os_exit_worker": ("""
        start_daemons(1)
        threading.Thread(target=lambda: (inside.wait(), os._exit(6))).start()
        loop()
    """, 6),
    # An atexit handler calls a kernel itself and starts a thread that calls kernels while the
    # interpreter finalises (Python >= 3.12 refuses new threads there: only the call remains).
    "atexit_thread": ("""
        def at_exit():
            work()
            started = threading.Event()
            def late():
                started.set()
                loop()
            try:
                threading.Thread(target=late, daemon=True).start()
            except RuntimeError:
                return
            started.wait()
        atexit.register(at_exit)
        start_daemons(1)
    """, 0),
    # A finaliser run by the interpreter's last garbage collection (automatic collection off,
    # so only finalisation collects the cycle) calls kernels on the finalising thread, which
    # must get the GIL back (only other threads are parked), while a daemon thread is inside
    # a kernel.
    "del_at_teardown": ("""
        import gc
        class CallsAtTeardown:
            def __init__(self):
                self.work, self.write, self.cycle = work, os.write, self
            def __del__(self):
                self.work()
                self.work()
                self.write(1, b"del done\\n")
        gc.disable()
        CallsAtTeardown()
        start_daemons(1)
    """, 0),
    # SIGINT while the main thread is inside a long call (a daemon thread in another kernel):
    # the KeyboardInterrupt ends the program, which Python reports by dying of SIGINT.
    "ctrl_c": ("""
        start_daemons(1)
        print("ready", flush=True)
        while True:
            long_call()
    """, -signal.SIGINT),
}

# Every kernel in the reproducer's situation; each other scenario with one kernel (dense
# Cholesky, low-rank, borrowed NumPy BLAS and mixed-precision paths spread over them).
OTHER_KERNEL = {
    "sys_exit_main": "lowrank_solve_mixed",
    "sys_exit_worker": "fisher",
    "os_exit_main": "natural_gradient",
    "os_exit_worker": "damped_solve",
    "atexit_thread": "lowrank_solve",
    "del_at_teardown": "fisher",
    "ctrl_c": "lowrank_solve_mixed",
}
CASES = [("daemon_at_exit", k) for k in WORK] + sorted(OTHER_KERNEL.items())


def prelude(work):
    """The program's start: NumPy, ngdfast unless ``work`` is None, ``work`` and the threads."""
    numpy_only = work is None
    return PRELUDE.format(
        imports="" if numpy_only else "import ngdfast as ng",
        work=textwrap.dedent(NUMPY_WORK if numpy_only else WORK[work]),
        long_call=LONG_CALL.format("np.ones((500, 1000)).T @ np.ones((500, 1000))" if numpy_only
                                  else "ng.fisher(np.ones((1500, 3000)))"),
    )


def program(scenario, work):
    return prelude(work) + textwrap.dedent(SCENARIOS[scenario][0])


def run_once(code, interrupt, env=None):
    """Run ``code`` in a fresh interpreter (this environment, the sanitizer preload included,
    updated with ``env``).

    With ``interrupt``, SIGINT is sent once the child printed "ready". Returns
    (returncode, output); a hang fails the test.
    """
    if interrupt:  # Python's own SIGINT handler, even where this run inherited SIGINT ignored
        code = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n" + code
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    try:
        if interrupt:
            first = proc.stdout.readline()
            if first.strip() == "ready":
                proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=TIMEOUT)
            out = first + out
        else:
            out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child hung (> {TIMEOUT} s)\n--- stdout\n{out}\n--- stderr\n{err}")
    return proc.returncode, out + err


def check_exit(code, expected, interrupt=False, repeats=REPEATS, must_print=(), env=None):
    """Run ``code`` ``repeats`` times (a few at once) and require ``expected`` every time."""
    with ThreadPoolExecutor(max_workers=3) as ex:
        results = list(ex.map(lambda _: run_once(code, interrupt, env), range(repeats)))
    for i, (rc, out) in enumerate(results):
        reports = [r for r in SANITIZER_REPORTS if r in out]
        assert not reports, f"run {i}: sanitizer report in the child ({reports})\n{out}"
        assert rc == expected, f"run {i}: exit status {rc}, expected {expected}\n{out}"
        for text in must_print:
            assert text in out, f"run {i}: {text!r} not printed\n{out}"


@pytest.mark.parametrize("scenario, work", CASES, ids=[f"{s}-{k}" for s, k in CASES])
def test_exit_status(scenario, work):
    _, expected = SCENARIOS[scenario]
    must_print = ("del done",) if scenario == "del_at_teardown" else ()
    check_exit(program(scenario, work), expected, interrupt=scenario == "ctrl_c", must_print=must_print)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_same_program_without_ngdfast(scenario):
    # The expected statuses are what Python gives these programs with NumPy doing the work.
    # NumPy's OpenBLAS runs on one thread here: with its worker threads, a parallel J.T @ J
    # in flight on a daemon thread when exit() shuts them down (gotoblas_quit) can hang the
    # process for good (4 runs of 20 on the 2-core reference machine), a race of OpenBLAS's
    # own that ngdfast's calls into that library no longer join (see docs/threads.md).
    _, expected = SCENARIOS[scenario]
    code = program(scenario, None)
    assert "ngdfast" not in code
    must_print = ("del done",) if scenario == "del_at_teardown" else ()
    check_exit(code, expected, interrupt=scenario == "ctrl_c", repeats=1, must_print=must_print,
               env={"OPENBLAS_NUM_THREADS": "1"})


# A Preconditioner whose hooks are registered on a model alive at interpreter exit, with
# daemon threads inside ngdfast kernels. (A daemon thread inside a torch operation at exit
# aborts the process with torch alone: torch takes the GIL back in a noexcept destructor.)
TORCH_AT_EXIT = """
    import torch
    import ngdfast.torch as ngt
    torch.manual_seed(0)
    x, y = torch.randn(64, 16), torch.randint(0, 10, (64,))
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    precond = ngt.Preconditioner(model, kl_radius=1e-3, damping=1e-3)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        precond.step()
        opt.step()
    start_daemons()
    print("exit", flush=True)
"""


@pytest.mark.skipif(SANITIZED, reason="torch is not loaded under the preloaded sanitizer runtime")
def test_torch_preconditioner_alive_at_exit():
    pytest.importorskip("torch")
    code = prelude("fisher") + textwrap.dedent(TORCH_AT_EXIT)
    check_exit(code, 0, repeats=2, must_print=("exit",))


@pytest.mark.skipif(not SANITIZED, reason="checks the sanitizer build's children (tools/sanitize.sh)")
def test_children_run_under_the_sanitizers():
    # The children inherit the preload, and a report in one fails check_exit.
    code = "import os; print(os.environ.get('LD_PRELOAD', ''))"
    rc, out = run_once(code, interrupt=False)
    assert rc == 0 and "libasan" in out, out
    use_after_free = textwrap.dedent("""
        import ctypes
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        p = libc.malloc(64)
        libc.free(ctypes.c_void_p(p))
        ctypes.memset(p, 0, 8)
    """)
    with pytest.raises(AssertionError, match="sanitizer report in the child"):
        check_exit(use_after_free, 0, repeats=1)
