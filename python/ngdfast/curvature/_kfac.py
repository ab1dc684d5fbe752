"""The Kronecker-factored (K-FAC) Fisher: per layer, F_l ≈ S_l ⊗ A_l."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import _validation as _v
from .._errors import NotPositiveDefiniteError
from .._kernels import _all_finite as all_finite
from .._kernels import _fisher, kfac_precondition
from ._running import _RunningFisher


class KFACFisher(_RunningFisher):
    """Kronecker-factored Fisher: block diagonal over layers, ``F_l ≈ S_l ⊗ A_l``.

    For a layer with weights ``W`` of shape (out, in) (bias as the last input
    column), ``A = fisher(ā)`` over its inputs ā (N, in) and ``S = fisher(δ)``
    over the gradients of log p with respect to its outputs δ (N, out); with the
    row-major flattening of W, ``F_layer ≈ S ⊗ A`` and the damped solve is
    ``X = S̃⁻¹ G Ã⁻¹`` (``kfac_precondition``, with factored Tikhonov damping
    ``Ã = A + π√λ I``, ``S̃ = S + (√λ/π) I``).

    Parameters
    ----------
    layer_shapes : sequence of (out, in)
        Shapes of the per-layer weight matrices, e.g. ``model.layer_shapes``.
    decay : float in [0, 1)
        EMA factor of both factors. A layer whose factor of finite statistics overflows
        the dtype is rejected by ``update`` (``NumericOverflowError``, no layer changed).
    dtype : float32 or float64
    factored_damping : bool
        Use the π-balanced damping (else π = 1).

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast import KFACFisher
    >>> rng = np.random.default_rng(0)
    >>> K = KFACFisher([(2, 3)])                            # one layer, W of shape (out=2, in=3)
    >>> K.update([rng.standard_normal((50, 3))], [rng.standard_normal((50, 2))])
    >>> (A, S), = K.factors
    >>> bool(np.allclose(K.to_dense(), np.kron(S, A)))      # F = S kron A
    True
    >>> x = K.solve(np.ones(6), damping=0.0)
    >>> bool(np.allclose(K.mv(x), 1.0))
    True
    """

    def __init__(self, layer_shapes: Sequence[tuple[int, int]], *, decay: float = 0.95, dtype=np.float64,
                 factored_damping: bool = True):
        func = "KFACFisher"
        shapes = _v.layer_shapes_arg(layer_shapes, func)
        super().__init__(sum(o * i for o, i in shapes), decay, dtype)
        self.layer_shapes = shapes
        self.factored_damping = bool(factored_damping)
        self._offsets = np.cumsum([0] + [o * i for o, i in shapes]).tolist()
        self._A = [np.zeros((i, i), dtype=self.dtype) for _, i in shapes]
        self._S = [np.zeros((o, o), dtype=self.dtype) for o, _ in shapes]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._A) + sum(s.nbytes for s in self._S)

    @property
    def factors(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(A_l, S_l)`` per layer (copies)."""
        return [(A.copy(), S.copy()) for A, S in zip(self._A, self._S)]

    def split(self, flat) -> list[np.ndarray]:
        """Per-layer (out, in) views of a flat (P,) vector."""
        flat = np.asarray(flat)
        if flat.shape != (self.n_params,):
            raise ValueError(f"KFACFisher.split: expected a flat vector of shape ({self.n_params},), got {flat.shape}")
        return [
            flat[a:b].reshape(shape)
            for a, b, shape in zip(self._offsets[:-1], self._offsets[1:], self.layer_shapes)
        ]

    def flatten(self, layers: Sequence[np.ndarray]) -> np.ndarray:
        """Concatenate per-layer matrices into a flat (P,) vector."""
        return np.concatenate([np.ravel(X) for X in self._check_layers(layers, "layers")])

    def _check_layers(self, layers, name: str, func: str = "KFACFisher") -> list[np.ndarray]:
        if len(layers) != len(self.layer_shapes):
            raise ValueError(f"{func}: {name} must hold {len(self.layer_shapes)} layers, got {len(layers)}")
        out = []
        for l, (X, shape) in enumerate(zip(layers, self.layer_shapes)):
            X, dtype = _v.real_array(X, func, f"{name}[{l}]")
            if tuple(X.shape) != shape:
                raise ValueError(f"{func}: {name}[{l}] must have shape {shape}, got shape {tuple(X.shape)}")
            X = _v.astype(X, dtype)
            _v.require_finite(X, func, f"{name}[{l}]", all_finite)
            out.append(X)
        return out

    def update(self, activations, output_grads, weights=None) -> None:
        """Fold per-layer statistics into the factors.

        Parameters
        ----------
        activations : sequence of ndarray (N_l, in_l)
            Layer inputs with the ones column (``model.kfac_stats``).
        output_grads : sequence of ndarray (M_l, out_l)
            Gradients of log p with respect to the layer outputs; M_l may
            differ from N_l (A and S are separate averages).
        weights : ndarray (N,), optional
            Row weights for both factors; then every layer needs N_l = M_l = N.
        """
        func = self._func("update")
        n = len(self.layer_shapes)
        if len(activations) != n or len(output_grads) != n:
            raise ValueError(
                f"{func}: expected {n} layers of activations and output_grads, "
                f"got {len(activations)} and {len(output_grads)}"
            )
        # The new factors are formed beside the old ones and swapped in only when every
        # layer passed (finite, no overflow), so a bad layer leaves all layers as they were.
        decay = self._batch_decay()
        new_A, new_S = [], []
        for l, (out, inp) in enumerate(self.layer_shapes):
            a = _v.score_rows(activations[l], inp, self.dtype, func, f"activations[{l}]")
            d = _v.score_rows(output_grads[l], out, self.dtype, func, f"output_grads[{l}]")
            if weights is not None and d.shape[0] != a.shape[0]:
                raise ValueError(
                    f"{func}: weights need as many rows in output_grads[{l}] {d.shape} "
                    f"as in activations[{l}] {a.shape}"
                )
            for stats, old, new, name in ((a, self._A[l], new_A, f"activations[{l}]"),
                                          (d, self._S[l], new_S, f"output_grads[{l}]")):
                F = old.copy() if decay else np.empty_like(old)
                new.append(_fisher(stats, weights, F, decay, True, func, name, trusted_out=True))
        self._A, self._S = new_A, new_S
        self._updated()

    def solve(self, g, damping: float):
        """Precondition per layer: ``X_l = S̃_l⁻¹ G_l Ã_l⁻¹``.

        ``g`` is a flat (P,) vector (returns flat) or a list of per-layer
        (out, in) gradients (returns a list).
        """
        func = self._func("solve")
        damping = _v.nonnegative(damping, func, "damping")
        flat = not isinstance(g, (list, tuple))
        if flat:
            layers = self.split(_v.finite_vector(g, self.n_params, func, "g", matrix=False))
        else:
            layers = self._check_layers(g, "g", func)
        result = []
        for l, (G, A, S) in enumerate(zip(layers, self._A, self._S)):
            try:
                result.append(kfac_precondition(G, A, S, damping, factored_damping=self.factored_damping))
            except NotPositiveDefiniteError as e:
                raise NotPositiveDefiniteError(f"layer {l}: {e}", pivot=e.pivot, damping=damping) from e
        return np.concatenate([X.ravel() for X in result]) if flat else result

    def mv(self, v):
        """``F v`` with ``(S ⊗ A) vec(V) = vec(S V A)`` per layer; flat or per-layer like solve."""
        func = self._func("mv")
        flat = not isinstance(v, (list, tuple))
        if flat:
            layers = self.split(_v.finite_vector(v, self.n_params, func, "v", matrix=False))
        else:
            layers = self._check_layers(v, "v", func)
        result = [S @ V @ A for V, A, S in zip(layers, self._A, self._S)]
        return np.concatenate([X.ravel() for X in result]) if flat else result

    def to_dense(self) -> np.ndarray:
        """Block-diagonal ``diag(S_1 ⊗ A_1, ..., S_L ⊗ A_L)`` (P, P)."""
        F = np.zeros((self.n_params, self.n_params), dtype=self.dtype)
        for a, b, A, S in zip(self._offsets[:-1], self._offsets[1:], self._A, self._S):
            F[a:b, a:b] = np.kron(S, A)
        return F
