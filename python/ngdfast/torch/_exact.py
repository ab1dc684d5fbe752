"""Per-sample score rows of a whole model with ``torch.func``, for ``curvature="exact"``.

Row r of J is ``∇_θ log p(y_r | x_r)`` over all trainable parameters (flattened in
``model.parameters()`` order, each row-major) for each counted output *position* r (a sample's
one position for (N, C) outputs; every position of (N, *, C) outputs whose target is not
``ignore_index``), computed with ``vmap`` over the samples of ``jacrev`` of the per-position
log-likelihoods (sampled and empirical: one row per position) or of the output (exact: the
output Jacobian ``∂f_r/∂θ`` of every position, combined as in ``ngdfast.models.MLP.scores``):

* cross-entropy, exact: row (i, k) = ``(e_k − p_i)ᵀ ∂f_i/∂θ`` with weight ``p_ik``;
* mse, exact: row (i, k) = ``√D · ∂f_ik/∂θ``, unweighted (the Gaussian's output Fisher is I).

When every trainable parameter belongs to an ``nn.Linear`` or ``nn.Conv2d`` (groups = 1), the
rows are formed in closed form instead, from one forward and one backward to the layer outputs
(``Σ_t δ_it ā_itᵀ`` per sample and layer, written straight into J; for the exact kind the rows
are ``√(C p_ik)``-scaled and unweighted, the same F).

With these, ``ngdfast.fisher(J, weights)`` is F (mean over samples). The forward runs on one
sample at a time through ``functional_call`` with copies of the buffers (running statistics
are not updated), so the model must treat samples independently (no BatchNorm in training
mode: call ``model.eval()`` for its layers or use ``curvature="kfac"``).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from . import _fisher
from ._capture import _backpropagate, check_exact_size, quiet
from ._layers import Layer

#: Bytes the score rows of ``curvature="exact"`` may take before it refuses.
EXACT_ROWS_BYTES = 1 << 31


def score_rows(model, names, inputs, targets, outputs, kind, generator, dtype):
    """``(J, weights)``: J (R, P) in ``dtype``, one row per counted output position (per
    position and class for the exact kind), weights (R,) or None. ``outputs`` is the
    ``_outputs.Outputs`` reading the model's output."""
    loss = outputs.loss
    layers = _all_layers(model, names)
    if layers is not None:
        J = _layer_rows(model, layers, names, inputs, targets, outputs, kind, generator, dtype)
        if J is not None:
            return J, None
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def forward(p, x):
        return outputs.pick(functional_call(model, (p, buffers), (x,)))

    def position_rows(p, x):  # one sample's output as (T, C) rows
        return outputs.rows(forward(p, x.unsqueeze(0)))

    with quiet(), warnings.catch_warnings():
        # torch's note that an op (e.g. scaled_dot_product_attention) has no batching rule and runs
        # per sample under vmap: about this module's own vmap, nothing the caller can change
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented "
                                "the batching rule", category=UserWarning)
        with torch.no_grad():
            out = outputs.tensor(functional_call(model, (params, buffers), (inputs,)))
        rows = outputs.rows(out)
        n_samples, c = out.shape[0], rows.shape[1]
        t = rows.shape[0] // n_samples
        if kind == "empirical" or targets is not None:
            y, mask = outputs.targets(out, targets)
        else:
            y, mask = None, torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
        n_params = sum(params[k].numel() for k in names)
        width = c if kind == "exact" else 1
        nbytes = int(mask.sum()) * width * n_params * torch.empty((), dtype=dtype).element_size()
        if nbytes > EXACT_ROWS_BYTES:
            raise ValueError(
                f"ngdfast.torch: curvature='exact' would hold {int(mask.sum()) * width} score rows of {n_params} "
                f"parameters ({nbytes / 2**30:.1f} GiB, over the {EXACT_ROWS_BYTES / 2**30:.0f} GiB limit); use "
                + ("fisher='sampled' (one row per position) or " if kind == "exact" else "")
                + "curvature='kfac', or fewer positions per batch")
        if kind == "exact":
            jac = vmap(jacrev(position_rows), in_dims=(None, 0))(params, inputs)  # (N, T, C, *param)
            Jz = torch.cat([jac[k].reshape(n_samples * t, c, -1).to(dtype) for k in names], dim=2)[mask]
            if loss == "cross_entropy":
                p = torch.softmax(_fisher.working(rows[mask]), dim=1).to(dtype)
                scores = Jz - torch.einsum("nc,ncp->np", p, Jz).unsqueeze(1)
                return scores.reshape(-1, Jz.shape[2]), p.reshape(-1)
            return (Jz * math.sqrt(c)).reshape(-1, Jz.shape[2]), None
        if kind == "sampled":
            y = _fisher.sample_targets(loss, rows, generator)
        if loss == "cross_entropy":
            y = torch.where(mask, y, torch.zeros_like(y))
        y = y.reshape((n_samples, t) + y.shape[1:])

        def log_p(p, x, yi):
            return _fisher.log_likelihood(loss, position_rows(p, x), yi)  # (T,)

        g = vmap(jacrev(log_p), in_dims=(None, 0, 0))(params, inputs, y)  # (N, T, *param)
    J = torch.cat([g[k].reshape(n_samples * t, -1).to(dtype) for k in names], dim=1)
    return (J if bool(mask.all()) else J[mask]), None


