"""ngdfast.torch on torch.distributed (gloo, loopback): the distributed step is the
single-process step on the concatenation of the ranks' batches.

Each world size runs once, as R subprocesses of this file (``python test_torch_distributed.py
worker RANK WORLD PORT OUT``) under a wall-clock timeout, with the process group's own timeout
on every collective: a hang fails the test instead of blocking CI. The ranks run every case in
one process group and rank 0 saves the results; the tests compare them with single-process
runs computed here.
"""

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import ngdfast.torch as ngt  # noqa: E402
from test_torch_gpt import T as GPT_CONTEXT  # noqa: E402
from test_torch_gpt import V as GPT_VOCAB  # noqa: E402
from test_torch_gpt import tiny_gpt  # noqa: E402

if not dist.is_available():  # pragma: no cover - torch builds without distributed
    pytest.skip("torch.distributed is not available", allow_module_level=True)

N_LOCAL = 8  # samples per rank
STEPS = 3


def mlp(seed=0, hidden=12):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 4)).double()


def mlp_ln(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.LayerNorm(10), nn.Tanh(), nn.Linear(10, 4)).double()


def tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, stride=2), nn.Tanh(),
                         nn.Flatten(), nn.Linear(3 * 3 * 3, 4)).double()


MODELS = {"mlp": mlp, "mlp_ln": mlp_ln, "tiny": tiny, "cnn": cnn, "gpt": lambda: tiny_gpt(per_sample=True)}
IN_SHAPE = {"mlp": (6,), "mlp_ln": (6,), "tiny": (3,), "cnn": (1, 7, 7)}
CLASSES = {"mlp": 4, "mlp_ln": 4, "tiny": 2, "cnn": 4, "gpt": GPT_VOCAB}

# name: (model, Preconditioner settings, DDP wrapper)
CASES = {
    "kfac_exact_fisher": ("mlp", dict(fisher="exact"), False),
    "kfac_exact_fisher_gradients": ("mlp", dict(fisher="exact", distribute="gradients"), False),
    "kfac_ddp_empirical": ("mlp", dict(fisher="empirical"), True),
    "kfac_ddp_cnn_gradients": ("cnn", dict(fisher="exact", distribute="gradients"), True),
    "kfac_fallback_intervals": ("mlp_ln", dict(fisher="empirical", factor_interval=2, inverse_interval=2,
                                               decay=0.8), False),
    "kfac_small_buckets": ("mlp", dict(fisher="empirical", bucket_mb=1e-4), True),
    "diagonal_ddp": ("mlp_ln", dict(curvature="diagonal", fisher="exact"), True),
    "exact_sample_space": ("mlp", dict(curvature="exact", fisher="empirical"), False),
    "exact_parameter_space": ("tiny", dict(curvature="exact", fisher="empirical"), True),
    "exact_exact_fisher": ("tiny", dict(curvature="exact", fisher="exact"), False),
    # a sequence model: (B, T, V) logits, positions ignored by the loss; counts are positions
    "kfac_gpt_empirical": ("gpt", dict(fisher="empirical"), False),
    "kfac_gpt_ddp_exact": ("gpt", dict(fisher="exact", distribute="gradients"), True),
    "exact_gpt": ("gpt", dict(curvature="exact", fisher="empirical"), False),
}
COMMON = dict(kl_radius=1e-2, damping=1e-2, factor_interval=1, inverse_interval=1)


def batch(model, world, seed=1):
    """The global batch of ``world * N_LOCAL`` samples; rank r holds rows r·n ... (r+1)·n − 1."""
    g = torch.Generator().manual_seed(seed)
    if model == "gpt":  # tokens; the first position of every sequence ignored (equal counts per rank)
        x = torch.randint(0, GPT_VOCAB, (world * N_LOCAL, GPT_CONTEXT), generator=g)
        y = torch.randint(0, GPT_VOCAB, (world * N_LOCAL, GPT_CONTEXT), generator=g)
        y[:, 0] = -100
        return x, y
    x = torch.randn(world * N_LOCAL, *IN_SHAPE[model], generator=g, dtype=torch.float64)
    return x, torch.randint(0, CLASSES[model], (world * N_LOCAL,), generator=g)


