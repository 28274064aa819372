"""Classifier families on real architectures (random weights): hf_classifier (the reference ViT
layout), dino_head (DINOv2 / DINOv3 + linear heads) and ConvNeXt V2 through the timm family,
each loaded from a profile written in the exact YAML syntax users write."""

import math

import numpy as np
import pytest
import torch

from natix_miner.config import load_profile
from natix_miner.experts import create_expert
from natix_miner.experts.hf_classifier import pick_positive
from natix_miner.models_store import ModelStore
from tests.support.tiny_hf import reference_vit, road_images, tiny_dinov2, tiny_dinov3, write_profile


def load_expert(tmp_path, yaml_text, name):
    profile = load_profile(write_profile(tmp_path / "p.yaml", yaml_text))
    expert = create_expert(profile.expert(name), profile)
    expert.load("cpu")
    return expert


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    return reference_vit(tmp_path_factory.mktemp("vit") / "roadwork")


def reference_probability(directory, images, index):
    """P(label index) computed straight through transformers, independent of the expert."""
    from transformers import ViTForImageClassification, ViTImageProcessor

    proc = ViTImageProcessor.from_pretrained(directory)
    model = ViTForImageClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        logits = model(**proc(images=images, return_tensors="pt")).logits
    return torch.softmax(logits, -1)[:, index].numpy()


