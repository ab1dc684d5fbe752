"""The natural-gradient preconditioner for an ordinary torch training loop."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
from torch import nn

from .. import _validation
from ..optimizer import NaturalGradient, _solve_with_retries
from ..optimizer import StepInfo as _NumpyStepInfo
from . import _checks, _distributed, _exact, _fisher, _layers, _linalg
from ._capture import Capture
from ._outputs import Outputs

_FUNC = "Preconditioner"


@dataclass
class StepInfo(_NumpyStepInfo):
    """What one :meth:`Preconditioner.step` did (``ngdfast.StepInfo`` plus the torch side).

    Attributes
    ----------
    beta, quadratic, predicted_kl, damping, retries, clipped, step_norm, predicted_change
        As in :class:`ngdfast.StepInfo`: ``.grad`` became ``β ñ``, ``quadratic = gᵀñ``,
        ``predicted_kl = ½ β² gᵀñ``.
    factors_updated : bool
        Whether this step folded new statistics into the curvature.
    inverses_updated : bool
        Whether the K-FAC factor inverses were recomputed (with ``damping``).
    n_samples : int
        Samples behind the statistics of this step (0 when not updated).

    Examples
    --------
    >>> import ngdfast
    >>> import ngdfast.torch
    >>> issubclass(ngdfast.torch.StepInfo, ngdfast.StepInfo)      # the NumPy fields plus the torch side
    True
    """

    factors_updated: bool = False
    inverses_updated: bool = False
    n_samples: int = 0


def _flat(tensors) -> torch.Tensor:
    """The tensors' elements in one vector (one dtype: torch's promotion; on the first one's device)."""
    if not tensors:
        return torch.zeros(0)
    device = tensors[0].device
    return torch.cat([t.reshape(-1).to(device) for t in tensors])


class _Refresh:
    """A refresh step's inverses (``Preconditioner(overlap=True)``) computed by a background thread
    while the next forward and backward run; ngdfast's kernels and torch's linear algebra release
    the GIL. ``wait()`` joins it: then ``value`` holds the inverses, or ``error`` what stopped them.
    The factors it reads are never modified in place (every update makes new tensors)."""

    def __init__(self, invert=None, A=None, S=None, damping=None, *, value=None):
        self.damping, self.value, self.error = damping, value, None
        self._thread = None
        if invert is not None:
            self._thread = threading.Thread(target=self._run, args=(invert, A, S, damping),
                                            name="ngdfast-refresh")
            self._thread.start()

    def _run(self, invert, A, S, damping):
        try:
            self.value = invert(A, S, damping)
        except Exception as e:  # noqa: BLE001 -- the step that waits for it recomputes (and raises) in its own thread
            self.error = e

    def wait(self) -> _Refresh:
        if self._thread is not None:
            self._thread.join()
        return self


def _saved_inverses(inverses, device_of=None):
    """Copies of the inverses keyed as they are, as plain tuples (``FactorEigen`` becomes a tuple, so
    that ``torch.load(weights_only=True)`` reads them); ``device_of(key)`` moves them."""
    if inverses is None:
        return None

    def copy(t, key):
        if not isinstance(t, torch.Tensor):
            return t
        t = t.clone()
        return t if device_of is None else t.to(device_of(key))

    return {k: tuple(copy(t, k) for t in v) for k, v in inverses.items()}


