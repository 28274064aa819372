"""natix_miner.cli.COMMANDS is the one registry of subcommands: the parser is built from it, --help lists
exactly it, every command's --help works, and a module cannot add a command the table does not name."""

import argparse
import ast
import os
import subprocess
import sys
import types

import pytest

from natix_miner import cli
from tests.support.paths import REPO_ROOT

NAMES = [name for name, _ in cli.COMMANDS]


def _choices(parser: argparse.ArgumentParser) -> list:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a.dest for a in sub._choices_actions], sorted(sub.choices)


def test_the_parser_offers_exactly_the_table_in_its_order():
    listed, choices = _choices(cli.build_parser())
    assert listed == NAMES
    assert choices == sorted(NAMES)
    assert len(set(NAMES)) == len(NAMES)


def test_top_level_help_in_a_fresh_process_lists_the_table():
    out = subprocess.run([sys.executable, "-m", "natix_miner.cli", "--help"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    block = out.stdout.split("COMMAND\n", 1)[1].split("\noptions:", 1)[0]
    shown = [ln.split()[0] for ln in block.splitlines() if ln.startswith("    ") and not ln.startswith("     ")]
    assert shown == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_command_has_a_working_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: natix-miner {name}")


def test_no_module_outside_the_table_defines_commands():
    """Every module with a top-level ``add_parser`` (the command-module signature) is a row's module."""
    table = {module for _, module in cli.COMMANDS}
    root = os.path.join(REPO_ROOT, "natix_miner")
    found = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            tree = ast.parse(open(path, encoding="utf-8").read())
            if any(isinstance(n, ast.FunctionDef) and n.name == "add_parser" for n in tree.body):
                rel = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, ".")
                found.add(rel)
    assert found == table


def _fake(monkeypatch, define: list, rows: list):
    def add_parser(sub):
        for name in define:
            sub.add_parser(name, help="x").set_defaults(func=lambda a: 0)

    mod = types.ModuleType("natix_miner_fake_cmds")
    mod.add_parser = add_parser
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(cli, "COMMANDS", [(n, mod.__name__) for n in rows])


def test_a_command_missing_from_the_table_is_refused(monkeypatch):
    _fake(monkeypatch, define=["alpha", "beta"], rows=["alpha"])
    with pytest.raises(cli.CommandTableError, match=r"'beta'.*not in natix_miner.cli.COMMANDS"):
        cli.build_parser()


def test_a_row_whose_module_does_not_define_it_is_refused(monkeypatch):
    _fake(monkeypatch, define=["alpha"], rows=["alpha", "gamma"])
    with pytest.raises(cli.CommandTableError, match=r"\['gamma'\]"):
        cli.build_parser()
    _fake(monkeypatch, define=["alpha"], rows=["alpha"])
    assert _choices(cli.build_parser())[0] == ["alpha"]


def test_building_the_parser_imports_nothing_heavy():
    """Every command module is imported to build the parser: none may import a model library at top level."""
    code = ("import sys; from natix_miner import cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'ultralytics', 'timm', 'ray', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_command_imports_only_its_own_module():
    """`natix-miner run ...` builds the parser of run's module alone: another command's module (here the
    training commands) is never imported, so its import problems cannot stop the miner."""
    code = ("import sys; from natix_miner import cli; p = cli.build_parser('run'); "
            "print(sorted(m for m in sys.modules if m in dict((mod, 1) for _, mod in cli.COMMANDS)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['natix_miner.commands.run']"
    assert _choices(cli.build_parser("run"))[0] == ["run"]
    assert _choices(cli.build_parser("no-such-command"))[0] == NAMES  # a typo gets the full list of choices
