"""ngdfast: natural gradient descent with a compiled C++/Eigen core.

The kernels below are the compiled ones; ``ngdfast.reference`` holds the
pure-NumPy versions with identical semantics (the specification the tests
compare against), and ``ngdfast.cuda`` the optional Numba CUDA versions.
"""

from . import _backend  # selects the compiled tile engine first
from ._backend import get_borrow_blas, get_tile_backend, set_borrow_blas, set_tile_backend
from ._errors import NotPositiveDefiniteError, NumericOverflowError
from ._precision import SolveInfo
from . import _kernels
from ._kernels import *  # noqa: F401,F403  the kernels and the thread settings: _kernels.__all__
from .curvature import DenseFisher, DiagonalFisher, KFACFisher, LowRankFisher
from .optimizer import NaturalGradient, StepInfo, natural_gradient_step
from . import models, reference
from . import _threadpool  # noqa: F401,E402  (threadpoolctl sees and limits ngdfast's pool)

__version__ = "0.1.0"  # the one place: pyproject.toml reads it (tool.scikit-build.metadata.version)

__all__ = sorted(
    [
        *_kernels.__all__,
        "DenseFisher",
        "DiagonalFisher",
        "KFACFisher",
        "LowRankFisher",
        "NaturalGradient",
        "NotPositiveDefiniteError",
        "NumericOverflowError",
        "SolveInfo",
        "StepInfo",
        "get_borrow_blas",
        "get_tile_backend",
        "models",
        "natural_gradient_step",
        "reference",
        "set_borrow_blas",
        "set_tile_backend",
    ]
)
