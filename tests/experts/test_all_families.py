"""Every expert family in one profile, end to end through the real engine on CPU.

One tiny real model per family (random weights, built once for the module in a temporary
directory): ``timm``, ``hf_classifier`` (the reference ViT layout), ``dino_head`` (DINOv2 + a linear
head), ``clip_zeroshot`` (CLIP), ``ocr`` (the real PP-OCRv4 models from the rapidocr wheel),
``ultralytics`` (YOLO11), ``rfdetr`` (RF-DETR Nano), ``hf_detector`` (D-FINE), ``timm_det`` (CenterNet on
EfficientNet-Lite0), ``grounding_dino``,
``owlv2``, ``sam3``, ``depth`` (Depth Anything checking the YOLO boxes), ``hf_vlm`` (a tiny Qwen2-VL)
and ``openai_vlm`` (the same tiny Qwen2-VL behind the project's OpenAI-compatible server on a
loopback port, in a thread of this process). The two wrappers run too: ``isolated`` runs the timm
expert in a child process and ``chaos`` wraps it with no fault switched on.

One YAML profile puts them in three tiers (fast classifiers and zero-shot; detectors, open
vocabulary, OCR and depth; the VLMs) with the escalation band ``low: 0.0, high: 1.0`` so every image
climbs through every tier, is loaded with :func:`natix_miner.config.load_profile` and served by one
:class:`natix_miner.engine.Engine` (``start(strict=True)``: any expert that fails to load fails the
module). Validator-style images (procedural dashcam scenes, centre-cropped to 224x224, JPEG quality
75, base64) must be answered by every expert, with no skipped or failed expert, a finite probability
in [0, 1] from each, and the same answer again for the same image.

Left out: the ``vllm`` family. vLLM pins its own torch build, so it lives in ``.venv-vllm`` and
cannot be imported in the main environment; ``tests/experts/vlm/test_vlm_vllm.py`` runs it there (and checks
``openai_vlm`` against ``vllm serve``). ``test_profile_covers_every_family`` fails if another family
is added to ``FAMILIES`` without joining this profile.
"""

import asyncio
import base64
import io
import math
import os
import threading

import numpy as np
import pytest
from PIL import Image

from natix_miner.config import load_profile
from natix_miner.engine import Engine
from natix_miner.experts import FAMILIES
from tests.experts.test_ocr import sign_scene
from tests.support.tiny_detectors import detector_experts
from tests.support.tiny_hf import reference_vit, tiny_clip, tiny_dinov2
from tests.support.vlm_support import tiny_vlm

# Families this profile cannot hold, and why (see the module docstring).
LEFT_OUT = {"vllm": "needs its own torch build: runs in .venv-vllm (tests/experts/vlm/test_vlm_vllm.py)"}
TIERS = ["fast", "evidence", "vlm"]
SERVED_NAME = "tiny-qwen"


class LoopbackVLMServer:
    """``natix_miner.experts.vlm.hf_server`` on 127.0.0.1 (a free port) in its own thread and loop,
    serving its own loaded copy of a tiny Qwen-VL; the engine's event loop stays separate."""

    def __init__(self, model_dir: str):
        from natix_miner.experts.vlm.hf_server import load_expert

        self.expert = load_expert(model_dir)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, name="vlm-server", daemon=True)
        self.thread.start()
        if not self.ready.wait(60) or self.error:
            raise RuntimeError(f"VLM server did not start: {self.error}")

    def _run(self):
        from aiohttp import web

        from natix_miner.experts.vlm.hf_server import create_app

        asyncio.set_event_loop(self.loop)
        try:
            self.runner = web.AppRunner(create_app(self.expert, SERVED_NAME))
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"
        except Exception as exc:  # noqa: BLE001 - reported by __init__
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()
        self.expert.close()


