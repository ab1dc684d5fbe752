"""Shared fixtures: random generators, per-dtype tolerances, well-conditioned SPD matrices."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# GPU kernels are tested on the CPU simulator; numba reads this when it is first imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np
import pytest
from hypothesis import settings

import ngdfast
import ngdfast.reference

# A shared, busy CI machine makes per-example deadlines flaky; examples stay small instead.
settings.register_profile("ngdfast", deadline=None, max_examples=40)
settings.register_profile("thorough", deadline=None, max_examples=400)
settings.load_profile(os.environ.get("NGDFAST_HYPOTHESIS_PROFILE", "ngdfast"))

#: Modules that implement the kernels with identical semantics (ngdfast.cuda joins when present).
KERNEL_MODULES = [ngdfast, ngdfast.reference]

DTYPES = [np.float32, np.float64]

#: Norm-wise relative tolerance per dtype for well-conditioned problems (condition number 1);
#: tests multiply it by the condition number of what they solve.
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture(params=KERNEL_MODULES, ids=lambda m: m.__name__)
def kernels(request):
    """Each kernel module in turn."""
    return request.param


def assert_close(actual, desired, *, cond=1.0, rtol=None):
    """Norm-wise comparison: ``‖actual − desired‖ <= rtol · cond · ‖desired‖``.

    ``rtol`` defaults to :data:`RTOL` for the dtype of ``actual`` (the wider of the two
    dtypes when they differ); shapes must match exactly.
    """
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    if rtol is None:
        rtol = max(RTOL.get(actual.dtype, 1e-12), RTOL.get(desired.dtype, 1e-12))
    a = actual.astype(np.float64)
    d = desired.astype(np.float64)
    err = np.linalg.norm(a - d)
    scale = np.linalg.norm(d)
    bound = rtol * cond * max(scale, np.finfo(np.float64).tiny)
    assert err <= bound, f"relative error {err / max(scale, 1e-300):.3e} > {rtol * cond:.3e} (cond {cond:.3g})"


def scores(rng, shape, dtype):
    """Random score rows J of ``shape`` in ``dtype``."""
    return rng.standard_normal(shape).astype(dtype)


def weights_for(rng, n, weighted):
    """None, or N weights in [0, 3) with about a fifth of them zero (such rows must simply drop)."""
    if not weighted:
        return None
    w = rng.uniform(0.0, 3.0, n)
    w[rng.uniform(size=n) < 0.2] = 0.0
    w[0] = 1.0
    return w


def assert_fisher_ema(fisher, J, w, old, order, decay):
    """``fisher(J, w, out=, decay=)`` of a module updates ``out`` (``old`` in ``order``) in
    place as the reference does, keeps its layout and leaves it exactly symmetric."""
    out = np.array(old, order=order)
    expected = ngdfast.reference.fisher(J, w, out=old.copy(), decay=decay)
    assert fisher(J, w, out=out, decay=decay) is out
    assert out.flags.f_contiguous == (order == "F")
    assert_close(out, expected)
    assert np.array_equal(out, out.T)


def assert_decay_zero_does_not_read_out(fisher, rng, n, p):
    """With decay 0 a module's ``fisher(J, out=)`` overwrites ``out`` (here NaN) unread."""
    J = scores(rng, (n, p), np.float64)
    out = np.full((p, p), np.nan)
    fisher(J, out=out)
    assert_close(out, ngdfast.reference.fisher(J))


#: (J dtype, weights dtype, result dtype) of ``fisher``: integers and bools compute in float64,
#: float16 in float32, weights take the data dtype.
FISHER_DTYPE_RULES = [
    (np.int64, None, np.float64),
    (np.int16, np.float32, np.float64),
    (np.int32, np.float32, np.float64),
    (np.bool_, None, np.float64),
    (np.uint8, None, np.float64),
    (np.float16, None, np.float32),
    (np.float32, np.float64, np.float32),
    (np.float64, np.int32, np.float64),
]


def assert_kfac_zero_trace_factor(kfac_precondition, rng):
    """A zero K-FAC factor (trace 0: π = 1) is damped, not divided by, as in the reference."""
    grad = scores(rng, (3, 4), np.float64)
    S = random_spd(rng, 3)
    X = kfac_precondition(grad, np.zeros((4, 4)), S, 0.04)
    assert_close(X, ngdfast.reference.kfac_precondition(grad, np.zeros((4, 4)), S, 0.04), cond=100)


