"""ngdfast.cuda: the ngdfast kernels on an NVIDIA GPU, written with Numba CUDA.

Same names, signatures, semantics, argument checks and error messages as
``ngdfast`` (compiled) and ``ngdfast.reference`` (NumPy)::

    fisher(J, weights=None, *, out=None, decay=0.0, check_finite=True)
    damped_solve(F, g, damping, *, check_finite=True, precision="auto", return_info=False)
    lowrank_solve(J, g, damping, weights=None, *, check_finite=True, precision="auto", return_info=False)
    natural_gradient(J, g, damping, weights=None, *, method="auto", check_finite=True,
                     precision="auto", return_info=False)
    kl_step_size(g, nat_grad, epsilon, *, max_step=None)
    kfac_precondition(grad, A, S, damping, *, factored_damping=True, check_finite=True)

``precision`` is validated and reported (``return_info``) but float64 data is
always factored in float64 here: there is no mixed-precision path on the GPU.

Arguments may be NumPy arrays (uploaded, results copied back as NumPy) or
device arrays: Numba device arrays and anything with
``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors), used in place
without copies.  A result is of the kind of the first device argument: a CuPy
array for CuPy input, a tensor for a tensor, a Numba device array otherwise
(see :mod:`ngdfast.cuda._arrays`).  Weights (N numbers) are normalised on the
host; device arrays of other dtypes than float32/float64 are converted on the
device.

Installed with the ``cuda`` extra (``pip install ngdfast[cuda]``: numba and
numba-cuda).  Importing this module raises ImportError without them or
without a usable GPU; ``import ngdfast`` never imports Numba.  With
``NUMBA_ENABLE_CUDASIM=1`` set before Numba is imported, the kernels run in
Numba's CUDA simulator on the CPU (how the test suite checks them).
"""

from ._platform import SIMULATOR  # first: raises ImportError without numba-cuda or a GPU
from . import _api
from ._api import *  # noqa: F401,F403  the kernels: _api.__all__

__all__ = sorted([*_api.__all__, "SIMULATOR", "is_available"])


def is_available() -> bool:
    """Whether the kernels can run now: a usable GPU, or Numba's simulator (see ``SIMULATOR``).

    The module only imports when one of them is there, so this is False only if
    the device went away since (a lost driver, a reset).
    """
    if SIMULATOR:
        return True
    from numba import cuda

    return bool(cuda.is_available())
