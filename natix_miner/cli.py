"""The ``natix-miner`` command.

    natix-miner run --local                      # the neuron (same as python neurons/miner.py)
    natix-miner predict IMAGE [--profile P]      # one image through the cascade, JSON out
    natix-miner profile show|validate [P]        # the cascade as data
    natix-miner evaluate / train / calibrate / data / hard-examples / bench / card / register

Each subcommand lives in its own module that exposes ``add_parser(subparsers)``; the module is
imported to build the parser, so those modules import nothing heavy at top level.
"""

import argparse
import functools
import importlib
import os
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


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless it has none (None, False, suppressed) or the
    help already names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, False, [])
                or action.default is argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="natix-miner", description=__doc__.split("\n\n")[0])
    from natix_miner import __version__

    parser.add_argument("--version", action="version", version=f"natix-miner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # every subcommand's --help shows its defaults (run's flags also show their environment variable)
    sub.add_parser = functools.partial(sub.add_parser, formatter_class=DefaultsHelpFormatter)
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


def quiet_progress() -> None:
    """No progress bar anywhere: tqdm's default becomes disabled (ours and every library's, already
    imported or not), the hub's bars are off, and child processes inherit both through the environment."""
    os.environ["TQDM_DISABLE"] = "True"  # read by tqdm at import: children
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        import tqdm.std
    except ImportError:  # pragma: no cover
        return
    if not getattr(tqdm.std.tqdm.__init__, "_natix_quiet", False):
        quiet_init = functools.partialmethod(tqdm.std.tqdm.__init__, disable=True)
        quiet_init._natix_quiet = True
        tqdm.std.tqdm.__init__ = quiet_init


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):
        quiet_progress()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
