"""One percentile for every latency figure the project reports (benchmark, soak, mock validator).

Nearest rank: the smallest sample with at least ``q`` percent of the samples at or below it, so a
reported p99 is always a latency that really happened (no interpolation between two requests).

Usage::

    from natix_miner.stats import percentile
    percentile([12.0, 15.0, 900.0], 50)     # 15.0
    percentile([], 99)                      # None
"""

import math
import typing


def percentile(values: typing.Iterable[float], q: float) -> typing.Optional[float]:
    """Nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; None when there are none."""
    if not 0 < q <= 100:
        raise ValueError(f"percentile q must be in (0, 100], got {q}")
    v = sorted(values)
    if not v:
        return None
    return float(v[max(0, math.ceil(q / 100.0 * len(v)) - 1)])
