"""The command line as a user runs it: ``python -m ngdfast {info,bench}``."""

import importlib.util
import json
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
    data = json.loads(path.read_text())
    assert data  # every answer was checked against its peers (exit status 0 above)


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
