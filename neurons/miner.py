"""Thin entry point: ``python neurons/miner.py --netuid 72 --wallet.name ... --axon.port 8091``.

All flags: ``natix-miner run --help``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from natix_miner.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
