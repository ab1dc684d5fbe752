r"""How the compiled kernels cut their work, chosen at run time for the BLAS kernels in use.

The blocked kernels of ``csrc/`` (the Gram products of ``fisher`` and of the Woodbury
solves, the blocked Cholesky of every dense solve) are made of tile products run by the
tile engine (``ngdfast._backend``): ngdfast's private OpenBLAS, whose kernels are chosen
for the running CPU when it loads, or Eigen. OpenBLAS names the kernel set it chose, its
*core type* (``openblas_get_corename``: ``Haswell`` on an AVX2 CPU, ``SkylakeX`` on an
AVX-512 one, or whichever ``OPENBLAS_CORETYPE`` forces), and each core type comes with its
own GEMM blocking (``param.h``): a product's left operand is packed ``GEMM_P`` rows at a
time, and the product runs in passes ``GEMM_Q`` deep over the contraction, updating C once
per pass. The right tile sizes follow from that blocking and from the CPU's caches, so
they are derived here, once per process and again whenever the engine changes
(:func:`ngdfast.set_tile_backend`), never taken from constants measured under one core
type (issue 23: every blocking constant had been tuned under ``OPENBLAS_CORETYPE=Haswell``,
and with the native ``SkylakeX`` kernels the float64 Fisher fell from 0.76 to 0.38 of the
GEMM rate).

Per dtype, with :math:`(P_b, Q_b)` the blocking of the core type (:data:`OPENBLAS_BLOCKING`;
a core type not listed, and the Eigen engine, take :data:`DEFAULT_BLOCKING`) and
:math:`L_2` the per-core L2 cache (Linux sysfs; 1 MiB when it cannot be read):

==================  ====================================================================
``gram_depth``      :math:`Q_b`. The Gram of an n x n output over a contraction of k runs
                    in *tall blocks* (column panels cut into blocks of many rows, which
                    amortise the packing) when the BLAS's passes over k are at least 3/4
                    of :math:`Q_b` deep, in *square tiles* otherwise. A tall block's
                    buffer is larger than the caches and the BLAS writes it once per
                    pass: shallow passes make that traffic, not the arithmetic, the bound
                    (measured with Haswell kernels by shortening k: square tiles took
                    0.89 of the tall blocks' CPU time at k = 128, 1.12 at k = 512).
``gram_square``     the side s of a square tile whose buffer fills half of
                    :math:`L_2` (:math:`s^2 \cdot` itemsize :math:`\le L_2 / 2`), a
                    multiple of 8 in [64, 512]: it stays in L2 while the BLAS updates it.
``gram_panel``      :math:`\tfrac32 Q_b` (rounded to 8): width of a tall block's panel,
                    the right operand packed once per block.
``gram_rows``       :math:`4 P_b`: rows of a tall block, four packed left blocks per
                    packed right operand.
``gram_split``      ``gram_panel``: outputs up to this size split the contraction instead.
``chol_panel``      :math:`\tfrac34 Q_b` (rounded down to 16) of the float64 blocking, for
                    both dtypes: the inner dimension of the blocked Cholesky's update
                    products, one pass each (float32 with its own blocking measured 5 %
                    slower under Haswell kernels).
``chol_rows``       :math:`\max(P_b, 2\,` ``chol_panel`` :math:`)`, float64 blocking: the row
                    chunk of its update and solve tasks.
==================  ====================================================================

With Haswell's blocking (float64 ``GEMM_P`` 512, ``GEMM_Q`` 256) these give the sizes
measured best under those kernels (panels of 384, blocks of 2048 rows, Cholesky panels of
192 and row chunks of 512).

The mixed-precision crossovers (``ngdfast._precision``) depend on the kernels' width too:
the float32 factor halves the factorisation's time, and the refinement's passes over J or
F, which do not get faster with wider vectors, must cost less than that. With 512-bit
kernels (:data:`WIDE_CORES`) a Woodbury solve refines from N = 512 instead of 128 (issue
23 measured the mixed path at 0.72 of the float64 one at N = 256, P = 16384, under
``SkylakeX``).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["DEFAULT_BLOCKING", "OPENBLAS_BLOCKING", "TileProfile", "apply", "current", "derive", "detect"]

#: ``{core type (lower case): {dtype: (GEMM_P, GEMM_Q)}}`` of OpenBLAS's x86-64 kernels
#: (``param.h``, 0.3.28; ``Zen`` runs the Haswell kernels).
OPENBLAS_BLOCKING: dict[str, dict[str, tuple[int, int]]] = {
    "haswell": {"float64": (512, 256), "float32": (320, 320)},
    "zen": {"float64": (512, 256), "float32": (320, 320)},
    "skylakex": {"float64": (192, 384), "float32": (448, 448)},
    "cooperlake": {"float64": (192, 384), "float32": (640, 320)},
    "sapphirerapids": {"float64": (192, 384), "float32": (640, 320)},
    "sandybridge": {"float64": (512, 256), "float32": (768, 384)},
}
#: The blocking assumed for a core type not in :data:`OPENBLAS_BLOCKING` and for Eigen's tiles.
DEFAULT_BLOCKING = OPENBLAS_BLOCKING["haswell"]
#: Core types whose kernels use 512-bit vectors (AVX-512).
WIDE_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
#: The L2 size assumed when the CPU's cannot be read.
DEFAULT_L2 = 1 << 20

#: ``precision="auto"`` thresholds (``ngdfast._precision``) by kernel width.
MIXED_THRESHOLDS = {
    "narrow": {"mixed_min_dense": 512, "mixed_min_samples": 128, "mixed_min_params": 2048},
    "wide": {"mixed_min_dense": 512, "mixed_min_samples": 512, "mixed_min_params": 2048},
}

_ITEMSIZE = {"float64": 8, "float32": 4}


@dataclass(frozen=True)
class TileProfile:
    """The blocking chosen for one tile engine, and what it was derived from.

    ``tiles``: per dtype, the fields of the core's ``Tiles`` (``csrc/ngdfast/tiles.hpp``);
    ``crossovers``: the mixed-precision thresholds of ``ngdfast._precision``.
    """

    engine: str  #: "blas" (the private OpenBLAS) or "eigen"
    core: str  #: the tile library's core type ("" for Eigen)
    blocking: str  #: where (GEMM_P, GEMM_Q) came from: the core type, or the defaults and why
    l2_bytes: int
    l2_source: str  #: "sysfs", "sysconf" or "default"
    tiles: dict[str, dict[str, int]] = field(default_factory=dict)
    crossovers: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: what the sizes were derived from, and the float64 ones."""
        t = self.tiles["float64"]
        engine = f"OpenBLAS {self.core or '?'}" if self.engine == "blas" else "Eigen"
        return (f"{engine} tiles ({self.blocking}; L2 {self.l2_bytes >> 10} KiB from {self.l2_source}): float64 "
                f"Gram tall blocks {t['gram_rows']}x{t['gram_panel']} for passes >= 3/4 of {t['gram_depth']} deep, "
                f"else square {t['gram_square']}; Cholesky panel {t['chol_panel']}, rows {t['chol_rows']}; "
                f"mixed precision from P >= {self.crossovers['mixed_min_dense']} (dense), "
                f"N >= {self.crossovers['mixed_min_samples']} (Woodbury)")

    def as_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "core": self.core, "blocking": self.blocking, "l2_bytes": self.l2_bytes,
                "l2_source": self.l2_source, "tiles": self.tiles, "crossovers": self.crossovers}


