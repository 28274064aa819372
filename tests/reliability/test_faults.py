"""Faults: an expert that raises, hangs, runs out of CUDA memory, answers NaN, or whose engine
process dies. The breaker opens, answers continue from the remaining tiers, and the expert is
taken back once it recovers.

Real components throughout: tiny timm models with random weights (``tests/engine_experts.tiny_timm``)
answer tier 0; tier 1 is the ``chaos`` family around another real timm model, switched by a mode
file, or the ``isolated`` family whose child process is killed with SIGKILL.
"""

import asyncio
import os
import signal
import time

import pytest

from natix_miner.engine import Engine
from natix_miner.synth.hostile import b64, encode, scene
from natix_miner.miner.local import MinerThread
from natix_miner.protocol import ImageSynapse
from tests.support.engine_experts import BrightnessExpert, make_profile, tiny_timm
from tests.support.reliability_support import RecordingHooks, miner_config, query, valid, validators

BRIGHTNESS = f"tests.support.engine_experts:{BrightnessExpert.__name__}"
INNER = {"family": "timm", "model": "mobilenetv3_small_050", "options": {"num_classes": 2, "image_size": 64}}


def _image(seed: int) -> str:
    from PIL import Image

    return b64(encode(Image.fromarray(scene(96, 96, seed=seed)), "JPEG", quality=75))


def _profile(tmp_path, second: dict, cooldown_s: float = 0.5, **top):
    return make_profile(
        tmp_path, experts=[tiny_timm("fast"), second],
        tiers=[{"name": "t0", "experts": ["fast"], "budget_s": 4.0},
               {"name": "t1", "experts": [second["name"]], "budget_s": 1.0}],
        escalation={"low": 0.0, "high": 1.0},  # every image climbs to tier 1
        breaker={"failures": 2, "cooldown_s": cooldown_s}, cache={"max_entries": 0}, deadline_s=7.0,
        fallback_probability=0.3, **top)


def _breaker(engine, name) -> str:
    return engine.status()["experts"][name]["breaker"]


async def _until_recovered(engine, name, seed0, timeout_s=60.0):
    end = time.monotonic() + timeout_s
    i = 0
    while time.monotonic() < end:
        res = await engine.predict(_image(seed0 + i))
        assert not res.fallback and valid(res.probability)
        if name in res.evidence:
            return res
        i += 1
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name} did not recover in {timeout_s}s: {engine.status()['experts'][name]}")


@pytest.mark.parametrize("fault,skip_tag", [("raise", "error:RuntimeError"), ("oom", "error:OutOfMemoryError"),
                                            ("hang", "timeout")])
async def test_faulty_expert_trips_its_breaker_answers_continue_then_it_recovers(tmp_path, fault, skip_tag):
    mode = tmp_path / "chaos-mode"
    mode.write_text("ok")
    prof = _profile(tmp_path, {"name": "flaky", "family": "chaos", "max_batch": 4,
                               "options": {"mode_file": str(mode), "inner": INNER}})
    engine = Engine(prof)
    await engine.start(strict=True)
    try:
        res = await engine.predict(_image(0))
        assert sorted(res.evidence) == ["fast", "flaky"] and not res.fallback

        mode.write_text(fault)
        seen = []
        for i in range(6):
            t0 = time.monotonic()
            res = await engine.predict(_image(100 + i))
            took = time.monotonic() - t0
            assert not res.fallback, res.to_dict()  # tier 0 keeps answering
            assert valid(res.probability) and list(res.evidence) == ["fast"]
            assert took < prof.deadline_s
            seen.append(res.skipped.get("flaky"))
        assert seen[0] == skip_tag
        assert "breaker_open" in seen  # once open, no request pays for the broken expert
        if fault != "hang":
            assert all(s in (skip_tag, "breaker_open") for s in seen), seen
        assert _breaker(engine, "flaky") in ("open", "half_open")

        mode.write_text("ok")  # the expert comes back (a hung call returns)
        await asyncio.sleep(0.6)
        res = await _until_recovered(engine, "flaky", 200)
        assert _breaker(engine, "flaky") == "closed"
        assert sorted(res.evidence) == ["fast", "flaky"]
    finally:
        mode.write_text("ok")
        await engine.close()


async def test_nan_and_short_answers_never_reach_the_wire(tmp_path):
    mode = tmp_path / "chaos-mode"
    mode.write_text("nan")
    prof = _profile(tmp_path, {"name": "odd", "family": "chaos", "options": {"mode_file": str(mode), "inner": INNER}})
    engine = Engine(prof)
    await engine.start(strict=True)
    try:
        res = await engine.predict(_image(1))
        assert valid(res.probability) and not res.fallback
        assert res.evidence["odd"].abstain  # NaN is "no opinion", never a NaN answer
        mode.write_text("short")  # one result fewer than images: an error, not a misaligned answer
        res = await engine.predict(_image(2))
        assert valid(res.probability) and "odd" not in res.evidence
        assert res.skipped["odd"].startswith("error:")
    finally:
        await engine.close()


async def test_killed_engine_process_miner_keeps_answering_and_recovers(tmp_path, miner_wallet):
    """A supervised child process (the VLM engine stand-in) is SIGKILLed while validators query a
    real axon: answers keep coming from tier 0, in time; the child restarts and tier 1 is back."""
    inner = {"family": "engine_test_brightness"}  # a torch-free model keeps the child's restarts quick
    prof = _profile(tmp_path, {"name": "vlm", "family": "isolated", "timeout_s": 5.0,
                               "options": {"inner": inner, "restart_backoff_s": 0.2,
                                           "families": {"engine_test_brightness": BRIGHTNESS}}}, cooldown_s=3.0)
    vals = validators(tmp_path, [1000])
    hooks = RecordingHooks()
    engine = Engine(prof)
    with MinerThread(miner_config(tmp_path, vals), engine=engine, hooks=hooks, wallet=miner_wallet) as m:
        w = vals[0][0]
        r, _ = await query(w, m.info(), ImageSynapse(image=_image(0)))
        assert r.axon.status_code == 200 and valid(r.prediction)
        assert hooks.requests[-1]["evidence"] == ["fast", "vlm"]
        child = engine.experts["vlm"]
        old_pid = child.pid
        os.kill(old_pid, signal.SIGKILL)

        outage = []
        for i in range(4):
            r, took = await query(w, m.info(), ImageSynapse(image=_image(10 + i)))
            assert r.axon.status_code == 200 and valid(r.prediction) and took < 9.0
            rec = hooks.requests[-1]
            assert rec["outcome"] == "answered" and rec["evidence"] == ["fast"], rec
            outage.append(rec["skipped"].get("vlm"))
        assert outage[0] in ("error:EngineProcessDown", "breaker_open"), outage
        assert "breaker_open" in outage

        end = time.monotonic() + 180
        i = 0
        while time.monotonic() < end:
            r, _ = await query(w, m.info(), ImageSynapse(image=_image(100 + i)))
            assert r.axon.status_code == 200 and valid(r.prediction)
            if "vlm" in hooks.requests[-1]["evidence"]:
                break
            i += 1
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"vlm never came back: {engine.status()['experts']['vlm']}")
        assert child.pid != old_pid and child.restarts == 1 and child.deaths == 1
        assert engine.status()["experts"]["vlm"]["breaker"] == "closed"
    assert child.pid is not None
