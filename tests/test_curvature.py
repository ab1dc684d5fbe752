"""Curvature representations against ngdfast.reference and each other."""

import numpy as np
import pytest

import ngdfast
from ngdfast import DenseFisher, DiagonalFisher, KFACFisher, LowRankFisher, NotPositiveDefiniteError
from ngdfast import reference as ref
from ngdfast.models import MLP

P = 12
DECAY = 0.8


def _batches(seed=0, sizes=(5, 7, 4), p=P, weighted=(False, True, False)):
    rng = np.random.default_rng(seed)
    out = []
    for n, wt in zip(sizes, weighted):
        J = rng.standard_normal((n, p))
        w = rng.uniform(0.1, 2.0, n) if wt else None
        out.append((J, w))
    return out


def _reference_ema(batches, decay):
    """The EMA rule with the first batch replacing the empty estimate."""
    F = None
    for J, w in batches:
        Fb = ref.fisher(J, w)
        F = Fb if F is None else decay * F + (1 - decay) * Fb
    return F


@pytest.mark.parametrize("cls", [DenseFisher, LowRankFisher])
def test_ema_over_several_updates_matches_reference(cls):
    batches = _batches()
    curv = cls(P, decay=DECAY)
    for J, w in batches:
        curv.update(J, w)
    expected = _reference_ema(batches, DECAY)
    np.testing.assert_allclose(curv.to_dense(), expected, atol=1e-12)
    assert curv.n_updates == 3
    v = np.random.default_rng(5).standard_normal(P)
    np.testing.assert_allclose(curv.mv(v), expected @ v, atol=1e-12)


