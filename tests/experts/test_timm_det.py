"""The ``timm_det`` family: its CenterNet learns to find an object from the pretrained backbone, its
targets and decoding agree, and its checkpoint round-trips through the expert (boxes in the
caller's pixels, float16 weights, a wrong file named in one error)."""

import numpy as np
import pytest
import torch

from natix_miner.config import ExpertSpec
from natix_miner.experts import create_expert
from natix_miner.experts.detection import DetectorConfigError, box_iou
from natix_miner.experts.timm_det_net import CenterNet, centernet_loss, centernet_targets, decode, normalise
from natix_miner.models_store import ModelUnavailable
from tests.support.tiny_detectors import decoded, scenes, timm_det_checkpoint

SIZE = 64


def _squares(n: int, seed: int):
    """Grey noise frames with one orange square (8-20 px) each, and its xyxy box."""
    rng = np.random.default_rng(seed)
    frames, boxes = [], []
    for _ in range(n):
        img = rng.integers(60, 140, (SIZE, SIZE, 3), dtype=np.uint8)
        s = int(rng.integers(8, 21))
        x, y = (int(v) for v in rng.integers(0, SIZE - s, 2))
        img[y:y + s, x:x + s] = (250, 120, 20)
        frames.append(img)
        boxes.append([x, y, x + s, y + s])
    return np.stack(frames), boxes


def test_targets_decode_back_to_their_boxes():
    """A perfect prediction (the targets as logits) decodes to the boxes it was made from."""
    boxes = [[8.0, 16.0, 24.0, 40.0], [40.0, 40.0, 52.0, 50.0]]
    t = centernet_targets(boxes, [0, 1], 2, SIZE)
    heat = torch.from_numpy(t["heatmap"])[None]
    out = {"heatmap": torch.logit(heat.clamp(1e-4, 1 - 1e-4)), "size": torch.zeros(1, 2, 8, 8),
           "offset": torch.zeros(1, 2, 8, 8)}
    for (ind, wh, off) in zip(t["ind"], t["wh"], t["offset"]):
        out["size"][0, :, ind // 8, ind % 8] = torch.from_numpy(wh)
        out["offset"][0, :, ind // 8, ind % 8] = torch.from_numpy(off)
    got, scores, ids = decode(out, max_det=5, conf=0.5)[0]
    assert sorted(ids.tolist()) == [0, 1] and (scores > 0.99).all()
    for box, cls in zip(boxes, (0, 1)):
        assert box_iou(got[ids == cls], [box])[0, 0] > 0.99


def test_centernet_learns_to_find_an_object_from_the_pretrained_backbone():
    """A few hundred steps on orange squares: held-out squares are found (IoU > 0.5 of the top peak)."""
    torch.manual_seed(0)
    net = CenterNet("tf_efficientnet_lite0", 1, width=32, backbone_weights="package:efficientnet_lite0")
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    frames, boxes = _squares(64, seed=1)
    net.train()
    for step in range(120):
        idx = np.random.default_rng(step).choice(len(frames), 16, replace=False)
        x = normalise(torch.from_numpy(frames[idx]), net.mean, net.std)
        loss, _ = centernet_loss(net(x), [centernet_targets([boxes[i]], [0], 1, SIZE) for i in idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    test, truth = _squares(16, seed=2)
    net.eval()
    with torch.no_grad():
        found = decode(net(normalise(torch.from_numpy(test), net.mean, net.std)), max_det=1, conf=0.0)
    ious = [box_iou(b[:1], [t])[0, 0] for (b, _, _), t in zip(found, truth)]
    assert np.mean([iou > 0.5 for iou in ious]) >= 0.75, ious


def test_checkpoint_round_trips_through_the_expert(tmp_path):
    path = timm_det_checkpoint(tmp_path / "det.pt", ["cone", "barrier"], size=96)
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert ck["arch"] == "tf_efficientnet_lite0" and ck["classes"] == ["cone", "barrier"] and ck["image_size"] == 96
    assert all(v.dtype == torch.float16 for v in ck["state_dict"].values() if v.is_floating_point())
    spec = ExpertSpec(name="det", family="timm_det", model=str(path), device="cpu",
                      options={"conf": 0.0, "max_det": 7, "classes": {"cone": ["cone"], "barrier": ["barrier"]}})
    ex = create_expert(spec)
    ex.load("cpu")
    try:
        assert ex.size == 96 and ex.names == {0: "cone", 1: "barrier"}
        imgs = decoded(scenes(2, size=128))  # 224x224 frames, resized to 96 inside
        dets = ex.detect(imgs + [np.zeros((50, 80, 3), np.uint8)])
        assert [len(d) for d in dets] == [7, 7, 7]
        assert dets[2].image_size == (50, 80) and (dets[2].boxes[:, [0, 2]] <= 80).all()
        assert (dets[2].boxes[:, [1, 3]] <= 50).all() and (dets[0].boxes >= 0).all()
        ev = ex.predict_batch(imgs)
        assert all(0.0 <= e.probability <= 1.0 and len(e.detail["features"]) == 5 for e in ev)
    finally:
        ex.close()


def test_a_missing_or_foreign_checkpoint_is_named(tmp_path):
    opts = {"classes": {"cone": ["cone"]}}
    with pytest.raises(ModelUnavailable, match="does not exist"):
        create_expert(ExpertSpec(name="d", family="timm_det", model=str(tmp_path / "no.pt"), options=opts)).load("cpu")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(DetectorConfigError, match="not a timm_det checkpoint"):
        create_expert(ExpertSpec(name="d", family="timm_det", model=str(tmp_path / "other.pt"),
                                 options=opts)).load("cpu")
