"""Mixed precision with iterative refinement (``precision=``, ``return_info=``).

For float64 data the compiled solves may factor in float32 and refine with float64
residuals; the answer must be the float64 one (as accurate as a float64 Cholesky
solve, measured against a solution refined with extended-precision residuals), and
where refinement cannot converge the float64 factorisation must be taken, and
reported. Float32 data is untouched by the argument.
"""

import functools

import numpy as np
import pytest

import ngdfast
import ngdfast.reference as ref
from conftest import KERNEL_MODULES, assert_close, layout, random_spd
from ngdfast import NotPositiveDefiniteError, SolveInfo, _core, _precision

SOLVES = ("damped_solve", "lowrank_solve", "natural_gradient")
CONDS = [1e2, 1e4, 1e6, 1e8, 1e10, 1e12]


def _longdouble_refined(apply, solve64, g, steps=6):
    """x with apply(x) = g to extended precision: float64 corrections of residuals
    computed in long double (converges at a rate of about cond * eps64)."""
    x = solve64(g)
    for _ in range(steps):
        r = np.asarray(g, np.longdouble) - apply(np.asarray(x, np.longdouble))
        x = (np.asarray(x, np.longdouble) + solve64(r.astype(np.float64))).astype(np.float64)
    return x


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


pytestmark = pytest.mark.skipif(
    np.finfo(np.longdouble).eps > 1e-18, reason="needs an extended-precision long double for the exact solutions"
)


# --------------------------------------------------------------------------------------------
# accuracy across condition numbers, and the path taken


@pytest.mark.parametrize("cond", CONDS)
def test_damped_solve_as_accurate_as_float64_cholesky(cond):
    rng = np.random.default_rng(int(np.log10(cond)))
    p = 150
    F = random_spd(rng, p, cond=cond)
    g = rng.standard_normal(p)
    FL = F.astype(np.longdouble)
    exact = _longdouble_refined(lambda x: FL @ x, lambda r: np.linalg.solve(F, r), g)
    x64, info64 = ngdfast.damped_solve(F, g, 0.0, precision="double", return_info=True)
    xm, info = ngdfast.damped_solve(F, g, 0.0, precision="mixed", return_info=True)
    assert info64 == SolveInfo("double", 0, None)
    err64, errm = _rel(x64, exact), _rel(xm, exact)
    assert errm <= 4 * err64 + 1e-15, (errm, err64)
    if cond <= 1e4:
        assert info.precision == "mixed" and info.fallback is None and 1 <= info.iterations <= 6
    if cond >= 1e10:  # beyond float32: the float64 factorisation, and the call says so
        assert info.precision == "double" and info.fallback is not None
        np.testing.assert_array_equal(xm, x64)


@pytest.mark.parametrize("cond", CONDS)
@pytest.mark.parametrize("weighted", [False, True])
def test_lowrank_solve_as_accurate_as_float64_woodbury(cond, weighted):
    rng = np.random.default_rng(7 + int(np.log10(cond)))
    n, p = 40, 130
    # rank n - 4: the Gram J_w J_w^T + lam I then has condition number ~cond too
    J = rng.standard_normal((n, n - 4)) @ rng.standard_normal((n - 4, p)) * np.geomspace(1.0, 3.0, p)
    w = rng.random(n) + 0.2 if weighted else None
    wn = np.full(n, 1.0 / n) if w is None else w / w.sum()
    Jw = J * np.sqrt(wn)[:, None]
    top = np.linalg.norm(Jw, 2) ** 2
    damping = top / cond  # cond(J_w J_w^T + lam I) ~ cond
    g = rng.standard_normal(p)
    JL = Jw.astype(np.longdouble)
    A = Jw.T @ Jw + damping * np.eye(p)
    exact = _longdouble_refined(lambda x: JL.T @ (JL @ x) + damping * x, lambda r: np.linalg.solve(A, r), g)
    x64 = ngdfast.lowrank_solve(J, g, damping, w, precision="double")
    for call in (ngdfast.lowrank_solve, functools.partial(ngdfast.natural_gradient, method="lowrank")):
        xm, info = call(J, g, damping, w, precision="mixed", return_info=True)
        assert _rel(xm, exact) <= 4 * _rel(x64, exact) + 1e-15, (_rel(xm, exact), _rel(x64, exact))
        if cond <= 1e4:
            assert info.precision == "mixed" and info.fallback is None
        if cond >= 1e10:
            assert info.precision == "double" and info.fallback is not None


