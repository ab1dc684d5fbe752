"""Cost model of data-parallel K-FAC in ngdfast.torch: communication bytes and per-rank compute.

Run ``python bench/comm_model.py`` for the table on ResNet-50's K-FAC layers (2 to 1024 ranks);
``bench/bench_distributed.py`` checks :func:`payload` against the bytes the preconditioner
counts at 2 and 4 ranks. See docs/distributed.md.

Conventions. A layer is (out, in) with the bias as an input column (K-FAC's A is in × in, S is
out × out). ``elem`` is the statistics' element size (4: float32). *Payload* is what the
preconditioner counts (``Preconditioner.communication``): the bytes each rank puts into an
all-reduce, and the bytes an owner broadcasts. *Wire* bytes per rank are those of the usual
bandwidth-optimal algorithms: ring all-reduce sends 2(R−1)/R · payload per rank; a broadcast
of b bytes to R ranks makes each non-owner receive b, i.e. (R−1)/R · b per rank on average.
"""

from __future__ import annotations

import argparse

from ngdfast.torch._distributed import assign_owners  # the rule the library uses


def tri(d: int) -> int:
    return d * (d + 1) // 2


def resnet50_layers() -> list[tuple[str, int, int]]:
    """ResNet-50 (torchvision v1.5: stride in the 3×3) K-FAC layers: (name, out, in).

    Convolutions have no bias (in = C_in·kh·kw); the classifier has one (in = 2048 + 1).
    53 convolutions + 1 Linear = 54 layers.
    """
    layers = [("conv1", 64, 3 * 7 * 7)]
    c_in = 64
    for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        c_out = 4 * width
        for b in range(blocks):
            name = f"layer{stage}.{b}"
            layers += [(f"{name}.conv1", width, c_in), (f"{name}.conv2", width, width * 9),
                       (f"{name}.conv3", c_out, width)]
            if b == 0:
                layers.append((f"{name}.downsample", c_out, c_in))
            c_in = c_out
    layers.append(("fc", 1000, 2048 + 1))
    return layers


def payload(shapes, world, factor_interval=1, inverse_interval=1, distribute="inverses", elem=4,
            diagonal=0):
    """Counted payload bytes per step, summed over ranks, by kind (what the preconditioner reports).

    ``shapes``: [(out, in)]; ``diagonal``: numbers of the diagonal-fallback parameters.
    Buckets: one (the factor buffers here are below the 25 MB cap) plus the counts (n and one
    per item); with bigger models add one count per extra bucket (negligible).
    """
    items = len(shapes) + (1 if diagonal else 0)
    factors = (sum(tri(i) + tri(o) for o, i in shapes) + diagonal + 1 + items) * elem
    out = {"factors": world * factors / factor_interval}
    if distribute == "inverses":
        out["inverses"] = sum(tri(i) + tri(o) for o, i in shapes) * elem / inverse_interval
    else:
        out["directions"] = sum(o * i for o, i in shapes) * elem
    return out


def naive(shapes, world, elem=4):
    """All-reduce of the full factors every step (payload summed over ranks)."""
    return world * sum(i * i + o * o for o, i in shapes) * elem


def per_rank(shapes, world, factor_interval=1, inverse_interval=1, distribute="inverses", elem=4):
    """Per-rank wire bytes per step and per-rank second-order compute (flops per step)."""
    p = payload(shapes, world, factor_interval, inverse_interval, distribute, elem)
    ring = 2 * (world - 1) / world
    wire = ring * p["factors"] / world
    costs = [float(i**3 + o**3) for o, i in shapes]
    owner = assign_owners(costs, world)
    load = [0.0] * world
    for c, r in zip(costs, owner):
        load[r] += c
    inv_flops = max(load) / inverse_interval  # Cholesky + inverse ≈ d³ flops per factor
    mult = [2.0 * (o * o * i + o * i * i) for o, i in shapes]  # S⁻¹ G A⁻¹
    if distribute == "inverses":
        wire += (world - 1) / world * p["inverses"]
        apply_flops = sum(mult)
    else:
        wire += (world - 1) / world * p["directions"]
        busy = [0.0] * world
        for m, r in zip(mult, owner):
            busy[r] += m
        apply_flops = max(busy)
    return {"wire_bytes": wire, "inverse_flops": inv_flops, "apply_flops": apply_flops,
            "max_over_mean_inverse_load": max(load) / (sum(load) / world),
            "naive_wire_bytes": ring * naive(shapes, world, elem) / world}


def table(factor_interval, inverse_interval, elem=4):
    shapes = [(o, i) for _, o, i in resnet50_layers()]
    rows = []
    for world in [2**k for k in range(1, 11)]:
        inv = per_rank(shapes, world, factor_interval, inverse_interval, "inverses", elem)
        grad = per_rank(shapes, world, factor_interval, inverse_interval, "gradients", elem)
        rows.append((world, inv["naive_wire_bytes"], inv["wire_bytes"], grad["wire_bytes"],
                     inv["inverse_flops"], inv["apply_flops"], grad["apply_flops"], inv["max_over_mean_inverse_load"]))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factor-interval", type=int, default=1)
    ap.add_argument("--inverse-interval", type=int, default=1)
    ap.add_argument("--elem", type=int, default=4, help="bytes per number (4: float32)")
    args = ap.parse_args(argv)
    shapes = [(o, i) for _, o, i in resnet50_layers()]
    print(f"ResNet-50: {len(shapes)} K-FAC layers, factors {sum(i*i + o*o for o, i in shapes)/1e6:.1f} M numbers "
          f"(triangles {sum(tri(i) + tri(o) for o, i in shapes)/1e6:.1f} M), weights {sum(o*i for o, i in shapes)/1e6:.1f} M; "
          f"largest factor {max(max(o, i) for o, i in shapes)}; "
          f"factor_interval={args.factor_interval}, inverse_interval={args.inverse_interval}, {args.elem}-byte numbers")
    print(f"{'ranks':>5} {'naive MB':>9} {'inverses MB':>12} {'gradients MB':>13} {'inv GFLOP':>10} "
          f"{'apply GF inv':>13} {'apply GF grad':>14} {'max/mean':>9}")
    for w, nv, a, b, fl, ap_i, ap_g, imb in table(args.factor_interval, args.inverse_interval, args.elem):
        print(f"{w:>5} {nv/1e6:>9.1f} {a/1e6:>12.1f} {b/1e6:>13.1f} {fl/1e9:>10.1f} {ap_i/1e9:>13.2f} "
              f"{ap_g/1e9:>14.3f} {imb:>9.2f}")


if __name__ == "__main__":
    main()
