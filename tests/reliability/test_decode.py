"""Hostile input on the decoding path: every case is decoded to RGB or cleanly rejected.

Covers the catalogue in ``natix_miner/synth/hostile.py`` case by case, then hypothesis property
tests: arbitrary bytes, arbitrary text, corrupted real images and randomly generated images in
every format/mode never raise anything but :class:`ImageError`, and what decodes is (H, W, 3)
uint8. Memory stays bounded: the bombs are decoded in a fresh process whose peak RSS is measured.
"""

from tests.support.paths import REPO_ROOT
import base64
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from natix_miner.imaging.decode import (ALLOWED_FORMATS, ImageError, b64decode_strict, decode_base64, decode_bytes,
                                        probe)
from natix_miner.synth.hostile import cases, encode, png_bomb, scene

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # bombs on purpose

ROOT = REPO_ROOT
CASES = {c.name: c for c in cases()}
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_case(name):
    case = CASES[name]
    if case.expect == "answer":
        img = decode_base64(case.text)
        rgb = img.rgb
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert rgb.shape[0] * rgb.shape[1] >= 1
        assert rgb.flags["C_CONTIGUOUS"]
    else:
        with pytest.raises(ImageError) as info:
            decode_base64(case.text)
        assert info.value.reason == case.reason, str(info.value)


def test_catalogue_covers_the_issue_list():
    """Every kind of input the issue names is in the catalogue."""
    names = " ".join(CASES)
    for kind in ["invalid_base64", "empty", "truncated_jpeg", "base64_of_text", "png", "gif", "webp", "bmp", "tiff",
                 "16bit", "cmyk", "palette", "rgba", "animated", "1x1", "bomb", "exif"]:
        assert kind in names, kind


def test_decoded_pixels_are_the_image():
    """Not just 'no crash': format conversions keep the picture (PNG is lossless, JPEG close)."""
    ref = scene().astype(np.int16)
    png = decode_base64(CASES["png_rgb"].text).rgb.astype(np.int16)
    assert np.array_equal(png, ref)
    rgba = decode_base64(CASES["png_rgba"].text).rgb.astype(np.int16)  # opaque alpha: same picture
    assert np.array_equal(rgba, ref)
    cmyk = decode_base64(CASES["tiff_cmyk"].text).rgb.astype(np.int16)
    assert np.abs(cmyk - ref).mean() < 2
    grey16 = decode_base64(CASES["png_16bit_grey"].text).rgb.astype(np.int16)
    assert np.abs(grey16[..., 0] - np.asarray(Image.fromarray(scene()).convert("L"), np.int16)).max() <= 1


def test_exif_orientation_is_applied_only_when_valid():
    assert decode_base64(CASES["exif_orientation_6"].text).rgb.shape == (32, 16, 3)  # rotated
    assert decode_base64(CASES["exif_orientation_invalid_9"].text).rgb.shape == (16, 32, 3)  # ignored
    assert decode_base64(CASES["exif_garbage"].text).rgb.shape == (16, 32, 3)


def test_pixel_cap_is_enforced_from_the_header_without_decoding():
    data = png_bomb(30000, 30000, lie=True)
    assert len(data) < 1000  # a few hundred bytes claim 900 Mpx
    with pytest.raises(ImageError) as info:
        probe(data)
    assert info.value.reason == "too_many_pixels"
    small = encode(Image.fromarray(scene(64, 64)), "PNG")
    with pytest.raises(ImageError):
        decode_bytes(small, max_pixels=64 * 63)
    assert decode_bytes(small, max_pixels=64 * 64).rgb.shape == (64, 64, 3)


def test_byte_cap_applies_before_base64_decoding():
    text = "A" * (4 * 1024 * 1024)
    with pytest.raises(ImageError) as info:
        b64decode_strict(text, max_bytes=1024 * 1024)
    assert info.value.reason == "too_large"


