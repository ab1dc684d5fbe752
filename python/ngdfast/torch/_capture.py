"""Hooks that collect the curvature statistics during the user's own forward and backward.

Mechanism (one forward hook per tracked module; a forward-pre hook and a forward hook on the
model; a tensor hook on the model output):

* the model's pre-hook starts each forward afresh (a tracked module called outside the model's
  forward does not count); each tracked module's forward hook keeps its input and output
  tensors of this forward;
* the model's forward hook, when the whole forward is done, picks the output tensor (see
  ``ngdfast.torch._outputs``) and, only when the model is in training mode, grad is enabled and
  the preconditioner asked for statistics on this step (``enabled``, the factor-update steps),
  registers a tensor hook on it;
* that hook runs when the user's ``loss.backward()`` reaches the output, before anything below
  it. Its gradient ``∂L/∂f`` says which output positions the loss counts: a row that is exactly
  zero is a position the loss ignores (``F.cross_entropy``'s ``ignore_index``, a zero weight in
  a masked mean); n is the number of the others. Then, with the graph below still intact:

  - layer inputs give the K-FAC rows ``ā`` (factor A);
  - the score rows b at the output, zero at ignored positions — labels drawn from the model with
    the preconditioner's ``torch.Generator`` (``"sampled"``), every class weighted by √p
    (``"exact"``), or ``∂L/∂f`` itself (``"empirical"``: ``δ = n·∂L/∂z``, exact when L is the
    mean over the counted positions of the per-position negative log-likelihood) — are
    back-propagated to the tracked modules' outputs and to the loose parameters by one
    ``torch.autograd.grad(..., retain_graph=True)`` (for "exact", the C class blocks go through
    one batched backward, ``is_grads_batched``), giving ``δ = ∂(bᵀf)/∂z`` (factor S, the
    diagonal blocks). This is one extra backward pass to the activations, no second forward,
    and the user's own backward then continues untouched;

* forwards inside ``torch.func`` transforms (vmap, grad: per-sample passes) are ignored;
* a tensor hook on the model output marks that a backward went through it, so ``step()``
  can refuse to run twice on one gradient;
* the module hooks hold the capture weakly: a preconditioner dropped without ``remove()`` is
  not kept alive by the model, records nothing once unreachable, and its collection removes
  its hooks.

Several forwards before one ``step()`` (gradient accumulation) all count: the statistics are
those of every counted position of every forward since the last step (A the mean over all
rows, S = (1/n) Σ δ δᵀ over all n positions), i.e. the statistics of the concatenated batch. A
forward without a backward through its output, and forwards in eval mode or under
``torch.no_grad()``, are ignored. Running mean products use ``ngdfast.fisher`` on zero-copy
views for CPU tensors.

**Statistics from a sub-batch** (``stats_samples=m``). A *sample* is an index along the first
dimension of the output (N samples of P positions each). A recorded forward with more than m
samples keeps the statistics of m of them (:class:`Samples`): drawn without replacement with
the preconditioner's generator, before any label, as the first m of a ``torch.randperm`` over
the samples with at least one counted position, in increasing order (when there are at most m
such samples, those, and nothing is drawn; with N <= m, everything is as without the option).
Then

* the score rows (sampled labels, the exact kind's C blocks, or the loss's gradient for
  ``"empirical"``) are formed at the chosen samples' positions only and are zero elsewhere,
  so the extra backward gives the output gradients of the chosen samples' scores;
* n counts the chosen samples' counted positions (``StepInfo.n_samples``); the empirical δ
  are scaled by the loss's own count, ``n_loss ∂L/∂z`` (L the mean over all n_loss counted
  positions), S and D by 1/n;
* each block keeps the rows of the chosen samples when they are its own: its input has a
  leading sample dimension of N·k entries (k per sample) and its output gradients are exactly
  zero at the other samples, which holds wherever the model does not mix samples. Then its A,
  S and diagonal cost m/N of the whole batch's. Otherwise the block keeps all its rows: an
  input shared by every sample (positional ids ``arange(T)``, even when T = N: its gradient
  then is not zero elsewhere) has the same A as on the sub-batch; below a BatchNorm in
  training mode, whose batch statistics carry the chosen samples' scores to every sample, A is
  the whole batch's and S, D sum the chosen scores' gradients over every row (for the sampled
  and exact kinds an estimate of the whole batch's, unbiased over the choice when the samples
  count equally many positions). The BatchNorm's own diagonal
  normalises by the whole batch, as its forward did, then takes the chosen rows;
* loose parameters get ``ĝ`` of the chosen samples' scores (the backward sums them).

For a model that does not mix samples this is exactly (to rounding) the statistics of a forward
without ``stats_samples`` on the chosen samples alone, for every Fisher kind; each forward of a
gradient accumulation draws its own m; under ``torch.distributed`` each rank draws m of its
own batch with its own generator and the reduction (weighted by the chosen counts) gives the
statistics of the union of the ranks' choices. The gradient g is untouched: the loss's.

What it saves: the products and copies of the statistics (A, S, the diagonal blocks' rows, the
labels) scale with m/N; the check for per-sample rows reads each output gradient once (its
largest and smallest value per sample). What it does not: the extra backward still runs over
the whole batch and graph, as does the user's forward: autograd cannot run a slice of a
recorded graph, and a second forward on the sub-batch would be the model's forward twice, with
BatchNorm statistics and dropout masks of its own.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from functools import partial

import torch

from . import _diagonal, _fisher, _linalg, _norms

_LOCAL = threading.local()
_QUIET = object()

#: Bytes the blocks of ``fisher="exact"`` may take (C blocks of R × C rows) before it refuses.
EXACT_BLOCKS_BYTES = 1 << 30


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


def _eager(hook):
    """``hook`` run outside ``torch.compile``: Dynamo breaks the graph around it, so it sees real
    tensors (and registers real tensor hooks) in a compiled model's forward too."""
    return torch.compiler.disable(hook, recursive=True)


