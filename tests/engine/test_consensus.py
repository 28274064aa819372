"""Consensus: weighted log-odds pooling on known inputs, in isolation and inside the engine."""

import math

import pytest

from natix_miner.config import ConsensusSpec
from natix_miner.engine import Engine
from natix_miner.engine.consensus import Consensus, logit, sigmoid
from natix_miner.experts.base import Evidence
from tests.support.engine_experts import grey_png, make_profile


def test_unweighted_is_the_geometric_mean_of_odds():
    c = Consensus()
    p = c.combine({"a": Evidence(0.9), "b": Evidence(0.6)})
    odds = math.sqrt((0.9 / 0.1) * (0.6 / 0.4))
    assert p == pytest.approx(odds / (1 + odds), abs=1e-9)
    assert p == pytest.approx(0.78603, abs=1e-4)


def test_fitted_weights_bias_and_temperature():
    spec = ConsensusSpec(weights={"a": 2.0, "b": 0.5, "c": 0.0}, bias=-0.3, normalize=False, temperature=2.0)
    c = Consensus(spec)
    ev = {"a": Evidence(0.8), "b": Evidence(0.3), "c": Evidence(0.99)}
    z = (2.0 * logit(0.8) + 0.5 * logit(0.3) - 0.3) / 2.0
    assert c.combine(ev) == pytest.approx(sigmoid(z), abs=1e-12)


def test_normalised_weights_divide_by_their_sum():
    c = Consensus(ConsensusSpec(weights={"a": 3.0, "b": 1.0}, normalize=True))
    z = (3.0 * logit(0.7) + 1.0 * logit(0.2)) / 4.0
    assert c.combine({"a": Evidence(0.7), "b": Evidence(0.2)}) == pytest.approx(sigmoid(z))


def test_abstentions_and_missing_experts_are_ignored():
    c = Consensus(ConsensusSpec(weights={"a": 1.0, "b": 1.0}, normalize=False))
    only_a = c.combine({"a": Evidence(0.8)})
    assert only_a == pytest.approx(0.8)
    assert c.combine({"a": Evidence(0.8), "b": Evidence(0.1, abstain=True)}) == pytest.approx(only_a)
    assert c.combine({"b": Evidence(0.1, abstain=True)}) is None
    assert c.combine({}) is None
    assert c.combine({"a": Evidence(float("nan"))}) is None  # NaN evidence abstains


def test_stage_rules_override_by_tier():
    spec = ConsensusSpec(weights={"a": 1.0, "b": 1.0}, bias=0.0, normalize=False,
                         stages={"fast": {"weights": {"a": 0.5}, "bias": 1.0, "normalize": False}})
    c = Consensus(spec)
    ev = {"a": Evidence(0.6)}
    assert c.combine(ev, stage="fast") == pytest.approx(sigmoid(0.5 * logit(0.6) + 1.0))
    assert c.combine(ev, stage="slow") == pytest.approx(0.6)  # no rule for "slow": the global one
    assert c.combine(ev) == pytest.approx(0.6)


def test_extreme_evidence_stays_finite():
    c = Consensus(ConsensusSpec(weights={"a": 50.0}, normalize=False, bias=40))
    p = c.combine({"a": Evidence(1.0)})
    assert 0.0 < p <= 1.0 and math.isfinite(p)
    p = Consensus(ConsensusSpec(weights={"a": 50.0}, normalize=False, bias=-40)).combine({"a": Evidence(0.0)})
    assert 0.0 <= p < 1.0 and math.isfinite(p)


