"""``ngdfast.torch`` beside the torch natural-gradient libraries.

One group per case, the variants side by side; the cases, peers and their
settings are those of ``python -m ngdfast bench --kernels torch``
(:mod:`ngdfast.bench.torch`, which documents them):

- ``torch exact``: exact empirical-Fisher natural gradient, MLP 64-128-10,
  N = 256, float64: ngdfast against the hand ``torch.func`` + ``torch.linalg``
  Woodbury step (answers equal to 1e-10);
- ``torch kfac mlp`` / ``torch kfac cnn``: one K-FAC step from the batch (exact
  Fisher, factors and inverses), float32: ngdfast, nngeometry, curvlinops,
  BackPACK, ASDL (each skipped with its import error when it is not installed);
  nngeometry's and curvlinops' directions must equal ngdfast's, BackPACK's
  factors ngdfast's;
- ``torch overhead cnn``: 10 training steps of K-FAC (inverses every 10) and of Adam.

torch runs with ngdfast's thread count during these benchmarks.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch", reason="the torch benchmarks need torch: pip install '.[torch]'")
bt = pytest.importorskip("ngdfast.bench.torch", reason="ngdfast.torch is not importable")

import ngdfast  # noqa: E402
from torch import nn  # noqa: E402

KFAC_PEERS = ("nngeometry", "curvlinops", "backpack", "asdl")


@pytest.fixture(autouse=True)
def same_threads():
    """torch with as many threads as ngdfast, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(ngdfast.get_num_threads())
    yield
    torch.set_num_threads(before)


def _peer(name):
    module, reason = bt.import_peer(name)
    if module is None:
        pytest.skip(reason)
    return module


@pytest.fixture(scope="module")
def exact_problem():
    torch.manual_seed(0)
    model = bt.make_mlp(torch.float64)
    x, y = bt.make_batch("mlp")
    return model, x, y, bt.hand_exact(model, x, y)


@pytest.mark.parametrize("variant", ["ngdfast", "hand-torch.func-woodbury"])
def test_exact_step(run_benchmark, exact_problem, variant):
    model, x, y, hand = exact_problem
    fn = bt.ngdfast_exact if variant == "ngdfast" else bt.hand_exact
    result = run_benchmark("torch exact MLP 64-128-10 N=256 float64", fn, model, x, y)
    expected = bt.ngdfast_exact(model, x, y) if variant != "ngdfast" else hand
    assert bt.relative_error(result, expected) <= bt.EXACT_TOLERANCE


def _kfac_problem(model_name):
    from ngdfast._workloads.torch import make_cnn

    torch.manual_seed(0)
    model = bt.make_mlp(torch.float32) if model_name == "mlp" else make_cnn()
    x, y = bt.make_batch(model_name, dtype=torch.float32)
    return model, x, y, bt.ngdfast_kfac(model, x, y)


@pytest.mark.parametrize("variant", ("ngdfast",) + KFAC_PEERS)
@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_kfac_step(run_benchmark, model_name, variant):
    model, x, y, ours = _kfac_problem(model_name)
    group = f"torch kfac {model_name} N={bt.N} float32"
    tol = bt.KFAC_TOLERANCE[torch.float32]
    if variant == "ngdfast":
        result = run_benchmark(group, bt.ngdfast_kfac, model, x, y)
        assert bt.relative_error(result, ours) == 0.0  # deterministic
        for name in ("curvlinops", "nngeometry"):  # an independent answer where a peer is installed
            module, _ = bt.import_peer(name)
            if module is not None:
                check = bt.curvlinops_kfac if name == "curvlinops" else bt.nngeometry_kfac
                assert bt.relative_error(check(module, copy.deepcopy(model), x, y), result) <= tol
                break
        return
    module = _peer(variant)
    peer = copy.deepcopy(model)
    if variant == "backpack":
        extended, loss_fn = module.extend(peer), module.extend(nn.CrossEntropyLoss())
        result = run_benchmark(group, bt.backpack_kfac, module, extended, loss_fn, x, y)
        conv = [isinstance(m, nn.Conv2d) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        err, note = bt._factor_check(bt.backpack_factors(module, extended, loss_fn, x, y),
                                     bt.ngdfast_factors(model, x, y), conv, torch.float32)
        assert "MISMATCH" not in note, f"BackPACK's factors differ from ngdfast's: {err:.2e}"
        assert all(torch.isfinite(t).all() for t in result)
        return
    fn = {"nngeometry": bt.nngeometry_kfac, "curvlinops": bt.curvlinops_kfac, "asdl": bt.asdl_kfac}[variant]
    result = run_benchmark(group, fn, module, peer, x, y)
    if variant == "asdl":  # bias block and damping rule differ: a descent direction, not the same one
        grad = bt._loss_grad(copy.deepcopy(model), x, y)
        assert sum(float((r * g).sum()) for r, g in zip(result, grad)) > 0
    else:
        assert bt.relative_error(result, ours) <= tol


@pytest.mark.parametrize("variant", ["ngdfast-kfac", "adam"])
def test_training_step_overhead(run_benchmark, variant):
    from ngdfast._workloads.torch import make_cnn

    import torch.nn.functional as F

    torch.manual_seed(0)
    x, y = bt.make_batch("cnn", dtype=torch.float32)
    model = make_cnn()
    if variant == "adam":
        opt, precond = torch.optim.Adam(model.parameters(), lr=1e-3), None
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        precond = ngdfast.torch.Preconditioner(model, kl_radius=1e-3, damping=1e-2,
                                               inverse_interval=bt.INVERSE_INTERVAL)

    def steps():
        for _ in range(bt.INVERSE_INTERVAL):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if precond is not None:
                precond.step()
            opt.step()
        return loss.detach().item()

    with torch.no_grad():
        first = float(F.cross_entropy(model(x), y))
    last = run_benchmark(f"torch overhead cnn N={bt.N}: {bt.INVERSE_INTERVAL} training steps", steps)
    assert last < first  # both train