def _weak(owner, method: str, *bound):
    """A module hook that calls ``owner.<method>(*bound, *args)`` while ``owner`` lives and does
    nothing after. The model holds its hooks; with strong references a preconditioner dropped
    without ``remove()`` would stay alive through them and go on recording (an extra backward
    on every armed step) for as long as the model lives."""
    ref = weakref.ref(owner)

    def hook(*args):
        target = ref()
        return None if target is None else getattr(target, method)(*bound, *args)

    return hook


def _remove_handles(handles) -> None:
    for h in handles:
        h.remove()


def _backpropagating() -> bool:
    """Inside a capture's own backward from the output (whose gradients are score rows, not the
    loss's): no capture of this thread records or marks."""
    return getattr(_LOCAL, "backpropagating", False)


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


def check_exact_size(classes: int, rows: int, dtype, func: str) -> None:
    """``fisher="exact"`` back-propagates C blocks of R × C: refuse when they would not fit."""
    nbytes = classes * rows * classes * torch.empty((), dtype=dtype).element_size()
    if nbytes > EXACT_BLOCKS_BYTES:
        raise ValueError(
            f"{func}: fisher='exact' needs {classes} output blocks of {rows} x {classes} "
            f"({nbytes / 2**30:.1f} GiB, over the {EXACT_BLOCKS_BYTES / 2**30:.0f} GiB limit) and one backward "
            "each; use fisher='sampled' (one block, the same Fisher in expectation) or 'empirical'")


class RunningMean:
    """The mean of ``rowsᵀrows / R`` (or of its diagonal) over all rows added so far."""

    def __init__(self, diagonal: bool = False):
        self.mean = None
        self.rows = 0
        self.diagonal = diagonal

    def add(self, rows: torch.Tensor) -> None:
        if self.diagonal:
            self.add_sum(rows.square().sum(0), rows.shape[0])
            return
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

    def add_sum(self, total: torch.Tensor, r: int) -> None:
        """Fold in ``r`` rows whose (diagonal) sum of squares is ``total``."""
        if r == 0:
            return
        if self.mean is None:
            self.mean = total / r
        else:
            self.mean.mul_(self.rows / (self.rows + r)).add_(total, alpha=1.0 / (self.rows + r))
        self.rows += r


