"""Factor reuse in ``DenseFisher``: preconditioned CG with the previous float32 factor.

Every solve's answer must equal the exact (float64 Cholesky) solve of the current
F + λI to 1e-10 relative (1e-12 where F + λI is well conditioned), whether the
step reused a factor or refactored; a slowly changing F must be solved without
refactoring, a sudden change or a new damping must refactor; an F that moves too
fast for reuse (fresh minibatches) must refactor without paying for failed
attempts; snapshots bring the cached factor back with the state.
"""

import numpy as np
import pytest

import ngdfast
from ngdfast import DenseFisher, NaturalGradient
from ngdfast.curvature import SolveReport

P, N = 90, 40


def _exact(fish, g, damping):
    return ngdfast.reference.damped_solve(fish.to_dense(), g, damping)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _slow_batches(rng, steps):
    """The same score rows with weights jittered by 10 %: F changes by ~0.5 % a step."""
    base = rng.standard_normal((N, P))
    for _ in range(steps):
        yield base, 1.0 + 0.1 * rng.random(N)


def _fresh_batches(rng, steps):
    """A fresh minibatch each step, the usual running Fisher: with decay 0.95 and a small
    damping every update brings new directions, and CG with the old factor would need far
    more than max_reuse_iters iterations."""
    for _ in range(steps):
        yield rng.standard_normal((N, P)), None


def _run(fish, batches, damping, rng, tol=1e-12):
    """The reports of one solve after each update; every answer checked against a fresh solve."""
    reports = []
    for J, w in batches:
        fish.update(J, w)
        g = rng.standard_normal(P)
        x = fish.solve(g, damping)
        assert _rel(x, _exact(fish, g, damping)) <= tol
        reports.append(fish.last_solve)
    return reports


def test_slow_change_reuses_the_factor():
    rng = np.random.default_rng(0)
    fish = DenseFisher(P, decay=0.95, max_reuse_iters=10)
    damping = 1e-3
    reports = []
    for J, w in _slow_batches(rng, 8):
        fish.update(J, w)
        g = rng.standard_normal(P)
        x = fish.solve(g, damping)
        reports.append(fish.last_solve)
        assert _rel(x, _exact(fish, g, damping)) <= 1e-10
    assert reports[0].refactored
    assert not any(r.refactored for r in reports[1:]), reports
    assert all(1 <= r.iterations <= fish.max_reuse_iters for r in reports[1:])


def test_fresh_minibatches_refactor_without_paying_for_failed_attempts():
    rng = np.random.default_rng(8)
    fish = DenseFisher(P, decay=0.95, max_reuse_iters=10)
    fish.update(rng.standard_normal((4 * P, P)))  # full rank: F + λI well conditioned
    reports = _run(fish, _fresh_batches(rng, 14), 1e-3, rng)
    assert all(r.refactored for r in reports), reports
    assert reports[0].reuse == "none"  # nothing factored before
    # Each attempt is given up once CG's rate shows it cannot reach reuse_tol within
    # max_reuse_iters (after 1 or 2 of its 10 iterations), and each failure doubles the
    # wait before the next attempt: the solves in between refactor at once.
    a, s = "abandoned", "skipped"
    assert [r.reuse for r in reports[1:]] == [a, s, a, s, s, a, s, s, s, s, a, s, s], reports
    assert all(r.reuse_iterations <= 2 for r in reports if r.reuse == a), reports
    assert all(r.reuse_iterations == 0 for r in reports if r.reuse != a), reports


@pytest.mark.parametrize("decay, damping", [(0.999, 1e-3), (0.95, 10.0)])
def test_slow_drift_still_reuses(decay, damping):
    """Fresh minibatches on a mature F: with a slow EMA, or a damping that dominates the
    newest directions, F + λI moves little and every solve after the first reuses."""
    rng = np.random.default_rng(9)
    fish = DenseFisher(P, decay=decay, max_reuse_iters=10)
    fish.update(rng.standard_normal((4 * P, P)))
    fish.solve(np.ones(P), damping)
    reports = _run(fish, _fresh_batches(rng, 8), damping, rng)
    assert all(r.reuse == "reused" and not r.refactored for r in reports), reports
    assert all(1 <= r.iterations == r.reuse_iterations <= fish.max_reuse_iters for r in reports)


def test_the_wait_doubles_only_for_failures_in_a_row():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((2 * P, P))
    fish = DenseFisher(P, decay=0.95, max_reuse_iters=10)
    batches = [(base, 1.0 + 0.1 * rng.random(2 * P)) for _ in range(14)]
    batches[4] = batches[10] = (10.0 * rng.standard_normal((2 * P, P)), None)  # two sudden changes
    reuse = [r.reuse for r in _run(fish, batches, 1e-3, rng)]
    # after each failure one solve refactors without trying; the reuses in between reset the wait
    assert reuse[4:7] == reuse[10:13] == ["abandoned", "skipped", "reused"], reuse
    assert reuse.count("reused") == 9, reuse


def test_sudden_change_and_new_damping_refactor():
    rng = np.random.default_rng(1)
    fish = DenseFisher(P, decay=0.95, max_reuse_iters=10)
    for J, w in _slow_batches(rng, 3):
        fish.update(J, w)
        fish.solve(rng.standard_normal(P), 1e-3)
    assert not fish.last_solve.refactored
    fish.update(50.0 * rng.standard_normal((N, P)))  # a different Fisher, 100x larger
    g = rng.standard_normal(P)
    x = fish.solve(g, 1e-3)
    assert fish.last_solve.refactored
    assert _rel(x, _exact(fish, g, 1e-3)) <= 1e-10
    x = fish.solve(g, 1e-2)  # same F, new damping
    assert fish.last_solve.refactored
    assert _rel(x, _exact(fish, g, 1e-2)) <= 1e-10
    x = fish.solve(g, 1e-2)  # same F, same damping: its own factor preconditions
    assert not fish.last_solve.refactored and fish.last_solve.reuse == "reused"
    assert _rel(x, _exact(fish, g, 1e-2)) <= 1e-10


