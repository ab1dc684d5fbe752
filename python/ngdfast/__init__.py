"""ngdfast: natural gradient descent with a compiled C++/Eigen core.

The kernels below are the compiled ones; ``ngdfast.reference`` holds the
pure-NumPy versions with identical semantics (the specification the tests
compare against), and ``ngdfast.cuda`` the optional Numba CUDA versions.
"""

from . import _backend  # selects the compiled tile engine first
from ._backend import get_borrow_blas, get_tile_backend, set_borrow_blas, set_tile_backend
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
    num_threads,
    set_num_threads,
)
from .curvature import DenseFisher, DiagonalFisher, KFACFisher, LowRankFisher
from .optimizer import NaturalGradient, StepInfo, natural_gradient_step
from . import models, reference
from . import _threadpool  # noqa: F401,E402  (threadpoolctl sees and limits ngdfast's pool)

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
    "get_borrow_blas",
    "get_num_threads",
    "get_tile_backend",
    "kfac_precondition",
    "kl_step_size",
    "lowrank_solve",
    "models",
    "natural_gradient",
    "natural_gradient_step",
    "num_threads",
    "reference",
    "set_borrow_blas",
    "set_num_threads",
    "set_tile_backend",
]
