"""Hooks that collect the curvature statistics during the user's own forward and backward.

Mechanism (one forward hook per tracked module; a forward-pre hook and a forward hook on the
model):

* the model's pre-hook starts each forward afresh (a tracked module called outside the model's
  forward does not count); each tracked module's forward hook keeps its input and output
  tensors of this forward;
* the model's forward hook, which runs when the whole forward is done, turns them into
  statistics, only when the model is in training mode, grad is enabled, and the preconditioner
  asked for statistics on this step (``enabled``, the factor-update steps):

  - layer inputs give the K-FAC rows ``ā`` (factor A);
  - ``fisher="sampled"`` / ``"exact"``: the score rows at the output (labels drawn from the
    model with the preconditioner's ``torch.Generator``, or every class weighted by √p) are
    back-propagated to the tracked modules' outputs only, by ``torch.autograd.grad(...,
    retain_graph=True)``, giving ``δ = ∂ log p / ∂z`` per sample (factor S, diagonal; per
    sample because the samples of a batch are independent, which BatchNorm in training mode
    only approximates). This is
    one extra backward pass to the activations (for "exact", the C class blocks go through one
    batched backward, ``is_grads_batched``), no second forward, and the user's own
    ``loss.backward()`` is untouched;
  - ``fisher="empirical"``: the output gradients of the user's own loss are read by tensor hooks
    during ``loss.backward()``: ``δ_i = n · ∂L/∂z_i`` with n the number of samples seen since
    the last step, which is exact when L is the mean over those samples of the per-sample
    negative log-likelihood (``F.cross_entropy``'s default; for ``loss="mse"`` use
    ``0.5 * ((out - y) ** 2).sum(1).mean()``: ``F.mse_loss`` would scale the factors by (2/D)²).

* forwards inside ``torch.func`` transforms (vmap, grad: per-sample passes) are ignored;
* a tensor hook on the model output marks that a backward went through it, so ``step()``
  can refuse to run twice on one gradient.

Several forwards before one ``step()`` (gradient accumulation) all count: the statistics are
the averages over every sample of every forward since the last step (A the mean over all rows,
S = (1/n) Σ δ δᵀ over all n samples), i.e. the statistics of the concatenated batch. Forwards
in eval mode or under ``torch.no_grad()`` are ignored. Running mean products use
``ngdfast.fisher`` on zero-copy views for CPU tensors.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import partial

import torch

from . import _checks, _diagonal, _fisher, _linalg

_LOCAL = threading.local()
_QUIET = object()


@contextmanager
def recording_only(owner):
    """Within the block only ``owner``'s hooks record (``_QUIET``: none do)."""
    previous = getattr(_LOCAL, "owner", None)
    _LOCAL.owner = owner
    try:
        yield
    finally:
        _LOCAL.owner = previous


def quiet():
    """No capture records inside the block (our own forwards and per-sample passes)."""
    return recording_only(_QUIET)


