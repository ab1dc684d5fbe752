r"""The torch section of ``python -m ngdfast bench`` (``--kernels torch``).

``ngdfast.torch`` beside the PyTorch libraries a natural-gradient user would pick,
each timed in this process where it imports (``pip install '.[bench]'`` with the
peers below) and skipped with the import error otherwise, and beside a
hand-written ``torch.func`` + ``torch.linalg`` step:

* ``exact``: the exact damped natural gradient of the empirical Fisher,
  ``ñ = (F + λI)⁻¹ g`` with ``F = JᵀJ/N`` (J: per-sample gradients of the mean
  cross-entropy), MLP 64-128-10, N = 256, float64. ngdfast:
  ``ngdfast.torch.natural_gradient(curvature="exact", fisher="empirical")``; hand:
  ``vmap(grad)`` of a ``functional_call``, then Woodbury with ``torch.linalg``:
  ``ñ = (g − Jᵀ (NλI + JJᵀ)⁻¹ J g) / λ``. Same answer asserted to 1e-10.
* ``kfac-mlp`` / ``kfac-cnn``: one K-FAC step from the batch (forward, backward,
  factors, damped inverses, preconditioned gradient) with the exact Fisher
  (all classes, weighted by p: deterministic, so answers are comparable), on
  that MLP and on the demo's CNN, float32 (as models train; nngeometry's exact
  Fisher fails on float64 models), N = 256. ngdfast:
  ``natural_gradient(curvature="kfac", fisher="exact")``. Peers: nngeometry
  (``FIM(..., PMatKFAC, variant="classif_logits")``, ``inverse(regul=λ)`` with
  its π damping, ``mv``), curvlinops (``KFACLinearOperator(fisher_type="type-2",
  separate_weight_and_bias=False)``, ``KFACInverseLinearOperator`` with its
  heuristic (π) damping), BackPACK (``KFLR`` factors, weight and bias blocks
  apart, solved with ``torch.linalg.cholesky``/``cholesky_solve``), ASDL
  (``KfacGradientMaker(fisher_type="fisher_exact")``, bias kept apart). The
  directions of nngeometry and curvlinops (same factors, same π damping) are
  asserted equal to ngdfast's; BackPACK's factors equal to ngdfast's up to
  their scale convention (Conv2d: A only, its G is another approximation);
  ASDL's direction differs by construction and is only reported.
* ``overhead``: the demo's CNN, N = 256, float32: a training step with
  ``Preconditioner(factor_interval=1, inverse_interval=10)`` (forward, backward,
  ``precond.step()``, ``SGD.step()``) against an ``Adam`` step (forward,
  backward, ``Adam.step()``), both averaged over 10 consecutive steps.
* ``time-to-adam``: the torch demo's digits CNN workload (:mod:`ngdfast._workloads.torch`):
  Adam (lr 0.03, the grid's winner) for the step budget, then the wall time
  K-FAC NGD needs to reach Adam's final training loss (per-step minimum of
  ``repeats`` runs, optimisation work only).

torch runs with as many threads as ngdfast (``torch.set_num_threads``), restored
afterwards. Ratios are peer time / ngdfast time (> 1: ngdfast faster) except
``overhead`` (K-FAC step / Adam step: < 1.5 is the target).
"""

from __future__ import annotations

import copy
import importlib
import math
import warnings
import weakref
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import ngdfast
import ngdfast.torch as ngt

from .._workloads import fastest, load_digits_split
from .._workloads import torch as workloads
from .report import format_time
from .targets import check_torch_targets
from .timing import time_blocks

N = 256
DAMPING = 1e-3
EXACT_TOLERANCE = 1e-10  #: ngdfast vs hand Woodbury, relative, float64
KFAC_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-3}  #: ngdfast vs nngeometry/curvlinops directions
FACTOR_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}  #: factors, after the trace normalisation
INVERSE_INTERVAL = 10
ADAM_LR = 0.03

#: import name -> PyPI name of each peer
PEERS = {"nngeometry": "nngeometry", "backpack": "backpack-for-pytorch",
         "curvlinops": "curvlinops-for-pytorch", "asdl": "asdfghjkl"}

def import_peer(name: str):
    """``(module, None)``, or ``(None, reason)`` when the peer does not import."""
    try:
        with warnings.catch_warnings():  # curvlinops and ASDL call the deprecated torch.jit.script on import
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(name), None
    except Exception as exc:  # a peer broken on this torch raises more than ImportError
        return None, f"{PEERS[name]} does not import: {type(exc).__name__}: {exc}"


