"""The K-FAC statistics pass of ngdfast.torch: convolution patches without ``F.unfold``, and
``stats_samples`` (statistics from m samples of each forward).

``stats_samples=m`` is checked against the option it replaces: a preconditioner without it on
the sub-batch of the chosen samples (drawn here as the capture draws them: the first m of a
``torch.randperm`` of the preconditioner's generator, in increasing order, after which the same
generator draws the sampled labels), for every Fisher kind and block kind; a BatchNorm in
training mode against a hand computation; under torch.distributed against one process.
"""

import copy
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import ngdfast.torch as ngt  # noqa: E402
from ngdfast.torch import _layers  # noqa: E402
from sequence_helpers import IGNORE, ce, tokens, with_bias_column  # noqa: E402
from test_torch_gpt import TinyGPT  # noqa: E402

RTOL, ATOL = 1e-10, 1e-13


# --------------------------------------------------------------------------- 1. cheaper rows
CONVS = [
    (nn.Conv2d, dict(in_channels=2, out_channels=3, kernel_size=3, padding=1)),
    (nn.Conv2d, dict(in_channels=2, out_channels=3, kernel_size=(3, 2), stride=(2, 1), dilation=(1, 2))),
    (nn.Conv2d, dict(in_channels=2, out_channels=3, kernel_size=3, padding="same", dilation=2,
                     padding_mode="reflect")),
    (nn.Conv2d, dict(in_channels=2, out_channels=3, kernel_size=2, padding=(1, 2), padding_mode="circular",
                     bias=False)),
    (nn.Conv2d, dict(in_channels=2, out_channels=3, kernel_size=3, padding="valid", stride=3)),
    (nn.Conv1d, dict(in_channels=2, out_channels=3, kernel_size=3, padding=2, stride=2, dilation=2,
                     padding_mode="replicate")),
    (nn.Conv1d, dict(in_channels=2, out_channels=3, kernel_size=5, padding="same")),
]


