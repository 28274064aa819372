"""The validator's reward on hand-computed cases, and against an independent sklearn oracle."""

import math
import warnings

import numpy as np
import pytest

from natix_miner.validator.reward import (ACCURACY_WINDOW, EMA_ALPHA, PerformanceTracker, Scorer,
                                          query_reward, window_metrics)


def oracle_metrics(preds, labels):
    with warnings.catch_warnings():
        return _oracle(preds, labels)


def _oracle(preds, labels):
    """The validator's get_metrics, written out with sklearn (the reference implementation)."""
    from sklearn.metrics import (accuracy_score, f1_score, matthews_corrcoef, precision_score,
                                 recall_score, roc_auc_score)

    keep = [i for i, p in enumerate(preds) if p != -1]
    probs = np.array([preds[i] for i in keep])
    rounded = np.round(probs)
    y = np.array([labels[i] for i in keep])
    if len(y) == 0:
        return 0.0, 0.0
    try:
        warnings.simplefilter("ignore")
        acc = accuracy_score(y, rounded)
        precision_score(y, rounded, zero_division=0)
        recall_score(y, rounded, zero_division=0)
        f1_score(y, rounded, zero_division=0)
        mcc = max(0, matthews_corrcoef(y, rounded)) if len(np.unique(y)) > 1 else 0.0
        if len(np.unique(y)) > 1:
            roc_auc_score(y, probs)
    except Exception:
        return 0.0, 0.0
    return float(acc), float(mcc)


def feed(scorer, preds, labels, uid=0, hotkey="hk"):
    return [scorer.score(uid, hotkey, p, y) for p, y in zip(preds, labels)]


def test_perfect_pair_scores_one():
    m = window_metrics([0.9, 0.2], [1, 0])
    assert (m.accuracy, m.mcc, m.n, m.broken) == (1.0, 1.0, 2, False)
    assert query_reward(0.2, m.mcc, m.accuracy) == 1.0


def test_hand_computed_mcc_and_cube():
    # tp=2 tn=1 fp=1 fn=1 -> MCC = (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6 ; accuracy 3/5
    m = window_metrics([0.8, 0.1, 0.3, 0.7, 0.99], [1, 1, 0, 0, 1])
    assert m.mcc == pytest.approx(1 / 6)
    assert m.accuracy == pytest.approx(0.6)
    assert query_reward(0.99, m.mcc, m.accuracy) == pytest.approx((0.5 / 6 + 0.3) ** 3)


def test_exactly_half_rounds_to_no_roadwork():
    assert window_metrics([0.5], [0]).accuracy == 1.0
    assert window_metrics([0.5], [1]).accuracy == 0.0
    assert window_metrics([0.5000001], [1]).accuracy == 1.0
    m = window_metrics([0.5, 0.9], [0, 1])
    assert (m.accuracy, m.mcc) == (1.0, 1.0)


def test_one_class_labels_give_zero_mcc():
    m = window_metrics([0.9, 0.8, 0.7], [1, 1, 1])
    assert (m.accuracy, m.mcc) == (1.0, 0.0)
    assert query_reward(0.7, m.mcc, m.accuracy) == pytest.approx(0.125)


def test_one_class_predictions_give_zero_mcc():
    m = window_metrics([0.9, 0.9, 0.9, 0.9], [1, 0, 1, 0])
    assert (m.accuracy, m.mcc) == (0.5, 0.0)
    assert query_reward(0.9, m.mcc, m.accuracy) == pytest.approx(0.25 ** 3)


def test_negative_mcc_is_floored():
    m = window_metrics([0.1, 0.9], [1, 0])
    assert (m.accuracy, m.mcc) == (0.0, 0.0)


def test_timeouts_score_zero_and_are_skipped_by_the_metrics():
    s = Scorer()
    feed(s, [0.9, 0.1] * 5, [1, 0] * 5)                       # 10 perfect answers
    q = s.score(0, "hk", -1.0, 1)                             # a timeout
    assert q.reward == 0.0 and q.mcc_100 == 1.0 and q.accuracy_10 == 1.0
    for _ in range(ACCURACY_WINDOW - 1):                     # the last 10 are now all timeouts
        q = s.score(0, "hk", -1.0, 0)
    assert q.accuracy_10 == 0.0 and q.mcc_100 == 1.0 and q.reward == 0.0
    q = s.score(0, "hk", 0.8, 1)                              # 9 timeouts + 1 right answer
    assert q.accuracy_10 == 1.0
    assert q.reward == pytest.approx(1.0)


