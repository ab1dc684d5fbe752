"""The command line as a user runs it: ``python -m ngdfast {info,bench}``."""

import importlib.util
import json
import re
import subprocess
import sys

import pytest


def run(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "ngdfast", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_info_reports_build_and_backends(tmp_path):
    path = tmp_path / "info.json"
    proc = run("info", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(path.read_text())
    text = json.dumps(data)
    assert "tile_backend" in text and "threads" in text
    assert "ngdfast" in proc.stdout


def test_info_does_not_import_numba():
    code = "import sys, ngdfast.info as i; i.main([]); print('numba' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_bench_quick_writes_table_and_json(tmp_path):
    path = tmp_path / "bench.json"
    proc = run("bench", "--quick", "--json", str(path), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GEMM" in proc.stdout
    head = next(line for line in proc.stdout.splitlines() if line.startswith("kernel "))
    assert re.split(r"\s{2,}", head.strip()) == ["kernel", "size", "dtype", "time", "GFLOP/s", "of GEMM", "max err",
                                                 "vs peers (peer time / ngdfast time)"]
    assert "Speed targets" in proc.stdout and "issue" not in proc.stdout.lower()
    data = json.loads(path.read_text())
    assert set(data) == {"machine", "gemm", "repeats", "results", "alternating", "reuse", "targets", "torch"}
    assert data["results"] and all(r["ok"] for r in data["results"])  # every answer checked against its peers
    assert data["targets"] and set(data["targets"][0]) == {"kernel", "size", "dtype", "measure", "op", "bound",
                                                           "value", "met"}


def test_bench_imports_no_optional_library_until_a_run_needs_it():
    """SciPy, threadpoolctl and torch load only when a section runs (torch: only with --kernels torch)."""
    code = (
        "import sys, ngdfast\n"
        "before = set(sys.modules)\n"
        "import ngdfast.bench.cli, ngdfast.bench.interference, ngdfast.bench.reuse\n"
        "new = set(sys.modules) - before\n"
        "print(sorted(m for m in new if m.split('.')[0] in ('scipy', 'threadpoolctl', 'torch')))\n"
        "print(sorted(m for m in new if m.startswith('ngdfast.') and not m.startswith('ngdfast.bench')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[]", "[]"]


@pytest.fixture
def borrow_mode():
    import ngdfast

    before = ngdfast.get_borrow_blas()
    yield ngdfast
    ngdfast.set_borrow_blas(before)


@pytest.mark.parametrize("mode", ["auto", "always", "never"])
def test_alternating_restores_the_borrow_setting(borrow_mode, monkeypatch, mode):
    """The alternating section runs its no-borrowing variant through the public setting, only when
    borrowing is "auto", and leaves the setting as it found it, also when a timing fails."""
    from ngdfast.bench import interference

    ngdfast = borrow_mode
    seen = []

    def fake_time_blocks(fns, repeats):
        seen.append(ngdfast.get_borrow_blas())
        return {name: 1e-3 for name in fns}

    monkeypatch.setattr(interference, "time_blocks", fake_time_blocks)
    ngdfast.set_borrow_blas(mode)
    rows = interference.alternating(quick=True, repeats=1)
    assert ngdfast.get_borrow_blas() == mode
    unborrowed = [r for r in rows if r["variant"] == "ngdfast, no borrowing"]
    assert len(unborrowed) == (2 if mode == "auto" else 0)
    assert ("never" in seen) == (mode in ("auto", "never"))

    def failing_time_blocks(fns, repeats):
        if ngdfast.get_borrow_blas() == "never":
            raise RuntimeError("interrupted")
        return {name: 1e-3 for name in fns}

    monkeypatch.setattr(interference, "time_blocks", failing_time_blocks)
    if mode == "auto":
        with pytest.raises(RuntimeError, match="interrupted"):
            interference.alternating(quick=True, repeats=1)
        assert ngdfast.get_borrow_blas() == "auto"


def test_speed_targets_are_the_documented_ones():
    """docs/performance.md lists every speed target of ngdfast.bench.targets, as data says."""
    from pathlib import Path

    from ngdfast.bench.targets import KERNEL_TARGETS, REUSE_TARGET, TORCH_TARGETS, measure_label

    page = (Path(__file__).resolve().parents[1] / "docs" / "performance.md").read_text(encoding="utf-8")
    sign = {">=": "≥", "<=": "≤", "ge": "≥", "le": "≤"}

    def bound(x):
        return f"{x:g}".replace("e-0", "e-")

    for t in KERNEL_TARGETS:
        row = (f"| `{t.section}` | {t.size or 'every case'} | {t.dtype or 'both'} | {measure_label(t.measure)} | "
               f"{sign[t.op]} {bound(t.bound)} | {t.meaning} |")
        assert row in page, row
    for case, measure, value, op in TORCH_TARGETS:
        assert f"| `{case}` | {measure} | {sign[op]} {bound(value)} |" in page
    assert f"≤ {bound(REUSE_TARGET['ratio'])} of one SciPy" in page and bound(REUSE_TARGET["max_error"]) in page


@pytest.mark.parametrize("argv", [[], ["nonsense"]])
def test_bad_command_line_is_a_usage_error(argv):
    proc = run(*argv)
    assert proc.returncode == 2
    assert "usage" in proc.stderr


def test_info_reports_what_is_built_and_dispatched(tmp_path):
    from ngdfast import _core

    path = tmp_path / "info.json"
    proc = run("info", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    core = json.loads(path.read_text())["core"]
    build = _core.build_info()
    assert core["native"] == build["native"]
    assert ("-march=native" in core["flags"]) == core["native"]
    assert set(core["simd"]) <= set(core["cpu"])  # the build runs on this CPU
    assert core["dispatch"].startswith("built native" if core["native"] else "built portable")
    if core["tile_backend"] == "blas":
        assert "chosen at run time" in core["dispatch"]
    assert "dispatch" in proc.stdout
    if importlib.util.find_spec("threadpoolctl"):
        assert "ngdfast pool" in proc.stdout
