"""The error table of the API, row by row, for every kernel module.

Each case runs against ``ngdfast`` (compiled) and ``ngdfast.reference`` through the
``kernels`` fixture and checks the exception type and that the message names the
function, the argument and (for shape errors) the shapes.
"""

import numpy as np
import pytest

import ngdfast
from ngdfast import NotPositiveDefiniteError, NumericOverflowError

F64 = np.float64
J = np.arange(12, dtype=F64).reshape(4, 3) / 7.0 + np.eye(4, 3)
G = np.array([1.0, -2.0, 0.5])
F = np.array([[2.0, 0.5, 0.0], [0.5, 3.0, 0.1], [0.0, 0.1, 1.0]])
GRAD = np.arange(6, dtype=F64).reshape(3, 2)
A = np.array([[2.0, 0.3], [0.3, 1.0]])
S = np.diag([1.0, 2.0, 3.0])
W = np.array([1.0, 2.0, 0.5, 1.0])


def with_value(a, index, value):
    a = np.array(a, dtype=np.result_type(a, value))
    a[index] = value
    return a


def _readonly():
    out = np.zeros((3, 3))
    out.setflags(write=False)
    return out


def strings(shape):
    return np.full(shape, "x")


def objects(a):
    return np.asarray(a).astype(object)


HAS_LONGDOUBLE = np.dtype(np.longdouble).itemsize > 8

