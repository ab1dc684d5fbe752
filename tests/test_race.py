"""The race (``python -m ngdfast bench --race``, :mod:`ngdfast.bench.race`): its bookkeeping.

The quick race runs once per module (tiny steps, one thread for everyone) through the
command line; the tests recompute what it reports from the curves in its JSON. The
target, reach and median logic is also checked on hand-made curves. No timing asserted.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import statistics

import pytest

torch = pytest.importorskip("torch", reason="the race needs torch: pip install '.[torch]'")
pytest.importorskip("sklearn", reason="the race's CNN trains on scikit-learn's digits")
pytest.importorskip("tqdm", reason="the race's loops report progress with tqdm")

import ngdfast  # noqa: E402
from ngdfast._workloads import Run  # noqa: E402
from ngdfast.bench import cli  # noqa: E402
from ngdfast.bench import race  # noqa: E402

RUNS = 3
NAMES = [c.name for c in race.CONTENDERS]


def curve(values, seconds, step=None, metric="loss") -> Run:
    """A hand-made run: ``metric`` and cumulative ``seconds`` per evaluation."""
    run = Run({})
    for k, (v, s) in enumerate(zip(values, seconds)):
        run.add(s, v if metric == "loss" else 9.0, 0.0, v if metric == "test_loss" else 9.0, 0.0,
                step=None if step is None else step[k])
    return run


# ---------------------------------------------------------------------------- hand-made curves
def test_target_is_adamw_final_and_the_largest_when_runs_differ():
    a = curve([3.0, 2.0, 1.0], [1, 2, 3])
    assert race.target_of([a, a, a], "loss") == 1.0
    b = curve([3.0, 2.0, 1.0 + 1e-12], [1, 2, 3])
    assert race.target_of([a, b, a], "loss") == 1.0 + 1e-12  # every AdamW run reaches it
    with pytest.raises(RuntimeError, match="finite target"):
        race.target_of([curve([3.0, math.nan], [1, 2])], "loss")


def test_reach_is_the_first_evaluation_at_or_below_the_target():
    run = curve([3.0, 1.0, 0.5, 2.0, 0.1], [0.1, 0.2, 0.4, 0.5, 0.9])
    assert race.reach(run, 1.0, "loss") == (2, 0.2)  # entry k follows step k + 1; "at" counts
    assert race.reach(run, 0.3, "loss") == (5, 0.9)
    assert race.reach(run, 0.05, "loss") is None
    sparse = curve([4.0, 3.0, 2.5], [1.0, 2.0, 3.0], step=[25, 50, 60], metric="test_loss")
    assert race.reach(sparse, 3.0, "test_loss") == (50, 2.0)  # steps from the recorded step
    assert race.reach(sparse, 3.0, "loss") is None  # the other metric is not the judged one


def test_a_diverged_run_never_reaches_and_ends_at_infinity():
    run = curve([2.0, math.nan], [1.0, 2.0])
    assert run.diverged and race.reach(run, 1.0, "loss") is None
    assert race.summarise([run], 1.0, "loss", 1.0)["final"] == math.inf


def test_best_is_soonest_in_seconds_not_in_steps():
    few_slow = curve([2.0, 0.5], [5.0, 10.0])  # 2 steps, 10 s
    many_fast = curve([2.0, 1.5, 1.2, 0.9], [0.5, 1.0, 1.5, 2.0])  # 4 steps, 2 s
    never = curve([2.0, 1.9], [0.1, 0.2])
    assert race.pick_best([few_slow, many_fast, never], 1.0, "loss") == 1


def test_best_is_the_lowest_final_when_none_reaches():
    runs = [curve([2.0, 1.5], [1, 2]), curve([2.0, 1.2], [1, 2]), curve([2.0, math.nan], [1, 2])]
    assert race.pick_best(runs, 1.0, "loss") == 1


def test_summary_is_the_median_of_the_runs_with_misses_as_infinite():
    runs = [curve([2.0, 1.0, 0.5], [1.0, 2.0, 3.0]),  # reaches 1.0 at step 2, 2 s
            curve([2.0, 0.9, 0.5], [2.0, 4.0, 6.0]),  # step 2, 4 s
            curve([2.0, 1.5, 1.2], [1.0, 2.0, 3.0])]  # never
    s = race.summarise(runs, 1.0, "loss", adamw_seconds=8.0)
    assert (s["steps_to_target"], s["seconds_to_target"]) == (2, 4.0)  # median of (2|2 s, 2|4 s, inf)
    assert s["speed_vs_adamw"] == 2.0 and s["reached"] == 2 and s["final"] == 0.5
    assert race.summarise(runs, 1.0, "loss")["speed_vs_adamw"] == 1.0  # AdamW against itself
    most_miss = race.summarise(runs[1:] + [runs[2]], 1.0, "loss", adamw_seconds=8.0)
    assert most_miss["seconds_to_target"] == math.inf and most_miss["speed_vs_adamw"] is None


def test_median_of_two_runs_is_their_mean():
    runs = [curve([2.0, 1.0], [1.0, 2.0]), curve([2.0, 1.0], [1.0, 3.0])]
    assert race.summarise(runs, 1.0, "loss", 5.0)["seconds_to_target"] == 2.5


# ---------------------------------------------------------------------------- the wiring
def test_ngdfast_grid_is_read_from_the_constructor():
    import ngdfast.torch as ngt

    default = inspect.signature(ngt.Preconditioner).parameters["kl_radius"].default
    task = race.Task("cnn", "loss", 1, 1, None, "batch")
    grid = race._ngdfast_grid(task)
    assert grid == [{"kl_radius": default * 0.1}, {}, {"kl_radius": default * 10}]
    defaults = next(c for c in race.CONTENDERS if c.name == "ngdfast defaults")
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    built = defaults.optimizer(model, {}, task)
    assert defaults.grid(task) == [{}] and isinstance(built, ngt.NGD)
    assert built.preconditioner.kl_radius == default
    assert built.param_groups[0]["momentum"] == inspect.signature(ngt.NGD).parameters["momentum"].default
    # the default of the grid is the "ngdfast defaults" configuration: they share runs
    tuned = next(c for c in race.CONTENDERS if c.name == "ngdfast")
    assert tuned.key(grid[1]) == defaults.key({})


def test_muon_gets_the_hidden_matrices_and_steps_conv_filters_through_views():
    if race.import_error("torch.optim.Muon"):
        pytest.skip(race.import_error("torch.optim.Muon"))
    from ngdfast._workloads.torch import make_cnn

    torch.manual_seed(0)
    model = make_cnn()
    conv, head = model[0], model[-1]
    hidden, rest = race.hidden_matrices(model)
    assert [id(p) for p in hidden] == [id(conv.weight)]
    assert {id(p) for p in rest} == {id(conv.bias), id(head.weight), id(head.bias)}
    task = race.Task("cnn", "loss", 1, 1, None, "batch", adamw_lr=0.01)
    opt = race._build_muon(model, {"lr": 0.03}, task)
    (view, param), = opt.views
    assert param is conv.weight and view.shape == (16, 9) and view.data_ptr() == conv.weight.data_ptr()
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # Muon and AdamW both stepped
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters()) and view.grad is None


def test_a_peer_that_fails_or_does_not_import_is_skipped_with_its_reason(monkeypatch):
    adamw = race.CONTENDERS[0]
    missing = race.Contender("Missing", "ngdfast_no_such_peer", adamw.optimizer, adamw.grid)

    def boom(model, config, task):
        raise RuntimeError("this peer fails on this model")

    failing = race.Contender("Failing", "torch", boom, lambda task: [{"lr": 0.1}])
    import io

    with ngdfast.num_threads(1):
        record = race.race_task(race.make_task("cnn", quick=True), 2, io.StringIO(),
                                contenders=(adamw, missing, failing))
    entries = {e["name"]: e for e in record["optimizers"]}
    assert "ngdfast_no_such_peer does not import: ModuleNotFoundError" in entries["Missing"]["skipped"]
    assert "RuntimeError: this peer fails on this model" in entries["Failing"]["skipped"]
    assert race.verify(record, 2, names=["AdamW", "Missing", "Failing"]) == []


# ---------------------------------------------------------------------------- the quick race
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick race through the command line, at one thread (no timing is asserted)."""
    path = tmp_path_factory.mktemp("race")
    json_path, png_path = path / "race.json", path / "race.png"
    threads_before = torch.get_num_threads()
    with ngdfast.num_threads(1):
        status = cli.main(["--race", "--quick", "--json", str(json_path), "--plot", str(png_path)])
    threads_after = torch.get_num_threads()
    text = json_path.read_text(encoding="utf-8")

    def strict(name):
        raise ValueError(f"the race's JSON holds {name}")

    return {"status": status, "doc": json.loads(text, parse_constant=strict), "png": png_path,
            "threads": (threads_before, threads_after)}


