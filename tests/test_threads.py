"""Compiled kernels under threads: concurrent callers and the internal thread count."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import ngdfast
from conftest import assert_close, damped_condition, random_spd


@pytest.fixture
def restore_threads():
    before = ngdfast.get_num_threads()
    yield
    ngdfast.set_num_threads(before)


def make_tasks(rng, dtype):
    """Independent kernel calls, each a zero-argument callable with its own inputs."""
    tasks = []
    for i in range(4):
        n, p = 150 + 20 * i, 120 + 10 * i
        J = rng.standard_normal((n, p)).astype(dtype)
        g = rng.standard_normal(p).astype(dtype)
        w = rng.uniform(0.1, 1.0, n)
        F = random_spd(rng, p, dtype, cond=20.0)
        old = random_spd(rng, p, dtype)
        grad = rng.standard_normal((p // 2, p // 3)).astype(dtype)
        A = random_spd(rng, p // 3, dtype)
        S = random_spd(rng, p // 2, dtype)
        tasks += [
            lambda J=J, w=w: ngdfast.fisher(J, w),
            lambda J=J, old=old: ngdfast.fisher(J, out=old.copy(), decay=0.9),
            lambda F=F, g=g: ngdfast.damped_solve(F, g, 0.1),
            lambda J=J, g=g: ngdfast.natural_gradient(J, g, 0.1, method="dense"),
            lambda J=J, g=g, w=w: ngdfast.lowrank_solve(J[: n // 3], g, 0.1, w[: n // 3]),
            lambda grad=grad, A=A, S=S: ngdfast.kfac_precondition(grad, A, S, 0.01),
        ]
    return tasks


@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_calls_give_serial_answers(rng, dtype, workers):
    tasks = make_tasks(rng, dtype)
    serial = [task() for task in tasks]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(task) for task in tasks * 3]
        results = [f.result() for f in futures]
    tight = 1e-5 if dtype == np.float32 else 1e-13
    for i, result in enumerate(results):
        expected = serial[i % len(tasks)]
        assert result.dtype == expected.dtype
        assert_close(result, expected, rtol=tight)


def test_concurrent_ema_updates_of_separate_estimates(rng):
    batches = [rng.standard_normal((40, 30)) for _ in range(8)]
    outs = [np.zeros((30, 30)) for _ in batches]
    expected = [ngdfast.fisher(J, out=np.zeros((30, 30)), decay=0.5) for J in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda pair: ngdfast.fisher(pair[0], out=pair[1], decay=0.5), zip(batches, outs)))
    for out, want in zip(outs, expected):
        assert_close(out, want, rtol=1e-13)


def test_set_and_get_num_threads(restore_threads):
    ngdfast.set_num_threads(1)
    assert ngdfast.get_num_threads() == 1
    ngdfast.set_num_threads(np.int64(2))
    assert ngdfast.get_num_threads() == 2


def test_one_and_two_threads_agree(rng, dtype, restore_threads):
    n, p = 400, 300
    J = rng.standard_normal((n, p)).astype(dtype)
    g = rng.standard_normal((p, 2)).astype(dtype)
    w = rng.uniform(0.0, 1.0, n)
    grad = rng.standard_normal((60, 90)).astype(dtype)
    A = random_spd(rng, 90, dtype)
    S = random_spd(rng, 60, dtype)

    def run():
        F = ngdfast.fisher(J, w)
        return {
            "fisher": F,
            "damped_solve": ngdfast.damped_solve(F, g, 0.05),
            "dense": ngdfast.natural_gradient(J, g, 0.05, w, method="dense"),
            "lowrank": ngdfast.lowrank_solve(J[:100], g, 0.05, w[:100]),
            "kfac": ngdfast.kfac_precondition(grad, A, S, 0.01),
        }

    ngdfast.set_num_threads(1)
    one = run()
    ngdfast.set_num_threads(2)
    two = run()
    cond = damped_condition(one["fisher"], 0.05)
    assert_close(two["fisher"], one["fisher"])
    assert np.array_equal(two["fisher"], two["fisher"].T)
    assert_close(two["damped_solve"], one["damped_solve"], cond=cond)
    assert_close(two["dense"], one["dense"], cond=cond)
    assert_close(two["lowrank"], one["lowrank"], cond=damped_condition(ngdfast.fisher(J[:100], w[:100]), 0.05))
    assert_close(two["kfac"], one["kfac"], cond=100)
