"""Regenerate docs/experts.md's options reference from every family's typed ``Options``.

The block between ``<!-- options:begin ...-->`` and ``<!-- options:end -->`` is rewritten; the rest
of the document is left alone. ``--check`` writes nothing and exits 1 when the document is stale
(``tests/commands/test_experts_options.py`` runs the same comparison).

    python scripts/gen_expert_docs.py            # rewrite docs/experts.md
    python scripts/gen_expert_docs.py --check    # exit 1 if it is out of date
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natix_miner.commands.experts import render_docs  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "experts.md"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/experts.md is stale; write nothing")
    args = ap.parse_args(argv)
    old = DOC.read_text()
    try:
        new = render_docs(old)
    except ValueError as exc:
        print(f"error: {DOC}: {exc}", file=sys.stderr)
        return 1
    if args.check:
        if new != old:
            print(f"error: {DOC} is stale; run: python scripts/gen_expert_docs.py", file=sys.stderr)
            return 1
        print(f"ok: {DOC} is up to date")
        return 0
    if new != old:
        DOC.write_text(new)
    print(f"{'wrote' if new != old else 'unchanged'}: {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
