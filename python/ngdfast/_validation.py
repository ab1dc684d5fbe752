"""Argument checks shared by every kernel module.

``ngdfast.reference``, the compiled wrappers in ``ngdfast._kernels`` and
``ngdfast.cuda`` all validate through this module, so one bad input raises the
same exception with the same message whichever backend runs it (the tests
check this).  Messages start with the public function's name and name the
argument and the shapes involved.

Two layers:

* building blocks, one per argument kind (:func:`real_array`, :func:`matrix_shape`,
  :func:`rhs`, :func:`score_rows`, :func:`finite_vector`, :func:`nonnegative`,
  :func:`positive`, :func:`optional_positive`, :func:`integer`, :func:`decay_arg`,
  :func:`normalized_weights`, :func:`check_out`, :func:`require_finite`,
  :func:`not_positive_definite`, :func:`overflow`, ...), used alike by the kernels,
  the curvature objects and the optimizer (``func`` names the public callable,
  e.g. ``"DenseFisher.update"``);
* one ``<kernel>_args`` function per kernel that runs the checks in a fixed
  order and returns the normalised arguments (one float dtype for all data
  arrays, weights normalised to sum 1, ``g`` as a (P, K) matrix).

Data arrays are only touched through ``.ndim``, ``.shape``, ``.dtype``, the
``all_finite`` callable and the ``cast`` callable, so device arrays (anything
with ``__cuda_array_interface__``) pass through unconverted when the caller
supplies device versions of those two callables.  Weights are small and are
always normalised on the host.

Dtype rules: float32 and float64 are kept, float16 becomes float32, bool and
integers become float64, arrays of different float dtypes promote to the wider
one, weights take the data dtype; complex, object, string, structured and
extended-precision (longdouble) data raise ``TypeError``.

The checks are written for the compiled wrappers' fast path (a few
microseconds at P = 64): dtype comparisons, no copies of float32/float64
inputs, no per-element Python loops.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np

from . import _policy
from ._errors import NotPositiveDefiniteError, NumericOverflowError
from ._settings import MAX_THREADS

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)

#: ``all_finite(a) -> bool``: True when no element of ``a`` is NaN or Inf.
AllFinite = Callable[[Any], bool]
#: ``cast(a, dtype) -> array``: ``a`` converted to ``dtype``, no copy when it already is.
Cast = Callable[[Any, np.dtype], Any]

#: Method names accepted by ``natural_gradient``.
METHODS = ("auto", "dense", "lowrank")

#: Precision names accepted by the solves (see ``ngdfast._precision``).
PRECISIONS = ("auto", "double", "mixed")

_FLOAT64_MAX = float(np.finfo(np.float64).max)

_REJECTED_KINDS = {
    "c": "complex",
    "O": "object",
    "U": "string",
    "S": "bytes",
    "V": "structured",
    "M": "datetime",
    "m": "timedelta",
}


# --------------------------------------------------------------------------------------------
# finiteness and casting callables


def numpy_all_finite(a: np.ndarray) -> bool:
    """``all_finite`` for the reference: a NumPy reduction (allocates a boolean temporary)."""
    return bool(np.isfinite(a).all())


def astype(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``cast`` for NumPy arrays: a view when ``a`` already has ``dtype``, else one copy."""
    return a if a.dtype == dtype else a.astype(dtype)


# --------------------------------------------------------------------------------------------
# arrays and dtypes


def float_dtype(dtype: np.dtype, func: str, name: str) -> np.dtype:
    """The float dtype a data array of ``dtype`` is computed in.

    Raises
    ------
    TypeError
        For complex, object, string, structured, datetime and extended-precision data.
    """
    kind = dtype.kind
    if kind == "f":
        size = dtype.itemsize
        if size == 8:
            return FLOAT64
        if size <= 4:  # float16 is computed in float32
            return FLOAT32
        raise TypeError(
            f"{func}: {name} has dtype {dtype} (extended precision), which is not supported; "
            "convert it to float64"
        )
    if kind in "biu":
        return FLOAT64
    what = _REJECTED_KINDS.get(kind, "non-numeric")
    raise TypeError(
        f"{func}: {name} has {what} dtype {dtype}; expected real numbers (float32, float64 or integers)"
    )