def nll(logits, y):
    """The mean cross-entropy over the counted positions, whatever the output's positions."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def train(model, precond, batches, steps=STEPS):
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for s in range(steps):
        x, y = batches(s)
        opt.zero_grad()
        nll(model(x), y).backward()
        precond.step(x, y)
        opt.step()


def train_adaptive(model, precond, batches, steps=STEPS):
    """Levenberg-Marquardt damping from step(loss=...) and report_loss (rank-local losses)."""
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for s in range(steps):
        x, y = batches(s)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        precond.step(loss=loss)
        opt.step()
        with torch.no_grad():
            precond.report_loss(F.cross_entropy(model(x), y))
    return precond.damping


def train_accumulated(model, precond, batches, steps=STEPS):
    """Two micro-batches per step (loss halves): a bucket sent after the first is superseded."""
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for s in range(steps):
        x, y = batches(s)
        h = x.shape[0] // 2
        opt.zero_grad()
        for part in (slice(0, h), slice(h, None)):
            (0.5 * F.cross_entropy(model(x[part]), y[part])).backward()
        precond.step()
        opt.step()


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def step_batches(name, world, rank=None):
    """Per-step batches (a different one each step); the rank's slice, or all of it."""
    def batches(s):
        x, y = batch(name, world, seed=1 + s)
        if rank is None:
            return x, y
        return x[rank * N_LOCAL : (rank + 1) * N_LOCAL], y[rank * N_LOCAL : (rank + 1) * N_LOCAL]
    return batches


# ------------------------------------------------------------------------------- the ranks
def run_cases(rank, world, out):
    from torch.nn.parallel import DistributedDataParallel as DDP

    results = {}
    for case, (name, settings, ddp) in CASES.items():
        model = MODELS[name]()
        wrapped = DDP(model) if ddp else model
        precond = ngt.Preconditioner(wrapped, **dict(COMMON, **settings))
        assert precond._dist is not None
        train(wrapped, precond, step_batches(name, world, rank))
        early = precond._dist.reducer.launched_in_backward if precond._dist.reducer else None
        results[case] = {"params": params(model), "bytes": precond.communication, "early": early,
                         "buckets": len(precond._dist.reducer.buckets) if precond._dist.reducer else None}

    # adaptive damping: the ranks' losses are averaged, so λ moves alike everywhere
    model = mlp()
    precond = ngt.Preconditioner(model, fisher="empirical", adaptive_damping=True, **COMMON)
    lam = train_adaptive(model, precond, step_batches("mlp", world, rank))
    results["adaptive_damping"] = {"params": params(model), "damping": lam}

    # gradient accumulation: the statistics of both micro-batches, reduced afresh in step()
    for fisher in ("exact", "empirical"):
        model = mlp()
        precond = ngt.Preconditioner(model, fisher=fisher, **COMMON)
        train_accumulated(model, precond, step_batches("mlp", world, rank))
        results[f"accumulated_{fisher}"] = params(model)

    # unequal batches: the factors are those of the concatenation (weights by counts)
    model = mlp()
    precond = ngt.Preconditioner(model, fisher="exact", **COMMON)
    x, y = batch("mlp", world)
    sizes = [4 + 2 * r for r in range(world)]
    lo = sum(sizes[:rank])
    model(x[lo : lo + sizes[rank]]).sum().backward()  # any backward; the factors use the model's labels
    precond.step()
    results["unequal_factors"] = {"factors": precond.factors, "sizes": sizes}

    # state_dict saved on rank 0, loaded on every rank, resumes identically (sampled Fisher)
    for distribute in ("inverses", "gradients"):
        model = mlp()
        precond = ngt.Preconditioner(model, **dict(COMMON, inverse_interval=2), distribute=distribute)
        train(model, precond, step_batches("mlp", world, rank), steps=2)
        state = precond.state_dict()  # collective
        path = Path(out) / f"state_{distribute}.pt"
        if rank == 0:
            torch.save({"precond": state, "model": model.state_dict()}, path)
        dist.barrier()
        saved = torch.load(path, weights_only=False)
        train(model, precond, lambda s: step_batches("mlp", world, rank)(s + 2), steps=1)
        straight = params(model)
        model2 = mlp(seed=5)
        model2.load_state_dict(saved["model"])
        precond2 = ngt.Preconditioner(model2, **dict(COMMON, inverse_interval=2), distribute=distribute)
        precond2.load_state_dict(saved["precond"])
        train(model2, precond2, lambda s: step_batches("mlp", world, rank)(s + 2), steps=1)
        results[f"resume_{distribute}"] = {"straight": straight, "resumed": params(model2)}

    # disagreement: a clear error on every rank, no hang
    for case, make in (("mismatch_damping", lambda: ngt.Preconditioner(mlp(), damping=1e-3 * (1 + rank))),
                       ("mismatch_shape", lambda: ngt.Preconditioner(mlp(hidden=12 + (rank == world - 1))))):
        try:
            make()
        except ValueError as e:
            results[case] = str(e)
        else:
            results[case] = None

    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        torch.save(gathered, Path(out) / "results.pt")


