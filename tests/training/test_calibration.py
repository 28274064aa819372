"""Metrics the way the validator counts, calibration to a 0.5 threshold, consensus fitting."""

import json

import numpy as np
import pytest

from natix_miner.training import calibrate as cal
from natix_miner.training import metrics as M


def test_rounding_and_hand_computed_metrics():
    # exactly 0.5 is class 0 (numpy.round), like the validator
    assert M.round_like_validator([0.5, 0.5000001, 0.49, 1.0, 0.0]).tolist() == [0, 1, 0, 1, 0]
    y = [1, 1, 1, 0, 0, 0, 1, 0]
    p = [0.9, 0.8, 0.4, 0.1, 0.6, 0.2, 0.7, 0.5]
    m = M.binary_metrics(y, p)
    assert m["confusion"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 3}
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["mcc"] == pytest.approx((3 * 3 - 1 * 1) / 16)
    assert m["reward_proxy"] == pytest.approx((0.5 * 0.5 + 0.5 * 0.75) ** 3)
    # anti-correlated answers: MCC is negative, the proxy floors it at 0 like the validator
    bad = M.binary_metrics([1, 0, 1, 0], [0.1, 0.9, 0.2, 0.8])
    assert bad["mcc"] == pytest.approx(-1.0) and bad["reward_proxy"] == pytest.approx(0.0)
    # one class in the predictions: MCC 0
    assert M.binary_metrics([1, 0, 1, 0], [0.9] * 4)["mcc"] == 0.0
    with pytest.raises(ValueError):
        M.binary_metrics([0, 2], [0.1, 0.2])


def test_best_threshold_finds_the_separating_point():
    y = np.array([0] * 50 + [1] * 50)
    p = np.concatenate([np.linspace(0.6, 0.84, 50), np.linspace(0.86, 0.99, 50)])
    t, mcc = M.best_threshold(y, p)
    assert 0.84 <= t < 0.86 and mcc == pytest.approx(1.0)
    assert M.binary_metrics(y, p)["mcc"] == 0.0  # at 0.5 everything is "roadwork"


def _skewed(n=3000, seed=0, shift=2.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    z = np.where(y == 1, rng.normal(1.2, 1.0, n), rng.normal(-1.2, 1.0, n)) + shift
    return z, y


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibration_moves_the_best_threshold_to_half(method):
    z, y = _skewed(n=20000)
    before_t, _ = M.best_threshold(y, cal.sigmoid(z))
    assert before_t > 0.75  # the skew: 0.5 is far from MCC-optimal
    before = M.binary_metrics(y, cal.sigmoid(z))
    c = cal.calibrate_logits(z[:10000], y[:10000], method=method)
    t_fit, best_fit = M.best_threshold(y[:10000], c(z[:10000]))
    se = (1 - best_fit ** 2) / np.sqrt(10000 - 1)
    assert M.binary_metrics(y[:10000], c(z[:10000]))["mcc"] >= best_fit - se  # 0.5 is (within noise) the best
    assert abs(t_fit - 0.5) < 0.1
    p_new = c(z[10000:])  # held out: 0.5 is within noise of the best threshold
    t, best_mcc = M.best_threshold(y[10000:], p_new)
    after = M.binary_metrics(y[10000:], p_new)
    assert abs(t - 0.5) < 0.1
    assert after["mcc"] > best_mcc - 0.01
    assert after["mcc"] > before["mcc"] + 0.2
    assert after["ece"] < 0.05
    assert 0.0 < c.threshold_before < 1.0  # measured after the fit, before the final shift


def test_temperature_refuses_anticorrelated_logits():
    z, y = _skewed()
    with pytest.raises(ValueError, match="separate"):
        cal.fit_temperature(-z, y)
    with pytest.raises(ValueError, match="both classes"):
        cal.fit_temperature(z, np.ones_like(y))


def test_the_threshold_moves_only_on_evidence():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 60)
    p = np.clip(0.5 + 0.1 * (y - 0.5) + rng.normal(0, 0.2, 60), 0.01, 0.99)  # weak and small: flat curve
    assert cal.threshold_to_move(y, p) == 0.5
    z, y = _skewed(n=4000)
    t = cal.threshold_to_move(y, cal.sigmoid(z))
    assert t > 0.75 and t == M.best_threshold(y, cal.sigmoid(z))[0]


def test_remap_threshold_is_monotone_and_keeps_classes():
    p = np.linspace(0, 1, 101)
    q = cal.remap_threshold(p, 0.8)
    assert np.all(np.diff(q) >= 0)
    assert np.array_equal(M.round_like_validator(q), (p > 0.8).astype(int))


