"""RF-DETR (Roboflow's ``rfdetr`` package) as a roadwork expert (family ``rfdetr``).

The model is a local checkpoint (``.pth`` / ``.ckpt`` written by ``rfdetr`` training, or a
``{"model": state_dict, "args": {...}, "model_name": "RFDETRNano"}`` dict); the variant and the
class names come from the checkpoint. Without ``model``, ``options.variant`` builds that variant
with random weights (speed benchmarks only). ``RFDETRBase`` is refused: it fetches a DINOv2
backbone from the hub even without pretrained weights.

Profile entry::

    - name: rfdetr_roadwork
      family: rfdetr
      model: models/rfdetr-small-roadwork/checkpoint_best_total.pth
      dtype: float16                  # GPUs: optimise the model in half precision
      options:
        resolution: 512               # input side; multiple of patch_size * num_windows
        conf: 0.05                    # rfdetr's threshold (aggregation has min_score)
        trust_checkpoint: false       # true allows full-pickle checkpoints you trust
        compile: false                # true: rfdetr's torchscript trace on load (GPU)
        classes: {cone: [cone, traffic_cone], barrier: [barrier], sign: [sign],
                  construction_vehicle: [excavator], worker: [worker]}
"""

import os
import typing

import pydantic

from natix_miner.experts.detection import ClosedSetOptions, DetectorConfigError, DetectorExpert, Detections, rgb_of

VARIANTS = {"nano": "RFDETRNano", "small": "RFDETRSmall", "medium": "RFDETRMedium", "large": "RFDETRLarge"}


class Options(ClosedSetOptions):
    """Options of the ``rfdetr`` family (``natix-miner experts options rfdetr``)."""

    packages: typing.ClassVar[typing.Tuple[str, ...]] = ("rfdetr",)

    resolution: typing.Optional[int] = pydantic.Field(default=None, gt=0)
    """Input side, a multiple of patch_size x num_windows; None: the checkpoint's."""
    conf: float = pydantic.Field(default=0.05, ge=0, le=1)
    """rfdetr's score threshold (the aggregation has ``min_score``)."""
    trust_checkpoint: bool = False
    """Allow full-pickle checkpoints (only ones you trust)."""
    compile: bool = False
    """rfdetr's torchscript trace at load (GPU)."""
    variant: typing.Optional[str] = None
    """Without ``model``: build this variant with random weights (nano, small, medium, large;
    speed benchmarks only). ``base`` is refused: it fetches a backbone from the hub."""
    num_classes: typing.Optional[int] = pydantic.Field(default=None, ge=1)
    """With ``variant``: the number of classes of the random head."""


class RFDETRDetector(DetectorExpert):
    family = "rfdetr"
    Options = Options

    def load_model(self, device: str) -> None:
        import torch

        import rfdetr

        from natix_miner.experts.dtypes import resolve_dtype

        o = self.opts
        kwargs: typing.Dict[str, typing.Any] = {"device": device}
        if o.resolution:
            kwargs["resolution"] = o.resolution
        if self.spec.model:
            path = self.resolve_model()
            if not os.path.isfile(path):
                from natix_miner.models_store import ModelUnavailable

                raise ModelUnavailable(f"{self.name}: rfdetr checkpoint {path!r} not found (this expert never downloads)")
            try:
                self.rf = rfdetr.RFDETR.from_checkpoint(path, trust_checkpoint=o.trust_checkpoint, **kwargs)
            except Exception as exc:
                raise RuntimeError(f"{self.name}: cannot load rfdetr checkpoint {path}: {exc}") from exc
        else:
            variant = str(o.variant or "").lower().removeprefix("rfdetr").strip("-_")
            if variant not in VARIANTS:
                raise DetectorConfigError(f"{self.name}: give model: <checkpoint> or options.variant in {sorted(VARIANTS)} "
                                          "(RFDETRBase needs the hub)")
            if o.num_classes:
                kwargs["num_classes"] = o.num_classes
            self.rf = getattr(rfdetr, VARIANTS[variant])(pretrain_weights=None, **kwargs)
        self.model = self.rf.model.model
        self.names = list(self.rf.class_names)
        self.conf = o.conf
        dtype = resolve_dtype(self.spec.dtype, device, self.Options)
        if dtype != torch.float32 or o.compile:
            self.rf.inference(compile=o.compile, batch_size=self.spec.max_batch, dtype=dtype)

    def memory_bytes(self) -> int:
        model = self.rf.model.inference_model or self.rf.model.model
        own = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        return own + (self.depth_checker.memory_bytes() if self.depth_checker is not None else 0)

    def detect(self, images) -> typing.List[Detections]:
        import numpy as np

        if not len(images):
            return []
        rgbs = [rgb_of(im) for im in images]
        preds = self.rf.predict(list(rgbs), threshold=self.conf, include_source_image=False)
        out = []
        for d, rgb in zip(preds, rgbs):
            ids = np.asarray(d.class_id if d.class_id is not None else np.zeros(len(d)), dtype=np.int64)
            names = d.data.get("class_name") if d.data else None
            labels = [str(n) for n in names] if names is not None else [
                self.names[i] if 0 <= i < len(self.names) else str(i) for i in ids]
            out.append(Detections(d.xyxy, d.confidence, labels, ids, rgb.shape[:2]))
        return out
