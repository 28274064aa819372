"""Depth-based size validation: the geometry on synthetic depth maps with known answers, and
tiny real Depth Anything models (relative and metric) as a checker inside detectors, as a
standalone expert running a detector, and through the engine."""

import math
import time

import numpy as np
import pytest

from natix_miner.experts import create_expert
from natix_miner.experts.depth import Camera, SizeRules, box_depth, fit_ground_scale, range_factor
from natix_miner.experts.detection import DetectorConfigError
from tests.support.tiny_detectors import decoded, depth_anything, profile_file, scenes, yolo_pt

H = W = 224
CAM = Camera(camera_height_m=1.3, horizon=0.5, hfov_deg=80.0)
S_TRUE, T_TRUE = 3.7, 0.2  # the unknown affine of a relative model: disparity = S / Z + T


def ground_disparity(cam=CAM, s=S_TRUE, t=T_TRUE):
    """Relative disparity of a flat road seen by ``cam``; the sky (above the horizon) at infinity."""
    f = cam.focal_px(W)
    v = np.arange(H)[:, None] + 0.5
    inv_z = np.clip((v - cam.horizon * H) / (f * cam.camera_height_m), 0, None)
    return np.broadcast_to(s * inv_z + t, (H, W)).astype(np.float64).copy()


def place(disp, z, width_m, height_m, x_center, cam=CAM, s=S_TRUE, t=T_TRUE):
    """Paint an object standing on the road at depth ``z``; returns its box (xyxy pixels)."""
    f = cam.focal_px(W)
    bottom = cam.horizon * H + f * cam.camera_height_m / z
    w, h = width_m * f / z, height_m * f / z
    box = [x_center - w / 2, bottom - h, x_center + w / 2, bottom]
    x1, y1, x2, y2 = [int(round(c)) for c in box]
    disp[max(0, y1):y2, max(0, x1):x2] = s / z + t
    return box


def test_ground_fit_recovers_the_affine_of_relative_disparity():
    fit = fit_ground_scale(ground_disparity(), CAM)
    assert fit["s"] == pytest.approx(S_TRUE, rel=1e-6) and fit["t"] == pytest.approx(T_TRUE, abs=1e-6)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit_ground_scale(np.ones((H, W)), CAM) is None                      # no slope: no scale
    assert fit_ground_scale(ground_disparity()[::-1].copy(), CAM) is None      # upside down: refused


def test_sizes_from_relative_depth_and_the_verdicts():
    disp = ground_disparity()
    cone = place(disp, z=8.0, width_m=0.32, height_m=0.7, x_center=40)
    fake = place(disp, z=12.0, width_m=2.0, height_m=0.8, x_center=180)   # a 2 m wide "cone"
    rules = SizeRules({"camera_height_m": 1.3, "horizon": 0.5, "hfov_deg": 80})
    out = rules.check_image(disp, "relative", np.array([cone, fake]), ["cone", "cone"])
    assert out["scale"] == "ground_fit"
    assert out["depth_m"][0] == pytest.approx(8.0, rel=0.02) and out["depth_m"][1] == pytest.approx(12.0, rel=0.02)
    assert out["width_m"][0] == pytest.approx(0.32, rel=0.05) and out["height_m"][0] == pytest.approx(0.7, rel=0.05)
    assert out["width_m"][1] == pytest.approx(2.0, rel=0.05)
    assert out["factor"][0] == 1.0
    # 2.0 m vs the tolerant upper bound 0.4 * 1.5 = 0.6 m: exp(-3 * ln(3.3)) is under the floor
    assert out["factor"][1] == pytest.approx(0.05)
    # the same object as a barrier is plausible (0.8-1.5 m, tolerance 1.5)
    as_barrier = rules.check_image(disp, "relative", np.array([fake]), ["barrier"])
    assert as_barrier["factor"][0] == 1.0
    # with the flat-road scale, physical size does not depend on the assumed field of view
    wide = SizeRules({"camera_height_m": 1.3, "horizon": 0.5, "hfov_deg": 110})
    assert wide.check_image(disp, "relative", np.array([cone]), ["cone"])["width_m"][0] == pytest.approx(
        out["width_m"][0], rel=1e-3)
    # ... but it scales with the assumed camera height
    high = SizeRules({"camera_height_m": 2.6, "horizon": 0.5})
    assert high.check_image(disp, "relative", np.array([cone]), ["cone"])["width_m"][0] == pytest.approx(
        2 * out["width_m"][0], rel=1e-3)


