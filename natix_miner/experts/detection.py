"""Shared detector logic: roadwork class mapping, evidence aggregation, calibration, depth check hook.

Every detector family (``ultralytics``, ``rfdetr``, ``hf_detector``, ``grounding_dino``, ``owlv2``,
``sam3``) turns a batch of images into :class:`Detections` (boxes in original image pixels,
scores, the model's own label names / ids). This module does the rest, identically for all:

1. **mapping**: ``options.classes`` maps roadwork object classes to the model's class names or ids
   (names are matched case-insensitively, ``_``/``-``/space-insensitive; ints match ids)::

       classes:
         cone: [traffic_cone, "traffic cone", 3]
         barrier: [barrier, barricade, jersey_barrier]
         sign: [road_work_sign, "stop sign"]
         construction_vehicle: [excavator, truck]
         worker: [worker, person]

   Detections of unmapped classes are dropped (counted in ``detail["unmapped"]``).
2. **depth check** (optional, ``options.depth_check``): each detection's score is multiplied by a
   plausibility factor from :mod:`natix_miner.experts.depth` (a cone 3 m wide is not a cone).
3. **aggregation**: per class, a noisy-OR over its ``top_k`` best detections with score
   ``>= min_score``: ``q_c = 1 - prod(1 - s_i)``; across classes a weighted noisy-OR with a leak:
   ``P = 1 - (1 - leak) * prod_c(1 - w_c * q_c)``; then a logistic calibration
   ``p = sigmoid(a * logit(P) + b)`` that the training pipeline fits (:func:`fit_calibration`)
   and writes back into the profile as ``options.calibration: {a: .., b: ..}``.

Aggregation options (all optional)::

    options:
      min_score: 0.25          # detections below are ignored
      top_k: 3                 # per class, best detections used in the noisy-OR
      weights: {cone: 0.9, barrier: 0.8, sign: 0.85, construction_vehicle: 0.6, worker: 0.5}
      leak: 0.05               # P when nothing is found
      calibration: {a: 1.0, b: 0.0}
      abstain_when_empty: false  # true: no mapped detection -> abstain instead of P = leak
      nms_iou: 0.5             # class-wise NMS after mapping (default on for open-vocabulary families)
      depth_check: depth_small # a depth expert's name in this profile, or a depth model path
      depth_options: {...}     # camera assumptions when depth_check is a path (see depth.py)

``Evidence.detail`` lists the mapped detections scoring ``>= min_score`` (before the depth factor):
``boxes`` (xyxy, image pixels), ``classes`` (roadwork class), ``labels`` (model label), ``scores``
(after the depth factor: what the aggregation used), ``raw_scores``, and ``class_scores``
(``q_c``), ``features`` (``q_c`` in :data:`ROADWORK_CLASSES` order, for fitting per-class weights),
``raw`` (``P`` before calibration), ``unmapped`` and, with a depth check, ``depth``.

Usage (writing a detector family)::

    class MyDetector(DetectorExpert):
        family = "my_detector"
        def load_model(self, device): ...
        def detect(self, images):          # -> list[Detections]
            ...
"""

import dataclasses
import math
import typing

import numpy as np
import pydantic

from natix_miner.experts.base import Evidence, Expert, ExpertOptions
from natix_miner.schema import OptionsError, StrictModel, validate_options

ROADWORK_CLASSES: typing.Tuple[str, ...] = ("cone", "barrier", "sign", "construction_vehicle", "worker")
DEFAULT_WEIGHTS: typing.Dict[str, float] = {
    "cone": 0.9, "barrier": 0.8, "sign": 0.85, "construction_vehicle": 0.6, "worker": 0.5}


class DetectorConfigError(ValueError):
    """A detector's ``options`` are malformed; the message names the option."""