# (id, call(module), exception, fragments that must all appear in the message)
CASES = [
    # ---- fisher: shapes
    ("fisher-J-1d", lambda m: m.fisher(G), ValueError, ["fisher", "J", "2-D", "(3,)"]),
    ("fisher-J-3d", lambda m: m.fisher(np.ones((2, 2, 2))), ValueError, ["fisher", "J", "(2, 2, 2)"]),
    ("fisher-J-empty-batch", lambda m: m.fisher(np.ones((0, 3))), ValueError, ["fisher", "J", "empty", "(0, 3)"]),
    ("fisher-J-no-params", lambda m: m.fisher(np.ones((3, 0))), ValueError, ["fisher", "J", "(3, 0)"]),
    ("fisher-weights-length", lambda m: m.fisher(J, W[:3]), ValueError, ["fisher", "weights", "(3,)", "(4, 3)"]),
    ("fisher-weights-2d", lambda m: m.fisher(J, W[:, None]), ValueError, ["fisher", "weights", "(4, 1)"]),
    ("fisher-out-shape", lambda m: m.fisher(J, out=np.zeros((4, 4))), ValueError, ["fisher", "out", "(4, 4)", "(3, 3)"]),
    ("fisher-out-dtype", lambda m: m.fisher(J, out=np.zeros((3, 3), np.float32)), ValueError, ["fisher", "out", "float32", "float64"]),
    ("fisher-out-dtype-f32", lambda m: m.fisher(J.astype(np.float32), out=np.zeros((3, 3))), ValueError, ["fisher", "out", "float32"]),
    ("fisher-out-strided", lambda m: m.fisher(J, out=np.zeros((6, 6))[::2, ::2]), ValueError, ["fisher", "out", "contiguous"]),
    ("fisher-out-readonly", lambda m: m.fisher(J, out=_readonly()), ValueError, ["fisher", "out", "read-only"]),
    ("fisher-out-list", lambda m: m.fisher(J, out=[[0.0] * 3] * 3), TypeError, ["fisher", "out"]),
    # ---- fisher: dtypes
    ("fisher-J-complex", lambda m: m.fisher(J.astype(complex)), TypeError, ["fisher", "J", "complex"]),
    ("fisher-J-object", lambda m: m.fisher(objects(J)), TypeError, ["fisher", "J", "object"]),
    ("fisher-J-string", lambda m: m.fisher(strings((4, 3))), TypeError, ["fisher", "J", "string"]),
    ("fisher-weights-complex", lambda m: m.fisher(J, W.astype(complex)), TypeError, ["fisher", "weights"]),
    ("fisher-decay-string", lambda m: m.fisher(J, out=np.zeros((3, 3)), decay="0.5"), TypeError, ["fisher", "decay"]),
    # ---- fisher: values
    ("fisher-J-nan", lambda m: m.fisher(with_value(J, (1, 2), np.nan)), ValueError, ["fisher", "J", "NaN"]),
    ("fisher-J-inf", lambda m: m.fisher(with_value(J, (0, 0), -np.inf)), ValueError, ["fisher", "J", "Inf"]),
    ("fisher-weights-negative", lambda m: m.fisher(J, with_value(W, 2, -1.0)), ValueError, ["fisher", "weights", ">= 0"]),
    ("fisher-weights-zero", lambda m: m.fisher(J, np.zeros(4)), ValueError, ["fisher", "weights", "zero"]),
    ("fisher-weights-nan", lambda m: m.fisher(J, with_value(W, 0, np.nan)), ValueError, ["fisher", "weights", "NaN"]),
    ("fisher-weights-inf", lambda m: m.fisher(J, with_value(W, 0, np.inf), check_finite=False), ValueError, ["fisher", "weights"]),
    ("fisher-decay-negative", lambda m: m.fisher(J, out=np.zeros((3, 3)), decay=-0.1), ValueError, ["fisher", "decay", "[0, 1]"]),
    ("fisher-decay-above-one", lambda m: m.fisher(J, out=np.zeros((3, 3)), decay=1.5), ValueError, ["fisher", "decay"]),
    ("fisher-decay-nan", lambda m: m.fisher(J, out=np.zeros((3, 3)), decay=np.nan), ValueError, ["fisher", "decay"]),
    ("fisher-decay-without-out", lambda m: m.fisher(J, decay=0.5), ValueError, ["fisher", "decay", "out"]),
    ("fisher-out-nan", lambda m: m.fisher(J, out=np.full((3, 3), np.nan), decay=0.5), ValueError, ["fisher", "out", "NaN"]),
    # ---- damped_solve
    ("damped-F-1d", lambda m: m.damped_solve(G, G, 1.0), ValueError, ["damped_solve", "F", "(3,)"]),
    ("damped-F-not-square", lambda m: m.damped_solve(J, G, 1.0), ValueError, ["damped_solve", "F", "square", "(4, 3)"]),
    ("damped-F-empty", lambda m: m.damped_solve(np.ones((0, 0)), np.ones(0), 1.0), ValueError, ["damped_solve", "F", "(0, 0)"]),
    ("damped-g-length", lambda m: m.damped_solve(F, np.ones(4), 1.0), ValueError, ["damped_solve", "g", "(4,)", "(3, 3)"]),
    ("damped-g-rows", lambda m: m.damped_solve(F, np.ones((2, 2)), 1.0), ValueError, ["damped_solve", "g", "(2, 2)"]),
    ("damped-g-no-columns", lambda m: m.damped_solve(F, np.ones((3, 0)), 1.0), ValueError, ["damped_solve", "g", "(3, 0)"]),
    ("damped-g-3d", lambda m: m.damped_solve(F, np.ones((3, 1, 1)), 1.0), ValueError, ["damped_solve", "g", "(3, 1, 1)"]),
    ("damped-F-complex", lambda m: m.damped_solve(F.astype(complex), G, 1.0), TypeError, ["damped_solve", "F", "complex"]),
    ("damped-g-complex", lambda m: m.damped_solve(F, G.astype(np.complex64), 1.0), TypeError, ["damped_solve", "g", "complex"]),
    ("damped-g-object", lambda m: m.damped_solve(F, objects(G), 1.0), TypeError, ["damped_solve", "g", "object"]),
    ("damped-F-string", lambda m: m.damped_solve(strings((3, 3)), G, 1.0), TypeError, ["damped_solve", "F"]),
    ("damped-damping-complex", lambda m: m.damped_solve(F, G, 1j), TypeError, ["damped_solve", "damping"]),
    ("damped-damping-string", lambda m: m.damped_solve(F, G, "1"), TypeError, ["damped_solve", "damping"]),
    ("damped-damping-negative", lambda m: m.damped_solve(F, G, -1e-3), ValueError, ["damped_solve", "damping", ">= 0"]),
    ("damped-damping-nan", lambda m: m.damped_solve(F, G, np.nan), ValueError, ["damped_solve", "damping"]),
    ("damped-damping-inf", lambda m: m.damped_solve(F, G, np.inf), ValueError, ["damped_solve", "damping"]),
    ("damped-F-nan", lambda m: m.damped_solve(with_value(F, (2, 1), np.nan), G, 1.0), ValueError, ["damped_solve", "F", "NaN"]),
    ("damped-F-upper-inf", lambda m: m.damped_solve(with_value(F, (0, 2), np.inf), G, 1.0), ValueError, ["damped_solve", "F"]),
    ("damped-g-inf", lambda m: m.damped_solve(F, with_value(G, 1, np.inf), 1.0), ValueError, ["damped_solve", "g", "Inf"]),
    # ---- lowrank_solve
    ("lowrank-J-1d", lambda m: m.lowrank_solve(G, G, 1.0), ValueError, ["lowrank_solve", "J", "(3,)"]),
    ("lowrank-J-empty", lambda m: m.lowrank_solve(np.ones((0, 3)), G, 1.0), ValueError, ["lowrank_solve", "J", "(0, 3)"]),
    ("lowrank-g-length", lambda m: m.lowrank_solve(J, np.ones(4), 1.0), ValueError, ["lowrank_solve", "g", "(4,)", "(4, 3)"]),
    ("lowrank-weights-length", lambda m: m.lowrank_solve(J, G, 1.0, np.ones(5)), ValueError, ["lowrank_solve", "weights", "(5,)"]),
    ("lowrank-damping-zero", lambda m: m.lowrank_solve(J, G, 0.0), ValueError, ["lowrank_solve", "damping", "> 0"]),
    ("lowrank-damping-negative", lambda m: m.lowrank_solve(J, G, -1.0), ValueError, ["lowrank_solve", "damping"]),
    ("lowrank-weights-negative", lambda m: m.lowrank_solve(J, G, 1.0, -W), ValueError, ["lowrank_solve", "weights"]),
    ("lowrank-weights-zero", lambda m: m.lowrank_solve(J, G, 1.0, 0 * W), ValueError, ["lowrank_solve", "weights", "zero"]),
    ("lowrank-J-complex", lambda m: m.lowrank_solve(J * 1j, G, 1.0), TypeError, ["lowrank_solve", "J"]),
    ("lowrank-g-string", lambda m: m.lowrank_solve(J, strings(3), 1.0), TypeError, ["lowrank_solve", "g"]),
    ("lowrank-J-nan", lambda m: m.lowrank_solve(with_value(J, (3, 2), np.nan), G, 1.0), ValueError, ["lowrank_solve", "J", "NaN"]),
    ("lowrank-g-nan", lambda m: m.lowrank_solve(J, with_value(G, 0, np.nan), 1.0), ValueError, ["lowrank_solve", "g", "NaN"]),
    # ---- natural_gradient
    ("natgrad-method", lambda m: m.natural_gradient(J, G, 1.0, method="cholesky"), ValueError, ["natural_gradient", "method", "cholesky"]),
    ("natgrad-lowrank-no-damping", lambda m: m.natural_gradient(J, G, 0.0, method="lowrank"), ValueError, ["natural_gradient", "damping", "> 0"]),
    ("natgrad-damping-negative", lambda m: m.natural_gradient(J, G, -0.5), ValueError, ["natural_gradient", "damping"]),
    ("natgrad-J-empty", lambda m: m.natural_gradient(np.ones((0, 3)), G, 1.0), ValueError, ["natural_gradient", "J", "empty"]),
    ("natgrad-g-length", lambda m: m.natural_gradient(J, np.ones(2), 1.0), ValueError, ["natural_gradient", "g", "(2,)", "(4, 3)"]),
    ("natgrad-weights-zero", lambda m: m.natural_gradient(J, G, 1.0, np.zeros(4)), ValueError, ["natural_gradient", "weights"]),
    ("natgrad-J-inf", lambda m: m.natural_gradient(with_value(J, (0, 1), np.inf), G, 1.0), ValueError, ["natural_gradient", "J", "Inf"]),
    ("natgrad-J-object", lambda m: m.natural_gradient(objects(J), G, 1.0), TypeError, ["natural_gradient", "J"]),
    # ---- kl_step_size
    ("kl-shapes", lambda m: m.kl_step_size(G, np.ones(4), 0.1), ValueError, ["kl_step_size", "nat_grad", "(3,)", "(4,)"]),
    ("kl-empty", lambda m: m.kl_step_size(np.ones(0), np.ones(0), 0.1), ValueError, ["kl_step_size", "g", "(0,)"]),
    ("kl-epsilon-negative", lambda m: m.kl_step_size(G, G, -0.1), ValueError, ["kl_step_size", "epsilon", ">= 0"]),
    ("kl-epsilon-nan", lambda m: m.kl_step_size(G, G, np.nan), ValueError, ["kl_step_size", "epsilon"]),
    ("kl-max-step-zero", lambda m: m.kl_step_size(G, G, 0.1, max_step=0.0), ValueError, ["kl_step_size", "max_step"]),
    ("kl-max-step-negative", lambda m: m.kl_step_size(G, G, 0.1, max_step=-1.0), ValueError, ["kl_step_size", "max_step"]),
    ("kl-quadratic-negative", lambda m: m.kl_step_size(G, -G, 0.1), ValueError, ["kl_step_size", "nat_grad", "-5.25"]),
    ("kl-quadratic-nan", lambda m: m.kl_step_size(with_value(G, 0, np.nan), G, 0.1), ValueError, ["kl_step_size", "nan"]),
    ("kl-quadratic-inf", lambda m: m.kl_step_size(with_value(G, 0, np.inf), G, 0.1), ValueError, ["kl_step_size", "inf"]),
    ("kl-quadratic-overflow", lambda m: m.kl_step_size([1e300, 1e300], [1e300, 1e300], 0.1), ValueError, ["kl_step_size"]),
    ("kl-g-complex", lambda m: m.kl_step_size(G * 1j, G, 0.1), TypeError, ["kl_step_size", "g"]),
    ("kl-nat-grad-string", lambda m: m.kl_step_size(G, strings(3), 0.1), TypeError, ["kl_step_size", "nat_grad"]),
    ("kl-epsilon-complex", lambda m: m.kl_step_size(G, G, 0.1j), TypeError, ["kl_step_size", "epsilon"]),
    # ---- kfac_precondition
    ("kfac-grad-1d", lambda m: m.kfac_precondition(G, A, S, 0.1), ValueError, ["kfac_precondition", "grad", "(3,)"]),
    ("kfac-grad-empty", lambda m: m.kfac_precondition(np.ones((0, 2)), A, S, 0.1), ValueError, ["kfac_precondition", "grad", "(0, 2)"]),
    ("kfac-A-shape", lambda m: m.kfac_precondition(GRAD, S, S, 0.1), ValueError, ["kfac_precondition", "A", "(3, 3)", "(3, 2)"]),
    ("kfac-S-shape", lambda m: m.kfac_precondition(GRAD, A, A, 0.1), ValueError, ["kfac_precondition", "S", "(2, 2)", "(3, 2)"]),
    ("kfac-A-1d", lambda m: m.kfac_precondition(GRAD, np.ones(2), S, 0.1), ValueError, ["kfac_precondition", "A", "(2,)"]),
    ("kfac-damping-negative", lambda m: m.kfac_precondition(GRAD, A, S, -0.1), ValueError, ["kfac_precondition", "damping"]),
    ("kfac-A-nan", lambda m: m.kfac_precondition(GRAD, with_value(A, (1, 0), np.nan), S, 0.1), ValueError, ["kfac_precondition", "A", "NaN"]),
    ("kfac-S-inf", lambda m: m.kfac_precondition(GRAD, A, with_value(S, (2, 2), np.inf), 0.1), ValueError, ["kfac_precondition", "S", "Inf"]),
    ("kfac-grad-nan", lambda m: m.kfac_precondition(with_value(GRAD, (0, 0), np.nan), A, S, 0.1), ValueError, ["kfac_precondition", "grad"]),
    ("kfac-grad-complex", lambda m: m.kfac_precondition(GRAD * 1j, A, S, 0.1), TypeError, ["kfac_precondition", "grad"]),
    ("kfac-S-object", lambda m: m.kfac_precondition(GRAD, A, objects(S), 0.1), TypeError, ["kfac_precondition", "S"]),
    # ---- overflow of finite inputs (issue 9, defect 6): never a silent Inf/NaN, zeros or g / damping
    ("fisher-overflow", lambda m: m.fisher(J * 1e160), NumericOverflowError, ["fisher", "overflows float64", "rescale"]),
    ("fisher-overflow-f32", lambda m: m.fisher((J * 1e20).astype(np.float32)), NumericOverflowError, ["fisher", "float32"]),
    ("fisher-overflow-weighted", lambda m: m.fisher(J * 1e160, W), NumericOverflowError, ["fisher", "overflows"]),
    ("fisher-overflow-out", lambda m: m.fisher(J * 1e160, out=np.eye(3), decay=0.5), NumericOverflowError, ["fisher", "overflows"]),
    ("lowrank-overflow", lambda m: m.lowrank_solve(J * 1e160, G, 0.1), NumericOverflowError, ["lowrank_solve", "J_w J_w^T", "overflows float64"]),
    ("lowrank-overflow-unchecked", lambda m: m.lowrank_solve(J * 1e160, G, 0.1, check_finite=False), NumericOverflowError, ["lowrank_solve", "overflows"]),
    ("natgrad-dense-overflow", lambda m: m.natural_gradient(J * 1e160, G, 0.1, method="dense"), NumericOverflowError, ["natural_gradient", "J_w^T J_w", "overflows"]),
    ("natgrad-lowrank-overflow-unchecked", lambda m: m.natural_gradient(J * 1e160, G, 0.1, method="lowrank", check_finite=False), NumericOverflowError, ["natural_gradient", "overflows"]),
    ("lowrank-J-nan-unchecked", lambda m: m.lowrank_solve(with_value(J, (3, 2), np.nan), G, 1.0, check_finite=False), ValueError, ["lowrank_solve", "J contains NaN or Inf"]),
    ("lowrank-J-inf-unchecked", lambda m: m.lowrank_solve(with_value(J, (0, 0), np.inf), G, 1.0, check_finite=False), ValueError, ["lowrank_solve", "J contains NaN or Inf"]),
    ("natgrad-J-inf-unchecked", lambda m: m.natural_gradient(with_value(J, (0, 1), np.inf), G, 1.0, method="dense", check_finite=False), ValueError, ["natural_gradient", "J contains NaN or Inf"]),
    ("natgrad-J-nan-zero-weight-unchecked", lambda m: m.natural_gradient(with_value(J, (1, 1), np.nan), G, 1.0, with_value(W, 1, 0.0), check_finite=False), ValueError, ["natural_gradient", "J contains NaN or Inf"]),
    ("lowrank-g-nan-unchecked", lambda m: m.lowrank_solve(J, with_value(G, 1, np.nan), 1.0, check_finite=False), ValueError, ["lowrank_solve", "g contains NaN or Inf"]),
    ("natgrad-g-inf-unchecked", lambda m: m.natural_gradient(J, with_value(G, 1, np.inf), 1.0, method="dense", check_finite=False), ValueError, ["natural_gradient", "g contains NaN or Inf"]),
    ("lowrank-solution-overflow", lambda m: m.lowrank_solve(J[:2], G * 1e300, 1e-300), NumericOverflowError, ["lowrank_solve", "solution", "overflows"]),
    ("damped-solution-overflow", lambda m: m.damped_solve(F * 1e-300, G * 1e300, 0.0), NumericOverflowError, ["damped_solve", "solution", "overflows float64"]),
    ("damped-g-nan-unchecked", lambda m: m.damped_solve(F, with_value(G, 0, np.nan), 1.0, check_finite=False), ValueError, ["damped_solve", "g contains NaN or Inf"]),
    ("kfac-overflow", lambda m: m.kfac_precondition(GRAD * 1e300, A * 1e-300, S * 1e-300, 0.0), NumericOverflowError, ["kfac_precondition", "overflows"]),
    ("kfac-grad-nan-unchecked", lambda m: m.kfac_precondition(with_value(GRAD, (0, 0), np.nan), A, S, 0.1, check_finite=False), ValueError, ["kfac_precondition", "grad contains NaN or Inf"]),
    ("kfac-A-nan-unchecked", lambda m: m.kfac_precondition(GRAD, with_value(A, (0, 0), np.nan), S, 0.1, check_finite=False), NotPositiveDefiniteError, ["kfac_precondition", "factor A"]),
    ("kl-step-overflow", lambda m: m.kl_step_size(G * 1e-160, G * 1e-160, 1e300), NumericOverflowError, ["kl_step_size", "overflows"]),
]

