"""The torch workloads: the digits CNN and the character-level GPT, their objectives and loops.

Every loop is the plain torch one a user writes; the natural-gradient runs put
``ngdfast.torch.Preconditioner`` between ``loss.backward()`` and
``torch.optim.SGD(lr=1).step()``. Only the optimisation work is timed (forward,
backward, preconditioner, optimizer step); evaluation and bookkeeping are not.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .runs import Run, timed_run

# ---------------------------------------------------------------------------- digits CNN
#: The CNN on digits: L2 penalty, step budget, learning-rate grids and the NGD settings (chosen
#: once for this data, not tuned per run): KL radius ε and the initial damping λ (adapted, ≥ l2).
CNN_CONFIG = {
    "l2": 1e-3,
    "steps": 200,
    "gd_grid": [0.1, 0.3, 1.0, 3.0],
    "adam_grid": [0.003, 0.01, 0.03, 0.1],
    "ngd": {
        "ngd-kfac": {"curvature": "kfac", "kl_radius": 0.1, "damping": 0.011},
        "ngd-exact": {"curvature": "exact", "kl_radius": 0.03, "damping": 0.011},
    },
}
FISHER_BATCH = 256  #: images whose sampled-label scores give ngd-exact's Fisher
DECAY = 0.8  #: EMA factor of the K-FAC factors, as the NumPy demo's
MAX_STEP = 1.0  #: cap on β: never longer than the damped Gauss-Newton step
CHANNELS = 16


def make_cnn(channels: int = CHANNELS) -> nn.Module:
    """The digits CNN for 8×8 single-channel images, 10 classes (P = 2730 with 16 channels)::

        Conv2d(1, 16, 3, padding=1) -> tanh -> AvgPool2d(2) -> Flatten -> Linear(256, 10)
    """
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * 16, 10),
    )


def digit_images(X) -> torch.Tensor:
    """Rows of 64 pixels (:func:`ngdfast._workloads.load_digits_split`) as (N, 1, 8, 8) float32."""
    return torch.as_tensor(X, dtype=torch.float32).reshape(-1, 1, 8, 8)


@dataclass
class DigitsProblem:
    """A torch model's data and penalised objective ``CE + (l2/2)‖θ‖²`` (full batch)."""

    name: str
    X: torch.Tensor
    y: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    l2: float

    @classmethod
    def from_split(cls, X, y, X_test, y_test, l2=CNN_CONFIG["l2"], name="cnn") -> DigitsProblem:
        """From :func:`~ngdfast._workloads.load_digits_split`'s arrays."""
        return cls(name, digit_images(X), torch.as_tensor(y), digit_images(X_test), torch.as_tensor(y_test), l2)

    def objective(self, model: nn.Module) -> torch.Tensor:
        """The training objective on the whole training set, with its graph."""
        penalty = sum(p.pow(2).sum() for p in model.parameters())
        return F.cross_entropy(model(self.X), self.y) + 0.5 * self.l2 * penalty

    @torch.no_grad()
    def evaluate(self, model: nn.Module):
        """Training objective and accuracy, test cross-entropy and accuracy (eval mode, no graph)."""
        model.eval()
        try:
            logits = model(self.X)
            penalty = sum(float(p.pow(2).sum()) for p in model.parameters())
            train = float(F.cross_entropy(logits, self.y)) + 0.5 * self.l2 * penalty
            logits_test = model(self.X_test)
            return (
                train,
                float((logits.argmax(1) == self.y).float().mean()),
                float(F.cross_entropy(logits_test, self.y_test)),
                float((logits_test.argmax(1) == self.y_test).float().mean()),
            )
        finally:
            model.train()


def _fresh_cnn(state0) -> nn.Module:
    model = make_cnn()
    model.load_state_dict(copy.deepcopy(state0))
    return model


def _first_order(problem, state0, steps, settings, bar, optimizer) -> Run:
    model = _fresh_cnn(state0)
    opt = optimizer(model.parameters())

    def step(t):
        opt.zero_grad()
        problem.objective(model).backward()
        opt.step()

    return timed_run(problem, model, steps, settings, bar, step)


