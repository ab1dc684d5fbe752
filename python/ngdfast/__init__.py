"""ngdfast: natural gradient descent with a compiled C++/Eigen core.

The kernels below are the compiled ones; ``ngdfast.reference`` holds the
pure-NumPy versions with identical semantics (the specification the tests
compare against), and ``ngdfast.cuda`` the optional Numba CUDA versions.
"""

from . import _backend  # noqa: F401  (selects the compiled tile engine first)
from ._errors import NotPositiveDefiniteError, NumericOverflowError
from ._precision import SolveInfo
from ._kernels import (
    damped_solve,
    fisher,
    get_num_threads,
    kfac_precondition,
    kl_step_size,
    lowrank_solve,
    natural_gradient,
    set_num_threads,
)
from .curvature import DenseFisher, DiagonalFisher, KFACFisher, LowRankFisher
from .optimizer import NaturalGradient, StepInfo, natural_gradient_step
from . import models, reference

__version__ = "0.1.0"

__all__ = [
    "DenseFisher",
    "DiagonalFisher",
    "KFACFisher",
    "LowRankFisher",
    "NaturalGradient",
    "NotPositiveDefiniteError",
    "NumericOverflowError",
    "SolveInfo",
    "StepInfo",
    "damped_solve",
    "fisher",
    "get_num_threads",
    "kfac_precondition",
    "kl_step_size",
    "lowrank_solve",
    "models",
    "natural_gradient",
    "natural_gradient_step",
    "reference",
    "set_num_threads",
]
