"""Small classifiers in NumPy with analytic per-sample gradients.

Everything the natural-gradient machinery needs from a model, without a deep
learning framework: the mean negative log-likelihood and its gradient, score
rows for the Fisher, and the per-layer statistics K-FAC factors are built from.

Conventions
-----------
A model with layer sizes ``d_0, d_1, ..., d_L`` (``d_0`` features, ``d_L = C``
classes) has one weight matrix per layer, ``W_l`` of shape ``(d_l, d_{l-1} + 1)``
whose last column is the bias. The parameters θ are one flat vector, the
row-major flattenings of ``W_1, ..., W_L`` one after the other; ``layers(theta)``
gives views of the same memory. With ``ā = [a, 1]`` the input of a layer,

    z_l = ā_{l-1} W_lᵀ,    a_l = φ(z_l) (hidden layers),    p = softmax(z_L),

and the loss is ``L(θ) = -(1/N) Σ_i log p_{i, y_i}``.

A score row is ``∇_θ log p(y | x, θ)``, the *negative* per-sample loss
gradient. For one sample and layer it is ``δ_l ⊗ ā_{l-1}`` (row-major), where
``δ_L = e_y - p`` and ``δ_{l-1} = (δ_l W_l[:, :-1]) ⊙ φ'(z_{l-1})``.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

ScoreKind = Literal["empirical", "sampled", "exact"]
_KINDS = ("empirical", "sampled", "exact")


class MLP:
    """Multi-layer perceptron classifier with a softmax output.

    Parameters
    ----------
    sizes : sequence of int
        ``[n_features, hidden_1, ..., hidden_k, n_classes]``; any depth, at
        least two entries (no hidden layer is softmax regression).
    activation : {"tanh", "relu"}
        Hidden-layer non-linearity φ.

    Attributes
    ----------
    layer_shapes : list of (int, int)
        ``(d_l, d_{l-1} + 1)`` per layer: the shapes of ``layers(theta)`` and
        what :class:`ngdfast.KFACFisher` takes.
    n_params : int
        Length of θ.

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast.models import MLP
    >>> rng = np.random.default_rng(0)
    >>> model = MLP([4, 8, 3])
    >>> model.layer_shapes, model.n_params                  # bias as the last column
    ([(8, 5), (3, 9)], 67)
    >>> theta = model.init(rng)
    >>> X, y = rng.standard_normal((10, 4)), rng.integers(0, 3, 10)
    >>> loss, grad = model.loss_and_grad(theta, X, y)
    >>> J, weights = model.scores(theta, X, y, kind="empirical")
    >>> J.shape, weights is None, bool(np.allclose(-J.mean(axis=0), grad))
    ((10, 67), True, True)
    """

    def __init__(self, sizes: Sequence[int], activation: str = "tanh"):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least [n_features, n_classes], got {sizes}")
        if any(s < 1 for s in sizes):
            raise ValueError(f"sizes must be positive, got {sizes}")
        if sizes[-1] < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got sizes {sizes}")
        if activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}")
        self.sizes = sizes
        self.activation = activation
        self.layer_shapes = [(sizes[l + 1], sizes[l] + 1) for l in range(len(sizes) - 1)]
        self._offsets = np.cumsum([0] + [o * i for o, i in self.layer_shapes]).tolist()
        self.n_params = self._offsets[-1]

    @property
    def n_features(self) -> int:
        return self.sizes[0]

    @property
    def n_classes(self) -> int:
        return self.sizes[-1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sizes={self.sizes}, activation={self.activation!r})"

    # ------------------------------------------------------------------ layout
    def layers(self, theta: np.ndarray) -> list[np.ndarray]:
        """Per-layer weight matrices ``W_l`` (bias last column) as views of ``theta``."""
        theta = self._check_theta(theta)
        return [
            theta[a:b].reshape(shape)
            for a, b, shape in zip(self._offsets[:-1], self._offsets[1:], self.layer_shapes)
        ]

    def flatten(self, layers: Sequence[np.ndarray]) -> np.ndarray:
        """Inverse of :meth:`layers`: concatenate per-layer matrices into a flat vector."""
        if len(layers) != len(self.layer_shapes):
            raise ValueError(f"expected {len(self.layer_shapes)} layers, got {len(layers)}")
        for l, (W, shape) in enumerate(zip(layers, self.layer_shapes)):
            if np.shape(W) != shape:
                raise ValueError(f"layer {l}: expected shape {shape}, got {np.shape(W)}")
        return np.concatenate([np.ravel(W) for W in layers])

    def init(self, rng=None) -> np.ndarray:
        """Random θ: ``W ~ N(0, g²/fan_in)`` (g = 1 for tanh, √2 for relu), biases 0.

        Parameters
        ----------
        rng : numpy.random.Generator, int or None
            Generator or seed.
        """
        rng = np.random.default_rng(rng)
        theta = np.zeros(self.n_params)
        gain = 1.0 if self.activation == "tanh" else np.sqrt(2.0)
        for W in self.layers(theta):
            fan_in = W.shape[1] - 1
            W[:, :-1] = rng.standard_normal((W.shape[0], fan_in)) * (gain / np.sqrt(fan_in))
        return theta

    # ----------------------------------------------------------------- checks
    def _check_theta(self, theta) -> np.ndarray:
        theta = np.asarray(theta)
        if theta.dtype.kind not in "fiub" or theta.dtype == np.longdouble:
            raise TypeError(f"theta: unsupported dtype {theta.dtype}")
        if theta.shape != (self.n_params,):
            raise ValueError(f"theta: expected shape ({self.n_params},), got {theta.shape}")
        return theta

    def _check_X(self, X, dtype) -> np.ndarray:
        X = np.asarray(X)
        if X.dtype.kind not in "fiub" or X.dtype == np.longdouble:
            raise TypeError(f"X: unsupported dtype {X.dtype}")
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X: expected shape (N, {self.n_features}), got {X.shape}")
        if X.shape[0] == 0:
            raise ValueError("X: empty batch")
        return X.astype(dtype, copy=False)

    def _check_y(self, y, n: int) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,):
            raise ValueError(f"y: expected shape ({n},), got {y.shape}")
        if y.dtype.kind not in "iu":
            if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                y = y.astype(np.intp)
            else:
                raise ValueError(f"y: expected integer class labels, got dtype {y.dtype}")
        if n and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"y: labels must lie in [0, {self.n_classes}), got [{y.min()}, {y.max()}]")
        return y

    def _dtype(self, theta: np.ndarray) -> np.dtype:
        return np.result_type(theta.dtype, np.float32)

    # ---------------------------------------------------------------- forward
    def _forward(self, theta, X):
        """Weights, each layer's input with a ones column, p (N, C), logits, log Σ exp."""
        theta = self._check_theta(theta)
        dtype = self._dtype(theta)
        X = self._check_X(X, dtype)
        Ws = self.layers(theta.astype(dtype, copy=False))
        n = X.shape[0]
        inputs = []
        a_bar = np.empty((n, X.shape[1] + 1), dtype=dtype)
        a_bar[:, :-1] = X
        a_bar[:, -1] = 1.0
        for W in Ws[:-1]:
            inputs.append(a_bar)
            # φ(z) is written straight into the next layer's input block.
            nxt = np.empty((n, W.shape[0] + 1), dtype=dtype)
            nxt[:, -1] = 1.0
            h = nxt[:, :-1]
            np.matmul(a_bar, W.T, out=h)
            if self.activation == "tanh":
                np.tanh(h, out=h)
            else:
                np.maximum(h, 0.0, out=h)
            a_bar = nxt
        inputs.append(a_bar)
        # Logits class-major, (C, N) in memory: the softmax reductions over a few
        # classes then run along contiguous rows, several times faster than along
        # short rows of an (N, C) array.
        z = (Ws[-1] @ a_bar.T).T
        p, lse = _softmax(z)
        return Ws, inputs, p, z, lse

    def _backward(self, Ws, inputs, delta_out, *, repeat: int = 1):
        """Backpropagate output gradients ``δ_L`` (rows) to every layer.

        ``repeat`` > 1 means each row block of ``repeat`` rows of ``delta_out``
        belongs to one sample (the "exact" kind), so the stored per-sample
        derivatives are repeated to match.
        """
        deltas = [delta_out]
        delta = delta_out
        for l in range(len(Ws) - 1, 0, -1):
            # φ' from the stored outputs h = φ(z): tanh' = 1 - h², relu' = [h > 0].
            h = inputs[l][:, :-1]
            dphi = 1.0 - h * h if self.activation == "tanh" else (h > 0).astype(h.dtype)
            if repeat > 1:
                dphi = np.repeat(dphi, repeat, axis=0)
            delta = (delta @ Ws[l][:, :-1]) * dphi
            deltas.append(delta)
        return deltas[::-1]

    def predict_proba(self, theta, X) -> np.ndarray:
        """Class probabilities ``p(k | x_i, θ)``, shape (N, C)."""
        return np.ascontiguousarray(self._forward(theta, X)[2])

    def loss(self, theta, X, y) -> float:
        """Mean negative log-likelihood ``-(1/N) Σ log p_{i, y_i}``."""
        *_, z, lse = self._forward(theta, X)
        y = self._check_y(y, z.shape[0])
        return float(np.mean(lse - z[np.arange(len(y)), y]))

    def loss_and_grad(self, theta, X, y) -> tuple[float, np.ndarray]:
        """Mean negative log-likelihood and its gradient.

        Returns
        -------
        loss : float
            ``L = -(1/N) Σ_i log p_{i, y_i}``.
        grad : ndarray (P,)
            ``∇L = (1/N) Σ_i (p_i - e_{y_i}) ∂z_i/∂θ``.
        """
        Ws, inputs, p, z, lse = self._forward(theta, X)
        n = z.shape[0]
        y = self._check_y(y, n)
        rows = np.arange(n)
        loss = float(np.mean(lse - z[rows, y]))
        delta = p.copy()
        delta[rows, y] -= 1.0
        delta /= n
        grad = np.empty(self.n_params, dtype=p.dtype)
        for l, d in enumerate(self._backward(Ws, inputs, delta)):
            a, b = self._offsets[l], self._offsets[l + 1]
            # One GEMM per layer sums the per-sample outer products δ_i ⊗ ā_i.
            np.matmul(d.T, inputs[l], out=grad[a:b].reshape(self.layer_shapes[l]))
        return loss, grad

    # ---------------------------------------------------------------- scores
    def _output_grads(self, p, y, kind, rng):
        """``δ_L`` rows (grad of log p w.r.t. logits), their weights, and rows per sample."""
        n, c = p.shape
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if kind == "exact":
            # Row (i, k) = e_k - p_i with weight p_ik: Σ_k p_ik (e_k - p_i)(e_k - p_i)ᵀ
            # is the exact Fisher of the categorical output for sample i.
            delta = np.eye(c, dtype=p.dtype)[None, :, :] - p[:, None, :]
            return delta.reshape(n * c, c), p.reshape(n * c).copy(), c
        if kind == "sampled":
            if rng is None:
                raise ValueError("kind='sampled' needs rng (a numpy Generator or a seed)")
            y = _sample_categorical(p, np.random.default_rng(rng))
        else:
            if y is None:
                raise ValueError("kind='empirical' needs the observed labels y")
            y = self._check_y(y, n)
        delta = -p
        delta[np.arange(n), y] += 1.0
        return delta, None, 1

    def scores(self, theta, X, y=None, kind: ScoreKind = "empirical", rng=None):
        """Score rows ``J`` with ``J[r] = ∇_θ log p(y_r | x_r, θ)`` and their weights.

        Parameters
        ----------
        theta : ndarray (P,)
        X : ndarray (N, n_features)
        y : ndarray (N,) of int, optional
            Observed labels; used by ``kind="empirical"`` only.
        kind : {"empirical", "sampled", "exact"}
            * ``"empirical"``: ``y_r`` the observed labels; N rows, weights None.
            * ``"sampled"``: ``y_r ~ p(· | x_r, θ)`` drawn with ``rng`` (Monte-Carlo
              estimate of the true Fisher); N rows, weights None, ``y`` ignored.
            * ``"exact"``: every class for every sample, row ``i·C + k`` is
              ``(e_k - p_i)ᵀ ∂z_i/∂θ`` with weight ``p_ik``; N·C rows. Then
              ``fisher(J, weights)`` is the exact Fisher
              ``(1/N) Σ_i Σ_k p_ik j_ik j_ikᵀ`` (the weights sum to N).
        rng : numpy.random.Generator or int, optional
            Needed by ``kind="sampled"``.

        Returns
        -------
        J : ndarray (rows, P)
        weights : ndarray (rows,) or None
        """
        Ws, inputs, p, *_ = self._forward(theta, X)
        delta, weights, rep = self._output_grads(p, y, kind, rng)
        deltas = self._backward(Ws, inputs, delta, repeat=rep)
        rows = delta.shape[0]
        J = np.empty((rows, self.n_params), dtype=p.dtype)
        for l, d in enumerate(deltas):
            a, b = self._offsets[l], self._offsets[l + 1]
            out, inp = self.layer_shapes[l]
            act = inputs[l]
            if rep > 1:
                # (N, C, out) x (N, in) -> (N, C, out, in) without repeating the inputs.
                block = np.reshape(J[:, a:b], (act.shape[0], rep, out, inp), copy=False)
                np.multiply(
                    d.reshape(act.shape[0], rep, out)[:, :, :, None], act[:, None, None, :], out=block
                )
            else:
                block = np.reshape(J[:, a:b], (rows, out, inp), copy=False)
                np.multiply(d[:, :, None], act[:, None, :], out=block)
        return J, weights

    def kfac_stats(self, theta, X, y=None, kind: ScoreKind = "empirical", rng=None):
        """Per-layer K-FAC statistics: inputs with a ones column and output gradients.

        For layer l, ``activations[l]`` is ``ā_{l-1}`` (N, d_{l-1} + 1) and
        ``output_grads[l]`` holds ``δ_l`` (rows, d_l), the gradients of
        ``log p(y | x)`` with respect to the layer's pre-activations, labels
        chosen by ``kind`` as in :meth:`scores`. Then
        ``A_l = fisher(activations[l])`` and ``S_l = fisher(output_grads[l])``
        give ``F_l ≈ S_l ⊗ A_l``.

        For ``kind="exact"`` the output gradients have N·C rows, row ``i·C + k``
        scaled by ``sqrt(C p_ik)``, so that the unweighted average
        ``fisher(output_grads[l])`` is ``(1/N) Σ_i Σ_k p_ik δ_ik δ_ikᵀ``; no weights
        need to travel with the statistics.

        Returns
        -------
        activations : list of ndarray
        output_grads : list of ndarray
        """
        Ws, inputs, p, *_ = self._forward(theta, X)
        delta, weights, rep = self._output_grads(p, y, kind, rng)
        if weights is not None:
            delta *= np.sqrt(rep * weights)[:, None]
        return inputs, self._backward(Ws, inputs, delta, repeat=rep)


