"""How K-FAC's inverses are refreshed: ``inverse="eigh"`` (eigendecompositions serving any damping)
against the Cholesky path, and ``overlap=True`` (inverses from a background thread, used one step
later) against the synchronous refresh delayed by a step."""

import copy
import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import ngdfast.torch as ngt  # noqa: E402
from ngdfast import NotPositiveDefiniteError  # noqa: E402
from ngdfast.torch import _linalg  # noqa: E402


def model_of(kind, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 4)).to(dtype)
    if kind == "cnn":
        return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 36, 4)).to(dtype)
    # an embedding (diagonal A), a LayerNorm (diagonal block) and a head over positions
    return nn.Sequential(nn.Embedding(9, 6), nn.LayerNorm(6), nn.Linear(6, 4)).to(dtype)


def batches(kind, count, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        if kind == "mlp":
            x = torch.randn(24, 6, generator=g, dtype=dtype)
        elif kind == "cnn":
            x = torch.randn(24, 1, 6, 6, generator=g, dtype=dtype)
        else:
            x = torch.randint(0, 9, (8, 5), generator=g)
        y = torch.randint(0, 4, x.shape[:2] if kind == "seq" else (24,), generator=g)
        out.append((x, y))
    return out


def backward(model, x, y):
    model.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, 4), y.reshape(-1))
    loss.backward()
    return loss


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def close(a, b, tol):
    for u, v in zip(a, b):
        assert float((u - v).abs().max()) <= tol * max(float(v.abs().max()), 1e-30)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "seq"])
@pytest.mark.parametrize("settings", [
    {},
    {"factor_interval": 2, "inverse_interval": 3},
    {"max_factor_dim": 5},  # diagonal factors on the wide sides
    {"fisher": "empirical", "kfac_approx": "reduce"},
])
def test_eigh_equals_cholesky_at_the_same_damping(kind, settings):
    """Trained 5 steps each (SGD lr=1), the two paths take the same steps to rounding."""
    models = {inv: model_of(kind) for inv in ("cholesky", "eigh")}
    runs = {}
    for inv, model in models.items():
        precond = ngt.Preconditioner(model, inverse=inv, damping=1e-2, kl_radius=1e-2,
                                     generator=torch.Generator().manual_seed(3), **settings)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        steps = []
        for x, y in batches(kind, 5):
            backward(model, x, y)
            info = precond.step()
            steps.append(grads(model))
            opt.step()
        runs[inv] = (steps, info)
    for a, b in zip(runs["cholesky"][0], runs["eigh"][0]):
        close(b, a, 1e-9)
    assert runs["eigh"][1].inverses_updated == runs["cholesky"][1].inverses_updated


def test_eigh_float32_within_float32_rounding():
    models = {inv: model_of("cnn", torch.float32) for inv in ("cholesky", "eigh")}
    out = {}
    for inv, model in models.items():
        precond = ngt.Preconditioner(model, inverse=inv, damping=1e-2, generator=torch.Generator().manual_seed(3))
        x, y = batches("cnn", 1, dtype=torch.float32)[0]
        backward(model, x, y)
        precond.step()
        out[inv] = grads(model)
    close(out["eigh"], out["cholesky"], 1e-3)


def test_eigh_uses_the_damping_of_each_step_between_refreshes():
    """Cholesky reuses inverses made at the refresh's damping; eigh applies the current λ to the
    refresh's factors: the step equals fresh Cholesky inverses of those factors at the new λ."""
    model = model_of("mlp")
    precond = ngt.Preconditioner(model, inverse="eigh", damping=1e-2, inverse_interval=10, factor_interval=10,
                                 generator=torch.Generator().manual_seed(3))
    data = batches("mlp", 2)
    backward(model, *data[0])
    precond.step()
    A, S = dict(precond._A), dict(precond._S)
    precond.damping = 0.3  # as report_loss would set it
    backward(model, *data[1])
    g = grads(model)
    info = precond.step()
    assert not info.inverses_updated and info.damping == 0.3
    inverses = _linalg.damped_inverses(precond._layers, A, S, 0.3)
    nat = []
    for i, layer in enumerate(precond._layers):
        Ai, Si = inverses[i]
        nat += layer.split(_linalg.kfac_apply(Si, layer.grad_matrix(g[2 * i : 2 * i + 2], torch.float64), Ai))
    q = math.fsum(float((u * v).sum()) for u, v in zip(g, nat))
    beta = math.sqrt(2 * precond.kl_radius / q)
    close(grads(model), [beta * v for v in nat], 1e-10)


def test_eigh_retries_raise_the_damping_without_refactoring():
    """A rank-deficient factor with zero damping: both paths retry to the same damping and step."""
    out = {}
    for inv in ("cholesky", "eigh"):
        model = model_of("mlp")
        precond = ngt.Preconditioner(model, inverse=inv, damping=0.0, min_damping=1e-4, max_retries=3,
                                     generator=torch.Generator().manual_seed(3))
        x, y = batches("mlp", 1)[0]
        backward(model, x[:3], y[:3])  # 3 samples: A (7 × 7) and S have rank <= 3
        info = precond.step()
        out[inv] = (grads(model), info.damping, info.retries)
    assert out["eigh"][1:] == out["cholesky"][1:] == (1e-4, 1)
    close(out["eigh"][0], out["cholesky"][0], 1e-8)