@pytest.mark.parametrize("cond", [1e2, 1e5, 1e11])
def test_dense_natural_gradient_refined(cond):
    rng = np.random.default_rng(3)
    n, p = 300, 90
    J = rng.standard_normal((n, p - 10)) @ rng.standard_normal((p - 10, p))  # F singular: cond(F + lam I) ~ cond
    F = J.T @ J / n
    damping = np.linalg.eigvalsh(F)[-1] / cond
    g = rng.standard_normal(p)
    x64 = ngdfast.natural_gradient(J, g, damping, method="dense", precision="double")
    xm, info = ngdfast.natural_gradient(J, g, damping, method="dense", precision="mixed", return_info=True)
    assert_close(xm, x64, cond=cond)
    assert info.precision == ("mixed" if cond < 1e6 else "double")
    assert_close(xm, ref.natural_gradient(J, g, damping, method="dense"), cond=cond)


def test_scale_of_F_and_tiny_damping_do_not_leave_float32_range():
    # Entries far beyond float32's range, and a damping far below its smallest number:
    # the equilibrated float32 factor handles both.
    rng = np.random.default_rng(11)
    F = random_spd(rng, 60, cond=100.0)
    g = rng.standard_normal(60)
    for scale in (1e200, 1e-200):
        x, info = ngdfast.damped_solve(F * scale, g, 1e-60 * scale, precision="mixed", return_info=True)
        assert info.precision == "mixed"
        assert_close(x * scale, ref.damped_solve(F, g, 1e-60), cond=100.0)


def test_not_positive_definite_reports_the_float64_pivot():
    F = np.diag([2.0, 1.0, -3.0, 4.0])
    for kern in (ngdfast, ref):
        with pytest.raises(NotPositiveDefiniteError) as e:
            kern.damped_solve(F, np.ones(4), 0.5, precision="mixed")
        assert e.value.pivot == 3


# --------------------------------------------------------------------------------------------
# shapes, weights, layouts, reproducibility


@pytest.mark.parametrize("kind", ["C", "F", "strided", "negative", "transposed"])
def test_layouts_and_several_right_hand_sides(kind):
    rng = np.random.default_rng(5)
    F = random_spd(rng, 70, cond=1e3)
    G = rng.standard_normal((70, 3))
    x, info = ngdfast.damped_solve(layout(F, kind), layout(G, kind), 0.1, precision="mixed", return_info=True)
    assert info.precision == "mixed" and x.shape == (70, 3)
    assert_close(x, ref.damped_solve(F, G, 0.1), cond=1e3)
    J = rng.standard_normal((30, 90))
    w = rng.random(30)
    for method in ("dense", "lowrank"):
        y, info = ngdfast.natural_gradient(
            layout(J, kind), layout(G[:, :2].repeat(2, axis=0)[:90], kind), 0.05, w,
            method=method, precision="mixed", return_info=True,
        )
        assert info.precision == "mixed"
        assert_close(y, ref.natural_gradient(J, G[:, :2].repeat(2, axis=0)[:90], 0.05, w, method=method), cond=1e3)


@pytest.mark.parametrize("solve", SOLVES)
def test_reproducible_bitwise(solve):
    rng = np.random.default_rng(9)
    if solve == "damped_solve":
        args = (random_spd(rng, 300, cond=1e4), rng.standard_normal((300, 2)), 0.01)
    else:
        args = (rng.standard_normal((150, 400)), rng.standard_normal((400, 2)), 0.01, rng.random(150))
    call = getattr(ngdfast, solve)
    a, ia = call(*args, precision="mixed", return_info=True)
    ngdfast.set_num_threads(1)
    try:
        b, ib = call(*args, precision="mixed", return_info=True)
    finally:
        ngdfast.set_num_threads(2)
    c = call(*args, precision="mixed")
    assert ia.precision == "mixed" and ia == ib
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("solve", SOLVES)
@pytest.mark.parametrize("precision", _precision.__dict__.get("PRECISIONS", ("auto", "double", "mixed")))
def test_float32_data_unchanged(solve, precision):
    rng = np.random.default_rng(2)
    if solve == "damped_solve":
        F = random_spd(rng, 40, np.float32, cond=10.0)
        g = rng.standard_normal(40).astype(np.float32)
        old, _ = _core.damped_solve(F, g[:, None], 0.1)
        x, info = ngdfast.damped_solve(F, g, 0.1, precision=precision, return_info=True)
    else:
        J = rng.standard_normal((20, 50)).astype(np.float32)
        g = rng.standard_normal(50).astype(np.float32)
        old, _ = _core.lowrank_solve(J, None, g[:, None], 0.1)
        kw = {"method": "lowrank"} if solve == "natural_gradient" else {}
        x, info = getattr(ngdfast, solve)(J, g, 0.1, precision=precision, return_info=True, **kw)
    assert x.dtype == np.float32 and info == SolveInfo("single", 0, None)
    np.testing.assert_array_equal(x, old[:, 0])


