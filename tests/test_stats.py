"""The one percentile behind every reported latency: nearest rank, hand-computed cases."""

import pytest

from natix_miner.stats import percentile


def test_nearest_rank_on_hand_computed_cases():
    xs = list(range(1, 101))  # 1..100, shuffled order must not matter
    assert percentile(reversed(xs), 50) == 50
    assert percentile(xs, 99) == 99 and percentile(xs, 100) == 100 and percentile(xs, 1) == 1
    assert percentile([10.0, 20.0], 50) == 10.0  # a sample that happened, not 15 by interpolation
    assert percentile([10.0, 20.0], 51) == 20.0
    assert percentile([7.5], 99) == 7.5
    assert percentile([3, 1, 2], 99) == 3


def test_empty_and_bad_q():
    assert percentile([], 50) is None
    for q in (0, -1, 101):
        with pytest.raises(ValueError):
            percentile([1.0], q)


def test_reports_use_the_one_percentile():
    """Latency and dataset reports give nearest-rank values (samples that happened), and no module
    defines a second percentile through numpy."""
    import pathlib
    import re

    from natix_miner.training.evaluate import _latency
    from natix_miner.training.validate import _stats
    from tests.support.paths import REPO_ROOT

    lat = _latency([0.010, 0.020, 0.030, 0.900])  # seconds -> milliseconds
    assert (lat["p50"], lat["p95"], lat["p99"]) == (20.0, 900.0, 900.0)
    assert _stats([1.0, 2.0, 3.0, 4.0]) == {"min": 1.0, "p5": 1.0, "median": 2.0, "p95": 4.0, "max": 4.0}
    numpy_pct = re.compile(r"\b(np|numpy)\.(nan)?(percentile|quantile)\(")
    root = pathlib.Path(REPO_ROOT)
    offenders = [str(p.relative_to(root)) for p in (root / "natix_miner").rglob("*.py")
                 if numpy_pct.search(p.read_text(encoding="utf-8"))]
    assert offenders == [], f"use natix_miner.stats.percentile in {offenders}"