def _default_generator(model: nn.Module) -> torch.Generator:
    """A private generator on the parameters' device, seeded from torch's global RNG."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(int(torch.randint(0, 2**62, (), dtype=torch.int64)))
    return gen


class Preconditioner:
    r"""Natural-gradient preconditioner: rewrites ``.grad`` so that any optimizer follows ñ.

    Between ``loss.backward()`` and ``optimizer.step()``, :meth:`step` replaces each
    trainable parameter's gradient g by ``β ñ`` with

    .. math::

        ñ = (F + λI)^{-1} g, \qquad β = \min\bigl(\sqrt{2ε / gᵀñ},\ \text{max\_step}\bigr),

    so that ``torch.optim.SGD(model.parameters(), lr=1.0)`` takes exactly θ ← θ − β ñ, a step
    whose predicted KL divergence ``KL(p_θ ‖ p_{θ−βñ}) ≈ ½ β² gᵀñ`` is ε (``kl_radius``)::

        precond = ngdfast.torch.Preconditioner(model, kl_radius=1e-3, damping=1e-3)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        for x, y in loader:
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); precond.step(); opt.step()

    The defaults (``kl_radius=1e-2``, ``damping=1e-3``, ``decay=0.95``, statistics and inverses
    every 10 steps) were chosen by measurement (docs/performance.md, "The defaults of the torch
    layer") for the loop of :class:`NGD`: this preconditioner, then
    ``torch.optim.SGD(lr=0.4, momentum=0.6)``.
    With plain ``SGD(lr=1)`` every step moves the full ε: choose ``kl_radius=1e-3`` there.

    Parameters
    ----------
    model : nn.Module
        Returns logits for ``loss="cross_entropy"`` or the Gaussian mean for ``loss="mse"``:
        ``(N, C)``, or with positions ``(N, *, C)`` (a language model's (B, T, V)), or ``(N, C, *)`` with
        ``class_dim=1``. Every position is a sample of the Fisher (F is the mean over the
        positions the loss counts); a tuple, dict or ``ModelOutput`` is read through ``output``.
    curvature : {"kfac", "exact", "diagonal"}
        * ``"kfac"``: per layer ``F_l ≈ S_l ⊗ A_l`` for ``nn.Linear``, ``nn.Conv1d``,
          ``nn.Conv2d`` (groups = 1) and ``nn.Embedding`` (diagonal A: the token
          frequencies), statistics from hooks (see ``ngdfast.torch._capture``: no second
          forward), running averages ``A ← decay·A + (1 − decay)·A_batch`` (the first batch
          replaces), factored Tikhonov damping exactly as ``ngdfast.kfac_precondition``
          (``Ã = A + π√λ I``, ``S̃ = S + (√λ/π) I``, π = sqrt((tr A/in)/(tr S/out))),
          ``ñ_l = S̃⁻¹ ∇W̄_l Ã⁻¹`` with the bias as the last column of W̄. Norm layers
          (LayerNorm, RMSNorm, BatchNorm, GroupNorm) get their diagonal Fisher in closed form,
          loose parameters (a model's own ``nn.Parameter``, tied weights, MultiheadAttention)
          a diagonal estimated from the same extra backward (``ngdfast.torch._layers``).
        * ``"exact"``: the Fisher of the current batch, no approximation, from per-sample score
          rows (``torch.func``) solved by ``ngdfast.natural_gradient`` (dense or Woodbury by
          cost); :meth:`step` needs ``inputs`` (and ``targets`` for ``fisher="empirical"``).
        * ``"diagonal"``: running average of ``mean_i (per-sample gradient)²`` for every
          parameter, ``ñ = g / (d + λ)``.
    loss : {"cross_entropy", "mse"}
        The output distribution (categorical, or Gaussian with unit variance; see
        ``ngdfast.torch._fisher``).
    fisher : {"sampled", "empirical", "exact"}
        Labels of the score rows: drawn from the model (default), the data's (from the
        gradients of your own loss, which must then be the batch mean of the per-sample
        negative log-likelihood), or all classes weighted by p.
    kl_radius : float
        ε > 0.
    damping : float
        λ >= 0.
    max_step : float, optional
        Upper bound on β.
    decay : float in [0, 1)
        EMA factor of the K-FAC factors and of the diagonal, per statistics update (every
        ``factor_interval`` steps). A shorter memory (0.5) follows a fast-changing curvature
        sooner when every batch has many rows (a transformer's positions), and makes the
        factors noisy when batches are small (docs/performance.md, "The defaults of the torch
        layer").
    factor_interval : int
        Statistics are recorded and folded in on steps 0, k, 2k, ... (hooks idle in between).
    inverse_interval : int
        The damped factor inverses are recomputed on steps 0, k, 2k, ... (with the damping of
        that step) and reused in between.
    adaptive_damping : bool
        Levenberg-Marquardt adjustment of λ through :meth:`report_loss` (the rule of
        :meth:`ngdfast.NaturalGradient.report_loss`); needs ``step(loss=...)``.
    fallback : {"diagonal", "gradient", None}
        What ``curvature="kfac"`` does for leaf modules with trainable parameters that have no
        block of their own (grouped convolutions, custom layers, ...), listed in
        :attr:`fallback_modules`: their diagonal Fisher (per-sample gradients by
        ``torch.func`` over the module), the plain gradient (ñ = g, as if F + λI = I there), or
        ``None``: raise. ``nn.MultiheadAttention`` is listed too: its parameters get the
        loose-parameter diagonal.
    output : None, str, int or callable
        Picks the output tensor from what the model returns: None (a tensor), a key or
        attribute (``"logits"`` for a Hugging Face ``ModelOutput``), a tuple index, a callable.
    class_dim : {-1, 1}
        Where the classes (mse: the values) are: last (default), or dimension 1 as in
        ``F.cross_entropy``'s ``(N, C, *)`` layout.
    ignore_index : int
        Targets equal to it count nowhere (``curvature="exact"``, whose :meth:`step` gets the
        targets). K-FAC and diagonal read the counted positions off the loss's gradient at the
        output instead: a position whose gradient is exactly zero (ignored by
        ``F.cross_entropy``, masked out) counts nowhere.
    kfac_approx : {"expand", "reduce"}
        For a Linear or Conv layer applied at several positions per sample: every position a
        row of the factors (``"expand"``, default) or positions summed per sample first
        (``"reduce"``, Eschenhagen et al. 2023; see ``ngdfast.torch._layers``).
    max_factor_dim : int or None
        A K-FAC factor side with more features than this (an LM head's V outputs) keeps only
        its diagonal; None: never.
    stats_samples : int or None
        K-FAC and diagonal statistics from at most this many samples of each recorded forward
        (chosen at random with ``generator``); the gradient still uses the whole batch. None: all.
        Not with ``curvature="exact"`` (nor are ``inverse="eigh"`` and ``overlap``), which keeps
        no such statistics: ValueError.
    inverse : {"cholesky", "eigh"}
        How the damped factors are inverted on refresh steps: Cholesky of ``A + π√λ I``, or an
        eigendecomposition of A and S, after which any damping (adaptive, retries) costs no
        refactorisation.
    overlap : bool
        Compute a refresh's inverses in a background thread while the next forward and backward
        run; they are used one step later (the step that triggered them uses the previous ones).
    generator : torch.Generator, optional
        For the sampled labels; default: a private generator seeded from torch's global RNG.
        Its state is part of :meth:`state_dict`.
    max_retries, min_damping, max_damping : as in ``ngdfast.NaturalGradient``
    distributed : bool, optional
        Data parallel over ``torch.distributed`` (see ``ngdfast.torch._distributed`` and
        docs/distributed.md): ``None`` (default) when a process group with more than one rank
        is initialised, ``True`` requires one, ``False`` never. Every rank then constructs its
        preconditioner with the same settings (checked; a mismatch raises on every rank), and
        the step equals the single-process step on the concatenation of the ranks' batches.
        ``model`` may be a ``DistributedDataParallel`` (its averaged gradients are used) or the
        plain model (the gradients are then averaged here). The sampled Fisher's default
        generator is seeded differently on each rank.
    process_group : ProcessGroup, optional
        The ranks to span (default: the world); a private group over the same ranks carries
        the preconditioner's collectives.
    distribute : {"inverses", "gradients"}
        K-FAC work split (layers owned by cost, largest first to the least-loaded rank):
        every rank holds every inverse, broadcast on refresh steps; or each owner keeps its
        inverses and broadcasts its layers' preconditioned gradients every step (the owned
        layers' memory only; traffic every step instead of on refresh steps). Same parameters
        either way.
    bucket_mb : float
        Size cap of the buckets of the asynchronous factor all-reduce.

    Attributes
    ----------
    kfac_layers : list of str
        Names of the modules K-FAC factors.
    diagonal_blocks : list of str
        Modules (or loose parameter groups) with a diagonal block.
    fallback_modules : list of str
        Modules handled by the fallback (``curvature="kfac"``).
    n_steps : int
    damping : float
    last_step : StepInfo or None

    Notes
    -----
    Scale: F is the mean over samples (``ngdfast.fisher``'s convention). For a layer applied at
    several positions (Conv2d locations, Linear on ``(N, *, in)`` inputs) A is the mean over all
    rows and S = (1/N) Σ_i Σ_t δ_it δ_itᵀ (KFC; see ``ngdfast.torch._layers``).

    Hooks: statistics come from forwards in training mode with grad enabled; eval-mode and
    ``torch.no_grad()`` forwards, and forwards inside ``torch.func`` transforms, are ignored.
    A step that should update the curvature but saw no such forward raises.

    Gradient accumulation: every training-mode forward with grad enabled since the last step
    contributes; the factors are those of all those samples together, and g is whatever
    ``.grad`` holds (it should be the gradient of the mean loss over them; with
    ``fisher="empirical"`` it must be, since δ_i = n·∂L/∂z_i over the n samples seen).

    Parameters whose ``.grad`` is None (not used in this forward) are left alone, as torch's
    optimizers do; gᵀñ sums over the others.

    A step is all or nothing: on missing or non-finite gradients, a step without a backward
    since the last one, non-finite statistics or a failed solve, :meth:`step` raises and the
    parameters, their ``.grad`` and the curvature are as they were (the statistics of the
    rejected forwards are dropped).

    ``float32`` and ``bfloat16`` models keep their statistics in float32, ``float64`` models in
    float64. CPU tensors reach ngdfast's compiled kernels as zero-copy views; CUDA tensors use
    ``ngdfast.cuda`` when it imports, else torch's own linear algebra.

    Examples
    --------
    >>> import torch
    >>> import ngdfast.torch as ngt
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> precond = ngt.Preconditioner(model, kl_radius=1e-2, damping=1e-2)
    >>> opt = torch.optim.SGD(model.parameters(), lr=1.0)
    >>> loss = torch.nn.functional.cross_entropy(model(x), y)
    >>> loss.backward()
    >>> info = precond.step()                               # .grad <- beta * nat
    >>> opt.step()
    >>> round(info.predicted_kl, 6), precond.kfac_layers
    (0.01, ['0', '2'])
    """

    def __init__(self, model: nn.Module, *, curvature="kfac", loss="cross_entropy", fisher="sampled",
                 kl_radius=1e-2, damping=1e-3, max_step=None, decay=0.95, factor_interval=10,
                 inverse_interval=10, adaptive_damping=False, fallback="diagonal", generator=None,
                 max_retries=3, min_damping=1e-8, max_damping=1e4, distributed=None, process_group=None,
                 distribute="inverses", bucket_mb=25.0, output=None, class_dim=-1, ignore_index=-100,
                 kfac_approx="expand", max_factor_dim=4096, stats_samples=None, inverse="cholesky",
                 overlap=False):
        _checks.module(model, _FUNC)
        self.curvature = _checks.choice(curvature, _fisher.CURVATURES, "curvature", _FUNC)
        self.loss = _checks.choice(loss, _fisher.LOSSES, "loss", _FUNC)
        self.fisher = _checks.choice(fisher, _fisher.FISHERS, "fisher", _FUNC)
        self.fallback = _checks.choice(fallback, _fisher.FALLBACKS, "fallback", _FUNC)
        self.kfac_approx = _checks.choice(kfac_approx, _layers.KFAC_APPROX, "kfac_approx", _FUNC)
        self.max_factor_dim = (None if max_factor_dim is None
                               else _validation.integer(max_factor_dim, _FUNC, "max_factor_dim"))
        self._outputs = Outputs(self.loss, output, class_dim, ignore_index, _FUNC)
        self.stats_samples = (None if stats_samples is None
                              else _validation.integer(stats_samples, _FUNC, "stats_samples"))
        self.inverse = _checks.choice(inverse, _linalg.INVERSES, "inverse", _FUNC)
        self.overlap = bool(overlap)
        if self.curvature == "exact" and (self.stats_samples is not None or self.inverse != "cholesky"
                                          or self.overlap):
            raise ValueError(f"{_FUNC}: stats_samples, inverse='eigh' and overlap=True are options of the K-FAC "
                             "and diagonal statistics; curvature='exact' solves with the batch's own scores "
                             "and has none of them")
        # the same validators (and messages) as ngdfast.NaturalGradient and the curvature objects
        self.kl_radius = _validation.positive(kl_radius, _FUNC, "kl_radius")
        self.damping = _validation.nonnegative(damping, _FUNC, "damping")
        self.max_step = _validation.optional_positive(max_step, _FUNC, "max_step")
        self.decay = _validation.decay_arg(decay, _FUNC, running=True)
        self.factor_interval = _validation.integer(factor_interval, _FUNC, "factor_interval")
        self.inverse_interval = _validation.integer(inverse_interval, _FUNC, "inverse_interval")
        self.max_retries = _validation.integer(max_retries, _FUNC, "max_retries", minimum=0)
        self.min_damping, self.max_damping = _validation.damping_range(min_damping, max_damping, _FUNC)
        _checks.generator(generator, _FUNC)
        # report_loss is NaturalGradient's (one Levenberg-Marquardt rule); these are its settings.
        self.adaptive_damping = bool(adaptive_damping)
        self.damping_decrease, self.damping_increase = 2.0 / 3.0, 1.5
        self.adaptive_kl_radius = False
        self.max_kl_radius = self._min_kl_radius = self.kl_radius
        self._pending = None

        self.distribute = _checks.choice(distribute, _distributed.DISTRIBUTE, "distribute", _FUNC)
        self.bucket_mb = _validation.positive(bucket_mb, _FUNC, "bucket_mb")
        use_dist = _distributed.enabled(distributed, _FUNC)
        if use_dist and (self.inverse != "cholesky" or self.overlap):
            raise ValueError(f"{_FUNC}: inverse='eigh' and overlap=True are single-process options for now; "
                             "with torch.distributed use inverse='cholesky', overlap=False")
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        if ddp:
            model = model.module  # hooks and torch.func on the module; DDP averages the gradients
        model = _checks.uncompiled(model)  # torch.compile(model): the hooks go on the module it compiles
        self.model = model
        self._names, self._params = _checks.trainable(model, _FUNC)
        blocks = _layers.classify(model, self.curvature, self.fallback, _FUNC, self.max_factor_dim, self.kfac_approx)
        self._layers, self._diagonal, self._gradient_only = blocks.layers, blocks.diagonal, blocks.gradient_only
        self.kfac_layers = [layer.name for layer in self._layers]
        self.diagonal_blocks = [name for name, *_ in self._diagonal]
        self.fallback_modules = list(blocks.fallback_modules) if self.curvature == "kfac" else []
        self._stats_dtype = _fisher.stats_dtype
        self._generator = generator if generator is not None else _default_generator(model)
        self._capture = Capture(model, blocks, self._outputs, self.fisher, _fisher.stats_dtype,
                                lambda: self._generator, stats_samples=self.stats_samples)
        self.n_steps = 0
        self.n_factor_updates = 0
        self._A: dict[int, torch.Tensor] = {}
        self._S: dict[int, torch.Tensor] = {}
        self._D: dict[int, list[torch.Tensor]] = {}
        # {layer: (A_inv, S_inv)} and the damping they used; inverse="eigh": {layer: FactorEigen}
        self._inverses = None
        self._inverse_damping = None
        self._refresh = None  # overlap: the _Refresh computing the next inverses
        self.last_step: StepInfo | None = None
        self._dist = None
        if use_dist:
            self._dist = _distributed.Distributed(self, process_group, self.distribute, self.bucket_mb, ddp)
            self._dist.fingerprint_check(self._fingerprint(), _FUNC)
            if generator is None:  # independent label draws on each rank
                self._generator.manual_seed((self._generator.initial_seed() + 7919 * self._dist.rank) % 2**63)
        self._arm()

    def _fingerprint(self) -> dict:
        settings = ("curvature", "loss", "fisher", "fallback", "kl_radius", "damping", "max_step", "decay",
                    "factor_interval", "inverse_interval", "adaptive_damping", "max_retries", "distribute",
                    "kfac_approx", "max_factor_dim", "stats_samples", "inverse", "overlap")
        out = {k: getattr(self, k) for k in settings}
        out["parameters"] = [(n, tuple(p.shape), str(p.dtype)) for n, p in zip(self._names, self._params)]
        out["kfac_layers"] = list(self.kfac_layers)
        return out

    @property
    def communication(self) -> dict:
        """Bytes each rank sent into the preconditioner's collectives so far, by kind (empty
        when not distributed). Payload sizes, not the wire traffic of a particular algorithm."""
        return {} if self._dist is None else dict(self._dist.comm.bytes)

    # ------------------------------------------------------------------ public
    def __repr__(self) -> str:
        return (f"Preconditioner(curvature={self.curvature!r}, loss={self.loss!r}, fisher={self.fisher!r}, "
                f"kl_radius={self.kl_radius}, damping={self.damping}, kfac_layers={len(self.kfac_layers)}, "
                f"fallback_modules={self.fallback_modules})")

    @property
    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer name: (A, S)}`` K-FAC factors (copies)."""
        return {self._layers[i].name: (A.clone(), self._S[i].clone()) for i, A in self._A.items()}

    def remove(self) -> None:
        """Remove the hooks from the model (the preconditioner is unusable afterwards).

        A preconditioner dropped without it takes its hooks off the model when it is collected
        (the hooks hold it weakly), and it records nothing once unreachable."""
        self._capture.remove()

    def report_loss(self, new_loss) -> float:
        """Report the loss after the step; returns ``ρ = actual / predicted`` change.

        The rule of :meth:`ngdfast.NaturalGradient.report_loss`: with ``adaptive_damping``,
        ρ > 3/4 multiplies λ by 2/3 and ρ < 1/4 by 3/2 (within ``[min_damping, max_damping]``).
        The last :meth:`step` must have been given ``loss=``. Distributed: a collective; the
        ranks' losses are averaged, so every rank adjusts λ alike.
        """
        value = new_loss.detach() if isinstance(new_loss, torch.Tensor) else new_loss
        if self._dist is not None and self._pending is not None:
            value = self._dist.mean(float(value))
        return NaturalGradient.report_loss(self, float(value))

    def step(self, inputs=None, targets=None, *, loss=None) -> StepInfo:
        """Replace every trainable parameter's ``.grad`` g by ``β ñ``.

        Parameters
        ----------
        inputs, targets : Tensor, optional
            The batch; needed only by ``curvature="exact"`` (inputs; targets too with
            ``fisher="empirical"``). K-FAC and diagonal read their statistics from the hooks.
        loss : float or Tensor, optional
            The loss before the step, for :meth:`report_loss`.

        Returns
        -------
        StepInfo
        """
        self._pending = None
        try:
            return self._step(inputs, targets, loss)
        finally:
            self._capture.reset()
            self._arm()

    # ----------------------------------------------------------------- the step
    def _arm(self) -> None:
        self._capture.enabled = self.curvature != "exact" and self.n_steps % self.factor_interval == 0

    def _step(self, inputs, targets, loss) -> StepInfo:
        func = f"{_FUNC}.step"
        grads = [p.grad for p in self._params]
        if all(g is None for g in grads):
            raise RuntimeError(f"{func}: no parameter has a gradient; call loss.backward() before step()")
        if not self._capture.backward_seen:
            raise RuntimeError(
                f"{func}: no backward pass through the model since the last step (forward in training mode "
                "with grad enabled, then loss.backward(), then step())")
        if self._dist is not None:
            self._dist.average_gradients(grads)
        present = [k for k, g in enumerate(grads) if g is not None]
        if not _linalg.finite(_flat([grads[k] for k in present])):  # one check; the culprit by name
            for k in present:
                _checks.finite(grads[k], func, f"the gradient of {self._names[k]!r}")
        A, S, D = self._A, self._S, self._D
        update = self.curvature != "exact" and self.n_steps % self.factor_interval == 0
        n_samples = 0
        if update:
            A, S, D, n_samples = self._updated_curvature(func)
        refresh = self.curvature == "kfac" and (self._inverses is None or update and self.n_factor_updates == 0
                                                or self.n_steps % self.inverse_interval == 0)
        # overlap: the inverses started on the last refresh step are used now (computed here if that
        # failed), and this refresh step's start in the background after the commit
        current, finished, launch = self._inverses, None, False
        if self._refresh is not None:
            finished = self._refresh.wait()
            if finished.error is None:
                current = finished.value
            else:
                refresh = True
        if self.overlap and refresh and current is not None and (finished is None or finished.error is None):
            refresh, launch = False, True
        if self.curvature == "exact":
            if inputs is None or (self.fisher == "empirical" and targets is None):
                raise ValueError(f"{func}: curvature='exact' needs step(inputs, targets) (targets for fisher='empirical')")
            nat, lam, retries, inverses = self._exact_direction(inputs, targets, grads)
        else:
            nat, lam, retries, inverses = self._solve(A, S, D, grads, refresh, current)
        # parameters without a gradient (unused in this forward) are left alone, as optimizers do
        nat = [None if g is None else v for g, v in zip(grads, nat)]
        # all parameters at once: a few large ops rather than several small ones per parameter
        g_flat = _flat([grads[k] for k in present]).double()
        v_flat = _flat([nat[k] for k in present]).double()
        q = float(torch.dot(g_flat, v_flat))
        beta = _linalg.kl_beta(q, self.kl_radius, self.max_step, func)
        steps = _flat([nat[k] for k in present]) * beta
        if not _linalg.finite(steps):
            for k in present:
                if not _linalg.finite(beta * nat[k]):
                    raise ValueError(f"{func}: the step for {self._names[k]!r} is not finite; lower kl_radius "
                                     "or max_step")
        # commit
        for k, t in zip(present, steps.split([nat[k].numel() for k in present])):
            self._params[k].grad.copy_(t.view(self._params[k].grad.shape))
        if update:
            self._A, self._S, self._D = A, S, D
            self.n_factor_updates += 1
        if finished is not None:
            self._refresh = None
            if finished.error is None:
                self._inverses, self._inverse_damping = finished.value, finished.damping
        if inverses is not None:
            self._inverses, self._inverse_damping = inverses, lam
        if launch:
            self._refresh = _Refresh(self._invert, A, S, lam)
        if self.adaptive_damping and retries:
            self.damping = min(max(lam, self.min_damping), self.max_damping)
        uncapped = math.sqrt(2.0 * self.kl_radius / q) if q > 0 else 0.0
        info = StepInfo(
            beta=beta, quadratic=q, predicted_kl=0.5 * beta * beta * q, damping=lam, retries=retries,
            clipped=bool(self.max_step is not None and uncapped > self.max_step),
            step_norm=beta * math.sqrt(float(torch.dot(v_flat, v_flat))),
            predicted_change=-beta * q + 0.5 * beta * beta * q,
            factors_updated=update, n_samples=n_samples,
            inverses_updated=inverses is not None or (finished is not None and finished.error is None),
        )
        if loss is not None:
            value = loss.detach() if isinstance(loss, torch.Tensor) else loss
            if self._dist is not None:  # every rank passes loss= (or none does)
                value = self._dist.mean(float(value))
            self._pending = (float(value), info.predicted_change, info)
        self.n_steps += 1
        self.last_step = info
        return info

    def _updated_curvature(self, func):
        """New factor/diagonal dicts with this step's statistics folded in (nothing committed)."""
        stats = self._capture.statistics() if self._dist is None else self._dist.reducer.finish()
        if stats is None:
            if self._capture.batch.forwards:
                raise ValueError(f"{func}: the loss counted no output position since the last step (its gradient "
                                 "at the output is zero everywhere: every target equal to ignore_index?)")
            raise RuntimeError(
                f"{func}: no statistics were recorded since the last step; this step updates the curvature "
                "and needs a forward in training mode with grad enabled (model.train())")
        n, A_b, S_b, D_b = stats
        first = self.n_factor_updates == 0
        A, S, D = dict(self._A), dict(self._S), dict(self._D)
        for i in A_b:
            for name, new, old in (("A", A_b[i], self._A.get(i)), ("S", S_b[i], self._S.get(i))):
                _checks.finite(new, func, f"factor {name} of layer {self._layers[i].name!r}")
            A[i] = A_b[i] if first or i not in self._A else self.decay * self._A[i] + (1 - self.decay) * A_b[i]
            S[i] = S_b[i] if first or i not in self._S else self.decay * self._S[i] + (1 - self.decay) * S_b[i]
        for j, ds in D_b.items():
            if not all(_linalg.finite(d) for d in ds):
                raise ValueError(f"{func}: the diagonal Fisher of {self._diagonal[j][0]!r} contains NaN or Inf")
            D[j] = (list(ds) if first or j not in self._D
                    else [self.decay * o + (1 - self.decay) * d for o, d in zip(self._D[j], ds)])
        return A, S, D, n

    def _invert(self, A, S, lam):
        """What a refresh computes from the factors: the damped inverses at ``lam``, or (``"eigh"``)
        the eigendecompositions, which serve any damping."""
        if self.inverse == "eigh":
            return _linalg.eigen_decompositions(self._layers, A, S)
        return _linalg.damped_inverses(self._layers, A, S, lam)

    def _solve(self, A, S, D, grads, refresh, current):
        """Directions for every parameter, with damping retries: ``(nat, λ, retries, inverses)``;
        ``current``: the inverses to use when not ``refresh``."""
        by_param = {id(p): k for k, p in enumerate(self._params)}
        eigh = self.inverse == "eigh"
        if eigh and refresh and self._layers:  # no damping in it: computed once, whatever the retries
            current, refresh = _linalg.eigen_decompositions(self._layers, A, S), False
            fresh = current
        else:
            fresh = None

        def solve(lam):
            nat = [None] * len(self._params)
            inverses = None
            if self._layers:
                if not refresh:
                    inverses = current
                elif self._dist is None:
                    inverses = _linalg.damped_inverses(self._layers, A, S, lam)
                else:
                    inverses = self._dist.inverses(
                        self._layers, A, S, lam, lambda a, s, d: _linalg.damped_inverses(self._layers, a, s, d))
                split = self._dist is not None and self._dist.distribute == "gradients"
                mine = {}
                for i, layer in enumerate(self._layers):
                    if split and not self._dist.owns(i):
                        continue
                    g = [grads[by_param[id(p)]] for p in layer.params]
                    if all(t is None for t in g):
                        continue
                    if i not in inverses:
                        raise RuntimeError(f"Preconditioner.step: no statistics for layer {layer.name!r} yet "
                                           "(was it used in a training-mode forward?)")
                    g = [torch.zeros_like(p) if t is None else t for p, t in zip(layer.params, g)]
                    if eigh:
                        E = inverses[i]
                        mine[i] = _linalg.eigen_apply(E, layer.grad_matrix(g, E.a.dtype), lam, layer)
                    else:
                        Ai, Si = inverses[i]
                        mine[i] = _linalg.kfac_apply(Si, layer.grad_matrix(g, Ai.dtype), Ai)
                if split:
                    dtype = self._stats_dtype(self._params[0])
                    mine = self._dist.share_directions(
                        self._layers, lambda i: mine.get(i, torch.zeros(self._layers[i].shape, dtype=dtype,
                                                          device=self._layers[i].params[0].device)), dtype)
                for i, X in mine.items():
                    for p, part in zip(self._layers[i].params, self._layers[i].split(X)):
                        nat[by_param[id(p)]] = part
            for j, (name, module, names) in enumerate(self._diagonal):
                for pname in names:
                    k = by_param[id(module.get_parameter(pname))]
                    if grads[k] is None:
                        continue
                    if j not in D:
                        raise RuntimeError(f"Preconditioner.step: no statistics for module {name!r} yet "
                                           "(was it used in a training-mode forward?)")
                    nat[k] = _linalg.diagonal_solve(D[j][names.index(pname)], grads[k], lam, f"{name}.{pname}")
            for _, module, names in self._gradient_only:
                for pname in names:
                    k = by_param[id(module.get_parameter(pname))]
                    nat[k] = grads[k]
            return nat, (inverses if refresh else fresh)

        (nat, inverses), lam, retries = _solve_with_retries(solve, self.damping, self.max_retries, self.min_damping)
        return nat, lam, retries, inverses

    def _exact_direction(self, inputs, targets, grads):
        dtype = _fisher.stats_dtype(self._params[0])
        J, w = _exact.score_rows(self.model, self._names, inputs, targets, self._outputs, self.fisher,
                                 self._generator, dtype)
        g = torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1).to(dtype)
                       for p, t in zip(self._params, grads)])
        if self._dist is None:
            def solve(lam):
                return _linalg.solve_scores(J, g, lam, w)
        else:
            def solve(lam):
                return self._dist.solve_scores(J, g, lam, w, _linalg.solve_scores)
        flat, lam, retries = _solve_with_retries(solve, self.damping, self.max_retries, self.min_damping)
        nat, k = [], 0
        for p in self._params:
            nat.append(flat[k : k + p.numel()].reshape(p.shape).to(flat.device))
            k += p.numel()
        return nat, lam, retries, None

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue bit for bit (taken between steps).

        Distributed: a collective (call it on every rank, save rank 0's); it holds every rank's
        generator state and every inverse, and loads on every rank of a run of the same size.
        """
        state = {
            "config": self._config(),
            "n_steps": self.n_steps,
            "n_factor_updates": self.n_factor_updates,
            "damping": self.damping,
            "kl_radius": self.kl_radius,
            "A": {self._layers[i].name: t.clone() for i, t in self._A.items()},
            "S": {self._layers[i].name: t.clone() for i, t in self._S.items()},
            "D": {self._diagonal[j][0]: [t.clone() for t in ts] for j, ts in self._D.items()},
            "inverses": _saved_inverses(None if self._inverses is None else
                                        {self._layers[i].name: v for i, v in self._inverses.items()}),
            "inverse_damping": self._inverse_damping,
            "generator": self._generator.get_state(),
        }
        if self._refresh is not None:  # overlap: the inverses in flight are part of the state
            done = self._refresh.wait()
            state["refresh"] = {"failed": done.error is not None, "damping": done.damping,
                                "inverses": None if done.error is not None else
                                _saved_inverses({self._layers[i].name: v for i, v in done.value.items()})}
        if self._dist is not None:
            state["generators"] = self._dist.comm.all_gather_object(self._generator.get_state())
            if self.distribute == "gradients" and self._layers:
                inverses = self._dist.gather_inverses(self._layers, self._inverses,
                                                      self._stats_dtype(self._layers[0].params[0]))
                state["inverses"] = None if inverses is None else {
                    self._layers[i].name: (a.clone(), s.clone()) for i, (a, s) in inverses.items()}
        return state

    def _config(self) -> dict:
        return {"curvature": self.curvature, "loss": self.loss, "fisher": self.fisher, "inverse": self.inverse,
                "kfac_layers": list(self.kfac_layers), "fallback_modules": list(self.fallback_modules)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (of a preconditioner with the same settings and model layout)."""
        config = self._config()
        saved = dict(state.get("config") or {})
        saved.setdefault("inverse", "cholesky")  # saved before the option existed
        if saved != config:
            raise ValueError(f"{_FUNC}.load_state_dict: saved for {state.get('config')}, this one is {config}")
        layer_index = {layer.name: i for i, layer in enumerate(self._layers)}
        diag_index = {name: j for j, (name, *_) in enumerate(self._diagonal)}

        def device_of(i):
            return self._layers[i].params[0].device

        A = {layer_index[k]: v.clone().to(device_of(layer_index[k])) for k, v in state["A"].items()}
        S = {layer_index[k]: v.clone().to(device_of(layer_index[k])) for k, v in state["S"].items()}
        D = {diag_index[k]: [t.clone() for t in v] for k, v in state["D"].items()}
        def restored(saved):
            if saved is None:
                return None
            out = _saved_inverses({layer_index[k]: v for k, v in saved.items()}, device_of)
            return {i: _linalg.FactorEigen(*v) for i, v in out.items()} if self.inverse == "eigh" else out

        inverses = restored(state["inverses"])
        refresh = state.get("refresh")
        if inverses is not None and self._dist is not None and self.distribute == "gradients":
            inverses = {i: v for i, v in inverses.items() if self._dist.owns(i)}  # the owned layers only
        generator = state["generator"]
        if self._dist is not None and "generators" in state:
            if len(state["generators"]) != self._dist.world:
                raise ValueError(f"{_FUNC}.load_state_dict: saved by {len(state['generators'])} ranks, "
                                 f"loaded by {self._dist.world}")
            generator = state["generators"][self._dist.rank]
        self._generator.set_state(generator)
        self._A, self._S, self._D, self._inverses = A, S, D, inverses
        self._refresh = None
        if refresh is not None:
            self._refresh = _Refresh(value=restored(refresh["inverses"]), damping=refresh["damping"])
            if refresh["failed"]:  # the next step recomputes them, as the saved run would have
                self._refresh.error = RuntimeError("the background refresh failed before the state was saved")
        self._inverse_damping = state["inverse_damping"]
        self.n_steps = int(state["n_steps"])
        self.n_factor_updates = int(state["n_factor_updates"])
        self.damping = float(state["damping"])
        self.kl_radius = float(state["kl_radius"])
        self._pending = None
        self._capture.reset()
        self._arm()
