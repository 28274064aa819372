"""natix-miner autolabel: teacher boxes fused by agreement into YOLO + COCO + a review export, and the
teachers' box recall / precision measured against procedural scenes' true boxes."""

import csv
import json

import numpy as np
import pytest
import yaml

from natix_miner.cli import main as cli
from natix_miner.training import autolabel as A
from natix_miner.training.coco import load_coco
from tests.support import oracle_teacher


@pytest.fixture(scope="module")
def scenes():
    from natix_miner.training.datasets import from_procedural

    return from_procedural(12, seed=3, long_side=192)


@pytest.fixture(scope="module")
def truth(scenes, tmp_path_factory):
    return oracle_teacher.write_truth(tmp_path_factory.mktemp("truth") / "truth.json", scenes)


def _boxes(*rows):
    return (np.asarray([r[1:] for r in rows], np.float32).reshape(-1, 4), [r[0] for r in rows],
            np.asarray([0.8] * len(rows), np.float32))


def test_fusion_counts_agreement_and_averages_scores():
    a = _boxes(("cone", 10, 10, 30, 50), ("sign", 100, 20, 140, 60), ("cone", 11, 10, 31, 50))  # last: a duplicate
    b = _boxes(("cone", 12, 12, 32, 52), ("barrier", 200, 100, 260, 130))
    c = _boxes(("sign", 300, 20, 340, 60))  # far from a's sign: another object
    fused = A.fuse({"a": a, "b": b, "c": c}, iou=0.5)
    by = {(f.cls, f.agree): f for f in fused}
    assert sorted((f.cls, f.agree) for f in fused) == [("barrier", 1), ("cone", 2), ("sign", 1), ("sign", 1)]
    cone = by[("cone", 2)]
    assert cone.teachers == {"a": 0.8, "b": 0.8}
    assert cone.score == pytest.approx(2 * 0.8 / 3)  # a teacher that missed it counts 0
    assert cone.box == pytest.approx((11, 11, 31, 51), abs=0.01)  # score-weighted mean
    assert all(f.score == pytest.approx(0.8 / 3) for f in fused if f.agree == 1)
    # matching: greedy, one true box per prediction, class must agree
    hits = A.match_count([[10, 10, 30, 50], [10, 10, 30, 50], [100, 20, 140, 60]], ["cone", "cone", "cone"],
                         [0.9, 0.8, 0.7], np.array([[10, 10, 30, 50], [100, 20, 140, 60]]), ["cone", "sign"])
    assert hits == [True, False, False]