def _in_functorch_transform() -> bool:
    """Inside ``torch.func.vmap``/``grad`` (someone's per-sample pass): not a training forward."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def _backpropagate(outputs, targets, blocks):
    """``∂⟨outputs, b⟩/∂targets`` for each block b (graph kept for the user's backward).

    Several blocks (the exact kind: one per class) go through one batched backward
    (``is_grads_batched``) when the graph supports it, else one backward each.
    """
    if len(blocks) > 1:
        try:
            stacked = torch.autograd.grad(outputs, targets, grad_outputs=torch.stack(blocks), retain_graph=True,
                                          allow_unused=True, is_grads_batched=True)
        except RuntimeError:
            pass
        else:
            return [[None if g is None else g[k] for g in stacked] for k in range(len(blocks))]
    return [torch.autograd.grad(outputs, targets, grad_outputs=b, retain_graph=True, allow_unused=True) for b in blocks]


class RunningMean:
    """The mean of ``rowsᵀrows / R`` over all rows added so far, kept as a (d, d) tensor."""

    def __init__(self):
        self.mean = None
        self.rows = 0

    def add(self, rows: torch.Tensor) -> None:
        r = rows.shape[0]
        if r == 0:
            return
        if self.mean is None:
            d = rows.shape[1]
            self.mean = torch.empty((d, d), dtype=rows.dtype, device=rows.device)
            decay = 0.0
        else:
            decay = self.rows / (self.rows + r)
        _linalg.fisher_into(rows, self.mean, decay)
        self.rows += r


class Batch:
    """Statistics of the forwards since the last step."""

    def __init__(self):
        self.n = 0  # samples
        self.A: dict[int, RunningMean] = {}
        self.S: dict[int, RunningMean] = {}
        self.D: dict[int, list[torch.Tensor]] = {}


class Capture:
    """Hooks on ``model`` collecting statistics for K-FAC ``layers`` and ``diagonal`` modules.

    Parameters
    ----------
    model : nn.Module
    layers : list of ngdfast.torch._layers.Layer
    diagonal : list of (name, module, parameter names)
    loss, fisher : str
    dtypes : callable(tensor) -> torch.dtype
        Statistics precision for a layer weight.
    generator : callable() -> torch.Generator
    force : bool
        Record whatever the model's mode (the functional primitive).
    """

    def __init__(self, model, layers, diagonal, loss, fisher, stats_dtype, generator, *, force=False):
        self.model = model
        self.layers = layers
        self.diagonal = diagonal
        self.loss = loss
        self.fisher = fisher
        self.stats_dtype = stats_dtype
        self.generator = generator
        self.force = force
        self.enabled = False
        self.backward_seen = False
        self.listener = None  # ngdfast.torch._distributed.FactorReducer: forward/backward events
        self.batch = Batch()
        self._pending = []
        # a module called outside the model's forward must not count: start each forward afresh
        self._handles = [model.register_forward_pre_hook(self._root_pre_hook)]
        for i, layer in enumerate(layers):
            self._handles.append(layer.module.register_forward_hook(partial(self._module_hook, ("k", i))))
        for j, (_, module, _) in enumerate(diagonal):
            self._handles.append(module.register_forward_hook(partial(self._module_hook, ("d", j))))
        # last: when the model itself is a tracked module, its own hook must run first
        self._handles.append(model.register_forward_hook(self._root_hook))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def reset(self) -> None:
        """Forget the statistics and the backward mark (after a step, taken or rejected)."""
        self.batch = Batch()
        self._pending = []
        self.backward_seen = False
        if self.listener is not None:
            self.listener.reset()

    # ------------------------------------------------------------------ hooks
    def _live(self) -> bool:
        """A forward that may be trained on: ours to watch, grad enabled, not in a torch.func transform."""
        owner = getattr(_LOCAL, "owner", None)
        return (owner is None or owner is self) and torch.is_grad_enabled() and not _in_functorch_transform()

    def _recording(self) -> bool:
        return (self.force or self.model.training) and self._live()

    def _module_hook(self, key, module, args, output):
        if self.enabled and self._recording() and isinstance(output, torch.Tensor):
            self._pending.append((key, tuple(a.detach() for a in args if isinstance(a, torch.Tensor)), output))

    def _root_pre_hook(self, module, args):
        self._pending = []

    def _mark(self, grad):
        self.backward_seen = True
        if self.listener is not None and self.enabled and self.batch.n:
            self.listener.on_backward_start()

    def _root_hook(self, module, args, output):
        pending, self._pending = self._pending, []
        if not self._live():
            return
        if not isinstance(output, torch.Tensor):
            if self.enabled and self._recording():
                _checks.check_outputs(self.loss, output, "ngdfast.torch")  # raises: says what is expected
            return
        if not output.requires_grad:
            return
        if self.enabled and self._recording():
            self._collect(output, pending)
        output.register_hook(self._mark)  # also in eval mode: a step then says what is missing

    def _collect(self, output, pending) -> None:
        outputs = _checks.check_outputs(self.loss, output, "ngdfast.torch")
        self.batch.n += outputs.shape[0]
        live = []
        for key, args, out in pending:
            if key[0] == "k":
                layer = self.layers[key[1]]
                self.batch.A.setdefault(key[1], RunningMean()).add(
                    layer.input_rows(args[0], self.stats_dtype(layer.params[0]))
                )
            if out.requires_grad:
                live.append((key, args, out))
        if self.listener is not None:
            self.listener.on_forward([key for key, _, _ in live] if self.fisher == "empirical" else [])
        if not live:
            return
        if self.fisher == "empirical":
            for key, args, out in live:
                out.register_hook(partial(self._on_grad, key, args))
            return
        blocks = _fisher.output_rows(self.loss, self.fisher, outputs, None, self.generator())
        targets = [out for _, _, out in live]
        per_block = _backpropagate(outputs, targets, [b.to(outputs.dtype) for b in blocks])
        for j, (key, args, _) in enumerate(live):
            self._add_deltas(key, args, [g[j] for g in per_block if g[j] is not None])

    def _on_grad(self, key, args, grad):
        owner = getattr(_LOCAL, "owner", None)
        if owner is None or owner is self:
            self._add_deltas(key, args, [grad])
            if self.listener is not None:
                self.listener.on_delta(key)

    def _add_deltas(self, key, args, deltas) -> None:
        if not deltas:
            return
        kind, i = key
        if kind == "k":
            layer = self.layers[i]
            dtype = self.stats_dtype(layer.params[0])
            mean = self.batch.S.setdefault(i, RunningMean())
            for d in deltas:
                mean.add(layer.output_rows(d.detach(), dtype))
            return
        _, module, names = self.diagonal[i]
        dtype = self.stats_dtype(getattr(module, names[0]))
        with quiet():
            sums = _diagonal.square_sums(module, names, args, [d.detach() for d in deltas], dtype)
        if i in self.batch.D:
            for acc, s in zip(self.batch.D[i], sums):
                acc.add_(s)
        else:
            self.batch.D[i] = sums

    # ------------------------------------------------------------- statistics
    def statistics(self):
        """``(n, A, S, D)`` of this step's forwards, or None when nothing was recorded.

        ``A[i]``, ``S[i]``: factors of layer i (present when the layer was seen with both an
        input and an output gradient); ``D[j]``: list of diagonal Fisher tensors of diagonal
        module j. Scales as in the module docstring.
        """
        b = self.batch
        if b.n == 0:
            return None
        n = b.n
        empirical = self.fisher == "empirical"
        A, S, D = {}, {}, {}
        for i, s in b.S.items():
            if i in b.A and s.mean is not None:
                A[i] = b.A[i].mean
                S[i] = s.mean * (s.rows * n if empirical else s.rows / n)
        for j, sums in b.D.items():
            D[j] = [t * n if empirical else t / n for t in sums]
        return n, A, S, D
