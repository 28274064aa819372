"""Thin entry point: ``python scripts/bench_cascade.py [flags]`` (natix_miner/cascade_bench.py).

    python scripts/bench_cascade.py --profile h100x2 --stand-ins /tmp/si --build-stand-ins --scale tiny \\
        --device cpu --concurrency 1,4 --n 8 --out /tmp/h100x2-cpu.json
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from natix_miner.cascade_bench import main  # noqa: E402
from natix_miner.cli import quiet_progress  # noqa: E402

if __name__ == "__main__":
    quiet_progress()  # the [load] / [mode] lines are the progress
    sys.exit(main())
