"""The validator augmentation: each distortion's parameters and effect, the geometry, the level mix,
the wire format. Expected values are derived by hand from the spec, not from the code under test."""

import base64
import collections
import io
import math

import numpy as np
import pytest
from PIL import Image

from natix_miner.synth import augment as A


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small tensors: one intra-op thread is faster and does not fight other tests for the CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _y(bgr):
    b = bgr.astype(np.float64)
    return 0.114 * b[..., 0] + 0.587 * b[..., 1] + 0.299 * b[..., 2]


def test_parameter_tables_match_the_spec():
    assert A.DISTORTION_PARAMS["CS"] == (0.4, 0.3, 0.2, 0.1, 0.0)
    assert A.DISTORTION_PARAMS["CC"] == (0.85, 0.725, 0.6, 0.475, 0.35)
    assert A.DISTORTION_PARAMS["JPEG"] == (2, 3, 4, 5, 6)
    assert A.DISTORTION_PARAMS["GNC"] == (0.001, 0.002, 0.005, 0.01, 0.05)
    assert A.DISTORTION_PARAMS["GB"] == (7, 9, 13, 17, 21)
    assert A.LEVEL_DISTORTIONS[2] == (("CS", 1), ("CC", 1), ("JPEG", 1))
    assert A.LEVEL_DISTORTIONS[3] == (("CS", 2), ("CC", 2), ("JPEG", 2), ("GNC", 2), ("GB", 2))
    assert A.LEVEL_PROBS == (0.25, 0.25, 0.25, 0.25)
    with pytest.raises(ValueError):
        A.distortion_parameter("CS", 6)


@pytest.mark.parametrize("severity,factor", [(1, 0.4), (2, 0.3), (5, 0.0)])
def test_color_saturation_scales_chroma_about_grey(severity, factor):
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[...] = (40, 90, 200)
    out = A.apply_distortion(bgr, "CS", severity).astype(float)
    y = 0.114 * 40 + 0.587 * 90 + 0.299 * 200          # luma is kept
    expect = [y + factor * (c - y) for c in (40, 90, 200)]
    assert np.all(np.abs(out[0, 0] - expect) <= 1.0), (out[0, 0], expect)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_color_contrast_multiplies_and_truncates(severity):
    bgr = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    factor = A.DISTORTION_PARAMS["CC"][severity - 1]
    out = A.apply_distortion(bgr, "CC", severity)
    expect = np.floor(bgr.astype(np.float32) * np.float32(factor)).astype(np.uint8)
    assert np.array_equal(out, expect)


@pytest.mark.parametrize("severity,factor", [(1, 2), (2, 3)])
def test_jpeg_distortion_downsamples_by_its_factor(severity, factor):
    rng = np.random.default_rng(0)
    bgr = (rng.random((60, 90, 3)) * 255).astype(np.uint8)
    out = A.apply_distortion(bgr, "JPEG", severity)
    assert out.shape == bgr.shape
    # the result carries only (h/f) x (w/f) samples: blocks of detail are gone
    assert out.astype(float).std() < bgr.astype(float).std() * 0.8
    flat = np.full((60, 90, 3), 77, np.uint8)
    assert np.array_equal(A.apply_distortion(flat, "JPEG", severity), flat)
    # a pattern at exactly the factor's period survives the round trip roughly, finer detail not
    assert out.shape[:2] == (60, 90) and factor in (2, 3)


@pytest.mark.parametrize("severity", [1, 2])
def test_gaussian_noise_colour_variance(severity):
    var = A.DISTORTION_PARAMS["GNC"][severity - 1]
    grey = np.full((256, 256, 3), 128, np.uint8)
    out = A.apply_distortion(grey, "GNC", severity, np.random.default_rng(severity))
    # noise of std sqrt(var) on the [0,1]-scaled Y' (range 16..235) is sqrt(var)*255*255/219 in Y
    expect = math.sqrt(var) * 255 * 255 / 219
    assert _y(out).std() == pytest.approx(expect, rel=0.05)
    assert abs(_y(out).mean() - 128) < 1.5