def make_mlp(dtype=torch.float64) -> nn.Module:
    """MLP 64-128-10 (tanh), P = 9610."""
    return nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10)).to(dtype)


def make_batch(model: str, n: int = N, dtype=torch.float64, seed: int = 0):
    """Random inputs (standard normal) and class labels for ``"mlp"`` (N, 64) or ``"cnn"`` (N, 1, 8, 8)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n, 64) if model == "mlp" else (n, 1, 8, 8)
    return torch.randn(shape, generator=gen, dtype=dtype), torch.randint(0, 10, (n,), generator=gen)


def relative_error(a, b) -> float:
    """‖a − b‖ / ‖b‖ over lists of tensors, in float64."""
    num = math.fsum(float((x.double() - y.double()).square().sum()) for x, y in zip(a, b))
    den = math.fsum(float(y.double().square().sum()) for y in b)
    return math.sqrt(num / max(den, 1e-300))


# ---------------------------------------------------------------------------- exact step
def hand_exact(model: nn.Module, x, y, damping: float = DAMPING) -> list[torch.Tensor]:
    """``(F + λI)⁻¹ g`` of the empirical Fisher by ``torch.func`` and a Woodbury solve in ``torch.linalg``."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    n = x.shape[0]
    J = torch.cat([per_sample[k].reshape(n, -1) for k in params], dim=1)
    g = J.mean(0)
    K = J @ J.T
    K.diagonal().add_(n * damping)
    v = torch.cholesky_solve((J @ g).unsqueeze(1), torch.linalg.cholesky(K)).squeeze(1)
    flat = (g - J.T @ v) / damping
    return _unflatten(flat, model)


def ngdfast_exact(model, x, y, damping: float = DAMPING) -> list[torch.Tensor]:
    return ngt.natural_gradient(model, x, y, curvature="exact", fisher="empirical", damping=damping)


# ---------------------------------------------------------------------------- K-FAC step
def ngdfast_kfac(model, x, y, damping: float = DAMPING) -> list[torch.Tensor]:
    return ngt.natural_gradient(model, x, y, curvature="kfac", fisher="exact", damping=damping)


def _loss_grad(model, x, y) -> list[torch.Tensor]:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def nngeometry_kfac(nngeometry, model, x, y, damping: float = DAMPING) -> list[torch.Tensor]:
    """nngeometry: exact-Fisher KFAC of the batch, ``inverse(regul)`` (π damping), ``mv`` of the gradient."""
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatKFAC, PVector

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(x))
    fim = FIM(model, loader, PMatKFAC, variant="classif_logits", device="cpu")
    _loss_grad(model, x, y)
    out = fim.inverse(regul=damping).mv(PVector.from_model_grad(model))
    return _unflatten(out.to_torch(), model)


def curvlinops_kfac(curvlinops, model, x, y, damping: float = DAMPING) -> list[torch.Tensor]:
    """curvlinops: type-2 (exact Fisher) KFAC, weight and bias jointly, heuristic (π) damping."""
    params = list(model.parameters())
    kfac = curvlinops.KFACLinearOperator(
        model, nn.CrossEntropyLoss(), params, [(x, y)], fisher_type="type-2",
        separate_weight_and_bias=False, check_deterministic=False)
    kfac.compute_kronecker_factors()
    inverse = curvlinops.KFACInverseLinearOperator(kfac, damping=damping, use_heuristic_damping=True)
    return list(inverse @ _loss_grad(model, x, y))


def asdl_kfac(asdl, model, x, y, damping: float = DAMPING) -> list[torch.Tensor]:
    """ASDL: ``KfacGradientMaker`` with the exact Fisher, curvature and inverses every call;
    returns the preconditioned ``.grad`` (bias kept apart from the weight, its own damping rule)."""
    config = asdl.PreconditioningConfig(data_size=len(x), damping=damping, preconditioner_upd_interval=1,
                                        curvature_upd_interval=1)
    maker = _ASDL_MAKERS.get(model)
    if maker is None:  # one per model: it registers its hooks once
        maker = _ASDL_MAKERS[model] = asdl.KfacGradientMaker(model, config, fisher_type=asdl.FISHER_EXACT)
    model.zero_grad()
    with warnings.catch_warnings():  # ASDL's non-full backward hooks are deprecated in torch 2.x
        warnings.simplefilter("ignore", FutureWarning)
        dummy = maker.setup_model_call(model, x)
        maker.setup_loss_call(F.cross_entropy, dummy, y)
        maker.forward_and_backward()
    return [p.grad.detach().clone() for p in model.parameters()]