def test_quick_race_exits_cleanly_and_restores_torch_threads(quick):
    assert quick["status"] == 0
    before, after = quick["threads"]
    assert before == after
    doc = quick["doc"]
    assert doc["quick"] is True and doc["runs"] == RUNS
    assert doc["machine"]["threads"] == doc["machine"]["ngdfast_threads"] == 1  # the same for everyone


@pytest.mark.parametrize("task", race.TASKS)
def test_quick_race_lists_every_optimizer_or_its_reason(quick, task):
    record = quick["doc"]["tasks"][task]
    assert [e["name"] for e in record["optimizers"]] == NAMES
    for contender, e in zip(race.CONTENDERS, record["optimizers"]):
        importable = all(importlib.util.find_spec(part.split(".")[0]) is not None
                         for part in contender.requires.split("+")) and not (
            contender.requires == "torch.optim.Muon" and not hasattr(torch.optim, "Muon"))
        if importable:  # installed peers must run: their wiring is what this checks
            assert "skipped" not in e, f"{e['name']}: {e.get('skipped')}"
            assert len(e["grid"]) == len(contender.grid(race.make_task(task, quick=True))) >= 1
        else:
            assert "does not import" in e["skipped"]


@pytest.mark.parametrize("task", race.TASKS)
def test_quick_race_target_is_adamw_final(quick, task):
    record = quick["doc"]["tasks"][task]
    metric = record["metric"]
    assert metric == {"cnn": "loss", "gpt": "test_loss"}[task]
    adamw = record["optimizers"][0]
    finals = [r[metric][-1] for r in adamw["runs"]]
    assert record["target"] == max(finals)
    grid_finals = [g["run"][metric][-1] for g in adamw["grid"]]
    assert adamw["best"] == adamw["grid"][grid_finals.index(min(grid_finals))]["config"]
    assert record["adamw_lr"] == adamw["best"]["lr"]
    assert adamw["median"]["speed_vs_adamw"] == 1.0


