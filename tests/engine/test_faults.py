"""Deadlines and faults: late, raising and hanging experts never delay the answer past the
deadline; circuit breakers open, probe after a cool-down, and recover; fallbacks are counted.

Time bounds here are correctness limits (the validator's deadline), with generous slack for a
loaded 2-core CI machine; they are not speed targets."""

import asyncio
import time

import pytest

from natix_miner.engine import Engine
from natix_miner.engine.breaker import Breaker
from tests.support.engine_experts import grey_png, make_profile, noise_jpeg

SLACK_S = 0.35  # scheduling slack on a busy CI box


def bright(name="ok", **kw):
    return {"name": name, "family": "engine_test_brightness", **kw}


def profile(tmp_path, bad: dict, budget=0.4, **top):
    """Tier "fast" has a healthy expert and the bad one; tier "late" a healthy one (always reached:
    the band covers everything)."""
    return make_profile(tmp_path, experts=[bright("ok"), bad, bright("later")],
                        tiers=[{"name": "fast", "experts": ["ok", bad["name"]], "budget_s": budget},
                               {"name": "late", "experts": ["later"], "budget_s": 2}],
                        escalation={"low": 0.0, "high": 1.0}, **top)


async def timed(engine, image, deadline_s=None):
    t = time.monotonic()
    res = await engine.predict(image, None if deadline_s is None else t + deadline_s)
    return res, time.monotonic() - t


async def test_a_slow_expert_is_left_behind_at_the_tier_budget(tmp_path):
    prof = profile(tmp_path, {"name": "slow", "family": "engine_test_slow", "options": {"seconds": 1.2}})
    async with Engine(prof) as engine:
        res, took = await timed(engine, grey_png(200))
    assert took < 0.4 + 2 * SLACK_S, took
    assert res.skipped["slow"] == "timeout" and "slow" not in res.evidence
    assert set(res.evidence) == {"ok", "later"} and not res.fallback
    assert res.probability == pytest.approx(200 / 255, abs=1e-6)


async def test_the_request_deadline_beats_every_budget(tmp_path):
    """Tier budgets of 5 s, a 1 s request deadline, a hanging expert: the answer is in by ~1 s."""
    prof = make_profile(tmp_path, experts=[bright("ok"), {"name": "hang", "family": "engine_test_hanging"}],
                        tiers=[{"name": "fast", "experts": ["ok"], "budget_s": 5},
                               {"name": "stuck", "experts": ["hang"], "budget_s": 5}],
                        escalation={"low": 0.0, "high": 1.0})
    async with Engine(prof) as engine:
        res, took = await timed(engine, grey_png(60), deadline_s=1.0)
        assert took < 1.0 + SLACK_S, took
        assert res.skipped["hang"] == "timeout" and not res.fallback
        assert res.probability == pytest.approx(60 / 255, abs=1e-6)
        # the timeout was cut short by the request's deadline, not the expert's budget: not held
        # against the breaker
        assert engine.pools["hang"].replicas[0].breaker.total_failures == 0


async def test_a_hanging_only_expert_gives_the_fallback_in_time(tmp_path):
    prof = make_profile(tmp_path, experts=[{"name": "hang", "family": "engine_test_hanging"}],
                        tiers=[{"name": "only", "experts": ["hang"], "budget_s": 0.5}],
                        fallback_probability=0.3)
    async with Engine(prof) as engine:
        res, took = await timed(engine, grey_png(10))
        assert took < 0.5 + SLACK_S
        assert res.fallback and res.fallback_reason == "no_expert_answered" and res.probability == 0.3
        st = engine.status()
    assert st["fallbacks"] == {"no_expert_answered": 1} and st["fallback_total"] == 1
    # close() released the hung call, so no thread is left inside the model


async def test_a_raising_expert_is_skipped_and_its_breaker_opens(tmp_path):
    prof = profile(tmp_path, {"name": "bad", "family": "engine_test_flaky"}, budget=2,
                   breaker={"failures": 2, "cooldown_s": 60})
    async with Engine(prof) as engine:
        for i in range(2):
            res, took = await timed(engine, noise_jpeg(i))
            assert res.skipped["bad"] == "error:RuntimeError" and set(res.evidence) == {"ok", "later"}
        assert engine.pools["bad"].state == Breaker.OPEN
        res, _ = await timed(engine, noise_jpeg(5))
        assert res.skipped["bad"] == "breaker_open"
        assert engine.pools["bad"].replicas[0].expert.failures == 2  # not called while open
        st = engine.status()["experts"]["bad"]
        assert st["breaker"] == "open" and st["errors"] == 2
        assert "CUDA error" in st["replicas"][0]["breaker"]["last_error"]


