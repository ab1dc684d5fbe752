"""The Fisher blocks of a model: K-FAC layers, per-module diagonal blocks, loose parameters.

**K-FAC layers.** A layer is a matrix ``W̄`` of shape (out, in) acting on rows ``ā`` (bias as
an extra input column of ones, as in ``ngdfast.models``): ``z = ā W̄ᵀ``.

* ``nn.Linear``: ``W̄ = [W, b]``; every leading position of the input (N, *, in) is a row.
* ``nn.Conv1d`` / ``nn.Conv2d`` (groups = 1): ``W̄ = [W.reshape(out, C_in·k), b]``; the rows
  are the unfolded input patches (Grosse & Martens' KFC), one per sample and output location,
  with the layer's own stride, padding (any mode, also ``"same"``) and dilation. The patches
  are a strided view of the (padded) input, copied once, in the statistics dtype, into a
  (C_in·k + 1, R) buffer (last row: the bias's ones) whose inner loop runs along the input's
  rows; ``ngdfast.fisher`` reads its transpose as the rows (faster than ``F.unfold``, a
  transposed copy and a copy with a column of ones, which it replaced; the same rows bit for
  bit).
* ``nn.Embedding``: ``W̄ = Wᵀ`` (d, V); a row is the one-hot token, so A is diagonal (the token
  frequencies of the batch) and no V × V matrix ever exists.
* Hugging Face's ``Conv1D`` (GPT-2's projections: ``z = x W + b`` with W of shape (in, out)):
  a Linear layer with ``W̄ = [Wᵀ, b]``.

For a layer whose input in sample i has rows ``ā_it`` (t over T_i positions) and output
gradients ``δ_it``, with n the number of output positions counted (see ``_outputs``), the
factors are, with ``kfac_approx="expand"`` (every row a sample; KFC's spatially uncorrelated
approximation, Eschenhagen et al.'s *expand*)::

    A = mean over all rows (i, t) of ā āᵀ,      S = (1/n) Σ_i Σ_t δ_it δ_itᵀ,

and with ``"reduce"`` (positions summed before the outer products: ``â_i = mean_t ā_it``,
``δ̂_i = Σ_t δ_it``; cheaper when T is large, exact when ā does not vary over t)::

    A = mean_i â_i â_iᵀ,      S = (1/n) Σ_i δ̂_i δ̂_iᵀ,

so that ``F_layer ≈ S ⊗ A`` for the row-major flattening of ``W̄``. A side of more than
``max_factor_dim`` features (an LM head's V outputs, 50 000 flattened inputs) keeps only the
diagonal of its factor: ``diag A`` or ``diag S`` (Embedding's A always is).

With ``stats_samples`` (``ngdfast.torch._capture``) a layer's rows are those of the chosen
samples when its input has a leading sample dimension (:meth:`Layer.batched`: a Linear's
``(N, *, in)``, a Conv's ``(N, C, *)``, an Embedding's ids) and its output gradients are zero
at the other samples; a shared input (positional ids ``arange(T)``, without a batch
dimension) keeps all its rows, as on the sub-batch.

**Diagonal blocks** (``diag F`` of the module's own parameters, running average like the
factors): ``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.BatchNorm1d/2d/3d`` and ``nn.GroupNorm`` in
closed form from the same input and output gradient (``_norms``); with
``curvature="diagonal"`` also the K-FAC layer kinds (per-row gradients ``δ ā``); other leaf
modules (the ``fallback="diagonal"`` modules) by per-sample vector-Jacobian products
(``_diagonal``).

**Loose parameters**: parameters of a module that is not a leaf (an ``nn.Parameter`` of the
model itself, a learnable scale in a block), the parameters of ``nn.MultiheadAttention``
(whose projections run inside ``F.multi_head_attention_forward``, out of reach of hooks), and
parameters shared by several modules (tied weights). Their diagonal block is estimated from
the same extra backward: with ``ĝ = ∂/∂θ Σ_r b_rᵀ z_r`` over the Fisher kind's output rows b,
``diag F ≈ ĝ² / n`` — unbiased for ``fisher="sampled"`` (the rows' labels are independent and
their scores have mean zero); for ``"empirical"`` and ``"exact"`` it keeps the cross-position
terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _norms

KFAC_APPROX = ("expand", "reduce")
_CONV = (nn.Conv1d, nn.Conv2d)


def _hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face ``transformers``' ``Conv1D`` (a Linear with the weight stored (in, out))."""
    w = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int)
            and isinstance(w, torch.Tensor) and w.ndim == 2 and w.shape[1] == module.nf)


