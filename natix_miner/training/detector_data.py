"""Detector training data shared by every detector family: splits, the validator's augmentation with
its boxes moved along, the RF-DETR dataset layout, and the image-level score a detector feeds to the cascade.

* :func:`split_images` - a seeded train / held-out split of COCO images, stratified by "has boxes"
  (an image with a roadwork box is a roadwork image; one without is background).
* :func:`augment_with_boxes` - :func:`natix_miner.synth.augment.augment` (the live validator's
  pipeline: centre crop, or rotation + random resized crop + distortions, to 224x224) applied to an
  image, and the same rotation and crop applied to its boxes (the rotated corners' bounding box, clipped
  to the crop; a box keeping less than ``min_visible`` of its area is dropped). The served detector sees
  exactly these 224x224 frames, so :func:`augmented_copies` adds them to the training split.
* :func:`write_rfdetr_dataset` - ``train/ valid/ test/`` with ``_annotations.coco.json`` each (rfdetr's
  Roboflow layout).
* :func:`image_level_score` - the trained checkpoint loaded through its expert family, held-out images
  sent through the validator's augmentation at each level, P(roadwork) from the family's box
  aggregation (:mod:`natix_miner.experts.detection`), MCC against "has boxes".

Usage::

    from natix_miner.training.coco import load_coco
    from natix_miner.training.detector_data import split_images, augmented_copies, image_level_score
    ds = load_coco("runs/boxes/coco/instances.json")
    train, held = split_images(ds.images, 0.2, seed=0)
    train += augmented_copies(train, "runs/det/aug", copies=1, seed=0)
    image_level_score({"name": "d", "family": "ultralytics", "model": "runs/det/best.pt",
                       "options": {"classes": {"cone": ["cone"]}}}, held, levels=(0, 1, 2, 3))
"""

import math
import random
import typing
from pathlib import Path

import numpy as np

from natix_miner.training.coco import Box, CocoImage


def split_images(images: typing.Sequence[CocoImage], val_fraction: float, seed: int = 0
                 ) -> typing.Tuple[typing.List[CocoImage], typing.List[CocoImage]]:
    """``(train, held_out)``: seeded, stratified by whether an image has boxes; at least one held-out
    image of each kind present (when that kind has two or more)."""
    rng = random.Random(seed)
    train, held = [], []
    for group in ([im for im in images if im.boxes], [im for im in images if not im.boxes]):
        group = list(group)
        rng.shuffle(group)
        k = max(1, int(round(len(group) * val_fraction))) if len(group) > 1 else 0
        held += group[:k]
        train += group[k:]
    if not train and held:  # one image in all: train on it, hold it out too
        train = list(held)
    return train, held


def _rotate_points(pts: np.ndarray, angle: float, width: int, height: int) -> np.ndarray:
    """Where torchvision's ``F.rotate(t, angle)`` (counter-clockwise, about the centre, no expand) moves points."""
    th = math.radians(angle)
    cx, cy = width / 2.0, height / 2.0
    dx, dy = pts[:, 0] - cx, pts[:, 1] - cy
    return np.stack([cx + dx * math.cos(th) + dy * math.sin(th), cy - dx * math.sin(th) + dy * math.cos(th)], axis=1)


def transform_boxes(boxes: typing.Sequence[Box], width: int, height: int, params: typing.Mapping[str, typing.Any],
                    size: int, min_visible: float = 0.4) -> typing.List[Box]:
    """Boxes of a ``width`` x ``height`` image moved as :func:`~natix_miner.synth.augment.augment` with
    ``params`` moved the pixels (level 0: centre crop to the short side; else rotation then crop)."""
    if "crop" in params:
        top, left, ch, cw = params["crop"]
        angle = float(params.get("angle", 0.0))
    else:
        side = min(width, height)
        top, left, ch, cw = int(round((height - side) / 2.0)), int(round((width - side) / 2.0)), side, side
        angle = 0.0
    sx, sy = size / cw, size / ch
    out = []
    for b in boxes:
        corners = np.array([[b.x, b.y], [b.x + b.w, b.y], [b.x, b.y + b.h], [b.x + b.w, b.y + b.h]], np.float64)
        if angle:
            corners = _rotate_points(corners, angle, width, height)
        x0, y0 = corners.min(0)
        x1, y1 = corners.max(0)
        full = (x1 - x0) * (y1 - y0)
        cx0, cy0 = max(x0, left), max(y0, top)
        cx1, cy1 = min(x1, left + cw), min(y1, top + ch)
        if full <= 0 or cx1 <= cx0 or cy1 <= cy0 or (cx1 - cx0) * (cy1 - cy0) < min_visible * full:
            continue
        nx0, ny0, nx1, ny1 = (cx0 - left) * sx, (cy0 - top) * sy, (cx1 - left) * sx, (cy1 - top) * sy
        if nx1 - nx0 >= 1 and ny1 - ny0 >= 1:
            out.append(Box(b.cls, nx0, ny0, nx1 - nx0, ny1 - ny0))
    return out


