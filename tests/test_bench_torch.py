"""The torch section of ``python -m ngdfast bench`` (no timing asserted: its answers and bookkeeping)."""

import pytest

pytest.importorskip("torch", reason="the torch bench needs torch: pip install '.[torch]'")

import torch  # noqa: E402

from ngdfast.bench import cli, targets  # noqa: E402
from ngdfast.bench import torch as bt  # noqa: E402


def test_kernels_option_accepts_the_torch_section_only_by_name():
    assert "torch" not in cli.parse_args([]).kernels
    assert cli.parse_args(["--kernels", "fisher,torch"]).kernels == ["fisher", "torch"]
    with pytest.raises(SystemExit):
        cli.parse_args(["--kernels", "pytorch"])


@pytest.mark.parametrize("n", [1, 7, 40])
def test_hand_woodbury_and_ngdfast_give_the_same_exact_step(n):
    torch.manual_seed(n)
    model = bt.make_mlp(torch.float64)
    x, y = bt.make_batch("mlp", n=n, seed=n)
    ours, hand = bt.ngdfast_exact(model, x, y), bt.hand_exact(model, x, y)
    assert [t.shape for t in ours] == [p.shape for p in model.parameters()]
    assert bt.relative_error(ours, hand) <= bt.EXACT_TOLERANCE


def test_hand_woodbury_is_the_dense_solve():
    """The hand peer itself is right: (JᵀJ/N + λI)⁻¹ g with F built densely."""
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    x, y = torch.randn(9, 5, dtype=torch.float64), torch.randint(0, 3, (9,))
    params = {k: v.detach() for k, v in model.named_parameters()}
    per = vmap(grad(lambda p, a, b: torch.nn.functional.cross_entropy(
        functional_call(model, p, (a[None],)), b[None])), in_dims=(None, 0, 0))(params, x, y)
    J = torch.cat([per[k].reshape(9, -1) for k in params], 1)
    dense = torch.linalg.solve(J.T @ J / 9 + 1e-3 * torch.eye(J.shape[1], dtype=J.dtype), J.mean(0))
    hand = torch.cat([t.reshape(-1) for t in bt.hand_exact(model, x, y)])
    assert torch.allclose(hand, dense, rtol=1e-9, atol=1e-12)


def test_targets_are_judged_in_their_direction():
    rows = [bt._row("exact", "ngdfast", 1.0, 1.0), bt._row("exact", "hand", 2.0, 1.0),
            bt._row("overhead", "ngdfast K-FAC", 3.0, 3.0),
            {**bt._row("overhead", "Adam", 1.0, 3.0), "ratio": 3.0}]
    by_case = {t["case"]: t for t in targets.check_torch_targets(rows)}
    assert by_case["exact"]["met"] and by_case["exact"]["value"] == 2.0
    assert not by_case["overhead"]["met"] and by_case["overhead"]["op"] == "<="
    assert by_case["kfac-mlp"]["value"] is None and not by_case["kfac-mlp"]["met"]  # nothing measured


def test_a_missing_peer_is_skipped_with_its_import_error(monkeypatch):
    monkeypatch.setitem(bt.PEERS, "no_such_peer_pkg", "no-such-peer")
    module, reason = bt.import_peer("no_such_peer_pkg")
    assert module is None and "no-such-peer" in reason and "ModuleNotFoundError" in reason
