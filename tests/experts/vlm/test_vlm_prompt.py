"""VLM shared logic: options, answer-token checks on a real trained tokenizer, P(yes), thinking parse,
and the vLLM engine-argument mapping (a pure function, checked against vLLM's names in test_vlm_vllm)."""

import math

import pytest

from natix_miner.experts.vlm.prompt import (AnswerSet, VLMOptionError, VLMOptions, classify_word,
                                            parse_final_answer, restricted_softmax, strip_after_marker)
from natix_miner.experts.vlm.vllm_engine import VLLMEngineOptions, engine_arguments


@pytest.fixture(scope="module")
def tokenizer():
    from natix_miner.standins.tiny_vlm import train_tokenizer

    return train_tokenizer()


def test_answer_set_single_tokens(tokenizer):
    answers = AnswerSet.from_tokenizer(tokenizer, ["yes", "Yes"], ["no", "No"])
    assert len(answers.ids()) == 4 and len(answers.ids(marked=True)) == 4
    assert set(answers.ids()).isdisjoint(answers.ids(marked=True))
    for tid, word in {**answers.yes, **answers.no_marked}.items():
        assert tokenizer.decode([tid]) == word


def test_answer_set_rejects_multi_token_words(tokenizer):
    with pytest.raises(VLMOptionError, match="single tokens"):
        AnswerSet.from_tokenizer(tokenizer, ["affirmative"], ["no"])
    with pytest.raises(VLMOptionError, match="share token ids"):
        AnswerSet.from_tokenizer(tokenizer, ["yes"], ["yes"])


def test_probability_is_restricted_softmax(tokenizer):
    answers = AnswerSet.from_tokenizer(tokenizer, ["yes", "Yes"], ["no", "No"])
    (y1, y2), (n1, n2) = list(answers.yes), list(answers.no)
    p, detail = answers.probability({y1: math.log(0.3), y2: math.log(0.1), n1: math.log(0.2), n2: -math.inf,
                                     12345: 0.0})
    assert p == pytest.approx(0.4 / 0.6)
    assert detail["answer_mass"] == pytest.approx(0.6)
    assert answers.probability({})[0] is None


def test_restricted_softmax_is_stable_for_tiny_logprobs():
    p, _ = restricted_softmax({"yes": -1000.0}, {"no": -1001.0})
    assert p == pytest.approx(1 / (1 + math.exp(-1)))


def test_classify_and_parse():
    assert classify_word(" Yes", ["yes"], ["no"]) == "yes"
    assert classify_word("NO\n", ["yes"], ["no"]) == "no"
    assert classify_word("maybe", ["yes"], ["no"]) is None
    text = "I see cones, so maybe yes... but they are stored. Answer: **No**"
    assert parse_final_answer(text, ["yes"], ["no"]) == "no"
    assert parse_final_answer("cones and a barrier, yes", ["yes"], ["no"]) == "yes"
    assert parse_final_answer("nothing decisive", ["yes"], ["no"]) is None
    assert strip_after_marker("cones. Answer: yes", "Answer:") == "cones. "
    assert strip_after_marker("cones and", "Answer:") == "cones and\n"


def test_options_validate_and_calibrate():
    opts = VLMOptions.parse({"calibration_scale": 2.0, "calibration_bias": -0.5,
                             "thinking": {"mode": "band", "band": [0.4, 0.6]}})
    p = opts.calibrate(0.7)
    assert p == pytest.approx(1 / (1 + math.exp(-(2 * math.log(0.7 / 0.3) - 0.5))))
    with pytest.raises(VLMOptionError, match="thinking.mode"):
        VLMOptions.parse({"thinking": {"mode": "sometimes"}})
    with pytest.raises(VLMOptionError, match="unknown_key"):
        VLMOptions.parse({"unknown_key": 1})
    msgs = opts.messages(thinking=True)
    assert msgs[0]["role"] == "system" and msgs[1]["content"][0] == {"type": "image"}
    assert "Answer: yes" in msgs[1]["content"][1]["text"]


def test_chat_template_places_the_image(tokenizer):
    text = tokenizer.apply_chat_template(VLMOptions().messages(), tokenize=False, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_engine_arguments_map_every_option():
    opts = VLLMEngineOptions.model_validate({
        "gpu_memory_utilization": 0.4, "kv_cache_dtype": "fp8", "enable_prefix_caching": True,
        "enable_chunked_prefill": True, "max_num_seqs": 32, "max_num_batched_tokens": 8192,
        "quantization": "awq", "tensor_parallel_size": 2, "mm_encoder_tp_mode": "data",
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4},
        "device_ids": [0, 1], "limit_mm_per_prompt": {"image": 1}, "extra": {"async_scheduling": True}})
    kw = engine_arguments(opts, "/m", "bfloat16", "cuda:0", max_pixels=200704, min_pixels=None, n_logprobs=4)
    assert kw["kv_cache_dtype"] == "fp8" and kw["quantization"] == "awq" and kw["dtype"] == "bfloat16"
    assert kw["mm_processor_kwargs"] == {"max_pixels": 200704}
    assert kw["mm_encoder_tp_mode"] == "data" and kw["tensor_parallel_size"] == 2
    assert kw["device_ids"] == [0, 1] and kw["async_scheduling"] is True
    assert kw["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    # a single-GPU engine follows the expert's placed device; fp8 dtype means fp8 weights
    one = engine_arguments(VLLMEngineOptions(), "/m", "fp8", "cuda:1", None, None, 4)
    assert one["device_ids"] == [1] and one["quantization"] == "fp8" and one["dtype"] == "auto"
    assert "device_ids" not in engine_arguments(VLLMEngineOptions(), "/m", "auto", "cpu", None, None, 4)
    with pytest.raises(VLMOptionError, match="fewer devices"):
        engine_arguments(VLLMEngineOptions(tensor_parallel_size=2, device_ids=[0]), "/m", "auto", "cuda:0",
                         None, None, 4)
    with pytest.raises(VLMOptionError, match="repeats"):
        engine_arguments(VLLMEngineOptions(extra={"seed": 3}), "/m", "auto", "cpu", None, None, 4)
    with pytest.raises(VLMOptionError, match="int8"):
        engine_arguments(VLLMEngineOptions(), "/m", "int8", "cpu", None, None, 4)


@pytest.mark.parametrize("name", ["h100x1", "h100x2"])
def test_production_profiles_use_valid_vlm_options(name):
    """Every VLM expert of the shipped GPU profiles parses, maps to engine arguments, and the vLLM
    engines sharing a card stay within the profile's GPU memory fraction."""
    from natix_miner.config import load_profile
    from natix_miner.experts import create_expert

    profile = load_profile(name)
    per_card = {}
    vlms = [e for e in profile.experts if e.family in ("vllm", "hf_vlm", "openai_vlm")]
    assert any(e.family == "vllm" for e in vlms)
    for spec in vlms:
        expert = create_expert(spec, profile)  # options parse here (VLMOptionError on a bad key)
        if spec.family != "vllm":
            continue
        engine = VLLMEngineOptions.model_validate(expert.opts.engine)
        devices = spec.devices or [spec.device]
        for device in devices:
            kw = engine_arguments(engine, spec.model, spec.dtype, device, expert.opts.max_pixels,
                                  expert.opts.min_pixels, 4)
            for gpu in kw.get("device_ids", [device]):
                per_card[gpu] = per_card.get(gpu, 0.0) + engine.gpu_memory_utilization
    assert per_card and all(u <= profile.gpu_memory_fraction for u in per_card.values()), per_card
