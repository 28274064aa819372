"""A frozen DINOv2 / DINOv3 backbone (transformers ``Dinov2Model``, ``Dinov2WithRegistersModel``,
``DINOv3ViTModel``) with a linear head on its embedding: the "strong public miner" recipe.

Profile entry::

    - name: dinov2_head
      family: dino_head
      model: facebook/dinov2-base            # local dir, store name (models/manifests) or hub id
      dtype: bfloat16                        # on CUDA; CPU runs float32
      max_batch: 64
      options:
        head: models/heads/dinov2_base.npz   # or .pt / .pth / .safetensors (an nn.Linear state dict)
        pooling: cls                         # cls | pooled | mean | cls+mean (concatenated)
        image_size: 224                      # multiple of the patch size (14 for v2, 16 for v3)
        resize: squash                       # squash | center (centre-crop the short side first)
        positive_index: 1                    # for a 2-output head

Head files (what :func:`save_head` writes and the training pipeline fits):

* ``.npz``: ``w`` (F,) or (F, C), ``b`` () or (C,), optional ``mu``/``sigma`` (F,) feature
  standardisation, optional ``pooling`` (a string, overrides the option) - same layout as the timm
  family's heads;
* torch / safetensors: one ``nn.Linear`` state dict (``weight`` (C, F), ``bias`` (C,); prefixes such
  as ``head.`` are fine), optional ``mu``/``sigma`` tensors.

One output -> sigmoid; two or more -> softmax and ``positive_index``. Register tokens (DINOv3, v2
with registers) are skipped when mean-pooling patch tokens. Evidence detail: ``logit``.
"""

import logging
import math
import typing
from pathlib import Path

import numpy as np
import pydantic

from natix_miner.experts import hf_common
from natix_miner.experts.base import Evidence, Expert

log = logging.getLogger("natix_miner.experts.dino_head")

POOLINGS = ("cls", "pooled", "mean", "cls+mean")
BACKBONES = ("dinov2", "dinov2_with_registers", "dinov3_vit")


def save_head(path: str, w, b, mu=None, sigma=None, pooling: str = "cls") -> None:
    """Write a linear head as ``.npz`` (the format :class:`DinoHead` reads)."""
    arrays = {"w": np.asarray(w, np.float32), "b": np.asarray(b, np.float32), "pooling": np.array(pooling)}
    if mu is not None:
        arrays["mu"], arrays["sigma"] = np.asarray(mu, np.float32), np.asarray(sigma, np.float32)
    np.savez(path, **arrays)


def load_head(path: str) -> typing.Dict[str, typing.Any]:
    """Any supported head file -> ``{"w": (F, C), "b": (C,), "mu", "sigma", "pooling"}`` (numpy)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"head file {path} does not exist")
    head: typing.Dict[str, typing.Any] = {}
    if p.suffix == ".npz":
        with np.load(p) as z:
            raw = {k: z[k] for k in z.files}
        w = raw["w"].astype(np.float32)
        head["w"] = w.reshape(-1, 1) if w.ndim == 1 else w
        head["pooling"] = str(raw["pooling"]) if "pooling" in raw else None
    else:
        if p.suffix == ".safetensors":
            from safetensors.numpy import load_file

            raw = load_file(str(p))
        else:
            import torch

            sd = torch.load(str(p), map_location="cpu", weights_only=True)
            for key in ("state_dict", "model", "head"):
                if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                    sd = sd[key]
            raw = {k: v.float().numpy() for k, v in sd.items() if hasattr(v, "numpy")}
        weights = [k for k in raw if k.endswith("weight")]
        if len(weights) != 1:
            raise ValueError(f"head {path}: expected one linear layer, found weights {weights}")
        prefix = weights[0][: -len("weight")]
        head["w"] = np.asarray(raw[weights[0]], np.float32).T  # (C, F) -> (F, C)
        raw["b"] = raw.get(prefix + "bias", np.zeros(head["w"].shape[1], np.float32))
        raw.update({k: raw[prefix + k] for k in ("mu", "sigma") if prefix + k in raw})
        head["pooling"] = None
    head["b"] = np.asarray(raw["b"], np.float32).reshape(-1)
    if head["b"].shape[0] != head["w"].shape[1]:
        raise ValueError(f"head {path}: bias has {head['b'].shape[0]} outputs, weight has {head['w'].shape[1]}")
    for k in ("mu", "sigma"):
        head[k] = np.asarray(raw[k], np.float32).reshape(-1) if k in raw else None
    return head


class Options(hf_common.HFModelOptions):
    """Options of the ``dino_head`` family (``natix-miner experts options dino_head``)."""

    head: str = pydantic.Field(min_length=1)
    """The linear head file: .npz (``w``, ``b``, optional ``mu``/``sigma``/``pooling``) or a
    .pt / .pth / .safetensors ``nn.Linear`` state dict; a path or ``store:NAME``. Required."""
    pooling: typing.Optional[typing.Literal["cls", "pooled", "mean", "cls+mean"]] = None
    """Features the head reads: the CLS token, the pooler output, the mean of the patch tokens
    (registers skipped) or CLS and mean concatenated; None: the head file's, else ``cls``."""
    image_size: int = pydantic.Field(default=224, gt=0)
    """Square input side; a multiple of the patch size (14 for DINOv2, 16 for DINOv3)."""
    resize: typing.Literal["squash", "center"] = "squash"
    """``squash`` to a square, or ``center``: centre-crop the short side first."""
    mean: typing.Optional[hf_common.Rgb] = None
    """Normalisation mean; None: the checkpoint's image processor (else ImageNet's)."""
    std: typing.Optional[hf_common.Rgb] = None
    """Normalisation std; None: the checkpoint's image processor (else ImageNet's)."""
    positive_index: int = pydantic.Field(default=1, ge=0)
    """The roadwork output of a head with two or more outputs (softmax)."""