def real_array(x: Any, func: str, name: str) -> Tuple[Any, np.dtype]:
    """``x`` as an array (lists are converted, NumPy and device arrays are kept) and its float dtype.

    Returns
    -------
    (array, dtype)
        ``array`` is ``x`` itself when it is an ``np.ndarray`` or a device array
        (``__cuda_array_interface__``), else ``np.asarray(x)``; ``dtype`` is the float dtype
        it is computed in (see :func:`float_dtype`).
    """
    if type(x) is not np.ndarray and not hasattr(x, "__cuda_array_interface__"):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{func}: {name} could not be converted to an array ({exc})") from None
    dt = x.dtype
    if dt is FLOAT64 or dt is FLOAT32:  # fast path: the common dtypes are singletons
        return x, dt
    return x, float_dtype(dt, func, name)


def wider(*dtypes: np.dtype) -> np.dtype:
    """The result dtype of data arrays computed in ``dtypes``: float64 if any is, else float32."""
    for dt in dtypes:
        if dt == FLOAT64:
            return FLOAT64
    return FLOAT32


def matrix_shape(a: Any, func: str, name: str, dims: str) -> Tuple[int, int]:
    """Check that ``a`` is a non-empty 2-D array and return its shape.

    ``dims`` is the expected shape in symbols, e.g. ``"(N, P)"``, used in the message.
    """
    if a.ndim != 2:
        raise ValueError(f"{func}: {name} must be 2-D {dims}, got shape {tuple(a.shape)}")
    rows, cols = a.shape
    if rows == 0 or cols == 0:
        raise ValueError(f"{func}: {name} is empty: expected {dims} with both sizes >= 1, got shape {tuple(a.shape)}")
    return rows, cols


def square_shape(a: Any, size: int, func: str, name: str, dims: str, against: str) -> None:
    """Check that ``a`` has shape (size, size); ``against`` says where ``size`` comes from."""
    if a.ndim != 2 or a.shape[0] != size or a.shape[1] != size:
        raise ValueError(
            f"{func}: {name} must have shape {dims} = ({size}, {size}) to match {against}, "
            f"got shape {tuple(a.shape)}"
        )


def rhs(g: Any, p: int, func: str, against: str) -> Tuple[Any, bool]:
    """Check a right-hand side against P rows and return it as a (P, K) matrix.

    Returns
    -------
    (G, vector)
        ``G`` is ``g`` itself when 2-D, a (P, 1) view when 1-D; ``vector`` says which, so the
        caller returns a result of ``g``'s shape.
    """
    ndim = g.ndim
    if ndim == 1:
        if g.shape[0] != p:
            raise ValueError(f"{func}: g must have P = {p} rows to match {against}, got shape {tuple(g.shape)}")
        return g.reshape(p, 1), True
    if ndim == 2:
        if g.shape[0] != p or g.shape[1] == 0:
            raise ValueError(
                f"{func}: g must have shape (P, K) with P = {p} to match {against} and K >= 1, "
                f"got shape {tuple(g.shape)}"
            )
        return g, False
    raise ValueError(f"{func}: g must be 1-D (P,) or 2-D (P, K), got shape {tuple(g.shape)}")


def require_finite(a: Any, func: str, name: str, all_finite: AllFinite) -> None:
    """Raise ``ValueError`` when ``a`` holds NaN or Inf (integer data is skipped: always finite)."""
    if a.dtype.kind == "f" and not all_finite(a):
        raise ValueError(
            f"{func}: {name} contains NaN or Inf (shape {tuple(a.shape)}); "
            "pass check_finite=False only if you know it cannot"
        )


