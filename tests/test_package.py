"""The package's metadata and public surface: one version, a license, every export documented."""

import importlib.metadata
import pathlib
import re

import pytest

import ngdfast
import ngdfast.reference

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_version_is_written_once_and_read_by_the_build():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert not re.search(r"(?m)^version\s*=", pyproject), "the version belongs in python/ngdfast/__init__.py only"
    assert 'dynamic = ["version"]' in pyproject
    assert 'input = "python/ngdfast/__init__.py"' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", ngdfast.__version__)


def test_installed_metadata_carries_the_package_version():
    try:
        dist = importlib.metadata.distribution("ngdfast")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("ngdfast is imported from a source tree, not installed")
    installed = pathlib.Path(str(dist.locate_file("ngdfast"))).resolve()
    if installed != pathlib.Path(ngdfast.__file__).resolve().parent:
        pytest.skip("the imported ngdfast is not the installed distribution")
    assert dist.version == ngdfast.__version__
    assert dist.metadata["License"] == "BSD-3-Clause"


def test_license_file_matches_the_metadata():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 3-Clause License")
    assert 'license = { text = "BSD-3-Clause" }' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_every_compiled_kernel_is_exported_and_is_not_the_reference():
    kernels = [name for name in ngdfast.reference.__all__ if callable(getattr(ngdfast.reference, name))]
    assert kernels
    for name in kernels:
        assert name in ngdfast.__all__
        compiled = getattr(ngdfast, name)
        assert compiled is not getattr(ngdfast.reference, name), f"ngdfast.{name} is the reference function"
        assert compiled.__module__ == "ngdfast._kernels"
