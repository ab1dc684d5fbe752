"""The race (``python -m ngdfast bench --race``) as pytest-benchmark group ``race``.

One benchmark per task, the whole race of that task (:mod:`ngdfast.bench.race`, which
documents what is measured): pytest-benchmark's time is the race's cost; the race's own
result (wall time to tuned AdamW's final loss per optimizer) is printed and checked.

- ``--bench-size small`` (default): the quick race, seconds: the wiring of every peer
  and the bookkeeping, no meaningful speeds;
- ``medium``: the full race, one run of each optimizer's best configuration;
- ``large``: the full race, three runs (medians), as ``python -m ngdfast bench --race``.

Asserted inside: the bookkeeping recomputed from the recorded curves
(:func:`ngdfast.bench.race.verify`: every optimizer run or skipped with its reason, the
target tuned AdamW's final metric, each reach the curve's first crossing, each best the
grid's soonest, the medians of the runs), and AdamW reaching its own target.
"""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch", reason="the race needs torch: pip install '.[bench]'")
pytest.importorskip("sklearn", reason="the race's CNN trains on scikit-learn's digits")
pytest.importorskip("tqdm", reason="the race's loops report progress with tqdm")
race = pytest.importorskip("ngdfast.bench.race", reason="ngdfast.torch is not importable")

RUNS = {"small": 3, "medium": 1, "large": 3}


@pytest.mark.parametrize("task", race.TASKS)
def test_race(benchmark, bench_size, task):
    quick, runs = bench_size == "small", RUNS[bench_size]
    out = io.StringIO()
    benchmark.group = "race"
    benchmark.extra_info["quick"] = quick

    def one_race():
        return race.run(quick, runs, out, tasks=(task,))

    if benchmark.enabled:  # one round: a race is long, and repeats are inside it
        result = benchmark.pedantic(one_race, rounds=1, iterations=1)
    else:
        result = benchmark(one_race)
    record = result["tasks"][task]
    print(out.getvalue())
    assert race.verify(record, runs) == []
    adamw = record["optimizers"][0]
    assert adamw["name"] == "AdamW" and adamw["median"]["steps_to_target"] <= record["steps"]
    benchmark.extra_info["speed_vs_adamw"] = {e["name"]: e["median"]["speed_vs_adamw"]
                                              for e in record["optimizers"] if "median" in e}