def augment_with_boxes(img, boxes: typing.Sequence[Box], rng: np.random.Generator, level: typing.Optional[int] = None,
                       min_visible: float = 0.4):
    """``(Augmented, boxes)``: the validator's augmentation of a PIL image, and its boxes moved along."""
    from natix_miner.synth.augment import TARGET_SIZE, augment

    aug = augment(img, rng, level=level)
    return aug, transform_boxes(boxes, img.width, img.height, aug.params, TARGET_SIZE, min_visible)


def augmented_copies(images: typing.Sequence[CocoImage], out_dir: typing.Union[str, Path], copies: int = 1,
                     seed: int = 0) -> typing.List[CocoImage]:
    """``copies`` validator-augmented versions of each image (level drawn like the validator), saved as
    the JPEG the validator sends, boxes moved along (a roadwork image whose boxes all left the crop
    becomes background: that is what the detector sees then)."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    res = []
    for i, im in enumerate(images):
        with Image.open(im.path) as pil:
            pil = pil.convert("RGB")
            for k in range(copies):
                aug, boxes = augment_with_boxes(pil, im.boxes, rng)
                p = out / f"{i:06d}_{k}_{im.path.stem}.jpg"
                p.write_bytes(aug.jpeg())
                res.append(CocoImage(p, aug.image.width, aug.image.height, boxes))
    return res


def write_rfdetr_dataset(train: typing.Sequence[CocoImage], held: typing.Sequence[CocoImage],
                         classes: typing.Sequence[str], out_dir: typing.Union[str, Path]) -> Path:
    """rfdetr's Roboflow layout: ``train/``, ``valid/`` and ``test/`` (the held-out images twice), each
    with its images and ``_annotations.coco.json``."""
    import os
    import shutil

    from natix_miner.training.coco import write_coco

    out = Path(out_dir)
    for split, ims in (("train", train), ("valid", held), ("test", held)):
        d = out / split
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        placed = []
        for i, im in enumerate(ims):
            dst = d / f"{i:06d}{im.path.suffix.lower() or '.jpg'}"
            try:
                os.link(im.path, dst)
            except OSError:
                shutil.copyfile(im.path, dst)
            placed.append(CocoImage(dst, im.width, im.height, list(im.boxes)))
        write_coco(placed, classes, d / "_annotations.coco.json", images_dir=d)
    return out


def image_level_score(entry: typing.Mapping[str, typing.Any], images: typing.Sequence[CocoImage],
                      levels: typing.Sequence[int] = (0, 1, 2, 3), seed: int = 0, device: str = "cpu",
                      batch: int = 8) -> dict:
    """The expert ``entry`` (a profile entry: name, family, model, options) on every held-out image at
    every validator augmentation level in ``levels``: MCC / accuracy at 0.5 (as the validator rounds),
    the MCC-best threshold, and MCC per level. Labels: 1 for an image with boxes, 0 without."""
    from PIL import Image

    from natix_miner.config import ExpertSpec
    from natix_miner.experts import create_expert
    from natix_miner.imaging.decode import decode_bytes
    from natix_miner.synth.augment import augment
    from natix_miner.training.metrics import binary_metrics, mcc_curve

    if not images or not levels:
        return {}
    spec = ExpertSpec(**{k: v for k, v in entry.items() if k in ("name", "family", "model", "options")}, device=device)
    expert = create_expert(spec)
    expert.load(device)
    rng = np.random.default_rng(seed)
    views, labels, lv = [], [], []
    for im in images:
        with Image.open(im.path) as pil:
            pil = pil.convert("RGB")
            for level in levels:
                views.append(decode_bytes(augment(pil, rng, level=int(level)).jpeg()))
                labels.append(1 if im.boxes else 0)
                lv.append(int(level))
    probs = []
    try:
        for start in range(0, len(views), batch):
            probs += [e.probability for e in expert.predict_batch(views[start:start + batch])]
    finally:
        expert.close()
    y, p, lv = np.asarray(labels), np.asarray(probs, np.float64), np.asarray(lv)
    m = binary_metrics(y, p)
    ts, mccs = mcc_curve(y, p)
    best = int(np.argmax(mccs))
    per_level = {str(level): round(binary_metrics(y[lv == level], p[lv == level])["mcc"], 4) for level in levels}
    return {"n": int(y.size), "positives": int(y.sum()), "mcc": round(m["mcc"], 4), "accuracy": round(m["accuracy"], 4),
            "best_threshold": round(float(ts[best]), 4), "best_mcc": round(float(mccs[best]), 4),
            "mcc_per_level": per_level, "levels": [int(x) for x in levels],
            "mean_p_roadwork": round(float(p[y == 1].mean()), 4) if (y == 1).any() else None,
            "mean_p_background": round(float(p[y == 0].mean()), 4) if (y == 0).any() else None}
