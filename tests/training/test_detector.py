"""COCO roadwork boxes -> an ultralytics dataset -> a (tiny) fine-tuned detector the engine loads."""

import asyncio
import json

import pytest
import yaml

from natix_miner.cli import main as cli
from natix_miner.training import coco as C


def test_category_names_fold_onto_the_roadwork_classes():
    assert C.ROADWORK_CLASSES == ("cone", "barrier", "sign", "construction_vehicle", "worker")
    cases = {"Traffic Cone": 0, "cone": 0, "Tubular Marker": 0, "Drum": 1, "Barricade": 1, "jersey_barrier": 1,
             "Temporary Traffic Control Sign": 2, "road work sign": 2, "Work Vehicle": 3, "excavator": 3,
             "Worker": 4, "flagger": 4, "car": None, "person": None, "truck": None, "traffic light": None}
    for name, want in cases.items():
        assert C.map_category(name) == want, name
    assert C.map_category("car", class_map={"car": "construction_vehicle"}) == 3
    assert C.map_category("Traffic Cone", class_map={"traffic cone": None}) is None


def _coco_doc(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.new("RGB", (100, 80), (90, 90, 90)).save(tmp_path / "img" / f"{i}.jpg")
    doc = {"images": [{"id": i + 1, "file_name": f"img/{i}.jpg", "width": 100, "height": 80} for i in range(3)],
           "categories": [{"id": 1, "name": "Traffic Cone"}, {"id": 2, "name": "car"}, {"id": 3, "name": "Worker"}],
           "annotations": [
               {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40]},
               {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 50, 50]},
               {"id": 3, "image_id": 2, "category_id": 3, "bbox": [90, 70, 30, 30]},  # clipped to the image
               {"id": 4, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 1},
           ]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    return tmp_path / "ann.json"


def test_load_and_convert_coco(tmp_path):
    ds = C.load_coco(_coco_doc(tmp_path))
    assert ds.counts() == {"cone": 1, "barrier": 0, "sign": 0, "construction_vehicle": 0, "worker": 1}
    assert ds.dropped == {"car": 1}
    worker = ds.images[1].boxes[0]
    assert (worker.x, worker.y, worker.w, worker.h) == (90, 70, 10, 10)
    data_yaml = C.coco_to_yolo(ds, tmp_path / "yolo", val_fraction=0.34, seed=0)
    spec = yaml.safe_load(data_yaml.read_text())
    assert spec["names"] == dict(enumerate(C.ROADWORK_CLASSES))
    labels = sorted((tmp_path / "yolo" / "labels").rglob("*.txt"))
    assert len(labels) == 3 and len(list((tmp_path / "yolo" / "images" / "val").iterdir())) == 1
    lines = [ln for p in labels for ln in p.read_text().splitlines()]
    assert "0 0.250000 0.500000 0.300000 0.500000" in lines  # cone: centre (25, 40) of 100x80
    assert "4 0.950000 0.937500 0.100000 0.125000" in lines
    with pytest.raises(C.CocoError, match="unknown image"):
        bad = json.loads((tmp_path / "ann.json").read_text())
        bad["annotations"].append({"id": 9, "image_id": 77, "category_id": 1, "bbox": [0, 0, 1, 1]})
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        C.load_coco(tmp_path / "bad.json")


def test_detector_fine_tunes_on_procedural_boxes_and_serves(tmp_path, capsys):
    from natix_miner.config import load_profile
    from natix_miner.engine import Engine
    from natix_miner.training.datasets import from_procedural

    scenes = [s for s in from_procedural(8, seed=4, long_side=256)]
    ann = C.coco_from_samples(scenes, tmp_path / "coco")
    ds = C.load_coco(ann)
    assert ds.counts()["cone"] > 0
    out = tmp_path / "det"
    rc = cli(["train-detector", "--coco", str(ann), "--out", str(out), "--model", "yolo11n.yaml",
              "--imgsz", "64", "--epochs", "1", "--batch", "4", "--no-amp", "--val-fraction", "0.25",
              "--name", "yolo_rw"])
    assert rc == 0, capsys.readouterr()
    entry = yaml.safe_load((out / "expert.yaml").read_text())[0]
    assert entry["family"] == "ultralytics" and entry["name"] == "yolo_rw"
    assert set(entry["options"]["classes"]) == set(C.ROADWORK_CLASSES)
    prof = tmp_path / "det.yaml"
    prof.write_text(yaml.safe_dump({"name": "det", "experts": [dict(entry, device="cpu")],
                                    "tiers": [{"name": "detect", "experts": ["yolo_rw"], "budget_s": 8.0}]}))

    async def run():
        async with Engine(load_profile(prof)) as eng:
            return await eng.predict(scenes[0].data)

    r = asyncio.run(run())
    assert not r.fallback and 0.0 <= r.probability <= 1.0 and "yolo_rw" in r.evidence
    # never a download: a missing .pt is refused before ultralytics sees it
    assert cli(["train-detector", "--coco", str(ann), "--out", str(tmp_path / "x"), "--model", "yolo11n.pt"]) == 2
