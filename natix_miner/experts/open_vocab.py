"""Shared text-prompt logic of the open-vocabulary families (``grounding_dino``, ``owlv2``, ``sam3``).

``options.prompts`` maps each roadwork class to the phrases that find it; the class mapping of
:mod:`natix_miner.experts.detection` is built from it, so the same aggregation, calibration and
depth check apply. Each image query / box gets the prompt that scores highest on it; class-wise
NMS (``nms_iou``, default 0.5) removes the duplicates these models emit.

Profile snippet (all three families)::

    options:
      prompts:
        cone: [traffic cone]
        barrier: [construction barrier]
        sign: [road work sign]
        construction_vehicle: [excavator]
        worker: [worker in safety vest]
      conf: 0.1          # keep a box when its best prompt scores at least this
      max_det: 50        # best boxes kept per image before NMS
      min_score: 0.25    # aggregation (detection.py)

Usage (a family)::

    class MyOpenVocab(OpenVocabDetector):
        family = "my_ov"
        def load_model(self, device): ...
        def detect(self, images):
            ...  # per image: scores (queries, prompts), boxes (queries, 4) xyxy pixels
            return [self.to_detections(scores, boxes, rgb.shape[:2]) for ...]
"""

import typing

import numpy as np
import pydantic

from natix_miner.experts.detection import DetectorConfigError, DetectorExpert, DetectorOptions, Detections, rgb_of

DEFAULT_PROMPTS: typing.Dict[str, typing.List[str]] = {
    "cone": ["traffic cone"],
    "barrier": ["construction barrier"],
    "sign": ["road work sign"],
    "construction_vehicle": ["excavator"],
    "worker": ["worker in safety vest"],
}


def prompt_table(prompts: typing.Mapping[str, typing.Any]
                 ) -> typing.Tuple[typing.List[str], typing.Dict[str, typing.List[str]]]:
    """``{roadwork class: phrase or [phrases]}`` -> (every phrase once, in order; class -> its phrases),
    whitespace normalised. Raises :class:`DetectorConfigError` naming the class or the repeated phrase."""
    if not isinstance(prompts, typing.Mapping):
        raise DetectorConfigError("options.prompts: expected {roadwork_class: [phrases]}")
    order: typing.List[str] = []
    mapping = {}
    for cls, phrases in prompts.items():
        phrases = [phrases] if isinstance(phrases, str) else phrases
        if not isinstance(phrases, (list, tuple)) or not phrases or \
                not all(isinstance(p, str) and p.strip() for p in phrases):
            raise DetectorConfigError(f"options.prompts.{cls}: expected a list of phrases")
        mapping[cls] = [" ".join(p.split()) for p in phrases]
        for p in mapping[cls]:
            if p in order:
                raise DetectorConfigError(f"options.prompts: {p!r} appears twice")
            order.append(p)
    return order, mapping


class OpenVocabOptions(DetectorOptions):
    """What the open-vocabulary families share (``grounding_dino``, ``owlv2``, ``sam3``): prompts
    instead of ``classes``, and class-wise NMS on by default."""

    packages: typing.ClassVar[typing.Tuple[str, ...]] = ("transformers",)

    prompts: typing.Optional[typing.Dict[str, typing.Any]] = None
    """Roadwork class -> the phrases that find it, e.g. ``{cone: [traffic cone], worker: [worker in
    safety vest]}``; each phrase once; None or empty: the built-in prompts (``DEFAULT_PROMPTS``)."""
    conf: float = pydantic.Field(default=0.1, ge=0, le=1)
    """Keep a box when its best prompt scores at least this."""
    max_det: int = pydantic.Field(default=50, ge=1)
    """Best boxes kept per image before NMS."""
    nms_iou: typing.Optional[float] = pydantic.Field(default=0.5, gt=0, le=1)
    """Class-wise NMS after mapping at this IoU (these models emit duplicates); None: off."""

    @pydantic.field_validator("prompts")
    @classmethod
    def _prompts(cls, value):
        if value:
            try:
                prompt_table(value)
            except DetectorConfigError as exc:
                raise ValueError(str(exc).removeprefix("options.prompts").lstrip(".: ")) from None
        return value


class OpenVocabDetector(DetectorExpert):
    Options = OpenVocabOptions

    def class_mapping(self) -> typing.Mapping[str, typing.Any]:
        self.prompts, mapping = prompt_table(self.opts.prompts or DEFAULT_PROMPTS)
        self.conf = self.opts.conf
        self.max_det = self.opts.max_det
        return mapping

    def load_hf(self, device: str, model_cls) -> None:
        """Load ``model_cls`` and its ``AutoProcessor`` from the spec's model (dir, store or hub id)."""
        from transformers import AutoProcessor

        from natix_miner.experts.dtypes import resolve_dtype
        from natix_miner.experts.hf_detector import load_pretrained

        if not self.spec.model:
            raise DetectorConfigError(f"{self.name}: family {self.family!r} needs model: <dir or hub id>")
        ref = self.resolve_model()
        self.dtype = resolve_dtype(self.spec.dtype, device, self.Options)
        self.model = load_pretrained(model_cls, ref, self.name, dtype=self.dtype).eval().to(device)
        self.processor = load_pretrained(AutoProcessor, ref, self.name)

    def forward_hf(self, images, text):
        """One processor + model call for a batch: ``(model outputs, rgb arrays)``."""
        import torch

        rgbs = [rgb_of(im) for im in images]
        inputs = self.processor(images=list(rgbs), text=[text] * len(rgbs), return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            return self.model(**inputs), rgbs

    def to_detections(self, scores: np.ndarray, boxes: np.ndarray, image_size,
                      prompt_index: typing.Optional[np.ndarray] = None) -> Detections:
        """``scores``: (Q, P) per query and prompt, or (Q,) with ``prompt_index`` (Q,); boxes (Q, 4) xyxy."""
        scores = np.asarray(scores, np.float32)
        if prompt_index is None:
            prompt_index = scores.argmax(axis=1) if scores.size else np.zeros(0, np.int64)
            scores = scores.max(axis=1) if scores.size else np.zeros(0, np.float32)
        keep = np.flatnonzero(scores >= self.conf)
        keep = keep[np.argsort(-scores[keep], kind="stable")][: self.max_det]
        h, w = image_size
        b = np.asarray(boxes, np.float32).reshape(-1, 4)[keep]
        b = np.clip(b, 0, [w, h, w, h])
        return Detections(b, scores[keep], [self.prompts[int(i)] for i in prompt_index[keep]],
                          np.asarray(prompt_index)[keep], image_size)


def cxcywh_to_xyxy(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Normalised (cx, cy, w, h) -> pixel (x1, y1, x2, y2)."""
    cx, cy, bw, bh = (boxes[..., i] for i in range(4))
    return np.stack([(cx - bw / 2) * width, (cy - bh / 2) * height, (cx + bw / 2) * width, (cy + bh / 2) * height],
                    axis=-1)