if HAS_LONGDOUBLE:
    CASES += [
        ("fisher-J-longdouble", lambda m: m.fisher(J.astype(np.longdouble)), TypeError, ["fisher", "J", "extended precision"]),
        ("damped-g-longdouble", lambda m: m.damped_solve(F, G.astype(np.longdouble), 1.0), TypeError, ["damped_solve", "g"]),
    ]


@pytest.mark.parametrize("call, exception, fragments", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_error_table(kernels, call, exception, fragments):
    with pytest.raises(exception) as info:
        call(kernels)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_same_message_in_every_module(kernels):
    # The modules share one validation layer: the text is identical.
    for call, exception, _ in [c[1:] for c in CASES]:
        with pytest.raises(exception) as mine:
            call(kernels)
        with pytest.raises(exception) as spec:
            call(ngdfast.reference)
        assert str(mine.value) == str(spec.value)


# --------------------------------------------------------------------------------------------
# a rejected call never writes out


def _bad_fisher_calls():
    nan_J = with_value(J, (2, 2), np.nan)
    return {
        "J-nan": lambda m, out: m.fisher(nan_J, out=out, decay=0.5),
        "J-nan-decay-0": lambda m, out: m.fisher(nan_J, out=out),
        "J-shape": lambda m, out: m.fisher(J[:, :2], out=out, decay=0.5),
        "J-complex": lambda m, out: m.fisher(J * 1j, out=out, decay=0.5),
        "weights-negative": lambda m, out: m.fisher(J, -W, out=out, decay=0.5),
        "weights-zero": lambda m, out: m.fisher(J, 0 * W, out=out, decay=0.5),
        "weights-nan": lambda m, out: m.fisher(J, with_value(W, 1, np.nan), out=out, decay=0.5),
        "weights-length": lambda m, out: m.fisher(J, W[:2], out=out, decay=0.5),
        "decay-high": lambda m, out: m.fisher(J, out=out, decay=2.0),
        "decay-negative": lambda m, out: m.fisher(J, out=out, decay=-1.0),
    }


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("case", list(_bad_fisher_calls()))
def test_rejected_fisher_leaves_out_untouched(kernels, order, case):
    out = np.array(np.arange(9.0).reshape(3, 3) + 10.0, order=order)
    out = out + out.T
    out = np.array(out, order=order)
    before = out.tobytes(order="A")
    with pytest.raises((ValueError, TypeError)):
        _bad_fisher_calls()[case](kernels, out)
    assert out.tobytes(order="A") == before


def test_rejected_fisher_leaves_nan_out_untouched(kernels):
    out = np.full((3, 3), np.nan)
    out[0, 0] = 1.0
    before = out.tobytes()
    with pytest.raises(ValueError, match="out"):
        kernels.fisher(J, out=out, decay=0.3)
    assert out.tobytes() == before


# --------------------------------------------------------------------------------------------
# NotPositiveDefiniteError


def test_not_positive_definite_is_a_linalg_error():
    assert issubclass(NotPositiveDefiniteError, np.linalg.LinAlgError)
    assert ngdfast.NotPositiveDefiniteError is NotPositiveDefiniteError


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_damped_solve_not_positive_definite(kernels, dtype):
    M = np.diag([1.0, 1.0, -5.0, 1.0]).astype(dtype)
    with pytest.raises(NotPositiveDefiniteError) as info:
        kernels.damped_solve(M, np.ones(4), 1.0)
    err = info.value
    assert isinstance(err, np.linalg.LinAlgError)
    assert err.pivot == 3 and err.damping == 1.0
    message = str(err)
    for fragment in ("damped_solve", "pivot 3 of 4", "damping", "increase the damping"):
        assert fragment in message


def test_damped_solve_zero_pivot(kernels):
    # Exactly singular: the second pivot is exactly zero, which is not positive.
    with pytest.raises(NotPositiveDefiniteError, match="pivot 2 of 3"):
        kernels.damped_solve(np.diag([2.0, 0.0, 1.0]), np.ones(3), 0.0)


def test_damped_solve_indefinite_leading_minor(kernels):
    M = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    with pytest.raises(NotPositiveDefiniteError, match="pivot 2 of 3"):
        kernels.damped_solve(M, np.ones((3, 2)), 0.5)


@pytest.mark.parametrize("method", ["dense", "auto"])
def test_natural_gradient_not_positive_definite(kernels, method):
    Js = np.array([[1.0, 0.0, 0.0]])  # F = diag(1, 0, 0): singular without damping
    with pytest.raises(NotPositiveDefiniteError) as info:
        kernels.natural_gradient(Js, np.ones(3), 0.0, method=method)
    assert info.value.pivot == 2
    assert "natural_gradient" in str(info.value) and "pivot 2 of 3" in str(info.value)


@pytest.mark.parametrize("factor", ["A", "S"])
def test_kfac_not_positive_definite_names_factor(kernels, factor):
    bad = -np.eye(2) if factor == "A" else -np.eye(3)
    args = (GRAD, bad, S) if factor == "A" else (GRAD, A, bad)
    with pytest.raises(NotPositiveDefiniteError) as info:
        kernels.kfac_precondition(*args, 0.01, factored_damping=False)
    message = str(info.value)
    assert f"factor {factor}" in message and "pivot 1 of" in message and "kfac_precondition" in message
    assert info.value.pivot == 1 and info.value.damping == 0.01


def test_kfac_checks_factor_A_first(kernels):
    with pytest.raises(NotPositiveDefiniteError, match="factor A"):
        kernels.kfac_precondition(GRAD, -np.eye(2), -np.eye(3), 0.01)


def test_set_num_threads_rejects_bad_counts():
    for bad in (0, -2, 1.5, "2", None, True):
        with pytest.raises(ValueError, match="set_num_threads"):
            ngdfast.set_num_threads(bad)


# --------------------------------------------------------------------------------------------
# J's finiteness read off the kernel's Gram diagonal (no separate pass over J)

_SCORE_CALLS = {
    "fisher": lambda m, J, g, w, cf: m.fisher(J, w, check_finite=cf),
    "lowrank_solve": lambda m, J, g, w, cf: m.lowrank_solve(J, g, 0.1, w, check_finite=cf),
    "natural_gradient-dense": lambda m, J, g, w, cf: m.natural_gradient(J, g, 0.1, w, method="dense", check_finite=cf),
    "natural_gradient-lowrank": lambda m, J, g, w, cf: m.natural_gradient(
        J, g, 0.1, w, method="lowrank", check_finite=cf
    ),
}


@pytest.mark.parametrize("func", list(_SCORE_CALLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(4, 3), (37, 530), (530, 37)])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["first", "last", "zero-weight-row"])
def test_non_finite_J_is_found_through_the_gram_diagonal(func, dtype, shape, value, where):
    rng = np.random.default_rng(shape[0] + shape[1])
    n, p = shape
    J = rng.standard_normal(shape).astype(dtype)
    w = rng.random(n) + 0.1
    row, col = {"first": (0, 0), "last": (n - 1, p - 1), "zero-weight-row": (n // 2, p // 3)}[where]
    if where == "zero-weight-row":
        w[row] = 0.0
    J[row, col] = value
    g = rng.standard_normal(p).astype(dtype)
    call = _SCORE_CALLS[func]
    name = func.split("-")[0]
    for m in (ngdfast, ngdfast.reference):
        with pytest.raises(ValueError, match=f"{name}: J contains NaN or Inf") as info:
            call(m, J, g, w, True)
        message = str(info.value)
    with pytest.raises(ValueError) as both:  # J and g both bad: J is named, as in the reference
        call(ngdfast, J, np.full(p, np.nan, dtype), w, True)
    assert str(both.value) == message


@pytest.mark.parametrize("func", list(_SCORE_CALLS))
@pytest.mark.parametrize("dtype, scale", [(np.float64, 1e200), (np.float32, 1e25)])
def test_finite_J_whose_gram_overflows_raises_overflow(func, dtype, scale):
    # A finite J with squares beyond the dtype's range: not "contains NaN or Inf", not
    # "increase the damping", and never Inf, NaN, zeros or g / damping as an answer.
    # fisher with check_finite=False returns the floats as they fall (non-finite entries).
    rng = np.random.default_rng(5)
    J = (rng.standard_normal((6, 5)) * scale).astype(dtype)
    g = rng.standard_normal(5).astype(dtype)
    call = _SCORE_CALLS[func]
    for m in (ngdfast, ngdfast.reference):
        for cf in (True, False):
            if func == "fisher" and not cf:
                with np.errstate(all="ignore"):
                    assert not np.all(np.isfinite(call(m, J, g, None, cf)))
                continue
            with pytest.raises(NumericOverflowError, match="overflows") as info:
                call(m, J, g, None, cf)
            assert "contains NaN or Inf" not in str(info.value)
            assert "increase the damping" not in str(info.value)


@pytest.mark.parametrize("order", ["C", "F"])
def test_overflowing_fisher_leaves_out_untouched(kernels, order):
    out = np.array(np.eye(3) * 2.0 + 0.5, order=order)
    before = out.tobytes(order="A")
    with pytest.raises(NumericOverflowError):
        kernels.fisher(J * 1e160, out=out, decay=0.25)
    assert out.tobytes(order="A") == before


def test_numeric_overflow_error_is_a_value_error_and_an_overflow_error():
    assert issubclass(NumericOverflowError, ValueError)
    assert issubclass(NumericOverflowError, OverflowError)
    assert ngdfast.NumericOverflowError is NumericOverflowError


@pytest.mark.parametrize("call", [
    lambda m, J, g: m.damped_solve(np.eye(3, dtype=np.float32), g, 1e300),
    lambda m, J, g: m.lowrank_solve(J, g, 1e300),
    lambda m, J, g: m.natural_gradient(J, g, 1e300, method="dense"),
    lambda m, J, g: m.kfac_precondition(GRAD.astype(np.float32), A.astype(np.float32), S.astype(np.float32), 1e300,
                                        factored_damping=False),
], ids=["damped", "lowrank", "natural_gradient-dense", "kfac"])
def test_damping_beyond_float32_range_acts_as_infinite(kernels, call):
    # found by tests/test_fuzz.py: the damping is rounded to the data dtype, where 1e300 is +inf;
    # the correctly rounded solution is then 0 (not NaN from inf*0, not an "overflow of J")
    J32 = J.astype(np.float32)
    g32 = G.astype(np.float32)
    x = call(kernels, J32, g32)
    assert x.dtype == np.float32 and np.all(x == 0)
