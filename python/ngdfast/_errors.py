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