@pytest.mark.parametrize("severity,kernel", [(1, 7), (2, 9), (3, 13)])
def test_gaussian_blur_kernel_and_sigma(severity, kernel):
    imp = np.zeros((61, 61, 3), np.uint8)
    imp[30, 30] = 255
    out = A.apply_distortion(imp, "GB", severity)[..., 0].astype(float)
    nz = np.nonzero(out.sum(axis=0))[0]
    assert nz.max() - nz.min() + 1 <= kernel           # support no wider than the kernel
    sigma = kernel / 6
    x = np.arange(kernel) - kernel // 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    expect = 255 * g[kernel // 2] * g                  # centre row of the separable kernel
    row = out[30, 30 - kernel // 2: 30 + kernel // 2 + 1]
    assert np.all(np.abs(row - expect) <= 1.0), (row, expect)


def test_level_draw_is_uniform_and_seeded():
    rng = np.random.default_rng(3)
    counts = collections.Counter(A.draw_level(rng) for _ in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    for level in range(4):
        assert abs(counts[level] / 4000 - 0.25) < 0.03


def test_level0_is_centre_crop_then_resize():
    img = np.zeros((200, 320, 3), np.uint8)
    img[:, :60] = (255, 0, 0)
    img[:, -60:] = (0, 0, 255)
    img[:, 60:-60] = (0, 255, 0)
    out = A.augment(Image.fromarray(img), np.random.default_rng(0), level=0)
    arr = np.asarray(out.image)
    assert out.image.size == (224, 224) and out.params == {}
    assert arr[..., 1].min() >= 250 and arr[..., 0].max() <= 5 and arr[..., 2].max() <= 5


def test_crop_params_area_and_aspect():
    rng = np.random.default_rng(0)
    for h, w in [(400, 400), (540, 960), (1024, 1024), (300, 200)]:
        for _ in range(200):
            i, j, ch, cw = A.random_resized_crop_params(h, w, rng)
            assert ch == cw and 0 <= i <= h - ch and 0 <= j <= w - cw
            if h == w:
                assert 0.2 * h * w - 2 * h <= ch * cw <= h * w


def test_rotation_fills_black_and_nearest_is_the_default():
    white = Image.new("RGB", (200, 200), (255, 255, 255))
    near = A.geometric_transform(white, 20.0, (0, 0, 200, 200), size=200)
    assert float(near[:, 0, 0].max()) == 0.0 and float(near[:, 100, 100].min()) == 1.0
    values = set(np.unique(near.numpy().round(6)).tolist())
    assert values <= {0.0, 1.0}                          # nearest: no blended edge pixels
    bil = A.geometric_transform(white, 20.0, (0, 0, 200, 200), size=200, rotation_interpolation="bilinear")
    assert len(np.unique(bil.numpy().round(4))) > 2


def test_levels_draw_their_own_parameters():
    rng = np.random.default_rng(5)
    img = Image.fromarray((np.random.default_rng(1).random((120, 160, 3)) * 255).astype(np.uint8))
    seen = {2: collections.defaultdict(set), 3: collections.defaultdict(set)}
    for level in (1, 2, 3):
        for _ in range(30 if level > 1 else 5):
            out = A.augment(img, rng, level=level)
            assert out.image.size == (224, 224) and out.image.mode == "RGB"
            assert -20 <= out.params["angle"] <= 20
            names = [k for k in out.params if k not in ("angle", "crop")]
            assert names == [d for d, _ in A.LEVEL_DISTORTIONS[level]]
            if level > 1:
                for k in names:
                    seen[level][k].add(out.params[k])
    assert all(v == {0, 1} for v in seen[2].values())
    assert all(v == {0, 1, 2} for v in seen[3].values()) and len(seen[3]) == 5


def test_wire_format_is_pil_default_jpeg_q75_base64_and_seeded():
    img = Image.fromarray((np.random.default_rng(2).random((300, 500, 3)) * 255).astype(np.uint8))
    a = A.ValidatorAugmenter(seed=11)(img)
    raw = base64.b64decode(a.b64(), validate=True)
    ref = io.BytesIO()
    a.image.save(ref, format="JPEG", quality=75)
    assert raw == ref.getvalue()
    with Image.open(io.BytesIO(raw)) as im:
        assert im.format == "JPEG" and im.size == (224, 224) and im.mode == "RGB"
    assert A.ValidatorAugmenter(seed=11)(img).b64() == a.b64()
    outs = {A.ValidatorAugmenter(seed=s)(img).b64() for s in range(6)}
    assert len(outs) == 6