def test_auto_picks_by_size():
    limits = _precision.thresholds()  # chosen for the tile engine's kernels (ngdfast._tiles)
    assert not _precision.use_mixed("auto", np.float64, "dense", limits.dense - 1)
    assert _precision.use_mixed("auto", np.float64, "dense", limits.dense)
    assert _precision.use_mixed("mixed", np.float64, "dense", 1)
    assert not _precision.use_mixed("mixed", np.float32, "dense", 10**6)
    assert not _precision.use_mixed("double", np.float64, "lowrank", 10**4, 10**6)
    rng = np.random.default_rng(1)
    F = random_spd(rng, 8)
    assert ngdfast.damped_solve(F, np.ones(8), 0.0, return_info=True)[1].precision == "double"
    big = (limits.samples, limits.params)
    before = _core.get_borrow_mode()
    try:
        _core.set_borrow_mode("never")
        assert _precision.use_mixed("auto", np.float64, "lowrank", *big)
        _core.set_borrow_mode("always")  # products on NumPy's BLAS: the float64 solve
        from ngdfast import _backend

        assert _precision.use_mixed("auto", np.float64, "lowrank", *big) is not _backend.HOST_BLAS
        assert _precision.use_mixed("mixed", np.float64, "lowrank", *big)
    finally:
        _core.set_borrow_mode(before)


def test_return_info_is_consistent_across_modules():
    rng = np.random.default_rng(4)
    F = random_spd(rng, 12)
    for kern in KERNEL_MODULES:
        for precision in ("auto", "double", "mixed"):
            x, info = kern.damped_solve(F, np.ones(12), 0.0, precision=precision, return_info=True)
            assert isinstance(info, SolveInfo) and info.precision in ("double", "mixed")
            assert x.shape == (12,)
        assert ref.damped_solve(F, np.ones(12), 0.0, return_info=True)[1] == SolveInfo("double")


# --------------------------------------------------------------------------------------------
# argument checks: a bad precision, and every error-table row with the new argument


@pytest.mark.parametrize("bad", ["single", "MIXED", "", None, 1, 64, b"mixed"])
@pytest.mark.parametrize("solve", SOLVES)
def test_bad_precision(kernels, solve, bad):
    J = np.eye(3)
    args = (J, np.ones(3), 1.0)
    with pytest.raises(ValueError, match=f"{solve}: precision must be one of"):
        getattr(kernels, solve)(*args, precision=bad)
    with pytest.raises(ValueError) as mine:
        getattr(kernels, solve)(*args, precision=bad)
    with pytest.raises(ValueError) as spec:
        getattr(ref, solve)(*args, precision=bad)
    assert str(mine.value) == str(spec.value)


class _WithPrecision:
    """A kernel module whose solves get ``precision`` passed."""

    def __init__(self, module, precision):
        self._module, self._precision = module, precision

    def __getattr__(self, name):
        f = getattr(self._module, name)
        return functools.partial(f, precision=self._precision) if name in SOLVES else f


def _solve_cases():
    from test_errors import CASES

    return [c for c in CASES if c[0].split("-")[0] in ("damped", "lowrank", "natgrad")]


@pytest.mark.parametrize("precision", ["mixed", "double"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in _solve_cases()])
def test_error_table_with_precision(kernels, case, precision):
    _, call, exception, fragments = case
    with pytest.raises(exception) as mine, np.errstate(all="ignore"):
        call(_WithPrecision(kernels, precision))
    with pytest.raises(exception) as spec, np.errstate(all="ignore"):
        call(ref)
    assert str(mine.value) == str(spec.value)
    for fragment in fragments:
        assert fragment in str(mine.value)


