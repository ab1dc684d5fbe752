"""Exceptions shared by every kernel module."""

import numpy as np


class NotPositiveDefiniteError(np.linalg.LinAlgError):
    """The damped matrix ``F + damping * I`` is not positive definite.

    Attributes
    ----------
    pivot : int
        1-based index of the leading minor whose Cholesky pivot failed.
    damping : float
        The damping that was used.
    """

    def __init__(self, message: str, *, pivot: int = 0, damping: float = 0.0):
        super().__init__(message)
        self.pivot = pivot
        self.damping = damping


class NumericOverflowError(ValueError, OverflowError):
    """A quantity computed from finite inputs does not fit in the data dtype.

    Raised, for example, when the Fisher ``J_wᵀ J_w`` of score rows near 1e160
    overflows float64, or when a solution ``(F + λI)⁻¹ g`` would exceed the largest
    float. The inputs are valid but badly scaled: rescale them (divide J by its
    largest entry and the damping by its square) or compute in float64.

    A ``ValueError`` (the input is unusable as given) and an ``OverflowError`` (the
    arithmetic category), like ``numpy.exceptions.AxisError`` is both a
    ``ValueError`` and an ``IndexError``.
    """