@dataclasses.dataclass
class Detections:
    """Raw detections for one image: ``boxes`` (N, 4) xyxy in original pixels, ``scores`` (N,),
    ``labels`` (the model's class names or prompt texts), ``ids`` (class ids, -1 if none)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: typing.List[str]
    ids: np.ndarray
    image_size: typing.Tuple[int, int]  # (height, width)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        self.labels = [str(x) for x in self.labels]
        n = len(self.scores)
        if not (len(self.boxes) == len(self.labels) == len(self.ids) == n):
            raise ValueError(f"Detections: inconsistent lengths boxes={len(self.boxes)} scores={n} "
                             f"labels={len(self.labels)} ids={len(self.ids)}")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, image_size) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros(0), [], np.zeros(0), tuple(image_size))


def _norm(name: str) -> str:
    return " ".join(str(name).casefold().replace("_", " ").replace("-", " ").split())


class ClassMap:
    """Roadwork class <- model class names / ids (see module docstring)."""

    def __init__(self, mapping: typing.Mapping[str, typing.Sequence[typing.Union[str, int]]]):
        if not isinstance(mapping, typing.Mapping) or not mapping:
            raise DetectorConfigError("options.classes: expected a non-empty mapping "
                                      "{roadwork_class: [model class names or ids]}")
        self.by_name: typing.Dict[str, str] = {}
        self.by_id: typing.Dict[int, str] = {}
        for rclass, names in mapping.items():
            if isinstance(names, (str, int)):
                names = [names]
            if not isinstance(names, (list, tuple)) or not names:
                raise DetectorConfigError(f"options.classes.{rclass}: expected a list of class names or ids")
            for n in names:
                if isinstance(n, bool) or not isinstance(n, (str, int)):
                    raise DetectorConfigError(f"options.classes.{rclass}: {n!r} is neither a name nor an id")
                if isinstance(n, int):
                    self._put(self.by_id, n, rclass)
                else:
                    self._put(self.by_name, _norm(n), rclass)
        self.classes = tuple(mapping)

    @staticmethod
    def _put(table, key, rclass):
        if key in table and table[key] != rclass:
            raise DetectorConfigError(f"options.classes: {key!r} mapped to both {table[key]!r} and {rclass!r}")
        table[key] = rclass

    def lookup(self, label: str, class_id: int = -1) -> typing.Optional[str]:
        hit = self.by_name.get(_norm(label))
        if hit is None and class_id >= 0:
            hit = self.by_id.get(int(class_id))
        return hit


class Calibration(StrictModel):
    """``p = sigmoid(a * logit(P) + b)``, fitted by the training pipeline (:func:`fit_calibration`)."""

    a: float = 1.0
    """Slope on the logit of the raw noisy-OR probability."""
    b: float = 0.0
    """Offset."""


Unit = typing.Annotated[float, pydantic.Field(ge=0, le=1)]
class DetectorOptions(ExpertOptions):
    """What every detector family shares: aggregation, calibration, NMS, depth check and the dtype
    rule (CUDA: float16 / bfloat16 as asked, ``auto`` = float16; CPU: float32; fp8 / int8 refused)."""

    dtypes: typing.ClassVar[typing.Tuple[str, ...]] = ("float32", "float16", "bfloat16", "auto")
    auto_dtype: typing.ClassVar[str] = "float16"
    cpu_dtype: typing.ClassVar[str] = "float32"

    min_score: Unit = 0.25
    """Detections scoring below this are ignored by the aggregation (and not listed in the detail)."""
    top_k: int = pydantic.Field(default=3, ge=1)
    """Per roadwork class, the best detections combined by the noisy-OR."""
    weights: typing.Dict[str, Unit] = pydantic.Field(default_factory=dict)
    """Per roadwork class weight in the noisy-OR across classes; unset classes: cone 0.9, barrier
    0.8, sign 0.85, construction_vehicle 0.6, worker 0.5, any other mapped class 1.0."""
    leak: float = pydantic.Field(default=0.05, ge=0, lt=1)
    """P(roadwork) when nothing is found."""
    calibration: Calibration = pydantic.Field(default_factory=Calibration)
    """Logistic calibration of the raw probability."""
    abstain_when_empty: bool = False
    """No mapped detection above ``min_score``: abstain instead of answering the leak."""
    nms_iou: typing.Optional[float] = pydantic.Field(default=None, gt=0, le=1)
    """Class-wise NMS after mapping at this IoU; None: off (closed-set models run their own NMS)."""
    depth_check: typing.Optional[str] = None
    """A ``depth`` expert's name in this profile, or a depth model path: each score is multiplied by
    a size plausibility factor (``natix_miner/experts/depth.py``)."""
    depth_options: typing.Optional[typing.Dict[str, typing.Any]] = None
    """Camera and size assumptions for the depth check (the ``depth`` family's options, without
    ``detector``); they override the depth expert's own."""

    @pydantic.field_validator("depth_options")
    @classmethod
    def _depth_options(cls, value):
        if value is None:
            return None
        from natix_miner.experts.depth import CheckOptions

        try:
            validate_options(CheckOptions, value, "depth")
        except OptionsError as exc:
            raise ValueError(str(exc).replace("options.", "", 1)) from None
        return value


