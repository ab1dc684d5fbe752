"""The documentation's examples run, and the documentation covers what the code has.

* Every ```` ```python ```` block of ``docs/**/*.md`` runs: the blocks of one page in order, in
  one namespace (later blocks use names from earlier ones), in a temporary working directory.
  A traceback names the page and its line. A page whose examples import an optional package
  (torch, numba, ...) that is not installed is skipped with the package named.
* Every docstring example (``>>>``) of the public modules runs as a doctest.
* The settings page names every environment variable and build option the code reads, and the
  API reference has an entry for every public name.

The site itself is built by ``sphinx-build -W`` in ``.ci/run``; nothing here needs Sphinx.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import io
import os
import re
from pathlib import Path

import pytest

import ngdfast

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)

# A fenced block: the fence, its info string, the body (CommonMark: closing fence at least as long).
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[`~]*[ \t]*$", re.M | re.S)

# Info strings a fenced block may have. Only "python" runs; the others are shell commands, program
# output, signatures and Sphinx directives. "{code-block} python" is the explicit form for an
# example that cannot run in one test process (several ranks, a GPU): a test elsewhere runs it.
# A near miss ("py", "python3", "pycon") would silently not run, so it fails
# test_every_fence_is_known instead.
KNOWN_INFO = {"python", "bash", "text", "{toctree}", "{eval-rst}", "{include}", "{code-block}"}

# Optional packages an example may import -> the distribution to name when it is missing.
OPTIONAL = {"torch": "torch", "numba": "numba", "sklearn": "scikit-learn", "threadpoolctl": "threadpoolctl",
            "matplotlib": "matplotlib", "scipy": "scipy"}
IMPORT = re.compile(r"^\s*(?:import|from)\s+([A-Za-z_][\w.]*)", re.M)

# The public surface whose docstring examples run as doctests: module -> its public names.
# Optional modules (ngdfast.torch needs torch) join when they import.
PUBLIC_MODULES = ["ngdfast", "ngdfast.curvature", "ngdfast.models", "ngdfast.reference", "ngdfast.torch"]


def fenced_blocks(path: Path) -> list[tuple[str, int, str]]:
    """``(info, first line of the body, body)`` of every fenced block of a page."""
    text = path.read_text(encoding="utf-8")
    return [
        (m["info"].strip(), text.count("\n", 0, m.start("body")) + 1, m["body"])
        for m in FENCE.finditer(text)
    ]


def python_blocks(path: Path) -> list[tuple[int, str]]:
    return [(line, body) for info, line, body in fenced_blocks(path) if info == "python"]


def page_id(path: Path) -> str:
    return path.relative_to(DOCS).as_posix()


PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p)]


def test_collector_finds_the_pages_and_their_examples():
    names = {page_id(p) for p in PAGES}
    assert {"index.md", "quickstart.md", "mathematics.md", "trainer.md", "contract/kernels.md"} <= names
    assert len(python_blocks(DOCS / "mathematics.md")) >= 3
    assert sum(len(python_blocks(p)) for p in PAGES) >= 20


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_fence_is_known(page):
    unknown = [(line, info) for info, line, _ in fenced_blocks(page) if info.split(" ")[0] not in KNOWN_INFO]
    assert not unknown, f"{page_id(page)}: fenced blocks with info strings outside {sorted(KNOWN_INFO)}: {unknown}"


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=page_id)
def test_page_examples_run(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    for line, body in blocks:
        for name in IMPORT.findall(body):
            top = name.split(".")[0]
            if top in OPTIONAL:
                pytest.importorskip(top, reason=f"{page_id(page)}:{line} needs {OPTIONAL[top]}")
            if name.startswith("ngdfast.cuda"):
                pytest.importorskip("numba", reason=f"{page_id(page)}:{line} needs the cuda extra")
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    namespace: dict = {"__name__": f"docs.{page.stem}"}
    for line, body in blocks:
        # Leading newlines make the line numbers of a traceback those of the page.
        code = compile("\n" * (line - 1) + body, str(page), "exec")
        exec(code, namespace)


def public_objects() -> dict[str, object]:
    """Qualified public name -> object, for every module of PUBLIC_MODULES that imports."""
    objects = {}
    for name in PUBLIC_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional dependency is missing: its tests say so
            continue
        objects[name] = module
        names = getattr(module, "__all__", None) or [
            n for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", "").startswith(name)
        ]
        for attr in names:
            objects[f"{name}.{attr}"] = getattr(module, attr)
    return objects


def _doctests() -> list[doctest.DocTest]:
    """The docstring examples of the public objects (methods included), each docstring once."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    shallow = doctest.DocTestFinder(exclude_empty=True, recurse=False)
    tests, seen = [], set()
    for name, obj in public_objects().items():
        is_module = inspect.ismodule(obj)
        if not (is_module or inspect.isclass(obj) or inspect.isroutine(obj)):
            continue  # constants
        found = (shallow if is_module else finder).find(obj, name, module=False, globs={})
        for test in found:
            key = (test.filename, test.lineno, test.docstring)
            if test.examples and key not in seen:
                seen.add(key)
                tests.append(test)
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _doctests()


