"""transformers image classifiers (``AutoModelForImageClassification`` + ``AutoImageProcessor``).

The reference miner's ViT (``natix-network-org/roadwork``, labels ``None`` / ``Roadwork``) loads as
it is: the roadwork class is found by name in ``config.id2label`` (``roadwork``, ``road_work``,
``roadworks``, ``construction``, ``work zone``; ``no_roadwork`` and the like never match). A generic
two-label head (``LABEL_0`` / ``LABEL_1``) uses index 1, the subnet's convention. Override with
``positive_label`` (a name or a list of names whose probabilities are summed) or ``positive_index``.

Profile entry::

    - name: natix_vit
      family: hf_classifier
      model: natix-network-org/roadwork     # or a local dir, or a store name (models/manifests)
      dtype: float16                        # used on CUDA; CPU always runs float32
      max_batch: 32
      options:
        positive_label: Roadwork            # optional; found by name when omitted
        temperature: 1.0                    # logits / T before softmax (calibration)
        preprocess: auto                    # auto: vectorised when it matches the processor; processor

Preprocessing: the checkpoint's image processor defines it; when a vectorised resize + normalise
(``imaging.preprocess.to_batch``, on the expert's device) reproduces the processor on 224 px probes at
load time, that faster path is used (``preprocess: processor`` forces the processor).

Heads: single-logit (sigmoid), multi-label (sigmoid of the positive logit) or softmax over all
labels (the positive probabilities summed). Evidence detail: ``logit`` (log-odds of the answer)
and ``label`` (the most likely class name).
"""

import logging
import math
import typing

import numpy as np
import pydantic

from natix_miner.experts import hf_common
from natix_miner.experts.base import Evidence, Expert

log = logging.getLogger("natix_miner.experts.hf_classifier")

ROADWORK_LABELS = {"roadwork", "roadworks", "construction", "constructionzone", "workzone", "roadconstruction"}


def _norm(label: str) -> str:
    return "".join(ch for ch in str(label).lower() if ch.isalnum())


def pick_positive(id2label: typing.Mapping[int, str], positive_label=None, positive_index=None) -> typing.List[int]:
    """Indices of the roadwork class(es) in ``id2label`` (see module docstring)."""
    labels = {int(k): str(v) for k, v in id2label.items()}
    if positive_index is not None:
        idx = [int(i) for i in (positive_index if isinstance(positive_index, (list, tuple)) else [positive_index])]
        bad = [i for i in idx if i not in labels]
        if bad:
            raise ValueError(f"positive_index {bad} out of range; labels are {labels}")
        return idx
    if positive_label is not None:
        wanted = [positive_label] if isinstance(positive_label, str) else list(positive_label)
        idx = []
        for w in wanted:
            hits = [i for i, lab in labels.items() if lab.lower() == str(w).lower()]
            if not hits:
                raise ValueError(f"positive_label {w!r} is not a label of this model; labels are {labels}")
            idx += hits
        return idx
    hits = [i for i, lab in labels.items() if _norm(lab) in ROADWORK_LABELS]
    if len(hits) == 1:
        return hits
    if not hits and len(labels) == 2 and all(_norm(lab) == f"label{i}" for i, lab in labels.items()):
        log.warning("generic labels %s: taking index 1 as roadwork (set options.positive_label to be explicit)",
                    labels)
        return [1]
    what = "several" if hits else "no"
    raise ValueError(f"{what} roadwork label among {labels}; set options.positive_label or positive_index")


class Options(hf_common.HFOptions):
    """Options of the ``hf_classifier`` family (``natix-miner experts options hf_classifier``)."""

    positive_label: typing.Union[str, typing.List[str], None] = None
    """The roadwork label (or labels, probabilities summed), matched case-insensitively in
    ``config.id2label``; None: found by name (roadwork, road_work, construction, work zone...)."""
    positive_index: typing.Union[int, typing.List[int], None] = None
    """The roadwork class index (or indices); overrides ``positive_label``."""
    temperature: float = pydantic.Field(default=1.0, gt=0)
    """Logits are divided by this before the softmax (calibration)."""


class HFClassifier(Expert):
    family = "hf_classifier"
    Options = Options

    def load(self, device: str) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from natix_miner.experts.dtypes import resolve_dtype

        ref = self.resolve_model()
        self.dtype = resolve_dtype(self.spec.dtype, device, self.Options)
        self.processor = hf_common.from_pretrained(AutoImageProcessor, ref, self.name)
        model = hf_common.from_pretrained(AutoModelForImageClassification, ref, self.name, dtype=self.dtype)
        self.model = model.eval().to(device)
        cfg = self.model.config
        o = self.opts
        self.temperature = o.temperature
        self.id2label = {int(k): str(v) for k, v in cfg.id2label.items()}
        self.single_logit = cfg.num_labels == 1
        self.multi_label = cfg.problem_type == "multi_label_classification"
        self.positive = [0] if self.single_logit else pick_positive(
            self.id2label, o.positive_label, o.positive_index)
        self.device = device
        self._torch = torch
        self.fast = hf_common.fast_pixels_for(o.preprocess, self.processor)
        log.info("%s: %s on %s (%s), roadwork = %s, %s preprocessing", self.name, type(self.model).__name__,
                 device, self.dtype, [self.id2label.get(i) for i in self.positive],
                 "vectorised" if self.fast else "processor")

    def warmup(self) -> None:
        self.predict_batch([np.zeros((224, 224, 3), np.uint8)])

    def logits(self, images) -> np.ndarray:
        arrays = [getattr(im, "rgb", im) for im in images]
        if self.fast:
            from natix_miner.imaging.preprocess import to_batch

            size, mean, std = self.fast
            pixels = to_batch(arrays, size, mean, std, device=self.device, dtype=self.dtype)
        else:
            inputs = self.processor(images=arrays, return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, dtype=self.dtype, non_blocking=True)
        with self._torch.inference_mode():
            out = self.model(pixel_values=pixels).logits
        return out.float().cpu().numpy() / self.temperature

    def predict_batch(self, images) -> typing.List[Evidence]:
        if not images:
            return []
        z = self.logits(images).astype(np.float64)
        out = []
        for row in z:
            if self.single_logit or self.multi_label:
                logit = float(row[self.positive[0]])
                p = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit))))
            else:
                e = np.exp(row - row.max())
                probs = e / e.sum()
                p = float(probs[self.positive].sum())
                logit = math.log(max(p, 1e-12)) - math.log(max(1.0 - p, 1e-12))
            top = int(np.argmax(row)) if not self.single_logit else (0 if p >= 0.5 else -1)
            out.append(Evidence(p, detail={"logit": logit, "label": self.id2label.get(top, "none")}))
        return out

    def memory_bytes(self) -> int:
        return hf_common.module_bytes(self.model)
