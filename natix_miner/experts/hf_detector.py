"""transformers object detectors (D-FINE, RT-DETR v1/v2, RF-DETR, LW-DETR, DETR...) (family ``hf_detector``).

Anything ``AutoModelForObjectDetection`` loads, with its image processor, from a local
directory (``save_pretrained``) or a hub id already in the local cache (offline). Class names come
from ``config.id2label``; ``post_process_object_detection`` turns outputs into boxes in the
original image's pixels.

Profile entry::

    - name: dfine_roadwork
      family: hf_detector
      model: models/dfine-s-roadwork            # or ustc-community/dfine-small-coco (cached)
      dtype: bfloat16                           # or auto (= bfloat16); see docs/experts.md on float16
      max_batch: 16
      options:
        image_size: 640                         # optional: override the processor's resize
        conf: 0.05                              # post-process threshold (aggregation has min_score)
        classes: {cone: [traffic cone], barrier: [barrier], sign: [road work sign],
                  construction_vehicle: [excavator], worker: [worker]}
"""

import typing

import numpy as np
import pydantic

from natix_miner.experts.detection import ClosedSetOptions, DetectorConfigError, DetectorExpert, Detections, rgb_of


def load_pretrained(loader, ref: str, what: str, **kwargs):
    """``loader.from_pretrained`` with a clear offline error."""
    from natix_miner.models_store import ModelUnavailable

    try:
        return loader.from_pretrained(ref, **kwargs)
    except OSError as exc:
        raise ModelUnavailable(f"{what}: cannot load {ref!r} from a local directory or the local hub cache "
                                f"(offline): {exc}") from None


class Options(ClosedSetOptions):
    """Options of the ``hf_detector`` family (``natix-miner experts options hf_detector``). Dtype
    ``auto`` = bfloat16: the DETR decoders (D-FINE, RT-DETR v2) collapsed in float16 on the GPU."""

    auto_dtype: typing.ClassVar[str] = "bfloat16"
    packages: typing.ClassVar[typing.Tuple[str, ...]] = ("transformers",)

    image_size: typing.Optional[int] = pydantic.Field(default=None, gt=0)
    """Square resize of the image processor; None: the processor's own size."""
    conf: float = pydantic.Field(default=0.05, ge=0, le=1)
    """Post-processing score threshold (the aggregation has ``min_score``)."""


class HFDetector(DetectorExpert):
    family = "hf_detector"
    Options = Options

    def load_model(self, device: str) -> None:
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        from natix_miner.experts.dtypes import resolve_dtype

        if not self.spec.model:
            raise DetectorConfigError(f"{self.name}: family 'hf_detector' needs model: <dir or hub id>")
        ref = self.resolve_model()
        self.dtype = resolve_dtype(self.spec.dtype, device, self.Options)
        self.model = load_pretrained(AutoModelForObjectDetection, ref, self.name, dtype=self.dtype).eval().to(device)
        kwargs = {}
        if self.opts.image_size:
            s = self.opts.image_size
            kwargs["size"] = {"height": s, "width": s}
        self.processor = load_pretrained(AutoImageProcessor, ref, self.name, **kwargs)
        self.names = {int(k): str(v) for k, v in (self.model.config.id2label or {}).items()}
        self.conf = self.opts.conf

    def detect(self, images) -> typing.List[Detections]:
        import torch

        if not len(images):
            return []
        rgbs = [rgb_of(im) for im in images]
        inputs = self.processor(images=list(rgbs), return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        for key in ("logits", "pred_boxes"):
            if getattr(outputs, key, None) is not None:
                setattr(outputs, key, getattr(outputs, key).float())
        results = self.processor.post_process_object_detection(
            outputs, threshold=self.conf, target_sizes=[r.shape[:2] for r in rgbs])
        out = []
        for res, rgb in zip(results, rgbs):
            ids = res["labels"].cpu().numpy().astype(np.int64)
            out.append(Detections(res["boxes"].float().cpu().numpy(), res["scores"].float().cpu().numpy(),
                                  [self.names.get(int(i), str(int(i))) for i in ids], ids, rgb.shape[:2]))
        return out
