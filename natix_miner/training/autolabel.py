"""Auto-labelled roadwork boxes from open-vocabulary teachers (``natix-miner autolabel``).

The NATIX dataset labels whole images (roadwork / none), but a detector needs boxes. Teachers that
exist as expert families (``grounding_dino``, ``owlv2``, ``sam3``, or any detector family with a
class mapping) propose boxes for the roadwork classes (:data:`~natix_miner.experts.detection.ROADWORK_CLASSES`,
prompted with :data:`~natix_miner.experts.open_vocab.DEFAULT_PROMPTS`) on the images labelled
roadwork. The teachers' boxes are fused like weighted boxes fusion: per class, boxes of different
teachers that overlap (IoU >= ``iou``) form one cluster; its box is the score-weighted mean, its score
the teachers' mean (a teacher that found nothing counts 0) and its *agreement* the number of teachers
in it. A cluster is kept when ``agree >= min_agree`` and ``score >= min_score``. Roadwork images with
no surviving box are left out (they would teach "roadwork is background"); images labelled none are
kept as background (no boxes), ``background`` of them per kept roadwork image.

Written under ``OUT``::

    coco/images/  coco/instances.json      COCO (natix_miner.training.coco), the input of train-detector
    yolo/{images,labels}/{train,val}/  yolo/data.yaml     an ultralytics dataset, split train/val
    review/boxes.csv  review/crops/        one row and one crop per box, for a human pass
    summary.json                           counts, settings, the teachers' box counts
    (and a FiftyOne dataset when fiftyone is importable)

Procedural scenes carry their true boxes: :func:`measure` scores each teacher and the fusion
against them (recall / precision at IoU 0.5), ``natix-miner autolabel --data procedural --measure``.

Usage::

    natix-miner autolabel --data data/roadwork --teachers grounding_dino,owlv2 --out runs/boxes
    natix-miner autolabel --data data/roadwork --teachers grounding_dino=models/gdino-base,owlv2 \\
        --classes cone,barrier,sign --min-score 0.3 --min-agree 2 --out runs/boxes
    natix-miner autolabel --data procedural:200 --teachers grounding_dino,owlv2 --measure

    from natix_miner.training.autolabel import AutolabelConfig, autolabel, parse_teachers
    res = autolabel(AutolabelConfig(data="procedural:12", teachers=parse_teachers("owlv2=models/owl"),
                                    out="runs/boxes"))
    res["coco"], res["yolo"], res["csv"], res["boxes"]
"""

import csv
import dataclasses
import json
import random
import sys
import typing
from pathlib import Path

import numpy as np
import pydantic

from natix_miner.experts.detection import ROADWORK_CLASSES, box_iou
from natix_miner.schema import StrictModel

# the model each open-vocabulary family loads when a teacher names no model (local dir, store name or
# a hub id already in the local cache: nothing is downloaded)
DEFAULT_TEACHER_MODELS: typing.Dict[str, str] = {
    "grounding_dino": "IDEA-Research/grounding-dino-base",
    "owlv2": "google/owlv2-base-patch16-ensemble",
    "sam3": "facebook/sam3",
}


class AutolabelError(ValueError):
    """Bad settings or data for autolabel; the message names the fix."""


class TeacherSpec(StrictModel):
    """One teacher: a detector family and its model."""

    family: str = pydantic.Field(min_length=1)
    """An expert family that detects (``grounding_dino``, ``owlv2``, ``sam3``; also ``ultralytics``,
    ``rfdetr``, ``hf_detector``: their ``options.classes`` default to the roadwork class names, as
    ``train-detector`` writes them)."""
    model: typing.Optional[str] = None
    """Local directory / file, model-store name or cached hub id; default: ``DEFAULT_TEACHER_MODELS[family]``."""
    name: typing.Optional[str] = None
    """Name in the CSV and the summary (default: the family, numbered when repeated)."""
    options: typing.Dict[str, typing.Any] = pydantic.Field(default_factory=dict)
    """The family's ``options`` (prompts, conf, ...); open-vocabulary families get the roadwork prompts
    of the chosen classes unless ``prompts`` is given."""


