"""``python -m ngdfast demo --framework torch --model gpt``: the character-level GPT workload and its demo."""

import json
import math
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")
pytest.importorskip("torch", reason="the GPT demo needs torch: pip install '.[torch]'")

import torch  # noqa: E402

from ngdfast import demo  # noqa: E402
from ngdfast._workloads import HelpText  # noqa: E402
from ngdfast._workloads import torch as workloads  # noqa: E402

STEPS = 6


class Quiet:
    def update(self):
        pass


@pytest.fixture(scope="module")
def text():
    return HelpText.load()


@pytest.fixture(scope="module")
def problem(text):
    return workloads.CharProblem.from_text(text, workloads.gpt_config(quick=True), seed=0)


def test_help_text_is_the_sorted_topics_split_90_10(text):
    from pydoc_data.topics import topics

    full = "".join(topics[k] for k in sorted(topics))
    assert text.vocab == "".join(sorted(set(full)))
    assert len(text.train) == int(0.9 * len(full)) and len(text.train) + len(text.test) == len(full)
    assert text.decode(text.train[:200]) == full[:200] and text.decode(text.test[-200:]) == full[-200:]


@torch.no_grad()
def test_gpt_gives_causal_logits_per_position(problem):
    config = workloads.gpt_config(quick=True)
    torch.manual_seed(0)
    model = workloads.make_gpt(problem.vocab, config)
    x, y = problem.sample(torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (config["batch"], config["context"])
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets: the next character
    logits = model(x)
    assert logits.shape == (config["batch"], config["context"], problem.vocab)
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] + 1) % problem.vocab
    assert torch.allclose(model(changed)[:, :-1], logits[:, :-1])  # no position sees the future
    assert float(workloads.lm_loss(logits, y)) == pytest.approx(math.log(problem.vocab), rel=0.1)


def test_adamw_lowers_the_held_out_loss(problem):
    config = workloads.gpt_config(quick=True)
    torch.manual_seed(0)
    state0 = workloads.make_gpt(problem.vocab, config).state_dict()
    run = workloads.run_adamw(problem, state0, config, 20, 3e-3, 0, Quiet())
    assert run.step == list(range(config["eval_every"], 21, config["eval_every"]))
    assert len(run.test_loss) == len(run.seconds) == len(run.loss) == len(run.step)
    assert not run.diverged and all(b >= a for a, b in zip(run.seconds, run.seconds[1:]))
    assert run.test_loss[-1] < run.test_loss[0] < math.log(problem.vocab) + 0.1
    again = workloads.run_adamw(problem, state0, config, 20, 3e-3, 0, Quiet())
    assert again.test_loss == run.test_loss  # the same minibatches and held-out windows for every run


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_gpt")
    json_path, png_path = out / "gpt.json", out / "gpt.png"
    code = demo.main(["--framework", "torch", "--model", "gpt", "--quick", "--steps", str(STEPS),
                      "--no-progress", "--json", str(json_path), "--plot", str(png_path)])
    return code, json.loads(json_path.read_text()), png_path.read_bytes()


def test_quick_gpt_demo_runs_adamw_and_kfac(gpt_run):
    code, doc, png = gpt_run
    assert code == 0
    assert doc["dataset"] == "pydoc_data.topics" and doc["model"] == "gpt"
    assert set(doc["runs"]) == {"adamw", "ngd-kfac"}
    every = workloads.gpt_config(quick=True)["eval_every"]
    for name, run in doc["runs"].items():
        assert run["step"] == list(range(every, STEPS + 1, every)), name
        assert len(run["test_loss"]) == len(run["seconds"]) == len(run["loss"]) == len(run["step"])
        assert not run["diverged"] and all(math.isfinite(v) and v > 0 for v in run["test_loss"])
        assert all(0.0 <= a <= 1.0 for a in run["accuracy"] + run["test_accuracy"])
    assert doc["runs"]["adamw"]["settings"]["optimizer"] == "torch.optim.AdamW"
    assert doc["runs"]["ngd-kfac"]["settings"]["optimizer"] == "ngdfast.torch.NGD"
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpt_demo_command_line_prints_the_held_out_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ngdfast", "demo", "--framework", "torch", "--model", "gpt", "--quick",
         "--steps", "2", "--no-progress"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "adamw learning rates" in proc.stdout and "steps->AdamW" in proc.stdout
    assert "held-out loss" in proc.stdout and "ngd-kfac" in proc.stdout


def test_demos_and_bench_share_the_workloads_not_each_other():
    code = ("import sys, ngdfast.demo_torch, ngdfast.bench.torch; "
            "sys.exit(1 if {'ngdfast.demo'} & set(sys.modules) else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr or "the torch demo or the bench imported ngdfast.demo"
    code = "import sys, ngdfast.bench.torch; sys.exit(1 if 'ngdfast.demo_torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr or "the bench imported the torch demo"
