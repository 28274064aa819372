"""One cascade policy (``engine/policy.py``) behind all three paths: the online engine, the bulk path
and the training replay give identical probabilities and escalation for the same profile and evidence.

Profiles are drawn as data (tiers, bands, weights, bias, temperature, isotonic knots, per-tier stage
rules, fallback), and so is the evidence: every expert's answer per image is a probability, an
abstention or a failure. A table expert serves it to each path the way that path asks: Evidence per
decoded image online (raising for a failure), logits per encoded image in bulk (NaN: no opinion),
Evidence or None per image to the replay.
"""

import asyncio
import hashlib
import math
import typing

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from natix_miner.config import ConsensusSpec, Profile
from natix_miner.engine import Engine
from natix_miner.engine.bulk import BulkPredictor
from natix_miner.engine.consensus import Consensus
from natix_miner.engine.policy import CascadePolicy, logit, pool, sigmoid
from natix_miner.experts import register_family
from natix_miner.experts.base import Evidence, Expert
from natix_miner.training.runner import replay_cascade
from tests.support.engine_experts import grey_png

FAMILY = "policy_test_table"
# expert name -> image sha256 -> a probability, "abstain" or "error" (set by each example)
TABLE: typing.Dict[str, typing.Dict[str, typing.Any]] = {}


class TableExpert(Expert):
    """Answers from ``TABLE``: what the drawn evidence says for this expert and image."""

    family = FAMILY

    def load(self, device):
        self.device = device

    def _entry(self, sha: str):
        return TABLE[self.name][sha]

    def predict_batch(self, images):
        out = []
        for im in images:
            v = self._entry(im.sha256)
            if v == "error":
                raise RuntimeError(f"{self.name} failed on this image")
            out.append(Evidence(math.nan if v == "abstain" else v))
        return out

    def predict_encoded(self, datas):
        """Bulk path: one logit per image (NaN: no opinion, for an abstention or a failure)."""
        vals = [self._entry(hashlib.sha256(d).hexdigest()) for d in datas]
        return np.array([Evidence(v).logit if isinstance(v, float) else math.nan for v in vals])


register_family(FAMILY, f"{__name__}:TableExpert")

IMAGES = [grey_png(v, size=8) for v in (10, 60, 110, 160, 210, 250)]
SHAS = [hashlib.sha256(d).hexdigest() for d in IMAGES]

unit = st.floats(0.0, 1.0, allow_nan=False)
answer = st.one_of(unit, unit, unit, st.sampled_from([0.0, 1.0, 0.5, "abstain", "error"]))


@st.composite
def bands(draw):
    if draw(st.booleans()):  # around 0.5: images climb often
        return {"low": draw(st.floats(0.0, 0.5)), "high": draw(st.floats(0.5, 1.0))}
    a, b = sorted([draw(unit), draw(unit)])
    return {"low": a, "high": b}


@st.composite
def rules(draw, names):
    rule = {"weights": {n: draw(st.floats(-3, 3) | st.sampled_from([1.0, -1.0, 0.0]))
                        for n in draw(st.lists(st.sampled_from(names), unique=True))},
            "bias": draw(st.floats(-3, 3)), "normalize": draw(st.booleans()),
            "temperature": draw(st.floats(0.2, 5.0))}
    if draw(st.integers(0, 3)) == 0:
        k = draw(st.integers(2, 4))
        rule["isotonic"] = {"x": sorted(draw(st.lists(st.floats(-6, 6), min_size=k, max_size=k))),
                            "y": sorted(draw(st.lists(unit, min_size=k, max_size=k)))}
    return rule


