"""Result cache: keyed by image hash, bounded in size and age, identical requests in flight joined."""

import asyncio

import pytest

from natix_miner.engine import Engine
from natix_miner.engine.cache import ResultCache
from natix_miner.imaging.decode import encode_jpeg_base64
from tests.support.engine_experts import make_profile, noise_jpeg


def test_bounded_size_lru():
    c = ResultCache(max_entries=2, ttl_s=100)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now the most recent
    c.put("c", 3)
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2


def test_bounded_age():
    now = [0.0]
    c = ResultCache(max_entries=10, ttl_s=5, clock=lambda: now[0])
    c.put("a", 1)
    now[0] = 4.9
    assert c.get("a") == 1
    now[0] = 5.1
    assert c.get("a") is None and len(c) == 0
    c.put("b", 2)
    now[0] = 20.0
    c.put("c", 3)  # putting sweeps expired entries from the cold end
    assert len(c) == 1
    assert c.hits == 1 and c.misses == 1 and c.hit_rate == pytest.approx(0.5)


def test_disabled_cache():
    c = ResultCache(max_entries=0)
    c.put("a", 1)
    assert c.get("a") is None and len(c) == 0


def engine_profile(tmp_path, seconds=0.0, **top):
    fam = {"name": "m", "family": "engine_test_slow", "options": {"seconds": seconds}, "max_wait_ms": 0}
    return make_profile(tmp_path, experts=[fam], tiers=[{"name": "t", "experts": ["m"], "budget_s": 5}], **top)


async def test_repeat_image_is_a_cache_hit(tmp_path):
    async with Engine(engine_profile(tmp_path)) as engine:
        jpeg = noise_jpeg(1)
        first = await engine.predict(jpeg)
        again = await engine.predict(encode_b64(jpeg))  # same bytes as base64: same key
        other = await engine.predict(noise_jpeg(2))
        expert = engine.pools["m"].replicas[0].expert
        assert not first.cached and again.cached and not other.cached
        assert again.probability == first.probability and again.evidence.keys() == first.evidence.keys()
        assert expert.calls == 2
        cache = engine.status()["cache"]
    assert cache["hits"] == 1 and cache["entries"] == 2 and cache["hit_rate"] == pytest.approx(1 / 3)


def encode_b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


async def test_identical_requests_in_flight_run_once(tmp_path):
    """One challenge reaches every hotkey of an operator at once: ten concurrent copies, one run."""
    async with Engine(engine_profile(tmp_path, seconds=0.3)) as engine:
        jpeg = noise_jpeg(7)
        results = await asyncio.gather(*[engine.predict(jpeg) for _ in range(10)])
        expert = engine.pools["m"].replicas[0].expert
        assert expert.calls == 1 and sum(expert.batches) == 1
        assert len({r.probability for r in results}) == 1
        assert sum(not r.cached for r in results) == 1
        assert engine.status()["cache"]["joined"] == 9


async def test_cache_age_limit_in_the_engine(tmp_path):
    async with Engine(engine_profile(tmp_path, cache={"max_entries": 10, "ttl_s": 0.2})) as engine:
        jpeg = noise_jpeg(3)
        await engine.predict(jpeg)
        assert (await engine.predict(jpeg)).cached
        await asyncio.sleep(0.25)
        assert not (await engine.predict(jpeg)).cached


async def test_fallbacks_are_not_cached(tmp_path):
    prof = make_profile(tmp_path, experts=[{"name": "bad", "family": "engine_test_flaky"}],
                        tiers=[{"name": "t", "experts": ["bad"], "budget_s": 2}], breaker={"failures": 50})
    async with Engine(prof) as engine:
        jpeg = noise_jpeg(4)
        assert (await engine.predict(jpeg)).fallback
        second = await engine.predict(jpeg)
        assert second.fallback and not second.cached


def test_decoded_pixels_do_not_change_the_key():
    from natix_miner.imaging.decode import decode_base64

    b64 = encode_jpeg_base64(__import__("numpy").zeros((8, 8, 3), "uint8"))
    a, b = decode_base64(b64), decode_base64(b64, eager=False)
    assert a.sha256 == b.sha256
