"""COCO detection annotations for roadwork objects, and their conversion to an ultralytics dataset.

The detector experts see five roadwork classes (:data:`ROADWORK_CLASSES`). COCO files name their
categories freely ("traffic cone", "Barricade", "excavator", ...); :func:`map_category` folds the
usual names onto the five, ``class_map`` overrides it, and anything unmapped is dropped (and
counted, so a wrong mapping is visible).

Usage::

    from natix_miner.training.coco import load_coco, coco_to_yolo
    ds = load_coco("ann/instances.json", images_dir="ann/images")
    ds.images[0].boxes            # [Box(cls=0, x=.., y=.., w=.., h=..), ...] in pixels
    yaml_path = coco_to_yolo(ds, "runs/det-data", val_fraction=0.2)   # for ultralytics .train(data=...)
"""

import dataclasses
import json
import os
import random
import re
import shutil
import typing
from pathlib import Path

from natix_miner.experts.detection import ROADWORK_CLASSES  # the detector experts' class set

_SYNONYMS: typing.Dict[str, typing.Tuple[str, ...]] = {
    "cone": ("cone", "traffic cone", "pylon", "traffic pole", "bollard", "delineator", "tubular marker"),
    "barrier": ("barrier", "barricade", "drum", "fence", "jersey barrier", "road barrier", "channelizer",
                "vertical panel", "temporary barrier", "arrow board"),
    "sign": ("sign", "work zone sign", "road work sign", "roadwork sign", "temporary traffic control sign",
             "temporary traffic control message board", "message board", "detour sign"),
    "construction_vehicle": ("construction vehicle", "excavator", "bulldozer", "roller", "work vehicle",
                             "dump truck", "crane", "backhoe", "police vehicle"),
    "worker": ("worker", "workman", "flagger", "police officer", "road worker"),
}


class CocoError(ValueError):
    """The annotation file is not usable COCO; the message names the entry."""


@dataclasses.dataclass
class Box:
    cls: int
    x: float  # top-left, pixels
    y: float
    w: float
    h: float


@dataclasses.dataclass
class CocoImage:
    path: Path
    width: int
    height: int
    boxes: typing.List[Box] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class CocoDataset:
    images: typing.List[CocoImage]
    classes: typing.Tuple[str, ...]
    dropped: typing.Dict[str, int] = dataclasses.field(default_factory=dict)  # unmapped category -> boxes

    def counts(self) -> typing.Dict[str, int]:
        out = {c: 0 for c in self.classes}
        for im in self.images:
            for b in im.boxes:
                out[self.classes[b.cls]] += 1
        return out


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def map_category(name: str, classes: typing.Sequence[str] = ROADWORK_CLASSES,
                 class_map: typing.Optional[typing.Mapping[str, typing.Optional[str]]] = None) -> typing.Optional[int]:
    """Index of the roadwork class a COCO category name belongs to, or ``None``."""
    n = _norm(name)
    if class_map is not None:
        lowered = {_norm(k): v for k, v in class_map.items()}
        if n in lowered:
            target = lowered[n]
            return None if target is None else list(classes).index(target)
    for i, c in enumerate(classes):
        if n == _norm(c):
            return i
    for i, c in enumerate(classes):
        for syn in _SYNONYMS.get(c, ()):
            if n == syn or n.endswith(" " + syn) or n.startswith(syn + " "):
                return i
    return None