def run_gd(problem, state0, steps, lr, bar) -> Run:
    """Full-batch ``torch.optim.SGD``: gradient descent."""
    return _first_order(problem, state0, steps, {"lr": lr, "optimizer": "torch.optim.SGD"}, bar,
                        lambda params: torch.optim.SGD(params, lr=lr))


def run_adam(problem, state0, steps, lr, bar) -> Run:
    """Full-batch ``torch.optim.Adam``."""
    return _first_order(problem, state0, steps, {"lr": lr, "optimizer": "torch.optim.Adam"}, bar,
                        lambda params: torch.optim.Adam(params, lr=lr))


def run_ngd(problem, state0, steps, settings, seed, bar) -> Run:
    """``loss.backward(); precond.step(); opt.step()`` with ``torch.optim.SGD(lr=1)``.

    ``settings``: ``curvature`` (``"kfac"``: factors from sampled labels, EMA ``DECAY``;
    ``"exact"``: the exact sampled Fisher of ``FISHER_BATCH`` random training images),
    ``kl_radius`` and the initial ``damping``, adapted (Levenberg-Marquardt, λ ≥ l2).
    """
    import ngdfast.torch as ngt

    model = _fresh_cnn(state0)
    generator = torch.Generator().manual_seed(seed)
    exact = settings["curvature"] == "exact"
    precond = ngt.Preconditioner(
        model, curvature=settings["curvature"], loss="cross_entropy", fisher="sampled",
        kl_radius=settings["kl_radius"], damping=settings["damping"], max_step=MAX_STEP,
        decay=DECAY, adaptive_damping=True, min_damping=problem.l2, generator=generator,
        factor_interval=1, inverse_interval=1,  # the demo's settings predate the interval defaults
    )
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    n = len(problem.y)

    def step(t):
        opt.zero_grad()
        loss = problem.objective(model)
        if t > 1:  # Levenberg-Marquardt: how well the last step's quadratic model predicted this loss
            precond.report_loss(loss.detach())
        loss.backward()
        if exact:  # this step's Fisher: a random batch, labels sampled from the model
            idx = torch.randperm(n, generator=generator)[:FISHER_BATCH]
            precond.step(inputs=problem.X[idx], targets=problem.y[idx], loss=loss)
        else:
            precond.step(loss=loss)
        opt.step()

    recorded = dict(settings, fisher="sampled", decay=DECAY, max_step=MAX_STEP, adaptive_damping=True,
                    optimizer="torch.optim.SGD(lr=1)")
    if exact:
        recorded["fisher_batch"] = FISHER_BATCH
    return timed_run(problem, model, steps, recorded, bar, step)