def build_profile_yaml(root, server_url: str) -> str:
    """The all-families profile, every model under ``root``; returns the YAML text."""
    import timm
    import torch
    import yaml

    from natix_miner.experts.dino_head import save_head

    # timm: one random-weight checkpoint, loaded by the in-process, isolated and chaos experts alike
    torch.manual_seed(0)
    timm_weights = root / "timm_effnet.pth"
    torch.save(timm.create_model("test_efficientnet", pretrained=False, num_classes=2).state_dict(), timm_weights)
    timm_spec = {"family": "timm", "model": "test_efficientnet",
                 "options": {"weights": str(timm_weights), "num_classes": 2, "image_size": 96}}

    dino_dir = tiny_dinov2(root / "dinov2")
    rng = np.random.default_rng(0)
    save_head(str(root / "dino_head.npz"), rng.normal(size=32) * 0.5, 0.1, pooling="cls")

    det = detector_experts(root / "detectors")
    for spec in det:
        spec["max_batch"] = 2

    experts = [
        dict(name="cls_timm", max_batch=4, **timm_spec),
        {"name": "cls_timm_isolated", "family": "isolated", "timeout_s": 20,
         "options": {"inner": timm_spec, "threads": 1}},
        {"name": "cls_timm_chaos", "family": "chaos", "options": {"mode": "ok", "inner": timm_spec}},
        {"name": "cls_vit", "family": "hf_classifier", "model": str(reference_vit(root / "vit"))},
        {"name": "cls_dino", "family": "dino_head", "model": str(dino_dir),
         "options": {"head": str(root / "dino_head.npz")}},
        {"name": "zs_clip", "family": "clip_zeroshot", "model": str(tiny_clip(root / "clip")),
         "options": {"positive_prompts": ["road work sign", "traffic cones and barriers"],
                     "negative_prompts": ["clear empty highway"]}},
        *det,
        {"name": "ocr", "family": "ocr", "model": "store:rapidocr-ppocrv4", "max_batch": 2,
         "options": {"threads": 2, "engine": {"det_limit_side_len": 480}}},
        {"name": "vlm_hf", "family": "hf_vlm", "model": tiny_vlm("qwen2_vl"), "max_batch": 2},
        {"name": "vlm_remote", "family": "openai_vlm", "model": SERVED_NAME, "max_batch": 2, "max_wait_ms": 0,
         "options": {"server": {"base_url": server_url, "timeout_s": 30}}},
    ]
    det_names = [s["name"] for s in det]
    profile = {
        "name": "all-families",
        "description": "one tiny expert of every family that runs in the main environment (test)",
        "deadline_s": 9.0,
        "escalation": {"low": 0.0, "high": 1.0},  # every image climbs through every tier
        "cache": {"max_entries": 0},               # every predict runs the models (determinism check)
        "breaker": {"failures": 50, "cooldown_s": 1.0},
        "tiers": [
            {"name": "fast", "experts": ["cls_timm", "cls_timm_isolated", "cls_timm_chaos", "cls_vit", "cls_dino",
                                         "zs_clip"], "budget_s": 3.0},
            {"name": "evidence", "experts": det_names + ["ocr"], "budget_s": 6.0},
            {"name": "vlm", "experts": ["vlm_hf", "vlm_remote"], "budget_s": 6.0},
        ],
        "experts": [dict(e, device="cpu") for e in experts],
    }
    return yaml.safe_dump(profile, sort_keys=False)


def validator_image(scene_rgb) -> str:
    """What a validator sends: centre crop to the short side, 224x224, JPEG quality 75, base64."""
    im = scene_rgb if isinstance(scene_rgb, Image.Image) else Image.fromarray(np.asarray(scene_rgb))
    im = im.convert("RGB")
    s = min(im.size)
    left, top = (im.width - s) // 2, (im.height - s) // 2
    im = im.crop((left, top, left + s, top + s)).resize((224, 224), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=75)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Models, server, profile and one started engine for the whole module; closed at the end."""
    root = tmp_path_factory.mktemp("all-families")
    server = LoopbackVLMServer(tiny_vlm("qwen2_vl"))
    loop = asyncio.new_event_loop()
    engine = None
    try:
        path = root / "all-families.yaml"
        path.write_text(build_profile_yaml(root, server.url))
        profile = load_profile(path)
        engine = Engine(profile)
        loop.run_until_complete(engine.start(strict=True))
        yield {"profile": profile, "engine": engine, "loop": loop, "server": server}
    finally:
        child = None
        if engine is not None:
            iso = engine.experts.get("cls_timm_isolated")
            child = getattr(iso, "_proc", None)
            loop.run_until_complete(engine.close())
        loop.close()
        server.close()
        assert child is None or child.poll() is not None, "engine.close() left the isolated child running"


@pytest.fixture(scope="module")
def images():
    from natix_miner.synth.scenes import render_scene

    return {"clear_road": validator_image(render_scene(0, seed=3).image),
            "roadwork": validator_image(render_scene(1, seed=4).image),
            "sign": validator_image(sign_scene(["ROAD WORK", "AHEAD"]))}


@pytest.fixture(scope="module")
def results(setup, images):
    loop, engine = setup["loop"], setup["engine"]
    return {k: loop.run_until_complete(engine.predict(v)) for k, v in images.items()}


def spec_families(spec) -> set:
    """The families an expert spec runs: its own, and its wrapped ``inner`` expert's."""
    out = {spec.family}
    inner = spec.options.get("inner")
    if isinstance(inner, dict) and inner.get("family"):
        out.add(inner["family"])
    return out