def unfold_rows(conv, x):
    """KFC's rows by ``F.unfold`` of the input as the convolution pads it (the former code)."""
    one_d = isinstance(conv, nn.Conv1d)
    if one_d:
        x = x.unsqueeze(-2)
    k, d, s = ((1,) + tuple(v) if one_d else tuple(v) for v in (conv.kernel_size, conv.dilation, conv.stride))
    if conv.padding == "same":
        pads = []
        for dd, kk in zip(reversed(d), reversed(k)):
            pads += [dd * (kk - 1) // 2, dd * (kk - 1) - dd * (kk - 1) // 2]
    elif conv.padding == "valid":
        pads = [0, 0, 0, 0]
    else:
        p = ((0,) + tuple(conv.padding)) if one_d else tuple(conv.padding)
        pads = [p[1], p[1], p[0], p[0]]
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    cols = F.unfold(F.pad(x, pads, mode=mode), k, dilation=d, stride=s)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@pytest.mark.parametrize("kind,args", CONVS, ids=[f"{k.__name__}-{i}" for i, (k, _) in enumerate(CONVS)])
@pytest.mark.parametrize("batched", [True, False])
def test_conv_patches_are_the_unfolded_rows(kind, args, batched):
    """The strided view of the padded input holds exactly ``F.unfold``'s patches: the rows in
    both layouts are equal bit for bit, and they reproduce the convolution."""
    torch.manual_seed(0)
    conv = kind(**args).double()
    shape = (2, 7, 9) if kind is nn.Conv2d else (2, 11)
    x = torch.randn((4,) + shape if batched else shape, dtype=torch.float64)
    layer = _layers.Layer("c", conv)
    expected = unfold_rows(conv, x if batched else x.unsqueeze(0))
    assert torch.equal(layer.weight_rows(x, torch.float64), expected)
    bar = with_bias_column(expected) if conv.bias is not None else expected
    rows = layer.a_rows(x, torch.float64)
    assert torch.equal(rows, bar) and rows.stride() == (1, bar.shape[0])  # column-major (in, R), read as rows
    z = conv(x)
    out = conv.out_channels
    zz = expected @ conv.weight.reshape(out, -1).T
    if conv.bias is not None:
        zz = zz + conv.bias
    torch.testing.assert_close(zz, layer.output_rows(z if batched else z.unsqueeze(0), torch.float64),
                               rtol=1e-12, atol=1e-12)
    # S rows, column-major too, and the "reduce" sums per sample
    delta = torch.randn_like(z)
    rows = (delta if batched else delta.unsqueeze(0)).movedim(1, -1).reshape(-1, out)
    assert torch.equal(layer.s_rows(delta, x, torch.float64), rows)
    reduce = _layers.Layer("c", conv, approx="reduce")
    n = x.shape[0] if batched else 1
    torch.testing.assert_close(reduce.s_rows(delta, x, torch.float64), rows.reshape(n, -1, out).sum(1),
                               rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(reduce.a_rows(x, torch.float64), bar.reshape(n, -1, bar.shape[1]).mean(1),
                               rtol=1e-14, atol=1e-14)


def test_patches_of_a_bfloat16_model_come_in_float32():
    conv = nn.Conv2d(3, 4, 3, padding=1).to(torch.bfloat16)
    x = torch.randn(2, 3, 5, 5).to(torch.bfloat16)
    layer = _layers.Layer("c", conv)
    rows = layer.a_rows(x, torch.float32)
    assert rows.dtype == torch.float32
    assert torch.equal(rows, with_bias_column(unfold_rows(conv, x).float()))


# --------------------------------------------------------------------------- 2. stats_samples
def chosen(n, m, seed, candidates=None):
    """The capture's draw: ``(indices, generator after it)``."""
    g = torch.Generator().manual_seed(seed)
    cand = torch.arange(n) if candidates is None else candidates
    pick = torch.randperm(cand.numel(), generator=g)[:m]
    return cand[pick].sort().values, g


class Gain(nn.Module):
    """A leaf module K-FAC has no block for: the ``fallback="diagonal"`` per-sample products."""

    def __init__(self, d):
        super().__init__()
        self.g = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x):
        return x * self.g


class Seq(nn.Module):
    """Tokens (B, T) to (B, T, V) logits: Embedding, Linear, LayerNorm, tanh, a Gain, Linear head."""

    def __init__(self, v=7, d=5):
        super().__init__()
        self.emb = nn.Embedding(v, d)
        self.mix = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.gain = Gain(d)
        self.head = nn.Linear(d, v)

    def forward(self, x):
        return self.head(self.gain(torch.tanh(self.norm(self.mix(self.emb(x))))))


class Flat(nn.Module):
    """Tokens (B, T) to (B, T, V) logits through a Linear on the flattened (B·T, d) rows: its
    input's first dimension is N·T, each sample's T rows in a block."""

    def __init__(self, v=7, d=5):
        super().__init__()
        self.emb = nn.Embedding(v, d)
        self.mix = nn.Linear(d, d)
        self.head = nn.Linear(d, v)

    def forward(self, x):
        b, t = x.shape
        h = torch.tanh(self.mix(self.emb(x).reshape(b * t, -1)))
        return self.head(h).reshape(b, t, -1)


class SegConv(nn.Module):
    """(N, 2, L) signals to (N, C, L) per-location logits (``class_dim=1``): Conv1d, GroupNorm, Conv1d."""

    def __init__(self, c=4):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), nn.GroupNorm(2, 6), nn.Tanh(), nn.Conv1d(6, c, 1))

    def forward(self, x):
        return self.net(x)


def cnn():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 3, stride=2), nn.Tanh(),
                         nn.Flatten(), nn.Linear(4 * 2 * 2, 5))


def mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 4))


def case(name):
    """``(model, x, y, loss_fn, Preconditioner settings)`` of a double-precision problem."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name in ("mlp", "mlp-diagonal"):
        x, y = torch.randn(12, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (12,), generator=g)
        return mlp().double(), x, y, F.cross_entropy, {"curvature": "diagonal"} if name == "mlp-diagonal" else {}
    if name in ("cnn", "cnn-reduce"):
        x, y = torch.randn(10, 2, 5, 5, generator=g, dtype=torch.float64), torch.randint(0, 5, (10,), generator=g)
        return cnn().double(), x, y, F.cross_entropy, {"kfac_approx": "reduce"} if name == "cnn-reduce" else {}
    if name == "seq":
        x, y = tokens(9, 4, 7, ignored=[(0, 1), (3, 0), (3, 2), (8, 3)])
        return Seq().double(), x, y, ce, {}
    if name == "flat":
        x, y = tokens(9, 4, 7, ignored=[(2, 2)])
        return Flat().double(), x, y, ce, {}
    if name == "segment":
        x = torch.randn(8, 2, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (8, 6), generator=g)
        y[2, 1] = IGNORE
        return SegConv().double(), x, y, lambda out, t: F.cross_entropy(out, t, ignore_index=IGNORE), {"class_dim": 1}
    if name == "gpt":  # B = T: the positional ids arange(T) have the batch's length, and are shared
        x, y = tokens(6, 6, 11, ignored=[(1, 0), (4, 5)])
        return TinyGPT().double(), x, y, lambda out, t: F.cross_entropy(out.reshape(-1, 11), t.reshape(-1)), {}
    raise AssertionError(name)


def statistics(model, x, y, loss_fn, **settings):
    """One step's statistics: ``(info, {layer: (A, S)}, {block: [D...]}, .grad after the step)``."""
    precond = ngt.Preconditioner(model, **settings)
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    info = precond.step()
    diag = {precond.diagonal_blocks[j]: [t.clone() for t in ts] for j, ts in precond._D.items()}
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return info, precond.factors, diag, grads


