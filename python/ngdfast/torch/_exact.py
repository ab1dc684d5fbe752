"""Per-sample score rows of a whole model with ``torch.func``, for ``curvature="exact"``.

Row r of J is ``∇_θ log p(y_r | x_r)`` over all trainable parameters (flattened in
``model.parameters()`` order, each row-major), computed with ``vmap`` of ``grad`` (sampled and
empirical: one row per sample) or of ``jacrev`` of the output (exact: the output Jacobian
``∂f_i/∂θ`` of every sample, combined as in ``ngdfast.models.MLP.scores``):

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

import torch
from torch.func import functional_call, grad, jacrev, vmap

from . import _checks, _fisher
from ._capture import _backpropagate, quiet
from ._layers import Layer, supported


def score_rows(model, names, inputs, targets, loss, kind, generator, dtype):
    """``(J, weights)``: J (R, P) in ``dtype``, weights (R,) or None."""
    layers = _all_layers(model, names)
    if layers is not None:
        return _layer_rows(model, layers, names, inputs, targets, loss, kind, generator, dtype), None
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def forward(p, x):
        return functional_call(model, (p, buffers), (x,))

    with quiet():
        with torch.no_grad():
            outputs = _checks.check_outputs(loss, forward(params, inputs), "ngdfast.torch")
        n = outputs.shape[0]
        if kind == "exact":
            jac = vmap(jacrev(lambda p, x: forward(p, x.unsqueeze(0)).squeeze(0)), in_dims=(None, 0))(params, inputs)
            Jz = torch.cat([jac[k].reshape(n, outputs.shape[1], -1).to(dtype) for k in names], dim=2)
            c = outputs.shape[1]
            if loss == "cross_entropy":
                p = torch.softmax(_fisher.working(outputs), dim=1).to(dtype)
                rows = Jz - torch.einsum("nc,ncp->np", p, Jz).unsqueeze(1)
                return rows.reshape(n * c, -1), p.reshape(n * c)
            return (Jz * math.sqrt(c)).reshape(n * c, -1), None
        if kind == "sampled":
            targets = _fisher.sample_targets(loss, outputs, generator)
        else:
            targets = _checks.check_targets(loss, outputs, targets, "ngdfast.torch")

        def log_p(p, x, y):
            return _fisher.log_likelihood(loss, forward(p, x.unsqueeze(0)), y.unsqueeze(0)).squeeze(0)

        g = vmap(grad(log_p), in_dims=(None, 0, 0))(params, inputs, targets)
    return torch.cat([g[k].reshape(n, -1).to(dtype) for k in names], dim=1), None


def _all_layers(model, names):
    """The K-FAC layers holding every trainable parameter ``names``, or None if some is elsewhere."""
    layers, covered = [], set()
    for prefix, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not supported(module):
            return None
        layers.append((prefix, Layer(prefix, module)))
        covered.update(f"{prefix}.{n}" if prefix else n for n in own)
    return layers if covered == set(names) else None


def _layer_rows(model, layers, names, inputs, targets, loss, kind, generator, dtype):
    """Score rows of a model whose parameters all sit in Linear/Conv2d layers, in closed form."""
    records = {}
    hooks = [
        layer.module.register_forward_hook(lambda m, args, out, i=i: records.__setitem__(i, (args[0].detach(), out)))
        for i, (_, layer) in enumerate(layers)
    ]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    try:
        with quiet(), torch.enable_grad():
            outputs = _checks.check_outputs(loss, functional_call(model, buffers, (inputs,)), "ngdfast.torch")
    finally:
        for h in hooks:
            h.remove()
    n = outputs.shape[0]
    if kind == "empirical":
        targets = _checks.check_targets(loss, outputs, targets, "ngdfast.torch")
    blocks = _fisher.output_rows(loss, kind, outputs, targets, generator)
    order = [i for i in range(len(layers)) if i in records]
    with quiet():
        per_block = _backpropagate(outputs, [records[i][1] for i in order], [b.to(outputs.dtype) for b in blocks])
    offsets, k = {}, 0
    params = dict(model.named_parameters())
    for name in names:
        offsets[name] = k
        k += params[name].numel()
    J = torch.zeros((len(blocks) * n, k), dtype=dtype, device=outputs.device)
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
        J *= math.sqrt(outputs.shape[1])
    return J