def cast_all(named: Sequence[Tuple[Any, str]], dtype: np.dtype, check_finite: bool, func: str,
             all_finite: AllFinite, cast: Cast = astype) -> list:
    """Each array of ``(array, name)`` cast to ``dtype``; with ``check_finite`` each is then
    checked for NaN/Inf in the order given (the first non-finite one is named)."""
    arrays = [cast(a, dtype) for a, _ in named]
    if check_finite:
        for a, (_, name) in zip(arrays, named):
            require_finite(a, func, name, all_finite)
    return arrays


def score_rows(J: Any, p: int, dtype: np.dtype, func: str, name: str = "J") -> np.ndarray:
    """Rows of statistics for a running estimate of P columns, cast to its storage ``dtype``.

    Shape (N, P) with N >= 1; dtype rules of :func:`real_array`.  Finiteness is the
    caller's check (``require_finite``), done where the rows are read anyway.  A cast
    to a narrower float that turns finite values into Inf is an overflow, not bad data.

    Raises
    ------
    TypeError
        Complex, object, string or extended-precision rows.
    ValueError
        Wrong shape or no rows.
    NumericOverflowError
        Finite rows that do not fit in ``dtype``.
    """
    J, src = real_array(J, func, name)
    if J.ndim != 2 or J.shape[1] != p:
        raise ValueError(f"{func}: {name} must have shape (N, P) with P = {p}, got shape {tuple(J.shape)}")
    if J.shape[0] == 0:
        raise ValueError(f"{func}: {name} is empty: expected (N, P) with N >= 1, got shape {tuple(J.shape)}")
    dtype = np.dtype(dtype)
    if J.dtype == dtype:
        return J
    with np.errstate(over="ignore"):
        cast = J.astype(dtype)
    if dtype.itemsize < J.dtype.itemsize and J.dtype.kind == "f" and not numpy_all_finite(cast):
        if numpy_all_finite(J):
            raise NumericOverflowError(
                f"{func}: {name} is finite but overflows {dtype} (the estimate's dtype), max |{name}| = "
                f"{float(np.max(np.abs(J))):.3g}; rescale it or use dtype=float64"
            )
    return cast


def finite_vector(g: Any, p: Optional[int], func: str, name: str, *, matrix: bool = True) -> np.ndarray:
    """A finite right-hand side: (P,), or (P, K) when ``matrix``; P free when ``p`` is None.

    Returned as an array in its own float dtype (no copy for float32/float64 arrays).
    """
    g, dtype = real_array(g, func, name)
    ok = g.ndim == 1 or (matrix and g.ndim == 2 and g.shape[1] >= 1)
    if not ok or (p is not None and g.shape[0] != p) or g.shape[0] == 0:
        want = "(P,)" if p is None else f"({p},)"
        if matrix:
            want += " or " + ("(P, K)" if p is None else f"({p}, K)")
        raise ValueError(f"{func}: {name} must have shape {want}, got shape {tuple(g.shape)}")
    g = astype(g, dtype)
    require_finite(g, func, name, numpy_all_finite)
    return g


def overflow(func: str, what: str, dtype: Any) -> NumericOverflowError:
    """The exception for ``what``, computed from finite inputs, overflowing ``dtype``."""
    dtype = np.dtype(dtype)
    wider = " or compute in float64" if dtype != FLOAT64 else ""
    return NumericOverflowError(
        f"{func}: {what} overflows {dtype} although the inputs are finite; rescale them "
        f"(e.g. divide J by max|J| and the damping by its square){wider}"
    )


#: ``what`` for :func:`overflow` and :func:`scores_not_finite`: the Gram matrices of score rows.
FISHER_GRAM = "the Fisher F = J_w^T J_w"
SAMPLE_GRAM = "the sample-space Gram matrix J_w J_w^T"
SOLUTION = "the solution (F + damping*I)^-1 g (or an intermediate of its computation)"
KFAC_RESULT = "the preconditioned gradient S~^-1 grad A~^-1"