def assert_same_statistics(got, want):
    _, fa, da, _ = got
    _, fb, db, _ = want
    assert fa.keys() == fb.keys() and da.keys() == db.keys()
    for name in fa:
        for a, b in zip(fa[name], fb[name]):
            torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=name)
    for name in da:
        for a, b in zip(da[name], db[name]):
            torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=name)


NAMES = ["mlp", "mlp-diagonal", "cnn", "cnn-reduce", "seq", "flat", "segment", "gpt"]


@pytest.mark.parametrize("fisher", ["sampled", "empirical", "exact"])
@pytest.mark.parametrize("name", NAMES)
def test_stats_samples_are_the_statistics_of_the_sub_batch(name, fisher):
    """K-FAC factors and every diagonal block (norms, the fallback's per-sample products, the
    loose gain of the GPT, curvature="diagonal") from m samples of the batch equal those of a
    preconditioner without ``stats_samples`` on those m samples alone."""
    model, x, y, loss_fn, settings = case(name)
    m, seed = 3, 11
    idx, g_after = chosen(x.shape[0], m, seed)
    full = copy.deepcopy(model)
    got = statistics(full, x, y, loss_fn, fisher=fisher, stats_samples=m,
                     generator=torch.Generator().manual_seed(seed), **settings)
    want = statistics(copy.deepcopy(model), x[idx], y[idx], loss_fn, fisher=fisher, generator=g_after, **settings)
    assert got[0].n_samples == want[0].n_samples == int((y[idx] != IGNORE).sum())
    assert_same_statistics(got, want)
    # the gradient is still the whole batch's: the steps differ
    assert any(not torch.allclose(got[3][k], want[3][k]) for k in got[3])


def test_products_see_only_the_chosen_rows(monkeypatch):
    """The cost is m/N: every factor product of the CNN gets the chosen samples' rows only
    (patches of the first convolution: m·25, of the second m·4; the head: m)."""
    from ngdfast.torch import _linalg

    seen = []
    fisher_into = _linalg.fisher_into

    def record(rows, out, decay):
        seen.append(rows.shape[0])
        return fisher_into(rows, out, decay)

    monkeypatch.setattr(_linalg, "fisher_into", record)
    model, x, y, loss_fn, _ = case("cnn")
    statistics(model, x, y, loss_fn, stats_samples=3)
    assert sorted(seen) == sorted([3 * 25, 3 * 25, 3 * 4, 3 * 4, 3, 3])  # A and S of each layer


def test_shared_positional_rows_all_count():
    """The GPT's positional ids arange(T) have the batch's first dimension (B = T = 6) but are
    shared: its output gradient is not zero at the other samples, so its A keeps all T rows
    (as on the sub-batch), not the m positions that a per-sample reading would pick."""
    model, x, y, loss_fn, _ = case("gpt")
    _, factors, _, _ = statistics(model, x, y, loss_fn, stats_samples=2, generator=torch.Generator().manual_seed(3))
    A_pos, _ = factors["pos"]
    torch.testing.assert_close(A_pos, torch.full((6,), 1 / 6, dtype=torch.float64), rtol=1e-14, atol=0)


def test_samples_without_a_counted_position_are_never_chosen():
    model, x, y, loss_fn, _ = case("seq")
    y[[1, 5, 6]] = IGNORE  # three samples the loss ignores entirely
    m, seed = 4, 2
    counted = torch.tensor([i for i in range(9) if i not in (1, 5, 6)])
    idx, g_after = chosen(9, m, seed, candidates=counted)
    got = statistics(copy.deepcopy(model), x, y, loss_fn, stats_samples=m, generator=torch.Generator().manual_seed(seed))
    want = statistics(copy.deepcopy(model), x[idx], y[idx], loss_fn, generator=g_after)
    assert_same_statistics(got, want)
    # with at most m such samples, those (no draw): the generator then only draws the labels
    y[[0, 2, 3, 4]] = IGNORE
    got = statistics(copy.deepcopy(model), x, y, loss_fn, stats_samples=m, generator=torch.Generator().manual_seed(seed))
    want = statistics(copy.deepcopy(model), x[[7, 8]], y[[7, 8]], loss_fn, generator=torch.Generator().manual_seed(seed))
    assert_same_statistics(got, want)


