"""The damped natural gradient of one batch, as a function (no state, nothing modified)."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .. import _validation
from ..optimizer import _solve_with_retries
from . import _checks, _exact, _fisher, _layers, _linalg
from ._capture import Capture, recording_only
from ._outputs import Outputs

_FUNC = "ngdfast.torch.natural_gradient"


def natural_gradient(model: nn.Module, inputs, targets, *, loss="cross_entropy", curvature="kfac",
                     fisher="sampled", damping=1e-3, generator=None, output=None, class_dim=-1,
                     ignore_index=-100, kfac_approx="expand", max_factor_dim=4096) -> list[torch.Tensor]:
    r"""Damped natural gradient ``ñ = (F + λI)⁻¹ g`` of one batch.

    g is the gradient of the mean loss ``L = −(1/n) Σ_r log p(y_r | x_r)`` over the n counted
    output positions r of ``(inputs, targets)`` (cross-entropy, or the Gaussian ``½‖y − f‖²``
    for ``loss="mse"``; a (N, C) output has one position per sample, targets equal to
    ``ignore_index`` are not counted) and F the Fisher of that batch, mean over the same
    positions: ``F = (1/n) Σ_r E_y[∇log p(y | x_r) ∇log p(y | x_r)ᵀ]`` with the labels chosen
    by ``fisher`` (see :class:`ngdfast.torch.Preconditioner`).

    Parameters
    ----------
    model : nn.Module
        Returns ``(N, C)`` or ``(N, *, C)`` logits (cross-entropy) or means (mse); see
        :class:`ngdfast.torch.Preconditioner` for ``output`` and ``class_dim``.
    inputs : Tensor (N, ...)
    targets : Tensor
        Class indices shaped like the output's positions (``(N,)``, ``(N, *)``) or values shaped like
        the output for mse; they set g and which positions count (``ignore_index``).
    loss : {"cross_entropy", "mse"}
    curvature : {"kfac", "exact", "diagonal"}
        ``"exact"``: the exact Fisher of the kind asked, solved by
        ``ngdfast.natural_gradient`` (no approximation but the damping). ``"kfac"``:
        ``ñ_l = S̃⁻¹ ∇W̄_l Ã⁻¹`` with factored damping as ``ngdfast.kfac_precondition``, modules it
        cannot factor by their diagonal. ``"diagonal"``: ``g / (diag F + λ)``.
    fisher : {"sampled", "empirical", "exact"}
    damping : float
        λ >= 0.
    generator : torch.Generator, optional
        For the sampled labels (default: torch's global generator).
    output, class_dim, ignore_index, kfac_approx, max_factor_dim
        As in :class:`ngdfast.torch.Preconditioner`.

    Returns
    -------
    list of Tensor
        ñ for each trainable parameter, in ``model.parameters()`` order, shaped and typed as
        the parameters. The model, its parameters, buffers (running statistics) and ``.grad``
        are unchanged.

    Examples
    --------
    >>> import torch
    >>> import ngdfast.torch as ngt
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> nat = ngt.natural_gradient(model, x, y, curvature="exact", fisher="exact", damping=1e-3)
    >>> [tuple(n.shape) for n in nat]                       # one tensor per parameter
    [(3, 4), (3,)]
    >>> model.weight.grad is None                           # nothing modified
    True
    """
    _checks.module(model, _FUNC)
    loss = _checks.choice(loss, _fisher.LOSSES, "loss", _FUNC)
    curvature = _checks.choice(curvature, _fisher.CURVATURES, "curvature", _FUNC)
    fisher = _checks.choice(fisher, _fisher.FISHERS, "fisher", _FUNC)
    damping = _validation.nonnegative(damping, _FUNC, "damping")
    _checks.generator(generator, _FUNC)
    kfac_approx = _checks.choice(kfac_approx, _layers.KFAC_APPROX, "kfac_approx", _FUNC)
    if max_factor_dim is not None:
        max_factor_dim = _validation.integer(max_factor_dim, _FUNC, "max_factor_dim")
    spec = Outputs(loss, output, class_dim, ignore_index, _FUNC)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{_FUNC}: inputs must be a tensor, got {type(inputs).__name__}")
    names, params = _checks.trainable(model, _FUNC)
    buffers = {n: b.clone() for n, b in model.named_buffers()}  # running statistics stay as they are

    blocks = _layers.classify(model, curvature, "diagonal", _FUNC, max_factor_dim, kfac_approx)
    capture = Capture(model, blocks, spec, fisher, _fisher.stats_dtype, lambda: generator, force=True)
    capture.enabled = curvature != "exact"
    try:
        with torch.enable_grad(), recording_only(capture):
            outputs = spec.tensor(functional_call(model, buffers, (inputs,)))
            y, mask = spec.targets(outputs, targets)
            mean = _fisher.mean_loss(loss, spec.rows(outputs), y, None if bool(mask.all()) else mask)
            grads = torch.autograd.grad(mean, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        for name, g in zip(names, grads):
            _checks.finite(g, _FUNC, f"the gradient of {name!r}")
        if curvature == "exact":
            dtype = _fisher.stats_dtype(params[0])
            J, w = _exact.score_rows(model, names, inputs, targets, spec, fisher, generator, dtype)
            g = torch.cat([t.reshape(-1).to(dtype) for t in grads])
            flat, _, _ = _solve_with_retries(lambda lam: _linalg.solve_scores(J, g, lam, w), damping, 0, 1e-8)
            out, k = [], 0
            for p in params:
                out.append(flat[k : k + p.numel()].reshape(p.shape).to(p.dtype))
                k += p.numel()
            return out
        n, A, S, D = capture.statistics()
    finally:
        capture.remove()
    return _direction(params, grads, blocks.layers, blocks.diagonal, A, S, D, damping)


def _direction(params, grads, layers, diagonal, A, S, D, damping):
    by_param = {id(p): k for k, p in enumerate(params)}
    nat = [None] * len(params)
    for what, stats in (("A", A), ("S", S)):
        for i, t in stats.items():
            _checks.finite(t, _FUNC, f"factor {what} of layer {layers[i].name!r}")
    inverses = _linalg.damped_inverses(layers, A, S, damping)
    for i, layer in enumerate(layers):
        if i not in inverses:
            continue  # not used by this forward: its gradient is 0, and so is ñ
        Ai, Si = inverses[i]
        G = layer.grad_matrix([grads[by_param[id(p)]] for p in layer.params], Ai.dtype)
        for p, part in zip(layer.params, layer.split(_linalg.kfac_apply(Si, G, Ai))):
            nat[by_param[id(p)]] = part
    for j, (name, module, pnames) in enumerate(diagonal):
        for pname, d in zip(pnames, D.get(j, [])):
            k = by_param[id(module.get_parameter(pname))]
            nat[k] = _linalg.diagonal_solve(d, grads[k], damping, f"{name}.{pname}")
    return [v.to(p.dtype) if v is not None else torch.zeros_like(p) for p, v in zip(params, nat)]
