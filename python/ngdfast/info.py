"""What this installation of ngdfast is: ``python -m ngdfast info``.

Prints the version, how the compiled core was built (compiler, flags, SIMD
instruction sets, tile backend, threads), the BLAS/OpenMP thread pools loaded
in the process (via threadpoolctl when installed) and whether the optional
CUDA backend can be imported. Numba is imported only with ``--cuda``, because
importing it costs seconds and loads its own threading layers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any

import numpy as np

# Environment variables that decide thread counts; shown so an unexpected
# count can be traced to its cause.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NGDFAST_NUM_THREADS",
                    "NGDFAST_TILE_BACKEND", "NGDFAST_BORROW_BLAS")


def _core_info() -> dict[str, Any]:
    try:
        from . import _core
    except ImportError as exc:
        return {"error": f"cannot import ngdfast._core: {exc}"}
    try:
        info = dict(_core.build_info())
    except Exception as exc:  # report a broken build, do not hide the rest
        return {"error": f"_core.build_info() failed: {exc!r}"}
    try:
        info["threads_now"] = _core.get_num_threads()
    except Exception:  # older builds: build_info alone is still useful
        pass
    info["dispatch"] = dispatch_summary(info)
    return info


def dispatch_summary(core: dict[str, Any]) -> str:
    """What was compiled in and what is chosen at run time, in one line."""
    built = "native (-march=native, " if core.get("native") else "portable ("
    built += ", ".join(core.get("simd") or []) or "baseline x86-64/SSE2 only"
    built += ")"
    if core.get("tile_backend") == "blas":
        tiles = f"OpenBLAS tiles, kernels for this CPU chosen at run time ({core.get('blas_corename') or '?'})"
    else:
        tiles = "Eigen tiles, compiled in (" + (", ".join(core.get("simd") or []) or "SSE2") + ")"
    missing = sorted(set(core.get("simd") or []) - set(core.get("cpu") or core.get("simd") or []))
    warn = f"; WARNING: built for {', '.join(missing)}, which this CPU lacks" if missing else ""
    return f"built {built}; {tiles}{warn}"


def _scipy_info() -> dict[str, Any]:
    try:
        import scipy
    except ImportError as exc:
        return {"error": f"not installed ({exc})"}
    return {"version": scipy.__version__}


def _thread_pools() -> list[dict[str, Any]] | str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed (pip install threadpoolctl to list BLAS/OpenMP pools)"
    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's BLAS so its pool is listed too)
    except ImportError:
        pass
    return threadpool_info()


# Which package a thread pool's library came with, from where it is installed:
# several BLAS copies in one process each keep their own threads.
_POOL_OWNERS = (
    ("numpy.libs", "numpy"),
    ("scipy.libs", "scipy"),
    ("scipy_openblas32", "ngdfast tiles (scipy-openblas32)"),
    ("libgomp", "OpenMP (GNU)"),
    ("libomp", "OpenMP (LLVM)"),
    ("libiomp", "OpenMP (Intel)"),
)


def describe_pools(pools: list[dict[str, Any]]) -> list[str]:
    """One line per thread pool loaded in this process (threadpoolctl), with its owner."""
    lines = []
    for pool in pools:
        path = pool.get("filepath") or "?"
        owner = next((who for key, who in _POOL_OWNERS if key in path), path.rsplit("/", 1)[-1])
        if pool.get("internal_api") == "ngdfast":
            owner = "ngdfast pool"
        details = ", ".join(str(pool[k]) for k in ("version", "architecture", "threading_layer") if pool.get(k))
        lines.append(f"{owner:<34} {pool.get('internal_api', '?')} ({details}): {pool.get('num_threads')} threads")
    return lines


def _cuda_info() -> dict[str, Any]:
    """Import ``ngdfast.cuda`` and say why it failed, if it did."""
    try:
        from . import cuda
    except ImportError as exc:
        return {"importable": False, "reason": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # numba raises other errors when the driver is missing or broken
        return {"importable": False, "reason": f"{type(exc).__name__}: {exc}"}
    info: dict[str, Any] = {"importable": True}
    available = getattr(cuda, "is_available", None)
    if callable(available):
        try:
            info["device_available"] = bool(available())
        except Exception as exc:
            info["device_available"] = False
            info["reason"] = f"{type(exc).__name__}: {exc}"
    return info


def _cuda_packages() -> dict[str, str | None]:
    """Versions of the CUDA backend's dependencies from their metadata, without importing them."""
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in ("numba", "numba-cuda"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def collect(check_cuda: bool = False) -> dict[str, Any]:
    """Everything ``info`` prints, as a dictionary (also for ``--json``)."""
    from . import __version__

    data: dict[str, Any] = {
        "ngdfast": __version__,
        "package_path": os.path.dirname(os.path.abspath(__file__)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "scipy": _scipy_info(),
        "core": _core_info(),
        "environment": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "thread_pools": _thread_pools(),
    }
    if check_cuda:
        data["cuda"] = _cuda_info()
    else:
        data["cuda"] = {"checked": False, "installed": _cuda_packages(),
                        "reason": "run with --cuda to import ngdfast.cuda (imports numba)"}
    return data


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items()) or "-"
    return str(value)


def print_report(data: dict[str, Any], out=sys.stdout) -> None:
    print(f"ngdfast {data['ngdfast']}  ({data['package_path']})", file=out)
    print(f"python {data['python']} on {data['platform']}, {data['cpu_count']} CPUs", file=out)
    scipy = data["scipy"]
    print(f"numpy {data['numpy']}, scipy {scipy.get('version') or scipy.get('error')}", file=out)
    print("\ncompiled core (_core.build_info):", file=out)
    core = data["core"]
    width = max((len(k) for k in core), default=0)
    for key, value in core.items():
        print(f"  {key:<{width}}  {_show(value)}", file=out)
    env = data["environment"]
    print("\nthread variables: " + (_show(env) if env else "none set"), file=out)
    pools = data["thread_pools"]
    print("thread pools (threadpoolctl):", file=out)
    if isinstance(pools, str):
        print(f"  {pools}", file=out)
    else:
        for line in describe_pools(pools) or ["none found"]:
            print(f"  {line}", file=out)
    cuda = data["cuda"]
    if not cuda.get("checked", True):
        installed = ", ".join(f"{k} {v or 'not installed'}" for k, v in cuda["installed"].items())
        print(f"\ncuda backend: {installed}; not imported ({cuda['reason']})", file=out)
    elif cuda["importable"]:
        extra = ""
        if "device_available" in cuda:
            extra = ", a CUDA device is available" if cuda["device_available"] else ", but no CUDA device is usable"
        print(f"\ncuda backend: ngdfast.cuda imports{extra}" + (f" ({cuda['reason']})" if "reason" in cuda else ""),
              file=out)
    else:
        print(f"\ncuda backend: ngdfast.cuda is not importable: {cuda['reason']}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ngdfast info", description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help="also import ngdfast.cuda (and numba) and report why it fails")
    parser.add_argument("--json", metavar="PATH", help="write the same information to PATH as JSON")
    args = parser.parse_args(argv)
    data = collect(check_cuda=args.cuda)
    print_report(data)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
    return 0 if "error" not in data["core"] else 1


if __name__ == "__main__":
    sys.exit(main())
