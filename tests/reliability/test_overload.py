"""Overload: more concurrent validators than the engine serves.

Admission control (``natix_miner/miner/admission.py``) on its own, then through a real axon with
real dendrites: priority by stake is honoured, queues are bounded (backpressure), and every caller
gets a valid answer before its timeout, shed callers the fallback.
"""

import asyncio
import random
import time

import pytest

from natix_miner.miner.admission import Admission, Overloaded
from natix_miner.miner.local import MinerThread
from natix_miner.protocol import ImageSynapse
from tests.support.engine_experts import SlowExpert, make_profile
from tests.support.virtual_clock import VirtualClockLoop
from tests.support.reliability_support import RecordingHooks, miner_config, query, valid, validators


async def _hold(gate: Admission, priority: float, deadline: float, release: asyncio.Event, log: list, name):
    async def work():
        log.append(name)
        await release.wait()
        return name

    return await gate.run(priority, deadline, work)


async def test_waiters_are_admitted_by_priority_then_arrival():
    gate = Admission(max_inflight=1, max_waiting=10)
    release = asyncio.Event()
    order = []
    far = time.monotonic() + 30
    first = asyncio.create_task(_hold(gate, 0, far, release, order, "first"))
    await asyncio.sleep(0.01)
    tasks = []
    for name, prio in [("low", 1), ("high_a", 5), ("mid", 3), ("high_b", 5)]:
        tasks.append(asyncio.create_task(_hold(gate, prio, far, release, order, name)))
        await asyncio.sleep(0.01)
    assert gate.waiting == 4 and gate.inflight == 1
    release.set()
    await asyncio.gather(first, *tasks)
    assert order == ["first", "high_a", "high_b", "mid", "low"]
    assert gate.inflight == 0 and gate.waiting == 0 and gate.peak_inflight == 1


async def test_full_queue_refuses_or_evicts_the_lowest():
    gate = Admission(max_inflight=1, max_waiting=2)
    release = asyncio.Event()
    far = time.monotonic() + 30
    order = []
    busy = asyncio.create_task(_hold(gate, 0, far, release, order, "busy"))
    await asyncio.sleep(0.01)
    w1 = asyncio.create_task(_hold(gate, 2, far, release, order, "w1"))
    w2 = asyncio.create_task(_hold(gate, 1, far, release, order, "w2"))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as info:  # not higher than anyone waiting: refused at once
        await _hold(gate, 1, far, release, order, "late_equal")
    assert info.value.reason == "queue_full"
    w3 = asyncio.create_task(_hold(gate, 9, far, release, order, "w3"))  # evicts w2 (the lowest)
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as info:
        await w2
    assert info.value.reason == "evicted"
    assert gate.waiting == 2 and gate.peak_waiting == 2
    release.set()
    await asyncio.gather(busy, w1, w3)
    assert order == ["busy", "w3", "w1"]
    assert gate.refused == {"queue_full": 1, "evicted": 1, "deadline": 0}
    assert gate.inflight == 0 and gate.waiting == 0


async def test_waiter_gives_up_before_its_deadline():
    gate = Admission(max_inflight=1, max_waiting=4, min_service_s=0.25)
    release = asyncio.Event()
    busy = asyncio.create_task(_hold(gate, 0, time.monotonic() + 30, release, [], "busy"))
    await asyncio.sleep(0.01)
    deadline = time.monotonic() + 0.6
    t0 = time.monotonic()
    with pytest.raises(Overloaded) as info:
        await _hold(gate, 100, deadline, release, [], "late")
    assert info.value.reason == "deadline"
    assert time.monotonic() < deadline - 0.2  # answered with time to spare, not at or after it
    assert time.monotonic() - t0 >= 0.3
    with pytest.raises(Overloaded):  # no time left at all: refused without queueing
        await _hold(gate, 100, time.monotonic() + 0.1, release, [], "hopeless")
    release.set()
    await busy
    assert gate.inflight == 0 and gate.waiting == 0


def test_random_storm_keeps_every_invariant():
    """Random arrivals, priorities, durations, cancellations and deadlines: counts stay exact.

    Runs on a virtual clock, so the mix of outcomes depends on the seed, not on how busy the machine is.
    """
    loop = VirtualClockLoop()
    try:
        gate, results = loop.run_until_complete(_storm(loop.time, random.Random(7)))
    finally:
        loop.close()
    assert results["ok"] + results["refused"] + results["cancelled"] == 400
    assert results["ok"] > 0 and results["cancelled"] > 0, results
    assert sum(gate.refused.values()) == results["refused"]  # every refusal counted once, by reason
    assert all(gate.refused[r] > 0 for r in ("deadline", "queue_full", "evicted")), gate.refused
    assert results["idle_with_waiters"] == 0  # work-conserving: never a free slot while someone waits
    assert gate.inflight == 0 and gate.waiting == 0
    assert gate.peak_inflight == 3 and gate.peak_waiting == 5


async def _storm(clock, rng):
    gate = Admission(max_inflight=3, max_waiting=5, min_service_s=0.01, clock=clock)
    results = {"ok": 0, "refused": 0, "cancelled": 0}
    violations = 0

    async def watch():
        nonlocal violations
        while True:
            if gate.waiting and gate.inflight < gate.max_inflight:
                violations += 1
            await asyncio.sleep(0.0005)

    watcher = asyncio.create_task(watch())

    async def one(i):
        async def work():
            assert gate.inflight <= gate.max_inflight
            await asyncio.sleep(rng.uniform(0, 0.02))

        try:
            await gate.run(rng.uniform(0, 10), clock() + rng.uniform(0.0, 0.3), work)
            results["ok"] += 1
        except Overloaded:
            results["refused"] += 1

    tasks = []
    for i in range(400):
        tasks.append(asyncio.create_task(one(i)))
        if rng.random() < 0.1:
            victim = rng.choice(tasks)
            victim.cancel()
        if rng.random() < 0.3:
            await asyncio.sleep(0.001)
    for t in tasks:
        try:
            await t
        except asyncio.CancelledError:
            results["cancelled"] += 1
    watcher.cancel()
    return gate, dict(results, idle_with_waiters=violations)


