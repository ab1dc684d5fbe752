"""ngdfast without its optional GPU dependencies.

``import ngdfast`` must never import Numba, and ``import ngdfast.cuda`` must
fail with an ImportError that says how to get it.  Each check runs in a fresh
interpreter in which a ``sys.meta_path`` finder hides numba and numba-cuda, so
the result does not depend on what this test process has already imported.
"""

import os
import textwrap

import pytest

from conftest import run_python as run_source, try_import

HIDE_NUMBA = textwrap.dedent(
    """
    import sys

    class HideNumba:
        \"\"\"Finder that makes numba and numba-cuda look not installed.\"\"\"

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("numba", "numba_cuda", "llvmlite"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, HideNumba())
    """
)


def run_python(code, *, hide_numba, simulator=True):
    env = dict(os.environ)
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    return run_source((HIDE_NUMBA if hide_numba else "") + textwrap.dedent(code), env)


def test_ngdfast_works_without_numba():
    r = run_python(
        """
        import numpy as np
        import ngdfast
        F = ngdfast.fisher(np.arange(6.0).reshape(2, 3))
        x = ngdfast.natural_gradient(np.eye(2, 3), np.ones(3), 0.1)
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ("numba", "numba_cuda"))
        print("ok", F.shape, x.shape, loaded)
        """,
        hide_numba=True,
    )
    assert r.returncode == 0, r.stderr
    assert "ok (3, 3) (3,) []" in r.stdout


def test_cuda_import_error_names_the_extra():
    r = run_python(try_import("ngdfast.cuda"), hide_numba=True)
    assert r.returncode == 0, r.stderr
    assert "ImportError:" in r.stdout, r.stdout
    assert "pip install ngdfast[cuda]" in r.stdout
    assert "numba-cuda" in r.stdout
    assert "fisher [[1.0, 2.0], [2.0, 4.0]]" in r.stdout


def test_import_ngdfast_does_not_import_numba():
    # with numba installed (and importable), only ngdfast.cuda may bring it in
    pytest.importorskip("numba")
    r = run_python(
        """
        import sys
        import ngdfast, ngdfast.reference, ngdfast.models
        print(sorted(m for m in sys.modules if m.partition(".")[0] in ("numba", "numba_cuda")))
        """,
        hide_numba=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_cuda_without_a_gpu_says_so():
    # numba-cuda installed, simulator off: without a GPU the ImportError explains both ways out
    pytest.importorskip("numba_cuda")
    r = run_python(
        """
        from numba import cuda
        try:
            import ngdfast.cuda
        except ImportError as exc:
            print("ImportError:", exc)
        else:
            print("imported; GPU available:", cuda.is_available())
        """,
        hide_numba=False,
        simulator=False,
    )
    assert r.returncode == 0, r.stderr
    if "imported; GPU available: True" in r.stdout:
        pytest.skip("this machine has a usable CUDA GPU")
    assert "ImportError:" in r.stdout, r.stdout
    assert "no usable CUDA GPU" in r.stdout and "NUMBA_ENABLE_CUDASIM=1" in r.stdout
