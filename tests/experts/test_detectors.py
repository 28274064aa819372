"""Detector experts: the shared mapping / aggregation / calibration logic on controlled detections,
and the ultralytics (YOLO11, YOLO26, RT-DETR), rfdetr and transformers (D-FINE, RT-DETR v2, RF-DETR)
families loaded from locally saved tiny real models through the profile syntax."""

import math

import numpy as np
import pytest

from natix_miner.experts import create_expert
from natix_miner.experts.detection import (Aggregator, ClassMap, DetectorConfigError, Detections, fit_calibration,
                                           nms)
from natix_miner.models_store import ModelUnavailable
from tests.support.tiny_detectors import decoded, hf_detector, profile_file, rfdetr_checkpoint, scenes, yolo_pt


def dets(boxes, scores, labels, ids=None, size=(224, 224)):
    return Detections(np.asarray(boxes, np.float32), scores, labels, ids if ids is not None else [-1] * len(scores),
                      size)


# -- shared logic ------------------------------------------------------------------------------------
def test_classmap_matches_names_loosely_and_ids_exactly():
    cm = ClassMap({"cone": ["traffic_cone", 3], "worker": ["Person"], "sign": "road-work sign"})
    assert cm.lookup("Traffic Cone") == "cone"
    assert cm.lookup("traffic-cone") == "cone"
    assert cm.lookup("anything", 3) == "cone"
    assert cm.lookup("3") is None  # a name "3" is not the id 3 unless listed as a string
    assert cm.lookup("person", 7) == "worker"
    assert cm.lookup("ROAD_WORK_SIGN") == "sign"
    assert cm.lookup("car", 2) is None
    with pytest.raises(DetectorConfigError, match="both"):
        ClassMap({"cone": ["x"], "barrier": ["X"]})
    with pytest.raises(DetectorConfigError, match="classes"):
        ClassMap({})
    with pytest.raises(DetectorConfigError, match="neither"):
        ClassMap({"cone": [1.5]})


def test_aggregator_noisy_or_matches_hand_computation():
    agg = Aggregator.from_options({"min_score": 0.2, "top_k": 2, "leak": 0.1,
                                   "weights": {"cone": 0.9, "worker": 0.5}}, ["cone", "worker"])
    classes = ["cone", "cone", "cone", "worker", "cone"]
    scores = [0.8, 0.5, 0.4, 0.6, 0.1]  # top_k=2 keeps 0.8, 0.5; 0.1 is under min_score
    q = agg.class_scores(classes, scores)
    assert q["cone"] == pytest.approx(1 - 0.2 * 0.5)
    assert q["worker"] == pytest.approx(0.6)
    raw = agg.raw(q)
    assert raw == pytest.approx(1 - 0.9 * (1 - 0.9 * 0.9) * (1 - 0.5 * 0.6))
    assert agg.calibrate(raw) == pytest.approx(raw)  # a=1, b=0 is the identity
    assert agg.raw(agg.class_scores([], [])) == pytest.approx(0.1)  # nothing found: the leak

    cal = Aggregator.from_options({"calibration": {"a": 2.0, "b": -1.0}}, ["cone"])
    z = 2.0 * math.log(0.3 / 0.7) - 1.0
    assert cal.calibrate(0.3) == pytest.approx(1 / (1 + math.exp(-z)))


def test_aggregator_option_errors_name_the_option():
    with pytest.raises(DetectorConfigError, match="weights"):
        Aggregator.from_options({"weights": {"cone": 1.5}}, ["cone"])
    with pytest.raises(DetectorConfigError, match="weights.barrier"):
        Aggregator.from_options({"weights": {"barrier": 0.5}}, ["cone"])
    with pytest.raises(DetectorConfigError, match="leak"):
        Aggregator.from_options({"leak": 1.0}, ["cone"])
    with pytest.raises(DetectorConfigError, match="top_k"):
        Aggregator.from_options({"top_k": 0}, ["cone"])


