"""Bytes per step and step time of data-parallel K-FAC (ngdfast.torch on gloo, loopback).

``python bench/bench_distributed.py`` runs an MLP (float32, 256-512-512-10, 64 samples per rank)
at 1, 2 and 4 processes, one torch thread each, for three settings, and prints per step: the
bytes the preconditioner put into collectives (``Preconditioner.communication``, payload summed
over ranks), the naive scheme's (all-reduce of the full factors every step), the cost model's
prediction (bench/comm_model.py), and the median step time of rank 0. On a 2-core machine 4
ranks are oversubscribed: the step times say what the collectives and the duplicated work
cost, not what a cluster would do. Not a test: no pass/fail on time.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = [256, 512, 512, 10]
LOCAL = 64
WARMUP, STEPS = 0, 20  # 20 steps: a multiple of the intervals, so per-step bytes are exact averages
SETTINGS = {
    "every step, inverses": dict(factor_interval=1, inverse_interval=1, distribute="inverses"),
    "every step, gradients": dict(factor_interval=1, inverse_interval=1, distribute="gradients"),
    "intervals 10/10, inverses": dict(factor_interval=10, inverse_interval=10, distribute="inverses"),
}


def model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    mods = []
    for a, b in zip(SIZES[:-1], SIZES[1:]):
        mods += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*mods[:-1])


def worker(rank, world, port, setting, out):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import ngdfast.torch as ngt

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=120))
    net = model()
    precond = ngt.Preconditioner(net, fisher="empirical", kl_radius=1e-3, damping=1e-2, **SETTINGS[setting])
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    g = torch.Generator().manual_seed(100 + rank)
    times, before = [], None
    for s in range(WARMUP + STEPS):
        x = torch.randn(LOCAL, SIZES[0], generator=g)
        y = torch.randint(0, SIZES[-1], (LOCAL,), generator=g)
        if s == WARMUP:
            before = dict(precond.communication)
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        precond.step()
        opt.step()
        times.append(time.perf_counter() - t0)
    after = precond.communication
    sent = {k: (after[k] - before.get(k, 0)) / STEPS for k in after}
    every = [None] * world
    if world > 1:
        dist.all_gather_object(every, sent)
        dist.destroy_process_group()
    else:
        every = [sent]
    if rank == 0:
        Path(out).write_text(json.dumps({"bytes": every, "median_s": statistics.median(times[3:])}))


def run(world, setting):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        procs = [subprocess.Popen([sys.executable, __file__, "worker", str(r), str(world), str(port), setting, str(out)],
                                  env=env) for r in range(world)]
        for p in procs:
            if p.wait(timeout=600) != 0:
                raise RuntimeError(f"rank failed ({setting}, {world} ranks)")
        return json.loads(out.read_text())


def main():
    sys.path.insert(0, str(HERE))
    import comm_model

    shapes = [(b, a + 1) for a, b in zip(SIZES[:-1], SIZES[1:])]
    print(f"MLP {SIZES} float32, {LOCAL} samples per rank, fisher='empirical', one torch thread per rank, "
          f"{os.cpu_count()} cores (4 ranks oversubscribed); bytes are payload per step summed over ranks "
          f"(gradient all-reduce not included), median of {STEPS} steps")
    print(f"{'setting':<27} {'ranks':>5} {'factors':>10} {'inv/dir':>10} {'total':>10} {'model':>10} {'naive':>10} "
          f"{'nv/factors':>10} {'nv/total':>9} {'step ms':>8}")
    for setting, kw in SETTINGS.items():
        for world in (1, 2, 4):
            r = run(world, setting)
            tot = {}
            for b in r["bytes"]:
                for k, v in b.items():
                    tot[k] = tot.get(k, 0) + v
            ours = tot.get("factors", 0) + tot.get("inverses", 0) + tot.get("directions", 0)
            pred = comm_model.payload(shapes, world, kw["factor_interval"], kw["inverse_interval"], kw["distribute"])
            naive = comm_model.naive(shapes, world) if world > 1 else 0
            second = tot.get("inverses", tot.get("directions", 0))
            fac = tot.get("factors", 0)
            print(f"{setting:<27} {world:>5} {fac:>10.0f} {second:>10.0f} {ours:>10.0f} "
                  f"{sum(pred.values()) if world > 1 else 0:>10.0f} {naive:>10.0f} "
                  f"{(naive / fac if fac else float('nan')):>10.2f} {(naive / ours if ours else float('nan')):>9.2f} "
                  f"{1e3 * r['median_s']:>8.1f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])
    else:
        main()
