"""Data-parallel natural gradient on ``torch.distributed`` (any backend: gloo, NCCL).

Enabled by ``Preconditioner(..., distributed=...)``: ``None`` (default) turns it on when
``torch.distributed`` is initialised with more than one rank, ``True`` requires it, ``False``
keeps every rank on its own. A ``DistributedDataParallel`` model may be passed as is: its
gradients are already averaged; for a plain model the preconditioner averages them itself (one
all-reduce in :meth:`step`). Every rank must construct its preconditioner (a collective) with
the same settings and model (checked: a fingerprint of settings and parameter shapes is
all-gathered and compared on every rank, which all raise on a mismatch), and run the same
number of forwards, backwards and steps.

What a step communicates, on a private process group (``dist.new_group`` over the same ranks,
so that DDP's own all-reduces on the user's group never interleave with ours):

* gradients (plain model only): one all-reduce of all of them, averaged with equal weights
  (as DDP does: exact for equal per-rank batches);
* K-FAC factors, on factor-update steps only: each rank's statistics of its own batch, weighted
  by its counts (A by rows, S and diagonal Fisher by counted output positions), packed into
  buckets of at most ``bucket_mb`` (lower triangles only: ``d(d+1)/2`` of the ``d²`` numbers; a
  diagonal factor as its d numbers) and all-reduced asynchronously, started when the user's
  backward reaches the model output (the capture's own backward has then made every statistic
  of the step: see ``_capture``), so they travel while the backward runs; :meth:`step` waits,
  and divides by the summed counts. The result is the factors of the concatenation of the
  ranks' batches, also for unequal batches (and positions ignored by the loss on some ranks);
* K-FAC inverses, on inverse-refresh steps: layers are assigned to ranks by cost
  (``in³ + out³``, largest first to the least-loaded rank). ``distribute="inverses"`` (default):
  each owner inverts its layers and broadcasts the inverses' lower triangles; every rank holds
  every inverse and preconditions every layer (memory ``Σ in² + out²`` per rank, traffic only on
  refresh steps). ``distribute="gradients"``: each rank keeps only its own inverses and
  broadcasts its layers' preconditioned gradients every step (memory: the owned layers only, traffic ``Σ in·out``
  per step). Both give the same parameters;
* exact NGD (``curvature="exact"``): each rank forms the score rows J_r of its own samples. The
  solve is over the union. F's off-diagonal sample blocks ``J_r J_sᵀ`` need rows from two ranks,
  so no pattern avoids moving either rows or a P×P matrix; the cheaper of the two by bytes is
  used: parameter space, an all-reduce of the lower triangle of ``Σ_r J_rᵀ W_r J_r`` (P(P+1)/2
  numbers) and a dense solve on every rank; or sample space, an all-gather of the rows (N·P
  numbers in all) and the Woodbury solve of ``ngdfast.natural_gradient`` on every rank.

Every collective is counted in :attr:`Communicator.bytes` (payload bytes each rank sends into
the collective, by kind), which ``Preconditioner.communication`` reports.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.distributed as dist

DISTRIBUTE = ("inverses", "gradients")


def enabled(distributed, func: str) -> bool:
    """Whether to distribute: ``None`` auto-detects, ``True`` requires an initialised group."""
    live = dist.is_available() and dist.is_initialized()
    if distributed is None:
        return live and dist.get_world_size() > 1
    if distributed is True:
        if not live:
            raise RuntimeError(f"{func}: distributed=True but torch.distributed is not initialised "
                               "(call torch.distributed.init_process_group first)")
        return True
    if distributed is False:
        return False
    raise TypeError(f"{func}: distributed must be None, True or False, got {distributed!r}")


def tril_pack(M: torch.Tensor) -> torch.Tensor:
    """The lower triangle of a symmetric (d, d) matrix, row by row: d(d+1)/2 numbers."""
    i, j = torch.tril_indices(M.shape[0], M.shape[0], device=M.device)
    return M[i, j]


def tril_unpack(v: torch.Tensor, d: int) -> torch.Tensor:
    """The symmetric (d, d) matrix whose lower triangle is ``v``."""
    i, j = torch.tril_indices(d, d, device=v.device)
    M = v.new_empty((d, d))
    M[i, j] = v
    M[j, i] = v
    return M


def pack_factor(M: torch.Tensor) -> torch.Tensor:
    """A K-FAC factor (or its inverse) as a vector: the lower triangle, or a diagonal factor as is."""
    return tril_pack(M) if M.ndim == 2 else M


def unpack_factor(v: torch.Tensor, d: int, diagonal: bool) -> torch.Tensor:
    """Inverse of :func:`pack_factor` for a factor of side d."""
    return v if diagonal else tril_unpack(v, d)


def factor_sides(layer) -> list[tuple[int, bool, int]]:
    """``(side, diagonal, packed size)`` of a layer's A then S."""
    return [(layer.in_dim, layer.a_diag, layer.factor_numel("A")),
            (layer.out_dim, layer.s_diag, layer.factor_numel("S"))]


