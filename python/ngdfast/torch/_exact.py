"""Per-sample score rows of a whole model with ``torch.func``, for ``curvature="exact"``.

Row r of J is ``∇_θ log p(y_r | x_r)`` over all trainable parameters (flattened in
``model.parameters()`` order, each row-major), computed with ``vmap`` of ``grad`` (sampled and
empirical: one row per sample) or of ``jacrev`` of the output (exact: the output Jacobian
``∂f_i/∂θ`` of every sample, combined as in ``ngdfast.models.MLP.scores``):

* cross-entropy, exact: row (i, k) = ``(e_k − p_i)ᵀ ∂f_i/∂θ`` with weight ``p_ik``;
* mse, exact: row (i, k) = ``√D · ∂f_ik/∂θ``, unweighted (the Gaussian's output Fisher is I).

With these, ``ngdfast.fisher(J, weights)`` is F (mean over samples). The forward runs on one
sample at a time through ``functional_call`` with copies of the buffers (running statistics
are not updated), so the model must treat samples independently (no BatchNorm in training
mode: call ``model.eval()`` for its layers or use ``curvature="kfac"``).
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call, grad, jacrev, vmap

from . import _fisher
from ._capture import quiet


def score_rows(model, names, inputs, targets, loss, kind, generator, dtype):
    """``(J, weights)``: J (R, P) in ``dtype``, weights (R,) or None."""
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def forward(p, x):
        return functional_call(model, (p, buffers), (x,))

    with quiet():
        with torch.no_grad():
            outputs = _fisher.check_outputs(loss, forward(params, inputs), "ngdfast.torch")
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
            targets = _fisher.check_targets(loss, outputs, targets, "ngdfast.torch")

        def log_p(p, x, y):
            return _fisher.log_likelihood(loss, forward(p, x.unsqueeze(0)), y.unsqueeze(0)).squeeze(0)

        g = vmap(grad(log_p), in_dims=(None, 0, 0))(params, inputs, targets)
    return torch.cat([g[k].reshape(n, -1).to(dtype) for k in names], dim=1), None
