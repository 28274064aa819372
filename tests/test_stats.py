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