def test_measure_oracle_is_perfect_and_jitter_is_not(scenes, truth, tmp_path, capsys):
    oracle_teacher.register()
    cfg = A.AutolabelConfig(data="procedural", out="", min_agree=1, min_score=0.0, teachers=[
        A.TeacherSpec(family="oracle", model=str(truth), name="oracle"),
        A.TeacherSpec(family="oracle", model=str(truth), name="jittered", options={"jitter": 0.6})])
    m = A.measure(cfg, samples=scenes)
    assert m["images"] == 12 and m["true_boxes"] > 20
    o, j = m["teachers"]["oracle"], m["teachers"]["jittered"]
    assert o["recall"] == 1.0 and o["precision"] == 1.0 and o["tp"] == m["true_boxes"]
    assert 0.2 < j["recall"] < 0.9 and j["precision"] == j["recall"]  # one prediction per true box
    per = o["per_class"]
    assert per["cone"]["n_true"] > 0 and per["cone"]["recall"] == 1.0
    # fused with agreement 1: every object found (the oracle's box dominates its cluster's position)
    assert m["fused"]["n_true"] == m["true_boxes"] and m["fused"]["recall"] > j["recall"]
    text = A.format_measure(m)
    assert "oracle" in text and "1.000" in text and "fused (agree>=1)" in text
    # the command: the same scenes from the data spec (12 at long side 192, seed 3)
    capsys.readouterr()
    assert cli(["autolabel", "--data", "procedural:12:192", "--seed", "3", "--teachers", f"oracle={truth}",
                "--measure", "--quiet", "--json", str(tmp_path / "m.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"box recall / precision at IoU 0.5 on 12 images, {m['true_boxes']} true boxes"
    assert lines[2].split() == ["oracle", "1.000", "1.000", str(m["true_boxes"]), str(m["true_boxes"])]
    assert json.loads((tmp_path / "m.json").read_text())["measure"]["teachers"]["oracle"]["recall"] == 1.0


def _key(image) -> str:
    """The oracle's key of an image (bytes or a file), decoded as the teachers see it."""
    from pathlib import Path

    from natix_miner.imaging.decode import decode_bytes

    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return oracle_teacher.image_key(decode_bytes(data, eager=True).rgb)


def _truth_of(scenes):
    return {_key(x.data): A.true_boxes(x, A.ROADWORK_CLASSES) for x in scenes}


def test_autolabel_writes_yolo_coco_and_review(scenes, truth, tmp_path, capsys):
    """The oracle plus a tiny real OWLv2 (random weights: its boxes are noise) through the CLI on a labelled
    folder; then the oracle and its jittered copy, two required to agree."""
    from natix_miner.experts.detection import box_iou
    from natix_miner.training.datasets import from_procedural
    from tests.support.tiny_detectors import owlv2

    oracle_teacher.register()
    owl = owlv2(tmp_path / "owl")
    data = tmp_path / "data"
    for i, s in enumerate(scenes):  # the NATIX folder layout, not procedural's own loader
        (data / ("roadwork" if s.label else "none")).mkdir(parents=True, exist_ok=True)
        (data / ("roadwork" if s.label else "none") / f"{i:03d}.jpg").write_bytes(s.data)
    out = tmp_path / "out"
    rc = cli(["autolabel", "--data", str(data), "--teachers", f"oracle={truth},owlv2={owl}", "--out", str(out),
              "--min-agree", "1", "--min-score", "0.3", "--quiet", "--json", str(tmp_path / "s.json")])
    assert rc == 0, capsys.readouterr()
    s = json.loads((tmp_path / "s.json").read_text())["autolabel"]
    assert s["roadwork_kept"] == 6 and s["background"] == 6 and s["roadwork_without_boxes"] == 0
    assert s["teacher_boxes"]["owlv2"] > 0 and s["min_agree"] == 1
    n = sum(s["boxes"].values())
    # review: one CSV row and one crop per box; the oracle's boxes are the true ones
    rows = list(csv.DictReader(open(out / "review" / "boxes.csv")))
    assert len(rows) == n and set(rows[0]) == set(A.CSV_FIELDS)
    assert all((out / "review" / r["crop"]).is_file() for r in rows)
    truths = _truth_of(scenes)
    n_true = sum(len(c) for x, (b, c) in zip(scenes, truths.values()) if x.label)
    oracle_rows = [r for r in rows if "oracle" in json.loads(r["teachers"])]
    assert 0.9 * n_true <= len(oracle_rows) <= n_true  # a second true box overlapping the first (IoU >= 0.5) merges
    for r in oracle_rows:
        if len(json.loads(r["teachers"])) == 1:  # the oracle alone: its box is a true box
            tb, tc = truths[_key(r["image"])]
            ious = box_iou([float(r[k]) for k in ("x0", "y0", "x1", "y1")], tb)[0]
            assert ious.max() > 0.9 and tc[int(ious.argmax())] == r["class"]
    assert all(float(r["score"]) == pytest.approx(float(json.loads(r["teachers"]).get("owlv2", 0)) / 2 + 0.45 *
                                                   ("oracle" in json.loads(r["teachers"])), abs=1e-3) for r in rows)
    # COCO: loads back with every box, background images have none
    ds = load_coco(s["coco"])
    assert len(ds.images) == 12 and sum(ds.counts().values()) == n and ds.counts() == s["boxes"]
    assert sum(1 for im in ds.images if not im.boxes) == 6
    # YOLO: data.yaml, a train/val split, label lines in range
    spec = yaml.safe_load(open(s["yolo"]))
    assert spec["names"] == dict(enumerate(A.ROADWORK_CLASSES))
    root = out / "yolo"
    assert len(list((root / "images" / "val").iterdir())) >= 2 and len(list((root / "images" / "train").iterdir())) >= 8
    lines = [ln.split() for p in (root / "labels").rglob("*.txt") for ln in p.read_text().splitlines()]
    assert len(lines) == n
    assert all(len(ln) == 5 and 0 <= int(ln[0]) < 5 and all(0 <= float(v) <= 1 for v in ln[1:]) for ln in lines)

    # two agreeing teachers required: the jittered oracle keeps only the boxes it still finds at IoU >= 0.5,
    # each one a true box
    res = A.autolabel(A.AutolabelConfig(data="procedural", out=str(tmp_path / "agree"), min_score=0.5, teachers=[
        A.TeacherSpec(family="oracle", model=str(truth)),
        A.TeacherSpec(family="oracle", model=str(truth), options={"jitter": 0.6})], crops=False),
        samples=from_procedural(12, seed=3, long_side=192))
    kept = sum(res["boxes"].values())
    assert 0 < kept < 0.9 * n_true and res["min_agree"] == 2
    assert res["teacher_boxes"]["oracle"] == res["teacher_boxes"]["oracle_2"] == n_true
    for r in csv.DictReader(open(tmp_path / "agree" / "review" / "boxes.csv")):
        assert set(json.loads(r["teachers"])) == {"oracle", "oracle_2"} and r["crop"] == ""
    by_image = {}
    for im in load_coco(res["coco"]).images:
        tb, tc = truths[_key(im.path)]
        for b in im.boxes:
            ious = box_iou([b.x, b.y, b.x + b.w, b.y + b.h], tb)[0]
            assert ious.max() >= 0.7 and tc[int(ious.argmax())] == A.ROADWORK_CLASSES[b.cls]
        by_image[im.path.name] = len(im.boxes)
    assert sum(by_image.values()) == kept


def test_autolabel_operator_errors(tmp_path, capsys):
    assert cli(["autolabel", "--data", "procedural:4", "--teachers", "owlv3", "--out", str(tmp_path)]) == 2
    assert "did you mean 'owlv2'" in capsys.readouterr().err
    assert cli(["autolabel", "--data", "procedural:4", "--teachers", "owlv2"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    assert cli(["autolabel", "--data", "procedural:4", "--teachers", "owlv2", "--out", str(tmp_path),
                "--classes", "cone,tractor"]) == 2
    assert "unknown roadwork classes ['tractor']" in capsys.readouterr().err
    assert cli(["autolabel", "--data", "procedural:4", "--teachers", "owlv2", "--out", str(tmp_path),
                "--min-agree", "3"]) == 2
    err = capsys.readouterr().err
    assert "exceeds the number of teachers" in err and "Traceback" not in err
    assert cli(["autolabel", "--data", "procedural:2:64", "--teachers", "owlv2=/nonexistent/owl", "--out",
                str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: teacher owlv2: local path /nonexistent/owl does not exist" in err and "Traceback" not in err


def test_fiftyone_export_when_installed(tmp_path, monkeypatch):
    """fiftyone is not installed here: a stand-in module with its API records what the export builds."""
    import sys
    import types

    from PIL import Image

    made = {}

    class Dataset:
        def __init__(self, name):
            self.name, self.samples = name, []
            made[name] = self

        def add_samples(self, samples):
            self.samples += samples

    class Sample(dict):
        def __init__(self, filepath, tags):
            super().__init__(filepath=filepath, tags=tags)

    fo = types.SimpleNamespace(Dataset=Dataset, Sample=Sample, dataset_exists=lambda n: n in made,
                               delete_dataset=made.pop, Detection=lambda **kw: kw,
                               Detections=lambda detections: detections)
    monkeypatch.setitem(sys.modules, "fiftyone", fo)
    Image.new("RGB", (200, 100)).save(tmp_path / "a.jpg")
    rows = [{"image": str(tmp_path / "a.jpg"), "class": "cone", "score": 0.6, "agree": 2,
             "x0": 20.0, "y0": 10.0, "x1": 60.0, "y1": 60.0}]
    assert A.export_fiftyone(rows, "natix-autolabel-x") == "natix-autolabel-x"
    assert A.export_fiftyone(rows, "natix-autolabel-x") == "natix-autolabel-x"  # an older one is replaced
    ds = made["natix-autolabel-x"]
    assert ds.persistent is True and len(ds.samples) == 1
    (det,) = ds.samples[0]["autolabel"]
    assert det == {"label": "cone", "confidence": 0.6, "bounding_box": [0.1, 0.1, 0.2, 0.5], "agree": 2}