def tri(d: int) -> int:
    return d * (d + 1) // 2


class Communicator:
    """torch.distributed collectives on one process group, counting the payload bytes."""

    def __init__(self, group=None):
        base = group if group is not None else dist.group.WORLD
        ranks = dist.get_process_group_ranks(base)
        self.group = dist.new_group(ranks=ranks)  # private: never interleaves with DDP's reducer
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)
        self._global = ranks  # group rank -> global rank (broadcast's src is global)
        # NCCL takes CUDA tensors only: small flag tensors go to the current device there
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if dist.get_backend(self.group) == "nccl" else torch.device("cpu"))
        self.bytes: Counter = Counter()
        self.calls: Counter = Counter()

    def _count(self, kind, t):
        self.bytes[kind] += t.numel() * t.element_size()
        self.calls[kind] += 1

    def all_reduce(self, t, kind, op=dist.ReduceOp.SUM, async_op=False):
        self._count(kind, t)
        return dist.all_reduce(t, op=op, group=self.group, async_op=async_op)

    def broadcast(self, t, src, kind):
        if src == self.rank:
            self._count(kind, t)
        dist.broadcast(t, src=self._global[src], group=self.group)

    def all_gather(self, t, kind):
        self._count(kind, t)
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t, group=self.group)
        return out

    def all_gather_object(self, obj):
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (one small all-reduce)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        self.all_reduce(t, "flags", op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)


def check_same(comm: Communicator, fingerprint: dict, func: str) -> None:
    """Raise ValueError on every rank when some rank's ``fingerprint`` differs from rank 0's."""
    every = comm.all_gather_object(fingerprint)
    bad = []
    for r, fp in enumerate(every):
        if fp != every[0]:
            keys = sorted(k for k in set(fp) | set(every[0]) if fp.get(k) != every[0].get(k))
            bad.append(f"rank {r} differs from rank 0 in {', '.join(keys)}: "
                       + "; ".join(f"{k}={fp.get(k)!r} vs {every[0].get(k)!r}" for k in keys[:3]))
    if bad:
        raise ValueError(f"{func}: the ranks disagree on the settings or the model: " + " | ".join(bad))