def test_fit_calibration_recovers_known_parameters():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.01, 0.99, 4000)
    a, b = 1.7, -0.6
    p = 1 / (1 + np.exp(-(a * np.log(raw / (1 - raw)) + b)))
    labels = (rng.uniform(size=raw.size) < p).astype(int)
    fa, fb = fit_calibration(raw, labels)
    assert fa == pytest.approx(a, abs=0.2) and fb == pytest.approx(b, abs=0.2)
    with pytest.raises(ValueError):
        fit_calibration([], [])


def test_nms_suppresses_within_a_class_only():
    boxes = [[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]]
    keep = nms(boxes, [0.9, 0.8, 0.7, 0.6], ["cone", "cone", "worker", "cone"], 0.5)
    assert keep.tolist() == [0, 2, 3]


# -- ultralytics -------------------------------------------------------------------------------------
ULTRA_PROFILE = """
name: detectors-test
experts:
  - name: y11_cone
    family: ultralytics
    model: {y11}
    max_batch: 4
    options:
      imgsz: 160
      conf: 0.05
      classes: {{cone: [3], barrier: [barrier]}}
      weights: {{cone: 0.9}}
  - name: y11_worker
    family: ultralytics
    model: {y11}
    options:
      imgsz: 160
      classes: {{worker: [7, person]}}
      leak: 0.05
  - name: y26
    family: ultralytics
    model: {y26}
    options: {{imgsz: 160, classes: {{cone: ["3"]}}}}
  - name: rtdetr
    family: ultralytics
    model: {rtdetr}
    options: {{imgsz: 160, max_det: 30, classes: {{cone: [3]}}, min_score: 0.01}}
tiers:
  - name: detectors
    experts: [y11_cone, y11_worker, y26, rtdetr]
"""


@pytest.fixture(scope="module")
def ultra_profile(tmp_path_factory):
    d = tmp_path_factory.mktemp("ultra")
    y11 = yolo_pt(d / "y11.pt", "yolo11n.yaml", boost=3)
    y26 = yolo_pt(d / "y26.pt", "yolo26n.yaml", boost=3)
    # RT-DETR-L straight from the bundled yaml (random weights; saving its 130 MB .pt adds nothing)
    return profile_file(d / "p.yaml", ULTRA_PROFILE.format(y11=y11, y26=y26, rtdetr="rtdetr-l.yaml"))


@pytest.fixture(scope="module")
def images():
    return decoded(scenes(3))


def test_ultralytics_families_run_a_batch_and_map_classes(ultra_profile, images):
    ex = {}
    for name in ("y11_cone", "y11_worker", "y26", "rtdetr"):
        ex[name] = create_expert(ultra_profile.expert(name), ultra_profile)
        ex[name].load("cpu")
        assert ex[name].memory_bytes() > 1e6
    # yolo11 with class 3 boosted: every image is full of class-3 boxes -> mapped to cone
    ev = ex["y11_cone"].predict_batch(images)
    assert len(ev) == 3
    assert ex["y11_cone"].memory_bytes() > 1e6  # now the predictor's fused copy
    for e in ev:  # a certain cone, weight 0.9, leak 0.05: 1 - 0.95 * (1 - 0.9)
        assert e.probability == pytest.approx(0.905, abs=1e-3) and not e.abstain
        d = e.detail
        assert set(d["classes"]) == {"cone"} and set(d["labels"]) == {"3"}
        b = np.asarray(d["boxes"])
        assert b.shape[1] == 4 and (b >= 0).all() and (b <= 224.5).all() and (b[:, 2] > b[:, 0]).all()
        assert d["class_scores"]["cone"] > 0.99 and d["features"][0] == d["class_scores"]["cone"]
    # the same model seen through a mapping that ignores class 3: nothing mapped -> the leak
    ev_w = ex["y11_worker"].predict_batch(images)
    for e in ev_w:
        assert e.probability == pytest.approx(0.05, abs=1e-6)
        assert e.detail["boxes"] == [] and e.detail["unmapped"] > 0
    # yolo26 (end-to-end head): name "3" matches the label
    ev26 = ex["y26"].predict_batch(images)
    assert all(e.probability > 0.9 and set(e.detail["classes"]) == {"cone"} for e in ev26)
    # rt-detr (random weights, nothing boosted): valid evidence, deterministic
    ev_rt = ex["rtdetr"].predict_batch(images[:2])
    ev_rt2 = ex["rtdetr"].predict_batch(images[:2])
    for a, b in zip(ev_rt, ev_rt2):
        assert 0 < a.probability < 1
        assert a.probability == pytest.approx(b.probability, abs=1e-6)
        assert a.detail["labels"] == b.detail["labels"]
        np.testing.assert_allclose(a.detail["boxes"], b.detail["boxes"], atol=1e-3)
    # batch of one equals the same image inside a batch
    one = ex["y11_cone"].predict_batch(images[:1])[0]
    assert one.probability == pytest.approx(ev[0].probability, abs=1e-5)
    assert ex["y11_cone"].predict_batch([]) == []