@pytest.mark.parametrize("func", ["lowrank_solve", "natural_gradient-dense", "natural_gradient-lowrank"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_J_on_the_mixed_path(func, value):
    from test_errors import _SCORE_CALLS

    rng = np.random.default_rng(8)
    J = rng.standard_normal((37, 130))
    J[5, 7] = value
    g = rng.standard_normal(130)
    call = _SCORE_CALLS[func]
    name = func.split("-")[0]
    with pytest.raises(ValueError, match=f"{name}: J contains NaN or Inf"):
        call(_WithPrecision(ngdfast, "mixed"), J, g, None, True)
    # J finite but its float32 (and float64) Gram overflows: not rejected as non-finite,
    # and the outcome is the float64 path's
    J = rng.standard_normal((6, 5)) * 1e200
    g = rng.standard_normal(5)
    outcomes = []
    for precision in ("mixed", "double"):
        try:
            with np.errstate(all="ignore"):
                outcomes.append(call(_WithPrecision(ngdfast, precision), J, g, None, True))
        except (NotPositiveDefiniteError, ValueError) as exc:  # NumericOverflowError is a ValueError
            outcomes.append(f"{type(exc).__name__}: {exc}")
    if isinstance(outcomes[0], str):
        assert outcomes[0] == outcomes[1]
    else:
        np.testing.assert_array_equal(outcomes[0], outcomes[1])


def test_cuda_module_takes_the_argument():
    pytest.importorskip("numba_cuda", reason="numba-cuda is not installed")
    import ngdfast.cuda as nc

    if not nc.is_available():
        pytest.skip("ngdfast.cuda is not available")
    rng = np.random.default_rng(12)
    F = random_spd(rng, 6)
    g = rng.standard_normal(6)
    J = rng.standard_normal((4, 6))
    x, info = nc.damped_solve(F, g, 0.1, precision="mixed", return_info=True)
    assert info == SolveInfo("double", 0, "no mixed-precision path in ngdfast.cuda")
    assert_close(np.asarray(x), ref.damped_solve(F, g, 0.1))
    y, info = nc.natural_gradient(J, g, 0.1, precision="auto", return_info=True)
    assert info == SolveInfo("double")
    assert_close(np.asarray(y), ref.natural_gradient(J, g, 0.1))
    y, info = nc.lowrank_solve(J.astype(np.float32), g.astype(np.float32), 0.1, precision="mixed", return_info=True)
    assert info == SolveInfo("single")
    with pytest.raises(ValueError, match="lowrank_solve: precision must be one of"):
        nc.lowrank_solve(J, g, 0.1, precision="half")


@pytest.mark.parametrize("mode", ["always", "never"])
def test_mixed_woodbury_with_and_without_numpys_blas(mode):
    # "always": the products run on NumPy's BLAS (what a call beside spinning NumPy
    # threads does), the refinement passes on the calling thread.
    from ngdfast import _backend

    if mode == "always" and not _backend.HOST_BLAS:
        pytest.skip("NumPy's OpenBLAS was not found")
    rng = np.random.default_rng(13)
    J = rng.standard_normal((140, 700))
    G = rng.standard_normal((700, 2))
    w = rng.random(140)
    before = _core.get_borrow_mode()
    _core.set_borrow_mode(mode)
    try:
        x, info = ngdfast.lowrank_solve(J, G, 0.01, w, precision="mixed", return_info=True)
        again = ngdfast.lowrank_solve(J, G, 0.01, w, precision="mixed")
    finally:
        _core.set_borrow_mode(before)
    assert info.precision == "mixed"
    np.testing.assert_array_equal(x, again)
    assert_close(x, ref.lowrank_solve(J, G, 0.01, w), cond=1e3)


@pytest.mark.parametrize("solve", SOLVES)
def test_same_signature_in_every_module(solve):
    import inspect

    def params(module):
        return [(p.name, p.kind, p.default) for p in inspect.signature(getattr(module, solve)).parameters.values()]

    modules = [ngdfast, ref]
    try:
        import ngdfast.cuda as nc

        modules.append(nc)
    except ImportError:
        pass
    for module in modules[1:]:
        assert params(module) == params(ngdfast), module.__name__
    assert ("precision", inspect.Parameter.KEYWORD_ONLY, "auto") in params(ngdfast)
