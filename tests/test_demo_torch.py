"""``python -m ngdfast demo --framework torch`` in its quick mode: same outputs as the NumPy demo."""

import json
import math
import subprocess
import sys

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")
pytest.importorskip("torch", reason="the torch demo needs torch: pip install '.[torch]'")

from ngdfast import demo  # noqa: E402

STEPS = 5


def _quick(out, framework, model):
    json_path, png_path = out / f"{framework}.json", out / f"{framework}.png"
    code = demo.main(["--framework", framework, "--model", model, "--quick", "--steps", str(STEPS),
                      "--no-progress", "--json", str(json_path), "--plot", str(png_path)])
    return code, json.loads(json_path.read_text()), png_path.read_bytes()


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    return _quick(tmp_path_factory.mktemp("demo_torch"), "torch", "cnn")


def test_quick_torch_demo_trains_the_cnn(torch_run):
    code, doc, _ = torch_run
    assert code == 0
    assert doc["dataset"] == "digits" and doc["model"] == "cnn"
    assert {"gd", "adam", "ngd-kfac"} <= set(doc["runs"])
    for name, run in doc["runs"].items():
        assert len(run["loss"]) == len(run["seconds"]) == len(run["test_accuracy"]) == STEPS, name
        assert not run["diverged"] and all(math.isfinite(v) and v > 0 for v in run["loss"])
        assert all(b >= a for a, b in zip(run["seconds"], run["seconds"][1:]))
        assert all(0.0 <= a <= 1.0 for a in run["accuracy"] + run["test_accuracy"])
    assert doc["runs"]["gd"]["settings"]["optimizer"] == "torch.optim.SGD"
    assert doc["runs"]["adam"]["settings"]["optimizer"] == "torch.optim.Adam"
    kfac = doc["runs"]["ngd-kfac"]
    assert kfac["settings"]["curvature"] == "kfac"
    # A few K-FAC steps already train the CNN well past chance (log 10 ≈ 2.30) and past GD.
    assert kfac["loss"][-1] < 0.5 * math.log(10)
    assert kfac["loss"][-1] < doc["runs"]["gd"]["loss"][-1]


def test_torch_demo_json_has_the_numpy_demos_schema(torch_run, tmp_path):
    _, torch_doc, _ = torch_run
    code, numpy_doc, _ = _quick(tmp_path, "numpy", "softmax")
    assert code == 0
    assert set(torch_doc) == set(numpy_doc) == {"dataset", "model", "runs"}
    numpy_keys = {key for run in numpy_doc["runs"].values() for key in run}
    for name, run in torch_doc["runs"].items():
        assert set(run) == numpy_keys, name
        for key in ("loss", "seconds", "accuracy", "test_loss", "test_accuracy"):
            assert all(isinstance(v, float) for v in run[key]), (name, key)
    assert {"gd", "adam", "ngd-kfac"} <= set(numpy_doc["runs"])


def test_torch_demo_writes_a_png(torch_run):
    _, _, png = torch_run
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_model_must_belong_to_the_framework(capsys):
    for argv in (["--framework", "torch", "--model", "mlp"], ["--model", "cnn"], ["--model", "gpt"]):
        with pytest.raises(SystemExit) as exc:
            demo.main(argv)
        assert exc.value.code == 2
        assert "is not a" in capsys.readouterr().err


def test_numpy_demo_never_imports_torch():
    code = ("import sys, ngdfast.demo, ngdfast.__main__; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr or "importing the demo imported torch"
