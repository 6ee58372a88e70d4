"""`pynas bench`: the ops benchmark (also plain ``pynas bench``) and the sub-commands ``search`` and ``memory``."""
import argparse

from . import memory, ops, search


def add_arguments(parser):
    """The ops benchmark's options on ``parser`` itself (plain ``pynas bench``), and
    the sub-commands ``ops`` (the same), ``search`` and ``memory``."""
    ops.add_arguments(parser)
    commands = parser.add_subparsers(dest="bench_command", metavar="{ops,search,memory}")
    ops.add_arguments(commands.add_parser("ops", help="the fused ops against their eager forms (the default)"))
    search.add_arguments(commands.add_parser(
        "search", help="whole search steps: the fused supernet against the eager way",
        description=search.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    memory.add_arguments(commands.add_parser(
        "memory", help="the memory of a search step per image, and the largest batch within a budget",
        description=memory.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))


def run(args) -> int:
    command = getattr(args, "bench_command", None)
    if command == "search":
        return search.run(args)
    if command == "memory":
        return memory.run(args)
    return ops.run(args)