class ClosedSetOptions(DetectorOptions):
    """Detectors with their own class list (``ultralytics``, ``rfdetr``, ``hf_detector``)."""

    classes: typing.Dict[str, typing.Any]
    """Roadwork class -> the model's class names (case, ``_``, ``-`` and spaces ignored) or ids, e.g.
    ``{cone: [traffic_cone, 3], worker: [person]}``; detections of other classes are dropped. Required."""

    @pydantic.field_validator("classes")
    @classmethod
    def _classes(cls, value):
        try:
            ClassMap(value)
        except DetectorConfigError as exc:
            raise ValueError(str(exc).removeprefix("options.classes").lstrip(".: ") or str(exc)) from None
        return value


@dataclasses.dataclass
class Aggregator:
    """Detections of roadwork classes -> calibrated P(roadwork) (see module docstring)."""

    classes: typing.Tuple[str, ...] = ROADWORK_CLASSES
    weights: typing.Dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    min_score: float = 0.25
    top_k: int = 3
    leak: float = 0.05
    a: float = 1.0
    b: float = 0.0

    @classmethod
    def from_options(cls, options: typing.Union[DetectorOptions, typing.Mapping[str, typing.Any]],
                     classes: typing.Sequence[str]) -> "Aggregator":
        """``options``: a detector family's typed options, or a mapping of :class:`DetectorOptions` keys."""
        if not isinstance(options, DetectorOptions):
            try:
                options = validate_options(DetectorOptions, options, "detector")
            except OptionsError as exc:
                raise DetectorConfigError(str(exc)) from None
        weights = dict(DEFAULT_WEIGHTS)
        for k, v in options.weights.items():
            if k not in classes:
                raise DetectorConfigError(f"options.weights.{k}: not a mapped class (mapped: {list(classes)})")
            weights[k] = v
        for c in classes:
            weights.setdefault(c, 1.0)
        return cls(classes=tuple(classes), weights=weights, min_score=options.min_score, top_k=options.top_k,
                   leak=options.leak, a=options.calibration.a, b=options.calibration.b)

    def class_scores(self, classes: typing.Sequence[str], scores: typing.Sequence[float]) -> typing.Dict[str, float]:
        out = {}
        for c in self.classes:
            s = sorted((float(x) for k, x in zip(classes, scores) if k == c and x >= self.min_score), reverse=True)
            out[c] = 1.0 - float(np.prod([1.0 - x for x in s[: self.top_k]])) if s else 0.0
        return out

    def raw(self, q: typing.Mapping[str, float]) -> float:
        keep = 1.0 - self.leak
        for c, qc in q.items():
            keep *= 1.0 - self.weights.get(c, 1.0) * qc
        return 1.0 - keep

    def calibrate(self, raw: float) -> float:
        r = min(1.0 - 1e-6, max(1e-6, raw))
        z = self.a * math.log(r / (1.0 - r)) + self.b
        return 1.0 / (1.0 + math.exp(-z)) if z > -500 else 0.0


