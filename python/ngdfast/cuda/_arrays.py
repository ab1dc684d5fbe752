"""Host and device arrays at the boundary of ``ngdfast.cuda``.

Inputs are NumPy arrays (and anything NumPy converts) or device arrays: Numba
device arrays and any object with ``__cuda_array_interface__`` (CuPy arrays,
PyTorch CUDA tensors, ...), which are viewed with ``cuda.as_cuda_array``
without a copy.  Results come back as the kind of the first device argument
(NumPy when every argument is on the host):

==========================  ================================================
first device argument       result
==========================  ================================================
none (all NumPy)            ``numpy.ndarray`` (copied back from the device)
Numba device array          Numba device array
CuPy array                  CuPy array (``cupy.asarray``: a view, no copy)
PyTorch CUDA tensor         tensor on the same device (``torch.as_tensor``: a view)
other CAI object            Numba device array
==========================  ================================================

CuPy and PyTorch are never imported here: a result is wrapped back only when
the argument it follows came from them (so they are already imported).  The
kernels run on the current device's default stream; ``cuda.as_cuda_array``
first synchronises the stream an input's ``__cuda_array_interface__`` names.

:class:`DeviceArg` lets :mod:`ngdfast._validation` check device arrays through
``.ndim``/``.shape``/``.dtype`` without touching their data; :func:`all_finite`
and :func:`cast` are its device-aware callables.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Optional

import numpy as np
from numba import cuda

from .. import _validation as V
from . import _kernels as K
from ._platform import SIMULATOR

if SIMULATOR:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as _SimArray
else:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray as _DeviceNDArray


def is_device(x: Any) -> bool:
    """True for Numba device arrays and objects exposing ``__cuda_array_interface__``."""
    if SIMULATOR and isinstance(x, _SimArray):
        return True
    try:
        return hasattr(x, "__cuda_array_interface__")
    except RuntimeError:
        # torch raises RuntimeError (not AttributeError) for tensors that require grad
        return True


def as_numba(x: Any):
    """The Numba device-array view of a device object (no copy)."""
    if SIMULATOR:
        if isinstance(x, _SimArray):
            return x
        raise TypeError(
            f"ngdfast.cuda: {type(x).__name__} objects cannot be used in Numba's CUDA simulator; "
            "pass NumPy arrays or numba.cuda device arrays"
        )
    if cuda.devicearray.is_cuda_ndarray(x):
        return x
    if type(x).__module__.startswith("torch") and getattr(x, "requires_grad", False):
        x = x.detach()  # same memory; torch refuses to export tensors that require grad
    return cuda.as_cuda_array(x)


class DeviceArg:
    """A device array as :mod:`ngdfast._validation` sees it: metadata, never data.

    Parameters
    ----------
    array : numba device array
        The device memory (a view of the caller's object).
    """

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    @property
    def __cuda_array_interface__(self):
        # only its presence matters to the validation
        return {} if SIMULATOR else self.array.__cuda_array_interface__

    @property
    def shape(self):
        return tuple(self.array.shape)

    @property
    def ndim(self):
        return len(self.array.shape)

    @property
    def size(self):
        return math.prod(self.array.shape)

    @property
    def dtype(self):
        return np.dtype(self.array.dtype)

    @property
    def strides(self):
        return tuple(self.array.strides)

    @property
    def flags(self):
        return self.array.flags

    def reshape(self, *shape):
        # only (P,) -> (P, 1) is asked for (a right-hand side vector)
        if len(shape) == 1 and isinstance(shape[0], tuple):
            shape = shape[0]
        if self.ndim == 1 and tuple(shape) == (self.shape[0], 1):
            return DeviceArg(column_view(self.array))
        return DeviceArg(self.array.reshape(*shape))

    def copy_to_host(self):
        # Numba copies only positive-stride arrays to the host: gather first
        return contiguous(self.array).copy_to_host()


def wrap(x: Any) -> Any:
    """Entry conversion: device objects become :class:`DeviceArg`, the rest is left as is."""
    if x is None or isinstance(x, np.ndarray) or not is_device(x):
        return x
    return DeviceArg(as_numba(x))


def first_device(*xs: Any) -> Optional[Any]:
    """The first argument that lives on the device; it decides the kind of the result."""
    for x in xs:
        if x is not None and not isinstance(x, np.ndarray) and is_device(x):
            return x
    return None


def result(dev, template: Optional[Any]):
    """``dev`` (a Numba device array) as the kind of ``template`` (None: NumPy)."""
    if template is None:
        return dev.copy_to_host()
    module = type(template).__module__.partition(".")[0]
    if module == "cupy" and "cupy" in sys.modules:
        return sys.modules["cupy"].asarray(dev)
    if module == "torch" and "torch" in sys.modules:
        return sys.modules["torch"].as_tensor(dev, device=template.device)
    return dev


# ----------------------------------------------------------------------------------------
# views, allocation, transfers


def column_view(d):
    """(P,) -> (P, 1) view of a 1-D device array, whatever its stride."""
    if SIMULATOR:
        return _SimArray(d._ary.reshape(d.shape[0], 1))
    s = d.strides[0]
    return _DeviceNDArray(shape=(d.shape[0], 1), strides=(s, s), dtype=d.dtype, gpu_data=d.gpu_data)


def transpose_view(d):
    """The transpose of a 2-D device array as a view (Numba's ``.T`` copies)."""
    if SIMULATOR:
        return _SimArray(d._ary.T)
    return _DeviceNDArray(
        shape=tuple(d.shape[::-1]), strides=tuple(d.strides[::-1]), dtype=d.dtype, gpu_data=d.gpu_data
    )


def empty(shape, dtype, order="C"):
    return cuda.device_array(shape, dtype=dtype, order=order)


def upload(a: np.ndarray):
    """A new device array with the contents of host array ``a``."""
    if not (a.flags.c_contiguous or a.flags.f_contiguous):
        a = np.ascontiguousarray(a)
    return cuda.to_device(a)


def device(a: Any):
    """The device array for a validated argument: the caller's memory, or an upload."""
    if isinstance(a, DeviceArg):
        return a.array
    return upload(np.asarray(a))


def contiguous(d):
    """``d`` itself when C-contiguous, else a C-contiguous device copy (any strides, any ndim)."""
    if d.is_c_contiguous():
        return d
    dst = empty(tuple(d.shape), d.dtype)
    if len(d.shape) <= 2:
        launch_copy(d, dst)
    else:  # rare: one 2-D copy per leading index
        for index in np.ndindex(*d.shape[:-2]):
            launch_copy(d[index], dst[index])
    return dst


def device_copy(a: Any):
    """A new C-contiguous device array with the contents of a validated argument.

    Used where a kernel works in place (the right-hand sides): the caller's
    arrays are never written.
    """
    if isinstance(a, DeviceArg):
        src = a.array
        dst = empty(tuple(src.shape), src.dtype)
        launch_copy(src, dst)
        return dst
    return upload(np.ascontiguousarray(a))


def may_share_memory(a, b) -> bool:
    """True when the memory spans of two device arrays overlap."""
    if SIMULATOR:
        return bool(np.may_share_memory(a._ary, b._ary))
    spans = []
    for d in (a, b):
        lo = hi = d.__cuda_array_interface__["data"][0]
        for n, s in zip(d.shape, d.strides):
            if n == 0:
                return False
            if s > 0:
                hi += (n - 1) * s
            else:
                lo += (n - 1) * s
        spans.append((lo, hi + np.dtype(d.dtype).itemsize))
    (lo1, hi1), (lo2, hi2) = spans
    return lo1 < hi2 and lo2 < hi1


def zeros_info():
    """A fresh ``info`` flag (int32, 0 = success)."""
    return cuda.to_device(np.zeros(1, dtype=np.int32))


def geometry(dtype) -> K.Geometry:
    """The tile geometry in use for ``dtype`` (see :func:`ngdfast.cuda._kernels.Geometry`)."""
    return _GEOMETRY[np.dtype(dtype)]


_GEOMETRY = {np.dtype(np.float32): K.FLOAT32, np.dtype(np.float64): K.FLOAT64}


# ----------------------------------------------------------------------------------------
# elementwise launches


def _grid2(shape, geo: K.Geometry):
    bx = min(32, geo.threads)
    by = max(1, geo.threads // bx)
    gx = min(-(-max(shape[1], 1) // bx), geo.max_grid)
    gy = min(-(-max(shape[0], 1) // by), geo.max_grid)
    return (gx, gy), (bx, by)


def _grid1(n, geo: K.Geometry):
    return min(-(-max(n, 1) // geo.threads), geo.max_grid), geo.threads


def launch_copy(src, dst, geo: Optional[K.Geometry] = None):
    """``dst[...] = src`` on the device (dtype conversion on the store, any strides)."""
    geo = geo or geometry(dst.dtype)
    if len(src.shape) == 1:
        grid, block = _grid1(src.shape[0], geo)
        K.copy_1d[grid, block](src, dst)
    else:
        grid, block = _grid2(src.shape, geo)
        K.copy_2d[grid, block](src, dst)


def all_finite(a: Any) -> bool:
    """``all_finite`` for :mod:`ngdfast._validation`: a device reduction for device arrays."""
    if not isinstance(a, DeviceArg):
        return V.numpy_all_finite(a)
    d = a.array
    if a.size == 0:
        return True
    if a.ndim > 2:
        d = contiguous(d).reshape(a.size)
    flag = zeros_info()
    geo = geometry(np.float32 if a.dtype.itemsize <= 4 else np.float64)
    if a.ndim == 1:
        grid, block = _grid1(d.shape[0], geo)
        K.nonfinite_1d[grid, block](d, flag)
    else:
        grid, block = _grid2(d.shape, geo)
        K.nonfinite_2d[grid, block](d, flag)
    return int(flag.copy_to_host()[0]) == 0


def cast(a: Any, dtype: np.dtype) -> Any:
    """``cast`` for :mod:`ngdfast._validation`: device arrays are converted on the device."""
    if not isinstance(a, DeviceArg):
        return V.astype(a, dtype)
    if a.dtype == dtype:
        return a
    src = a.array
    dst = empty(a.shape, dtype)
    launch_copy(src, dst, geometry(dtype))
    return DeviceArg(dst)
