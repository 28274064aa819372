"""The ``natix-miner`` command.

    natix-miner run --local                      # the neuron (same as python neurons/miner.py)
    natix-miner predict IMAGE [--profile P]      # one image through the cascade, JSON out
    natix-miner profile show|validate [P]        # the cascade as data
    natix-miner evaluate / train / calibrate / data / hard-examples / bench / card / register

:data:`COMMANDS` is the one registry of subcommands: a row per command, naming the module whose
``add_parser(subparsers)`` defines it (one module may define several). :func:`build_parser` imports
each module when the parser is built (``natix-miner X ...``: X's module only; those modules import
nothing heavy at top level, ``tests/test_cli.py`` holds it), hands it a
registrar that refuses any command its rows do not name and checks that it defined every one they
do, and lists the commands in the table's order. A new command is a new row here.
"""

import argparse
import functools
import importlib
import os
import sys
import typing

# subcommand -> module whose add_parser(subparsers) defines it (sets func=callable(args) -> int).
# The only list of commands: `natix-miner --help` shows exactly these, in this order.
COMMANDS: typing.List[typing.Tuple[str, str]] = [
    ("run", "natix_miner.commands.run"),
    ("predict", "natix_miner.commands.predict"),
    ("profile", "natix_miner.commands.profile"),
    ("models", "natix_miner.commands.models"),
    ("experts", "natix_miner.commands.experts"),
    ("mock-validator", "natix_miner.validator.cli"),
    ("data", "natix_miner.training.commands"),
    ("train", "natix_miner.training.commands"),
    ("autolabel", "natix_miner.training.autolabel"),
    ("train-detector", "natix_miner.training.commands"),
    ("train-vlm", "natix_miner.training.vlm_lora"),
    ("calibrate", "natix_miner.training.commands"),
    ("evaluate", "natix_miner.training.commands"),
    ("hard-examples", "natix_miner.training.commands"),
    ("distill", "natix_miner.training.commands"),
    ("build", "natix_miner.commands.build"),
    ("bench", "natix_miner.commands.bench"),
    ("engine", "natix_miner.commands.engine"),
    ("soak", "natix_miner.soak"),
    ("card", "natix_miner.ops.commands"),
    ("register", "natix_miner.ops.commands"),
]


class CommandTableError(RuntimeError):
    """A command module and :data:`COMMANDS` disagree (a command not in the table, or one missing)."""


class _Registrar:
    """The subparsers action as one module sees it: ``add_parser`` only for the names its rows give."""

    def __init__(self, sub, module: str, names: typing.Sequence[str]):
        self._sub, self._module, self._names, self.added = sub, module, list(names), []

    def add_parser(self, name: str, **kwargs):
        if name not in self._names:
            raise CommandTableError(f"{self._module} defines the command {name!r}, which is not in "
                                    f"natix_miner.cli.COMMANDS; add a row ({name!r}, {self._module!r}) there")
        self.added.append(name)
        return self._sub.add_parser(name, **kwargs)

    def __getattr__(self, attr):  # anything else argparse offers (metavar, required, ...)
        return getattr(self._sub, attr)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless it has none (None, False, suppressed) or the
    help already names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, False, [])
                or action.default is argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def build_parser(command: typing.Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of every command in :data:`COMMANDS`; with ``command`` (a row's name), only the module
    of that command is imported (``main`` does so: one command's import problem never stops another)."""
    parser = argparse.ArgumentParser(prog="natix-miner", description=__doc__.split("\n\n")[0])
    from natix_miner import __version__

    parser.add_argument("--version", action="version", version=f"natix-miner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # every subcommand's --help shows its defaults (run's flags also show their environment variable)
    sub.add_parser = functools.partial(sub.add_parser, formatter_class=DefaultsHelpFormatter)
    modules: typing.Dict[str, typing.List[str]] = {}
    for name, module in COMMANDS:
        modules.setdefault(module, []).append(name)
    wanted = dict(COMMANDS).get(command)
    for module, names in modules.items():
        if wanted is not None and module != wanted:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue  # a command module left out of this build (its commands are not offered)
            raise
        registrar = _Registrar(sub, module, names)
        mod.add_parser(registrar)
        missing = [n for n in names if n not in registrar.added]
        if missing:
            raise CommandTableError(f"natix_miner.cli.COMMANDS names {missing} in {module}, whose add_parser "
                                    f"does not define them; remove the rows or define the commands")
    order = [name for name, _ in COMMANDS]
    sub._choices_actions.sort(key=lambda a: order.index(a.dest))  # --help lists the table's order
    by_name = dict(sub._name_parser_map)  # ...and so does "invalid choice" (argparse's choices)
    sub._name_parser_map.clear()
    sub._name_parser_map.update((n, by_name[n]) for n in order if n in by_name)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)  # `natix-miner X ...` imports X's module only
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):
        quiet_progress()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from natix_miner import resources

    try:
        resources.root()  # a wrong NATIX_ROOT is one line here, not a traceback in whichever command reads it
    except resources.RootError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