class Batch:
    """Statistics of the forwards since the last step."""

    def __init__(self):
        self.n = 0  # counted output positions of the samples behind the statistics
        self.n_loss = 0  # counted output positions of every forward (the loss's mean runs over them)
        self.forwards = 0  # recording forwards whose backward reached the output
        self.A: dict[int, RunningMean] = {}
        self.S: dict[int, RunningMean] = {}
        self.D: dict[int, list[torch.Tensor]] = {}

    def scaled_S(self, s: RunningMean, empirical: bool) -> torch.Tensor:
        """S from the running mean of δ δᵀ: ``(1/n) Σ δ δᵀ``, or for the empirical Fisher, whose
        δ are ∂L/∂z of the mean loss over ``n_loss`` positions, ``(1/n) Σ (n_loss δ)(n_loss δ)ᵀ``."""
        return s.mean * (s.rows * self.n_loss * self.n_loss / self.n if empirical else s.rows / self.n)

    def scaled_D(self, total: torch.Tensor, empirical: bool) -> torch.Tensor:
        """A diagonal block from its sum of squared row gradients, scaled as :meth:`scaled_S`."""
        return total * (self.n_loss * self.n_loss / self.n) if empirical else total / self.n


class Samples:
    """The samples of one forward whose statistics are kept (``stats_samples``): sample i is
    index i along the first dimension of the output (N samples of P positions each, the output
    rows i·P ... (i+1)·P − 1), and of every per-sample tensor whose first dimension is N·k
    (entries i·k ... (i+1)·k − 1)."""

    def __init__(self, index: torch.Tensor, n: int, positions: int):
        self.index = index  # (m,) sorted
        self.n = n
        self.positions = positions
        self.rows = (index[:, None] * positions + torch.arange(positions, device=index.device)).reshape(-1)
        self._others = None  # 1 at the samples not chosen (float, by dtype)

    def fits(self, t: torch.Tensor) -> bool:
        """Whether ``t``'s first dimension is N·k for some k >= 1."""
        return t.ndim >= 1 and t.shape[0] >= self.n and t.shape[0] % self.n == 0

    def select(self, t: torch.Tensor) -> torch.Tensor:
        """The chosen samples' entries of ``t`` (first dimension N·k), in order."""
        if t.shape[0] == self.n:
            return t.index_select(0, self.index)
        return t.unflatten(0, (self.n, -1)).index_select(0, self.index).flatten(0, 1)

    def zero_elsewhere(self, t: torch.Tensor) -> bool:
        """Whether ``t`` is exactly zero at every sample not chosen (an output gradient from score
        rows that are zero there: true wherever the model does not mix samples)."""
        if t.numel() == 0:
            return True
        v = t.unflatten(0, (self.n, -1))
        # per-sample largest magnitudes (two reductions, no temporary as large as t; any() is
        # several times slower here) weighted by the mask of the others; NaN or Inf anywhere
        # reads as not zero
        dims = tuple(range(1, v.ndim))
        peak = torch.maximum(v.amax(dims), v.amin(dims).neg_())
        if self._others is None or self._others.dtype != peak.dtype:
            self._others = torch.ones(self.n, dtype=peak.dtype, device=peak.device).index_fill_(0, self.index, 0.0)
        return float(torch.dot(peak, self._others)) == 0.0

    def spread(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows (m·P, C) of the chosen samples as the (N·P, C) rows of the whole output, zero elsewhere."""
        full = rows.new_zeros((self.n * self.positions, rows.shape[1]))
        return full.index_copy_(0, self.rows, rows)


class Capture:
    """Hooks on ``model`` collecting statistics for the ``blocks`` (``_layers.Blocks``).

    Parameters
    ----------
    model : nn.Module
    blocks : ngdfast.torch._layers.Blocks
    outputs : ngdfast.torch._outputs.Outputs
    fisher : str
    stats_dtype : callable(tensor) -> torch.dtype
        Statistics precision for a parameter.
    generator : callable() -> torch.Generator
    force : bool
        Record whatever the model's mode (the functional primitive).
    stats_samples : int or None
        Statistics from at most this many samples of each forward (None: all).
    """

    def __init__(self, model, blocks, outputs, fisher, stats_dtype, generator, *, force=False, stats_samples=None):
        self.model = model
        self.layers = blocks.layers
        self.diagonal = blocks.diagonal
        self.kinds = blocks.kinds
        self.outputs = outputs
        self.loss = outputs.loss
        self.fisher = fisher
        self.stats_dtype = stats_dtype
        self.generator = generator
        self.force = force
        self.stats_samples = stats_samples
        self.enabled = False
        self.backward_seen = False
        self.listener = None  # ngdfast.torch._distributed.FactorReducer: forward/backward events
        self.batch = Batch()
        self._pending = []
        self._unfolded = []  # [out, pending] of each recorded forward whose backward has not come yet
        self._rows_out = 0  # output rows of the forward being folded
        self._loose = [(j, [module.get_parameter(n) for n in names])
                       for j, (_, module, names) in enumerate(self.diagonal) if self.kinds[j] == "loose"]
        # a module called outside the model's forward must not count: start each forward afresh
        # The hooks hold the capture weakly, and its collection removes them (see _weak).
        self._handles = [model.register_forward_pre_hook(_eager(_weak(self, "_root_pre_hook")))]
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.module.register_forward_hook(_eager(_weak(self, "_module_hook", ("k", i)))))
        for j, (_, module, _) in enumerate(self.diagonal):
            if self.kinds[j] != "loose":
                self._handles.append(module.register_forward_hook(_eager(_weak(self, "_module_hook", ("d", j)))))
        # last: when the model itself is a tracked module, its own hook must run first
        self._handles.append(model.register_forward_hook(_eager(_weak(self, "_root_hook"))))
        weakref.finalize(self, _remove_handles, list(self._handles))

    def remove(self) -> None:
        _remove_handles(self._handles)
        self._handles = []
        self._release()

    def reset(self) -> None:
        """Forget the statistics and the backward mark (after a step, taken or rejected)."""
        self.batch = Batch()
        self._pending = []
        self._release()
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
        if _backpropagating():
            return
        self.backward_seen = True
        if self.listener is not None and self.enabled and self.batch.n:
            self.listener.on_backward_start()

    def _root_hook(self, module, args, output):
        pending, self._pending = self._pending, []
        if not self._live():
            return
        recording = self.enabled and self._recording()
        if recording:
            out = self.outputs.tensor(output)  # raises: says what is expected
        else:
            try:
                out = self.outputs.pick(output)
            except (TypeError, LookupError):
                return
            if not isinstance(out, torch.Tensor):
                return
        if not out.requires_grad:
            return
        if recording:
            if self.listener is not None:
                self.listener.on_forward([])
            # The hook gets the output and the module tensors through a box it empties when it
            # runs (or reset() does): a tensor hook holding its own tensor is a cycle through
            # autograd's C++ graph that Python's gc cannot see, which kept every step's graph.
            box = [out, pending]
            self._unfolded.append(box)
            out.register_hook(partial(self._on_output_grad, box))
        out.register_hook(self._mark)  # also in eval mode: a step then says what is missing

    def _release(self) -> None:
        """Empty the boxes of forwards not backpropagated before the step: their graphs go free."""
        for box in self._unfolded:
            box.clear()
        self._unfolded = []

    def _on_output_grad(self, box, grad):
        owner = getattr(_LOCAL, "owner", None)
        # an empty box: folded already (a second backward with retain_graph=True adds nothing)
        if _backpropagating() or not box or not (owner is None or owner is self):
            return
        out, pending = box
        box.clear()
        self._unfolded = [b for b in self._unfolded if b is not box]
        _LOCAL.backpropagating = True
        try:
            with torch.enable_grad():
                self._collect(out, pending, grad)
        finally:
            _LOCAL.backpropagating = False

    def _collect(self, out, pending, grad) -> None:
        """Fold one forward's statistics, now that the loss's gradient at the output is known."""
        b = self.batch
        b.forwards += 1
        grad_rows = self.outputs.rows(grad.detach())
        counted = (grad_rows != 0).any(dim=1)
        n_loss = int(counted.sum())
        if n_loss == 0:
            return  # the loss ignores every position of this forward
        choice = self._choose(out, counted)
        n = n_loss if choice is None else int(counted.index_select(0, choice.rows).sum())
        b.n += n
        b.n_loss += n_loss
        live = [(key, args, o) for key, args, o in pending if o.requires_grad]
        loose = [(j, ps) for j, ps in self._loose]
        per_block = []
        if live or loose:
            rows_out = self.outputs.rows(out.detach())
            self._rows_out = rows_out.shape[0]
            if self.fisher == "exact":
                check_exact_size(rows_out.shape[1], rows_out.shape[0], _fisher.working(rows_out).dtype,
                                 "ngdfast.torch")
            if choice is not None:  # labels for the chosen samples' rows only; the other rows stay zero
                grad_rows = grad_rows.index_select(0, choice.rows)
                rows_out = rows_out.index_select(0, choice.rows)
                counted = counted.index_select(0, choice.rows)
            if self.fisher == "empirical":
                blocks = [_fisher.working(grad_rows)]
            else:
                blocks = _fisher.output_rows(self.loss, self.fisher, rows_out, None, self.generator())
                if n < counted.numel():
                    blocks = [t * counted[:, None].to(t.dtype) for t in blocks]
            if choice is not None:
                blocks = [choice.spread(t) for t in blocks]
            blocks = [self.outputs.unrows(t, out).to(out.dtype) for t in blocks]
            targets = [o for _, _, o in live] + [p for _, ps in loose for p in ps]
            per_block = _backpropagate(out, targets, blocks)
        j = 0
        for key, args, o in pending:
            deltas = []
            if o.requires_grad:
                deltas = [g[j].detach() for g in per_block if g[j] is not None]
                j += 1
            rows = choice if choice is not None and self._per_sample(key, args, deltas, choice) else None
            if key[0] == "k":
                if rows is not None:
                    args, deltas = (rows.select(args[0]),), [rows.select(d) for d in deltas]
                self._add_inputs(key[1], args[0])
            self._add_deltas(key, args, deltas, rows)
        k = len(live)
        for j, ps in loose:
            sums = []
            for p in ps:
                dtype = self.stats_dtype(p)
                gs = [g[k] for g in per_block if g[k] is not None]
                sums.append(sum(t.to(dtype).square() for t in gs) if gs else torch.zeros_like(p, dtype=dtype))
                k += 1
            self._add_diagonal(j, sums)

    def _choose(self, out, counted) -> Samples | None:
        """The samples of this forward whose statistics are kept: all (None) without
        ``stats_samples`` or with at most that many samples; else that many drawn without
        replacement with the preconditioner's generator (the first m of a ``torch.randperm``,
        in increasing order) among the samples with a counted position."""
        m = self.stats_samples
        n = out.shape[0]
        if m is None or n <= m:
            return None
        candidates = counted.reshape(n, -1).any(1).nonzero().squeeze(1)
        if candidates.numel() > m:
            gen = self.generator()
            pick = torch.randperm(candidates.numel(), generator=gen, device=gen.device)[:m]
            candidates = candidates.index_select(0, pick.to(candidates.device)).sort().values
        return Samples(candidates, n, counted.numel() // n)

    def _per_sample(self, key, args, deltas, samples: Samples) -> bool:
        """Whether a block's rows belong to the samples along the first dimension: its input is
        batched with a first dimension N·k (as are its output gradients), and the gradients from
        the chosen samples' score rows are exactly zero at the other samples. Otherwise (an input
        shared by every sample, such as positional ids ``arange(T)``; a layer below a BatchNorm
        in training mode, whose batch statistics mix the samples) all its rows count."""
        kind, i = key
        if kind == "k":
            tensors, batched = [args[0]], self.layers[i].batched(args[0])
        else:
            _, module, _ = self.diagonal[i]
            how = self.kinds[i]
            if how == "norm":
                tensors, batched = [args[0]], _norms.batched(module, args[0])
            elif how == "layer":
                tensors, batched = [args[0]], _diagonal.layer_of(module).batched(args[0])
            else:
                tensors, batched = list(args), bool(args)
        if not batched or not samples.fits(tensors[0]):
            return False
        lead = tensors[0].shape[0]
        if any(t.ndim == 0 or t.shape[0] != lead for t in tensors[1:] + deltas):
            return False
        return all(samples.zero_elsewhere(d) for d in deltas)

    def _add_inputs(self, i, x) -> None:
        layer = self.layers[i]
        dtype = self.stats_dtype(layer.params[0])
        mean = self.batch.A.setdefault(i, RunningMean(layer.a_diag))
        if layer.embedding:
            mean.add_sum(layer.token_counts(x, dtype), x.numel())
        else:
            mean.add(layer.a_rows(x, dtype))

    def _add_deltas(self, key, args, deltas, rows=None) -> None:
        """Fold output gradients; ``rows`` (a :class:`Samples`): only the chosen samples' rows
        count (a K-FAC layer's ``args`` and ``deltas`` come already restricted to them)."""
        if not deltas:
            return
        kind, i = key
        if kind == "k":
            layer = self.layers[i]
            dtype = self.stats_dtype(layer.params[0])
            mean = self.batch.S.setdefault(i, RunningMean(layer.s_diag))
            for d in deltas:
                mean.add(layer.s_rows(d, args[0], dtype))
            return
        _, module, names = self.diagonal[i]
        dtype = self.stats_dtype(module.get_parameter(names[0]))
        how = self.kinds[i]
        select = None if rows is None else rows.select
        if how == "norm":  # BatchNorm's x̂ needs the whole batch's statistics: it selects after normalising
            self._add_diagonal(i, _norms.square_sums(module, names, args[0], deltas, dtype, select))
            return
        if select is not None:
            args, deltas = tuple(select(a) for a in args), [select(d) for d in deltas]
        if how == "layer":
            layer = _diagonal.layer_of(module)
            rows_out = self._rows_out if rows is None else rows.rows.numel()
            per_row = deltas[0].numel() // layer.out_dim == rows_out  # a row per output position
            sums = _diagonal.layer_square_sums(layer, args[0], deltas, dtype, per_row)
        else:
            with quiet():
                sums = _diagonal.square_sums(module, names, args, deltas, dtype)
        self._add_diagonal(i, sums)

    def _add_diagonal(self, j, sums) -> None:
        if j in self.batch.D:
            for acc, s in zip(self.batch.D[j], sums):
                acc.add_(s)
        else:
            self.batch.D[j] = sums

    # ------------------------------------------------------------- statistics
    def statistics(self):
        """``(n, A, S, D)`` of this step's forwards, or None when nothing was recorded.

        ``A[i]``, ``S[i]``: factors of layer i (present when the layer was seen with both an
        input and an output gradient; a vector where the factor is diagonal); ``D[j]``: list of
        diagonal Fisher tensors of diagonal block j. Scales as in the module docstring.
        """
        b = self.batch
        if b.n == 0:
            return None
        empirical = self.fisher == "empirical"
        A, S, D = {}, {}, {}
        for i, s in b.S.items():
            if i in b.A and s.mean is not None:
                A[i] = b.A[i].mean
                S[i] = b.scaled_S(s, empirical)
        for j, sums in b.D.items():
            D[j] = [b.scaled_D(t, empirical) for t in sums]
        return b.n, A, S, D
