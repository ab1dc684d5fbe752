"""Natural gradient descent with a KL trust region.

One step, for parameters θ, loss gradient g and a Fisher estimate F:

    ñ = (F + λI)⁻¹ g                     damped natural gradient
    q = gᵀñ                               (≈ ñᵀFñ for small λ)
    β = min(sqrt(2ε / q), max_step)       so that ½ β² q = ε, the predicted KL
    θ ← θ − β ñ

``KL(p_θ ‖ p_{θ−s}) ≈ ½ sᵀFs``, so every step moves the model's output
distribution by about ε = ``kl_radius`` (less when ``max_step`` caps β; with
``max_step=1`` the step never exceeds the full Gauss-Newton step, which is what
lets NGD converge quickly near a minimum).

:class:`NaturalGradient` keeps the curvature estimate and the damping between
steps; :func:`natural_gradient_step` is the same step without state, for trainers
that keep their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _validation as _v
from ._errors import NotPositiveDefiniteError, NumericOverflowError
from ._kernels import kl_step_size, natural_gradient

__all__ = ["NaturalGradient", "StepInfo", "natural_gradient_step"]


@dataclass
class StepInfo:
    """What one natural-gradient step did.

    Attributes
    ----------
    beta : float
        Step size β; the update is ``θ ← θ − β ñ``.
    quadratic : float
        ``q = gᵀñ``.
    predicted_kl : float
        ``½ β² q``: the KL divergence the quadratic model predicts (ε unless β
        was capped by ``max_step``).
    damping : float
        The λ the successful solve used (larger than asked after retries).
    retries : int
        How many times λ was multiplied by 10 because ``F + λI`` was not
        positive definite.
    clipped : bool
        Whether ``max_step`` capped β.
    step_norm : float
        ``‖β ñ‖``.
    predicted_change : float
        Change of the loss predicted by the damped quadratic model
        ``m(s) = gᵀs + ½ sᵀ(F + λI)s`` at ``s = −βñ``, which is
        ``−βq + ½β²q`` because ``(F + λI)ñ = g``. Negative for a descent step.
    refactored : bool
        Whether the solve factored F + λI; False when the curvature reused an
        earlier factor as the preconditioner of conjugate gradients
        (``DenseFisher(max_reuse_iters=...)``).
    solve_iterations : int
        The preconditioned CG iterations of that solve (0 without CG).

    Examples
    --------
    F = 2 I and g = (1, 2): ñ = g / 2, q = gᵀñ = 2.5, and a KL radius of 1.25 gives β = 1:

    >>> import numpy as np
    >>> from ngdfast import natural_gradient_step
    >>> J = np.array([[2.0, 0.0], [0.0, 2.0]])
    >>> info = natural_gradient_step(np.zeros(2), np.array([1.0, 2.0]), J, damping=0.0, kl_radius=1.25)[1]
    >>> [round(v, 12) for v in (info.beta, info.quadratic, info.predicted_kl, info.predicted_change)]
    [1.0, 2.5, 1.25, -1.25]
    >>> info.retries, info.clipped, info.refactored                  # 1/2 beta^2 q = kl_radius, no cap
    (0, False, True)
    """

    beta: float
    quadratic: float
    predicted_kl: float
    damping: float
    retries: int = 0
    clipped: bool = False
    step_norm: float = 0.0
    predicted_change: float = 0.0
    refactored: bool = True
    solve_iterations: int = 0


def _flat(x, n: int | None, func: str, name: str) -> np.ndarray:
    """A finite flat vector (P,) (P = n when given): the shared rule of ``_validation``."""
    return _v.finite_vector(x, n, func, name, matrix=False)


def _size_step(g, nat, kl_radius, max_step, damping, retries) -> tuple[np.ndarray, StepInfo]:
    """β from the KL radius and the step ``s = β ñ`` (to subtract)."""
    beta = kl_step_size(g, nat, kl_radius, max_step=max_step)  # raises for a non-finite q = g^T nat
    q = float(np.dot(g.astype(np.float64), nat.astype(np.float64)))
    # Judge the cap on our own β (the kernel's may differ in the last bits).
    uncapped = math.sqrt(2.0 * kl_radius / q) if q > 0 else 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # a non-finite step is rejected by the caller
        delta = beta * nat
        norm = float(np.linalg.norm(delta))
    info = StepInfo(
        beta=float(beta),
        quadratic=q,
        predicted_kl=0.5 * beta * beta * q,
        damping=damping,
        retries=retries,
        clipped=bool(max_step is not None and uncapped > max_step),
        step_norm=norm,
        predicted_change=-beta * q + 0.5 * beta * beta * q,
    )
    return delta, info


def _stepped(params: np.ndarray, delta: np.ndarray, dtype, func: str) -> np.ndarray:
    """``params − delta`` in ``dtype`` as a new array, unless it overflows."""
    with np.errstate(over="ignore", invalid="ignore"):
        new = params.astype(dtype) - delta.astype(dtype, copy=False)
    if not np.all(np.isfinite(new)):
        raise NumericOverflowError(
            f"{func}: the step would make params non-finite (overflow of {np.dtype(dtype)}); "
            "lower kl_radius or max_step"
        )
    return new


def _solve_with_retries(solve, damping: float, max_retries: int, min_damping: float):
    """``solve(damping)``, raising the damping x10 (from ``min_damping`` when it is 0) after each
    ``NotPositiveDefiniteError``, at most ``max_retries`` times: ``(ñ, damping used, retries)``."""
    lam = damping
    max_retries = max(int(max_retries), 0)
    for retries in range(max_retries + 1):
        try:
            return solve(lam), lam, retries
        except NotPositiveDefiniteError as e:
            if retries == max_retries:
                raise NotPositiveDefiniteError(
                    f"{e} -- still not positive definite after {max_retries} retries "
                    f"(damping raised from {damping} to {lam}); increase the damping",
                    pivot=getattr(e, "pivot", 0),
                    damping=lam,
                ) from e
            lam = lam * 10.0 if lam > 0 else min_damping
    raise AssertionError("unreachable")  # the loop returns or raises


class NaturalGradient:
    """Natural gradient descent with a running Fisher estimate and a KL trust region.

    Parameters
    ----------
    curvature : DenseFisher, LowRankFisher, DiagonalFisher, KFACFisher or alike
        The Fisher estimate; ``step`` updates it from the statistics it is given.
    kl_radius : float
        ε > 0: the predicted KL divergence between the output distributions before
        and after each step.
    damping : float
        λ >= 0 in ``(F + λI)⁻¹ g``.
    max_step : float, optional
        Upper bound on β, > 0 (1.0: never longer than the full damped Newton/Gauss-
        Newton step; None or inf: no bound).
    max_retries : int
        When ``F + λI`` is not positive definite, λ is multiplied by 10 and the
        solve retried up to this many times (from ``min_damping`` when λ = 0).
        The raised λ is used for that step only, unless ``adaptive_damping`` is on,
        in which case it becomes the new damping.
    adaptive_damping : bool
        Levenberg-Marquardt adjustment of λ from ``ρ = actual / predicted`` loss
        change, reported through :meth:`report_loss` (off by default):
        ``ρ > 3/4`` multiplies λ by ``damping_decrease``, ``ρ < 1/4`` by
        ``damping_increase``; λ stays within ``[min_damping, max_damping]``.
    min_damping, max_damping : float
    damping_decrease, damping_increase : float
    adaptive_kl_radius : bool
        Trust-region adjustment of ε from the same ρ (off by default): ``ρ < 1/4``
        sets ε to half the step's predicted KL (≤ ε), ``ρ > 3/4`` doubles ε (up to
        ``max_kl_radius``) when the step was limited by ε rather than ``max_step``.
        While β < max_step the KL normalisation cancels λ's effect on the step
        length, so this is what shortens steps that the quadratic model over-promises.
    max_kl_radius : float, optional
        Upper bound for the adapted ε (default: 100 × the initial ``kl_radius``;
        the lower bound is 10⁻⁶ × the initial one).

    Attributes
    ----------
    damping : float
        The current λ.
    n_steps : int
        Successful steps taken.
    last_info : StepInfo or None

    Examples
    --------
    >>> import numpy as np
    >>> from ngdfast import KFACFisher, NaturalGradient
    >>> from ngdfast.models import MLP
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((128, 8)), rng.integers(0, 3, 128)
    >>> model = MLP([8, 16, 3])
    >>> theta = model.init(rng)
    >>> opt = NaturalGradient(KFACFisher(model.layer_shapes), kl_radius=1e-2, damping=1e-2, max_step=1.0)
    >>> for _ in range(20):
    ...     loss, grad = model.loss_and_grad(theta, X, y)
    ...     info = opt.step(theta, grad, *model.kfac_stats(theta, X, None, "sampled", rng))
    >>> bool(model.loss(theta, X, y) < loss)
    True

    Notes
    -----
    A step is all or nothing: if the batch statistics or the gradient hold NaN or
    Inf, the solve stays not positive definite after the retries, or the step
    would make the parameters non-finite, ``step`` raises and ``params`` and the
    curvature are exactly as they were (the curvature is snapshotted before its
    update and restored on failure; params are written only at the end).
    """

    def __init__(
        self,
        curvature,
        *,
        kl_radius: float = 1e-3,
        damping: float = 1e-3,
        max_step: float | None = None,
        max_retries: int = 3,
        adaptive_damping: bool = False,
        min_damping: float = 1e-8,
        max_damping: float = 1e4,
        damping_decrease: float = 2.0 / 3.0,
        damping_increase: float = 1.5,
        adaptive_kl_radius: bool = False,
        max_kl_radius: float | None = None,
    ):
        func = "NaturalGradient"
        for name in ("update", "solve", "snapshot", "restore", "n_params"):
            if not hasattr(curvature, name):
                raise TypeError(f"{func}: curvature {type(curvature).__name__} has no {name!r}")
        self.curvature = curvature
        # kl_radius = 0 or max_step = 0 would make every step β = 0: rejected here, not later
        self.kl_radius = _v.positive(kl_radius, func, "kl_radius")
        self.damping = _v.nonnegative(damping, func, "damping")
        self.max_step = _v.optional_positive(max_step, func, "max_step")
        self.max_retries = _v.integer(max_retries, func, "max_retries", minimum=0)
        self.adaptive_damping = bool(adaptive_damping)
        self.min_damping, self.max_damping = _v.damping_range(min_damping, max_damping, func)
        self.damping_decrease, self.damping_increase = _v.damping_factors(damping_decrease, damping_increase, func)
        self.adaptive_kl_radius = bool(adaptive_kl_radius)
        self.max_kl_radius = (
            100.0 * self.kl_radius if max_kl_radius is None else _v.positive(max_kl_radius, func, "max_kl_radius")
        )
        self._min_kl_radius = 1e-6 * self.kl_radius
        self.n_steps = 0
        self.last_info: StepInfo | None = None
        self._pending = None  # (loss before the step, predicted change, StepInfo) for report_loss

    def __repr__(self) -> str:
        return (
            f"NaturalGradient({self.curvature!r}, kl_radius={self.kl_radius}, damping={self.damping}, "
            f"max_step={self.max_step}, adaptive_damping={self.adaptive_damping}, "
            f"adaptive_kl_radius={self.adaptive_kl_radius})"
        )

    def _solve(self, g: np.ndarray):
        """Solve with retries: ``(ñ, damping used, retries)``."""
        return _solve_with_retries(
            lambda damping: self.curvature.solve(g, damping), self.damping, self.max_retries, self.min_damping
        )

    def step(self, params: np.ndarray, grad, *stats, weights=None, loss: float | None = None) -> StepInfo:
        """Update the curvature from ``stats``, then ``params -= β ñ`` in place.

        Parameters
        ----------
        params : ndarray (P,)
            Flat float parameters, modified in place.
        grad : ndarray (P,)
            Gradient of the loss at ``params``.
        *stats
            Passed to ``curvature.update``: score rows ``J`` (and optionally
            their weights, so ``step(theta, g, *model.scores(...))`` works) for
            the dense, low-rank and diagonal Fisher; ``activations,
            output_grads`` (``*model.kfac_stats(...)``) for K-FAC. No stats:
            step with the curvature as it is.
        weights : ndarray, optional
            Row weights, forwarded to ``curvature.update``.
        loss : float, optional
            The loss at ``params``; needed to call :meth:`report_loss` afterwards.

        Returns
        -------
        StepInfo

        Raises
        ------
        ValueError
            NaN/Inf in the gradient or statistics, bad shapes, ``gᵀñ < 0``;
        ``NumericOverflowError`` (a ``ValueError``) when the statistics of the batch
        overflow the curvature's dtype. Nothing is changed by a rejected step.
        NotPositiveDefiniteError
            ``F + λI`` stayed not positive definite through the retries.
        """
        self._pending = None  # whatever happens below, an older step can no longer be reported
        func = "NaturalGradient.step"
        if not isinstance(params, np.ndarray) or params.dtype.kind != "f":
            raise TypeError(f"{func}: params must be a float numpy array (it is updated in place)")
        if not params.flags.writeable:
            raise ValueError(f"{func}: params is read-only")
        n = self.curvature.n_params
        _flat(params, n, func, "params")
        g = _flat(grad, n, func, "grad")
        if weights is not None and not stats:
            raise ValueError(f"{func}: weights given without statistics to weigh")
        snapshot = self.curvature.snapshot() if stats else None
        try:
            if stats:
                if weights is None:
                    self.curvature.update(*stats)
                else:
                    self.curvature.update(*stats, weights=weights)
            nat, damping, retries = self._solve(g)
            delta, info = _size_step(g, nat, self.kl_radius, self.max_step, damping, retries)
            report = getattr(self.curvature, "last_solve", None)
            if report is not None:
                info.refactored, info.solve_iterations = bool(report.refactored), int(report.iterations)
            new = _stepped(params, delta, params.dtype, func)
        except BaseException:
            if snapshot is not None:
                self.curvature.restore(snapshot)
            raise
        params[...] = new
        if self.adaptive_damping and retries:
            self.damping = min(max(damping, self.min_damping), self.max_damping)
        self._pending = None if loss is None else (float(loss), info.predicted_change, info)
        self.n_steps += 1
        self.last_info = info
        return info

    def report_loss(self, new_loss: float) -> float:
        """Report the loss after the last step; returns ``ρ = actual / predicted`` change.

        With ``adaptive_damping`` this adjusts :attr:`damping` (Levenberg-Marquardt):
        a step the quadratic model predicted well (ρ > 3/4) lowers λ, a poor one
        (ρ < 1/4, including a loss increase) raises it; with ``adaptive_kl_radius``
        it adjusts :attr:`kl_radius` the same way (good: ×2, poor: half the step's KL). The last
        ``step`` must have been given ``loss=``.
        """
        if self._pending is None:
            raise ValueError("report_loss needs the previous step(..., loss=...) to be given the loss")
        old, predicted, info = self._pending
        self._pending = None
        new_loss = float(new_loss)
        if not math.isfinite(new_loss):
            rho = -math.inf
        elif predicted == 0:
            return math.nan
        else:
            rho = (new_loss - old) / predicted
        if self.adaptive_damping:
            if rho > 0.75:
                self.damping *= self.damping_decrease
            elif rho < 0.25:
                self.damping *= self.damping_increase
            self.damping = min(max(self.damping, self.min_damping), self.max_damping)
        if self.adaptive_kl_radius:
            if rho < 0.25:
                # Shrink below the step actually taken, which may have been shorter
                # than ε when max_step capped it.
                self.kl_radius = max(0.5 * min(self.kl_radius, info.predicted_kl), self._min_kl_radius)
            elif rho > 0.75 and not info.clipped:
                self.kl_radius = min(2.0 * self.kl_radius, self.max_kl_radius)
        return rho


def natural_gradient_step(
    params,
    grad,
    J,
    damping: float,
    kl_radius: float,
    weights=None,
    max_step: float | None = None,
    *,
    method: str = "auto",
    max_retries: int = 3,
) -> tuple[np.ndarray, StepInfo]:
    """One natural-gradient step with the Fisher of this batch only, no state kept.

    ``F = fisher(J, weights)``, ``ñ = (F + λI)⁻¹ g`` (``natural_gradient``, dense or
    Woodbury by cost), ``β = min(sqrt(2ε / gᵀñ), max_step)``.

    Parameters
    ----------
    params, grad : ndarray (P,)
    J : ndarray (N, P)
        Score rows.
    damping : float
        λ; multiplied by 10 up to ``max_retries`` times if ``F + λI`` is not
        positive definite (λ = 0 solves densely and starts retries at 1e-8).
    kl_radius : float
        ε.
    weights : ndarray (N,), optional
    max_step : float, optional
    method : {"auto", "dense", "lowrank"}

    Returns
    -------
    new_params : ndarray (P,)
        ``params − β ñ``, a new array (``params`` is not modified).
    info : StepInfo

    Examples
    --------
    >>> import numpy as np
    >>> import ngdfast
    >>> rng = np.random.default_rng(0)
    >>> J = rng.standard_normal((16, 4))
    >>> theta = np.zeros(4)
    >>> new, info = ngdfast.natural_gradient_step(theta, -J.mean(axis=0), J, damping=1e-3, kl_radius=1e-2)
    >>> bool(np.all(theta == 0)), bool(np.allclose(new, -info.beta * ngdfast.natural_gradient(J, -J.mean(axis=0), 1e-3)))
    (True, True)
    """
    func = "natural_gradient_step"
    params = _flat(params, None, func, "params")
    g = _flat(grad, params.shape[0], func, "grad")
    damping = _v.nonnegative(damping, func, "damping")
    kl_radius = _v.positive(kl_radius, func, "kl_radius")
    max_step = _v.optional_positive(max_step, func, "max_step")
    max_retries = _v.integer(max_retries, func, "max_retries", minimum=0)
    if damping == 0 and method == "auto":
        method = "dense"  # the Woodbury form needs λ > 0
    nat, lam, retries = _solve_with_retries(
        lambda lam: natural_gradient(J, g, lam, weights, method=method), damping, max_retries, 1e-8
    )
    delta, info = _size_step(g, nat, kl_radius, max_step, lam, retries)
    dtype = params.dtype if params.dtype.kind == "f" else np.float64
    return _stepped(params, delta, dtype, func), info