def scores_not_finite(J: Any, func: str, gram: str, all_finite: AllFinite, name: str = "J") -> ValueError:
    """The error for a Gram matrix of ``J`` with a non-finite diagonal (returned, so callers raise it).

    Its diagonal (Σ_p or Σ_i of squares) is non-finite exactly when J holds NaN/Inf, or when
    the squares of a finite J overflow: J is scanned to tell which (``ValueError`` from
    :func:`require_finite`, else :class:`NumericOverflowError`).  This scan runs only on
    this error path, whatever ``check_finite`` said.
    """
    require_finite(J, func, name, all_finite)
    return gram_overflow(func, gram, name, J.dtype)


def gram_overflow(func: str, gram: str, name: str, dtype: Any) -> NumericOverflowError:
    """:func:`overflow` of the Gram matrix ``gram`` of the finite rows ``name``."""
    return overflow(func, f"{gram} of {name}", dtype)


def solution_not_finite(func: str, what: str, dtype: Any, inputs: Any, all_finite: AllFinite) -> ValueError:
    """The error for a non-finite result: the first non-finite input ``(array, name)`` named by
    :func:`require_finite` (possible with ``check_finite=False``), else an overflow of ``what``."""
    for a, name in inputs:
        require_finite(a, func, name, all_finite)
    return overflow(func, what, dtype)


def finite_solution(X: Any, func: str, inputs: Any, what: str = SOLUTION, *, all_finite: AllFinite) -> Any:
    """X, unless it holds NaN/Inf: then :func:`solution_not_finite` (a non-finite input named,
    else the overflow of ``what``)."""
    if not all_finite(X):
        raise solution_not_finite(func, what, X.dtype, inputs, all_finite)
    return X


# --------------------------------------------------------------------------------------------
# scalars


def real_scalar(x: Any, func: str, name: str) -> float:
    """``x`` as a Python float; ``TypeError`` unless it is a real number (or 0-d real array)."""
    if type(x) is float or type(x) is int:
        return float(x)
    if isinstance(x, numbers.Real):
        return float(x)
    if isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "biuf":
        return float(x)
    raise TypeError(f"{func}: {name} must be a real number, got {type(x).__name__} {x!r}")


def nonnegative(x: Any, func: str, name: str) -> float:
    """A finite real number >= 0, else ``ValueError``."""
    v = real_scalar(x, func, name)
    if not (0.0 <= v < math.inf):
        raise ValueError(f"{func}: {name} must be a finite number >= 0, got {v!r}")
    return v


def positive(x: Any, func: str, name: str, why: str = "") -> float:
    """A finite real number > 0, else ``ValueError`` (``why`` is appended to the message)."""
    v = real_scalar(x, func, name)
    if not (0.0 < v < math.inf):
        raise ValueError(f"{func}: {name} must be a finite number > 0{why}, got {v!r}")
    return v


def decay_arg(decay: Any, func: str, *, has_out: bool = True, running: bool = False, name: str = "decay") -> float:
    """EMA decay of ``F <- decay*F + (1 - decay)*F_batch``.

    For the ``fisher`` kernel (``running=False``) decay is in [0, 1], and non-zero only
    when there is an ``out`` to decay; decay = 1 is a legal no-op on ``out``.  For a
    running estimate (``running=True``: the curvature objects) decay is in [0, 1): with
    decay = 1 every update after the first would be discarded, so the estimate would
    never change. ``name``: the argument's name in messages (a momentum is such a decay too).
    """
    d = real_scalar(decay, func, name)
    if running:
        if not (0.0 <= d < 1.0):
            raise ValueError(
                f"{func}: {name} must be in [0, 1) for a running estimate ({name} = 1 would never "
                f"update it), got {d!r}"
            )
        return d
    if not (0.0 <= d <= 1.0):
        raise ValueError(f"{func}: decay must be in [0, 1], got {d!r}")
    if d != 0.0 and not has_out:
        raise ValueError(
            f"{func}: decay={d!r} needs out= (the running estimate F <- decay*F + (1 - decay)*F_batch "
            "is updated in place)"
        )
    return d


