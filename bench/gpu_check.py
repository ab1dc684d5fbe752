#!/usr/bin/env python
"""ngdfast.cuda on a real GPU: parity at real sizes, and speed beside CuPy/cuBLAS.

Not part of the test suite (the suite checks the kernels' logic in Numba's CUDA
simulator).  Run it where there is an NVIDIA GPU::

    python bench/gpu_check.py               # parity + timings, short table (well under 5 min)
    python bench/gpu_check.py --quick       # smaller sizes
    python bench/gpu_check.py --smoke       # tiny sizes; also runs in the simulator (checks the script)
    python bench/gpu_check.py --json r.json # also write the rows as JSON
    python bench/gpu_check.py --ptx         # no GPU needed: compile every kernel for sm_90
                                            # (checks the device code the simulator cannot;
                                            # needs NVVM, e.g. pip install nvidia-nvvm nvidia-cuda-nvrtc)

Speed targets of ngdfast.cuda (not yet measured on a GPU: see docs/cuda.md):

* ``fisher`` float32 at N=4096, P=8192 reaches at least 50% of cuBLAS SYRK
  throughput (``cupy.cublas.syrk``), counting N·P·(P+1) flops for both;
* the low-rank natural gradient runs within 2x of the same computation written
  in CuPy (Gram matrix by GEMM, ``cupy.linalg.cholesky``, two triangular solves,
  two GEMVs).

Every timing is the median of several runs after a warm-up run (which includes
JIT compilation), inputs already on the device, ``cuda.synchronize()`` around
each run.  Without CuPy the script still checks parity and times ngdfast.cuda,
against baselines written here in Numba (a one-thread-per-entry JᵀJ kernel; a
device-to-device copy for the bandwidth-bound kernels); the CuPy targets are
then reported as not checked.  Parity is checked against float64 NumPy on the
host (backward errors for the solves).

Exit status: 0 when all parity checks pass and the targets that could be
checked are met, 1 otherwise, 3 when ``--ptx`` finds no NVVM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------
# importing ngdfast.cuda (the compiled core is not needed for it)


def _import_package():
    """Import ``ngdfast``; fall back to its pure-Python modules when the core is not built."""
    try:
        import ngdfast  # noqa: F401

        return "installed package"
    except ImportError:
        pass
    sys.path.insert(0, str(REPO / "python"))
    for name in [m for m in sys.modules if m == "ngdfast" or m.startswith("ngdfast.")]:
        del sys.modules[name]
    try:
        import ngdfast  # noqa: F401

        return f"{REPO / 'python'}"
    except ImportError as exc:
        # ngdfast.cuda only needs ngdfast._validation and ngdfast._errors: expose the
        # package folder without running its __init__ (which imports the compiled core)
        pkg = types.ModuleType("ngdfast")
        pkg.__path__ = [str(REPO / "python" / "ngdfast")]
        sys.modules["ngdfast"] = pkg
        return f"{REPO / 'python'} without the compiled core ({exc})"


# ----------------------------------------------------------------------------------------
# --ptx: compile every kernel without a GPU


def _ptx_specs(K, nb):
    """(name, dispatcher, signature) for every kernel specialisation ngdfast.cuda launches."""
    specs = []
    for npdt, geo in ((np.float32, K.FLOAT32), (np.float64, K.FLOAT64)):
        dt = np.dtype(npdt)
        t = nb.float32 if npdt is np.float32 else nb.float64
        A2, C1, C2, C3, I1 = t[:, :], t[::1], t[:, ::1], t[:, :, ::1], nb.int32[::1]
        for walk_m in (True, False):
            for weighted in (True, False):
                specs.append(
                    (
                        f"syrk {dt} walk_m={walk_m} weighted={weighted}",
                        K.syrk_kernel(dt, geo.tile, geo.micro, geo.depth, walk_m, weighted),
                        (A2, C1, A2, C3, t, t, nb.int64, I1),
                    )
                )
        specs += [
            (f"sym_reduce {dt}", K.sym_reduce_kernel(dt), (C3, C2, t, t)),
            (f"nonfinite_1d {dt}", K.nonfinite_1d, (t[:], I1)),
            (f"nonfinite_2d {dt}", K.nonfinite_2d, (A2, I1)),
            (f"copy_1d int64->{dt}", K.copy_1d, (nb.int64[:], C1)),
            (f"copy_2d int64->{dt}", K.copy_2d, (nb.int64[:, :], C2)),
            (f"sym_prepare {dt}", K.sym_prepare, (A2, C2, t, C1, nb.boolean)),
            (f"potf2 {dt}", K.potf2_kernel(dt), (C2, nb.int64, nb.int64, I1)),
            (f"potf2_batched {dt}", K.potf2_batched_kernel(dt), (C2, I1, C2, I1)),
            (f"trsm_panel {dt}", K.trsm_panel_kernel(dt, geo.chol_block, geo.panel_rows), (C2, nb.int64, nb.int64, I1)),
            (f"rows_dot {dt}", K.rows_dot_kernel(dt, geo.threads), (A2, A2, C1, C2)),
            (f"woodbury_update {dt}", K.woodbury_update_kernel(dt, geo.threads), (A2, C1, C2, A2, C2, t)),
            (f"dot {dt}", K.dot_kernel(K.FLOAT64.threads), (t[:], t[:], nb.float64[::1])),
            (f"trace {dt}", K.trace_kernel(K.FLOAT64.threads), (A2, nb.float64[::1])),
        ]
        forward, backward = K.trsv_kernels(dt, geo.chol_block, geo.threads)
        specs += [(f"trsv_forward {dt}", forward, (C2, A2, I1)), (f"trsv_backward {dt}", backward, (C2, A2, I1))]
    return specs


def _ptxas():
    found = shutil.which("ptxas")
    try:
        import nvidia

        for root in nvidia.__path__:
            for cand in Path(root).glob("*/bin/ptxas"):
                found = str(cand)  # the pip one matches the pip NVVM's PTX version
    except ImportError:
        pass
    return found


def compile_ptx_only(cc: tuple, only: list[str]) -> int:
    """Compile the kernels to PTX for compute capability ``cc`` without a GPU; report registers."""
    _import_package()
    # Pretend a device is there: the import guard is skipped and device functions are
    # compiled for ``cc`` instead of asking the (absent) driver.
    platform = types.ModuleType("ngdfast.cuda._platform")
    platform.SIMULATOR = False
    platform.EXTRA = "pip install ngdfast[cuda]"
    sys.modules["ngdfast.cuda._platform"] = platform
    import numba
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda

    class _Target:
        compute_capability = cc

    dispatcher.get_current_device = lambda: _Target()
    from ngdfast.cuda import _kernels as K

    def probe(x):
        x[0] = 1

    try:
        cuda.compile_ptx(probe, (numba.float32[::1],), cc=cc)
    except Exception as exc:  # no NVVM/NVRTC: nothing to check here
        print(f"NVVM is not available, cannot compile PTX: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return 3
    ptxas = _ptxas()
    failed = 0
    print(f"{'kernel':44s} {'compile':>8s}  registers / spills (ptxas -arch=sm_{cc[0]}{cc[1]})")
    for name, kernel, sig in _ptx_specs(K, numba):
        if only and not any(name.startswith(o) for o in only):
            continue
        t0 = time.perf_counter()
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
        except Exception as exc:
            failed += 1
            print(f"{name:44s} FAILED: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
            continue
        note = ""
        if ptxas:
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / "k.ptx"
                src.write_text(ptx)
                r = subprocess.run(
                    [ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                    capture_output=True,
                    text=True,
                )
                info = [line.split("info    : ")[-1] for line in r.stderr.splitlines() if "Used" in line or "spill" in line]
                note = " | ".join(info) if r.returncode == 0 else f"ptxas failed: {r.stderr.strip()[:200]}"
        print(f"{name:44s} {time.perf_counter() - t0:7.1f}s  {note}")
    print("all kernels compiled" if not failed else f"{failed} kernel(s) failed to compile")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------
# the GPU run


class Report:
    def __init__(self):
        self.rows = []
        self.ok = True

    def parity(self, name, shape, dtype, err, tol):
        passed = bool(err <= tol)
        self.ok &= passed
        self.rows.append(
            dict(kind="parity", check=name, shape=shape, dtype=str(np.dtype(dtype)), error=float(err), tol=tol, passed=passed)
        )
        print(f"  parity  {name:34s} {shape:18s} {np.dtype(dtype)!s:8s} error {err:9.2e} (tol {tol:.0e})  {'ok' if passed else 'FAIL'}")

    def timing(self, name, shape, dtype, ours, base, base_name, flops=None, target=None):
        row = dict(kind="timing", check=name, shape=shape, dtype=str(np.dtype(dtype)), ours_ms=ours * 1e3)
        row["baseline"] = base_name
        row["baseline_ms"] = None if base is None else base * 1e3
        row["speed_vs_baseline"] = None if base is None else base / ours
        if flops:
            row["ours_tflops"] = flops / ours / 1e12
            row["baseline_tflops"] = None if base is None else flops / base / 1e12
        if target is not None and base is not None:
            row["target"] = target
            row["met"] = bool(base / ours >= target)
            self.ok &= row["met"]
        self.rows.append(row)
        b = "-" if base is None else f"{base * 1e3:9.2f}"
        r = "-" if base is None else f"{base / ours:5.2f}x"
        tf = f"  {flops / ours / 1e12:6.2f} TFLOP/s" if flops else ""
        tg = ""
        if target is not None:
            tg = "  target not checked" if base is None else f"  target >= {target:.2f}x: {'met' if row['met'] else 'MISSED'}"
        print(f"  time    {name:34s} {shape:18s} {np.dtype(dtype)!s:8s} {ours * 1e3:9.2f} ms  {base_name:26s} {b} ms  {r}{tf}{tg}")

    def table(self):
        print("\nsummary")
        print(f"{'check':36s} {'shape':18s} {'dtype':8s} {'ngdfast.cuda':>14s} {'baseline':>28s} {'ratio':>7s}  result")
        for r in self.rows:
            if r["kind"] == "parity":
                print(f"{r['check']:36s} {r['shape']:18s} {r['dtype']:8s} {'err ' + format(r['error'], '.1e'):>14s} "
                      f"{'tol ' + format(r['tol'], '.0e'):>28s} {'':>7s}  {'ok' if r['passed'] else 'FAIL'}")
            else:
                base = "-" if r["baseline_ms"] is None else f"{r['baseline']} {r['baseline_ms']:.2f} ms"
                ratio = "-" if r["speed_vs_baseline"] is None else f"{r['speed_vs_baseline']:.2f}x"
                res = ""
                if "met" in r:
                    res = f"target {r['target']:.2f}x {'met' if r['met'] else 'MISSED'}"
                print(f"{r['check']:36s} {r['shape']:18s} {r['dtype']:8s} {r['ours_ms']:11.2f} ms {base:>28s} {ratio:>7s}  {res}")


def _median_time(fn, sync, reps):
    fn()  # warm-up: JIT compilation, allocator
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _backward_error(A, x, g):
    """``||A x - g|| / (||A|| ||x|| + ||g||)`` in float64 (Frobenius norms)."""
    x = np.asarray(x, dtype=np.float64)
    r = A @ x - g
    return np.linalg.norm(r) / (np.linalg.norm(A) * np.linalg.norm(x) + np.linalg.norm(g))


def _baseline_kernels():
    """Baselines without CuPy: a one-thread-per-entry JᵀJ and a device copy."""
    global cuda  # the simulator swaps the module-level name ``cuda`` inside kernels
    from numba import cuda

    @cuda.jit
    def naive_gram(Jd, F):
        j, i = cuda.grid(2)
        if i < F.shape[0] and j <= i:
            s = Jd[0, i] * Jd[0, j]  # accumulate in the data dtype, as cuBLAS does
            for k in range(1, Jd.shape[0]):
                s += Jd[k, i] * Jd[k, j]
            F[i, j] = s
            F[j, i] = s

    @cuda.jit
    def device_copy(src, dst):
        i = cuda.grid(1)
        if i < src.shape[0]:
            dst[i] = src[i]

    return naive_gram, device_copy


def run_gpu(args) -> int:
    where = _import_package()
    import ngdfast.cuda as nc
    from ngdfast._errors import NotPositiveDefiniteError
    from numba import cuda

    if nc.SIMULATOR and not args.smoke:
        print("NUMBA_ENABLE_CUDASIM is set: this script is for a real GPU (or use --smoke)")
        return 2
    try:
        import cupy as cp
        import cupyx.scipy.linalg as cpla
    except Exception as exc:  # noqa: BLE001  (absent, or present without a working CUDA runtime)
        cp = cpla = None
        cupy_note = f"CuPy not usable ({type(exc).__name__}: {exc}); baselines are Numba kernels written here"
    else:
        cupy_note = f"CuPy {cp.__version__}"
    dev = cuda.get_current_device()
    import numba
    import numba_cuda

    name = getattr(dev, "name", None) or "simulator"
    print(f"device: {name.decode() if isinstance(name, bytes) else name}, compute capability "
          f"{dev.compute_capability}, {getattr(dev, 'MULTIPROCESSOR_COUNT', '?')} SMs")
    print(f"numba {numba.__version__}, numba-cuda {numba_cuda.__version__}, {cupy_note}; ngdfast from {where}")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"

    def size(full, quick, smoke):
        return {"full": full, "quick": quick, "smoke": smoke}[mode]

    reps = size(5, 3, 1)
    rng = np.random.default_rng(0)
    rep = Report()
    sync = cuda.synchronize

    def to_dev(a):
        a = np.ascontiguousarray(a)
        return cp.asarray(a) if cp is not None else cuda.to_device(a)

    def to_host(a):
        return cp.asnumpy(a) if cp is not None and isinstance(a, cp.ndarray) else a.copy_to_host()

    # ---------------- parity at real sizes ----------------
    print("\nparity (ngdfast.cuda vs float64 NumPy on the host)")
    for dt, tol_f, tol_s in ((np.float32, 2e-6, 2e-5), (np.float64, 1e-14, 1e-13)):
        n, p = size((2048, 1536), (512, 768), (12, 20))
        J = rng.standard_normal((n, p)).astype(dt)
        w = rng.random(n).astype(dt) + 0.1
        J64 = J.astype(np.float64)
        F_ref = (J64.T * (w / w.sum())) @ J64
        Fd = nc.fisher(to_dev(J), to_dev(w))
        F = to_host(Fd)
        rep.parity("fisher weighted", f"{n}x{p}", dt, np.linalg.norm(F - F_ref) / np.linalg.norm(F_ref), tol_f)
        rep.parity("fisher exactly symmetric", f"{p}x{p}", dt, float(np.abs(F - F.T).max()), 0.0)
        out = to_dev(F)
        nc.fisher(to_dev(J), out=out, decay=0.75)
        ema_ref = 0.75 * F.astype(np.float64) + 0.25 * (J64.T @ J64) / n
        rep.parity("fisher EMA into out", f"{n}x{p}", dt, np.linalg.norm(to_host(out) - ema_ref) / np.linalg.norm(ema_ref), tol_f)

        lam = 1e-3 * float(np.trace(F_ref)) / p
        G = rng.standard_normal((p, 3)).astype(dt)
        X = to_host(nc.damped_solve(to_dev(F), to_dev(G), lam))
        A = F.astype(np.float64) + lam * np.eye(p)
        rep.parity("damped_solve (backward error)", f"{p}x{p}, K=3", dt, _backward_error(A, X, G.astype(np.float64)), tol_s)

        n2, p2 = size((1024, 16384), (256, 4096), (10, 30))
        J2 = rng.standard_normal((n2, p2)).astype(dt)
        g2 = rng.standard_normal(p2).astype(dt)
        lam2 = 0.05
        x2 = to_host(nc.lowrank_solve(to_dev(J2), to_dev(g2), lam2))
        J2_64 = J2.astype(np.float64)
        r = (J2_64.T @ (J2_64 @ x2.astype(np.float64))) / n2 + lam2 * x2 - g2
        err = np.linalg.norm(r) / (np.linalg.norm(J2_64) ** 2 / n2 * np.linalg.norm(x2) + np.linalg.norm(g2))
        rep.parity("lowrank_solve (backward error)", f"{n2}x{p2}", dt, err, tol_s)

        x3 = to_host(nc.natural_gradient(to_dev(J), to_dev(G[:, 0]), lam, method="dense"))
        A3 = (J64.T @ J64) / n + lam * np.eye(p)
        rep.parity("natural_gradient dense (b.e.)", f"{n}x{p}", dt, _backward_error(A3, x3, G[:, 0].astype(np.float64)), tol_s)

        beta = nc.kl_step_size(to_dev(G[:, 0]), to_dev(x3), 1e-3)
        beta_ref = math.sqrt(2e-3 / float(G[:, 0].astype(np.float64) @ x3.astype(np.float64)))
        rep.parity("kl_step_size", f"{p}", dt, abs(beta - beta_ref) / beta_ref, 1e-12)

        for n_in, n_out in size(((100, 60), (1100, 700)), ((100, 60), (400, 300)), ((5, 4), (7, 6))):
            a = rng.standard_normal((4 * n_in, n_in)).astype(dt)
            d = rng.standard_normal((4 * n_in, n_out)).astype(dt)
            Af = (a.T @ a) / len(a)
            Sf = (d.T @ d) / len(d)
            grad = rng.standard_normal((n_out, n_in)).astype(dt)
            X = to_host(nc.kfac_precondition(to_dev(grad), to_dev(Af), to_dev(Sf), 1e-2))
            pi = math.sqrt((np.trace(Af.astype(np.float64)) / n_in) / (np.trace(Sf.astype(np.float64)) / n_out))
            At = Af.astype(np.float64) + pi * 0.1 * np.eye(n_in)
            St = Sf.astype(np.float64) + 0.1 / pi * np.eye(n_out)
            res = St @ X.astype(np.float64) @ At - grad
            err = np.linalg.norm(res) / (np.linalg.norm(St) * np.linalg.norm(X) * np.linalg.norm(At) + np.linalg.norm(grad))
            rep.parity("kfac_precondition (b.e.)", f"out={n_out},in={n_in}", dt, err, tol_s)

        pd = size(2000, 300, 12)
        Dg = np.diag(np.where(np.arange(pd) == pd // 2, -1.0, 1.0 + np.arange(pd))).astype(dt)
        try:
            nc.damped_solve(to_dev(Dg), to_dev(np.ones(pd, dt)), 0.0)
            pivot = None
        except NotPositiveDefiniteError as exc:
            pivot = exc.pivot
        rep.parity("NotPositiveDefiniteError pivot", f"{pd}x{pd}", dt, 0.0 if pivot == pd // 2 + 1 else 1.0, 0.0)

    # ---------------- timings ----------------
    print("\ntimings (median of runs after a warm-up; inputs on the device)")

    naive_gram, device_copy = _baseline_kernels()

    def syrk_baseline(Jx, dt):
        if cp is not None:
            from cupy import cublas

            return (lambda: cublas.syrk("T", Jx, lower=True)), "cuBLAS SYRK (cupy.cublas)"
        Fn = cuda.device_array((Jx.shape[1], Jx.shape[1]), dt)
        grid = ((Jx.shape[1] + 15) // 16, (Jx.shape[1] + 15) // 16)
        return (lambda: naive_gram[grid, (16, 16)](Jx, Fn)), "naive Numba JᵀJ"

    for dt, (n, p), target in (
        (np.float32, size((4096, 8192), (1024, 2048), (12, 20)), 0.5),
        (np.float64, size((2048, 4096), (1024, 1024), (12, 20)), None),
    ):
        Jx = to_dev(rng.standard_normal((n, p)).astype(dt))
        flops = n * p * (p + 1)
        ours = _median_time(lambda: nc.fisher(Jx, check_finite=False), sync, reps)
        fn, name = syrk_baseline(Jx, dt)
        base = _median_time(fn, sync, reps)
        # the target is relative to cuBLAS: not checked against the naive baseline
        rep.timing("fisher", f"N={n},P={p}", dt, ours, base, name, flops, target if cp is not None else None)
        if cp is not None:
            gemm = _median_time(lambda: Jx.T @ Jx, sync, reps)
            rep.timing("fisher vs GEMM", f"N={n},P={p}", dt, ours, gemm, "cuBLAS GEMM J.T @ J", flops)

    for dt in (np.float32, np.float64):
        p = size(4096, 1024, 12)
        M = rng.standard_normal((2 * p, p)).astype(dt)
        Fh = (M.T @ M) / (2 * p)
        Fx = to_dev(Fh)
        gx = to_dev(rng.standard_normal(p).astype(dt))
        ours = _median_time(lambda: nc.damped_solve(Fx, gx, 1e-3, check_finite=False), sync, reps)
        base, name = None, "-"
        if cp is not None:
            eye = cp.eye(p, dtype=dt)

            def cupy_solve():
                Lc = cp.linalg.cholesky(Fx + 1e-3 * eye)
                y = cpla.solve_triangular(Lc, gx, lower=True)
                return cpla.solve_triangular(Lc.T, y, lower=False)

            base, name = _median_time(cupy_solve, sync, reps), "CuPy potrf + 2 trsv"
        rep.timing("damped_solve", f"P={p}", dt, ours, base, name, p**3 / 3)

    for (n, p), target in (
        (size((1024, 65536), (256, 16384), (10, 30)), 0.5),
        (size((4096, 32768), (512, 8192), (12, 20)), None),
    ):
        dt = np.float32
        Jx = to_dev(rng.standard_normal((n, p)).astype(dt))
        gx = to_dev(rng.standard_normal(p).astype(dt))
        lam = 1e-2
        ours = _median_time(lambda: nc.natural_gradient(Jx, gx, lam, method="lowrank", check_finite=False), sync, reps)
        base, name = None, "-"
        if cp is not None:
            s = cp.full(n, 1.0 / math.sqrt(n), dtype=dt)
            eye = cp.eye(n, dtype=dt)

            def cupy_lowrank():
                Js = Jx * s[:, None]
                Lc = cp.linalg.cholesky(Js @ Js.T + lam * eye)
                u = cpla.solve_triangular(Lc, Js @ gx, lower=True)
                u = cpla.solve_triangular(Lc.T, u, lower=False)
                return (gx - Js.T @ u) / lam

            base, name = _median_time(cupy_lowrank, sync, reps), "same computation in CuPy"
        rep.timing("natural_gradient lowrank", f"N={n},P={p}", dt, ours, base, name, n * n * p, target)

    for dt in (np.float32,):
        for n_in, n_out in size(((100, 60), (2048, 1024)), ((100, 60), (512, 256)), ((5, 4), (7, 6))):
            a = rng.standard_normal((2 * n_in, n_in)).astype(dt)
            d = rng.standard_normal((2 * n_in, n_out)).astype(dt)
            Ax = to_dev((a.T @ a) / len(a))
            Sx = to_dev((d.T @ d) / len(d))
            gr = to_dev(rng.standard_normal((n_out, n_in)).astype(dt))
            ours = _median_time(lambda: nc.kfac_precondition(gr, Ax, Sx, 1e-2), sync, reps)
            base, name = None, "-"
            if cp is not None:
                ea, es = cp.eye(n_in, dtype=dt), cp.eye(n_out, dtype=dt)

                def cupy_kfac():
                    La = cp.linalg.cholesky(Ax + 0.1 * ea)
                    Ls = cp.linalg.cholesky(Sx + 0.1 * es)
                    Y = cpla.solve_triangular(Ls.T, cpla.solve_triangular(Ls, gr, lower=True), lower=False)
                    Z = cpla.solve_triangular(La.T, cpla.solve_triangular(La, Y.T, lower=True), lower=False)
                    return Z.T

                base, name = _median_time(cupy_kfac, sync, reps), "CuPy potrf + trsm"
            rep.timing("kfac_precondition", f"out={n_out},in={n_in}", dt, ours, base, name)

    p = size(20_000_000, 2_000_000, 100)
    gx = to_dev(rng.standard_normal(p).astype(np.float32))
    nx = to_dev(rng.standard_normal(p).astype(np.float32))
    ours = _median_time(lambda: nc.kl_step_size(gx, nx, 1e-3), sync, reps)
    if cp is not None:
        base, name = _median_time(lambda: float(cp.dot(gx, nx)), sync, reps), "cupy.dot + float()"
    else:
        dst = cuda.device_array(p, np.float32)
        base = _median_time(lambda: device_copy[(p + 255) // 256, 256](gx, dst), sync, reps)
        name = "device copy (bandwidth)"
    rep.timing("kl_step_size", f"P={p}", np.float32, ours, base, name)

    rep.table()
    if cp is None:
        print("\nCuPy is not installed: the cuBLAS/CuPy targets were not checked (pip install cupy-cuda12x)")
    if args.json:
        Path(args.json).write_text(json.dumps(rep.rows, indent=2))
        print(f"\nrows written to {args.json}")
    print("\nall parity checks passed and the checked targets are met" if rep.ok else "\nSOME CHECKS FAILED")
    return 0 if rep.ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, allowed in the simulator")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--ptx", action="store_true", help="compile every kernel to PTX; no GPU needed")
    parser.add_argument("--cc", default="9.0", help="compute capability for --ptx (default 9.0, H100)")
    parser.add_argument("--only", default="", help="comma-separated kernel name prefixes for --ptx")
    args = parser.parse_args(argv)
    if args.ptx:
        os.environ.pop("NUMBA_ENABLE_CUDASIM", None)  # must happen before numba is imported
        major, minor = (int(x) for x in args.cc.split("."))
        return compile_ptx_only((major, minor), [o for o in args.only.split(",") if o])
    t0 = time.perf_counter()
    code = run_gpu(args)
    print(f"total time {time.perf_counter() - t0:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
