"""The ``natix-miner`` command.

    natix-miner run --local                      # the neuron (same as python neurons/miner.py)
    natix-miner predict IMAGE [--profile P]      # one image through the cascade, JSON out
    natix-miner profile show|validate [P]        # the cascade as data
    natix-miner evaluate / train / calibrate / data / hard-examples / bench / card / register

Each subcommand lives in its own module that exposes ``add_parser(subparsers)``; the module is
imported to build the parser, so those modules import nothing heavy at top level.
"""

import argparse
import importlib
import sys
import typing

# subcommand -> module exposing add_parser(subparsers) which sets func=callable(args) -> int
COMMANDS: typing.List[typing.Tuple[str, str]] = [
    ("run", "natix_miner.commands.run"),
    ("soak", "natix_miner.soak"),
    ("predict", "natix_miner.commands.predict"),
    ("profile", "natix_miner.commands.profile"),
    ("models", "natix_miner.commands.models"),
    ("experts", "natix_miner.commands.experts"),
    ("evaluate", "natix_miner.training.commands"),
    ("bench", "natix_miner.commands.bench"),
    ("card", "natix_miner.ops.commands"),
    ("register", "natix_miner.ops.commands"),
    ("mock-validator", "natix_miner.validator.cli"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="natix-miner", description=__doc__.split("\n\n")[0])
    from natix_miner import __version__

    parser.add_argument("--version", action="version", version=f"natix-miner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen = set()
    for _, module in COMMANDS:
        if module in seen:
            continue
        seen.add(module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("natix_miner"):
                continue  # a command module not present in this build
            raise
        mod.add_parser(sub)
    return parser


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