@st.composite
def cases(draw):
    """(profile data, evidence: expert -> [answer per image])."""
    sizes = [draw(st.integers(1, 3)) for _ in range(draw(st.sampled_from([2, 3, 1])))]
    names = [f"e{i}" for i in range(sum(sizes))]
    tiers, k = [], 0
    for t, size in enumerate(sizes):
        tier = {"name": f"t{t}", "experts": names[k:k + size], "budget_s": 30}
        k += size
        if draw(st.booleans()):
            tier["escalation"] = draw(bands())
        tiers.append(tier)
    consensus = draw(rules(names))
    consensus["stages"] = {t["name"]: draw(rules(names)) for t in tiers if draw(st.booleans())}
    data = {"name": "drawn", "experts": [{"name": n, "family": FAMILY, "max_batch": 1, "max_wait_ms": 0}
                                         for n in names],
            "tiers": tiers, "escalation": draw(bands()), "consensus": consensus, "deadline_s": 9.0,
            "fallback_probability": draw(st.sampled_from([0.49, 0.5, 0.0, 1.0]) | unit),
            "cache": {"max_entries": 0}, "breaker": {"failures": 10 ** 6}}
    n = draw(st.integers(1, len(IMAGES)))
    evidence = {name: draw(st.lists(answer, min_size=n, max_size=n)) for name in names}
    return data, evidence


async def _online(profile: Profile, n: int):
    engine = Engine(profile)
    await engine.start(strict=True)
    try:
        return [await engine.predict(d) for d in IMAGES[:n]]
    finally:
        await engine.close()


def _bulk(profile: Profile, n: int, batch: int):
    bulk = BulkPredictor(profile, ["cpu"], batch_size=batch, mode="thread")
    bulk.load()
    try:
        return bulk.predict(IMAGES[:n], with_tiers=True)
    finally:
        bulk.close()


def _replay_evidence(evidence) -> dict:
    return {name: [None if v == "error" else Evidence(math.nan if v == "abstain" else v) for v in col]
            for name, col in evidence.items()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), batch=st.integers(1, 4))
def test_online_bulk_and_replay_give_identical_answers(case, batch):
    data, evidence = case
    profile = Profile.model_validate(data)
    n = len(next(iter(evidence.values())))
    TABLE.clear()
    TABLE.update({name: dict(zip(SHAS, col)) for name, col in evidence.items()})

    online = asyncio.run(_online(profile, n))
    bulk_p, bulk_depth = _bulk(profile, n, batch)
    replay_p, replay_runs = replay_cascade(profile, _replay_evidence(evidence), n)

    names = [t.name for t in profile.tiers]
    for i, res in enumerate(online):
        assert not res.skipped or set(res.skipped.values()) <= {"error:RuntimeError"}, res.skipped
        assert res.probability == bulk_p[i] == replay_p[i], (i, res.probability, bulk_p[i], replay_p[i])
        assert res.tiers_run == replay_runs[i] == names[:bulk_depth[i]], (i, res.tiers_run, replay_runs[i])
        assert 0.0 <= res.probability <= 1.0 and res.probability != 0.5
    event(f"tiers run: {sorted(set(bulk_depth.tolist()))} of {len(names)}")
    event(f"stage rules: {bool(profile.consensus.stages)}; some fallback: {any(r.fallback for r in online)}")


# -- the rule itself, on known numbers --------------------------------------------------------------
def _profile(**over) -> Profile:
    data = {"name": "p", "experts": [{"name": n, "family": FAMILY} for n in ("a", "b")],
            "tiers": [{"name": "first", "experts": ["a"]}, {"name": "second", "experts": ["b"]}]}
    data.update(over)
    return Profile.model_validate(data)


def test_one_row_is_bit_identical_to_the_same_row_in_a_batch():
    rng = np.random.default_rng(0)
    rule = ConsensusSpec(weights={"a": 1.3, "b": -0.4, "c": 2.0}, bias=0.2, normalize=True)
    Z = rng.normal(0, 3, (64, 3))
    Z[rng.random(Z.shape) < 0.3] = np.nan
    batch = pool(rule, ["a", "b", "c"], Z)
    rows = np.array([pool(rule, ["a", "b", "c"], Z[i:i + 1])[0] for i in range(len(Z))])
    assert np.array_equal(batch, rows, equal_nan=True)
    assert np.isnan(batch[np.isnan(Z).all(1)]).all()