@pytest.mark.parametrize("fisher", ["sampled", "empirical"])
def test_stats_samples_of_at_least_the_batch_change_nothing(fisher):
    """m >= N: the statistics, the step and the generator's state are those without the option."""
    model, x, y, loss_fn, _ = case("cnn")
    results, states = [], []
    for m in (None, 10, 50):
        gen = torch.Generator().manual_seed(4)
        results.append(statistics(copy.deepcopy(model), x, y, loss_fn, fisher=fisher, stats_samples=m, generator=gen))
        states.append(gen.get_state())
    for other, state in zip(results[1:], states[1:]):
        assert torch.equal(state, states[0])
        for name in results[0][1]:
            for a, b in zip(results[0][1][name], other[1][name]):
                assert torch.equal(a, b)
        for k in results[0][3]:
            assert torch.equal(results[0][3][k], other[3][k])


@pytest.mark.parametrize("fisher", ["empirical", "exact"])
def test_gradient_accumulation_draws_m_samples_per_forward(fisher):
    """Two forwards before a step (the loss halved): each draws its own m samples; the statistics
    are those of the union of both choices, as one batch."""
    model, x, y, _, _ = case("mlp")
    m, seed = 2, 5
    g = torch.Generator().manual_seed(seed)
    first = torch.randperm(6, generator=g)[:m].sort().values
    second = 6 + torch.randperm(6, generator=g)[:m].sort().values
    acc = copy.deepcopy(model)
    precond = ngt.Preconditioner(acc, fisher=fisher, stats_samples=m, generator=torch.Generator().manual_seed(seed))
    for part in (slice(0, 6), slice(6, 12)):
        (0.5 * F.cross_entropy(acc(x[part]), y[part])).backward()
    info = precond.step()
    got = (info, precond.factors, {precond.diagonal_blocks[j]: ts for j, ts in precond._D.items()}, None)
    idx = torch.cat([first, second])
    want = statistics(copy.deepcopy(model), x[idx], y[idx], F.cross_entropy, fisher=fisher)
    assert info.n_samples == 2 * m
    assert_same_statistics(got, want)


class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.bn(self.inp(x))))


