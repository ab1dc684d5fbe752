"""Which CUDA runtime ``ngdfast.cuda`` runs on, checked once at import.

``numba`` and ``numba-cuda`` (the NVIDIA-maintained CUDA target of Numba) are
optional: without them, or without a usable GPU, importing ``ngdfast.cuda``
raises ``ImportError`` with the fix in the message, so callers can write
``try: import ngdfast.cuda`` and fall back to the CPU kernels.  Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1`` set before Numba is imported) counts as
a device: it runs the same kernels on the CPU, slowly, for the tests.
"""

#: How to get the optional dependencies; part of every ImportError message.
EXTRA = "pip install ngdfast[cuda]"

try:
    # numba-cuda first: upstream Numba still ships a deprecated built-in
    # ``numba.cuda`` that we do not support.
    import numba_cuda  # noqa: F401
    from numba import cuda
except ImportError as exc:
    raise ImportError(
        f"ngdfast.cuda needs the optional dependencies numba and numba-cuda: {EXTRA} ({exc})"
    ) from exc

try:
    from numba.cuda.core import config as _config
except ImportError:  # older numba-cuda read Numba's own configuration
    from numba.core import config as _config

#: True when the kernels run in Numba's CUDA simulator (no GPU involved).
SIMULATOR = bool(_config.ENABLE_CUDASIM)

if not SIMULATOR and not cuda.is_available():
    raise ImportError(
        "ngdfast.cuda found no usable CUDA GPU (numba.cuda.is_available() is False: no NVIDIA "
        "driver or no device). Use the CPU kernels in ngdfast instead, or set "
        "NUMBA_ENABLE_CUDASIM=1 before numba is imported to run these kernels in Numba's CPU "
        "simulator (slow; meant for tests)."
    )