def _all_layers(model, names):
    """The K-FAC layers holding every trainable parameter ``names``, or None if some is elsewhere."""
    layers, covered = [], set()
    for prefix, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if type(module) is not nn.Linear and not (type(module) is nn.Conv2d and module.groups == 1):
            return None
        layers.append((prefix, Layer(prefix, module)))
        covered.update(f"{prefix}.{n}" if prefix else n for n in own)
    return layers if covered == set(names) else None


def _layer_rows(model, layers, names, inputs, targets, outputs, kind, generator, dtype):
    """Score rows of a model whose parameters all sit in Linear/Conv2d layers, in closed form;
    None when the output has positions (one row per position is not a per-sample sum)."""
    loss = outputs.loss
    records = {}
    hooks = [
        layer.module.register_forward_hook(lambda m, args, out, i=i: records.__setitem__(i, (args[0].detach(), out)))
        for i, (_, layer) in enumerate(layers)
    ]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    try:
        with quiet(), torch.enable_grad():
            out = outputs.tensor(functional_call(model, buffers, (inputs,)))
    finally:
        for h in hooks:
            h.remove()
    if out.ndim != 2:
        return None
    n = out.shape[0]
    if kind == "empirical":
        targets, mask = outputs.targets(out, targets)
        if not bool(mask.all()):
            return None  # rows of the counted samples only: the general path
    if kind == "exact":
        check_exact_size(out.shape[1], n, _fisher.working(out).dtype, "ngdfast.torch")
    blocks = _fisher.output_rows(loss, kind, out, targets, generator)
    order = [i for i in range(len(layers)) if i in records]
    with quiet():
        per_block = _backpropagate(out, [records[i][1] for i in order], [b.to(out.dtype) for b in blocks])
    offsets, k = {}, 0
    params = dict(model.named_parameters())
    for name in names:
        offsets[name] = k
        k += params[name].numel()
    J = torch.zeros((len(blocks) * n, k), dtype=dtype, device=out.device)
    for b, deltas in enumerate(per_block):
        rows = slice(b * n, (b + 1) * n)
        for j, i in enumerate(order):
            prefix, layer = layers[i]
            delta = deltas[j]
            if delta is None:
                continue
            x = records[i][0]
            a = layer.weight_rows(x, dtype).reshape(n, -1, layer.in_dim - int(layer.has_bias))
            d = layer.output_rows(delta, dtype).reshape(n, -1, layer.out_dim)
            w0 = offsets[f"{prefix}.weight" if prefix else "weight"]
            block = J[rows, w0 : w0 + layer.params[0].numel()].view(n, layer.out_dim, -1)
            if a.shape[1] == 1:
                torch.mul(d[:, 0, :, None], a[:, 0, None, :], out=block)
            else:
                torch.bmm(d.transpose(1, 2), a, out=block) if block.is_contiguous() else block.copy_(
                    torch.bmm(d.transpose(1, 2), a))
            if layer.has_bias:
                b0 = offsets[f"{prefix}.bias" if prefix else "bias"]
                J[rows, b0 : b0 + layer.out_dim] = d.sum(1)
    if kind == "exact":
        J *= math.sqrt(out.shape[1])
    return J