def test_batchnorm_in_training_mode_by_hand():
    """BatchNorm's batch statistics mix the samples: the layer below it gets output gradients
    at every sample from the chosen samples' score rows and keeps all its rows (A of the whole
    batch; S summed over every row, divided by the chosen count n); the BatchNorm and the layer
    above take the chosen samples' rows, with x̂ normalised by the whole batch as in the forward.
    Checked with the exact Fisher's score rows √p_k (e_k − p), by hand."""
    torch.manual_seed(0)
    model = BatchNormNet().double()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(9, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (9,), generator=g)
    m, seed = 4, 8
    idx, _ = chosen(9, m, seed)
    before = copy.deepcopy(model)
    _, factors, diag, _ = statistics(model, x, y, F.cross_entropy, fisher="exact", stats_samples=m,
                                     generator=torch.Generator().manual_seed(seed))

    # by hand, on the same forward (training mode: batch statistics)
    h0 = before.inp(x)
    h0.retain_grad()
    xh = (h0 - h0.mean(0)) / torch.sqrt(h0.var(0, unbiased=False) + before.bn.eps)
    b1 = before.bn(h0)
    a2 = torch.tanh(b1)
    z = before.head(a2)
    p = torch.softmax(z.detach(), 1)
    keep = torch.zeros(9, dtype=torch.bool)
    keep[idx] = True
    S0 = S2 = 0
    d_gamma = d_beta = 0
    for k in range(3):
        rows = p[:, k : k + 1].sqrt() * (torch.eye(3, dtype=torch.float64)[k] - p) * keep[:, None]
        d0, d1, d2 = torch.autograd.grad(z, [h0, b1, z], rows, retain_graph=True)
        assert float(d0[~keep].abs().max()) > 0  # the batch statistics carry the chosen samples' rows
        S0 = S0 + d0.T @ d0  # every row
        S2 = S2 + d2[idx].T @ d2[idx]
        d_gamma = d_gamma + (d1[idx] * xh[idx].detach()).square().sum(0)
        d_beta = d_beta + d1[idx].square().sum(0)
    n = m
    a0 = with_bias_column(x)
    a2r = with_bias_column(a2.detach()[idx])
    torch.testing.assert_close(factors["inp"][0], a0.T @ a0 / 9, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(factors["inp"][1], S0 / n, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(factors["head"][0], a2r.T @ a2r / m, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(factors["head"][1], S2 / n, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(diag["bn"][0], d_gamma / n, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(diag["bn"][1], d_beta / n, rtol=1e-10, atol=1e-14)


def test_batchnorm_in_eval_mode_is_per_sample():
    """With running statistics nothing mixes the samples: the sub-batch's statistics again."""
    torch.manual_seed(0)
    model = BatchNormNet().double()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.bn.eval()  # the BatchNorm alone; the preconditioner records the model's training-mode forwards
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(9, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (9,), generator=g)
    idx, g_after = chosen(9, 4, 8)
    got = statistics(copy.deepcopy(model), x, y, F.cross_entropy, stats_samples=4,
                     generator=torch.Generator().manual_seed(8))
    want = statistics(copy.deepcopy(model), x[idx], y[idx], F.cross_entropy, generator=g_after)
    assert_same_statistics(got, want)


def test_stats_samples_must_be_a_positive_integer():
    model = mlp()
    for bad in (0, -2):
        with pytest.raises(ValueError, match="stats_samples"):
            ngt.Preconditioner(model, stats_samples=bad)
    for bad in (2.5, "4", True):
        with pytest.raises(TypeError, match="stats_samples"):
            ngt.Preconditioner(model, stats_samples=bad)


@pytest.mark.parametrize("option", [dict(stats_samples=4), dict(inverse="eigh"), dict(overlap=True)])
def test_exact_curvature_refuses_the_statistics_options(option):
    """curvature="exact" keeps no K-FAC or diagonal statistics: an option of theirs is refused,
    not accepted and ignored; with "kfac" the same option is taken."""
    model = mlp()
    with pytest.raises(ValueError, match="curvature='exact'"):
        ngt.Preconditioner(model, curvature="exact", **option)
    ngt.Preconditioner(model, curvature="kfac", **option)


# --------------------------------------------------------------------------- 3. distributed
N_LOCAL, M, WORLD = 6, 2, 2


def dist_model():
    torch.manual_seed(0)
    return mlp().double()


def dist_batch():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(WORLD * N_LOCAL, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (WORLD * N_LOCAL,), generator=g))


def worker(rank, port, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        x, y = dist_batch()
        part = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        results = {}
        for fisher in ("empirical", "exact"):
            model = dist_model()
            precond = ngt.Preconditioner(model, fisher=fisher, stats_samples=M,
                                         generator=torch.Generator().manual_seed(100 + rank))
            F.cross_entropy(model(x[part]), y[part]).backward()
            info = precond.step()
            results[fisher] = {"n": info.n_samples, "factors": precond.factors,
                               "D": {precond.diagonal_blocks[j]: ts for j, ts in precond._D.items()}}
        gathered = [None] * WORLD
        dist.all_gather_object(gathered, results)
        if rank == 0:
            torch.save(gathered, Path(out) / "results.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_draw_their_own_samples(tmp_path):
    """Each rank keeps m samples of its own batch (its own generator); the reduced statistics
    are those of the union of the ranks' choices, for the empirical Fisher too (whose δ each
    rank scales by its own loss's count of positions)."""
    import torch.distributed as dist

    if not dist.is_available():  # pragma: no cover
        pytest.skip("torch.distributed is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(ngt.__file__).parents[2]), str(Path(__file__).parent)] + sys.path))
    procs = [subprocess.Popen([sys.executable, __file__, "worker", str(r), str(port), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(WORLD)]
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the ranks did not finish within 240 s (hang?)")
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{log[-4000:]}"
    results = torch.load(tmp_path / "results.pt", weights_only=False)

    x, y = dist_batch()
    idx = torch.cat([r * N_LOCAL + chosen(N_LOCAL, M, 100 + r)[0] for r in range(WORLD)])
    for fisher in ("empirical", "exact"):
        want = statistics(dist_model(), x[idx], y[idx], F.cross_entropy, fisher=fisher)
        for rank in range(WORLD):
            got = results[rank][fisher]
            assert got["n"] == WORLD * M
            assert_same_statistics((None, got["factors"], got["D"], None), want)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