def worker(rank, world, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        run_cases(rank, world, out)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world, out, timeout=240):
    """Run the ranks as subprocesses; fail (and kill them) past ``timeout`` seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(ngt.__file__).parents[2])] + sys.path))
    port = free_port()
    procs = [subprocess.Popen([sys.executable, __file__, "worker", str(r), str(world), str(port), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{world} ranks did not finish within {timeout} s (hang?)")
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{log[-4000:]}"
    return torch.load(Path(out) / "results.pt", weights_only=False)


# ------------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module", params=[2, 4], ids=["2ranks", "4ranks"])
def run(request, tmp_path_factory):
    world = request.param
    return world, launch(world, tmp_path_factory.mktemp(f"dist{world}"))


def single_process(case, world):
    name, settings, _ = CASES[case]
    model = MODELS[name]()
    precond = ngt.Preconditioner(model, **dict(COMMON, **settings))
    train(model, precond, step_batches(name, world))
    return params(model)


@pytest.mark.parametrize("case", list(CASES))
def test_distributed_step_is_the_single_process_step(run, case):
    world, results = run
    expected = single_process(case, world)
    for rank in range(world):
        for got, want in zip(results[rank][case]["params"], expected):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    moved = [p for p, q in zip(expected, params(MODELS[CASES[case][0]]())) if not torch.equal(p, q)]
    assert moved  # the comparison is not vacuous


def test_adaptive_damping_averages_the_losses(run):
    world, results = run
    model = mlp()
    precond = ngt.Preconditioner(model, fisher="empirical", adaptive_damping=True, **COMMON)
    lam = train_adaptive(model, precond, step_batches("mlp", world))
    assert lam != COMMON["damping"]  # the rule did act
    for rank in range(world):
        assert results[rank]["adaptive_damping"]["damping"] == pytest.approx(lam, rel=1e-12)
        for got, want in zip(results[rank]["adaptive_damping"]["params"], params(model)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_gradient_accumulation_is_the_whole_batch(run, fisher):
    world, results = run
    model = mlp()
    train(model, ngt.Preconditioner(model, fisher=fisher, **COMMON), step_batches("mlp", world))
    for rank in range(world):
        for got, want in zip(results[rank][f"accumulated_{fisher}"], params(model)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_work_distribution_options_agree(run):
    world, results = run
    for rank in range(world):
        a = results[rank]["kfac_exact_fisher"]["params"]
        b = results[rank]["kfac_exact_fisher_gradients"]["params"]
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-13)
    bytes_ = [results[r]["kfac_exact_fisher_gradients"]["bytes"] for r in range(world)]
    assert sum(b.get("directions", 0) for b in bytes_) > 0 and not any("inverses" in b for b in bytes_)
    assert all(results[r]["kfac_exact_fisher"]["bytes"].get("inverses", 0) >= 0 for r in range(world))


def test_factors_travel_as_triangles_on_update_steps_only(run):
    world, results = run
    shapes = [(12, 7), (4, 13)]  # (out, in + bias) of mlp's layers
    tri = sum(o * (o + 1) // 2 + i * (i + 1) // 2 for o, i in shapes)
    counts = 1 + len(shapes)  # n and the rows of A per layer: one bucket
    got = results[0]["kfac_exact_fisher"]["bytes"]["factors"]
    assert got == STEPS * 8 * (tri + counts)
    # factor_interval=2 over 3 steps: updates on steps 0 and 2 only
    ln = results[0]["kfac_fallback_intervals"]["bytes"]["factors"]
    per_update = 8 * ((10 * 11 // 2 + 7 * 8 // 2) + (4 * 5 // 2 + 11 * 12 // 2) + 20 + 1 + 3)
    assert ln == 2 * per_update
    naive = STEPS * 8 * sum(o * o + i * i for o, i in shapes)
    assert got < 0.6 * naive


def test_factor_buckets_start_during_the_backward_pass(run):
    world, results = run
    for case in ("kfac_exact_fisher", "kfac_ddp_empirical", "kfac_ddp_cnn_gradients"):
        r = results[0][case]
        assert r["early"] == STEPS * r["buckets"]  # every bucket of every step, before step()
    r = results[0]["kfac_small_buckets"]
    assert r["buckets"] == 2 and r["early"] == STEPS * 2  # one bucket per layer, each as its layer is done


def test_unequal_batches_average_the_factors_by_sample_count(run):
    world, results = run
    sizes = results[0]["unequal_factors"]["sizes"]
    model = mlp()
    precond = ngt.Preconditioner(model, fisher="exact", **COMMON)
    x, _ = batch("mlp", world)
    model(x[: sum(sizes)]).sum().backward()
    precond.step()
    for rank in range(world):
        for name, (A, S) in precond.factors.items():
            A_r, S_r = results[rank]["unequal_factors"]["factors"][name]
            torch.testing.assert_close(A_r, A, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(S_r, S, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("distribute", ["inverses", "gradients"])
def test_state_dict_from_rank_0_resumes_identically(run, distribute):
    world, results = run
    for rank in range(world):
        r = results[rank][f"resume_{distribute}"]
        for a, b in zip(r["straight"], r["resumed"]):
            assert torch.equal(a, b)


def test_disagreeing_ranks_raise_on_every_rank(run):
    world, results = run
    for rank in range(world):
        assert "damping" in results[rank]["mismatch_damping"]
        msg = results[rank]["mismatch_shape"]
        assert msg is not None and "parameters" in msg and f"rank {world - 1}" in msg


def test_distributed_true_without_a_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="not initialised"):
        ngt.Preconditioner(mlp(), distributed=True)
    with pytest.raises(ValueError, match="distribute"):
        ngt.Preconditioner(mlp(), distribute="everything")
    assert ngt.Preconditioner(mlp()).communication == {}


def test_owner_assignment_balances_cost():
    from ngdfast.torch._distributed import assign_owners, tril_pack, tril_unpack

    assert assign_owners([8.0, 1.0, 5.0, 4.0], 2) == [0, 0, 1, 1]  # 8 | 5, 4 | then 1 to the lighter
    assert assign_owners([3.0, 3.0, 3.0], 4) == [0, 1, 2]
    M = torch.randn(5, 5, dtype=torch.float64)
    M = M + M.T
    assert tril_pack(M).numel() == 15 and torch.equal(tril_unpack(tril_pack(M), 5), M)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
