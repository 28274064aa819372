"""Micro-batching across concurrent requests; model calls never block the event loop."""

import asyncio
import threading

import pytest

from natix_miner.config import ExpertSpec
from natix_miner.engine import Engine
from natix_miner.engine.batching import BatchError, DaemonExecutor, MicroBatcher
from natix_miner.experts import create_expert
from natix_miner.experts.base import Evidence, Expert
from natix_miner.imaging.decode import decode_bytes
from tests.support.engine_experts import LoopProbeExpert, grey_png, make_profile, noise_jpeg, register, tiny_timm


def loaded(spec: dict) -> Expert:
    register()
    expert = create_expert(ExpertSpec(**spec))
    expert.load("cpu")
    return expert


def images(n: int, seed: int = 0):
    return [decode_bytes(noise_jpeg(seed + i, size=64)) for i in range(n)]


async def test_concurrent_requests_become_one_batch_of_a_real_model():
    expert = loaded(tiny_timm("cls"))
    b = MicroBatcher(expert, max_batch=8, max_wait_ms=200)
    b.start()
    try:
        imgs = images(6)
        out = await asyncio.gather(*[b.submit(im) for im in imgs])
        assert b.batches == 1 and b.largest_batch == 6 and b.items == 6
        # the batched answers equal one-by-one answers of the same model
        single = [expert.predict_batch([im])[0].probability for im in imgs]
        assert [e.probability for e in out] == pytest.approx(single, abs=1e-5)
        assert len({round(e.probability, 6) for e in out}) > 1  # real model, different inputs
    finally:
        await b.stop()
        await b.join()


async def test_max_batch_splits_the_queue():
    expert = loaded({"name": "b", "family": "engine_test_brightness"})
    b = MicroBatcher(expert, max_batch=4, max_wait_ms=50)
    b.start()
    try:
        await asyncio.gather(*[b.submit(im) for im in images(10)])
        assert sorted(expert.batches, reverse=True) == [4, 4, 2]
    finally:
        await b.stop()


async def test_engine_merges_concurrent_requests_per_expert(tmp_path):
    # a generous wait: on a loaded CI box the five decodes may be spread out
    prof = make_profile(tmp_path, experts=[tiny_timm("cls", max_wait_ms=1000),
                                           {"name": "b", "family": "engine_test_brightness", "max_batch": 64,
                                            "max_wait_ms": 1000}],
                        tiers=[{"name": "t", "experts": ["cls", "b"], "budget_s": 8}])
    async with Engine(prof) as engine:
        res = await asyncio.gather(*[engine.predict(noise_jpeg(i, size=64)) for i in range(5)])
        assert all(not r.fallback and set(r.evidence) == {"cls", "b"} for r in res)
        b = engine.pools["b"].replicas[0]
        assert b.expert.batches == [5], b.expert.batches
        assert engine.pools["cls"].replicas[0].batcher.largest_batch == 5
        assert engine.status()["experts"]["cls"]["replicas"][0]["mean_batch"] == 5.0


async def test_the_loop_runs_while_a_model_call_blocks(tmp_path):
    """The expert's call blocks its thread until a coroutine on the loop has run: if the call were
    made on the loop, the coroutine could not run and the expert would raise."""
    started, loop_ran = threading.Event(), threading.Event()
    LoopProbeExpert.events["loop"] = (started, loop_ran)
    prof = make_profile(tmp_path, experts=[{"name": "probe", "family": "engine_test_loop_probe",
                                            "options": {"key": "loop"}}],
                        tiers=[{"name": "t", "experts": ["probe"], "budget_s": 8}])

    async def heartbeat():
        while not started.is_set():
            await asyncio.sleep(0.005)
        loop_ran.set()

    async with Engine(prof) as engine:
        res, _ = await asyncio.gather(engine.predict(grey_png(100)), heartbeat())
    assert not res.fallback and "probe" in res.evidence, res.to_dict()


async def test_a_request_given_up_before_its_batch_costs_no_model_time():
    expert = loaded({"name": "s", "family": "engine_test_slow", "options": {"seconds": 0.3}})
    b = MicroBatcher(expert, max_batch=1, max_wait_ms=0)
    b.start()
    try:
        imgs = images(3)
        first = asyncio.ensure_future(b.submit(imgs[0]))
        await asyncio.sleep(0.05)  # the first batch is running
        gone = asyncio.ensure_future(b.submit(imgs[1]))
        await asyncio.sleep(0.01)
        gone.cancel()
        third = await b.submit(imgs[2])
        await first
        assert isinstance(third, Evidence)
        assert expert.batches == [1, 1] and b.dropped == 1
    finally:
        await b.stop()


async def test_concurrency_runs_batches_side_by_side():
    """Two batch slots on two threads: a barrier that needs both batches at once passes."""
    expert = loaded({"name": "bar", "family": "engine_test_barrier", "options": {"barrier": "conc", "parties": 2}})
    b = MicroBatcher(expert, max_batch=1, max_wait_ms=0, concurrency=2)
    b.start()
    try:
        out = await asyncio.gather(*[b.submit(im) for im in images(2)])
        assert len(out) == 2 and len(expert.threads) == 2
    finally:
        await b.stop()


class AsyncCounting(Expert):
    """An async-native expert (like vLLM): batches awaited on the loop, several in flight."""

    family = "engine_test_async"
    is_async = True

    def load(self, device):
        self.device = device
        self.in_flight = 0
        self.most = 0

    async def predict_batch_async(self, images):
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0.05)
        self.in_flight -= 1
        return [Evidence(float(im.rgb.mean()) / 255) for im in images]


async def test_async_expert_with_concurrency():
    expert = AsyncCounting(ExpertSpec(name="a", family="engine_test_async"))
    expert.load("cpu")
    b = MicroBatcher(expert, max_batch=1, max_wait_ms=0, concurrency=3)
    b.start()
    try:
        out = await asyncio.gather(*[b.submit(im) for im in images(6)])
        assert len(out) == 6 and expert.most == 3
    finally:
        await b.stop()


class PlainNumbers(Expert):
    """Answers bare floats (``extra`` more than asked when ``options.extra``) or a string."""

    family = "engine_test_numbers"

    def load(self, device):
        self.device = device

    def predict_batch(self, images):
        if self.options.get("garbage"):
            return ["yes"] * len(images)
        return [float(im.rgb.mean()) / 255 for im in images] + [0.1] * int(self.options.get("extra", 0))


@pytest.mark.parametrize("options, error", [({"extra": 1}, "2 results for 1 images"),
                                            ({"garbage": True}, "expected Evidence, got str"),
                                            ({}, None)])
async def test_model_output_is_checked(options, error):
    expert = PlainNumbers(ExpertSpec(name="w", family="engine_test_numbers", options=options))
    expert.load("cpu")
    b = MicroBatcher(expert, max_batch=1)
    b.start()
    try:
        img = decode_bytes(grey_png(51))
        if error:
            with pytest.raises(BatchError, match=error):
                await b.submit(img)
        else:
            ev = await b.submit(img)
            assert isinstance(ev, Evidence) and ev.probability == pytest.approx(0.2)
    finally:
        await b.stop()


def test_daemon_executor_threads_never_block_exit():
    ex = DaemonExecutor(2, name="t")
    assert all(t.daemon for t in ex._threads)
    assert ex.submit(sum, [1, 2]).result(5) == 3
    release = threading.Event()
    ex.submit(release.wait, 30)
    assert ex.shutdown(wait=True, timeout=0.1) is False  # a call still running: reported, not waited for
    release.set()
    with pytest.raises(RuntimeError):
        ex.submit(sum, [1])