@pytest.mark.parametrize("test", DOCTESTS, ids=lambda t: t.name)
def test_docstring_examples(test, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=out.write, clear_globs=True)
    assert result.failed == 0, out.getvalue()


def test_doctests_are_found():
    assert any(t.name.endswith("NaturalGradient") for t in DOCTESTS)


# ------------------------------------------------------------------ coverage of the contract

# An environment variable or build option the code reads: a Python string literal that is just
# the name ("NGDFAST_NUM_THREADS"), getenv("X") in C++, a CMake option(X ...), or pyproject's
# {env = "X"}. (Macros such as NGDFAST_INSTANTIATE are none of these.)
SETTING = re.compile(
    r"""(?:^|[^\w])["'](NGDFAST_[A-Z0-9_]+)["']|(?:getenv\(|option\(|env\s*=\s*)\s*["']?(NGDFAST_[A-Z0-9_]+)"""
)
SETTING_SOURCES = ["python", "csrc", "bench", "tests", "CMakeLists.txt", "pyproject.toml"]


def settings_read_by_the_code() -> set[str]:
    found = set()
    for name in SETTING_SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in {".py", ".cpp", ".hpp"}]
        for f in files:
            for quoted, called in SETTING.findall(f.read_text(encoding="utf-8", errors="replace")):
                found.add(quoted or called)
    return found


def test_settings_page_names_every_setting():
    settings = settings_read_by_the_code()
    assert "NGDFAST_NUM_THREADS" in settings  # the scan itself works
    page = (DOCS / "contract" / "settings.md").read_text(encoding="utf-8")
    missing = sorted(s for s in settings if f"`{s}`" not in page)
    assert not missing, f"docs/contract/settings.md does not document {missing}"


def test_api_reference_lists_every_public_name():
    page = (DOCS / "api.md").read_text(encoding="utf-8")
    entries = set(re.findall(r"^\.\. auto(?:function|class|exception|module):: ([\w.]+)", page, re.M))
    short = {e.rsplit(".", 1)[-1] for e in entries} | entries
    missing = sorted(n for n in ngdfast.__all__ if n not in short and f"ngdfast.{n}" not in short)
    assert not missing, f"docs/api.md has no entry for {missing}"


def test_readme_points_to_the_docs_not_outside():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/" in readme
    assert "shared folder" not in readme and "API.md" not in readme
    assert os.path.exists(DOCS / "contract" / "index.md")


def test_every_public_function_and_class_has_examples():
    missing = sorted(
        name for name, obj in public_objects().items()
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and "\nExamples\n" not in (inspect.getdoc(obj) or "")
    )
    assert not missing, f"public objects without an Examples section in their docstring: {missing}"


def test_readme_is_the_front_door():
    """The README opens with the two set-up commands and every file it links to exists."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = fenced_blocks(ROOT / "README.md")[0]
    assert first[0] == "bash" and first[2].splitlines() == [
        "pip install '.[demo]' && python -m ngdfast demo --plot ngd.png",
        "pip install '.[test]' 'torch==2.13.0' && python -m pytest -n auto",
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pip install --quiet '.[test]' 'torch==2.13.0'" in ci and "\npython -m pytest -n auto\n" in ci
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme)
    assert "docs/performance.md" in targets and "LICENSE" in targets
    missing = sorted(t for t in targets if not (ROOT / t).exists())
    assert not missing, f"README links to missing files: {missing}"