def test_several_right_hand_sides_and_ill_conditioning():
    rng = np.random.default_rng(2)
    fish = DenseFisher(P, decay=0.9, max_reuse_iters=10)
    J = rng.standard_normal((N, P))
    for damping in (1e-12, 1e-6, 1e-2):  # 1e-12: beyond float32, the float64 solve
        fish.update(J)
        G = rng.standard_normal((P, 3))
        X = fish.solve(G, damping)
        assert X.shape == (P, 3)
        exact = _exact(fish, G, damping)
        cond = (np.linalg.eigvalsh(fish.to_dense())[-1] + damping) / damping
        assert _rel(X, exact) <= max(1e-10, 1e-15 * cond)
        assert fish.last_solve.refactored


def test_snapshot_restore_keeps_the_factor():
    rng = np.random.default_rng(3)
    batches = list(_slow_batches(rng, 4))
    g = rng.standard_normal(P)

    def run(with_rejected_batch):
        fish = DenseFisher(P, decay=0.95, max_reuse_iters=10)
        out = []
        for i, (J, w) in enumerate(batches):
            if with_rejected_batch and i == 2:
                snap = fish.snapshot()
                factor = fish._reuse
                fish.update(10.0 * rng.standard_normal((N, P)))
                fish.solve(g, 1e-3)  # refactors
                assert fish.last_solve.refactored
                fish.restore(snap)
                assert fish._reuse is factor
            fish.update(J, w)
            out.append((fish.solve(g, 1e-3), fish.last_solve))
        return out

    for (xa, ra), (xb, rb) in zip(run(False), run(True)):
        np.testing.assert_array_equal(xa, xb)
        assert ra == rb


def test_optimizer_reports_reuse_and_a_rejected_step_leaves_the_factor():
    rng = np.random.default_rng(4)
    fish = DenseFisher(P, decay=0.95, max_reuse_iters=10)
    opt = NaturalGradient(fish, kl_radius=1e-3, damping=1e-3)
    theta = np.zeros(P)
    infos = []
    for J, w in _slow_batches(rng, 4):
        infos.append(opt.step(theta, rng.standard_normal(P), J, w))
    assert infos[0].refactored and not infos[-1].refactored and infos[-1].solve_iterations >= 1
    F, factor = fish.to_dense(), fish._reuse
    with pytest.raises(ValueError):
        opt.step(theta, np.full(P, np.nan), rng.standard_normal((N, P)))
    with pytest.raises(ValueError):
        opt.step(theta, rng.standard_normal(P), np.full((N, P), np.inf))
    np.testing.assert_array_equal(fish.to_dense(), F)
    assert fish._reuse is factor


def test_reproducible_bitwise():
    def run():
        rng = np.random.default_rng(5)
        fish = DenseFisher(P, decay=0.95, max_reuse_iters=10)
        out = []
        for J, w in _slow_batches(rng, 4):
            fish.update(J, w)
            out.append((fish.solve(rng.standard_normal(P), 1e-3), fish.last_solve))
        return out

    for (xa, ra), (xb, rb) in zip(run(), run()):
        np.testing.assert_array_equal(xa, xb)
        assert ra == rb


def test_reuse_off_and_float32_unchanged():
    rng = np.random.default_rng(6)
    J = rng.standard_normal((N, P))
    g = rng.standard_normal(P)
    for kwargs in ({"max_reuse_iters": 0}, {"dtype": np.float32}):
        fish = DenseFisher(P, **kwargs)
        fish.update(J)
        x = fish.solve(g.astype(fish.dtype), 1e-2)
        np.testing.assert_array_equal(x, ngdfast.damped_solve(fish.to_dense(), g.astype(fish.dtype), 1e-2))
        assert fish.last_solve == SolveReport(True, 0) and fish._reuse is None


def test_reuse_by_default_from_a_size():
    from ngdfast.curvature import REUSE_MIN_PARAMS

    assert DenseFisher(REUSE_MIN_PARAMS - 1).max_reuse_iters == 0
    assert DenseFisher(REUSE_MIN_PARAMS).max_reuse_iters > 0


@pytest.mark.parametrize("kwargs, exception", [
    ({"max_reuse_iters": -1}, ValueError), ({"max_reuse_iters": 2.5}, TypeError), ({"reuse_tol": 0.0}, ValueError),
    ({"reuse_tol": 1.0}, ValueError), ({"reuse_tol": float("nan")}, ValueError), ({"reuse_tol": "1e-12"}, TypeError),
])
def test_bad_reuse_settings(kwargs, exception):
    with pytest.raises(exception, match=f"DenseFisher: {next(iter(kwargs))}"):
        DenseFisher(P, **kwargs)


def test_not_positive_definite_still_raised():
    fish = DenseFisher(P, max_reuse_iters=10)
    fish.update(np.random.default_rng(7).standard_normal((N, P)))  # rank N < P
    with pytest.raises(ngdfast.NotPositiveDefiniteError):
        fish.solve(np.ones(P), 0.0)