def optional_positive(x: Any, func: str, name: str) -> Optional[float]:
    """None, or a real number > 0 where +inf means "no bound" (e.g. ``max_step``)."""
    if x is None:
        return None
    v = real_scalar(x, func, name)
    if not v > 0.0:  # NaN fails too
        raise ValueError(f"{func}: {name} must be > 0 (or None for no bound), got {v!r}")
    return v


def integer(x: Any, func: str, name: str, minimum: int = 1) -> int:
    """A count: an integer by ``operator.index`` (so not 2.5, "3" or True), >= ``minimum``.

    Raises
    ------
    TypeError
        Not an integer (floats, strings, bools and None included).
    ValueError
        Below ``minimum``.
    """
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{func}: {name} must be an integer >= {minimum}, got bool {x!r}")
    try:
        k = operator.index(x)
    except TypeError:
        raise TypeError(f"{func}: {name} must be an integer >= {minimum}, got {type(x).__name__} {x!r}") from None
    if k < minimum:
        raise ValueError(f"{func}: {name} must be an integer >= {minimum}, got {k}")
    return int(k)


def open_unit(x: Any, func: str, name: str) -> float:
    """A real number in the open interval (0, 1) (a relative tolerance), else ``ValueError``."""
    v = real_scalar(x, func, name)
    if not 0.0 < v < 1.0:  # NaN fails too
        raise ValueError(f"{func}: {name} must lie in (0, 1), got {v!r}")
    return v


def damping_range(min_damping: Any, max_damping: Any, func: str) -> Tuple[float, float]:
    """Bounds of an adaptive damping: ``0 < min_damping <= max_damping < inf``."""
    lo = positive(min_damping, func, "min_damping")
    hi = positive(max_damping, func, "max_damping")
    if lo > hi:
        raise ValueError(f"{func}: min_damping {lo!r} > max_damping {hi!r}")
    return lo, hi


def damping_factors(decrease: Any, increase: Any, func: str) -> Tuple[float, float]:
    """Levenberg-Marquardt factors of an adaptive damping: ``0 < decrease < 1 < increase < inf``."""
    dec = real_scalar(decrease, func, "damping_decrease")
    inc = real_scalar(increase, func, "damping_increase")
    if not 0.0 < dec < 1.0 < inc < math.inf:
        raise ValueError(f"{func}: need 0 < damping_decrease < 1 < damping_increase < inf, got {dec!r} and {inc!r}")
    return dec, inc


def storage_dtype(dtype: Any, func: str) -> np.dtype:
    """The dtype a running estimate is kept in: float32 or float64, else ``TypeError``."""
    dt = np.dtype(dtype)
    if dt != FLOAT32 and dt != FLOAT64:
        raise TypeError(f"{func}: dtype must be float32 or float64, got {dt}")
    return dt


def layer_shapes_arg(layer_shapes: Any, func: str) -> list:
    """K-FAC layer shapes: a non-empty sequence of integer pairs (out, in), each >= 1."""
    shapes = []
    for l, shape in enumerate(layer_shapes):
        if len(shape) != 2:
            raise ValueError(f"{func}: layer_shapes[{l}] must be a pair (out, in), got {tuple(shape)!r}")
        shapes.append(tuple(integer(k, func, f"layer_shapes[{l}][{i}]") for i, k in enumerate(shape)))
    if not shapes:
        raise ValueError(f"{func}: layer_shapes must hold at least one (out, in) layer")
    return shapes