class AutolabelConfig(StrictModel):
    """Everything :func:`autolabel` needs; the CLI flags map one to one."""

    data: str
    """A data spec (:mod:`natix_miner.training.datasets`): folder, CSV, parquet, pulled dataset, ``procedural[:N]``."""
    teachers: typing.List[TeacherSpec] = pydantic.Field(min_length=1)
    """The teachers whose boxes are fused (:func:`parse_teachers` reads ``family[=model],...``)."""
    out: str
    """Output folder (coco/, yolo/, review/, summary.json)."""
    classes: typing.Optional[typing.List[str]] = None
    """Roadwork classes to label (a subset of ROADWORK_CLASSES; default all)."""
    min_score: float = pydantic.Field(default=0.3, ge=0.0, le=1.0)
    """A fused box is kept when its score (the teachers' mean, 0 for a teacher that missed it) reaches this."""
    min_agree: typing.Optional[int] = pydantic.Field(default=None, ge=1)
    """Teachers that must find a box (IoU >= ``iou``) for it to be kept; default min(2, teachers)."""
    iou: float = pydantic.Field(default=0.5, gt=0.0, lt=1.0)
    """Box IoU at which two teachers' boxes of one class are the same object."""
    conf: float = pydantic.Field(default=0.1, ge=0.0, le=1.0)
    """Each teacher's own confidence cut (its ``options.conf`` unless given there)."""
    background: typing.Optional[float] = pydantic.Field(default=1.0, ge=0.0)
    """Background (label none) images kept per kept roadwork image; None keeps every one."""
    val_fraction: float = pydantic.Field(default=0.2, gt=0.0, lt=1.0)
    """Share of the images in the YOLO dataset's val split."""
    n: typing.Optional[int] = pydantic.Field(default=None, ge=1)
    """Use at most this many images (seeded, class-balanced)."""
    seed: int = 0
    """Seed of the subset, the background draw and the split."""
    device: str = "auto"
    """Where the teachers run: auto (the first GPU, else cpu), cpu, cuda, cuda:N."""
    batch: int = pydantic.Field(default=4, ge=1)
    """Images per teacher call."""
    crops: bool = True
    """Write one crop per box under review/crops/."""
    fiftyone_name: typing.Optional[str] = None
    """FiftyOne dataset name (only when fiftyone is installed; default natix-autolabel-<out folder>)."""

    @pydantic.field_validator("classes")
    @classmethod
    def _known(cls, v):
        if v is not None:
            bad = [c for c in v if c not in ROADWORK_CLASSES]
            if bad or not v:
                raise ValueError(f"unknown roadwork classes {bad}; choose from {list(ROADWORK_CLASSES)}")
        return v

    def class_list(self) -> typing.Tuple[str, ...]:
        return tuple(self.classes) if self.classes else ROADWORK_CLASSES

    def agreement(self) -> int:
        k = self.min_agree if self.min_agree is not None else min(2, len(self.teachers))
        if k > len(self.teachers):
            raise AutolabelError(f"--min-agree {k} exceeds the number of teachers ({len(self.teachers)})")
        return k


def parse_teachers(text: str) -> typing.List[TeacherSpec]:
    """``"grounding_dino,owlv2=models/owl,sam3"`` -> one :class:`TeacherSpec` per item."""
    from natix_miner.experts import FAMILIES

    out = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        family, _, model = item.partition("=")
        family = family.strip()
        if family not in FAMILIES:
            from natix_miner.schema import nearest

            guess = nearest(family, FAMILIES)
            raise AutolabelError(f"teacher {family!r} is not an expert family" + (f" (did you mean {guess!r}?)" if guess else "")
                                 + "; use grounding_dino, owlv2, sam3 or a detector family, as family[=model]")
        out.append(TeacherSpec(family=family, model=model.strip() or None))
    if not out:
        raise AutolabelError("no teachers given: --teachers grounding_dino,owlv2[,sam3]")
    return out


# ------------------------------------------------------------------------------------------------
# boxes


@dataclasses.dataclass
class FusedBox:
    """One object the teachers agree on: class, xyxy box (image pixels), fused score, agreement."""

    cls: str
    box: typing.Tuple[float, float, float, float]
    score: float
    agree: int
    teachers: typing.Dict[str, float]  # teacher name -> its score for this object


