"""Shared fixtures: random generators, per-dtype tolerances, well-conditioned SPD matrices."""

import os

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
