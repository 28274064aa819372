"""The README's layout table matches the tree: every package of natix_miner/ has a row, and every path a
row names exists."""

import os
import re

from tests.support.paths import REPO_ROOT


def _layout_rows() -> list:
    text = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    table = text.split("| path | what lives there |", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", table, flags=re.M)


def test_every_path_in_the_layout_table_exists():
    rows = _layout_rows()
    assert rows, "the layout table is missing"
    assert [r for r in rows if not os.path.exists(os.path.join(REPO_ROOT, r.rstrip("/")))] == []


def test_every_package_has_a_row():
    pkg = os.path.join(REPO_ROOT, "natix_miner")
    packages = sorted(f"natix_miner/{d}/" for d in os.listdir(pkg)
                      if os.path.isfile(os.path.join(pkg, d, "__init__.py")))
    assert sorted(set(packages) - set(_layout_rows())) == []