def assign_owners(costs: list[float], world: int) -> list[int]:
    """Owner rank of each item: largest cost first, each to the least-loaded rank (ties: lowest rank)."""
    load = [0.0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += costs[i]
    return owner


class FactorReducer:
    """Bucketed, asynchronous all-reduce of one step's K-FAC statistics (lower triangles).

    Items are the K-FAC layers and the diagonal-fallback modules, in reverse registration
    order (the order the backward pass reaches them), cut into buckets of at most
    ``bucket_bytes``; one bucket per dtype run. A bucket carries, per rank, ``rows·A`` and
    ``n·S`` (triangles), ``n·D``, and the counts (n, rows of A), so the sums divided by the summed
    counts are the statistics of the union of the ranks' samples.
    """

    def __init__(self, comm: Communicator, capture, layers, diagonal, dtype_of, bucket_bytes: int):
        self.comm = comm
        self.capture = capture
        self.layers = layers
        self.diagonal = diagonal
        items = [("k", i) for i in range(len(layers))] + [("d", j) for j in range(len(diagonal))]
        items.reverse()
        self.buckets: list[list] = []
        size, dtype = 0, None
        for key in items:
            dt = dtype_of(key)
            n = self._numel(key) * torch.empty((), dtype=dt).element_size()
            if not self.buckets or dt != dtype or (size + n > bucket_bytes and self.buckets[-1]):
                self.buckets.append([])
                size, dtype = 0, dt
            self.buckets[-1].append(key)
            size += n
        self._dtypes = [dtype_of(b[0]) for b in self.buckets]
        self.launched_in_backward = 0  # buckets started before step(), over the run
        self._in_finish = False
        self.reset()

    def _numel(self, key) -> int:
        if key[0] == "k":
            return sum(size for _, _, size in factor_sides(self.layers[key[1]]))
        _, module, names = self.diagonal[key[1]]
        return sum(module.get_parameter(n).numel() for n in names)

    def reset(self) -> None:
        self._work: list = []  # (bucket index, buffer, work) in launch order
        self._stale = False

    # ---- capture events
    def on_forward(self, keys) -> None:
        """A recording forward finished (its statistics come when the backward reaches it)."""
        if self._work:
            self._stale = True  # accumulation after a launch: step() reduces afresh

    def on_backward_start(self) -> None:
        """The backward reached the model output: this forward's statistics are complete."""
        if not self._stale:
            self._launch_ready()

    def _launch_ready(self) -> None:
        # buckets go out strictly in order, so every rank issues the same sequence
        while len(self._work) < len(self.buckets):
            k = len(self._work)
            buf = self._pack(k)
            self._work.append((k, buf, self.comm.all_reduce(buf, "factors", async_op=True)))
            self.launched_in_backward += not self._in_finish

    def _pack(self, k: int) -> torch.Tensor:
        b = self.capture.batch
        n = b.n
        empirical = self.capture.fisher == "empirical"
        dtype = self._dtypes[k]
        device = self._device(self.buckets[k][0])
        parts, counts = [], [float(n)]
        for key in self.buckets[k]:
            kind, i = key
            if kind == "k":
                s = b.S.get(i)
                if i in b.A and s is not None and s.mean is not None and n:
                    a = b.A[i]
                    S = b.scaled_S(s, empirical)
                    parts += [pack_factor(a.mean).to(dtype) * a.rows, pack_factor(S).to(dtype) * n]
                    counts.append(float(a.rows))
                else:
                    parts += [torch.zeros(size, dtype=dtype, device=device)
                              for _, _, size in factor_sides(self.layers[i])]
                    counts.append(0.0)
            else:
                _, module, names = self.diagonal[i]
                ds = b.D.get(i)
                for m, name in enumerate(names):
                    p = module.get_parameter(name)
                    if ds is None or not n:
                        parts.append(torch.zeros(p.numel(), dtype=dtype, device=device))
                    else:
                        parts.append(b.scaled_D(ds[m], empirical).reshape(-1).to(dtype) * n)
                counts.append(1.0 if ds is not None else 0.0)
        return torch.cat([t.to(device) for t in parts] + [torch.tensor(counts, dtype=dtype, device=device)])

    def _device(self, key):
        if key[0] == "k":
            return self.layers[key[1]].params[0].device
        _, module, names = self.diagonal[key[1]]
        return module.get_parameter(names[0]).device

    def finish(self):
        """Wait for (or issue) every bucket; ``(N, A, S, D)`` of the union, or None when no rank
        recorded anything. Same layout as ``Capture.statistics``."""
        if self._stale:
            for _, _, w in self._work:
                w.wait()  # matched on every rank; results superseded by the final statistics
            self._work = []
            self._stale = False
        self._in_finish = True
        try:
            self._launch_ready()
        finally:
            self._in_finish = False
        A, S, D, total = {}, {}, {}, None
        for k, buf, w in self._work:
            w.wait()
            keys = self.buckets[k]
            counts = buf[buf.numel() - len(keys) - 1:]
            N = float(counts[0])
            total = N
            pos = 0
            for c, (kind, i) in zip(counts[1:].tolist(), keys):
                if kind == "k":
                    (inn, a_diag, a_size), (out, s_diag, s_size) = factor_sides(self.layers[i])
                    a, s = buf[pos : pos + a_size], buf[pos + a_size : pos + a_size + s_size]
                    pos += a_size + s_size
                    if c > 0:
                        A[i] = unpack_factor(a / c, inn, a_diag)
                        S[i] = unpack_factor(s / N, out, s_diag)
                else:
                    _, module, names = self.diagonal[i]
                    ds = []
                    for name in names:
                        p = module.get_parameter(name)
                        ds.append((buf[pos : pos + p.numel()] / N).reshape(p.shape))
                        pos += p.numel()
                    if c > 0:
                        D[i] = ds
        self.reset()
        if not total:
            return None
        return int(round(total)), A, S, D


class Distributed:
    """The preconditioner's distributed side: gradients, factors, inverses, exact solve, state."""

    def __init__(self, owner, group, distribute: str, bucket_mb: float, grads_averaged: bool):
        self.comm = Communicator(group)
        self.distribute = distribute
        self.grads_averaged = grads_averaged
        layers = owner._layers
        # cost of a layer's two inversions: in³ + out³
        self.owner_of = assign_owners([float(i**3 + o**3) for o, i in (layer.shape for layer in layers)],
                                      self.comm.world)
        self.reducer = None
        if owner.curvature != "exact":
            def dtype_of(key):
                p = layers[key[1]].params[0] if key[0] == "k" else next(
                    owner._diagonal[key[1]][1].get_parameter(n) for n in owner._diagonal[key[1]][2])
                return owner._stats_dtype(p)

            self.reducer = FactorReducer(self.comm, owner._capture, layers, owner._diagonal, dtype_of,
                                         int(bucket_mb * 2**20))
            owner._capture.listener = self.reducer

    @property
    def rank(self):
        return self.comm.rank

    @property
    def world(self):
        return self.comm.world

    def mean(self, value: float) -> float:
        """The ranks' mean of a number (losses for the adaptive damping)."""
        t = torch.tensor([value], dtype=torch.float64, device=self.comm.device)
        self.comm.all_reduce(t, "flags")
        return float(t.item()) / self.comm.world

    def owns(self, i: int) -> bool:
        return self.owner_of[i] == self.comm.rank

    def average_gradients(self, grads):
        """All ranks' mean gradient (equal weights), in place of each ``.grad`` (no-op under DDP)."""
        if self.grads_averaged:
            return
        live = [g for g in grads if g is not None]
        by_dtype = {}
        for g in live:
            by_dtype.setdefault(g.dtype, []).append(g)
        for dtype, gs in by_dtype.items():
            flat = torch.cat([g.reshape(-1) for g in gs])
            self.comm.all_reduce(flat, "gradients")
            flat /= self.comm.world
            k = 0
            for g in gs:
                g.copy_(flat[k : k + g.numel()].reshape(g.shape))
                k += g.numel()

    def inverses(self, layers, A, S, damping, invert):
        """Damped inverses: each rank inverts the layers it owns; broadcast them (``"inverses"``)
        or keep them (``"gradients"``). A failure on any rank raises on every rank."""
        from .._errors import NotPositiveDefiniteError

        mine = [i for i in A if self.owns(i)]
        error = None
        try:
            local = invert({i: A[i] for i in mine}, {i: S[i] for i in mine}, damping)
        except NotPositiveDefiniteError as e:
            error, local = e, {}
        if self.comm.any_rank(error is not None):
            if error is not None:
                raise error
            raise NotPositiveDefiniteError(
                f"damped K-FAC inverses failed on another rank (damping {damping}); increase the damping",
                pivot=1, damping=damping)
        if self.distribute == "gradients":
            return local
        return self._share(local, sorted(A), next(iter(A.values())).dtype, layers)

    def _share(self, local, present, dtype, layers):
        """Broadcast each owner's (Ã⁻¹, S̃⁻¹) triangles (diagonals); every rank gets all of them."""
        out = {}
        for r in range(self.comm.world):
            keys = [i for i in present if self.owner_of[i] == r]
            if not keys:
                continue
            if r == self.comm.rank:
                buf = torch.cat([pack_factor(M) for i in keys for M in local[i]])
            else:
                buf = torch.empty(sum(size for i in keys for _, _, size in factor_sides(layers[i])), dtype=dtype,
                                  device=layers[keys[0]].params[0].device)
            self.comm.broadcast(buf, r, "inverses")
            pos = 0
            for i in keys:
                pair = []
                for d, diagonal, size in factor_sides(layers[i]):
                    pair.append(unpack_factor(buf[pos : pos + size], d, diagonal))
                    pos += size
                out[i] = tuple(pair)
        return out

    def share_directions(self, layers, nat_of, dtype):
        """``"gradients"``: broadcast each owner's preconditioned layer matrices; returns all."""
        out = {}
        for r in range(self.comm.world):
            keys = [i for i in range(len(layers)) if self.owner_of[i] == r]
            if not keys:
                continue
            if r == self.comm.rank:
                buf = torch.cat([nat_of(i).reshape(-1).to(dtype) for i in keys])
            else:
                buf = torch.empty(sum(layers[i].shape[0] * layers[i].shape[1] for i in keys), dtype=dtype,
                                  device=layers[keys[0]].params[0].device)
            self.comm.broadcast(buf, r, "directions")
            pos = 0
            for i in keys:
                o, n = layers[i].shape
                out[i] = buf[pos : pos + o * n].reshape(o, n)
                pos += o * n
        return out

    def gather_inverses(self, layers, inverses, dtype):
        """Every rank's own inverses to all ranks (for ``state_dict`` under ``"gradients"``)."""
        held = self.comm.all_gather_object(None if inverses is None else sorted(inverses))
        if any(h is None for h in held):
            return None
        present = sorted({i for h in held for i in h})
        return self._share(inverses, present, dtype, layers)

    def solve_scores(self, J, g, damping, weights, solve_local):
        """``(F + λI)⁻¹ g`` with F over the union of all ranks' score rows (see the module notes)."""
        from .. import _validation

        n, P = J.shape
        counts = [int(c) for c in self.comm.all_gather(torch.tensor([n], dtype=torch.int64, device=J.device), "exact-counts")]
        N = sum(counts)
        if tri(P) <= N * P:  # parameter space: all-reduce the triangle of Σ_r J_rᵀ W_r J_r and Σ w
            w = torch.ones(n, dtype=J.dtype, device=J.device) if weights is None else weights
            G = (J * w[:, None]).T @ J
            buf = torch.cat([tril_pack(G), w.sum().reshape(1)])
            self.comm.all_reduce(buf, "exact-gram")
            F = tril_unpack(buf[:-1], P) / buf[-1]
            F.diagonal().add_(damping)
            L, info = torch.linalg.cholesky_ex(F)
            if int(info):
                raise _validation.not_positive_definite("natural_gradient", _validation.DENSE_MATRIX,
                                                        int(info), P, damping)
            return torch.cholesky_solve(g[:, None].to(F.dtype), L)[:, 0]
        # sample space: all-gather the rows (padded to the largest rank's), Woodbury on every rank
        m = max(counts)
        pad = torch.zeros((m, P + 1), dtype=J.dtype, device=J.device)
        pad[:n, :P] = J
        if weights is not None:
            pad[:n, P] = weights
        parts = self.comm.all_gather(pad, "exact-rows")
        rows = torch.cat([p[:c] for p, c in zip(parts, counts)])
        return solve_local(rows[:, :P].contiguous(), g, damping,
                           None if weights is None else rows[:, P].contiguous())

    def fingerprint_check(self, fingerprint, func):
        check_same(self.comm, fingerprint, func)


__all__ = ["DISTRIBUTE", "Communicator", "Distributed", "FactorReducer", "assign_owners", "enabled",
           "tril_pack", "tril_unpack"]