def load_coco(path: typing.Union[str, Path], images_dir: typing.Optional[typing.Union[str, Path]] = None,
              classes: typing.Sequence[str] = ROADWORK_CLASSES,
              class_map: typing.Optional[typing.Mapping[str, typing.Optional[str]]] = None,
              require_files: bool = True) -> CocoDataset:
    """Read a COCO instances file; boxes mapped onto ``classes``; crowd boxes skipped."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CocoError(f"{path}: cannot read COCO JSON ({exc})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise CocoError(f"{path}: missing list {key!r}")
    root = Path(images_dir) if images_dir else path.parent
    cat_to_cls: typing.Dict[int, typing.Optional[int]] = {}
    cat_names: typing.Dict[int, str] = {}
    for c in doc["categories"]:
        try:
            cat_names[int(c["id"])] = str(c["name"])
            cat_to_cls[int(c["id"])] = map_category(str(c["name"]), classes, class_map)
        except (KeyError, TypeError, ValueError):
            raise CocoError(f"{path}: bad category entry {c!r}") from None
    images: typing.Dict[int, CocoImage] = {}
    for im in doc["images"]:
        try:
            iid, fname = int(im["id"]), str(im["file_name"])
            w, h = int(im["width"]), int(im["height"])
        except (KeyError, TypeError, ValueError):
            raise CocoError(f"{path}: bad image entry {im!r}") from None
        p = root / fname
        if require_files and not p.exists():
            raise CocoError(f"{path}: image {fname!r} not found under {root}")
        images[iid] = CocoImage(path=p, width=w, height=h)
    dropped: typing.Dict[str, int] = {}
    for a in doc["annotations"]:
        try:
            iid, cid = int(a["image_id"]), int(a["category_id"])
            x, y, w, h = (float(v) for v in a["bbox"])
        except (KeyError, TypeError, ValueError):
            raise CocoError(f"{path}: bad annotation {a.get('id', '?')}") from None
        if iid not in images:
            raise CocoError(f"{path}: annotation {a.get('id', '?')} refers to unknown image {iid}")
        if cid not in cat_to_cls:
            raise CocoError(f"{path}: annotation {a.get('id', '?')} refers to unknown category {cid}")
        if a.get("iscrowd"):
            continue
        cls = cat_to_cls[cid]
        if cls is None:
            dropped[cat_names[cid]] = dropped.get(cat_names[cid], 0) + 1
            continue
        im = images[iid]
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(im.width), x + w), min(float(im.height), y + h)
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        im.boxes.append(Box(cls, x0, y0, x1 - x0, y1 - y0))
    return CocoDataset(images=list(images.values()), classes=tuple(classes), dropped=dropped)


def coco_to_yolo(ds: CocoDataset, out_dir: typing.Union[str, Path], val_fraction: float = 0.2,
                 seed: int = 0, link: bool = True,
                 splits: typing.Optional[typing.Mapping[str, typing.Sequence[CocoImage]]] = None) -> Path:
    """Write an ultralytics dataset (``images/{train,val}``, ``labels/{train,val}``, ``data.yaml``);
    ``splits`` (``{"train": [...], "val": [...]}``) instead of a seeded ``val_fraction`` split of ``ds``."""
    import yaml

    out = Path(out_dir)
    if not ds.images:
        raise CocoError("no images to convert")
    if splits is None:
        items = list(ds.images)
        random.Random(seed).shuffle(items)
        n_val = max(1, int(round(len(items) * val_fraction))) if len(items) > 1 else 0
        splits = {"val": items[:n_val], "train": items[n_val:] or items[:n_val]}
    for split, ims in splits.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(ims):
            stem = f"{i:06d}_{im.path.stem}"
            dst = out / "images" / split / f"{stem}{im.path.suffix.lower() or '.jpg'}"
            if dst.exists():
                dst.unlink()
            try:
                if not link:
                    raise OSError
                os.link(im.path, dst)
            except OSError:
                shutil.copyfile(im.path, dst)
            lines = []
            for b in im.boxes:
                cx, cy = (b.x + b.w / 2) / im.width, (b.y + b.h / 2) / im.height
                lines.append(f"{b.cls} {cx:.6f} {cy:.6f} {b.w / im.width:.6f} {b.h / im.height:.6f}")
            (out / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    data = {"path": str(out.resolve()), "train": "images/train", "val": "images/val",
            "names": {i: c for i, c in enumerate(ds.classes)}}
    target = out / "data.yaml"
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def write_coco(images: typing.Sequence[CocoImage], classes: typing.Sequence[str], path: typing.Union[str, Path],
               images_dir: typing.Optional[typing.Union[str, Path]] = None) -> Path:
    """The inverse of :func:`load_coco` (used to export procedural scenes' boxes)."""
    root = Path(images_dir) if images_dir else Path(path).parent
    doc = {"images": [], "annotations": [],
           "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    aid = 1
    for iid, im in enumerate(images, start=1):
        doc["images"].append({"id": iid, "file_name": os.path.relpath(im.path, root),
                              "width": im.width, "height": im.height})
        for b in im.boxes:
            doc["annotations"].append({"id": aid, "image_id": iid, "category_id": b.cls + 1,
                                       "bbox": [b.x, b.y, b.w, b.h], "area": b.w * b.h, "iscrowd": 0})
            aid += 1
    Path(path).write_text(json.dumps(doc))
    return Path(path)


def coco_from_samples(samples, out_dir: typing.Union[str, Path], classes: typing.Sequence[str] = ROADWORK_CLASSES,
                      class_map: typing.Optional[typing.Mapping[str, typing.Optional[str]]] = None) -> Path:
    """Write samples that carry ``meta["boxes"]`` (procedural scenes do: ``[{kind, box}]``) as
    images plus a COCO file, the object kinds folded onto ``classes``. Returns the JSON path."""
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i, s in enumerate(samples):
        data = s.bytes()
        ext = ".png" if data[:4] == b"\x89PNG" else ".jpg"
        p = out / "images" / f"{i:06d}{ext}"
        p.write_bytes(data)
        import io

        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
        boxes = []
        for b in s.meta.get("boxes", []):
            cls = map_category(b["kind"], classes, class_map)
            if cls is None:
                continue
            x0, y0, x1, y1 = (float(v) for v in b["box"])
            x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
            if x1 - x0 >= 1 and y1 - y0 >= 1:
                boxes.append(Box(cls, x0, y0, x1 - x0, y1 - y0))
        images.append(CocoImage(p, w, h, boxes))
    return write_coco(images, classes, out / "instances.json", images_dir=out)