_ASDL_MAKERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pi_damped(A, G, damping):
    pi = math.sqrt((float(torch.trace(A)) / A.shape[0]) / (float(torch.trace(G)) / G.shape[0]))
    eye_a = torch.eye(A.shape[0], dtype=A.dtype)
    eye_g = torch.eye(G.shape[0], dtype=G.dtype)
    return A + pi * math.sqrt(damping) * eye_a, G + math.sqrt(damping) / pi * eye_g


def backpack_kfac(backpack, extended, loss_fn, x, y, damping: float = DAMPING) -> list[torch.Tensor]:
    """BackPACK: KFLR (exact-Fisher) factors in the backward, then per block
    ``(G + (√λ/π)I)⁻¹ ∇W (A + π√λ I)⁻¹`` (weight) and ``(G + √λ I)⁻¹ ∇b`` (bias) by Cholesky."""
    from backpack.extensions import KFLR

    extended.zero_grad()
    with backpack.backpack(KFLR()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
        loss_fn(extended(x), y).backward()
    out = []
    for p in extended.parameters():
        factors = p.kflr
        if len(factors) == 2:
            A, G = _pi_damped(factors[1], factors[0], damping)
            gw = p.grad.reshape(p.shape[0], -1)
            left = torch.cholesky_solve(gw, torch.linalg.cholesky(G))
            out.append(torch.cholesky_solve(left.T, torch.linalg.cholesky(A)).T.reshape(p.shape))
        else:
            G = factors[0] + math.sqrt(damping) * torch.eye(factors[0].shape[0], dtype=p.dtype)
            out.append(torch.cholesky_solve(p.grad.unsqueeze(1), torch.linalg.cholesky(G)).squeeze(1))
        del p.kflr
    return out


def backpack_factors(backpack, extended, loss_fn, x, y) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """BackPACK's KFLR ``(A, G)`` of each layer's weight (A without the bias column)."""
    from backpack.extensions import KFLR

    extended.zero_grad()
    with backpack.backpack(KFLR()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
        loss_fn(extended(x), y).backward()
    out = [(p.kflr[1].clone(), p.kflr[0].clone()) for p in extended.parameters() if len(p.kflr) == 2]
    for p in extended.parameters():
        del p.kflr
    return out


def ngdfast_factors(model, x, y) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """ngdfast's exact-Fisher K-FAC ``(A, S)`` of each layer (one Preconditioner step on a copy)."""
    copy_ = copy.deepcopy(model)
    precond = ngt.Preconditioner(copy_, fisher="exact", damping=DAMPING)
    copy_.zero_grad()
    F.cross_entropy(copy_(x), y).backward()
    precond.step()
    return list(precond.factors.values())


def _unflatten(flat: torch.Tensor, model) -> list[torch.Tensor]:
    return [t.reshape(p.shape) for t, p in zip(torch.split(flat, [p.numel() for p in model.parameters()]),
                                               model.parameters())]


def _normalised(M: torch.Tensor) -> torch.Tensor:
    return M / torch.trace(M)


# ---------------------------------------------------------------------------- cases
def _row(case, variant, seconds, ngdfast_seconds, error=None, note="") -> dict[str, Any]:
    return {"case": case, "variant": variant, "seconds": seconds,
            "ratio": None if seconds is None else seconds / ngdfast_seconds, "error": error, "note": note}


def exact_case(repeats: int) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = make_mlp(torch.float64)
    x, y = make_batch("mlp")
    ours, hand = ngdfast_exact(model, x, y), hand_exact(model, x, y)
    err = relative_error(ours, hand)
    times = time_blocks({"ngdfast": lambda: ngdfast_exact(model, x, y),
                         "hand": lambda: hand_exact(model, x, y)}, repeats)
    return [_row("exact", "ngdfast.torch natural_gradient", times["ngdfast"], times["ngdfast"]),
            _row("exact", "hand torch.func + torch.linalg Woodbury", times["hand"], times["ngdfast"], err,
                 ok(err, EXACT_TOLERANCE))]


def ok(err: float, tol: float) -> str:
    return "" if err <= tol else f"MISMATCH > {tol:.0e}"


def kfac_case(model_name: str, repeats: int) -> list[dict[str, Any]]:
    """ngdfast against every peer that imports, on the MLP (float64) or the CNN (float32)."""
    dtype = torch.float32  # as models train (nngeometry's exact Fisher also only runs in float32)
    torch.manual_seed(0)
    model = make_mlp(dtype) if model_name == "mlp" else workloads.make_cnn().to(dtype)
    x, y = make_batch(model_name, dtype=dtype)
    case = f"kfac-{model_name}"
    ours = ngdfast_kfac(model, x, y)
    fns: dict[str, Callable[[], Any]] = {"ngdfast": lambda: ngdfast_kfac(model, x, y)}
    checks: dict[str, tuple[float | None, str]] = {}
    skipped = []
    for name in ("nngeometry", "curvlinops", "backpack", "asdl"):
        module, reason = import_peer(name)
        if module is None:
            skipped.append(_row(case, name, None, 1.0, note=f"skipped: {reason}"))
            continue
        try:
            if name == "nngeometry":
                peer = copy.deepcopy(model)
                fn = (lambda m=module, p=peer: nngeometry_kfac(m, p, x, y))
                checks[name] = _direction_check(fn(), ours, dtype)
            elif name == "curvlinops":
                peer = copy.deepcopy(model)
                fn = (lambda m=module, p=peer: curvlinops_kfac(m, p, x, y))
                checks[name] = _direction_check(fn(), ours, dtype)
            elif name == "backpack":
                extended = module.extend(copy.deepcopy(model))
                loss_fn = module.extend(nn.CrossEntropyLoss())
                fn = (lambda m=module, e=extended, lf=loss_fn: backpack_kfac(m, e, lf, x, y))
                fn()
                conv = [isinstance(m, nn.Conv2d) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
                checks[name] = _factor_check(backpack_factors(module, extended, loss_fn, x, y),
                                             ngdfast_factors(model, x, y), conv, dtype)
            else:
                peer = copy.deepcopy(model)
                fn = (lambda m=module, p=peer: asdl_kfac(m, p, x, y))
                checks[name] = (relative_error(fn(), ours), "bias block and damping differ: not compared")
        except Exception as exc:  # a peer that fails on this torch or model is reported, not fatal
            skipped.append(_row(case, name, None, 1.0, note=f"skipped: {type(exc).__name__}: {exc}"[:200]))
            continue
        fns[name] = fn
    times = time_blocks(fns, repeats)
    rows = [_row(case, "ngdfast.torch natural_gradient", times["ngdfast"], times["ngdfast"])]
    for name, (err, note) in checks.items():
        rows.append(_row(case, name, times[name], times["ngdfast"], err, note))
    return rows + skipped


def _direction_check(theirs, ours, dtype) -> tuple[float, str]:
    err = relative_error(theirs, ours)
    return err, ok(err, KFAC_TOLERANCE[dtype])


def _factor_check(theirs, ours, conv, dtype) -> tuple[float, str]:
    """Largest relative difference of the trace-normalised factors (A without ngdfast's bias column).

    Conv2d: A only. BackPACK's KFLR G of a convolution is another approximation (not the
    KFC one ngdfast, nngeometry and curvlinops share); it is not compared.
    """
    errs = []
    for (A_p, G_p), (A_o, S_o), is_conv in zip(theirs, ours, conv):
        errs.append(relative_error([_normalised(A_p)], [_normalised(A_o[:-1, :-1])]))
        if not is_conv:
            errs.append(relative_error([_normalised(G_p)], [_normalised(S_o)]))
    err = max(errs)
    tol = FACTOR_TOLERANCE[dtype]
    what = "factors A, G (trace-normalised" + ("; conv: A only)" if any(conv) else ")")
    return err, what if err <= tol else f"factors MISMATCH > {tol:.0e}"


def overhead_case(repeats: int) -> list[dict[str, Any]]:
    """K-FAC training step (inverses every 10 steps) against an Adam step, CNN, float32."""
    torch.manual_seed(0)
    x, y = make_batch("cnn", dtype=torch.float32)
    kfac_model, adam_model = workloads.make_cnn(), workloads.make_cnn()
    adam_model.load_state_dict(kfac_model.state_dict())
    precond = ngt.Preconditioner(kfac_model, kl_radius=1e-3, damping=1e-2, inverse_interval=INVERSE_INTERVAL)
    sgd = torch.optim.SGD(kfac_model.parameters(), lr=1.0)
    adam = torch.optim.Adam(adam_model.parameters(), lr=1e-3)

    def kfac_steps():
        for _ in range(INVERSE_INTERVAL):
            sgd.zero_grad()
            F.cross_entropy(kfac_model(x), y).backward()
            precond.step()
            sgd.step()

    def adam_steps():
        for _ in range(INVERSE_INTERVAL):
            adam.zero_grad()
            F.cross_entropy(adam_model(x), y).backward()
            adam.step()

    times = time_blocks({"kfac": kfac_steps, "adam": adam_steps}, repeats)
    kfac, adam_t = times["kfac"] / INVERSE_INTERVAL, times["adam"] / INVERSE_INTERVAL
    return [_row("overhead", f"ngdfast K-FAC step (inverses every {INVERSE_INTERVAL})", kfac, kfac),
            {**_row("overhead", "torch.optim.Adam step", adam_t, kfac), "ratio": kfac / adam_t}]


def time_to_adam_case(steps: int, repeats: int) -> list[dict[str, Any]]:
    """Wall time of K-FAC NGD to Adam's final training loss on the demo's digits CNN."""
    try:
        split = load_digits_split(0)
    except ImportError as exc:  # the digits come with scikit-learn (the demo extra)
        return [_row("time-to-adam", "ngdfast K-FAC NGD", None, 1.0, note=f"skipped: {exc}")]
    problem = workloads.DigitsProblem.from_split(*split)
    torch.manual_seed(0)
    state0 = workloads.make_cnn().state_dict()
    settings = workloads.CNN_CONFIG["ngd"]["ngd-kfac"]

    class Quiet:
        def update(self):
            pass

    adam = workloads.run_adam(problem, state0, steps, ADAM_LR, Quiet())
    kfac = workloads.run_ngd(problem, state0, steps, settings, 1, Quiet())
    for _ in range(repeats - 1):
        fastest(adam, workloads.run_adam(problem, state0, steps, ADAM_LR, Quiet()))
        fastest(kfac, workloads.run_ngd(problem, state0, steps, settings, 1, Quiet()))
    target = adam.final
    hit = kfac.reach(target)
    adam_seconds = adam.seconds[-1]
    note = f"Adam lr {ADAM_LR:g}, {steps} steps, final loss {target:.5f}"
    if hit is None:
        return [_row("time-to-adam", "ngdfast K-FAC NGD", None, 1.0, note=note + "; K-FAC never reached it"),
                _row("time-to-adam", "torch.optim.Adam", adam_seconds, 1.0, note=note)]
    k_steps, k_seconds = hit
    return [_row("time-to-adam", f"ngdfast K-FAC NGD ({k_steps} steps)", k_seconds, k_seconds, note=note),
            _row("time-to-adam", f"torch.optim.Adam ({steps} steps)", adam_seconds, k_seconds)]


# ---------------------------------------------------------------------------- the section
def run(quick: bool, repeats: int, out) -> dict[str, Any]:
    """Time every torch case, print the table and the targets; return everything for the JSON."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(ngdfast.get_num_threads())
    try:
        print(f"\nPyTorch (torch {torch.__version__}, {torch.get_num_threads()} threads = ngdfast's "
              f"{ngdfast.get_num_threads()}; N = {N}, damping {DAMPING:g}; ratio = other / ngdfast, "
              "overhead: K-FAC / Adam)", file=out)
        print(f"{'case':<13}  {'variant':<44}  {'time':>10}  {'ratio':>7}  {'rel. diff':>9}  note", file=out)
        rows = []
        cases = [lambda: exact_case(repeats), lambda: kfac_case("mlp", repeats), lambda: kfac_case("cnn", repeats),
                 lambda: overhead_case(repeats), lambda: time_to_adam_case(40 if quick else 200, min(repeats, 2))]
        for case in cases:
            for r in case():
                rows.append(r)
                time_s = "-" if r["seconds"] is None else format_time(r["seconds"])
                ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
                err = "-" if r["error"] is None else f"{r['error']:.1e}"
                print(f"{r['case']:<13}  {r['variant']:<44}  {time_s:>10}  {ratio:>7}  {err:>9}  {r['note']}",
                      file=out, flush=True)
        targets = check_torch_targets(rows)
        print("\nSpeed targets (PyTorch; a miss is reported, never an error)", file=out)
        for t in targets:
            value = "-" if t["value"] is None else f"{t['value']:.2f}"
            print(f"  {t['case']:<13} {t['versus']:<40} {t['measure']:<36} {value:>6} {t['op']} {t['bound']:<4g} "
                  f"{'met' if t['met'] else 'MISSED'}", file=out)
        for r in rows:
            if "MISMATCH" in r["note"]:
                print(f"MISMATCH: torch {r['case']} {r['variant']}: relative difference {r['error']:.2e}", file=out)
        versions = {PEERS[name]: _version(name) for name in PEERS}
        return {"torch": torch.__version__, "threads": torch.get_num_threads(), "peers": versions,
                "rows": rows, "targets": targets,
                "mismatch": [r for r in rows if "MISMATCH" in r["note"]]}
    finally:
        torch.set_num_threads(threads_before)


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(PEERS[name])
    except metadata.PackageNotFoundError:
        return None