def _round(value: float, step: int) -> int:
    return max(step, int(value) // step * step)


def _dtype_tiles(p_block: int, q_block: int, itemsize: int, l2: int, chol: tuple[int, int]) -> dict[str, int]:
    square = int((l2 / 2 / itemsize) ** 0.5)
    square = min(512, max(64, square // 8 * 8))
    panel = _round(1.5 * q_block, 8)
    rows = max(4 * p_block, panel)
    return {
        "gram_split": panel,
        "gram_panel": panel,
        "gram_rows": rows,
        "gram_square": square,
        "gram_depth": q_block,
        "chol_panel": chol[0],
        "chol_rows": chol[1],
    }


def derive(engine: str, core: str, l2_bytes: Optional[int], l2_source: str = "given") -> TileProfile:
    """The profile of tile engine ``engine`` ("blas" or "eigen") whose library reports core type
    ``core``, on a CPU with ``l2_bytes`` of L2 per core (None: unknown). Pure: no library is asked."""
    key = core.strip().lower() if engine == "blas" else ""
    if key in OPENBLAS_BLOCKING:
        blocking, how = OPENBLAS_BLOCKING[key], f"{core} blocking"
    else:
        blocking = DEFAULT_BLOCKING
        how = "Eigen: default blocking" if engine != "blas" else f"core type {core or '?'} unknown: default blocking"
    if not l2_bytes or l2_bytes <= 0:
        l2_bytes, l2_source = DEFAULT_L2, "default"
    p64, q64 = blocking["float64"]
    chol_panel = _round(0.75 * q64, 16)
    chol = (chol_panel, max(p64, 2 * chol_panel))
    tiles = {dt: _dtype_tiles(*blocking[dt], _ITEMSIZE[dt], l2_bytes, chol) for dt in ("float64", "float32")}
    width = "wide" if key in WIDE_CORES else "narrow"
    return TileProfile(engine, core if engine == "blas" else "", how, int(l2_bytes), l2_source, tiles,
                       dict(MIXED_THRESHOLDS[width]))


def _parse_size(text: str) -> Optional[int]:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in ("K", "M", "G") else text
    try:
        value = int(digits) * scale
    except ValueError:
        return None
    return value if value > 0 else None


def l2_cache() -> tuple[Optional[int], str]:
    """``(bytes, source)``: the L2 cache of CPU 0 from Linux sysfs, else ``os.sysconf``, else (None, "default")."""
    for folder in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(os.path.join(folder, "level")) as fh:
                level = fh.read().strip()
            with open(os.path.join(folder, "type")) as fh:
                kind = fh.read().strip()
            with open(os.path.join(folder, "size")) as fh:
                size = _parse_size(fh.read())
        except OSError:
            continue
        if level == "2" and kind in ("Unified", "Data") and size:
            return size, "sysfs"
    try:
        size = os.sysconf("SC_LEVEL2_CACHE_SIZE")
    except (AttributeError, ValueError, OSError):
        size = 0
    return (int(size), "sysconf") if size and size > 0 else (None, "default")


def detect() -> TileProfile:
    """The profile of the tile engine running now: its core type (``openblas_get_corename`` of
    ngdfast's private OpenBLAS, as the compiled core read it at load) and the CPU's L2."""
    from . import _core

    info = _core.build_info()
    l2, source = l2_cache()
    return derive(info["tile_backend"], info.get("blas_corename") or "", l2, source)


_current: Optional[TileProfile] = None


def apply(profile: TileProfile) -> None:
    """Hand ``profile``'s tile sizes to the compiled core; :func:`current` returns it from then on."""
    global _current
    from . import _core

    for dtype, values in profile.tiles.items():
        _core.set_tiles(dtype, values)
    _current = profile


def current() -> Optional[TileProfile]:
    """The profile in use (None before the compiled core was set up: e.g. the reference alone)."""
    return _current
