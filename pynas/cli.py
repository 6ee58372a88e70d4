"""The `pynas` command."""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pynas", description="Differentiable NAS with fused kernels.")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="benchmark the fused ops against eager PyTorch")
    from . import bench as bench_module

    bench_module.add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench_module.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