def test_eigh_refuses_a_damped_factor_that_is_not_positive():
    model = model_of("mlp")
    precond = ngt.Preconditioner(model, inverse="eigh", damping=0.0, max_retries=0)
    x, y = batches("mlp", 1)[0]
    backward(model, x[:3], y[:3])
    before = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(NotPositiveDefiniteError, match="increase the damping"):
        precond.step()
    close(grads(model), before, 0.0)
    assert precond.n_steps == 0 and precond._inverses is None


@pytest.mark.parametrize("inverse", ["cholesky", "eigh"])
@pytest.mark.parametrize("inverse_interval", [1, 2])
def test_overlap_equals_the_synchronous_refresh_one_step_later(inverse, inverse_interval):
    """Same batches, parameters held fixed: the overlapped step t preconditions with what the
    synchronous preconditioner held after step t − 1."""
    sync_model, lap_model = model_of("cnn"), model_of("cnn")
    kwargs = dict(inverse=inverse, damping=1e-2, factor_interval=1, inverse_interval=inverse_interval,
                  kl_radius=1e-3)
    sync = ngt.Preconditioner(sync_model, generator=torch.Generator().manual_seed(3), **kwargs)
    lap = ngt.Preconditioner(lap_model, overlap=True, generator=torch.Generator().manual_seed(3), **kwargs)
    held = None
    for t, (x, y) in enumerate(batches("cnn", 6)):
        backward(sync_model, x, y)
        backward(lap_model, x, y)
        g = grads(sync_model)
        sync.step()
        info = lap.step()
        if t == 0:  # nothing to overlap with yet: a synchronous first refresh
            assert info.inverses_updated
            close(grads(lap_model), grads(sync_model), 0.0)
        else:
            nat = []
            for i, layer in enumerate(sync._layers):
                G = layer.grad_matrix(g[2 * i : 2 * i + 2], torch.float64)
                if inverse == "eigh":
                    X = _linalg.eigen_apply(held[i], G, 1e-2, layer)
                else:
                    X = _linalg.kfac_apply(held[i][1], G, held[i][0])
                nat += layer.split(X)
            q = math.fsum(float((u * v).sum()) for u, v in zip(g, nat))
            close(grads(lap_model), [math.sqrt(2e-3 / q) * v for v in nat], 1e-12)
            # a refresh launched at step t - 1 >= 1 is taken up at t (step 0's was synchronous)
            assert info.inverses_updated == (t >= 2 and (t - 1) % inverse_interval == 0)
        held = sync._inverses


def test_overlap_state_dict_resumes_with_the_refresh_in_flight():
    ref_model = model_of("mlp")
    ref = ngt.Preconditioner(ref_model, factor_interval=1, inverse_interval=1, overlap=True, inverse="eigh",
                             generator=torch.Generator().manual_seed(3))
    opt = torch.optim.SGD(ref_model.parameters(), lr=1.0)
    data = batches("mlp", 6)
    for x, y in data[:3]:
        backward(ref_model, x, y)
        ref.step()
        opt.step()
    assert ref._refresh is not None  # launched by the last step
    saved, model_state = copy.deepcopy(ref.state_dict()), copy.deepcopy(ref_model.state_dict())
    expected = []
    for x, y in data[3:]:
        backward(ref_model, x, y)
        ref.step()
        opt.step()
        expected.append(grads(ref_model))
    model = model_of("mlp")
    model.load_state_dict(model_state)
    resumed = ngt.Preconditioner(model, factor_interval=1, inverse_interval=1, overlap=True, inverse="eigh")
    resumed.load_state_dict(saved)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for (x, y), want in zip(data[3:], expected):
        backward(model, x, y)
        resumed.step()
        opt.step()
        close(grads(model), want, 0.0)


def test_overlap_falls_back_to_a_synchronous_refresh_when_the_background_one_fails(monkeypatch):
    sync_model, lap_model = model_of("mlp"), model_of("mlp")
    kwargs = dict(factor_interval=1, inverse_interval=1, generator=torch.Generator().manual_seed(3))
    sync = ngt.Preconditioner(sync_model, **kwargs)
    lap = ngt.Preconditioner(lap_model, overlap=True, **dict(kwargs, generator=torch.Generator().manual_seed(3)))
    data = batches("mlp", 2)
    for model, precond in ((sync_model, sync), (lap_model, lap)):
        backward(model, *data[0])
        precond.step()
    failing = lap._invert

    def fail(A, S, lam):
        raise NotPositiveDefiniteError("injected", pivot=1, damping=lam)

    monkeypatch.setattr(lap, "_invert", fail)
    for model, precond in ((sync_model, sync), (lap_model, lap)):
        backward(model, *data[1])
        precond.step()  # lap: launches the failing refresh, uses step 0's inverses
    monkeypatch.setattr(lap, "_invert", failing)
    assert lap._refresh.wait().error is not None
    # step 2: the failed refresh is recomputed here, synchronously, from this step's factors
    for model in (sync_model, lap_model):
        backward(model, *data[0])
    sync.step()
    info = lap.step()
    assert info.inverses_updated and lap._refresh is None
    close(grads(lap_model), grads(sync_model), 1e-12)


def test_distributed_refuses_eigh_and_overlap(monkeypatch):
    from ngdfast.torch import _distributed

    monkeypatch.setattr(_distributed, "enabled", lambda distributed, func: True)
    for kwargs in ({"inverse": "eigh"}, {"overlap": True}):
        with pytest.raises(ValueError, match="single-process options"):
            ngt.Preconditioner(model_of("mlp"), **kwargs)


def test_bad_inverse_is_refused():
    with pytest.raises(ValueError, match="inverse"):
        ngt.Preconditioner(model_of("mlp"), inverse="svd")