def test_lowrank_and_dense_agree():
    rng = np.random.default_rng(1)
    batches = _batches(sizes=(3, 4, 2), p=40)  # 9 rows < P = 40: F is singular, λ does the work
    dense, low = DenseFisher(40, decay=0.5), LowRankFisher(40, decay=0.5, max_rows=64)
    for J, w in batches:
        dense.update(J, w)
        low.update(J, w)
    g = rng.standard_normal(40)
    G = rng.standard_normal((40, 3))
    for lam in (1e-3, 0.5):
        np.testing.assert_allclose(low.solve(g, lam), dense.solve(g, lam), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(low.solve(G, lam), dense.solve(G, lam), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(low.solve(g, 0.5), ref.damped_solve(_reference_ema(batches, 0.5), g, 0.5))
    assert low.rows.shape == (9, 40)
    assert low.nbytes < dense.nbytes


def test_lowrank_drops_the_oldest_rows_past_max_rows():
    b = _batches(sizes=(4, 4, 4), weighted=(False, False, False))
    low = LowRankFisher(P, max_rows=8, decay=DECAY)
    for J, w in b:
        low.update(J, w)
    assert low.rows.shape == (8, P)
    # The first batch is gone; the two kept ones carry their EMA weights, renormalised.
    w2, w3 = DECAY * (1 - DECAY), 1 - DECAY
    expected = (w2 * ref.fisher(b[1][0]) + w3 * ref.fisher(b[2][0])) / (w2 + w3)
    np.testing.assert_allclose(low.to_dense(), expected, atol=1e-12)
    assert low.nbytes <= 8 * P * 8 + 8 * 8


def test_lowrank_keeps_the_heaviest_rows_of_an_oversized_batch_and_skips_zero_weights():
    rng = np.random.default_rng(2)
    J = rng.standard_normal((6, P))
    w = np.array([0.0, 5.0, 0.01, 3.0, 0.0, 0.02])
    low = LowRankFisher(P, max_rows=2)
    low.update(J, w)
    np.testing.assert_allclose(low.to_dense(), ref.fisher(J[[1, 3]], w[[1, 3]]))
    low = LowRankFisher(P, max_rows=10)
    low.update(J, w)
    assert low.rows.shape == (4, P)
    np.testing.assert_allclose(low.to_dense(), ref.fisher(J, w), atol=1e-12)


def test_lowrank_never_forms_p_by_p():
    p = 50_000
    low = LowRankFisher(p, max_rows=16)
    rng = np.random.default_rng(3)
    J = rng.standard_normal((8, p))
    low.update(J)
    g = rng.standard_normal(p)
    x = low.solve(g, 0.1)
    assert low.nbytes < 16 * p * 8 + 1024
    # Check (F + λI) x = g through mv, which is O(N P) too.
    np.testing.assert_allclose(low.mv(x) + 0.1 * x, g, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("cls", [DenseFisher, LowRankFisher, DiagonalFisher])
def test_repeated_solves_reuse_a_factorisation_and_agree(cls):
    curv = cls(P)
    J, w = _batches()[1]
    curv.update(J, w)
    g = np.random.default_rng(4).standard_normal(P)
    first = curv.solve(g, 0.1)
    second = curv.solve(g, 0.1)  # builds the reusable inverse
    third = curv.solve(2 * g, 0.1)
    both = curv.solve(np.stack([g, 2 * g], axis=1), 0.1)  # several right-hand sides, reused state
    np.testing.assert_allclose(second, first, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(third, 2 * first, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(both, np.stack([first, 2 * first], axis=1), rtol=1e-9, atol=1e-12)
    x = curv.solve(g, 1.0)  # a new damping refactors
    np.testing.assert_allclose(curv.mv(x) + x, g, atol=1e-9)
    curv.update(*_batches()[0])  # invalidates the cache
    np.testing.assert_allclose(curv.mv(curv.solve(g, 0.1)) + 0.1 * curv.solve(g, 0.1), g, atol=1e-9)


def test_diagonal_equals_the_diagonal_of_dense():
    batches = _batches()
    diag, dense = DiagonalFisher(P, decay=DECAY), DenseFisher(P, decay=DECAY)
    for J, w in batches:
        diag.update(J, w)
        dense.update(J, w)
    d = np.diag(dense.to_dense())
    np.testing.assert_allclose(diag.diagonal, d, atol=1e-12)
    np.testing.assert_allclose(diag.to_dense(), np.diag(d), atol=1e-12)
    g = np.arange(P, dtype=float)
    np.testing.assert_allclose(diag.solve(g, 0.3), g / (d + 0.3))
    np.testing.assert_allclose(diag.mv(g), d * g)


def _kfac_setup(seed=0, weighted=False):
    shapes = [(3, 5), (2, 4)]
    rng = np.random.default_rng(seed)
    acts = [rng.standard_normal((9, i)) for _, i in shapes]
    grads = [rng.standard_normal((9, o)) for o, _ in shapes]
    w = rng.uniform(0.5, 1.5, 9) if weighted else None
    return shapes, acts, grads, w


@pytest.mark.parametrize("weighted", [False, True])
def test_kfac_equals_the_kronecker_formula(weighted):
    shapes, acts, grads, w = _kfac_setup(weighted=weighted)
    kfac = KFACFisher(shapes, decay=DECAY)
    kfac.update(acts, grads, weights=w)
    blocks = [np.kron(ref.fisher(d, w), ref.fisher(a, w)) for a, d in zip(acts, grads)]
    F = kfac.to_dense()
    np.testing.assert_allclose(F[:15, :15], blocks[0], atol=1e-12)
    np.testing.assert_allclose(F[15:, 15:], blocks[1], atol=1e-12)
    np.testing.assert_array_equal(F[:15, 15:], 0.0)
    v = np.random.default_rng(1).standard_normal(kfac.n_params)
    np.testing.assert_allclose(kfac.mv(v), F @ v, atol=1e-12)

    g = np.random.default_rng(2).standard_normal(kfac.n_params)
    x = kfac.solve(g, 0.01)
    for (a, d), G, X in zip(zip(acts, grads), kfac.split(g), kfac.split(x)):
        np.testing.assert_allclose(X, ref.kfac_precondition(G, ref.fisher(a, w), ref.fisher(d, w), 0.01))
    as_list = kfac.solve(kfac.split(g), 0.01)
    np.testing.assert_allclose(kfac.flatten(as_list), x)


def test_kfac_unfactored_damping_is_the_kronecker_of_damped_factors():
    shapes, acts, grads, _ = _kfac_setup(seed=3)
    kfac = KFACFisher(shapes, factored_damping=False)
    kfac.update(acts, grads)
    lam = 0.04
    g = np.random.default_rng(4).standard_normal(kfac.n_params)
    x = kfac.split(kfac.solve(g, lam))
    for (A, S), G, X in zip(kfac.factors, kfac.split(g), x):
        damped = np.kron(S + np.sqrt(lam) * np.eye(len(S)), A + np.sqrt(lam) * np.eye(len(A)))
        np.testing.assert_allclose(X.ravel(), np.linalg.solve(damped, G.ravel()), rtol=1e-9)


def test_kfac_ema_and_model_stats():
    model = MLP([4, 5, 3])
    rng = np.random.default_rng(0)
    theta = model.init(rng)
    kfac = KFACFisher(model.layer_shapes, decay=DECAY)
    X1, X2 = rng.standard_normal((6, 4)), rng.standard_normal((8, 4))
    s1 = model.kfac_stats(theta, X1, None, "exact")
    s2 = model.kfac_stats(theta, X2, None, "sampled", rng=1)
    kfac.update(*s1)
    kfac.update(*s2)
    for l, (A, S) in enumerate(kfac.factors):
        np.testing.assert_allclose(A, DECAY * ref.fisher(s1[0][l]) + (1 - DECAY) * ref.fisher(s2[0][l]))
        np.testing.assert_allclose(S, DECAY * ref.fisher(s1[1][l]) + (1 - DECAY) * ref.fisher(s2[1][l]))


ALL = [
    pytest.param(lambda: DenseFisher(P), id="dense"),
    pytest.param(lambda: LowRankFisher(P, max_rows=6), id="lowrank"),
    pytest.param(lambda: DiagonalFisher(P), id="diagonal"),
]


@pytest.mark.parametrize("make", ALL)
def test_rejected_update_changes_nothing(make):
    curv = make()
    J, _ = _batches()[0]
    curv.update(J)
    before, nbytes = curv.snapshot(), curv.nbytes
    bad = J.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        curv.update(bad)
    with pytest.raises(ValueError, match="J"):
        curv.update(J[:, :-1])
    with pytest.raises(ValueError, match="empty"):
        curv.update(J[:0])
    with pytest.raises(ValueError, match="weights"):
        curv.update(J, -np.ones(len(J)))
    with pytest.raises(ValueError, match="weights"):
        curv.update(J, np.zeros(len(J)))
    with pytest.raises(ValueError, match="weights"):
        curv.update(J, np.ones(len(J) + 1))
    with pytest.raises(TypeError):
        curv.update(J.astype(complex))
    assert_same_state(curv.snapshot(), before)
    assert curv.n_updates == 1 and curv.nbytes == nbytes
    with pytest.raises(ValueError, match="damping"):
        curv.solve(np.ones(P), -1.0)
    with pytest.raises(ValueError, match="g"):
        curv.solve(np.ones(P + 1), 1.0)


def test_kfac_rejected_update_changes_no_layer():
    shapes, acts, grads, _ = _kfac_setup()
    kfac = KFACFisher(shapes)
    kfac.update(acts, grads)
    before = kfac.factors
    state = kfac.snapshot()
    bad = [g.copy() for g in grads]
    bad[1][0, 0] = np.inf  # the last layer: the first must not have been touched either
    with pytest.raises(ValueError, match=r"output_grads\[1\]"):
        kfac.update(acts, bad)
    with pytest.raises(ValueError, match="layers"):
        kfac.update(acts[:1], grads[:1])
    with pytest.raises(ValueError, match=r"activations\[0\]"):
        kfac.update([acts[0][:, :-1], acts[1]], grads)
    for (A0, S0), (A1, S1) in zip(before, kfac.factors):
        np.testing.assert_array_equal(A0, A1)
        np.testing.assert_array_equal(S0, S1)
    assert_same_state(kfac.snapshot(), state)


@pytest.mark.parametrize("make", ALL)
def test_not_positive_definite_without_damping(make):
    curv = make()
    J, _ = _batches()[0]
    J[:, 4] = 0.0  # a parameter no sample moves: F has a zero row and column
    curv.update(J)
    with pytest.raises(NotPositiveDefiniteError) as err:
        curv.solve(np.ones(P), 0.0)
    assert isinstance(err.value, np.linalg.LinAlgError)
    assert "damping" in str(err.value)
    assert np.all(np.isfinite(curv.solve(np.ones(P), 1e-3)))


@pytest.mark.parametrize("make", ALL)
def test_snapshot_restore_roundtrip(make):
    curv = make()
    b = _batches()
    curv.update(*b[0])
    snap = curv.snapshot()
    F0, x0 = curv.to_dense(), curv.solve(np.ones(P), 0.1)
    curv.update(*b[1])
    curv.update(*b[2])
    curv.restore(snap)
    assert_same_state(curv.snapshot(), snap)
    # The compiled kernels may differ in the last bits between identical calls.
    np.testing.assert_allclose(curv.to_dense(), F0, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(curv.solve(np.ones(P), 0.1), x0, rtol=1e-13)
    assert curv.n_updates == 1


def assert_same_state(a, b):
    """Two snapshots hold exactly the same state."""
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, list):
            assert len(x) == len(y)
            for u, v in zip(x, y):
                np.testing.assert_array_equal(u, v, err_msg=key)
        else:
            np.testing.assert_array_equal(x, y, err_msg=key)


def test_first_update_replaces_and_float32_is_kept():
    J = np.random.default_rng(0).standard_normal((5, P)).astype(np.float32)
    dense = DenseFisher(P, decay=0.99, dtype=np.float32)
    dense.update(J)
    F = dense.to_dense()
    assert F.dtype == np.float32
    np.testing.assert_allclose(F, ref.fisher(J.astype(float)), rtol=1e-5, atol=1e-6)
    assert isinstance(dense, ngdfast.curvature.Curvature)
    with pytest.raises(ValueError, match="decay"):
        DenseFisher(P, decay=1.0)
    with pytest.raises(ValueError, match="max_rows"):
        LowRankFisher(P, max_rows=0)
    with pytest.raises(ValueError, match="layer_shapes"):
        KFACFisher([(3,)])


def test_lowrank_keeps_its_own_copy_and_snapshots_by_reference():
    J = np.random.default_rng(6).standard_normal((5, P))
    low = LowRankFisher(P, max_rows=8)
    low.update(J)
    expected = ref.fisher(J)
    J[:] = 0.0  # the caller reuses its buffer
    np.testing.assert_allclose(low.to_dense(), expected)
    snap = low.snapshot()
    assert snap["_rows"] is low.rows and not low.rows.flags.writeable
    low.update(np.ones((6, P)))
    assert low.rows.shape == (8, P)
    low.restore(snap)
    np.testing.assert_allclose(low.to_dense(), expected)