def _reach(run, metric, target):
    for k, value in enumerate(run[metric]):
        if value is not None and value <= target:
            return (run["step"][k] if "step" in run else k + 1), run["seconds"][k]
    return None


@pytest.mark.parametrize("task", race.TASKS)
def test_quick_race_reach_and_medians_recomputed_from_the_curves(quick, task):
    record = quick["doc"]["tasks"][task]
    metric, target = record["metric"], record["target"]
    adamw_seconds = None
    for e in record["optimizers"]:
        if "skipped" in e:
            continue
        assert len(e["runs"]) == RUNS
        for r in e["runs"]:
            assert r["settings"]["optimizer"]
            hit = _reach(r, metric, target)
            assert (None if hit is None else (r["reach"]["steps"], r["reach"]["seconds"])) == hit
            assert r["seconds"] == sorted(r["seconds"])  # cumulative optimisation time
            if task == "gpt":
                eval_every = record["eval_every"]
                assert all(s % eval_every == 0 or s == record["steps"] for s in r["step"])
        # the best: the grid's soonest in seconds (AdamW: its lowest final)
        if e["name"] != "AdamW":
            hits = [(_reach(g["run"], metric, target), i) for i, g in enumerate(e["grid"])]
            reached = [(h[1], i) for h, i in hits if h is not None]
            finals = [math.inf if g["final"] is None else g["final"] for g in e["grid"]]
            best = min(reached)[1] if reached else finals.index(min(finals))
            assert e["best"] == e["grid"][best]["config"]
        first = next(g for g in e["grid"] if g["config"] == e["best"])
        assert e["runs"][0][metric] == first["run"][metric]  # the grid's run is the first of the runs
        hits = [_reach(r, metric, target) for r in e["runs"]]
        steps = statistics.median([h[0] if h else math.inf for h in hits])
        seconds = statistics.median([h[1] if h else math.inf for h in hits])
        finals = [r[metric][-1] if not r["diverged"] else math.inf for r in e["runs"]]
        m = e["median"]
        assert m["steps_to_target"] == (None if steps == math.inf else steps)
        assert m["seconds_to_target"] == (None if seconds == math.inf else pytest.approx(seconds, rel=1e-12))
        assert m["final"] == (None if statistics.median(finals) == math.inf else statistics.median(finals))
        if e["name"] == "AdamW":
            adamw_seconds = seconds
            assert steps <= record["steps"]  # AdamW reaches its own final loss
        expected_speed = adamw_seconds / seconds if math.isfinite(seconds) else None
        assert m["speed_vs_adamw"] == (None if expected_speed is None else pytest.approx(expected_speed))
    assert race.verify(record, RUNS) == []


def test_quick_race_ngdfast_defaults_are_the_constructor_defaults(quick):
    import ngdfast.torch as ngt

    default = inspect.signature(ngt.Preconditioner).parameters["kl_radius"].default
    for record in quick["doc"]["tasks"].values():
        entries = {e["name"]: e for e in record["optimizers"]}
        assert entries["ngdfast defaults"]["best"] == {}
        assert entries["ngdfast defaults"]["runs"][0]["settings"]["kl_radius"] == default
        assert [g["config"].get("kl_radius", default) for g in entries["ngdfast"]["grid"]] == pytest.approx(
            [default * f for f in race.KL_RADIUS_FACTORS])


def test_quick_race_writes_the_plot(quick):
    data = quick["png"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_verify_catches_a_wrong_median_and_a_wrong_reach(quick):
    import copy

    record = copy.deepcopy(quick["doc"]["tasks"]["cnn"])
    assert race.verify(record, RUNS) == []
    record["optimizers"][0]["median"]["seconds_to_target"] *= 2
    record["optimizers"][0]["runs"][1]["reach"] = None
    problems = race.verify(record, RUNS)
    assert any("median seconds_to_target" in p for p in problems)
    assert any("recorded reach None" in p for p in problems)
    assert race.verify(record, RUNS + 1) != []


def test_race_options():
    args = cli.parse_args(["--race", "--race-runs", "2", "--plot", "x.png"])
    assert args.race and args.race_runs == 2 and args.plot == "x.png"
    assert cli.parse_args([]).race is False
    for bad in (["--race", "--race-runs", "0"], ["--plot", "x.png"]):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)
