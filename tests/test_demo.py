"""``python -m ngdfast demo`` in its quick mode: output files and table."""

import json
import math
import subprocess
import sys

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from ngdfast import demo  # noqa: E402

STEPS = 6


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    json_path, png_path = out / "curves.json", out / "curves.png"
    code = demo.main(["--quick", "--steps", str(STEPS), "--no-progress", "--json", str(json_path),
                      "--plot", str(png_path)])
    return code, json.loads(json_path.read_text()), png_path.read_bytes()


def test_quick_demo_writes_json_with_one_entry_per_step(quick_run):
    code, doc, _ = quick_run
    assert code == 0
    assert doc["dataset"] == "digits"
    assert doc["model"] == ["softmax", "mlp"]
    assert set(doc["runs"]) == {"softmax", "mlp"}
    assert {"ngd-dense", "ngd-lowrank", "ngd-kfac", "ngd-diagonal", "gd", "adam"} == set(doc["runs"]["softmax"])
    assert {"ngd-lowrank", "ngd-kfac", "gd", "adam"} <= set(doc["runs"]["mlp"])
    for runs in doc["runs"].values():
        for name, run in runs.items():
            assert len(run["loss"]) == len(run["seconds"]) == len(run["accuracy"]) == STEPS, name
            assert not run["diverged"] and all(math.isfinite(v) and v > 0 for v in run["loss"])
            assert all(b >= a for a, b in zip(run["seconds"], run["seconds"][1:]))
            assert all(0.0 <= a <= 1.0 for a in run["accuracy"] + run["test_accuracy"])
        assert "lr" in runs["gd"]["settings"] and "lr" in runs["adam"]["settings"]
        # A few natural-gradient steps already train the model well past chance.
        assert runs["ngd-kfac"]["loss"][-1] < 0.5 * math.log(10)


def test_quick_demo_writes_a_png(quick_run):
    _, _, png = quick_run
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_demo_command_line_prints_grid_and_table(tmp_path):
    path = tmp_path / "softmax.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ngdfast", "demo", "--quick", "--model", "softmax", "--steps", "3",
         "--json", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "learning rates" in proc.stdout and "->" in proc.stdout
    assert "steps->GD" in proc.stdout and "ngd-kfac" in proc.stdout and "test acc" in proc.stdout
    doc = json.loads(path.read_text())
    assert doc["model"] == "softmax"
    assert {"gd", "adam", "ngd-kfac"} <= set(doc["runs"])
    assert len(doc["runs"]["gd"]["loss"]) == 3


def test_demo_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(["--steps", "0"])
    assert exc.value.code == 2
    assert "--steps" in capsys.readouterr().err
