"""Local testnet: replay the live StreetVision validator against miners on loopback.

    python scripts/mock_validator.py --spawn-miner --n 200 --json out.json
    python scripts/mock_validator.py HOST:PORT:HOTKEY [...] --concurrency 8 --plot run.png

All flags: ``python scripts/mock_validator.py --help``; docs/mock-validator.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from natix_miner.validator.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