def test_out_of_range_scores_zero_but_keeps_metrics():
    s = Scorer()
    feed(s, [0.9, 0.1], [1, 0])
    q = s.score(0, "hk", 1.2, 1)            # rounds to 1: metrics fine, penalty zeroes the query
    assert q.reward == 0.0 and q.accuracy_10 == 1.0 and not q.broken
    q = s.score(0, "hk", 0.2, 0)
    assert q.reward == pytest.approx(1.0)
    q = s.score(0, "hk", -0.5, 0)           # numpy.round(-0.5) == -0.0: a valid class 0
    assert q.reward == 0.0 and not q.broken and q.accuracy_10 == 1.0


@pytest.mark.parametrize("bad", [float("nan"), 1.5, 2.0, -0.6, float("inf"), -2.0])
def test_nan_and_far_values_zero_every_metric_while_in_the_window(bad):
    s = Scorer()
    feed(s, [0.9, 0.1], [1, 0])
    q = s.score(0, "hk", bad, 1)
    assert q.broken and q.reward == 0.0 and q.mcc_100 == 0.0 and q.accuracy_10 == 0.0
    rewards = [q.reward for q in feed(s, [0.9, 0.1] * 6, [1, 0] * 6)]
    # the bad entry is in the last 10 for 9 more queries: every metric 0
    assert rewards[:9] == [0.0] * 9
    # then accuracy(10) recovers, MCC(100) stays 0 while the entry is in the last 100
    q = feed(s, [0.9], [1])[0]
    assert q.accuracy_10 == 1.0 and q.mcc_100 == 0.0 and q.reward == pytest.approx(0.125)
    n_seen = 2 + 1 + 12 + 1                  # the bad entry is the 3rd of 16 so far
    k = 100 - n_seen + 2                     # after k more, it is the oldest of the last 100
    q = feed(s, ([0.9, 0.1] * 50)[:k], ([1, 0] * 50)[:k])[-1]
    assert q.broken and q.mcc_100 == 0.0
    q = s.score(0, "hk", 0.9, 1)             # now it has left the window
    assert not q.broken and q.mcc_100 == 1.0 and q.reward == pytest.approx(1.0)


def test_minus_one_is_no_answer_even_mid_window():
    m = window_metrics([-1, 0.9, -1, 0.2], [0, 1, 1, 0])
    assert (m.accuracy, m.mcc, m.n) == (1.0, 1.0, 2)
    assert window_metrics([-1, -1], [0, 1]).n == 0


def test_hotkey_change_resets_history_and_ema():
    s = Scorer()
    feed(s, [0.1, 0.9] * 3, [1, 0] * 3)
    assert s.ema[0] == 0.0
    q = s.score(0, "new-hotkey", 0.9, 1)
    assert q.accuracy_10 == 1.0 and len(s.tracker.predictions[0]) == 1


def test_ema_alpha():
    s = Scorer()
    r = [q.reward for q in feed(s, [0.9, 0.1, 0.9], [1, 0, 0])]
    ema = 0.0
    for x in r:
        ema = EMA_ALPHA * x + (1 - EMA_ALPHA) * ema
    assert s.ema[0] == pytest.approx(ema)
    assert r[0] == pytest.approx(0.125) and r[1] == 1.0


def test_history_is_100_deep():
    t = PerformanceTracker()
    for i in range(150):
        t.update(7, 0.9, 1, "hk")
    assert len(t.predictions[7]) == 100


def test_matches_the_sklearn_oracle_on_random_windows():
    rng = np.random.default_rng(1)
    weird = [-1.0, 0.5, 1.0, 0.0, 1.49, 1.5, -0.5, -0.51, float("nan"), 1.2, -0.2]
    for trial in range(150):
        n = int(rng.integers(1, 30))
        labels = rng.integers(0, 2, n).tolist()
        preds = rng.random(n).tolist()
        if trial % 2:
            for k in rng.integers(0, n, int(rng.integers(1, 3))):
                preds[k] = float(rng.choice(weird))
        m = window_metrics(preds, labels)
        acc, mcc = oracle_metrics(preds, labels)
        assert m.accuracy == pytest.approx(acc, abs=1e-12), (preds, labels)
        assert m.mcc == pytest.approx(mcc, abs=1e-12), (preds, labels)


def test_reward_is_finite_and_in_unit_interval():
    s = Scorer()
    rng = np.random.default_rng(2)
    for _ in range(120):
        q = s.score(1, "hk", float(rng.choice([rng.random(), -1.0, 1.7, float("nan")])), int(rng.integers(0, 2)))
        assert math.isfinite(q.reward) and 0.0 <= q.reward <= 1.0
        assert 0.0 <= s.ema[1] <= 1.0
