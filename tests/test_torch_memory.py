"""``ngdfast.torch.Preconditioner`` keeps no step's autograd graph alive.

Its capture hooks a tensor hook on the model output; a hook that holds its own tensor is a
cycle through autograd's C++ graph that Python's gc cannot see, and it kept every step's
graph and activations (≈ 20 MB a step on the character GPT, until the process ran out of
memory). Checked with weak references: once the caller drops a step's tensors, they go.
"""

from __future__ import annotations

import gc
import weakref

import pytest

torch = pytest.importorskip("torch", reason="ngdfast.torch needs torch")

import ngdfast.torch as ngt  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    precond = ngt.Preconditioner(model, factor_interval=1, inverse_interval=1,
                                 generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    return model, precond, opt, torch.randn(16, 5), torch.randint(0, 3, (16,))


def _gone(ref) -> bool:
    gc.collect()
    return ref() is None


def test_a_training_step_keeps_no_output_or_activation():
    model, precond, opt, x, y = _setup()
    refs = []
    for _ in range(3):
        opt.zero_grad()
        out = model(x)  # its graph holds the activations the capture kept for this step
        loss = F.cross_entropy(out, y)
        loss.backward()
        precond.step(loss=loss)
        opt.step()
        refs += [weakref.ref(out), weakref.ref(loss)]
        del out, loss
    assert all(_gone(r) for r in refs)
    assert precond.n_factor_updates == 3  # the statistics were collected all the same


def test_a_forward_never_backpropagated_is_released_at_the_step():
    model, precond, opt, x, y = _setup(1)
    stray = model(x)  # recorded (training mode, grad on), never backpropagated
    ref = weakref.ref(stray)
    del stray
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    precond.step()
    del loss
    assert _gone(ref)


def test_model_and_preconditioner_are_freed_after_training():
    model, precond, opt, x, y = _setup(2)
    for _ in range(2):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        precond.step()
        opt.step()
    refs = [weakref.ref(model), weakref.ref(precond)]
    del model, precond, opt, loss
    assert all(_gone(r) for r in refs)


def _hooks(model):
    return ({k: len(m._forward_hooks) for k, m in model.named_modules()}, len(model._forward_pre_hooks))


def test_a_dropped_preconditioner_is_freed_and_its_hooks_leave_the_model(monkeypatch):
    """The model holds the hooks: they must not keep a preconditioner dropped without
    ``remove()`` alive, nor let it go on recording (an extra backward on every armed step)."""
    from ngdfast.torch import _capture

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    bare = _hooks(model)
    precond = ngt.Preconditioner(model, factor_interval=1, generator=torch.Generator().manual_seed(4))
    one = _hooks(model)
    assert one != bare
    F.cross_entropy(model(x), y).backward()
    precond.step()
    assert precond._capture.enabled  # armed: it would record the next forward
    ref = weakref.ref(precond)
    del precond
    assert _gone(ref)
    assert _hooks(model) == bare
    ngd = ngt.NGD(model, factor_interval=1, generator=torch.Generator().manual_seed(4))
    assert _hooks(model) == one
    backward_passes = []
    real = _capture._backpropagate
    monkeypatch.setattr(_capture, "_backpropagate", lambda *a: backward_passes.append(1) or real(*a))
    ngd.zero_grad()
    F.cross_entropy(model(x), y).backward()
    ngd.step()
    assert backward_passes == [1] and ngd.preconditioner.last_step.factors_updated  # the NGD's own only
    ngd.preconditioner.remove()
    assert _hooks(model) == bare


def test_statistics_of_two_forwards_before_one_backward_still_count():
    """Gradient accumulation through one backward of two forwards: both boxes fold."""
    model, precond, opt, x, y = _setup(3)
    twin = ngt.Preconditioner(_copy(model), factor_interval=1, inverse_interval=1, generator=torch.Generator().manual_seed(3))
    loss = F.cross_entropy(model(x[:8]), y[:8]) + F.cross_entropy(model(x[8:]), y[8:])
    loss.backward()
    precond.step()
    twin_model = twin.model
    for half in (slice(0, 8), slice(8, 16)):  # the same two forwards, one backward each
        F.cross_entropy(twin_model(x[half]), y[half]).backward()
    twin.step()
    for (A, _), (A2, _) in zip(precond.factors.values(), twin.factors.values()):
        torch.testing.assert_close(A, A2)  # S draws labels in backward order; A is the inputs'


def _copy(model):
    import copy

    return copy.deepcopy(model)
