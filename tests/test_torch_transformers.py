"""A Hugging Face ``transformers`` model behind ``Preconditioner``: its ``ModelOutput`` read
through ``output="logits"``, GPT-2's ``Conv1D`` projections factored by K-FAC, the tied token
embedding / LM head pair given its own (loose) block. The model is built from a config: nothing
is downloaded."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import ngdfast.torch as ngt  # noqa: E402

VOCAB = 30


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                  bos_token_id=None, eos_token_id=None)
    return transformers.GPT2LMHeadModel(cfg).double()


def next_token_loss(logits, idx):
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), idx[:, 1:].reshape(-1))


def test_gpt2_model_output_every_parameter_preconditioned():
    model = gpt2()
    precond = ngt.Preconditioner(model, factor_interval=1, inverse_interval=1, output="logits", kl_radius=1e-2)
    assert precond.fallback_modules == []
    assert "transformer.h.0.attn.c_attn" in precond.kfac_layers  # Conv1D
    assert "transformer.wte" in precond.diagonal_blocks  # tied with lm_head: its own block
    blocks = precond.kfac_layers + precond.diagonal_blocks
    for name, _ in model.named_parameters():
        assert any(name.startswith(b + ".") for b in blocks), name
    idx = torch.randint(0, VOCAB, (4, 10), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = next_token_loss(model(idx).logits, idx).item()
    for _ in range(3):
        opt.zero_grad()
        next_token_loss(model(idx).logits, idx).backward()
        info = precond.step()
        opt.step()
        assert info.n_samples == 4 * 9  # the last position is not in the loss: its gradient is zero
        assert info.predicted_kl == pytest.approx(1e-2, rel=1e-9)
    assert next_token_loss(model(idx).logits, idx).item() < before


def test_without_output_the_model_output_is_refused_clearly():
    model = gpt2()
    precond = ngt.Preconditioner(model)
    with pytest.raises(TypeError, match="pass output="):
        model(torch.randint(0, VOCAB, (2, 5)))
    precond.remove()


class Projections(nn.Module):
    def __init__(self, first, second):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


def test_conv1d_is_the_linear_layer_transposed():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    a, b = Conv1D(6, 4).double(), Conv1D(3, 6).double()
    for c in (a, b):
        nn.init.normal_(c.weight)
        nn.init.normal_(c.bias)
    la, lb = nn.Linear(4, 6).double(), nn.Linear(6, 3).double()
    with torch.no_grad():
        for lin, conv in ((la, a), (lb, b)):
            lin.weight.copy_(conv.weight.T)
            lin.bias.copy_(conv.bias)
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (5, 7))
    got = ngt.natural_gradient(Projections(a, b), x, y, fisher="empirical", damping=1e-3)
    want = ngt.natural_gradient(Projections(la, lb), x, y, fisher="empirical", damping=1e-3)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.T if g.ndim == 2 else w, rtol=1e-10, atol=1e-12)
