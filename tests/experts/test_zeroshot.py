"""clip_zeroshot on tiny real CLIP and SigLIP models with tokenizers trained in memory: the expert's
probabilities must equal what the model's own forward pass (``logits_per_image``) says."""

import math

import numpy as np
import pytest
import torch

from natix_miner.config import load_profile
from natix_miner.experts import create_expert
from tests.support.tiny_hf import road_images, tiny_clip, tiny_siglip, tiny_siglip2, write_profile


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("zs")
    return {"clip": tiny_clip(root / "clip"), "siglip": tiny_siglip(root / "siglip"),
            "siglip2": tiny_siglip2(root / "siglip2")}


def load(tmp_path, model_dir, options="{}", dtype="float32"):
    profile = load_profile(write_profile(tmp_path / "p.yaml", f"""
name: zs
experts:
  - name: zs
    family: clip_zeroshot
    model: {model_dir}
    dtype: {dtype}
    options: {options}
tiers: [{{name: anomaly, experts: [zs]}}]
"""))
    e = create_expert(profile.expert("zs"), profile)
    e.load("cpu")
    return e


def model_logits(model_dir, images, prompts):
    """logits_per_image straight from the model's forward, as its processor prepares inputs."""
    from transformers import AutoModel, AutoProcessor

    proc = AutoProcessor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    siglip = model.config.model_type.startswith("siglip")
    kw = dict(padding="max_length", max_length=16) if siglip else dict(padding=True)
    inputs = proc(text=prompts, images=images, return_tensors="pt", **kw)
    with torch.no_grad():
        return model(**inputs).logits_per_image.numpy()


PROMPTS = "{positive_prompts: [road work sign], negative_prompts: [clear empty highway]}"


def test_clip_softmax_matches_model_forward(tmp_path, dirs):
    e = load(tmp_path, dirs["clip"], PROMPTS, dtype="bfloat16")
    assert e.mode == "softmax" and e.dtype == torch.float32
    assert e.fast == (224, tuple(e.processor.image_processor.image_mean), tuple(e.processor.image_processor.image_std))
    imgs = road_images(3, seed=2)
    ev = e.predict_batch(imgs)
    z = model_logits(dirs["clip"], imgs, ["road work sign", "clear empty highway"])
    want = np.exp(z[:, 0]) / np.exp(z).sum(1)
    np.testing.assert_allclose([x.probability for x in ev], want, atol=1e-4)
    assert all(x.detail["top_prompt"] in ("road work sign", "clear empty highway") for x in ev)
    assert all(-1 <= x.detail["max_similarity"] <= 1 for x in ev)
    assert e.memory_bytes() > 0


@pytest.mark.parametrize("kind", ["siglip", "siglip2"])
def test_siglip_sigmoid_matches_model_forward(tmp_path, dirs, kind):
    e = load(tmp_path, dirs[kind], PROMPTS)
    assert e.mode == "sigmoid" and e.model.config.model_type == kind
    assert e.fast is None  # 64 px bicubic / NaFlex patches: the processor itself prepares the images
    imgs = road_images(3, seed=4)
    ev = e.predict_batch(imgs)
    z = model_logits(dirs[kind], imgs, ["road work sign", "clear empty highway"])
    np.testing.assert_allclose([x.probability for x in ev], 1 / (1 + np.exp(-z[:, 0])), atol=1e-4)


def test_temperature_bias_aggregate_and_anomaly_abstain(tmp_path, dirs):
    imgs = road_images(2, seed=6)
    base = load(tmp_path, dirs["clip"]).predict_batch(imgs)
    hot = load(tmp_path, dirs["clip"], "{temperature: 4.0, bias: 0.5}").predict_batch(imgs)
    for b, h in zip(base, hot):
        assert math.isclose(h.detail["logit"], b.detail["logit"] / 4.0 + 0.5, abs_tol=1e-5)
    mx = load(tmp_path, dirs["clip"], "{aggregate: max}").predict_batch(imgs)
    assert [m.detail["z_roadwork"] for m in mx] != [b.detail["z_roadwork"] for b in base]
    gate = load(tmp_path, dirs["clip"], "{min_similarity: 1.01}").predict_batch(imgs)
    assert all(g.abstain for g in gate) and not any(b.abstain for b in base)


def test_processor_path_equals_fast_path(tmp_path, dirs):
    imgs = road_images(3, seed=8)
    fast = load(tmp_path, dirs["clip"]).predict_batch(imgs)
    slow_expert = load(tmp_path, dirs["clip"], "{preprocess: processor}")
    assert slow_expert.fast is None
    np.testing.assert_allclose([x.probability for x in slow_expert.predict_batch(imgs)],
                               [x.probability for x in fast], atol=1e-5)


def test_bad_options_fail_clearly(tmp_path, dirs):
    with pytest.raises(ValueError, match=r"options\.mode: Input should be 'softmax' or 'sigmoid' \(got 'argmax'\)"):
        load(tmp_path, dirs["clip"], "{mode: argmax}")
    with pytest.raises(ValueError, match=r"options\.temperature: Input should be greater than 0"):
        load(tmp_path, dirs["siglip"], "{temperature: 0}")
