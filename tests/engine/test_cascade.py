"""The cascade: an image climbs to the next tier only inside the uncertainty band; the result
carries tiers, evidence and timings; ``status()`` reports what the ops layer needs."""

import pytest

from natix_miner.engine import Engine
from tests.support.engine_experts import grey_png, make_profile, noise_jpeg, tiny_timm


async def test_escalation_happens_exactly_inside_the_band(tmp_path):
    prof = make_profile(tmp_path, experts=[{"name": "first", "family": "engine_test_brightness"},
                                           {"name": "second", "family": "engine_test_brightness",
                                            "options": {"invert": True}}],
                        tiers=[{"name": "t0", "experts": ["first"], "budget_s": 5},
                               {"name": "t1", "experts": ["second"], "budget_s": 5}],
                        escalation={"low": 0.3, "high": 0.7})
    async with Engine(prof) as engine:
        for v in range(0, 256, 15):
            res = await engine.predict(grey_png(v))
            p0 = v / 255
            inside = 0.3 < p0 < 0.7
            assert res.tiers_run == (["t0", "t1"] if inside else ["t0"]), (v, res.tiers_run)
            assert ("second" in res.evidence) == inside
            if not inside:
                assert res.probability == pytest.approx(p0, abs=1e-4)
        st = engine.status()["tiers"]
    inside_count = sum(0.3 < v / 255 < 0.7 for v in range(0, 256, 15))
    assert st["t1"]["runs"] == inside_count and st["t0"]["runs"] == 18
    assert st["t0"]["exits"] == 18 - inside_count and st["t1"]["exits"] == inside_count


async def test_real_models_escalate_only_while_uncertain(tmp_path):
    """Random-weight timm classifiers: tier 0's answer p decides; a band around p climbs, a band
    that excludes p stops."""
    experts = [tiny_timm("cls_a"), tiny_timm("cls_b", arch="resnet10t")]
    tiers = [{"name": "fast", "experts": ["cls_a"], "budget_s": 8},
             {"name": "slow", "experts": ["cls_b"], "budget_s": 8}]
    image = noise_jpeg(11, size=64)
    prof = make_profile(tmp_path, name="probe", experts=experts, tiers=tiers, escalation={"low": 0.0, "high": 1.0})
    async with Engine(prof) as engine:
        res = await engine.predict(image)
        assert res.tiers_run == ["fast", "slow"]
        p = res.evidence["cls_a"].probability
        pb = res.evidence["cls_b"].probability
        weights = {n: e.model.state_dict() for n, e in engine.experts.items()}
    assert 0 < p < 1 and 0 < pb < 1

    async def run(low, high):
        prof = make_profile(tmp_path, name="band", experts=experts, tiers=tiers, escalation={"low": low, "high": high})
        async with Engine(prof) as engine:
            for n, e in engine.experts.items():  # the same random weights as the probe run
                e.model.load_state_dict(weights[n])
            return await engine.predict(image)

    climbed = await run(max(0.0, p - 0.01), min(1.0, p + 0.01))
    assert climbed.tiers_run == ["fast", "slow"] and set(climbed.evidence) == {"cls_a", "cls_b"}
    assert climbed.probability == pytest.approx(res.probability, abs=1e-5)
    stopped = await run(min(1.0, p + 0.01), 1.0)
    assert stopped.tiers_run == ["fast"] and stopped.probability == pytest.approx(p, abs=1e-5)


async def test_a_tier_band_overrides_the_profile_band(tmp_path):
    prof = make_profile(tmp_path, experts=[{"name": "a", "family": "engine_test_brightness"},
                                           {"name": "b", "family": "engine_test_brightness"},
                                           {"name": "c", "family": "engine_test_brightness"}],
                        tiers=[{"name": "t0", "experts": ["a"]},
                               {"name": "t1", "experts": ["b"], "escalation": {"low": 0.45, "high": 0.55}},
                               {"name": "t2", "experts": ["c"]}],
                        escalation={"low": 0.1, "high": 0.9})
    async with Engine(prof) as engine:
        assert (await engine.predict(grey_png(102))).tiers_run == ["t0", "t1"]  # 0.4: outside t1's band
        assert (await engine.predict(grey_png(128))).tiers_run == ["t0", "t1", "t2"]  # 0.502


async def test_a_tier_needing_more_time_than_is_left_is_skipped(tmp_path):
    prof = make_profile(tmp_path, experts=[{"name": "a", "family": "engine_test_brightness"},
                                           {"name": "vlm", "family": "engine_test_brightness"}],
                        tiers=[{"name": "t0", "experts": ["a"]},
                               {"name": "vlm", "experts": ["vlm"], "budget_s": 4, "min_budget_s": 2}],
                        escalation={"low": 0.0, "high": 1.0}, deadline_s=1.0)
    async with Engine(prof) as engine:
        res = await engine.predict(grey_png(100))
    assert res.tiers_run == ["t0"] and res.skipped == {"vlm": "no_time"} and not res.fallback


async def test_result_carries_tiers_evidence_and_timings(tmp_path):
    prof = make_profile(tmp_path, experts=[tiny_timm("cls"), {"name": "b", "family": "engine_test_brightness"}],
                        tiers=[{"name": "fast", "experts": ["cls", "b"], "budget_s": 8}])
    async with Engine(prof) as engine:
        res = await engine.predict(noise_jpeg(0, size=64))
    d = res.to_dict()
    assert d["tiers_run"] == ["fast"] and set(d["evidence"]) == {"cls", "b"}
    assert "logit" in d["evidence"]["cls"]["detail"]
    assert {"decode", "tier:fast", "expert:cls", "expert:b", "total"} <= set(d["timings_ms"])
    assert d["fallback"] is False and d["cached"] is False and 0 <= d["probability"] <= 1
    assert res.image_sha256 and len(res.image_sha256) == 64


async def test_status_for_the_ops_layer(tmp_path):
    prof = make_profile(tmp_path, experts=[{"name": "a", "family": "engine_test_brightness", "replicas": 2}],
                        tiers=[{"name": "t", "experts": ["a"]}])
    engine = Engine(prof)
    st = engine.status()
    assert st["ready"] is False and st["experts"]["a"]["load"] == "pending"
    async with engine:
        await engine.predict(grey_png(9))
        await engine.predict(grey_png(9))
        st = engine.status()
    assert st["ready"] is True and st["profile"] == "test"
    assert st["requests"] == 2 and st["answered"] == 2 and st["fallback_total"] == 0
    a = st["experts"]["a"]
    assert a["load"] == "loaded" and a["breaker"] == "closed" and a["queue"] == 0 and a["calls"] == 1
    assert len(a["replicas"]) == 2 and {"queue", "running", "batches", "breaker", "device"} <= set(a["replicas"][0])
    assert st["cache"]["hit_rate"] == pytest.approx(0.5) and st["cache"]["entries"] == 1
    assert "cpu" in st["devices"]
    import json

    json.dumps(st)  # JSON-ready
