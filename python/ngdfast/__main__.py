"""Command line: ``python -m ngdfast {demo,bench,info}``."""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ngdfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="train on real data: NGD beside gradient descent and Adam", add_help=False)
    sub.add_parser("bench", help="time the kernels beside NumPy/SciPy", add_help=False)
    sub.add_parser("info", help="build, SIMD, threads and available backends", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from .demo import main as run
    elif args.command == "bench":
        from .bench.cli import main as run
    else:
        from .info import main as run
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
