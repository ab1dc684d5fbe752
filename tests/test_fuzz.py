"""Fuzz target over the compiled entry points (issue 9): hypothesis drives odd inputs.

Every compiled kernel is called beside ``ngdfast.reference`` with the same arguments:
shapes from 1 to large-and-thin, memory layouts (C, Fortran, strided, negative strides,
transposed, zero-stride broadcasts, unaligned byte offsets), dtypes (float16/32/64,
integers, bool, complex, object), values (NaN, ±Inf, subnormals, 1e±300, huge or
tiny weights) and extreme damping / epsilon.  The property:

* either both return, with finite results that agree within a per-dtype tolerance
  scaled by the condition number of what is solved,
* or both raise one of the documented exceptions (``ValueError`` and its subclass
  ``NumericOverflowError``, ``TypeError``, ``NotPositiveDefiniteError``) of the same type;
* a rejected call leaves ``out=`` untouched;
* nothing crashes: a segfault or abort kills pytest, which fails the CI run.

Documented leeway (``ngdfast.reference``'s module notes): where the answer is
numerically singular (cond · eps_dtype > 1e-3) or it, or a solve's intermediate (up to
cond times larger), is within a factor 1e8 of the largest float, whether a pivot or an
intermediate fails depends on rounding and order of summation, so there one module may
raise ``NotPositiveDefiniteError`` or ``NumericOverflowError`` while the other returns.

The curvature objects and ``NaturalGradient.step`` are fuzzed for their own contract:
success leaves a finite state, a rejection (documented exception) leaves it unchanged.

Budget: the default profile (``NGDFAST_HYPOTHESIS_PROFILE`` unset: 40 examples per
test) runs in well under a minute; ``NGDFAST_FUZZ_EXAMPLES=5000`` (or the ``thorough``
profile) runs longer, see docs/contributing.md (Build and test).
"""

import os
import pickle
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ngdfast
from ngdfast import (
    DenseFisher,
    DiagonalFisher,
    KFACFisher,
    LowRankFisher,
    NaturalGradient,
    NotPositiveDefiniteError,
    NumericOverflowError,
)
from ngdfast import _policy
from ngdfast import reference as ref