def test_detector_evidence_on_controlled_detections(ultra_profile):
    """The mapping + aggregation path of a loaded expert, fed known detections."""
    ex = create_expert(ultra_profile.expert("y11_cone"), ultra_profile)
    ex.load("cpu")
    d = dets([[10, 10, 30, 40], [50, 50, 70, 90], [0, 0, 5, 5], [1, 1, 2, 2]], [0.8, 0.6, 0.9, 0.1],
             ["3", "barrier", "car", "3"], [3, 11, 2, 3])
    (e,) = ex.evidence([np.zeros((224, 224, 3), np.uint8)], [d])
    q_cone, q_barrier = 0.8, 0.6  # the 0.1 cone is under min_score 0.25; "car" is unmapped
    raw = 1 - 0.95 * (1 - 0.9 * q_cone) * (1 - 0.8 * q_barrier)
    assert e.probability == pytest.approx(raw, abs=1e-6)
    assert e.detail["classes"] == ["cone", "barrier"] and e.detail["unmapped"] == 1
    assert e.detail["raw"] == pytest.approx(raw)
    (empty,) = ex.evidence([np.zeros((224, 224, 3), np.uint8)], [Detections.empty((224, 224))])
    assert empty.probability == pytest.approx(0.05) and not empty.abstain
    # close() frees the model on the caller's thread (not on a daemon batcher thread at exit)
    ex.close()
    assert ex.model is None and ex.yolo is None


def test_ultralytics_missing_weights_is_an_error_not_a_download(tmp_path):
    from natix_miner.config import ExpertSpec

    spec = ExpertSpec(name="x", family="ultralytics", model=str(tmp_path / "yolo11n.pt"),
                      options={"classes": {"cone": [0]}})
    with pytest.raises(ModelUnavailable, match="does not exist"):
        create_expert(spec).load("cpu")
    assert not (tmp_path / "yolo11n.pt").exists()
    spec = ExpertSpec(name="x", family="ultralytics", model="yolo11n.pt", options={"classes": {"cone": [0]}})
    with pytest.raises(ModelUnavailable, match="never downloads"):
        create_expert(spec).load("cpu")


def test_detector_without_class_mapping_is_refused():
    """At construction (``profile validate``), before anything loads."""
    from natix_miner.config import ExpertSpec
    from natix_miner.schema import OptionsError

    with pytest.raises(OptionsError, match=r"options\.classes: Field required"):
        create_expert(ExpertSpec(name="x", family="ultralytics", model="yolo11n.yaml"))
    with pytest.raises(OptionsError, match=r"options\.classes: cone: .* is neither a name nor an id"):
        create_expert(ExpertSpec(name="x", family="ultralytics", model="yolo11n.yaml",
                                 options={"classes": {"cone": [1.5]}}))


