"""Importing and calling ngdfast changes no other library's behaviour.

Each case runs in a fresh interpreter, with ngdfast imported before or after
SciPy / NumPy / torch. The check that matters is that the neighbour's threads
do its work: ngdfast used to import the ``scipy_openblas32`` package, whose
import dlopens its OpenBLAS ``RTLD_GLOBAL``, so SciPy's extension modules
loaded afterwards bound their BLAS/LAPACK symbols to ngdfast's one-threaded
tile copy and ran at about half speed, while threadpoolctl still reported
SciPy's own library at full thread count.

Timing is not asserted (the machine may be shared): a large SciPy / NumPy /
torch product must spend a fair share of its CPU time on threads other than
the calling one (per-thread CPU time from /proc, which does not depend on the
load), and every thread count, the environment and the signal handlers must
be what they were before ngdfast came.
"""

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json, os, signal, sys, time

order = sys.argv[1].split(",")
SIGNALS = [s for s in ("SIGINT", "SIGTERM", "SIGCHLD", "SIGPIPE", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGALRM",
                       "SIGQUIT", "SIGSEGV", "SIGFPE", "SIGBUS", "SIGABRT") if hasattr(signal, s)]

def c_environ():
    # The C environment: a setenv()/putenv() in compiled code does not show in os.environ.
    env = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
    out, i = [], 0
    while env[i]:
        out.append(env[i].decode(errors="replace"))
        i += 1
    return sorted(out)

def snapshot():
    from threadpoolctl import threadpool_info
    pools = {p["filepath"]: p["num_threads"] for p in threadpool_info()
             if p["internal_api"] != "ngdfast" and "scipy_openblas32" not in p["filepath"]}
    torch_threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    return {"environ": dict(os.environ), "c_environ": c_environ(),
            "signals": {s: repr(signal.getsignal(getattr(signal, s))) for s in SIGNALS},
            "pools": pools, "torch": torch_threads}

def helper_share(work):
    # Share of the CPU time of `work` spent on threads other than the caller: the bench's own
    # measurement (its peer check), imported after every library of the order. The pauses let
    # earlier calls' spinning workers go idle.
    from ngdfast.bench.timing import peer_thread_share
    wall = time.perf_counter()
    share = peer_thread_share(work, repeats=3, settle=0.3)
    return {"share": share, "wall": time.perf_counter() - wall}

for name in order:
    if name == "ngdfast":
        before = snapshot()
        import ngdfast
        import numpy as np
        rng = np.random.default_rng(0)
        J = rng.standard_normal((300, 700))
        F = ngdfast.fisher(J)
        ngdfast.damped_solve(F, J[0], 0.1)
        ngdfast.lowrank_solve(J, J[0], 0.1)
        ngdfast.natural_gradient(J, J[0], 0.1)
        ngdfast.kfac_precondition(J[:40, :60], J[:60, :60].T @ J[:60, :60], J[:40, :40] @ J[:40, :40].T, 0.1)
        ngdfast.set_num_threads(1)
        ngdfast.fisher(J)
        ngdfast.set_num_threads(2)
        after = snapshot()
    elif name == "scipy":
        import scipy.linalg  # noqa: F401
        import scipy.linalg.blas  # noqa: F401
    else:
        __import__(name)

import numpy as np
rng = np.random.default_rng(1)
J = rng.standard_normal((512, 4096))
result = {"before": before, "after": after}
if "scipy" in order:
    from scipy.linalg.blas import dsyrk
    result["scipy"] = helper_share(lambda: dsyrk(1.0, J, trans=1))
if "numpy" in order:
    result["numpy"] = helper_share(lambda: J.T @ J)
if "torch" in order:
    import torch
    T = torch.from_numpy(J)
    result["torch"] = helper_share(lambda: T.T @ T)
from threadpoolctl import threadpool_info
result["pools"] = threadpool_info()
print(json.dumps(result))
"""

ORDERS = [
    "ngdfast,scipy",
    "scipy,ngdfast",
    "ngdfast,numpy",
    "numpy,ngdfast",
    pytest.param("ngdfast,torch", marks=pytest.mark.slow),
    pytest.param("torch,ngdfast", marks=pytest.mark.slow),
]

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_probe(order):
    # Thread counts left to the libraries' defaults (all CPUs), as for a user with a clean environment.
    env = {k: v for k, v in os.environ.items()
           if k not in {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NGDFAST_NUM_THREADS"}}
    run = subprocess.run([sys.executable, "-c", PROBE, order], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads per-thread CPU time from /proc")
@pytest.mark.parametrize("order", ORDERS)
def test_neighbour_unchanged(order):
    pytest.importorskip("threadpoolctl")
    first, second = order.split(",")
    peer = second if first == "ngdfast" else first
    pytest.importorskip("scipy" if peer == "scipy" else peer)
    out = run_probe(order)
    before, after = out["before"], out["after"]
    assert after["environ"] == before["environ"]
    assert after["c_environ"] == before["c_environ"]
    assert after["signals"] == before["signals"]
    assert after["torch"] == before["torch"]
    for path, n in before["pools"].items():  # every library loaded before ngdfast keeps its count
        assert after["pools"].get(path) == n, (path, n, after["pools"].get(path))
    pools = [p for p in out["pools"] if p["internal_api"] == "openblas"]
    assert all("scipy_openblas32" not in p["filepath"] or p["num_threads"] == 1 for p in pools)
    if CPUS < 2:
        return  # one CPU: no helper threads to check
    measured = out[peer]
    # Two threads splitting a product evenly give ~0.5; a product run on one thread, ~0. With
    # the suite on every core (pytest -n auto) another worker competes for the CPUs, and the
    # helper's share of a threaded product measured 0.18 there: the bound sits at 0.1.
    assert measured["share"] is not None and measured["share"] > 0.1, (
        f"{peer}'s product ran on the calling thread alone with ngdfast imported ({order}): {measured}"
    )