async def test_breaker_half_open_probe_then_recovery(tmp_path):
    """Fails twice (opens), stays out for the cool-down, one probe goes through, succeeds, closed."""
    prof = profile(tmp_path, {"name": "flaky", "family": "engine_test_flaky", "options": {"fail_first": 2}},
                   budget=2, breaker={"failures": 2, "cooldown_s": 0.4})
    async with Engine(prof) as engine:
        pool = engine.pools["flaky"]
        for i in range(2):
            await engine.predict(noise_jpeg(i))
        assert pool.state == Breaker.OPEN
        res = await engine.predict(noise_jpeg(10))
        assert res.skipped["flaky"] == "breaker_open"
        await asyncio.sleep(0.45)
        assert pool.state == Breaker.HALF_OPEN
        res = await engine.predict(noise_jpeg(11))  # the probe: the expert has recovered
        assert "flaky" in res.evidence and pool.state == Breaker.CLOSED
        res = await engine.predict(noise_jpeg(12))
        assert "flaky" in res.evidence
        snap = pool.replicas[0].breaker.snapshot()
        assert snap["opens"] == 1 and snap["probes"] == 1 and snap["failures"] == 2


async def test_a_failed_probe_reopens_for_another_cool_down(tmp_path):
    prof = profile(tmp_path, {"name": "bad", "family": "engine_test_flaky"}, budget=2,
                   breaker={"failures": 1, "cooldown_s": 0.3})
    async with Engine(prof) as engine:
        pool = engine.pools["bad"]
        await engine.predict(noise_jpeg(0))
        assert pool.state == Breaker.OPEN
        await asyncio.sleep(0.35)
        res = await engine.predict(noise_jpeg(1))  # probe fails
        assert res.skipped["bad"] == "error:RuntimeError" and pool.state == Breaker.OPEN
        res = await engine.predict(noise_jpeg(2))
        assert res.skipped["bad"] == "breaker_open"
        assert pool.replicas[0].breaker.opens == 2


async def test_timeouts_count_against_the_breaker(tmp_path):
    prof = profile(tmp_path, {"name": "slow", "family": "engine_test_slow", "options": {"seconds": 0.8}},
                   budget=0.2, breaker={"failures": 2, "cooldown_s": 60})
    async with Engine(prof) as engine:
        for i in range(2):
            res = await engine.predict(noise_jpeg(i))
            assert res.skipped["slow"] == "timeout"
        res = await engine.predict(noise_jpeg(3))
        assert res.skipped["slow"] == "breaker_open"
        assert engine.status()["experts"]["slow"]["timeouts"] == 2


async def test_expert_timeout_shorter_than_the_tier(tmp_path):
    prof = profile(tmp_path, {"name": "slow", "family": "engine_test_slow", "timeout_s": 0.2,
                              "options": {"seconds": 1}}, budget=3)
    async with Engine(prof) as engine:
        res, took = await timed(engine, noise_jpeg(0))
    assert res.skipped["slow"] == "timeout" and took < 0.2 + 2 * SLACK_S + 0.5


async def test_a_failed_load_leaves_the_rest_serving(tmp_path):
    prof = profile(tmp_path, {"name": "broken", "family": "engine_test_bad_load", "model": "models/nope.pt"})
    async with Engine(prof) as engine:
        res = await engine.predict(grey_png(30))
        st = engine.status()
    assert res.skipped["broken"] == "failed" and set(res.evidence) == {"ok", "later"}
    assert st["experts"]["broken"]["load"] == "failed" and st["experts"]["broken"]["breaker"] == "open"
    assert "no weights at models/nope.pt" in st["experts"]["broken"]["load_error"]
    with pytest.raises(FileNotFoundError):
        await Engine(prof).start(strict=True)


async def test_bad_input_is_a_counted_fallback_never_an_exception(tmp_path):
    prof = make_profile(tmp_path, experts=[bright("ok")], tiers=[{"name": "t", "experts": ["ok"]}])
    async with Engine(prof) as engine:
        for bad in [b"", b"not an image", "!!!not base64!!!", 12345, grey_png(1)[:40]]:
            res = await engine.predict(bad)
            assert res.fallback and res.probability == prof.fallback_probability
            assert res.fallback_reason.startswith("bad_image:"), res.fallback_reason
        st = engine.status()
    assert st["fallbacks"] == {"bad_image": 5} and st["answered"] == 5


async def test_not_started_engine_answers_the_fallback(tmp_path):
    prof = make_profile(tmp_path, experts=[bright("ok")], tiers=[{"name": "t", "experts": ["ok"]}])
    res = await Engine(prof).predict(grey_png(1))
    assert res.fallback and res.fallback_reason == "engine_not_ready"


def test_breaker_state_machine_on_a_clock():
    now = [0.0]
    b = Breaker(failures=3, cooldown_s=10, clock=lambda: now[0])
    for _ in range(2):
        assert b.allow()
        b.record(False, "x")
    assert b.state == Breaker.CLOSED
    b.record(True)
    assert b.consecutive == 0  # success resets the count: failures must be consecutive
    for _ in range(3):
        b.record(False, "x")
    assert b.state == Breaker.OPEN and not b.allow()
    now[0] = 9.9
    assert not b.allow()
    now[0] = 10.0
    assert b.state == Breaker.HALF_OPEN
    assert b.allow() and not b.allow()  # exactly one probe
    b.release()  # the probe's caller vanished: the slot is free again
    assert b.allow()
    now[0] = 25.0  # a probe never recorded is given up after another cool-down
    assert b.allow()
    b.record(True)
    assert b.state == Breaker.CLOSED and b.allow()