def test_logistic_consensus_recovers_a_useful_weighting():
    rng = np.random.default_rng(1)
    n = 4000
    y = rng.integers(0, 2, n)
    signal = np.where(y == 1, 1.0, -1.0)
    good = 2.5 * signal + rng.normal(0, 1.5, n)  # informative
    noise = rng.normal(0, 3.0, n)  # useless
    skew = 1.0 * signal + rng.normal(0, 1.5, n) + 3.0  # weaker, biased towards roadwork
    X = np.stack([good, noise, skew], 1)
    X[rng.random(n) < 0.2, 2] = np.nan  # this expert abstains sometimes
    names = ["good", "noise", "skew"]
    fit = cal.fit_consensus(X, y, names, tiers=[("fast", ["good"]), ("heavy", ["noise", "skew"])])
    w = fit.default.weights
    assert w["good"] > w["skew"] > w["noise"] >= 0.0
    assert w["noise"] < 0.1 * w["good"]
    p = fit.default.probability(X, names)
    naive = cal.sigmoid(np.nanmean(X, axis=1))  # the unfitted geometric mean of odds
    assert M.binary_metrics(y, p)["mcc"] > M.binary_metrics(y, naive)["mcc"] + 0.1
    t, best = M.best_threshold(y, p)
    assert M.binary_metrics(y, p)["mcc"] >= best - (1 - best ** 2) / np.sqrt(n - 1)
    # one rule per tier, on the experts seen when the cascade stops there
    assert set(fit.stages) == {"fast", "heavy"}
    assert set(fit.stages["fast"].weights) == {"good"}
    assert fit.stages["heavy"] is fit.default


def test_fitted_consensus_file_is_merged_by_the_profile_loader(tmp_path):
    from natix_miner.config import load_profile
    from natix_miner.engine.consensus import Consensus
    from natix_miner.experts.base import Evidence

    prof_path = tmp_path / "mini.yaml"
    prof_path.write_text(
        "name: mini\n"
        "experts:\n"
        "  - {name: a, family: timm, model: test_efficientnet}\n"
        "  - {name: b, family: timm, model: test_efficientnet}\n"
        "tiers:\n"
        "  - {name: fast, experts: [a]}\n"
        "  - {name: heavy, experts: [b]}\n")
    prof = load_profile(prof_path)
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    X = np.stack([np.where(y == 1, 2.0, -2.0) + rng.normal(0, 1, 500),
                  np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1, 500) + 1.0], 1)
    fit = cal.fit_consensus(X, y, ["a", "b"], tiers=[("fast", ["a"]), ("heavy", ["b"])])
    path = cal.write_consensus(prof, fit, meta={"n": 500, "data": "synthetic logits"})
    assert path == tmp_path / "mini.consensus.json"
    doc = json.loads(path.read_text())
    assert doc["normalize"] is False and doc["n"] == 500 and "fitted_at" in doc
    assert set(doc["stages"]) == {"fast", "heavy"}
    loaded = load_profile(prof_path)
    assert loaded.consensus.weights == pytest.approx(doc["weights"])
    assert loaded.consensus.bias == pytest.approx(doc["bias"])
    assert loaded.consensus.stages["fast"].weights == pytest.approx(doc["stages"]["fast"]["weights"])
    # the engine's own pooling reproduces the fit's probability
    c = Consensus(loaded.consensus)
    ev = {"a": Evidence(float(cal.sigmoid(X[0, 0]))), "b": Evidence(float(cal.sigmoid(X[0, 1])))}
    want = fit.default.probability(np.array([[ev["a"].logit, ev["b"].logit]]), ["a", "b"])[0]
    assert c.combine(ev, stage="heavy") == pytest.approx(want, rel=1e-4)
    want_fast = fit.stages["fast"].probability(np.array([[ev["a"].logit]]), ["a"])[0]
    assert c.combine({"a": ev["a"]}, stage="fast") == pytest.approx(want_fast, rel=1e-4)


def test_reliability_and_pr_curve():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.2, 0.8, 0.9, 0.7, 0.3])
    bins = M.reliability_bins(y, p, bins=5)
    assert sum(b["count"] for b in bins) == 6
    assert M.expected_calibration_error(y, p, bins=5) == pytest.approx(
        sum(b["count"] * abs(b["mean_p"] - b["frac_pos"]) for b in bins if b["count"]) / 6)
    pr = M.pr_curve(y, p)
    assert pr["average_precision"] == pytest.approx(1.0)