async def test_engine_pools_real_experts_with_the_fitted_file(tmp_path):
    """Two brightness experts on a grey image of known value, weights from <profile>.consensus.json."""
    fitted = {"weights": {"bright": 1.7, "dark": 0.6}, "bias": -0.25, "normalize": False, "temperature": 1.3,
              "fitted_on": "unit test", "n": 10}
    prof = make_profile(tmp_path, name="cons",
                        experts=[{"name": "bright", "family": "engine_test_brightness"},
                                 {"name": "dark", "family": "engine_test_brightness", "options": {"invert": True}}],
                        tiers=[{"name": "only", "experts": ["bright", "dark"], "budget_s": 5}],
                        consensus_json=fitted)
    async with Engine(prof) as engine:
        res = await engine.predict(grey_png(200))
    pb, pd = 200 / 255, 1 - 200 / 255
    assert res.evidence["bright"].probability == pytest.approx(pb)
    assert res.evidence["dark"].probability == pytest.approx(pd)
    expect = sigmoid((1.7 * logit(pb) + 0.6 * logit(pd) - 0.25) / 1.3)
    assert res.probability == pytest.approx(expect, abs=1e-9)
    assert res.tiers_run == ["only"] and not res.fallback


async def test_engine_uses_the_stage_rule_of_the_tier_it_stopped_at(tmp_path):
    fitted = {"weights": {"a": 1.0, "b": 1.0}, "bias": 0.0,
              "stages": {"first": {"weights": {"a": 2.0}, "bias": 0.5, "normalize": False}}}
    prof = make_profile(tmp_path, name="stages",
                        experts=[{"name": "a", "family": "engine_test_brightness"},
                                 {"name": "b", "family": "engine_test_brightness"}],
                        tiers=[{"name": "first", "experts": ["a"], "budget_s": 5},
                               {"name": "second", "experts": ["b"], "budget_s": 5}],
                        escalation={"low": 0.05, "high": 0.95}, consensus_json=fitted)
    async with Engine(prof) as engine:
        res = await engine.predict(grey_png(25))  # p_a = 0.098: the stage rule makes it 0.019
        assert res.tiers_run == ["first"]
        assert res.probability == pytest.approx(sigmoid(2.0 * logit(25 / 255) + 0.5))
        res = await engine.predict(grey_png(120))  # stage rule: 0.566 -> climbs; then the global rule
        assert res.tiers_run == ["first", "second"]
        assert res.probability == pytest.approx(sigmoid(2 * logit(120 / 255)))


def test_fitted_isotonic_map_is_applied_by_the_engine(tmp_path):
    """`calibrate --method isotonic` writes knots; the engine must apply them, not ignore them."""
    import json

    import numpy as np

    from natix_miner.config import load_profile
    from natix_miner.engine.consensus import Consensus
    from natix_miner.experts.base import Evidence

    prof = tmp_path / "p.yaml"
    prof.write_text("name: p\nexperts:\n  - {name: a, family: timm, model: resnet18}\n"
                    "tiers:\n  - {name: t, experts: [a]}\n")
    knots = {"x": [-2.0, 0.0, 2.0], "y": [0.1, 0.3, 0.9]}
    (tmp_path / "p.consensus.json").write_text(json.dumps({"weights": {"a": 1.0}, "isotonic": knots}))
    c = Consensus(load_profile(prof).consensus)
    for p_in in (0.05, 0.3, 0.5, 0.7, 0.99):
        z = float(np.log(p_in / (1 - p_in)))
        assert c.combine({"a": Evidence(p_in)}) == pytest.approx(np.interp(z, knots["x"], knots["y"]), abs=1e-6)


def test_isotonic_knots_are_validated(tmp_path):
    import json

    from natix_miner.config import ProfileError, load_profile

    prof = tmp_path / "p.yaml"
    prof.write_text("name: p\nexperts:\n  - {name: a, family: timm, model: resnet18}\n"
                    "tiers:\n  - {name: t, experts: [a]}\n")
    (tmp_path / "p.consensus.json").write_text(json.dumps({"isotonic": {"x": [1.0, 0.0], "y": [0.2, 0.8]}}))
    with pytest.raises(ProfileError, match="isotonic"):
        load_profile(prof)