# ---------------------------------------------------------------------------- character GPT
#: The character-level GPT on Python's help text: model size, minibatches, evaluation, the
#: AdamW grid (around its best, lr 1e-2) and the K-FAC settings (``{}``: ``NGD``'s defaults, untuned).
#: ``"quick"`` replaces entries for a run of seconds.
GPT_CONFIG = {
    "width": 64, "blocks": 2, "heads": 4, "context": 64,
    "batch": 32, "steps": 300, "eval_every": 25, "eval_batches": 8,
    "adamw_grid": [3e-3, 1e-2, 3e-2],
    "ngd": {"ngd-kfac": {}},
    "quick": {"width": 16, "heads": 2, "context": 16, "batch": 8, "steps": 6, "eval_every": 2,
              "eval_batches": 2, "adamw_grid": [1e-3, 3e-3]},
}


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: q, k, v and output projections, ``scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"CausalSelfAttention: width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape

        def split(z):  # (B, T, C) -> (B, heads, T, C / heads)
            return z.view(B, T, self.heads, C // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU, 4× wide)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Character-level transformer: token ids (B, T) -> next-character logits (B, T, V).

    Token and positional ``nn.Embedding``, ``blocks`` pre-norm blocks, a final
    ``nn.LayerNorm`` and an ``nn.Linear`` head; the logits come back as (B, T, V).
    """

    def __init__(self, vocab: int, width: int = 64, blocks: int = 2, heads: int = 4, context: int = 64):
        super().__init__()
        self.context = context
        self.token = nn.Embedding(vocab, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(blocks)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.head(self.norm(self.blocks(self.token(ids) + self.position(positions))))


def gpt_config(quick: bool = False) -> dict:
    """:data:`GPT_CONFIG`, with its ``"quick"`` entries when ``quick``."""
    config = {k: v for k, v in GPT_CONFIG.items() if k != "quick"}
    return {**config, **GPT_CONFIG["quick"]} if quick else config


def make_gpt(vocab: int, config: dict) -> GPT:
    return GPT(vocab, config["width"], config["blocks"], config["heads"], config["context"])


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy of (B, T, V) logits against (B, T) targets."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@dataclass
class CharProblem:
    """Next-character prediction on :class:`~ngdfast._workloads.HelpText`: random windows of
    ``context`` characters, ``batch`` per step; held-out loss on fixed held-out windows."""

    name: str
    vocab: int
    train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    batch: int
    context: int

    @classmethod
    def from_text(cls, text, config: dict, seed: int, name: str = "gpt") -> CharProblem:
        """The training ids, and ``eval_batches`` × ``batch`` held-out windows drawn once with ``seed``."""
        train, test = torch.as_tensor(text.train), torch.as_tensor(text.test)
        n = config["eval_batches"] * config["batch"]
        X_test, y_test = _windows(test, n, config["context"], torch.Generator().manual_seed(seed))
        return cls(name, len(text.vocab), train, X_test, y_test, config["batch"], config["context"])

    def sample(self, generator: torch.Generator):
        """One training minibatch: inputs and next-character targets, both (batch, context)."""
        return _windows(self.train, self.batch, self.context, generator)

    @torch.no_grad()
    def evaluate(self, model: nn.Module):
        """Held-out cross-entropy and next-character accuracy (eval mode, no graph)."""
        model.eval()
        try:
            total, correct = 0.0, 0
            for x, y in zip(self.X_test.split(self.batch), self.y_test.split(self.batch)):
                logits = model(x)
                total += float(lm_loss(logits, y)) * y.numel()
                correct += int((logits.argmax(-1).view_as(y) == y).sum())
            return total / self.y_test.numel(), correct / self.y_test.numel()
        finally:
            model.train()


def _windows(ids, n, context, generator):
    start = torch.randint(0, len(ids) - context, (n,), generator=generator)
    offsets = start[:, None] + torch.arange(context + 1)
    seq = ids[offsets]
    return seq[:, :-1], seq[:, 1:]


def run_lm(problem, state0, config, steps, settings, seed, bar, optimizer, preconditioner=None) -> Run:
    """:func:`train_lm` with ``optimizer(model.parameters())``."""
    return train_lm(problem, state0, config, steps, settings, seed, bar,
                    lambda model: optimizer(model.parameters()), preconditioner)


def train_lm(problem, state0, config, steps, settings, seed, bar, optimizer, preconditioner=None) -> Run:
    """Minibatch training of :class:`GPT`: ``opt.zero_grad(); loss.backward();
    [precond.step();] opt.step()``, evaluated every ``config["eval_every"]`` steps and after the last.

    ``optimizer(model)`` and ``preconditioner(model)`` build them for the fresh model (any
    torch optimizer, or several behind one ``zero_grad``/``step``). Each entry:
    ``loss``/``accuracy`` the mean training loss/accuracy of the minibatches since the last
    entry, ``test_loss``/``test_accuracy`` on the held-out windows. The minibatches come
    from ``seed``, the same for every method. Timed: the optimisation work only
    (:func:`optimisation_step`); evaluation runs in :func:`evaluation_mode`.
    """
    model = make_gpt(problem.vocab, config)
    model.load_state_dict(copy.deepcopy(state0))
    opt = optimizer(model)
    precond = preconditioner(model) if preconditioner is not None else None
    training_mode(opt)
    batches = torch.Generator().manual_seed(seed)
    run = Run(settings)
    elapsed, losses, correct = 0.0, [], []
    for t in range(1, steps + 1):
        x, y = problem.sample(batches)
        start = time.perf_counter()
        loss, logits = optimisation_step(model, opt, precond, lambda: _lm_forward(model, x, y), t)
        elapsed += time.perf_counter() - start
        losses.append(float(loss.detach()))
        correct.append(float((logits.detach().argmax(-1).view_as(y) == y).float().mean()))
        bar.update()
        if t % config["eval_every"] == 0 or t == steps or not math.isfinite(losses[-1]):
            if math.isfinite(losses[-1]):
                with evaluation_mode(opt):
                    test_loss, test_accuracy = problem.evaluate(model)
            else:
                test_loss, test_accuracy = math.nan, 0.0
            run.add(elapsed, sum(losses) / len(losses), sum(correct) / len(correct), test_loss, test_accuracy,
                    step=t)
            losses, correct = [], []
            if run.diverged:
                break
    return run


def _lm_forward(model, x, y):
    logits = model(x)
    return lm_loss(logits, y), logits


def optimisation_step(model, opt, precond, forward, t):
    """One step's optimisation work: ``opt.zero_grad()``, ``loss, out = forward()``,
    ``loss.backward()``, ``precond.step(loss=loss)`` when there is a preconditioner, ``opt.step()``;
    returns ``(loss, out)``.

    With ``precond.adaptive_damping`` the loss of step t > 1 is first reported
    (:meth:`~ngdfast.torch.Preconditioner.report_loss`): it is the loss after the last step,
    as Levenberg-Marquardt needs (on a fresh minibatch, the estimate a minibatch user has).
    """
    opt.zero_grad()
    loss, out = forward()
    if precond is not None and t > 1 and getattr(precond, "adaptive_damping", False):
        precond.report_loss(loss.detach())
    loss.backward()
    if precond is not None:
        precond.step(loss=loss)
    opt.step()
    return loss, out


@contextlib.contextmanager
def evaluation_mode(optimizer):
    """Evaluate where the optimizer says the model is: ``optimizer.eval()`` before and
    ``optimizer.train()`` after, for optimizers that have both (Schedule-Free's protocol: its
    parameters hold the gradient point y during training and the averaged point x after
    ``eval()``); nothing for the others."""
    swap = callable(getattr(optimizer, "eval", None)) and callable(getattr(optimizer, "train", None))
    if swap:
        optimizer.eval()
    try:
        yield
    finally:
        if swap:
            optimizer.train()


def training_mode(optimizer) -> None:
    """``optimizer.train()`` for optimizers with ``train()``/``eval()`` (Schedule-Free: required
    before the first step); nothing for the others."""
    if callable(getattr(optimizer, "eval", None)) and callable(getattr(optimizer, "train", None)):
        optimizer.train()


def train_cnn(problem, state0, steps, settings, bar, optimizer, preconditioner=None) -> Run:
    """Full-batch training of :func:`make_cnn` on ``problem.objective``, evaluated after every step.

    ``optimizer(model)`` and ``preconditioner(model)`` as in :func:`train_lm`; each step is
    :func:`optimisation_step` (the only part timed), each evaluation runs in
    :func:`evaluation_mode`. Entry k follows step k + 1.
    """
    model = _fresh_cnn(state0)
    opt = optimizer(model)
    precond = preconditioner(model) if preconditioner is not None else None
    training_mode(opt)
    run = Run(settings)
    elapsed = 0.0
    for t in range(1, steps + 1):
        start = time.perf_counter()
        optimisation_step(model, opt, precond, lambda: (problem.objective(model), None), t)
        elapsed += time.perf_counter() - start
        with evaluation_mode(opt):
            run.record(problem, model, elapsed)
        bar.update()
        if run.diverged:
            break
    return run


def run_adamw(problem, state0, config, steps, lr, seed, bar) -> Run:
    """``torch.optim.AdamW(lr)`` (torch's other defaults)."""
    return run_lm(problem, state0, config, steps, {"lr": lr, "optimizer": "torch.optim.AdamW"}, seed, bar,
                  lambda params: torch.optim.AdamW(params, lr=lr))


def run_lm_ngd(problem, state0, config, steps, settings, seed, bar) -> Run:
    """K-FAC NGD: ``ngdfast.torch.NGD(model, **settings)`` (its defaults where ``settings`` is
    empty); labels for the factors sampled from the model with their own generator (``seed + 1``)."""
    import ngdfast.torch as ngt

    def optimizer(model):  # settings: NGD / Preconditioner arguments (kl_radius, damping, momentum, ...)
        return ngt.NGD(model, generator=torch.Generator().manual_seed(seed + 1), **settings)

    recorded = dict(settings, fisher="sampled", optimizer="ngdfast.torch.NGD")
    return train_lm(problem, state0, config, steps, recorded, seed, bar, optimizer)
