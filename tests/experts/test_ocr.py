"""The ocr family with the real PP-OCRv4 models from the rapidocr-onnxruntime wheel, on rendered
road signs inside a road scene at the validator's 224x224 size, plus the fuzzy vocabulary matcher."""

import asyncio
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from natix_miner.config import load_profile
from natix_miner.experts import create_expert
from natix_miner.experts.ocr import match_terms, normalize
from natix_miner.offline import bundled_font
from tests.support.tiny_hf import write_profile


def sign_scene(lines, size=224) -> np.ndarray:
    """A road under a sky with an orange sign carrying ``lines`` (none: no sign), downscaled."""
    w = 640
    im = Image.new("RGB", (w, w), (135, 180, 230))
    d = ImageDraw.Draw(im)
    d.polygon([(0, w), (w, w), (w * 0.58, w * 0.45), (w * 0.42, w * 0.45)], fill=(70, 70, 72))
    d.rectangle([0, w * 0.45, w, w * 0.47], fill=(60, 120, 50))
    if lines:
        x0, y0, x1, y1 = w * 0.15, w * 0.06, w * 0.85, w * 0.42
        d.rectangle([x0 - 6, y0 - 6, x1 + 6, y1 + 6], fill=(0, 0, 0))
        d.rectangle([x0, y0, x1, y1], fill=(255, 140, 0))
        font = ImageFont.truetype(bundled_font(), 46)
        for i, text in enumerate(lines):
            d.text(((x0 + x1) / 2, y0 + (i + 0.5) * (y1 - y0) / len(lines)), text, fill=(0, 0, 0), font=font,
                   anchor="mm")
        d.rectangle([w * 0.5 - 4, y1 + 6, w * 0.5 + 4, w * 0.6], fill=(90, 90, 90))
    return np.asarray(im.resize((size, size), Image.BILINEAR))


PROFILE = """
name: ocr
experts:
  - name: ocr
    family: ocr
    model: store:rapidocr-ppocrv4
    max_batch: 4
    options: {threads: 2, no_match_probability: 0.45}
tiers: [{name: evidence, experts: [ocr], budget_s: 8}]
escalation: {low: 0.0, high: 1.0}
"""


@pytest.fixture(scope="module")
def ocr(tmp_path_factory):
    profile = load_profile(write_profile(tmp_path_factory.mktemp("ocr") / "p.yaml", PROFILE))
    e = create_expert(profile.expert("ocr"), profile)
    e.load("cpu")
    return e


def test_reads_roadwork_sign_and_abstains_without_text(ocr):
    road_work, baustelle, speed, blank = ocr.predict_batch(
        [sign_scene(["ROAD WORK", "AHEAD"]), sign_scene(["BAUSTELLE"]), sign_scene(["SPEED", "LIMIT 50"]),
         sign_scene([])])
    assert "ROAD" in road_work.detail["text"].upper() and "AHEAD" in road_work.detail["text"].upper()
    assert road_work.probability > 0.85 and not road_work.abstain
    assert any(m[0] in ("road work", "roadwork") for m in road_work.detail["matches"])
    assert baustelle.probability > 0.85 and baustelle.detail["matches"][0][0] == "baustelle"
    assert "SPEED" in speed.detail["text"].upper() and speed.detail["matches"] == []
    assert speed.probability == pytest.approx(0.45, abs=1e-6)
    assert blank.abstain and blank.detail["text"] == ""
    assert ocr.device == "cpu" and ocr.memory_bytes() > 10_000_000


@pytest.mark.parametrize("read,term", [
    ("ROAD WORK AHEAD", "road work"), ("ROADWORK", "roadwork"), ("R0AD W0RK", "road work"),
    ("Baustel1e", "baustelle"), ("BAUSTELLENAUSFAHRT", "baustellenausfahrt"), ("Umleitunq", "umleitung"),
    ("TRAVAUX", "travaux"), ("DÉVIATION", "deviation"), ("OBRAS", "obras"), ("DESVÍO", "desvio"),
    ("LAVORI IN CORSO", "lavori in corso"), ("ROBOTY DROGOWE", "roboty drogowe"), ("MEN AT W0RK", "men at work"),
    ("LANE CLOSED", "lane closed"), ("Straßenarbeiten", "strassenarbeiten"), ("DETOUR", "detour"),
])
def test_vocabulary_matches_through_ocr_errors(read, term):
    assert term in [m[0] for m in match_terms(read)], (read, match_terms(read))


@pytest.mark.parametrize("read", ["SPEED LIMIT 50", "STOP", "COBRAS", "HOTEL", "CONSTITUTION AVE", "ROAD", "WORK",
                                  "PARKING", "ONE WAY"])
def test_vocabulary_ignores_ordinary_sign_text(read):
    assert match_terms(read) == [], match_terms(read)


def test_normalize():
    assert normalize("Straße  DÉVIATION!") == "strasse deviation"
    assert normalize("R0AD-W0RK") == "road work"


def test_ocr_tier_through_the_engine():
    """A roadwork sign JPEG through the engine's evidence tier."""
    import tempfile

    from natix_miner.engine import Engine

    with tempfile.TemporaryDirectory() as d:
        profile = load_profile(write_profile(__import__("pathlib").Path(d) / "p.yaml", PROFILE))

    async def run():
        engine = Engine(profile)
        await engine.start(strict=True)
        try:
            buf = io.BytesIO()
            Image.fromarray(sign_scene(["ROAD WORK", "AHEAD"])).save(buf, "JPEG", quality=75)
            return await engine.predict(buf.getvalue())
        finally:
            await engine.close()

    res = asyncio.run(run())
    assert not res.fallback, res.to_dict()
    assert res.probability > 0.8 and "evidence" in res.tiers_run
    assert "ROAD" in res.evidence["ocr"].detail["text"].upper()
