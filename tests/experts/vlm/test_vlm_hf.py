"""The ``hf_vlm`` family on real (tiny, random-weight) Qwen-VL models through transformers.

Random weights put P(yes) anywhere in (0, 1): these tests check the plumbing (chat template with the
image, answer-token check, restricted softmax, thinking pass, batching, the engine tier), never accuracy.
"""

import asyncio
import math

import pytest

from natix_miner.config import Profile
from natix_miner.experts import create_expert
from natix_miner.experts.vlm.prompt import VLMOptionError
from tests.support.vlm_support import jpeg_image, png_image, spec, tiny_vlm


@pytest.fixture(scope="module")
def expert():
    e = create_expert(spec("hf_vlm", tiny_vlm("qwen2_vl")))
    e.load("cpu")
    return e


def test_direct_probability(expert):
    out = expert.predict_batch([jpeg_image(0), png_image(1)])
    assert len(out) == 2
    for ev in out:
        assert 0.0 < ev.probability < 1.0 and not ev.abstain
        assert set(ev.detail["logprobs"]) == {"yes", "Yes", "no", "No"}
        assert all(lp < 0 for lp in ev.detail["logprobs"].values())
        assert 0 < ev.detail["answer_mass"] < 1
        assert "thinking" not in ev.detail
    assert out[0].probability != out[1].probability  # the image reaches the model
    # P(yes) is exactly the softmax over the four answer logprobs
    lp = out[0].detail["logprobs"]
    py, pn = math.exp(lp["yes"]) + math.exp(lp["Yes"]), math.exp(lp["no"]) + math.exp(lp["No"])
    assert out[0].probability == pytest.approx(py / (py + pn), abs=1e-3)


def test_deterministic_and_batch_independent(expert):
    a = expert.predict_batch([jpeg_image(0)])[0].probability
    b = expert.predict_batch([jpeg_image(0)])[0].probability
    c = expert.predict_batch([png_image(1), jpeg_image(0)])[1].probability
    assert a == b
    assert c == pytest.approx(a, abs=1e-4)  # left padding in a mixed batch changes nothing


def test_thinking_always():
    e = create_expert(spec("hf_vlm", tiny_vlm("qwen2_vl"), name="think",
                           thinking={"mode": "always", "max_tokens": 6, "timeout_s": 60}))
    e.load("cpu")
    out = e.predict_batch([jpeg_image(0), png_image(1)])
    for ev in out:
        t = ev.detail["thinking"]
        assert 0 < t["p"] < 1 and t["answer"] in ("yes", "no")
        assert 1 <= t["tokens"] <= 6
        assert set(t["logprobs"]) == {" yes", " Yes", " no", " No"}  # scored after "Answer:"
        assert ev.probability == pytest.approx(t["p"])
        assert 0 < ev.detail["p_direct"] < 1
    assert e.stats["thinking"] == 2


def test_thinking_band_only_for_ambiguous_images():
    e = create_expert(spec("hf_vlm", tiny_vlm("qwen2_vl"), name="band",
                           thinking={"mode": "band", "band": [0.0, 0.001], "max_tokens": 4}))
    e.load("cpu")
    [ev] = e.predict_batch([jpeg_image(0)])
    assert "thinking" not in ev.detail and e.stats["thinking"] == 0
    e.opts.thinking.band = (0.0, 1.0)
    [ev] = e.predict_batch([jpeg_image(0)])
    assert "thinking" in ev.detail and e.stats["thinking"] == 1


def test_thinking_time_budget():
    """Generation stops at the budget (transformers' max_time); the truncated reasoning is still scored."""
    e = create_expert(spec("hf_vlm", tiny_vlm("qwen2_vl"), name="cut",
                           thinking={"mode": "always", "max_tokens": 4096, "timeout_s": 0.05}))
    e.load("cpu")
    [ev] = e.predict_batch([jpeg_image(0)])
    t = ev.detail["thinking"]
    assert t["timed_out"] and t["tokens"] < 4096 and 0 < t["p"] < 1
    assert e.stats["thinking_timeouts"] == 1


def test_calibration_applied(expert):
    raw = expert.predict_batch([jpeg_image(0)])[0].probability
    e = create_expert(spec("hf_vlm", tiny_vlm("qwen2_vl"), name="cal", calibration_scale=3.0,
                           calibration_bias=1.0))
    e.load("cpu")
    p = e.predict_batch([jpeg_image(0)])[0].probability
    assert p == pytest.approx(1 / (1 + math.exp(-(3 * math.log(raw / (1 - raw)) + 1))), abs=1e-6)


def test_visual_token_budget(expert):
    small = create_expert(spec("hf_vlm", tiny_vlm("qwen2_vl"), name="small", max_pixels=112 * 112))
    small.load("cpu")
    img = jpeg_image(0).pil()
    n_big = expert._inputs(["x<|vision_start|><|image_pad|><|vision_end|>"], [img])["input_ids"].shape[1]
    n_small = small._inputs(["x<|vision_start|><|image_pad|><|vision_end|>"], [img])["input_ids"].shape[1]
    assert n_big - n_small == 64 - 16  # 224x224 -> 8x8 tokens; 112x112 -> 4x4


def test_bad_options_fail_clearly():
    with pytest.raises(VLMOptionError, match="single tokens"):
        create_expert(spec("hf_vlm", tiny_vlm("qwen2_vl"), yes_words=["roadworkish"])).load("cpu")
    with pytest.raises(VLMOptionError, match="options.engine"):
        create_expert(spec("hf_vlm", tiny_vlm("qwen2_vl"), engine={"kv_cache_dtype": "fp8"}))
    with pytest.raises(VLMOptionError, match="runtime"):
        create_expert(spec("hf_vlm", tiny_vlm("qwen2_vl"), runtime={"flash": True})).load("cpu")


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_other_qwen_generations(arch):
    e = create_expert(spec("hf_vlm", tiny_vlm(arch), name=arch))
    e.load("cpu")
    out = e.predict_batch([jpeg_image(0), png_image(1)])
    assert all(0 < ev.probability < 1 for ev in out)


def test_engine_vlm_tier():
    """The cascade runs the transformers VLM as its last tier and answers from it."""
    from natix_miner.engine import Engine

    profile = Profile.model_validate({
        "name": "vlm-test", "deadline_s": 9.0,
        "experts": [{"name": "qwen_vl", "family": "hf_vlm", "model": tiny_vlm("qwen2_vl"), "max_batch": 4,
                     "options": {"max_pixels": 224 * 224}}],
        "tiers": [{"name": "vlm", "experts": ["qwen_vl"], "budget_s": 9.0}]})

    async def run():
        engine = Engine(profile)
        await engine.start(strict=True)
        try:
            return await engine.predict(jpeg_image(0).data)
        finally:
            await engine.close()

    res = asyncio.run(run())
    assert not res.fallback and res.tiers_run == ["vlm"]
    assert 0 < res.evidence["qwen_vl"].probability < 1