def test_metric_depth_uses_the_focal_length_and_unknown_scale_is_neutral():
    f = CAM.focal_px(W)
    depth = np.full((H, W), 10.0)
    box = np.array([[100, 100, 100 + 0.3 * f / 10, 100 + 0.6 * f / 10]])
    rules = SizeRules({"hfov_deg": 80})
    out = rules.check_image(depth, "metric", box, ["cone"])
    assert out["scale"] == "metric" and out["width_m"][0] == pytest.approx(0.3, rel=1e-4)
    assert out["factor"][0] == 1.0
    # relative map with no usable road: scale unknown, nothing is down-weighted
    flat = rules.check_image(np.ones((H, W)), "relative", box, ["cone"])
    assert flat["scale"] == "none" and flat["factor"].tolist() == [1.0] and math.isnan(flat["width_m"][0])


def test_range_factor_and_border_rule():
    assert range_factor(0.3, (0.25, 0.4), 1.5, 3.0, 0.05) == 1.0
    assert range_factor(1.2, (0.25, 0.4), 1.5, 3.0, 0.05) == pytest.approx(math.exp(-3 * math.log(2)))
    assert range_factor(0.25 / 1.5 / 2, (0.25, 0.4), 1.5, 3.0, 0.05) == pytest.approx(0.125)
    assert range_factor(0.05, (0.25, 0.4), 1.5, 3.0, 0.05, check_low=False) == 1.0  # cut by the border
    assert range_factor(100.0, (0.25, 0.4), 1.5, 3.0, 0.05) == 0.05
    assert range_factor(float("nan"), (0.25, 0.4), 1.5, 3.0, 0.05) == 1.0
    assert range_factor(5.0, None, 1.5, 3.0, 0.05) == 1.0
    # a box touching the left border only gets its upper bound checked
    rules = SizeRules({})
    depth = np.full((H, W), 10.0)
    f = rules.camera.focal_px(W)
    tiny, tall = 0.05 * f / 10, 0.6 * f / 10   # 5 cm wide, 60 cm tall
    out = rules.check_image(depth, "metric", np.array([[0, 100, tiny, 100 + tall], [50, 100, 50 + tiny, 100 + tall]]),
                            ["cone", "cone"])
    assert out["factor"][0] == 1.0 and out["factor"][1] < 0.2


def test_box_depth_is_a_robust_centre_median():
    m = np.zeros((H, W))
    m[40:80, 40:80] = 7.0
    assert box_depth(m, [30, 30, 90, 90]) == 7.0       # background at the box edges is ignored
    assert box_depth(m, [-10, -10, 5, 5]) == 0.0        # clipped to the image


def test_size_rules_option_errors():
    with pytest.raises(DetectorConfigError, match="horizon"):
        SizeRules({"horizon": 1.2})
    with pytest.raises(DetectorConfigError, match="sizes.cone.width"):
        SizeRules({"sizes": {"cone": {"width": [0.5, 0.1]}}})
    with pytest.raises(DetectorConfigError, match="sizes.cone"):
        SizeRules({"sizes": {"cone": {"depth": [1, 2]}}})
    rules = SizeRules({"sizes": {"arrow_board": {"width": [1.5, 3.0]}}})
    assert rules.sizes["arrow_board"] == {"width": (1.5, 3.0), "height": None}


# -- real models --------------------------------------------------------------------------------------
PROFILE = """
name: depth-test
deadline_s: 9
experts:
  - name: depth_rel
    family: depth
    model: {rel}
    options:
      detector: y11_checked
      image_size: 112
      camera_height_m: 1.4
  - name: depth_metric
    family: depth
    model: {metric}
    options: {{image_size: 112, hfov_deg: 70, sizes: {{cone: {{width: [0.25, 0.4], height: [0.3, 1.0]}}}}}}
  - name: y11_checked
    family: ultralytics
    model: {y11}
    options:
      imgsz: 160
      classes: {{cone: [3]}}
      depth_check: depth_metric
  - name: y11_by_path
    family: ultralytics
    model: {y11}
    options:
      imgsz: 160
      classes: {{cone: [3]}}
      depth_check: {rel}
      depth_options: {{image_size: 112, camera_height_m: 1.5}}
tiers:
  - name: detectors
    experts: [y11_checked, depth_rel]
    budget_s: 60
"""


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    d = tmp_path_factory.mktemp("depth")
    y11 = yolo_pt(d / "y11.pt", "yolo11n.yaml", boost=3)
    return profile_file(d / "p.yaml", PROFILE.format(rel=depth_anything(d / "da_rel", "relative"),
                                                     metric=depth_anything(d / "da_metric", "metric", 20), y11=y11))