def test_stage_rule_escalation_and_clamp_on_known_numbers():
    prof = _profile(escalation={"low": 0.05, "high": 0.95},
                    consensus={"weights": {"a": 1.0, "b": 1.0}, "normalize": False,
                               "stages": {"first": {"weights": {"a": 2.0}, "bias": 0.5, "normalize": False}}})
    policy = CascadePolicy(prof)
    p, climb = policy.after_tier(0, {"a": Evidence(0.098)}, None)  # the stage rule: 0.019, outside the band
    assert p == pytest.approx(sigmoid(2 * logit(0.098) + 0.5)) and not climb
    p, climb = policy.after_tier(0, {"a": Evidence(0.47)}, None)
    assert climb
    p, climb = policy.after_tier(1, {"a": Evidence(0.47), "b": Evidence(0.6)}, p)  # the profile rule
    assert p == pytest.approx(sigmoid(logit(0.47) + logit(0.6)))
    p, climb = policy.after_tier(1, {"a": Evidence(0.4, abstain=True)}, 0.3)  # nobody: the last value stands
    assert p == 0.3 and climb
    assert policy.after_tier(0, {}, None) == (None, True)
    assert policy.answer(None) == 0.49 and policy.answer(0.5) == 0.4999 and policy.answer(float("nan")) == 0.49
    assert Consensus(prof.consensus).combine({"a": Evidence(0.098)}, stage="first") == \
        sigmoid(2 * logit(0.098) + 0.5)


def test_bulk_uses_the_stage_rule_of_the_tier_it_stops_at():
    """The bug this module fixed: the bulk path pooled with the profile-level rule only."""
    prof = _profile(tiers=[{"name": "first", "experts": ["a", "b"]}],
                    consensus={"weights": {"a": 1.0, "b": 1.0},
                               "stages": {"first": {"weights": {"a": 3.0, "b": 0.0}, "bias": -1.0,
                                                    "normalize": False}}})
    TABLE.clear()
    TABLE.update({"a": dict(zip(SHAS, [0.7, 0.2, 0.9])), "b": dict(zip(SHAS, [0.1, 0.9, "abstain"]))})
    got, depth = _bulk(prof, 3, batch=2)
    want = [sigmoid(3 * Evidence(p).logit - 1.0) for p in (0.7, 0.2, 0.9)]
    np.testing.assert_array_equal(got, want)
    assert depth.tolist() == [1, 1, 1]


async def test_bulk_first_tiers_only_answer_as_the_engine_with_the_later_tiers_down():
    """``BulkPredictor(tiers=1)``: the online answer when the second tier cannot run."""
    from tests.support.engine_experts import register

    register()
    prof = _profile(experts=[{"name": "a", "family": FAMILY}, {"name": "b", "family": "engine_test_bad_load"}],
                    escalation={"low": 0.1, "high": 0.9}, fallback_probability=0.3,
                    consensus={"stages": {"first": {"weights": {"a": 0.5}, "bias": 0.2}}})
    TABLE.clear()
    TABLE["a"] = dict(zip(SHAS, [0.5, 0.95, "abstain", 0.02]))
    got, depth = _bulk_tiers(prof, 4, tiers=1)
    engine = Engine(prof)
    await engine.start()
    try:
        online = [await engine.predict(d) for d in IMAGES[:4]]
    finally:
        await engine.close()
    assert [r.probability for r in online] == got.tolist()
    assert [len(r.tiers_run) for r in online] == depth.tolist() == [1, 1, 1, 1]
    assert online[2].fallback and got[2] == 0.3 and online[0].skipped == {"b": "failed", "second": "no_expert_available"}


def _bulk_tiers(profile: Profile, n: int, tiers: int):
    bulk = BulkPredictor(profile, ["cpu"], tiers=tiers, batch_size=3, mode="thread")
    bulk.load()
    try:
        return bulk.predict(IMAGES[:n], with_tiers=True)
    finally:
        bulk.close()


def test_bulk_refuses_a_tier_without_a_bulk_path_and_names_the_fix():
    from tests.support.engine_experts import register

    register()
    prof = _profile(experts=[{"name": "a", "family": FAMILY}, {"name": "b", "family": "engine_test_brightness"}])
    bulk = BulkPredictor(prof, ["cpu"], mode="thread")
    with pytest.raises(TypeError, match=r"tier second has no bulk path.*tiers=1"):
        bulk.load()
    bulk.close()
    with pytest.raises(ValueError, match=r"tiers must be 1\.\.2"):
        BulkPredictor(prof, ["cpu"], tiers=3)