TeacherBoxes = typing.Tuple[np.ndarray, typing.List[str], np.ndarray]  # boxes (N, 4), classes, scores


def fuse(per_teacher: typing.Mapping[str, TeacherBoxes], iou: float = 0.5) -> typing.List[FusedBox]:
    """Weighted boxes fusion across teachers (see the module docstring); every cluster, unfiltered,
    best score first. A teacher's second box on an object it already found is a duplicate and ignored."""
    items = []
    for name, (boxes, classes, scores) in per_teacher.items():
        for b, c, s in zip(np.asarray(boxes, np.float64).reshape(-1, 4), classes, np.asarray(scores).reshape(-1)):
            items.append((float(s), name, c, b))
    items.sort(key=lambda x: -x[0])
    clusters: typing.List[dict] = []
    for score, name, cls, box in items:
        best, best_iou = None, iou
        duplicate = False
        for cl in clusters:
            if cl["cls"] != cls:
                continue
            o = float(box_iou(box, cl["box"])[0, 0])
            if name in cl["members"]:
                duplicate = duplicate or o >= iou
                continue
            if o >= best_iou:
                best, best_iou = cl, o
        if best is None:
            if not duplicate:
                clusters.append({"cls": cls, "box": box.copy(), "members": {name: (score, box)}})
            continue
        best["members"][name] = (score, box)
        w = np.array([s for s, _ in best["members"].values()]) + 1e-9
        best["box"] = (np.stack([b for _, b in best["members"].values()]) * w[:, None]).sum(0) / w.sum()
    n = max(1, len(per_teacher))
    out = [FusedBox(cl["cls"], tuple(float(v) for v in cl["box"]),
                    sum(s for s, _ in cl["members"].values()) / n, len(cl["members"]),
                    {k: round(s, 4) for k, (s, _) in cl["members"].items()}) for cl in clusters]
    return sorted(out, key=lambda f: -f.score)


def match_count(pred_boxes, pred_classes, pred_scores, true_boxes, true_classes, iou: float = 0.5) -> typing.List[bool]:
    """Per prediction (in the given order), whether it matches a true box of its class at IoU >= ``iou``;
    greedy by score, each true box matched at most once."""
    pred_boxes = np.asarray(pred_boxes, np.float64).reshape(-1, 4)
    hit = [False] * len(pred_boxes)
    if not len(pred_boxes) or not len(true_boxes):
        return hit
    ious = box_iou(pred_boxes, true_boxes)
    used = set()
    for i in np.argsort(-np.asarray(pred_scores, np.float64), kind="stable"):
        best, best_o = None, iou
        for j, tc in enumerate(true_classes):
            if j in used or tc != pred_classes[i]:
                continue
            if ious[i, j] >= best_o:
                best, best_o = j, ious[i, j]
        if best is not None:
            used.add(best)
            hit[i] = True
    return hit


class BoxScore:
    """Running recall / precision at one IoU, overall and per class."""

    def __init__(self, classes: typing.Sequence[str], iou: float = 0.5):
        self.iou = iou
        self.counts = {c: {"tp": 0, "n_true": 0, "n_pred": 0} for c in classes}

    def add(self, pred_boxes, pred_classes, pred_scores, true_boxes, true_classes) -> None:
        hits = match_count(pred_boxes, pred_classes, pred_scores, true_boxes, true_classes, self.iou)
        for c, h in zip(pred_classes, hits):
            if c in self.counts:
                self.counts[c]["n_pred"] += 1
                self.counts[c]["tp"] += int(h)
        for c in true_classes:
            if c in self.counts:
                self.counts[c]["n_true"] += 1

    @staticmethod
    def _rates(k: dict) -> dict:
        return dict(k, recall=k["tp"] / k["n_true"] if k["n_true"] else None,
                    precision=k["tp"] / k["n_pred"] if k["n_pred"] else None)

    def result(self) -> dict:
        total = {key: sum(k[key] for k in self.counts.values()) for key in ("tp", "n_true", "n_pred")}
        return dict(self._rates(total), iou=self.iou, per_class={c: self._rates(k) for c, k in self.counts.items()})