@pytest.fixture(scope="module")
def images():
    return decoded(scenes(2, seed=3))


def test_detector_with_depth_check_reports_consistent_sizes(profile, images):
    ex = create_expert(profile.expert("y11_checked"), profile)
    ex.load("cpu")
    assert ex.depth_checker.kind == "metric" and ex.depth_checker.rules.camera.hfov_deg == 70
    assert ex.memory_bytes() > ex.depth_checker.memory_bytes() > 0
    ev = ex.predict_batch(images)
    maps = ex.depth_checker.depth_maps(images)
    f = ex.depth_checker.rules.camera.focal_px(224)
    for e, m in zip(ev, maps):
        d, dep = e.detail, e.detail["depth"]
        assert m.shape == (224, 224) and (m >= 0).all() and (m <= 20).all()  # sigmoid * max_depth
        assert dep["scale"] == "metric"
        n = len(d["boxes"])
        assert n > 0 and all(len(dep[k]) == n for k in ("factor", "width_m", "height_m", "depth_m"))
        for box, w, z, fac, s, rs in zip(d["boxes"], dep["width_m"], dep["depth_m"], dep["factor"], d["scores"],
                                         d["raw_scores"]):
            assert z == pytest.approx(box_depth(m, box), abs=2e-3)
            assert w == pytest.approx((box[2] - box[0]) * z / f, rel=2e-2, abs=2e-3)
            assert 0.05 <= fac <= 1.0 and s == pytest.approx(rs * fac, abs=2e-3)
        assert 0 < e.probability < 1
    again = ex.predict_batch(images)
    assert [e.probability for e in again] == pytest.approx([e.probability for e in ev], abs=1e-6)


def test_depth_check_by_model_path_uses_depth_options(profile, images):
    ex = create_expert(profile.expert("y11_by_path"), profile)
    ex.load("cpu")
    assert ex.depth_checker.kind == "relative" and ex.depth_checker.rules.camera.camera_height_m == 1.5
    (e,) = ex.predict_batch(images[:1])
    assert e.detail["depth"]["scale"] in ("ground_fit", "none")
    if e.detail["depth"]["scale"] == "none":  # random weights rarely look like a road: neutral check
        assert e.detail["scores"] == e.detail["raw_scores"]


def test_standalone_depth_expert_runs_its_detector_or_abstains(profile, images):
    ex = create_expert(profile.expert("depth_rel"), profile)
    ex.load("cpu")
    assert ex.detector is not None and ex.detector.depth_checker is None  # the expert's own checker is used
    assert ex.memory_bytes() > ex.checker.memory_bytes()
    ev = ex.predict_batch(images)
    assert len(ev) == 2 and all(not e.abstain and "depth" in e.detail for e in ev)
    assert all(e.detail["depth"]["scale"] in ("ground_fit", "none") for e in ev)
    alone = create_expert(profile.expert("depth_metric"), profile)
    alone.load("cpu")
    out = alone.predict_batch(images)
    assert all(e.abstain and e.detail["kind"] == "metric" for e in out)
    ex.close()
    assert ex.checker.model is None and ex.detector.model is None and ex.detector.yolo is None


def test_depth_reference_errors(profile):
    bad = profile.expert("y11_checked").model_copy(update={"options": {"classes": {"cone": [3]},
                                                                       "depth_check": "y11_by_path"}})
    with pytest.raises(DetectorConfigError, match="not 'depth'"):
        create_expert(bad, profile).load("cpu")
    bad = profile.expert("depth_rel").model_copy(update={"options": {"detector": "nope"}})
    with pytest.raises(DetectorConfigError, match="no expert named"):
        create_expert(bad, profile).load("cpu")
    bad = profile.expert("depth_rel").model_copy(update={"options": {"detector": "depth_metric"}})
    with pytest.raises(DetectorConfigError, match="not a detector"):
        create_expert(bad, profile).load("cpu")


async def test_depth_and_checked_detector_through_the_engine(profile):
    from natix_miner.engine import Engine

    jpeg = decoded(scenes(1, seed=9))[0].data
    async with Engine(profile) as engine:
        res = await engine.predict(jpeg, deadline=time.monotonic() + 9)
    assert not res.fallback, res.fallback_reason
    assert 0 < res.probability < 1 and res.tiers_run == ["detectors"]
    assert set(res.evidence) == {"y11_checked", "depth_rel"}
    assert "depth" in res.evidence["y11_checked"].detail and "depth" in res.evidence["depth_rel"].detail
