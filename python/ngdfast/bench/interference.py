"""The alternating experiment: a trainer's loop of NumPy BLAS work and a kernel call every step.

Two workloads (a dense EMA Fisher + Cholesky solve, and a Woodbury natural
gradient), each with ngdfast and with the NumPy/SciPy code a user would write,
alternate with a NumPy matmul. Their slowdown is the alternating time over the
sum of the two parts timed alone; well above 1 means the thread pools of the
two libraries get in each other's way. With threadpoolctl installed, ngdfast
also runs with NumPy's BLAS limited to one thread, which removes NumPy's
spinning workers; and, when borrowing is ``"auto"``, without borrowing NumPy's
BLAS for its products (:func:`ngdfast.set_borrow_blas`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .cases import DAMPING, DECAY, gram, scores
from .peers import numpy_woodbury, scipy, scipy_cho_solve
from .timing import time_blocks


def alternating(quick: bool, repeats: int) -> list[dict[str, Any]]:
    """One row per workload and variant: matmul, kernel and alternating seconds, and the slowdown."""
    from .. import damped_solve, fisher, get_borrow_blas, natural_gradient, set_borrow_blas

    m = 128 if quick else 512
    rng = np.random.default_rng(6)
    A = rng.standard_normal((m, m))
    B = rng.standard_normal((m, m))

    def matmul():
        return A @ B

    have_scipy = scipy() is not None
    solve = scipy_cho_solve if have_scipy else np.linalg.solve

    n, p = (32, 128) if quick else (256, 1024)
    J = scores(n, p, "float64")
    g = rng.standard_normal(p)
    eye = np.eye(p)
    F_ng = gram(J)
    F_np = F_ng.copy()

    def dense_ngd():
        fisher(J, out=F_ng, decay=DECAY)
        return damped_solve(F_ng, g, DAMPING)

    def dense_peer():
        F_np[...] *= DECAY
        F_np[...] += (J.T @ J) * ((1.0 - DECAY) / n)
        return solve(F_np + DAMPING * eye, g)

    nw, pw = (32, 512) if quick else (256, 16384)
    Jw = scores(nw, pw, "float64")
    gw = rng.standard_normal(pw)
    workloads = [
        (f"fisher(out=) + damped_solve, N={n} P={p}", dense_ngd, dense_peer,
         "numpy+scipy-cho" if have_scipy else "numpy-solve"),
        (f"natural_gradient, N={nw} P={pw}", lambda: natural_gradient(Jw, gw, DAMPING),
         lambda: numpy_woodbury(Jw, gw, DAMPING), "numpy-woodbury"),
    ]
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None

    rows = []
    for step, ngd, peer, peer_name in workloads:
        fns = {
            "matmul": matmul,
            "ngdfast": ngd,
            "ngdfast+matmul": lambda ngd=ngd: (matmul(), ngd()),
            "peer": peer,
            "peer+matmul": lambda peer=peer: (matmul(), peer()),
        }
        t = time_blocks(fns, repeats)
        variants = [("ngdfast", t["ngdfast"], t["ngdfast+matmul"]), (peer_name, t["peer"], t["peer+matmul"])]
        if threadpool_limits is not None:
            with threadpool_limits(limits=1, user_api="blas"):
                # Limits every BLAS pool in the process, ngdfast's private one
                # included (it is single-threaded anyway); ngdfast's own
                # threads are not BLAS threads and keep running.
                t1 = time_blocks({"matmul": matmul, "both": lambda ngd=ngd: (matmul(), ngd())}, repeats)
            variants.append(("ngdfast, numpy 1 thread", t["ngdfast"], t1["both"]))
        before = get_borrow_blas()
        if before == "auto":
            # The same loop without borrowing NumPy's BLAS (NGDFAST_BORROW_BLAS=never).
            set_borrow_blas("never")
            try:
                t0 = time_blocks({"ngdfast": ngd, "both": lambda ngd=ngd: (matmul(), ngd())}, repeats)
            finally:
                set_borrow_blas(before)
            variants.append(("ngdfast, no borrowing", t0["ngdfast"], t0["both"]))
        for label, alone, both in variants:
            rows.append({
                "variant": label,
                "step": step,
                "matmul_seconds": t["matmul"],
                "kernel_seconds": alone,
                "alternating_seconds": both,
                "slowdown": both / (t["matmul"] + alone),
            })
    return rows