def precision_arg(precision: Any, func: str) -> str:
    """``precision`` of the solves: one of :data:`PRECISIONS`."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{func}: precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def num_threads_arg(n: Any, func: str = "set_num_threads") -> int:
    """A thread count: an integer from 1 to ``MAX_THREADS`` (1024), else ``ValueError``."""
    if isinstance(n, bool):
        raise ValueError(f"{func}: n must be an integer >= 1, got {n!r}")
    try:
        k = operator.index(n)
    except TypeError:
        raise ValueError(f"{func}: n must be an integer >= 1, got {type(n).__name__} {n!r}") from None
    if not 1 <= k <= MAX_THREADS:
        raise ValueError(f"{func}: n must be an integer from 1 to {MAX_THREADS}, got {k}")
    return k


# --------------------------------------------------------------------------------------------
# weights and out


def _host(x: Any) -> Any:
    # Weights are N numbers: normalise them on the host even when they live on a GPU.
    copy_to_host = getattr(x, "copy_to_host", None)
    return copy_to_host() if copy_to_host is not None else x


def normalized_weights(weights: Any, n: int, dtype: np.dtype, func: str, against: str) -> Optional[np.ndarray]:
    """Check per-row weights and return ``w / sum(w)`` as a new host array of ``dtype``.

    ``None`` (uniform weights ``1/N``) stays ``None``.  The weights are checked whatever
    ``check_finite`` says: they are only N numbers, and a NaN or negative weight would
    silently corrupt the estimate.

    Raises
    ------
    TypeError
        For non-real weights.
    ValueError
        Wrong shape, NaN/Inf, a negative weight, or all weights zero.
    """
    if weights is None:
        return None
    w, _ = real_array(_host(weights), func, "weights")
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"{func}: weights must have shape (N,) = ({n},) to match {against}, got shape {tuple(w.shape)}")
    w64 = np.asarray(w, dtype=np.float64)
    # Two reductions decide the common case; NaN makes both comparisons fail.
    lo = float(w64.min())
    hi = float(w64.max())
    if not (lo >= 0.0 and hi < math.inf):
        if not np.isfinite(w64).all():
            raise ValueError(f"{func}: weights contain NaN or Inf")
        raise ValueError(f"{func}: weights must be >= 0, got a minimum of {lo!r}")
    if hi == 0.0:
        raise ValueError(f"{func}: weights are all zero (the Fisher sum_i w_i j_i j_i^T / sum_i w_i is undefined)")
    if hi > _FLOAT64_MAX / n:  # the sum could overflow: rescale first
        w64 = w64 / hi
    return (w64 / float(w64.sum())).astype(dtype, copy=False)


def _is_contiguous(a: Any) -> bool:
    flags = a.flags
    return bool(flags["C_CONTIGUOUS"] or flags["F_CONTIGUOUS"])


def check_out(out: Any, shape: Tuple[int, ...], dtype: np.dtype, func: str, against: str) -> None:
    """Check an ``out`` array: exact shape and dtype (no casting), C/F contiguous, writeable."""
    if not isinstance(out, np.ndarray) and not hasattr(out, "__cuda_array_interface__"):
        raise TypeError(f"{func}: out must be an array, got {type(out).__name__}")
    if tuple(out.shape) != shape or out.dtype != dtype:
        raise ValueError(
            f"{func}: out must have shape {shape} and dtype {dtype} to match {against}, "
            f"got shape {tuple(out.shape)} and dtype {out.dtype}"
        )
    if not _is_contiguous(out):
        raise ValueError(f"{func}: out must be C- or Fortran-contiguous (it is updated in place)")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError(f"{func}: out is read-only")


# --------------------------------------------------------------------------------------------
# errors from the factorisations


def not_positive_definite(func: str, matrix: str, pivot: int, size: int, damping: float) -> NotPositiveDefiniteError:
    """The exception for a failed Cholesky factorisation (returned, so callers ``raise`` it).

    Parameters
    ----------
    func : str
        Public function name.
    matrix : str
        What was factored, e.g. ``"F + damping*I"``.
    pivot : int
        1-based order of the first leading minor that is not positive definite (LAPACK ``info``).
    size : int
        Order of the factored matrix.
    damping : float
        The damping λ the caller passed.
    """
    return NotPositiveDefiniteError(
        f"{func}: {matrix} is not positive definite: Cholesky failed at pivot {pivot} of {size} "
        f"with damping={damping:.6g}; increase the damping",
        pivot=pivot,
        damping=damping,
    )


#: ``matrix`` descriptions for :func:`not_positive_definite`.
DENSE_MATRIX = "F + damping*I"
SAMPLE_MATRIX = "the sample-space matrix J_w J_w^T + damping*I (N x N)"


def kfac_not_positive_definite(
    func: str, factor: str, pivot: int, size: int, damping: float, damping_a: float, damping_s: float
) -> NotPositiveDefiniteError:
    """:func:`not_positive_definite` for K-FAC factor ``"A"`` or ``"S"``."""
    if factor == "A":
        matrix = f"factor A + damping_a*I (damping_a={damping_a:.6g})"
    else:
        matrix = f"factor S + damping_s*I (damping_s={damping_s:.6g})"
    return not_positive_definite(func, matrix, pivot, size, damping)


# --------------------------------------------------------------------------------------------
# one function per kernel: fixed check order, normalised arguments


def fisher_args(
    J: Any, weights: Any, out: Any, decay: Any, check_finite: bool, all_finite: AllFinite,
    cast: Cast = astype, func: str = "fisher", name: str = "J",
) -> Tuple[Any, Optional[np.ndarray], Any, float]:
    """Validate ``fisher`` arguments; returns ``(J, w, out, decay)``.

    ``J`` is cast to the result dtype, ``w`` is normalised (or None), ``out`` is None or
    checked (shape (P, P), exactly the result dtype, contiguous, writeable).  Finiteness of
    ``J`` and, when ``decay > 0`` (``out`` is read), of ``out`` is checked when
    ``check_finite``.  Nothing is written.
    """
    J, dtype = real_array(J, func, name)
    n, p = matrix_shape(J, func, name, "(N, P)")
    against = f"{name} of shape {tuple(J.shape)}"
    w = normalized_weights(weights, n, dtype, func, against)
    decay = decay_arg(decay, func, has_out=out is not None)
    if out is not None:
        check_out(out, (p, p), dtype, func, against)
    J = cast(J, dtype)
    if check_finite:
        require_finite(J, func, name, all_finite)
        if out is not None and decay > 0.0:
            require_finite(out, func, "out", all_finite)
    return J, w, out, decay


def damped_solve_args(
    F: Any, g: Any, damping: Any, check_finite: bool, all_finite: AllFinite, cast: Cast = astype,
    func: str = "damped_solve",
) -> Tuple[Any, Any, float, bool]:
    """Validate ``damped_solve`` arguments; returns ``(F, G, damping, vector)``.

    ``G`` is g as (P, K); F and G share the promoted dtype.  With ``check_finite`` every
    element of F is checked (also the unread upper triangle: NaN there signals a bug upstream).
    """
    F, tf = real_array(F, func, "F")
    g, tg = real_array(g, func, "g")
    if F.ndim != 2 or F.shape[0] != F.shape[1]:
        raise ValueError(f"{func}: F must be square 2-D (P, P), got shape {tuple(F.shape)}")
    p = F.shape[0]
    if p == 0:
        raise ValueError(f"{func}: F is empty: expected (P, P) with P >= 1, got shape {tuple(F.shape)}")
    G, vector = rhs(g, p, func, f"F of shape {tuple(F.shape)}")
    damping = nonnegative(damping, func, "damping")
    F, G = cast_all([(F, "F"), (G, "g")], wider(tf, tg), check_finite, func, all_finite, cast)
    return F, G, damping, vector


def lowrank_solve_args(
    J: Any, g: Any, damping: Any, weights: Any, check_finite: bool, all_finite: AllFinite,
    cast: Cast = astype, func: str = "lowrank_solve", need_positive: bool = True,
) -> Tuple[Any, Optional[np.ndarray], Any, float, bool]:
    """Validate ``lowrank_solve`` arguments; returns ``(J, w, G, damping, vector)``.

    With ``need_positive`` (the Woodbury solve divides by λ) damping must be > 0, else >= 0.
    """
    J, tj = real_array(J, func, "J")
    g, tg = real_array(g, func, "g")
    n, p = matrix_shape(J, func, "J", "(N, P)")
    against = f"J of shape {tuple(J.shape)}"
    G, vector = rhs(g, p, func, against)
    if need_positive:
        damping = positive(damping, func, "damping", " for the low-rank (Woodbury) solve, which divides by it")
    else:
        damping = nonnegative(damping, func, "damping")
    dtype = wider(tj, tg)
    w = normalized_weights(weights, n, dtype, func, against)
    J, G = cast_all([(J, "J"), (G, "g")], dtype, check_finite, func, all_finite, cast)
    return J, w, G, damping, vector


def natural_gradient_args(
    J: Any, g: Any, damping: Any, weights: Any, method: Any, check_finite: bool, all_finite: AllFinite,
    cast: Cast = astype, func: str = "natural_gradient",
) -> Tuple[Any, Optional[np.ndarray], Any, float, bool, str]:
    """Validate ``natural_gradient`` arguments; returns ``(J, w, G, damping, vector, method)``.

    ``method`` comes back resolved to ``"dense"`` or ``"lowrank"`` (``"auto"`` by
    :func:`ngdfast._policy.choose_method`).
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"{func}: method must be one of {METHODS}, got {method!r}")
    J, w, G, damping, vector = lowrank_solve_args(
        J, g, damping, weights, check_finite, all_finite, cast, func, need_positive=method == "lowrank"
    )
    if method == "auto":
        method = _policy.choose_method(J.shape[0], J.shape[1], J.dtype, damping)
    return J, w, G, damping, vector, method