def test_concurrent_decoding_from_threads():
    """Decoding keeps no global state (no warnings filters, no PIL globals): threads can share it."""
    texts = [c.text for c in cases()] * 3
    errors = []

    def work(chunk):
        for t in chunk:
            try:
                decode_base64(t).rgb
            except ImageError:
                pass
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(texts[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]


BOMB_SCRIPT = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from natix_miner.imaging.decode import ImageError, decode_base64
from natix_miner.synth.hostile import cases

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcomes = {}
for c in cases():
    if c.expect == "reject":
        try:
            decode_base64(c.text)
            outcomes[c.name] = "decoded"
        except ImageError as exc:
            outcomes[c.name] = exc.reason
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "outcomes": outcomes}))
"""


def test_memory_stays_bounded_on_bombs():
    """Decoding every rejected case (bombs included) in a fresh process: peak RSS grows < 150 MB.

    The real 30000x30000 bomb would need 900 MB as 8-bit pixels if anything decoded it.
    """
    out = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, ROOT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["outcomes"]["png_bomb_real_30000"] == "too_many_pixels"
    assert "decoded" not in res["outcomes"].values()
    assert res["peak_mb"] - res["base_mb"] < 150, res


# -- property tests ---------------------------------------------------------------------------

@PROPERTY
@given(st.binary(max_size=4096))
def test_any_bytes_decode_or_reject_cleanly(data):
    try:
        img = decode_bytes(data)
    except ImageError:
        return
    assert img.rgb.dtype == np.uint8 and img.rgb.shape[2] == 3


@PROPERTY
@given(st.text(max_size=2048))
def test_any_text_decodes_or_rejects_cleanly(text):
    try:
        img = decode_base64(text)
    except ImageError:
        return
    assert img.rgb.shape[2] == 3


@PROPERTY
@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n ", max_size=4096))
def test_any_base64_alphabet_text_decodes_or_rejects_cleanly(text):
    try:
        decode_base64(text).rgb
    except ImageError:
        pass


def _seed_images():
    rgb = Image.fromarray(scene(48, 40))
    out = []
    for fmt in ALLOWED_FORMATS:
        im = rgb.convert("P") if fmt == "GIF" else rgb
        out.append(encode(im, fmt))
    out.append(encode(rgb.convert("RGBA"), "PNG"))
    out.append(encode(rgb.convert("CMYK"), "JPEG"))
    return out


SEEDS = _seed_images()


@PROPERTY
@given(st.sampled_from(range(len(SEEDS))), st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)),
                                                   max_size=12),
       st.one_of(st.none(), st.integers(0, 4096)))
def test_corrupted_real_images_decode_or_reject_cleanly(idx, flips, cut):
    """Real JPEG/PNG/GIF/WebP/BMP/TIFF files with bytes overwritten and/or cut short."""
    data = bytearray(SEEDS[idx])
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: max(1, cut % len(data))]
    try:
        img = decode_bytes(bytes(data))
    except ImageError:
        return
    assert img.rgb.ndim == 3 and img.rgb.shape[2] == 3 and img.rgb.dtype == np.uint8


MODES = ["RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16", "I", "F", "YCbCr", "LAB", "HSV", "RGBX"]
FORMAT_MODES = {  # what each writer accepts
    "PNG": {"RGB", "RGBA", "L", "LA", "P", "1", "I;16"},  # Pillow 13 writes no 32-bit "I" PNG
    "JPEG": {"RGB", "L", "CMYK", "YCbCr"},
    "GIF": {"P", "L", "1"},
    "WEBP": {"RGB", "RGBA"},
    "BMP": {"RGB", "L", "P", "1"},
    "TIFF": {"RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16", "I", "F", "YCbCr", "LAB", "RGBX"},
}


@st.composite
def generated_images(draw):
    fmt = draw(st.sampled_from(sorted(FORMAT_MODES)))
    mode = draw(st.sampled_from(sorted(FORMAT_MODES[fmt])))
    w, h = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode in ("I;16", "I"):
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).convert(mode) if mode == "I" else \
            Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == "F":
        arr = rng.normal(0, 1e3, (h, w)).astype(np.float32)
        if draw(st.booleans()):
            arr[rng.integers(0, h), rng.integers(0, w)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        im = Image.fromarray(arr, "F")
    else:
        im = im.convert(mode)
    kw = {}
    if fmt == "PNG" and mode == "P" and draw(st.booleans()):
        kw["transparency"] = 0
    return fmt, mode, (w, h), encode(im, fmt, **kw)


@PROPERTY
@given(generated_images())
def test_every_format_and_mode_decodes_to_rgb_of_the_right_size(sample):
    fmt, mode, (w, h), data = sample
    img = decode_bytes(data)
    assert img.rgb.shape == (h, w, 3), (fmt, mode)
    assert img.rgb.dtype == np.uint8


@PROPERTY
@given(st.integers(1, 200_000), st.integers(1, 200_000))
def test_header_bombs_of_any_size_are_judged_by_the_header(w, h):
    data = png_bomb(w, h, lie=True)
    if w * h > 4096 * 4096:
        with pytest.raises(ImageError) as info:
            probe(data)
        assert info.value.reason == "too_many_pixels"
    else:
        assert probe(data).width == w
        try:  # the header is fine, most pixels are missing: PIL fills them or says truncated
            assert decode_bytes(data).rgb.shape == (h, w, 3)
        except ImageError as exc:
            assert exc.reason == "corrupt"


def test_wire_text_roundtrip_for_every_answerable_case():
    """What arrives as base64 decodes to the same bytes (the cache key is stable)."""
    for c in cases():
        if c.expect == "answer" and not c.text.startswith("data:"):
            raw = base64.b64decode("".join(c.text.split()) + "=" * (-len("".join(c.text.split())) % 4))
            assert decode_base64(c.text).data == raw


def test_ultralytics_image_open_patch_is_bypassed():
    """Importing ultralytics replaces PIL.Image.open with a wrapper that tries to install and import
    pi_heif on unidentified images; the decoder must not go through it."""
    import base64

    import ultralytics  # noqa: F401  (applies the patch, as a detector expert would)

    with pytest.raises(ImageError) as info:
        decode_base64(base64.b64encode(b"%!PS-Adobe-3.0 not a raster image").decode())
    assert info.value.reason == "unsupported_format", str(info.value)