class DinoHead(Expert):
    family = "dino_head"
    Options = Options

    def load(self, device: str) -> None:
        import torch
        from transformers import AutoConfig, AutoModel

        from natix_miner.experts.dtypes import resolve_dtype

        o = self.opts
        ref = self.resolve_model()
        config = hf_common.from_pretrained(AutoConfig, ref, self.name)
        if config.model_type not in BACKBONES:
            raise ValueError(f"expert {self.name}: {ref} is a {config.model_type!r} model, not one of {BACKBONES}")
        self.dtype = resolve_dtype(self.spec.dtype, device, self.Options)
        self.model = hf_common.from_pretrained(AutoModel, ref, self.name, dtype=self.dtype).eval().to(device)
        head = load_head(self.resolve_model(o.head))
        self.pooling = str(o.pooling or head["pooling"] or "cls")
        if self.pooling not in POOLINGS:  # a head file's own pooling
            raise ValueError(f"expert {self.name}: pooling {self.pooling!r} not in {POOLINGS}")
        hidden = int(config.hidden_size)
        want = 2 * hidden if self.pooling == "cls+mean" else hidden
        if head["w"].shape[0] != want:
            raise ValueError(f"expert {self.name}: head expects {head['w'].shape[0]} features, "
                             f"{self.pooling} pooling of this backbone gives {want}")
        self.prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        patch = int(config.patch_size if not isinstance(config.patch_size, (list, tuple)) else config.patch_size[0])
        self.size = o.image_size
        if self.size % patch:
            raise ValueError(f"expert {self.name}: image_size {self.size} is not a multiple of the patch size {patch}")
        self.resize = o.resize
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        try:  # the checkpoint's own normalisation when it ships a processor config
            from transformers import AutoImageProcessor

            proc = hf_common.from_pretrained(AutoImageProcessor, ref, self.name)
            mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        except Exception:
            pass
        self.mean, self.std = tuple(o.mean or mean), tuple(o.std or std)
        t = {k: (torch.from_numpy(v).to(device) if v is not None else None) for k, v in head.items() if k != "pooling"}
        self.head = t
        self.positive_index = o.positive_index
        if t["w"].shape[1] > 1 and not 0 <= self.positive_index < t["w"].shape[1]:
            raise ValueError(f"expert {self.name}: positive_index {self.positive_index} out of range")
        self.device = device
        self._torch = torch
        log.info("%s: %s on %s (%s), %s pooling, head %s", self.name, type(self.model).__name__, device,
                 self.dtype, self.pooling, tuple(head["w"].shape))

    def warmup(self) -> None:
        self.predict_batch([np.zeros((self.size, self.size, 3), np.uint8)])

    def embed(self, images):
        """(N, F) float32 features on the device, pooled as configured."""
        from natix_miner.imaging.preprocess import to_batch

        x = to_batch(images, self.size, self.mean, self.std, mode=self.resize, device=self.device, dtype=self.dtype)
        with self._torch.inference_mode():
            out = self.model(pixel_values=x)
        tokens = out.last_hidden_state
        if self.pooling == "pooled":
            f = out.pooler_output
        elif self.pooling == "cls":
            f = tokens[:, 0]
        elif self.pooling == "mean":
            f = tokens[:, self.prefix:].mean(dim=1)
        else:
            f = self._torch.cat([tokens[:, 0], tokens[:, self.prefix:].mean(dim=1)], dim=1)
        return f.float()

    def predict_batch(self, images) -> typing.List[Evidence]:
        if not images:
            return []
        h = self.head
        with self._torch.inference_mode():
            f = self.embed(images)
            if h["mu"] is not None:
                f = (f - h["mu"]) / h["sigma"]
            z = (f @ h["w"] + h["b"]).double().cpu().numpy()
        out = []
        for row in z:
            if row.shape[0] == 1:
                logit = float(row[0])
                p = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit))))
            else:
                e = np.exp(row - row.max())
                p = float(e[self.positive_index] / e.sum())
                logit = math.log(max(p, 1e-12)) - math.log(max(1.0 - p, 1e-12))
            out.append(Evidence(p, detail={"logit": logit}))
        return out

    def memory_bytes(self) -> int:
        return hf_common.module_bytes(self.model)