def test_reference_vit_loads_as_published_and_picks_roadwork(tmp_path, vit_dir):
    e = load_expert(tmp_path, f"""
name: t
experts:
  - name: natix_vit
    family: hf_classifier
    model: {vit_dir}
    dtype: float16
    max_batch: 8
tiers: [{{name: fast, experts: [natix_vit]}}]
""", "natix_vit")
    assert e.positive == [1] and e.id2label[1] == "Roadwork"
    assert e.dtype == torch.float32 and e.device == "cpu"  # float16 is a CUDA-only choice
    assert e.fast == (224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # vectorised path, checked against the processor
    imgs = road_images(4)
    ev = e.predict_batch(imgs)
    want = reference_probability(vit_dir, imgs, 1)
    np.testing.assert_allclose([x.probability for x in ev], want, atol=1e-5)
    assert all(abs(x.detail["logit"] - math.log(p / (1 - p))) < 1e-4 for x, p in zip(ev, want))
    # batching does not change answers
    single = [e.predict_batch([im])[0].probability for im in imgs]
    np.testing.assert_allclose(single, want, atol=1e-5)
    assert e.memory_bytes() == sum(p.numel() * 4 for p in e.model.parameters()) + sum(
        b.numel() * b.element_size() for b in e.model.buffers())


def test_label_order_and_override(tmp_path):
    swapped = reference_vit(tmp_path / "swapped", id2label={0: "Roadwork", 1: "None"})
    base = f"""
name: t
experts:
  - name: v
    family: hf_classifier
    model: {swapped}
    {{opts}}
tiers: [{{{{name: fast, experts: [v]}}}}]
"""
    imgs = road_images(2, seed=3)
    e = load_expert(tmp_path, base.format(opts=""), "v")
    assert e.positive == [0]
    np.testing.assert_allclose([x.probability for x in e.predict_batch(imgs)],
                               reference_probability(swapped, imgs, 0), atol=1e-5)
    e2 = load_expert(tmp_path, base.format(opts="options: {positive_label: None, temperature: 2.0}"), "v")
    assert e2.positive == [1]
    p_none = reference_probability(swapped, imgs, 1)
    got = [x.probability for x in e2.predict_batch(imgs)]
    # temperature 2 pulls the answer towards 0.5 but keeps its side
    assert all(abs(g - 0.5) < abs(p - 0.5) and (g - 0.5) * (p - 0.5) > 0 for g, p in zip(got, p_none))


def test_pick_positive_rules():
    assert pick_positive({0: "None", 1: "Roadwork"}) == [1]
    assert pick_positive({0: "no_roadwork", 1: "road_work"}) == [1]
    assert pick_positive({0: "LABEL_0", 1: "LABEL_1"}) == [1]
    assert pick_positive({0: "cat", 1: "Cone", 2: "Barrier"}, positive_label=["cone", "barrier"]) == [1, 2]
    assert pick_positive({0: "a", 1: "b"}, positive_index=0) == [0]
    with pytest.raises(ValueError, match="no roadwork label"):
        pick_positive({0: "cat", 1: "dog", 2: "bird"})
    with pytest.raises(ValueError, match="several"):
        pick_positive({0: "roadwork", 1: "construction"})
    with pytest.raises(ValueError, match="not a label"):
        pick_positive({0: "None", 1: "Roadwork"}, positive_label="cone")


def test_hf_classifier_from_store_name(tmp_path, vit_dir, monkeypatch):
    monkeypatch.setenv("NATIX_MODEL_DIR", str(tmp_path / "store"))
    ModelStore().add("tiny-roadwork-vit", str(vit_dir), family="hf_classifier", hub_id="natix-network-org/roadwork")
    e = load_expert(tmp_path, """
name: t
experts:
  - {name: v, family: hf_classifier, model: tiny-roadwork-vit}
tiers: [{name: fast, experts: [v]}]
""", "v")
    assert str(tmp_path / "store" / "weights" / "tiny-roadwork-vit") in str(e.model.name_or_path)
    assert 0 < e.predict_batch(road_images(1))[0].probability < 1


@pytest.fixture(scope="module")
def dino_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dino")
    return {"v2": tiny_dinov2(root / "dinov2"), "v3": tiny_dinov3(root / "dinov3")}


def manual_dino(directory, images, pooling, prefix):
    from transformers import AutoModel

    from natix_miner.imaging.preprocess import to_batch

    model = AutoModel.from_pretrained(directory).eval()
    with torch.no_grad():
        t = model(pixel_values=to_batch(images, 224)).last_hidden_state
    if pooling == "cls":
        return t[:, 0].numpy()
    return torch.cat([t[:, 0], t[:, prefix:].mean(1)], 1).numpy()


@pytest.mark.parametrize("version,head_kind,pooling", [("v2", "npz", "cls+mean"), ("v3", "torch", "cls")])
def test_dino_head(tmp_path, dino_dirs, version, head_kind, pooling):
    from natix_miner.experts.dino_head import save_head

    rng = np.random.default_rng(1)
    dim = 64 if pooling == "cls+mean" else 32
    if head_kind == "npz":
        w, b = rng.normal(size=dim), 0.3
        mu, sigma = rng.normal(size=dim) * 0.1, np.abs(rng.normal(size=dim)) + 0.5
        head = tmp_path / "head.npz"
        save_head(str(head), w, b, mu, sigma, pooling=pooling)
        opts = f"{{head: {head}}}"  # pooling comes from the file
    else:
        lin = torch.nn.Linear(dim, 2)
        head = tmp_path / "head.pt"
        torch.save({"head." + k: v for k, v in lin.state_dict().items()}, head)
        opts = f"{{head: {head}, pooling: {pooling}, positive_index: 1}}"
    e = load_expert(tmp_path, f"""
name: t
experts:
  - name: dino
    family: dino_head
    model: {dino_dirs[version]}
    dtype: bfloat16
    options: {opts}
tiers: [{{name: fast, experts: [dino]}}]
""", "dino")
    assert e.pooling == pooling and e.prefix == (1 if version == "v2" else 5)
    imgs = road_images(3, seed=5)
    got = np.array([x.probability for x in e.predict_batch(imgs)])
    f = manual_dino(dino_dirs[version], imgs, pooling, e.prefix)
    if head_kind == "npz":
        want = 1 / (1 + np.exp(-(((f - mu) / sigma) @ w + b)))
    else:
        want = torch.softmax(lin(torch.from_numpy(f)), -1)[:, 1].detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert e.memory_bytes() > 0


def test_dino_head_errors_are_clear(tmp_path, dino_dirs):
    from natix_miner.experts.dino_head import save_head

    save_head(str(tmp_path / "h.npz"), np.ones(48), 0.0)
    text = f"""
name: t
experts:
  - {{name: d, family: dino_head, model: {dino_dirs['v2']}, options: {{head: {tmp_path / 'h.npz'}}}}}
tiers: [{{name: fast, experts: [d]}}]
"""
    with pytest.raises(ValueError, match="head expects 48 features.*gives 32"):
        load_expert(tmp_path, text, "d")
    with pytest.raises(ValueError, match="not one of"):
        load_expert(tmp_path, text.replace(str(dino_dirs["v2"]), str(reference_vit(tmp_path / "vit"))), "d")


def test_convnextv2_through_timm_family_and_store(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = timm.create_model("convnextv2_atto", pretrained=False, num_classes=2).eval()
    save_file(ref.state_dict(), str(tmp_path / "convnextv2_atto.safetensors"))
    monkeypatch.setenv("NATIX_MODEL_DIR", str(tmp_path / "store"))
    m = ModelStore().add("cnx-atto", str(tmp_path / "convnextv2_atto.safetensors"), family="timm", mode="link")
    assert m.entry == "convnextv2_atto.safetensors"
    e = load_expert(tmp_path, """
name: t
experts:
  - name: convnextv2
    family: timm
    model: convnextv2_atto
    options: {weights: store:cnx-atto, num_classes: 2, positive_index: 1}
tiers: [{name: fast, experts: [convnextv2]}]
""", "convnextv2")
    imgs = road_images(2, seed=9)
    from natix_miner.imaging.preprocess import to_batch

    with torch.no_grad():
        cfg = ref.pretrained_cfg
        want = torch.softmax(ref(to_batch(imgs, 224, cfg["mean"], cfg["std"])), -1)[:, 1].numpy()
    np.testing.assert_allclose([x.probability for x in e.predict_batch(imgs)], want, atol=1e-4)