class SoftmaxRegression(MLP):
    """Multinomial logistic regression: :class:`MLP` with no hidden layer.

    ``p(k | x) = softmax(W [x, 1])_k`` with ``W`` of shape
    ``(n_classes, n_features + 1)``; θ is ``W`` flattened row-major.

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast.models import SoftmaxRegression
    >>> model = SoftmaxRegression(n_features=2, n_classes=3)
    >>> theta = model.init()                                # zeros: uniform predictions
    >>> model.predict_proba(theta, np.ones((1, 2)))
    array([[0.33333333, 0.33333333, 0.33333333]])
    >>> J, w = model.scores(theta, np.ones((1, 2)), kind="exact")     # every class, weighted by p
    >>> J.shape, float(w.sum())
    ((3, 9), 1.0)
    """

    def __init__(self, n_features: int, n_classes: int):
        super().__init__([n_features, n_classes])

    def __repr__(self) -> str:
        return f"SoftmaxRegression(n_features={self.n_features}, n_classes={self.n_classes})"

    def init(self, rng=None) -> np.ndarray:
        """θ = 0 (uniform predictions): the loss is convex, no symmetry to break."""
        return np.zeros(self.n_params)


def _softmax(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``softmax(z)`` row-wise and ``log Σ_k exp(z_k)``, both overflow-free.

    Works on ``z.T`` (the class-major layout ``_forward`` produces), so ``p`` is
    returned as an (N, C) view of a (C, N) array.
    """
    zt = z.T
    m = zt.max(axis=0)
    e = np.exp(zt - m)
    total = e.sum(axis=0)
    e /= total
    return e.T, m + np.log(total)


def _sample_categorical(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw ``y_i ~ Categorical(p_i)`` per row by inverting the CDF."""
    u = rng.random((p.shape[0], 1))
    y = (np.cumsum(p, axis=1) < u).sum(axis=1)
    # Round-off can leave the last cumulative sum just below u.
    return np.minimum(y, p.shape[1] - 1)
