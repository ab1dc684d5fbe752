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


def _extras_in_pyproject() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


def _requirement_name(requirement: str) -> str:
    return re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)[1].lower().replace("_", "-")


def test_test_extra_names_no_torch_and_ci_installs_it_explicitly():
    """`pip install '.[test]'` must not pull torch (a bare `torch` is a multi-GB CUDA build); the
    test command names the CPU torch it wants, and CI runs that same command."""
    extras = _extras_in_pyproject()
    assert "torch" not in {_requirement_name(r) for r in extras["test"]}
    assert {_requirement_name(r) for r in extras["torch"]} == {"torch"}
    assert {"nngeometry", "backpack-for-pytorch", "curvlinops-for-pytorch", "asdfghjkl",
            "pytest-benchmark", "scipy"} <= {_requirement_name(r) for r in extras["bench"]}
    assert "pip install '.[test]' 'torch==2.13.0'" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install --quiet '.[test]' 'torch==2.13.0'" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_installed_test_extra_names_no_torch():
    try:
        dist = importlib.metadata.distribution("ngdfast")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("ngdfast is imported from a source tree, not installed")
    if pathlib.Path(str(dist.locate_file("ngdfast"))).resolve() != pathlib.Path(ngdfast.__file__).resolve().parent:
        pytest.skip("the imported ngdfast is not the installed distribution")
    requires = dist.requires or []
    test_extra = [r for r in requires if re.search(r"""extra\s*==\s*["']test["']""", r)]
    if not test_extra:
        pytest.skip("the installed metadata has no test extra")
    assert "torch" not in {_requirement_name(r.split(";")[0]) for r in test_extra}