# -- through the real axon -------------------------------------------------------------------

def _slow_engine(tmp_path, seconds: float, deadline_s: float = 7.0):
    from natix_miner.engine import Engine

    prof = make_profile(tmp_path, experts=[{"name": "slow", "family": "engine_test_slow", "max_batch": 1,
                                            "max_wait_ms": 0, "options": {"seconds": seconds}}],
                        tiers=[{"name": "only", "experts": ["slow"], "budget_s": 6.0}],
                        deadline_s=deadline_s, fallback_probability=0.3, cache={"max_entries": 0})
    return Engine(prof, experts={"slow": SlowExpert(prof.expert("slow"), prof)})


def _grey_b64(value: int) -> str:
    import base64

    from tests.support.engine_experts import grey_png

    return base64.b64encode(grey_png(value, 32)).decode()


async def test_more_validators_than_capacity_stake_decides_who_waits(tmp_path, miner_wallet):
    """10 validators at once against capacity 2 in flight + 3 waiting, each call 0.3 s of model time.

    The 3 highest stakes are always served by the model (only higher stakes could push them out of
    the queue); everyone gets a valid answer well before the 6 s timeout; nothing queues beyond 3.
    """
    stakes = [100.0 * (i + 1) for i in range(10)]
    vals = validators(tmp_path, stakes)
    hooks = RecordingHooks()
    cfg = miner_config(tmp_path, vals, axon={"max_inflight": 2, "max_waiting": 3})
    with MinerThread(cfg, engine=_slow_engine(tmp_path, 0.3), hooks=hooks, wallet=miner_wallet) as m:
        order = list(range(10))
        random.Random(3).shuffle(order)
        images = [_grey_b64(20 + 20 * i) for i in range(10)]  # different images: no cache sharing
        calls = [query(vals[i][0], m.info(), ImageSynapse(image=images[i]), timeout=6.0) for i in order]
        out = await asyncio.gather(*calls)
        snap = m.miner.admission.snapshot()
    by_hotkey = hooks.outcomes()
    for (resp, took), i in zip(out, order):
        assert resp.axon.status_code == 200, (resp.dendrite.status_code, resp.dendrite.status_message, took)
        assert valid(resp.prediction)
        assert took < 6.0
    top3 = [vals[i][0].hotkey.ss58_address for i in (7, 8, 9)]
    assert all(by_hotkey[h] == "answered" for h in top3), by_hotkey
    shed = [h for h, o in by_hotkey.items() if o == "shed"]
    assert len(shed) >= 5  # 10 callers, room for 5
    for (resp, _), i in zip(out, order):
        if by_hotkey[vals[i][0].hotkey.ss58_address] == "shed":
            assert resp.prediction == pytest.approx(0.3)  # the profile's fallback
    assert snap["peak_waiting"] <= 3 and snap["peak_inflight"] <= 2
    assert snap["inflight"] == 0 and snap["waiting"] == 0


async def test_queued_callers_get_the_fallback_before_their_deadline(tmp_path, miner_wallet):
    """Model calls take 2.5 s and the validators allow 3 s: the first caller's answer is cut by the
    engine's deadline, the queued ones give up at deadline - 0.25 s; all answer inside 3 s."""
    vals = validators(tmp_path, [10, 20, 30, 40])
    hooks = RecordingHooks()
    cfg = miner_config(tmp_path, vals, axon={"max_inflight": 1, "max_waiting": 10})
    with MinerThread(cfg, engine=_slow_engine(tmp_path, 2.5), hooks=hooks, wallet=miner_wallet) as m:
        out = await asyncio.gather(*[query(w, m.info(), ImageSynapse(image=_grey_b64(50 + i)), timeout=3.0)
                                     for i, (w, _) in enumerate(vals)])
        snap = m.miner.admission.snapshot()
    for resp, took in out:
        assert resp.axon.status_code == 200, resp.axon.status_message
        assert resp.prediction == pytest.approx(0.3)
        assert took < 3.0
    assert snap["refused"]["deadline"] == 3
    assert sorted(hooks.outcomes().values()) == ["fallback", "shed", "shed", "shed"]


@pytest.mark.parametrize("timeout,expected", [(None, 7.0), (9.0, 7.0), (3.0, 2.0), (float("nan"), 7.0),
                                              (float("inf"), 7.0), (-5.0, 0.2), (0.0, 7.0), (1e12, 7.0)])
def test_hostile_timeouts_still_give_a_bounded_budget(tmp_path, timeout, expected):
    """The validator-supplied timeout header can be anything; the miner's budget stays in
    [0.2 s, profile.deadline_s] (and leaves 1 s of a sane timeout for the network)."""
    from natix_miner.miner.neuron import Miner

    engine = _slow_engine(tmp_path, 0.1, deadline_s=7.0)
    miner = Miner(miner_config(tmp_path, []), engine=engine)
    syn = ImageSynapse(image="")
    syn.timeout = timeout
    assert miner._budget(syn) == pytest.approx(expected)