def kl_step_size_args(
    g: Any, nat_grad: Any, epsilon: Any, max_step: Any, func: str = "kl_step_size"
) -> Tuple[Any, Any, float, Optional[float]]:
    """Validate ``kl_step_size`` arguments; returns ``(g, nat_grad, epsilon, max_step)``.

    g and nat_grad are non-empty arrays of the same shape (any number of dimensions >= 1);
    ε >= 0; ``max_step`` is None or > 0 (+inf allowed: no cap).
    """
    g, _ = real_array(g, func, "g")
    nat_grad, _ = real_array(nat_grad, func, "nat_grad")
    if g.ndim == 0 or g.size == 0:
        raise ValueError(f"{func}: g must be a non-empty array (P,), got shape {tuple(g.shape)}")
    if tuple(g.shape) != tuple(nat_grad.shape):
        raise ValueError(
            f"{func}: g and nat_grad must have the same shape, got {tuple(g.shape)} and {tuple(nat_grad.shape)}"
        )
    epsilon = nonnegative(epsilon, func, "epsilon")
    max_step = optional_positive(max_step, func, "max_step")
    return g, nat_grad, epsilon, max_step


def kfac_args(
    grad: Any, A: Any, S: Any, damping: Any, check_finite: bool, all_finite: AllFinite,
    cast: Cast = astype, func: str = "kfac_precondition",
) -> Tuple[Any, Any, Any, float]:
    """Validate ``kfac_precondition`` arguments; returns ``(grad, A, S, damping)``.

    grad (out, in), A (in, in), S (out, out), one promoted dtype.  With ``check_finite``
    all three are checked for NaN/Inf (O(size) beside O(in^3 + out^3)).
    Split the damping afterwards with :func:`ngdfast._policy.kfac_damping`.
    """
    grad, tg = real_array(grad, func, "grad")
    A, ta = real_array(A, func, "A")
    S, ts = real_array(S, func, "S")
    n_out, n_in = matrix_shape(grad, func, "grad", "(out, in)")
    against = f"grad of shape {tuple(grad.shape)}"
    square_shape(A, n_in, func, "A", "(in, in)", against)
    square_shape(S, n_out, func, "S", "(out, out)", against)
    damping = nonnegative(damping, func, "damping")
    named = [(grad, "grad"), (A, "A"), (S, "S")]
    grad, A, S = cast_all(named, wider(tg, ta, ts), check_finite, func, all_finite, cast)
    return grad, A, S, damping
