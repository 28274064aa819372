"""Thin entry point: ``python scripts/soak.py [--seconds 60 --rate 20 ...]`` (see natix_miner/soak.py).

Exit code 1 when any request got no valid answer within its timeout.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from natix_miner.soak import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