def true_boxes(sample, classes: typing.Sequence[str]) -> typing.Tuple[np.ndarray, typing.List[str]]:
    """A procedural sample's true roadwork boxes, folded onto ``classes`` (kinds no class takes are left out)."""
    from natix_miner.training.coco import map_category

    w, h = sample.meta.get("size") or (np.inf, np.inf)
    boxes, names = [], []
    for b in sample.meta.get("boxes", []):
        i = map_category(b["kind"], classes)
        box = np.clip(np.asarray(b["box"], np.float64), 0, [w, h, w, h])
        if i is not None and (box[2:] - box[:2] >= 1).all():  # the part inside the image, as coco_from_samples
            boxes.append(box.tolist())
            names.append(classes[i])
    return np.asarray(boxes, np.float64).reshape(-1, 4), names


# ------------------------------------------------------------------------------------------------
# teachers


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def load_teachers(cfg: AutolabelConfig) -> typing.Dict[str, typing.Any]:
    """Name -> loaded expert, each a :class:`~natix_miner.experts.detection.DetectorExpert`."""
    from natix_miner.config import ExpertSpec
    from natix_miner.experts import expert_class
    from natix_miner.experts.detection import DetectorExpert
    from natix_miner.experts.open_vocab import DEFAULT_PROMPTS, OpenVocabDetector
    from natix_miner.models_store import ModelUnavailable
    from natix_miner.schema import OptionsError

    classes = cfg.class_list()
    device = _device(cfg.device)
    out: typing.Dict[str, typing.Any] = {}
    try:
        for t in cfg.teachers:
            name = t.name or t.family
            k = 2
            while name in out:
                name, k = f"{t.name or t.family}_{k}", k + 1
            cls = expert_class(t.family)
            if not issubclass(cls, DetectorExpert):
                raise AutolabelError(f"teacher {t.family!r} is not a detector family (it gives no boxes)")
            options = dict(t.options)
            if issubclass(cls, OpenVocabDetector):
                options.setdefault("prompts", {c: DEFAULT_PROMPTS[c] for c in classes})
            elif "classes" in getattr(getattr(cls, "Options", None), "model_fields", {}):
                options.setdefault("classes", {c: [c] for c in classes})  # a detector train-detector wrote
            if "conf" in getattr(getattr(cls, "Options", None), "model_fields", {}):
                options.setdefault("conf", cfg.conf)
            spec = ExpertSpec(name=name, family=t.family, model=t.model or DEFAULT_TEACHER_MODELS.get(t.family),
                              device=device, options=options)
            try:
                expert = cls(spec, None)
            except OptionsError as exc:
                raise AutolabelError(f"teacher {name}: {exc}") from None
            try:
                expert.load(device)
            except ModelUnavailable as exc:  # not on this host: the message names how to get it
                raise AutolabelError(f"teacher {name}: {exc}") from None
            except Exception as exc:  # a wrong file, a broken checkpoint: the operator fixes --teachers
                raise AutolabelError(f"teacher {name}: cannot load {spec.model!r}: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
            out[name] = expert
    except BaseException:
        _close(out)
        raise
    return out


def run_teachers(teachers: typing.Mapping[str, typing.Any], samples, classes: typing.Sequence[str],
                 batch: int = 4, progress: bool = False) -> typing.List[typing.Dict[str, TeacherBoxes]]:
    """Per sample, per teacher: its boxes of ``classes`` (boxes, classes, scores) in the image's pixels."""
    from tqdm import tqdm

    from natix_miner.imaging.decode import decode_bytes

    out: typing.List[typing.Dict[str, TeacherBoxes]] = []
    bar = tqdm(total=len(samples), desc="teachers", unit="img", disable=not progress, leave=False)
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        images = [decode_bytes(s.bytes(), eager=True) for s in chunk]
        per = [dict() for _ in chunk]
        for name, expert in teachers.items():
            for i, (det, cls) in enumerate(expert.roadwork_boxes(images)):
                h, w = det.image_size
                boxes = np.clip(det.boxes, 0, [w, h, w, h])  # inside the image, at least a pixel wide
                keep = [k for k, c in enumerate(cls) if c in classes and (boxes[k, 2:] - boxes[k, :2] >= 1).all()]
                per[i][name] = (boxes[keep], [cls[k] for k in keep], det.scores[keep])
        out.extend(per)
        bar.update(len(chunk))
    bar.close()
    return out


def _close(teachers) -> None:
    for t in teachers.values():
        t.close()


# ------------------------------------------------------------------------------------------------
# measurement against true boxes


def measure(cfg: AutolabelConfig, samples=None, progress: bool = False) -> dict:
    """Each teacher's and the fusion's box recall / precision at IoU 0.5 against the true boxes of
    procedural scenes (every image, roadwork and background: a box on a background image is a false
    positive). Returns ``{"teachers": {name: score}, "fused": score, "images", "true_boxes"}``."""
    from natix_miner.training.datasets import load_samples

    if samples is None:
        samples = load_samples(cfg.data, limit=cfg.n, seed=cfg.seed)
    samples = [s for s in samples if "boxes" in s.meta]
    if not samples:
        raise AutolabelError(f"{cfg.data}: no true boxes to measure against (use --data procedural[:N])")
    classes = cfg.class_list()
    min_agree = cfg.agreement()
    teachers = load_teachers(cfg)
    try:
        per_image = run_teachers(teachers, samples, classes, cfg.batch, progress)
    finally:
        _close(teachers)
    scores = {name: BoxScore(classes) for name in teachers}
    fused_score = BoxScore(classes)
    n_true = 0
    for s, per in zip(samples, per_image):
        tb, tc = true_boxes(s, classes)
        n_true += len(tc)
        for name, (b, c, sc) in per.items():
            scores[name].add(b, c, sc, tb, tc)
        fused = [f for f in fuse(per, cfg.iou) if f.agree >= min_agree and f.score >= cfg.min_score]
        fused_score.add([f.box for f in fused], [f.cls for f in fused], [f.score for f in fused], tb, tc)
    return {"teachers": {k: v.result() for k, v in scores.items()}, "fused": fused_score.result(),
            "images": len(samples), "true_boxes": n_true, "min_agree": min_agree, "min_score": cfg.min_score}


def format_measure(m: dict) -> str:
    def pct(v):
        return "  n/a" if v is None else f"{v:5.3f}"

    lines = [f"box recall / precision at IoU {m['fused']['iou']} on {m['images']} images, {m['true_boxes']} true boxes",
             f"{'teacher':<22} {'recall':>7} {'precision':>9} {'tp':>6} {'pred':>6}"]
    rows = list(m["teachers"].items()) + [(f"fused (agree>={m['min_agree']})", m["fused"])]
    for name, r in rows:
        lines.append(f"{name:<22} {pct(r['recall']):>7} {pct(r['precision']):>9} {r['tp']:>6} {r['n_pred']:>6}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# the dataset


def autolabel(cfg: AutolabelConfig, samples=None, progress: bool = False) -> dict:
    """Label, fuse, filter, write (see the module docstring). Returns the summary (also ``OUT/summary.json``):
    ``{"coco", "yolo", "csv", "images", "boxes", "roadwork_kept", "roadwork_without_boxes", "background", ...}``."""
    from natix_miner.training.coco import coco_from_samples, coco_to_yolo, load_coco
    from natix_miner.training.datasets import load_samples

    classes = cfg.class_list()
    min_agree = cfg.agreement()
    if samples is None:
        samples = load_samples(cfg.data, limit=cfg.n, seed=cfg.seed)
    pos = [s for s in samples if s.label == 1]
    neg = [s for s in samples if s.label == 0]
    if not pos:
        raise AutolabelError(f"{cfg.data}: no image labelled roadwork (autolabel proposes boxes on those)")
    teachers = load_teachers(cfg)
    try:
        per_image = run_teachers(teachers, pos, classes, cfg.batch, progress)
    finally:
        _close(teachers)
    kept, fused_of, found = [], [], {name: 0 for name in teachers}
    for s, per in zip(pos, per_image):
        for name, (b, _, _) in per.items():
            found[name] += len(b)
        fused = [f for f in fuse(per, cfg.iou) if f.agree >= min_agree and f.score >= cfg.min_score]
        if fused:
            kept.append(dataclasses.replace(s, meta=dict(s.meta, boxes=[{"kind": f.cls, "box": list(f.box)} for f in fused])))
            fused_of.append(fused)
    if not kept:
        raise AutolabelError(f"no roadwork image kept a box (min_score {cfg.min_score}, min_agree {min_agree}): "
                             "lower --min-score / --min-agree, or check the teachers' models")
    rng = random.Random(cfg.seed)
    bg = list(neg)
    rng.shuffle(bg)
    if cfg.background is not None:
        bg = bg[: int(round(cfg.background * len(kept)))]
    bg = [dataclasses.replace(s, meta=dict(s.meta, boxes=[])) for s in bg]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ann = coco_from_samples(kept + bg, out / "coco", classes=classes)
    data_yaml = coco_to_yolo(load_coco(ann, classes=classes), out / "yolo", val_fraction=cfg.val_fraction,
                             seed=cfg.seed)
    doc = json.loads(ann.read_text())
    files = [out / "coco" / im["file_name"] for im in doc["images"]]
    rows = review_export(out / "review", kept, files[: len(kept)], fused_of, crops=cfg.crops)
    boxes = {c: 0 for c in classes}
    for fused in fused_of:
        for f in fused:
            boxes[f.cls] += 1
    summary = {"coco": str(ann), "yolo": str(data_yaml), "csv": str(out / "review" / "boxes.csv"),
               "images": len(kept) + len(bg), "roadwork_kept": len(kept),
               "roadwork_without_boxes": len(pos) - len(kept), "background": len(bg),
               "unlabelled_skipped": sum(1 for s in samples if s.label is None), "boxes": boxes,
               "teacher_boxes": found, "teachers": [t.model_dump() for t in cfg.teachers],
               "classes": list(classes), "min_score": cfg.min_score, "min_agree": min_agree, "iou": cfg.iou,
               "fiftyone": None}
    summary["fiftyone"] = export_fiftyone(rows, cfg.fiftyone_name or f"natix-autolabel-{out.resolve().name}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


CSV_FIELDS = ("image", "key", "source", "class", "score", "agree", "teachers", "x0", "y0", "x1", "y1", "crop")


def review_export(folder: Path, samples, files, fused_of, crops: bool = True) -> typing.List[dict]:
    """``folder/boxes.csv`` (one row per kept box) and, with ``crops``, ``folder/crops/*.jpg`` (the box with
    a 10 % margin). Returns the rows."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if crops:
        (folder / "crops").mkdir(exist_ok=True)
    rows = []
    for idx, (s, path, fused) in enumerate(zip(samples, files, fused_of)):
        img = Image.open(path).convert("RGB") if crops else None
        for k, f in enumerate(fused):
            x0, y0, x1, y1 = f.box
            crop = ""
            if img is not None:
                mx, my = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
                c = img.crop((max(0, int(x0 - mx)), max(0, int(y0 - my)), min(img.width, int(x1 + mx) + 1),
                              min(img.height, int(y1 + my) + 1)))
                cp = folder / "crops" / f"{idx:06d}_{k:02d}_{f.cls}.jpg"
                c.save(cp, quality=90)
                crop = str(cp.relative_to(folder))
            rows.append({"image": str(path), "key": s.key, "source": s.source, "class": f.cls,
                         "score": round(f.score, 4), "agree": f.agree, "teachers": json.dumps(f.teachers),
                         "x0": round(x0, 1), "y0": round(y0, 1), "x1": round(x1, 1), "y1": round(y1, 1), "crop": crop})
    with open(folder / "boxes.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return rows


def export_fiftyone(rows: typing.Sequence[dict], dataset_name: str) -> typing.Optional[str]:
    """A persistent FiftyOne dataset (one sample per image, the fused boxes as ``autolabel`` detections)
    when fiftyone is installed; else ``None``."""
    from natix_miner.training.hard import fiftyone_dataset

    made = fiftyone_dataset(dataset_name)
    if made is None:
        return None
    fo, ds = made
    from PIL import Image

    by_image: typing.Dict[str, typing.List[dict]] = {}
    for r in rows:
        by_image.setdefault(r["image"], []).append(r)
    samples = []
    for path, rs in by_image.items():
        with Image.open(path) as im:
            w, h = im.size
        dets = [fo.Detection(label=r["class"], confidence=r["score"],
                             bounding_box=[r["x0"] / w, r["y0"] / h, (r["x1"] - r["x0"]) / w, (r["y1"] - r["y0"]) / h],
                             agree=r["agree"]) for r in rs]
        s = fo.Sample(filepath=str(Path(path).resolve()), tags=["autolabel"])
        s["autolabel"] = fo.Detections(detections=dets)
        samples.append(s)
    ds.add_samples(samples)
    return dataset_name


# ------------------------------------------------------------------------------------------------
# command


def add_parser(sub) -> None:
    p = sub.add_parser("autolabel", help="propose roadwork boxes with open-vocabulary teachers: YOLO + COCO + review")
    p.add_argument("--data", required=True, help="folder, .csv, .parquet, pulled dataset dir, or procedural[:N]")
    p.add_argument("--teachers", required=True,
                   help="family[=model],...: grounding_dino, owlv2, sam3 (default models: DEFAULT_TEACHER_MODELS)")
    p.add_argument("--out", default=None, help="output folder (required unless --measure alone)")
    p.add_argument("--classes", default=None, help=f"comma list, a subset of {','.join(ROADWORK_CLASSES)}")
    p.add_argument("--min-score", type=float, default=0.3, help="fused score a box needs")
    p.add_argument("--min-agree", type=int, default=None, help="teachers that must find a box (default min(2, teachers))")
    p.add_argument("--iou", type=float, default=0.5, help="IoU at which teachers' boxes are one object")
    p.add_argument("--conf", type=float, default=0.1, help="each teacher's own confidence cut")
    p.add_argument("--background", type=float, default=1.0, help="background images per kept roadwork image")
    p.add_argument("--all-background", action="store_true", help="keep every background image")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--no-crops", action="store_true", help="CSV only, no crop files")
    p.add_argument("--fiftyone-name", default=None, help="FiftyOne dataset name (when fiftyone is installed)")
    p.add_argument("--measure", action="store_true",
                   help="score each teacher and the fusion against procedural scenes' true boxes (recall/precision @ IoU 0.5)")
    p.add_argument("--json", default=None, help="write the summary / measurement here")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--n", type=int, default=None, help="use at most N images (seeded, class-balanced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_autolabel)


def cmd_autolabel(args) -> int:
    from natix_miner.training.coco import CocoError
    from natix_miner.training.datasets import DataError, load_samples

    def err(msg: str, code: int = 2) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return code

    if not args.out and not args.measure:
        return err("--out DIR is required (or --measure to score the teachers only)")
    try:
        cfg = AutolabelConfig(
            data=args.data, teachers=parse_teachers(args.teachers), out=args.out or "",
            classes=[c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None,
            min_score=args.min_score, min_agree=args.min_agree, iou=args.iou, conf=args.conf,
            background=None if args.all_background else args.background, val_fraction=args.val_fraction,
            n=args.n, seed=args.seed, device=args.device, batch=args.batch, crops=not args.no_crops,
            fiftyone_name=args.fiftyone_name)
        cfg.agreement()
        samples = load_samples(cfg.data, limit=cfg.n, seed=cfg.seed)
        report: typing.Dict[str, typing.Any] = {}
        if args.measure:
            report["measure"] = measure(cfg, samples, progress=not args.quiet)
            print(format_measure(report["measure"]))
        if args.out:
            s = autolabel(cfg, samples, progress=not args.quiet)
            report["autolabel"] = s
            print(f"roadwork images kept {s['roadwork_kept']} (without boxes {s['roadwork_without_boxes']}), "
                  f"background {s['background']}; boxes {s['boxes']}")
            print(f"COCO {s['coco']}; YOLO {s['yolo']}; review {s['csv']}"
                  + (f"; FiftyOne dataset {s['fiftyone']!r}" if s["fiftyone"] else " (fiftyone not installed)"))
    except pydantic.ValidationError as exc:
        e = exc.errors()[0]
        return err(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg'].removeprefix('Value error, ')}")
    except (AutolabelError, DataError, CocoError) as exc:
        return err(str(exc))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0
