"""``python -m ngdfast bench``: the options, and the run that ties the sections together."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .cases import CASE_SECTIONS, Case, default_plan, run_case, sized_plan
from .report import (
    print_alternating,
    print_header,
    print_result,
    print_reuse,
    print_table_head,
    print_targets,
    write_json,
)
from .targets import check_targets
from .timing import gemm_rate, restart_native

#: The sections, in the order they run: the kernel table, then the two experiments.
KERNELS = CASE_SECTIONS + ("alternating", "reuse")
#: Sections run only when named in ``--kernels`` (they need an optional dependency).
OPTIONAL_SECTIONS = ("torch",)  # ngdfast.bench.torch: ngdfast.torch beside the torch libraries


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ngdfast bench",
        description="Time ngdfast's kernels beside NumPy/SciPy: median time, GFLOP/s, fraction of "
        "the machine's GEMM rate, and speed-up over each peer timed in the same process.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a few seconds)")
    parser.add_argument("--kernels", help=f"comma-separated subset of: {', '.join(KERNELS)} (default: all of "
                        f"these), or also {', '.join(OPTIONAL_SECTIONS)}")
    parser.add_argument("--sizes", help="comma-separated parameter counts P to sweep instead of the default "
                        "cases (fisher N=512, low-rank N=min(256, P/2), K-FAC layer of P inputs, P/2 outputs)")
    parser.add_argument("--dtypes", default="float64,float32", help="with --sizes: dtypes to sweep (default: both)")
    parser.add_argument("--repeats", type=int, help="timed samples per call, median reported (default 5; 3 with --quick)")
    parser.add_argument("--threads", type=int, help="ngdfast.set_num_threads(THREADS) before timing")
    parser.add_argument("--json", metavar="PATH", help="also write every number to PATH as JSON")
    parser.add_argument("--race", action="store_true", help="instead of the kernels: the race, wall time to "
                        "tuned AdamW's final loss on the digits CNN and the character GPT beside SOAP, Shampoo, "
                        "PSGD-Kron, Muon, SINGD and Schedule-Free AdamW (ngdfast.bench.race; needs the bench extra)")
    parser.add_argument("--race-runs", type=int, default=3, metavar="N",
                        help="with --race: runs of each optimizer's best configuration, medians reported (default 3)")
    parser.add_argument("--plot", metavar="PATH", help="with --race: write loss against seconds to PATH (matplotlib)")
    parser.add_argument("--native", action="store_true",
                        help="measure with the BLAS kernels each library picks for this CPU: when "
                        "OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE is set (it forces the kernels of every "
                        "OpenBLAS in the process, and is read when each loads), the bench re-executes "
                        "itself without them; the header names every BLAS's core type either way")
    args = parser.parse_args(argv)
    kernels = args.kernels.split(",") if args.kernels else list(KERNELS)
    unknown = sorted(set(kernels) - set(KERNELS) - set(OPTIONAL_SECTIONS))
    if unknown:
        parser.error(f"unknown kernel(s) {', '.join(unknown)}; choose from {', '.join(KERNELS + OPTIONAL_SECTIONS)}")
    args.kernels = kernels
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    except ValueError:
        parser.error(f"--sizes takes comma-separated integers, got {args.sizes!r}")
    if args.sizes is not None and any(p < 2 for p in args.sizes):
        parser.error("--sizes: every P must be at least 2")
    args.dtypes = args.dtypes.split(",")
    if set(args.dtypes) - {"float64", "float32"}:
        parser.error(f"--dtypes takes float64 and/or float32, got {','.join(args.dtypes)}")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.race_runs < 1:
        parser.error("--race-runs must be at least 1")
    if args.plot and not args.race:
        parser.error("--plot goes with --race")
    return args


def main(argv: list[str] | None = None) -> int:
    """``python -m ngdfast bench``: print the table, optionally write JSON.

    Returns 0, or 1 when some kernel's answer disagreed with a peer's beyond
    the dtype's tolerance (timing targets never change the exit status). With
    ``--race``: the race instead (:mod:`ngdfast.bench.race`); 1 when its bookkeeping,
    recomputed from the recorded curves, disagrees.
    """
    args = parse_args(argv)
    if args.native:
        restart_native(argv)  # returns only when no kernel variable is set
    out = sys.stdout
    from .. import get_num_threads, set_num_threads

    if args.threads is not None:
        set_num_threads(args.threads)
    if args.race:
        return _race(args, out)

    gemm_n = 256 if args.quick else 2048
    # Every fraction divides by this rate: more samples than the kernels get, so
    # that one burst of load from elsewhere cannot skew the whole table.
    gemm = {dt: gemm_rate(dt, gemm_n, max(2 * args.repeats + 1, 5)) for dt in ("float64", "float32")}
    machine = print_header(gemm, out)
    machine["ngdfast_threads"] = get_num_threads()

    plan = sized_plan(args.sizes, args.dtypes) if args.sizes else default_plan(args.quick)
    print_table_head(out)
    results: list[tuple[Case, dict[str, Any]]] = []
    for section in CASE_SECTIONS:
        if section not in args.kernels or section not in plan:
            continue
        for case in plan[section]:
            r = run_case(case, args.repeats, gemm)
            r["section"] = section
            results.append((case, r))
            print_result(r, section, out)

    alternating = []
    if "alternating" in args.kernels:
        from .interference import alternating as run_alternating

        alternating = run_alternating(args.quick, args.repeats)
        print_alternating(alternating, out)

    reuse = None
    if "reuse" in args.kernels:
        from .reuse import factor_reuse

        reuse = factor_reuse(args.quick, args.repeats)
        print_reuse(reuse, out)

    checked = check_targets(results)
    if checked:
        print_targets(checked, out)

    torch_section = None
    if "torch" in args.kernels:
        from .torch import run as run_torch  # imports torch: only when asked

        torch_section = run_torch(args.quick, args.repeats, out)

    bad = [r for _, r in results if not r["ok"]]
    for r in bad:
        print(f"MISMATCH: {r['kernel']} {r['size']} {r['dtype']}: max relative difference "
              f"{r['error']:.2e} > {r['tolerance']:.0e}", file=out)
    if args.json:
        write_json(args.json, {
            "machine": machine,
            "gemm": gemm,
            "repeats": args.repeats,
            "results": [r for _, r in results],
            "alternating": alternating,
            "reuse": reuse,
            "targets": [verdict for _, verdict in checked],
            "torch": torch_section,
        }, out)
    return 1 if bad or (torch_section and torch_section["mismatch"]) else 0


def _race(args: argparse.Namespace, out) -> int:
    from . import race  # imports torch: only when asked

    result = race.run(args.quick, args.race_runs, out, show_progress=sys.stderr.isatty())
    if args.json:
        race.write_json(args.json, result, out)
    if args.plot:
        race.plot(result, args.plot, out)
    problems = [f"{name}: {p}" for name, record in result["tasks"].items()
                for p in race.verify(record, args.race_runs)]
    for p in problems:  # the bookkeeping recomputed from the curves: a mismatch is a bug
        print(f"RACE BOOKKEEPING: {p}", file=out)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
