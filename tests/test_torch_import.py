"""torch is optional: ``import ngdfast`` never imports it, and ``import ngdfast.torch`` without it
says which extra to install. Each check runs in a fresh interpreter (see test_without_numba.py)."""

import textwrap

import pytest

from conftest import run_python as run_source, try_import


def run_python(code):
    return run_source(textwrap.dedent(code))


def test_import_ngdfast_does_not_import_torch():
    r = run_python(
        """
        import sys
        import ngdfast, ngdfast.reference, ngdfast.models, ngdfast.optimizer, ngdfast.curvature
        print(sorted(m for m in sys.modules if m.partition(".")[0] == "torch"))
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_ngdfast_torch_without_torch_names_the_extra():
    # torch not installed, as far as imports can tell
    r = run_source('import sys\nsys.modules["torch"] = None\n' + try_import("ngdfast.torch"))
    assert r.returncode == 0, r.stderr
    assert "ImportError:" in r.stdout, r.stdout
    assert "pip install 'ngdfast[torch]'" in r.stdout
    assert "fisher [[1.0, 2.0], [2.0, 4.0]]" in r.stdout


def test_ngdfast_torch_imports_with_torch():
    pytest.importorskip("torch")
    r = run_python(
        """
        import ngdfast.torch as ngt
        print(sorted(ngt.__all__))
        """
    )
    assert r.returncode == 0, r.stderr
    assert "'Preconditioner'" in r.stdout and "'natural_gradient'" in r.stdout
