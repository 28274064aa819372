"""Data-parallel replicas: one instance per device, requests to the least-loaded replica, one
breaker per replica (a sick replica is routed around). Two CPU replicas stand in for two GPUs."""

import asyncio

from natix_miner.engine import Engine
from natix_miner.engine.breaker import Breaker
from natix_miner.engine.placement import Placement
from tests.support.engine_experts import make_profile, noise_jpeg


async def test_two_replicas_serve_two_requests_at_the_same_time(tmp_path):
    """Each replica's batch waits at a two-party barrier: it passes only if both replicas run at
    once. Routed to one replica, the two requests would share a batch and the barrier would break."""
    prof = make_profile(tmp_path, experts=[{"name": "dp", "family": "engine_test_barrier", "devices": ["cpu", "cpu"],
                                            "max_wait_ms": 20, "options": {"barrier": "dp", "parties": 2}}],
                        tiers=[{"name": "t", "experts": ["dp"], "budget_s": 8}])
    async with Engine(prof, placement=Placement(0.9, inventory={})) as engine:
        res = await asyncio.gather(*[engine.predict(noise_jpeg(i)) for i in range(2)])
        assert all("dp" in r.evidence for r in res), [r.to_dict() for r in res]
        replicas = engine.pools["dp"].replicas
        assert [r.expert.batches for r in replicas] == [[1], [1]]
        assert replicas[0].expert is not replicas[1].expert
        assert replicas[0].expert.threads != replicas[1].expert.threads


async def test_least_loaded_replica_gets_the_request(tmp_path):
    prof = make_profile(tmp_path, experts=[{"name": "s", "family": "engine_test_slow", "replicas": 2,
                                            "max_batch": 1, "max_wait_ms": 0, "options": {"seconds": 0.3}}],
                        tiers=[{"name": "t", "experts": ["s"], "budget_s": 8}])
    async with Engine(prof, placement=Placement(0.9, inventory={})) as engine:
        res = await asyncio.gather(*[engine.predict(noise_jpeg(i)) for i in range(6)])
        assert all("s" in r.evidence for r in res)
        counts = [sum(r.expert.batches) for r in engine.pools["s"].replicas]
        assert counts == [3, 3], counts


async def test_a_sick_replica_is_opened_alone_and_routed_around(tmp_path):
    """Replica 0 fails every call, replica 1 is healthy (its own instance): the expert keeps
    answering, replica 0's breaker opens, and then every request goes to replica 1."""
    prof = make_profile(tmp_path, experts=[{"name": "f", "family": "engine_test_flaky", "replicas": 2,
                                            "max_wait_ms": 0, "options": {"fail_first": 1000}}],
                        tiers=[{"name": "t", "experts": ["f"], "budget_s": 5}],
                        breaker={"failures": 2, "cooldown_s": 60})
    async with Engine(prof, placement=Placement(0.9, inventory={})) as engine:
        pool = engine.pools["f"]
        sick, healthy = pool.replicas
        healthy.expert.options["fail_first"] = 0  # this instance answers normally
        answered = 0
        for i in range(8):
            res = await engine.predict(noise_jpeg(i))
            answered += "f" in res.evidence
        assert sick.breaker.state == Breaker.OPEN and healthy.breaker.state == Breaker.CLOSED
        assert pool.state == Breaker.CLOSED  # the expert as a whole is still serving
        assert sick.expert.failures == 2 and answered == 6
        st = engine.status()["experts"]["f"]
        assert [r["breaker"]["state"] for r in st["replicas"]] == ["open", "closed"]



async def test_a_replica_that_fails_to_load_leaves_a_degraded_expert(tmp_path):
    prof = make_profile(tmp_path, experts=[{"name": "d", "family": "engine_test_second_load_fails",
                                            "devices": ["cpu", "cpu"], "options": {"key": "deg"}}],
                        tiers=[{"name": "t", "experts": ["d"], "budget_s": 5}])
    async with Engine(prof, placement=Placement(0.9, inventory={})) as engine:
        res = await engine.predict(noise_jpeg(0))
        st = engine.status()["experts"]["d"]
        table = engine.placement_table()
    assert "d" in res.evidence and not res.fallback
    assert st["load"] == "degraded" and st["replicas_loaded"] == "1/2" and "MemoryError" in st["load_error"]
    assert "d[0]" in table and "d[1]" not in table
