"""`pynas analyze cost|evolution|topology|variants|landscape`: each analysis
registers its own sub-command; every one writes JSON and PNGs under --out."""
from . import edge_cost, evolution, landscape, topology


def add_arguments(parser) -> None:
    commands = parser.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for module in (edge_cost, evolution, topology, landscape):
        module.register_commands(commands)


def run(args) -> int:
    return args.func(args)