def woodbury_problems(max_size, min_log_damping):
    """Hypothesis strategies for :func:`assert_woodbury_equals_dense`'s problem (N, P up to
    ``max_size``, λ from 10**min_log_damping to 10)."""
    from hypothesis import strategies as st

    return dict(
        n=st.integers(1, max_size), p=st.integers(1, max_size), k=st.integers(1, 3),
        log_damping=st.floats(min_log_damping, 1), weighted=st.booleans(), seed=st.integers(0, 2**32 - 1),
    )


def assert_woodbury_equals_dense(module, n, p, k, log_damping, weighted, seed, dtype=np.float64):
    """In ``module``, the sample-space (Woodbury) solve and the dense one agree, for
    ``lowrank_solve`` against ``damped_solve`` and for both methods of ``natural_gradient``."""
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((n, p)).astype(dtype)
    g = rng.standard_normal((p, k)).astype(dtype)
    w = rng.uniform(0.01, 1.0, n) if weighted else None
    damping = 10.0**log_damping
    F = module.fisher(J, w)
    cond = damped_condition(F, damping)
    assert_close(module.lowrank_solve(J, g, damping, w), module.damped_solve(F, g, damping), cond=cond)
    assert_close(
        module.natural_gradient(J, g, damping, w, method="dense"),
        module.natural_gradient(J, g, damping, w, method="lowrank"),
        cond=cond,
    )


#: The folder holding the ngdfast this process imports: a fresh interpreter imports the same one.
PACKAGE_PARENT = str(Path(ngdfast.__file__).resolve().parents[1])


def run_python(source, env=None):
    """``source`` in a fresh interpreter that imports this process's ngdfast; ``env`` is the
    whole environment (default: this process's)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, timeout=300)


def try_import(module):
    """Source that imports ``module`` and prints "ImportError: <message>" or "imported", then
    shows that ``import ngdfast`` still works afterwards ("fisher [[1.0, 2.0], [2.0, 4.0]]")."""
    return textwrap.dedent(
        f"""
        try:
            import {module}
        except ImportError as exc:
            print("ImportError:", exc)
        else:
            print("imported")
        import ngdfast  # the package itself is still usable afterwards
        print("fisher", ngdfast.fisher([[1.0, 2.0]]).tolist())
        """
    )


def damped_condition(F, damping):
    """Condition number of F + λI for symmetric positive semi-definite F (2-norm).

    For large F with λ > 0 an upper bound instead (eigendecompositions are slow on a shared
    CI machine): λ_max <= ‖F‖_∞ and λ_min >= 0 give cond <= (‖F‖_∞ + λ) / λ.
    """
    F = np.asarray(F, dtype=np.float64)
    if F.shape[0] > 300 and damping > 0:
        return float((np.abs(F).sum(axis=1).max() + damping) / damping)
    eig = np.linalg.eigvalsh(F)
    return float((max(eig[-1], 0.0) + damping) / (max(eig[0], 0.0) + damping))


def random_spd(rng, p, dtype=np.float64, cond=10.0):
    """Exactly symmetric positive definite (P, P) matrix with eigenvalues spread over [1, cond]."""
    q, _ = np.linalg.qr(rng.standard_normal((p, p)))
    eig = np.geomspace(1.0, cond, p) if p > 1 else np.ones(1)
    m = (q * eig) @ q.T
    m = np.tril(m) + np.tril(m, -1).T
    return m.astype(dtype)


@pytest.fixture
def spd(rng):
    """Factory ``spd(p, dtype=float64, cond=10)`` of well-conditioned SPD matrices."""

    def make(p, dtype=np.float64, cond=10.0):
        return random_spd(rng, p, dtype, cond)

    return make


def layout(a, kind, rng=None):
    """The same values as ``a`` in a different memory layout.

    kind: "C", "F", "strided" (every other row and every third column of a bigger array),
    "negative" (negative strides in both axes), "transposed" (a ``.T`` view).
    """
    a = np.asarray(a)
    if kind == "C":
        return np.ascontiguousarray(a)
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "strided":
        shape = tuple(s * k for s, k in zip(a.shape, (2, 3, 2)))
        big = np.full(shape, np.nan, dtype=a.dtype)
        view = big[tuple(slice(None, None, k) for k in (2, 3, 2)[: a.ndim])]
        view[...] = a
        return view
    if kind == "negative":
        big = np.ascontiguousarray(a[tuple(slice(None, None, -1) for _ in range(a.ndim))])
        return big[tuple(slice(None, None, -1) for _ in range(a.ndim))]
    if kind == "transposed":
        return np.ascontiguousarray(a.T).T
    raise ValueError(kind)


LAYOUTS = ["C", "F", "strided", "negative", "transposed"]