DOCUMENTED = (ValueError, TypeError, NotPositiveDefiniteError)
_EXAMPLES = int(os.environ.get("NGDFAST_FUZZ_EXAMPLES", "0"))
fuzz_settings = settings(
    max_examples=_EXAMPLES or settings().max_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FLOATS = [np.float64, np.float32]
ODD_DTYPES = [np.float16, np.int32, np.int64, np.uint8, np.bool_, np.complex128, object]


# --------------------------------------------------------------------------------------------
# input generation


def _compute_dtype(dtype):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return np.dtype(np.float64) if dt.itemsize == 8 else np.dtype(np.float32)
    return np.dtype(np.float64)


def _scales(dtype):
    """Magnitudes well inside, and well outside, the range where squares and sums overflow
    or underflow (never in the band where it depends on summation order)."""
    if _compute_dtype(dtype) == np.float32:
        return [1.0, 1.0, 1.0, 1e-3, 1e6, 1e-30, 1e30]
    return [1.0, 1.0, 1.0, 1e-3, 1e100, 1e-300, 1e300]


@st.composite
def arrays(draw, shape, dtype, *, special=True, positive=False):
    """A random array of ``shape`` and ``dtype`` in a random memory layout."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    base = rng.standard_normal(shape)
    if positive:
        base = np.abs(base) + 0.1
    if dt.kind == "f":
        scale = draw(st.sampled_from(_scales(dt)))
        with np.errstate(all="ignore"):
            a = (base * scale).astype(dt)
        if special and a.size and draw(st.integers(0, 5)) == 0:
            value = draw(st.sampled_from([np.nan, np.inf, -np.inf, 5e-324, 1e-45, 0.0]))
            with np.errstate(all="ignore"):
                a.flat[draw(st.integers(0, a.size - 1))] = value
    elif dt.kind == "b":
        a = base > 0
    elif dt.kind in "iu":
        a = np.abs(np.round(base * 3)).astype(dt) if dt.kind == "u" else np.round(base * 3).astype(dt)
    elif dt.kind == "c":
        a = (base + 1j * base).astype(dt)
    else:
        a = base.astype(object)
    return draw(layouts(a))


@st.composite
def layouts(draw, a):
    kind = draw(st.sampled_from(["C", "C", "F", "strided", "negative", "transposed", "broadcast", "unaligned"]))
    if kind == "C" or a.dtype == object:
        return np.ascontiguousarray(a)
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "strided":
        big = np.zeros(tuple(2 * s for s in a.shape), dtype=a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if kind == "negative":
        sl = tuple(slice(None, None, -1) for _ in a.shape)
        return np.ascontiguousarray(a[sl])[sl]
    if kind == "transposed":
        return np.ascontiguousarray(a.T).T
    if kind == "broadcast":
        # a zero-stride view: every row the same (read-only, as np.broadcast_to makes it)
        return np.broadcast_to(a[:1], a.shape) if a.ndim and a.shape[0] else a
    buf = np.zeros(a.nbytes + 1, dtype=np.uint8)  # unaligned: a one-byte offset
    view = buf[1:].view(a.dtype).reshape(a.shape)
    view[...] = a
    return view


shapes_np = st.one_of(
    st.tuples(st.sampled_from([1, 2, 3, 7, 33]), st.sampled_from([1, 2, 5, 17, 64])),
    st.sampled_from([(1, 1000), (400, 2), (0, 3), (3, 0)]),  # large thin, and empty
)
data_dtypes = st.sampled_from(FLOATS * 4 + ODD_DTYPES)
dampings = st.sampled_from([0.0, 1e-300, 1e-8, 1e-2, 1.0, 1e8, 1e300, -1.0, np.nan, np.inf])


@st.composite
def weights_for(draw, n):
    kind = draw(st.sampled_from(["none", "none", "uniform", "random", "huge", "tiny", "zero-some", "bad"]))
    if kind == "none":
        return None
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.random(n) + 0.1
    if kind == "uniform":
        return np.ones(n)
    if kind == "huge":
        return w * 1e308
    if kind == "tiny":
        return w * 1e-310
    if kind == "zero-some":
        w[rng.random(n) < 0.5] = 0.0
        return w
    if kind == "bad" and n:
        w[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-1.0, np.nan, np.inf]))
    return w


# --------------------------------------------------------------------------------------------
# comparison


def _outcome(call):
    """``("ok", result)`` or ``("err", exception)``; undocumented exceptions propagate."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stray RuntimeWarning is a defect too
        try:
            return "ok", call()
        except DOCUMENTED as exc:
            return "err", exc


def _eps(dtype):
    return float(np.finfo(_compute_dtype(dtype)).eps)


def _near_overflow(x, dtype, cond=1.0):
    """Whether |x|, or an intermediate up to cond·|x| (a solve's), is within 1e8 of overflow."""
    big = float(np.finfo(_compute_dtype(dtype)).max) * 1e-8 / max(1.0, min(cond, 1e300))
    with np.errstate(all="ignore"):
        return not np.all(np.abs(np.asarray(x, dtype=np.float64)) < big)


def _cond(F, damping):
    """Condition number of F + λI (float64, inf when not computable)."""
    with np.errstate(all="ignore"):
        F = np.asarray(F, dtype=np.float64)
        if not np.all(np.isfinite(F)) or F.shape[0] > 400:
            return np.inf
        try:
            eig = np.linalg.eigvalsh(F + damping * np.eye(F.shape[0]))
        except np.linalg.LinAlgError:
            return np.inf
        lo, hi = eig[0], eig[-1]
        return np.inf if not lo > 0 else float(hi / lo)


def _check(mine, spec, *, dtype, cond=1.0, exact_types=True):
    """The fuzz property for one call in both modules."""
    (km, vm), (ks, vs) = mine, spec
    singular = not cond * _eps(dtype) < 1e-3
    if km == "err" and ks == "err":
        if type(vm) is not type(vs) and not (singular or exact_types is False):
            raise AssertionError(f"compiled raised {vm!r}, reference {vs!r}")
        return
    if km != ks:
        got, err = (vs, vm) if km == "err" else (vm, vs)
        lenient = isinstance(err, (NotPositiveDefiniteError, NumericOverflowError))
        if lenient and (singular or _near_overflow(got, dtype, cond)):
            return
        raise AssertionError(f"compiled: {km} {vm!r:.300}; reference: {ks} {vs!r:.300} (cond {cond:.3g})")
    a, b = np.asarray(vm), np.asarray(vs)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    if a.dtype.kind != "f":
        return
    assert np.all(np.isfinite(a)) == np.all(np.isfinite(b)), "finite in one module only"
    if not np.all(np.isfinite(b)) or singular:
        return
    # norms of values scaled to max 1 (no overflow in the norms themselves)
    scale = float(np.max(np.abs(b.astype(np.float64)), initial=0.0))
    if scale == 0.0:
        assert float(np.max(np.abs(a.astype(np.float64)), initial=0.0)) <= 1e3 * float(np.finfo(a.dtype).tiny)
        return
    a64, b64 = a.astype(np.float64) / scale, b.astype(np.float64) / scale
    tiny = float(np.finfo(a.dtype).tiny) * max(a.size, 1) / scale
    err = np.linalg.norm(a64 - b64)
    bound = 300 * _eps(dtype) * cond * np.linalg.norm(b64) + 1e3 * tiny
    assert err <= bound, f"relative error {err / np.linalg.norm(b64):.3g} (cond {cond:.3g})"


def _both(call, **kw):
    """Run ``call(module)`` in the compiled module and the reference; check the property."""
    mine = _outcome(lambda: call(ngdfast))
    spec = _outcome(lambda: call(ref))
    _check(mine, spec, **kw)
    return mine, spec


def _fisher_of(J, w):
    """The reference Fisher of J (float64) for condition numbers, or None."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ref.fisher(np.asarray(J, dtype=np.float64), w, check_finite=False)
        except DOCUMENTED:
            return None


# --------------------------------------------------------------------------------------------
# the kernels


@fuzz_settings
@given(data=st.data(), shape=shapes_np, dtype=data_dtypes, check_finite=st.booleans())
def test_fuzz_fisher(data, shape, dtype, check_finite):
    J = data.draw(arrays(shape, dtype))
    w = data.draw(weights_for(shape[0]))
    use_out = data.draw(st.booleans())
    decay = data.draw(st.sampled_from([0.0, 0.0, 0.5, 0.99, 1.0, -0.5, 2.0])) if use_out else 0.0
    out0 = None
    if use_out and shape[1] > 0:
        out0 = np.asfortranarray(np.eye(shape[1])) if data.draw(st.booleans()) else np.eye(shape[1])
        out0 = out0.astype(_compute_dtype(dtype))
    outs = {}

    def call(m):
        out = None if out0 is None else out0.copy(order="A")
        outs[m.__name__] = out
        return m.fisher(J, w, out=out, decay=decay, check_finite=check_finite)

    mine, spec = _both(call, dtype=dtype)
    if out0 is not None:
        for (kind, _), name in ((mine, "ngdfast"), (spec, "ngdfast.reference")):
            if kind == "err":
                assert outs[name].tobytes(order="A") == out0.tobytes(order="A"), "rejected call wrote out"


@st.composite
def spd_matrices(draw, p, dtype):
    """Symmetric matrices: well-conditioned, singular, indefinite, scaled, with NaN above."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["spd", "spd", "singular", "indefinite", "any"]))
    if kind == "any":
        return draw(arrays((p, p), dtype))
    q, _ = np.linalg.qr(rng.standard_normal((p, p)))
    eig = np.geomspace(1.0, 100.0, p)
    if kind == "singular":
        eig[: p // 2 + 1] = 0.0
    if kind == "indefinite":
        eig[0] = -1.0
    F = (q * eig) @ q.T
    F = np.tril(F) + np.tril(F, -1).T
    scale = draw(st.sampled_from(_scales(dtype)))
    with np.errstate(all="ignore"):
        F = (F * scale).astype(dtype)
    if p > 1 and draw(st.integers(0, 4)) == 0:
        F[0, p - 1] = np.nan  # the upper triangle is never read
    return draw(layouts(F))


@fuzz_settings
@given(data=st.data(), p=st.sampled_from([1, 2, 5, 30]), k=st.sampled_from([None, 1, 3]),
       dtype=st.sampled_from(FLOATS * 3 + ODD_DTYPES), damping=dampings, check_finite=st.booleans())
def test_fuzz_damped_solve(data, p, k, dtype, damping, check_finite):
    F = data.draw(spd_matrices(p, dtype) if np.dtype(dtype).kind == "f" else arrays((p, p), dtype))
    g = data.draw(arrays((p,) if k is None else (p, k), data.draw(st.sampled_from(FLOATS + [np.int64]))))
    lower = np.tril(np.asarray(F, dtype=np.float64)) if np.dtype(dtype).kind in "fiub" else None
    cond = _cond(lower + np.tril(lower, -1).T, damping) if lower is not None and np.isfinite(damping) else 1.0
    dt = np.result_type(_compute_dtype(F.dtype), _compute_dtype(g.dtype))
    _both(lambda m: m.damped_solve(F, g, damping, check_finite=check_finite), dtype=dt, cond=cond)


def _score_solve_case(data, shape, dtype):
    J = data.draw(arrays(shape, dtype))
    g_dtype = data.draw(st.sampled_from(FLOATS + [np.int32]))
    g = data.draw(arrays((shape[1],) if data.draw(st.booleans()) else (shape[1], 2), g_dtype))
    w = data.draw(weights_for(shape[0]))
    return J, g, w


def _solve_cond(J, w, damping):
    """cond(F + λI), or for the sample-space (Woodbury) solve the larger cond(K + λI) =
    (‖F‖ + λ) / λ: its result is the difference g - J_wᵀK⁻¹J_w g divided by λ."""
    if np.asarray(J).dtype.kind not in "fiub" or not np.isfinite(damping) or 0 in np.shape(J):
        return 1.0
    if w is not None and not (np.all(np.isfinite(w)) and np.all(w >= 0) and np.any(w > 0)):
        return 1.0
    F = _fisher_of(J, w)
    if F is None:
        return 1.0
    with np.errstate(all="ignore"):
        sample = (np.abs(F).sum(axis=1).max() + damping) / damping if damping > 0 else np.inf
    return max(_cond(F, damping), float(sample))


@fuzz_settings
@given(data=st.data(), shape=shapes_np, dtype=data_dtypes, damping=dampings, check_finite=st.booleans())
def test_fuzz_lowrank_solve(data, shape, dtype, damping, check_finite):
    J, g, w = _score_solve_case(data, shape, dtype)
    cond = _solve_cond(J, w, damping)
    _both(lambda m: m.lowrank_solve(J, g, damping, w, check_finite=check_finite),
          dtype=np.result_type(_compute_dtype(J.dtype), g.dtype), cond=cond)


@fuzz_settings
@given(data=st.data(), shape=shapes_np, dtype=data_dtypes, damping=dampings, check_finite=st.booleans(),
       method=st.sampled_from(["auto", "dense", "lowrank", "cholesky"]))
def test_fuzz_natural_gradient(data, shape, dtype, damping, check_finite, method):
    if shape[1] > 600 and method != "cholesky" and (method == "dense" or not damping > 0):
        method, damping = "lowrank", 1e-2  # a dense 1000 x 1000 solve twice is too slow for the budget
    J, g, w = _score_solve_case(data, shape, dtype)
    cond = _solve_cond(J, w, damping)
    _both(lambda m: m.natural_gradient(J, g, damping, w, method=method, check_finite=check_finite),
          dtype=np.result_type(_compute_dtype(J.dtype), g.dtype), cond=cond)


@fuzz_settings
@given(data=st.data(), p=st.sampled_from([1, 3, 50]), dtype=data_dtypes,
       epsilon=st.sampled_from([0.0, 1e-300, 1e-3, 1.0, 1e300, -1.0, np.nan]),
       max_step=st.sampled_from([None, None, 1.0, 1e-300, np.inf, 0.0, np.nan]))
def test_fuzz_kl_step_size(data, p, dtype, epsilon, max_step):
    g = data.draw(arrays((p,), dtype))
    n = data.draw(arrays((p,), dtype, positive=True)) if data.draw(st.booleans()) else g
    _both(lambda m: m.kl_step_size(g, n, epsilon, max_step=max_step), dtype=np.float64)


@fuzz_settings
@given(data=st.data(), n_out=st.sampled_from([1, 2, 7]), n_in=st.sampled_from([1, 3, 20]),
       dtype=st.sampled_from(FLOATS * 3 + ODD_DTYPES), damping=dampings, factored=st.booleans())
def test_fuzz_kfac_precondition(data, n_out, n_in, dtype, damping, factored):
    grad = data.draw(arrays((n_out, n_in), dtype))
    A = data.draw(spd_matrices(n_in, dtype) if np.dtype(dtype).kind == "f" else arrays((n_in, n_in), dtype))
    S = data.draw(spd_matrices(n_out, dtype) if np.dtype(dtype).kind == "f" else arrays((n_out, n_out), dtype))
    cond = 1.0
    if np.dtype(dtype).kind in "fiub" and np.isfinite(damping) and damping >= 0:
        la, ls = (np.tril(np.asarray(X, dtype=np.float64)) for X in (A, S))
        la, ls = la + np.tril(la, -1).T, ls + np.tril(ls, -1).T
        if np.all(np.isfinite(la)) and np.all(np.isfinite(ls)):
            da, ds = _policy.kfac_damping(float(np.trace(la)), n_in, float(np.trace(ls)), n_out, damping, factored)
            cond = _cond(la, da) * _cond(ls, ds)
    _both(lambda m: m.kfac_precondition(grad, A, S, damping, factored_damping=factored),
          dtype=np.result_type(_compute_dtype(np.dtype(dtype)), np.float32), cond=cond)


# --------------------------------------------------------------------------------------------
# curvature objects and the optimizer: success leaves a finite state, rejection none at all


def _state(curv):
    return pickle.dumps((curv.snapshot(), curv.n_updates))


CURVATURES = {
    "dense": lambda p, dt: DenseFisher(p, dtype=dt),
    "lowrank": lambda p, dt: LowRankFisher(p, max_rows=8, dtype=dt),
    "diagonal": lambda p, dt: DiagonalFisher(p, dtype=dt),
}


@fuzz_settings
@given(data=st.data(), kind=st.sampled_from(list(CURVATURES)), p=st.sampled_from([1, 4, 9]),
       store=st.sampled_from(FLOATS), dtype=data_dtypes, damping=dampings, rows=st.sampled_from([1, 3, 12]))
def test_fuzz_curvature_update_and_solve(data, kind, p, store, dtype, damping, rows):
    curv = CURVATURES[kind](p, store)
    curv.update(np.random.default_rng(0).standard_normal((4, p)))
    J = data.draw(arrays((rows, p), dtype))
    w = data.draw(weights_for(rows))
    before = _state(curv)
    kind_, value = _outcome(lambda: curv.update(J, weights=w))
    if kind_ == "err":
        assert _state(curv) == before, f"rejected update changed the state ({value!r})"
    else:
        assert np.all(np.isfinite(curv.to_dense())) and curv.n_updates == 2
        if kind == "dense":
            expected = ref.fisher(np.asarray(J, dtype=store), w, out=np.asarray(
                pickle.loads(before)[0]["_F"]).copy(), decay=curv.decay)
            np.testing.assert_allclose(curv.to_dense(), expected, rtol=300 * _eps(store),
                                       atol=300 * _eps(store) * np.abs(expected).max())
    g = data.draw(arrays((p,), data.draw(st.sampled_from(FLOATS))))
    kind_, x = _outcome(lambda: curv.solve(g, damping))
    if kind_ == "ok":
        assert np.all(np.isfinite(x)) and x.shape == g.shape


@fuzz_settings
@given(data=st.data(), kind=st.sampled_from(list(CURVATURES) + ["kfac"]), dtype=data_dtypes,
       kl_radius=st.sampled_from([1e-3, 1.0, 1e300, 0.0]), max_step=st.sampled_from([None, 1.0, 0.0, np.inf]))
def test_fuzz_natural_gradient_step(data, kind, dtype, kl_radius, max_step):
    shapes = [(2, 3)]
    p = 6
    curv = KFACFisher(shapes) if kind == "kfac" else CURVATURES[kind](p, np.float64)
    made = _outcome(lambda: NaturalGradient(curv, kl_radius=kl_radius, damping=1e-3, max_step=max_step))
    if made[0] == "err":
        assert kl_radius == 0.0 or max_step == 0.0
        return
    opt = made[1]
    theta = np.random.default_rng(1).standard_normal(p)
    if kind == "kfac":
        stats = (list(data.draw(arrays((5, 3), dtype)) for _ in range(1)),
                 list(data.draw(arrays((5, 2), dtype)) for _ in range(1)))
    else:
        stats = (data.draw(arrays((5, p), dtype)),)
    grad = data.draw(arrays((p,), data.draw(st.sampled_from(FLOATS))))
    params, state = theta.copy(), _state(curv)
    kind_, info = _outcome(lambda: opt.step(theta, grad, *stats))
    if kind_ == "err":
        assert _state(curv) == state and opt.n_steps == 0
        np.testing.assert_array_equal(theta, params)
    else:
        assert np.all(np.isfinite(theta)) and np.isfinite(info.beta) and opt.n_steps == 1