# -- rfdetr ------------------------------------------------------------------------------------------
def test_rfdetr_checkpoint_through_profile(tmp_path, images):
    ckpt = rfdetr_checkpoint(tmp_path / "roadwork.pth", ["cone", "barrier", "excavator"], boost=0)
    profile = profile_file(tmp_path / "p.yaml", f"""
name: rfdetr-test
experts:
  - name: rfdetr_nano
    family: rfdetr
    model: {ckpt}
    options:
      resolution: 224
      conf: 0.05
      classes: {{cone: [cone], barrier: [barrier], construction_vehicle: [excavator]}}
tiers: [{{name: t, experts: [rfdetr_nano]}}]
""")
    ex = create_expert(profile.expert("rfdetr_nano"), profile)
    ex.load("cpu")
    assert ex.names == ["cone", "barrier", "excavator"] and ex.memory_bytes() > 1e6
    ev = ex.predict_batch(images[:2])
    assert len(ev) == 2
    for e in ev:
        assert e.probability > 0.9  # the boosted class is "cone"
        assert "cone" in e.detail["classes"] and set(e.detail["labels"]) <= {"cone", "barrier", "excavator"}
    again = ex.predict_batch(images[:2])
    assert [e.probability for e in again] == pytest.approx([e.probability for e in ev], abs=1e-6)


def test_rfdetr_refuses_missing_checkpoint_and_base(tmp_path):
    from natix_miner.config import ExpertSpec

    opts = {"classes": {"cone": ["cone"]}}
    with pytest.raises(ModelUnavailable):
        create_expert(ExpertSpec(name="r", family="rfdetr", model=str(tmp_path / "rf-detr-nano.pth"),
                                 options=opts)).load("cpu")
    assert not (tmp_path / "rf-detr-nano.pth").exists()
    with pytest.raises(DetectorConfigError, match="variant"):
        create_expert(ExpertSpec(name="r", family="rfdetr", options=dict(opts, variant="base"))).load("cpu")


# -- transformers detectors --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["d_fine", "rt_detr_v2", "rf_detr"])
def test_hf_detector_through_profile(tmp_path, images, kind):
    id2label = {0: "traffic_cone", 1: "barrier", 2: "car"}
    model_dir = hf_detector(tmp_path / kind, kind, id2label)
    profile = profile_file(tmp_path / "p.yaml", f"""
name: hf-test
experts:
  - name: det
    family: hf_detector
    model: {model_dir}
    max_batch: 8
    options:
      conf: 0.0
      min_score: 0.0
      top_k: 1
      classes: {{cone: [traffic cone], barrier: [1]}}
tiers: [{{name: t, experts: [det]}}]
""")
    ex = create_expert(profile.expert("det"), profile)
    ex.load("cpu")
    assert ex.memory_bytes() > 0
    ev = ex.predict_batch(images)
    again = ex.predict_batch(images)
    assert len(ev) == 3
    for e, f in zip(ev, again):
        d = e.detail
        assert 0 < e.probability < 1 and e.probability == pytest.approx(f.probability, abs=1e-6)
        assert set(d["labels"]) <= {"traffic_cone", "barrier"}  # "car" is unmapped
        assert set(d["classes"]) <= {"cone", "barrier"}
        assert len(d["boxes"]) == len(d["scores"]) == len(d["classes"])
        b = np.asarray(d["boxes"]).reshape(-1, 4)
        assert (b[:, 2] >= b[:, 0]).all()
        # top_k=1, weights 0.9/0.8, leak 0.05: P from the best score of each class
        best = {c: max([s for s, k in zip(d["scores"], d["classes"]) if k == c], default=0.0) for c in ("cone", "barrier")}
        raw = 1 - 0.95 * (1 - 0.9 * best["cone"]) * (1 - 0.8 * best["barrier"])
        assert d["raw"] == pytest.approx(raw, abs=1e-3)