def fit_calibration(raw: typing.Sequence[float], labels: typing.Sequence[int], l2: float = 1e-3,
                    iters: int = 50) -> typing.Tuple[float, float]:
    """Fit ``(a, b)`` of ``p = sigmoid(a * logit(raw) + b)`` by regularised Newton steps."""
    r = np.clip(np.asarray(raw, dtype=np.float64), 1e-6, 1 - 1e-6)
    y = np.asarray(labels, dtype=np.float64)
    if r.shape != y.shape or r.size == 0:
        raise ValueError("fit_calibration: raw and labels must be non-empty and of equal length")
    x = np.stack([np.log(r / (1 - r)), np.ones_like(r)], axis=1)
    w = np.array([1.0, 0.0])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        g = x.T @ (p - y) + l2 * w
        h = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(2)
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return float(w[0]), float(w[1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of xyxy boxes: ``(N, 4), (M, 4) -> (N, M)`` (0 where the union is empty)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, groups: typing.Sequence, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression within each group (e.g. roadwork class)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    ious = box_iou(boxes, boxes)
    keep: typing.List[int] = []
    for i in order:
        if all(groups[j] != groups[i] or not ious[i, j] > iou for j in keep):
            keep.append(int(i))
    return np.asarray(keep, dtype=np.int64)


def _finite_list(values: np.ndarray) -> typing.List[typing.Optional[float]]:
    return [round(float(v), 3) if math.isfinite(v) else None for v in values]


def rgb_of(image) -> np.ndarray:
    rgb = getattr(image, "rgb", image)
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise TypeError(f"expected a DecodedImage or an (H, W, 3) uint8 array, got {type(image).__name__}")
    return rgb


class DetectorExpert(Expert):
    """Base of all detector families: subclasses implement :meth:`load_model` and :meth:`detect`."""

    Options = ClosedSetOptions

    def load(self, device: str) -> None:
        o = self.opts
        self.classmap = ClassMap(self.class_mapping())
        self.aggregator = Aggregator.from_options(o, self.classmap.classes)
        self.abstain_when_empty = o.abstain_when_empty
        self.nms_iou = o.nms_iou
        self.load_model(device)
        self.device = device
        self.depth_checker = None
        if o.depth_check:
            from natix_miner.experts.depth import checker_from_reference

            self.depth_checker = checker_from_reference(o.depth_check, self.profile, o.depth_options, device)

    def class_mapping(self) -> typing.Mapping[str, typing.Any]:
        """Roadwork class -> model class names / ids (closed-set families: ``options.classes``)."""
        return self.opts.classes

    def load_model(self, device: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def detect(self, images: typing.Sequence) -> typing.List[Detections]:  # pragma: no cover - abstract
        raise NotImplementedError

    def warmup(self) -> None:
        """One detection pass on a blank 224x224 frame."""
        self.detect([np.zeros((224, 224, 3), np.uint8)])

    def memory_bytes(self) -> int:
        own = super().memory_bytes()
        return own + (self.depth_checker.memory_bytes() if self.depth_checker is not None else 0)

    def predict_batch(self, images) -> typing.List[Evidence]:
        return self.evidence(images, self.detect(images))

    def evidence(self, images, detections: typing.Sequence[Detections], checker=None) -> typing.List[Evidence]:
        """Map, optionally depth-check, aggregate. ``checker`` overrides ``options.depth_check``."""
        checker = checker if checker is not None else self.depth_checker
        mapped = [self._mapped(d) for d in detections]
        checks = checker.check(images, mapped) if checker is not None else [None] * len(mapped)
        return [self._one(m, c) for m, c in zip(mapped, checks)]

    def roadwork_boxes(self, images) -> typing.List[typing.Tuple[Detections, typing.List[str]]]:
        """Per image, the detections the aggregation sees (mapped onto roadwork classes, class-wise NMS)
        and their roadwork class: what ``natix-miner autolabel`` takes from a teacher."""
        return [self._mapped(d)[:2] for d in self.detect(images)]

    def _mapped(self, det: Detections) -> typing.Tuple[Detections, typing.List[str], int]:
        keep, classes = [], []
        for i, (label, cid) in enumerate(zip(det.labels, det.ids)):
            c = self.classmap.lookup(label, int(cid))
            if c is not None:
                keep.append(i)
                classes.append(c)
        idx = np.asarray(keep, dtype=np.int64)
        if self.nms_iou is not None and len(idx):
            kept = nms(det.boxes[idx], det.scores[idx], classes, self.nms_iou)
            idx, classes = idx[kept], [classes[k] for k in kept]
        sub = Detections(det.boxes[idx], det.scores[idx], [det.labels[i] for i in idx], det.ids[idx], det.image_size)
        return sub, classes, len(det) - len(keep)

    def _one(self, mapped, check) -> Evidence:
        det, classes, unmapped = mapped
        factors = np.ones(len(det), dtype=np.float32) if check is None else np.asarray(check["factor"], np.float32)
        scores = det.scores * factors
        q = self.aggregator.class_scores(classes, scores)
        raw = self.aggregator.raw(q)
        keep = det.scores >= self.aggregator.min_score  # shown even when the depth factor removed them
        detail = {
            "boxes": det.boxes[keep].round(1).tolist(),
            "classes": [c for c, k in zip(classes, keep) if k],
            "labels": [lb for lb, k in zip(det.labels, keep) if k],
            "scores": scores[keep].round(4).tolist(),
            "raw_scores": det.scores[keep].round(4).tolist(),
            "class_scores": q,
            "features": [q.get(c, 0.0) for c in ROADWORK_CLASSES],
            "raw": raw,
            "unmapped": int(unmapped),
        }
        if check is not None:
            detail["depth"] = {k: (_finite_list(np.asarray(v, np.float64)[keep]) if isinstance(v, (list, np.ndarray))
                                   else v) for k, v in check.items()}
        abstain = self.abstain_when_empty and not (scores >= self.aggregator.min_score).any()
        return Evidence(0.5 if abstain else self.aggregator.calibrate(raw), abstain=abstain, detail=detail)

    HEAVY_ATTRS: typing.ClassVar[typing.Tuple[str, ...]] = (
        "model", "yolo", "rf", "processor", "text_embeds", "text_mask")

    def close(self) -> None:
        """Drop the models here, on the caller's thread: if the last reference died with a daemon
        batcher thread at interpreter exit, freeing tensors there aborts the process."""
        checker = getattr(self, "depth_checker", None)
        if checker is not None:
            checker.close()
        for attr in self.HEAVY_ATTRS:
            if getattr(self, attr, None) is not None:
                setattr(self, attr, None)