def test_profile_covers_every_family(setup):
    profile = setup["profile"]
    used = set().union(*(spec_families(s) for s in profile.tiered_experts))
    # the product's families (other tests register test-only families pointing into tests/)
    product = {f for f, target in FAMILIES.items() if target.startswith("natix_miner.")}
    assert product - used == set(LEFT_OUT), f"families missing from the all-families profile: " \
        f"{sorted(product - used - set(LEFT_OUT))}"
    assert [t.name for t in profile.tiers] == TIERS
    assert profile.escalation.low == 0.0 and profile.escalation.high == 1.0


def test_every_expert_loaded(setup):
    status = setup["engine"].status()
    names = [s.name for s in setup["profile"].tiered_experts]
    assert sorted(status["experts"]) == sorted(names)
    for name, st in status["experts"].items():
        assert st["load"] == "loaded" and st["breaker"] == "closed", (name, st)
        assert st["devices"] == ["cpu"], (name, st)
    iso = setup["engine"].experts["cls_timm_isolated"]
    assert iso.pid is not None and iso.pid != os.getpid()  # answered from a child process


def test_every_family_answers_every_image(setup, results):
    names = {s.name for s in setup["profile"].tiered_experts}
    for image, res in results.items():
        assert not res.fallback, (image, res.fallback_reason)
        assert res.tiers_run == TIERS, (image, res.tiers_run, res.skipped)
        assert res.skipped == {}, (image, res.skipped)
        assert set(res.evidence) == names, (image, names - set(res.evidence))
        for name, ev in res.evidence.items():
            assert math.isfinite(ev.probability) and 0.0 <= ev.probability <= 1.0, (image, name, ev)
        assert math.isfinite(res.probability) and 0.0 <= res.probability <= 1.0 and res.probability != 0.5
        for tier in TIERS:
            assert res.timings[f"tier:{tier}"] > 0


def test_answers_are_the_models(results):
    """Spot checks that each answer came out of its model, not a default."""
    for image, res in results.items():
        ev = res.evidence
        timm_p = ev["cls_timm"].probability
        # same weights in-process, in the child process and through the chaos wrapper
        assert ev["cls_timm_isolated"].probability == pytest.approx(timm_p, abs=1e-5), image
        assert ev["cls_timm_chaos"].probability == pytest.approx(timm_p, abs=1e-6), image
        # the remote VLM (over HTTP) and the in-process one run the same checkpoint and prompt
        assert ev["vlm_remote"].detail["p_direct"] == pytest.approx(ev["vlm_hf"].detail["p_direct"], abs=1e-4)
        for name in ("cls_vit", "cls_dino", "zs_clip"):
            assert "logit" in ev[name].detail, (image, name)
        for name in ("det_yolo", "det_rfdetr", "det_dfine", "det_timm", "ov_gdino", "ov_owlv2", "ov_sam3",
                     "depth_check"):
            assert "features" in ev[name].detail or "depth" in ev[name].detail or ev[name].abstain, (image, name)
    sign = results["sign"].evidence["ocr"]
    assert not sign.abstain and "ROAD" in sign.detail["text"].upper() and sign.probability > 0.8
    # the boosted YOLO class (index 3 mapped to cone) fires everywhere
    assert results["roadwork"].evidence["det_yolo"].detail["class_scores"]["cone"] > 0.5
    # different images reach the models: the pooled answers differ
    assert len({round(r.probability, 6) for r in results.values()}) == len(results)


def test_same_image_same_answer(setup, images, results):
    loop, engine = setup["loop"], setup["engine"]
    for image in ("roadwork", "sign"):
        again = loop.run_until_complete(engine.predict(images[image]))
        first = results[image]
        assert not again.cached and again.tiers_run == TIERS and again.skipped == {}
        assert again.probability == pytest.approx(first.probability, abs=1e-6), image
        for name, ev in first.evidence.items():
            assert again.evidence[name].probability == pytest.approx(ev.probability, abs=1e-6), (image, name)
            assert again.evidence[name].abstain == ev.abstain, (image, name)