def supported(module: nn.Module) -> bool:
    """Whether K-FAC factors ``module``: Linear (and Hugging Face's Conv1D), Conv1d/Conv2d with
    groups = 1, Embedding (not ``sparse``), with every parameter trainable."""
    kind = type(module)
    if (kind is nn.Linear or _hf_conv1d(module) or (kind in _CONV and module.groups == 1)
            or (kind is nn.Embedding and not module.sparse)):
        return all(p.requires_grad for p in module.parameters(recurse=False))
    return False


class Layer:
    """One K-FAC layer: its module, name, matrix shape (out, in) and factor structure."""

    def __init__(self, name: str, module: nn.Module, max_factor_dim=None, approx: str = "expand"):
        self.name = name
        self.module = module
        self.embedding = isinstance(module, nn.Embedding)
        self.conv = isinstance(module, _CONV)
        self.transposed = self.embedding or _hf_conv1d(module)  # weight stored (in, out)
        w = module.weight
        self.has_bias = getattr(module, "bias", None) is not None
        if self.transposed:
            self.out_dim, self.in_dim = w.shape[1], w.shape[0] + int(self.has_bias)
        else:
            self.out_dim = w.shape[0]
            self.in_dim = w[0].numel() + int(self.has_bias)
        self.params = [w] + ([module.bias] if self.has_bias else [])
        self.approx = "expand" if self.embedding else approx
        big = (lambda d: max_factor_dim is not None and d > max_factor_dim)
        self.a_diag = self.embedding or big(self.in_dim)
        self.s_diag = big(self.out_dim)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_dim, self.in_dim)

    def factor_numel(self, which: str) -> int:
        d, diag = (self.in_dim, self.a_diag) if which == "A" else (self.out_dim, self.s_diag)
        return d if diag else d * (d + 1) // 2

    # ------------------------------------------------------------- rows
    def batched(self, x: torch.Tensor) -> bool:
        """Whether the layer input ``x`` has a leading sample dimension (Linear: (N, *, in);
        Conv: (N, C, *) rather than an unbatched (C, *); Embedding: any ids of at least 1-D)."""
        if self.conv:
            return x.ndim == (3 if isinstance(self.module, nn.Conv1d) else 4)
        return x.ndim >= (1 if self.embedding else 2)

    def input_rows(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows ``ā`` (R, in) of the layer input ``x``, in ``dtype``, with the ones column."""
        rows = self.weight_rows(x, dtype)
        if self.has_bias:
            rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
        return rows

    def weight_rows(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows ``a`` (R, in − bias) of the layer input ``x``, in ``dtype``, without the ones
        column; C-contiguous (a view of ``x`` where it can be)."""
        x = x.detach()
        if self.embedding:
            return F.one_hot(x.reshape(-1), self.in_dim).to(dtype)
        if not self.conv:
            return x.reshape(-1, x.shape[-1]).to(dtype)
        patches = self._patches(x)  # (C, kh, kw, N, Ho, Wo)
        rows = torch.empty(patches.shape[3:] + patches.shape[:3], dtype=dtype, device=x.device)
        rows.copy_(patches.permute(3, 4, 5, 0, 1, 2))
        return rows.view(-1, self.in_dim - int(self.has_bias))

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """A convolution's unfolded input patches as a strided *view* (C, kh, kw, N, Ho, Wo) of
        its (padded) input: KFC's rows without ``F.unfold``'s copy (a Conv1d is a Conv2d of
        height 1; an unbatched input has N = 1)."""
        m = self.module
        one_d = isinstance(m, nn.Conv1d)
        if not self.batched(x):
            x = x.unsqueeze(0)
        if one_d:
            x = x.unsqueeze(-2)
        kernel, dilation, stride = (_as2d(v, one_d) for v in (m.kernel_size, m.dilation, m.stride))
        if isinstance(m.padding, str):
            pads = _same_padding(kernel, dilation) if m.padding == "same" else (0, 0, 0, 0)
        else:
            pads = tuple(p for p in reversed(_as2d(m.padding, one_d, 0)) for _ in range(2))
        if any(pads):
            x = F.pad(x, pads, mode=_pad_mode(m))
        n, c, h, w = x.shape
        ho = (h - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
        wo = (w - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
        sn, sc, sh, sw = x.stride()
        return x.as_strided((c, kernel[0], kernel[1], n, ho, wo),
                            (sc, sh * dilation[0], sw * dilation[1], sn, sh * stride[0], sw * stride[1]),
                            x.storage_offset())

    def output_rows(self, delta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows (R, out) of an output gradient ``delta`` shaped like the layer output."""
        if self.conv:
            delta = delta.movedim(1, -1)
        return delta.reshape(-1, self.out_dim).to(dtype)

    def groups(self, x: torch.Tensor) -> int:
        """Samples of the layer input (its first dimension; 1 for an unbatched input)."""
        if self.conv:
            return x.shape[0] if self.batched(x) else 1
        return x.shape[0] if x.ndim >= 2 else 1

    def a_rows(self, x: torch.Tensor, dtype) -> torch.Tensor:
        """The rows whose second moment is A, with the ones column: every row (expand) or the
        per-sample means (reduce). A convolution's are column-major: its patches are copied once,
        straight from a strided view of its input into an (in, R) buffer whose last row holds
        the ones and whose inner loop runs along the input's rows."""
        if self.embedding:
            raise AssertionError("Embedding factors A from token counts")
        if not self.conv:
            rows = self.input_rows(x, dtype)
            if self.approx == "reduce":
                rows = rows.reshape(self.groups(x), -1, rows.shape[1]).mean(1)
            return rows
        patches = self._patches(x.detach())  # (C, kh, kw, N, Ho, Wo)
        d = self.in_dim - int(self.has_bias)
        cols = torch.empty((self.in_dim,) + patches.shape[3:], dtype=dtype, device=x.device)
        cols[:d].view(patches.shape).copy_(patches)
        if self.has_bias:
            cols[d].fill_(1.0)
        if self.approx == "reduce":
            return cols.view(self.in_dim, self.groups(x), -1).mean(2).T
        return cols.view(self.in_dim, -1).T

    def token_counts(self, x: torch.Tensor, dtype) -> torch.Tensor:
        """Embedding: how often each of the V rows was looked up (the diagonal of Σ ā āᵀ)."""
        return torch.bincount(x.detach().reshape(-1), minlength=self.in_dim).to(dtype)

    def s_rows(self, delta: torch.Tensor, x: torch.Tensor, dtype) -> torch.Tensor:
        """The rows whose (scaled) second moment is S: every row, or per-sample sums (reduce);
        a convolution's as the column-major (out, R) layout (its inner loop along locations)."""
        if self.conv:
            if not self.batched(x):
                delta = delta.unsqueeze(0)
            cols = delta.transpose(0, 1).reshape(self.out_dim, delta.shape[0], -1).to(dtype)
            if self.approx == "reduce":
                return cols.sum(2).T
            return cols.reshape(self.out_dim, -1).T
        rows = delta.reshape(-1, self.out_dim).to(dtype)
        if self.approx == "reduce":
            rows = rows.reshape(self.groups(x), -1, rows.shape[1]).sum(1)
        return rows

    # ----------------------------------------------------------- gradients
    def grad_matrix(self, grads: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """``[∇W, ∇b]`` as one (out, in) matrix in ``dtype``."""
        if self.transposed:
            g = grads[0].to(dtype).T
        else:
            g = grads[0].reshape(self.out_dim, -1).to(dtype)
        if self.has_bias:
            g = torch.cat([g, grads[1].reshape(self.out_dim, 1).to(dtype)], dim=1)
        return g

    def split(self, X: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of :meth:`grad_matrix`: tensors shaped like the weight (and bias)."""
        w = self.params[0]
        weight = X[:, : self.in_dim - int(self.has_bias)]
        parts = [weight.T if self.transposed else weight.reshape(w.shape)]
        if self.has_bias:
            parts.append(X[:, -1].reshape(self.params[1].shape))
        return parts

    def square_rows(self, x: torch.Tensor, delta: torch.Tensor, dtype) -> list[torch.Tensor]:
        """``Σ_r (δ_r ā_rᵀ)²`` per parameter: the diagonal Fisher's sums with each row a sample."""
        d = self.output_rows(delta, dtype)
        if self.embedding:
            idx = x.detach().reshape(-1)
            total = torch.zeros((self.in_dim, self.out_dim), dtype=dtype, device=d.device)
            total.index_add_(0, idx, d.square())
            return [total]
        a = self.input_rows(x, dtype)
        total = d.square().T @ a.square()
        return self.split(total)


def _as2d(v, one_d: bool, height=1):
    """A Conv setting as (height, width) for F.unfold: a Conv1d's height is ``height`` (1 for
    kernel, stride and dilation; 0 for padding)."""
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    return (height,) + v if one_d else v


def _pad_mode(m) -> str:
    return "constant" if m.padding_mode == "zeros" else m.padding_mode


def _same_padding(kernel, dilation) -> tuple[int, ...]:
    """F.pad widths (left, right, top, bottom) of ``padding="same"``, as torch splits them."""
    pads = []
    for d, k in zip(reversed(dilation), reversed(kernel)):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class Blocks:
    """How a model's trainable parameters are preconditioned.

    Attributes
    ----------
    layers : list of Layer
        K-FAC layers.
    diagonal : list of (name, module, parameter names)
        Modules and parameter groups with a diagonal block; ``kinds[j]`` says how it is
        computed: ``"norm"`` (closed form), ``"layer"`` (a K-FAC kind, per-row gradients),
        ``"vmap"`` (per-sample products, the fallback), ``"loose"`` (from the batch gradient).
    gradient_only : list of (name, module, parameter names)
        ``fallback="gradient"``: left as the gradient.
    fallback_modules : list of str
        Modules handled by the fallback (listed for the user).
    """

    def __init__(self):
        self.layers: list[Layer] = []
        self.diagonal: list[tuple] = []
        self.kinds: list[str] = []
        self.gradient_only: list[tuple] = []
        self.fallback_modules: list[str] = []

    def add_diagonal(self, label, module, names, kind):
        self.diagonal.append((label, module, names))
        self.kinds.append(kind)


def classify(model: nn.Module, curvature: str, fallback, func: str, max_factor_dim=None,
             kfac_approx: str = "expand") -> Blocks:
    """The :class:`Blocks` of ``model`` for ``curvature`` ("kfac" or "diagonal").

    A parameter owned by several modules (tied weights) is a loose parameter of the first;
    the modules sharing it keep their other parameters, as loose parameters too.
    """
    blocks = Blocks()
    if curvature == "exact":
        return blocks  # torch.func differentiates every parameter
    # owners per parameter (a module reused at two places counts once: named_modules dedups)
    unique: dict[int, int] = {}
    for _, module in model.named_modules():
        for _, p in module.named_parameters(recurse=False):
            unique[id(p)] = unique.get(id(p), 0) + 1
    seen: set[int] = set()
    mha_params: set[int] = set()
    unsupported = []
    for name, module in model.named_modules():
        label = name or "<model>"
        if isinstance(module, nn.Embedding) and module.sparse and module.weight.requires_grad:
            raise ValueError(f"{func}: {label} is an nn.Embedding with sparse=True, whose sparse gradients "
                             "ngdfast.torch cannot precondition; use sparse=False or freeze it")
        if isinstance(module, nn.MultiheadAttention):
            own = [(n, p) for n, p in module.named_parameters() if p.requires_grad and id(p) not in seen]
            mha_params.update(id(p) for _, p in module.named_parameters())
            if own:
                seen.update(id(p) for _, p in own)
                blocks.add_diagonal(label, module, [n for n, _ in own], "loose")
                blocks.fallback_modules.append(label)
            continue
        own = [(n, p) for n, p in module.named_parameters(recurse=False)
               if p.requires_grad and id(p) not in seen and id(p) not in mha_params]
        if not own:
            continue
        seen.update(id(p) for _, p in own)
        names = [n for n, _ in own]
        shared = [n for n, p in own if unique.get(id(p), 0) > 1]
        leaf = next(module.children(), None) is None
        if shared or not leaf:
            blocks.add_diagonal(label, module, names, "loose")
        elif supported(module) and len(names) == len(list(module.parameters(recurse=False))):
            if curvature == "kfac":
                blocks.layers.append(Layer(label, module, max_factor_dim, kfac_approx))
            else:
                blocks.add_diagonal(label, module, names, "layer")
        elif _norms.supported(module):
            blocks.add_diagonal(label, module, names, "norm")
        elif curvature == "diagonal" or fallback == "diagonal":
            blocks.add_diagonal(label, module, names, "vmap")
            blocks.fallback_modules.append(label)
        elif fallback == "gradient":
            blocks.gradient_only.append((label, module, names))
            blocks.fallback_modules.append(label)
        else:
            unsupported.append(f"{label} ({type(module).__name__}: {', '.join(names)})")
    if unsupported:
        raise ValueError(
            f"{func}: K-FAC cannot factor these modules with trainable parameters: {'; '.join(unsupported)}. "
            "Choose fallback='diagonal' or 'gradient', or freeze them (requires_grad=False)")
    return blocks

