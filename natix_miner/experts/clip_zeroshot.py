"""Zero-shot image-text scoring with CLIP / SigLIP / SigLIP 2 (transformers): the anomaly branch.

Two prompt sets - roadwork and a clear road - are embedded once at load (prompt ensembling: the
normalised mean of each set's text embeddings). Per image, with cosine similarities scaled by the
model's learned ``logit_scale`` (plus ``logit_bias`` for SigLIP):

* ``mode: softmax`` (CLIP default): logit = (z_roadwork - z_clear) / temperature + bias;
* ``mode: sigmoid`` (SigLIP default): logit = z_roadwork / temperature + bias (SigLIP's own
  image-text match probability for the roadwork set);

and P(roadwork) = sigmoid(logit). ``aggregate: max`` scores each set by its best prompt instead of
the mean embedding. The "anomaly" part: ``detail.max_similarity`` is the best cosine similarity to
any prompt, and with ``min_similarity`` set, an image that matches neither set (not a road scene at
all) abstains instead of voting.

Profile entry::

    - name: siglip
      family: clip_zeroshot
      model: google/siglip-base-patch16-224   # local dir, store name or hub id (CLIP works the same)
      dtype: float16
      options:
        mode: sigmoid                          # softmax | sigmoid (default by model type)
        temperature: 1.0
        bias: 0.0
        aggregate: mean                        # mean | max
        min_similarity: null                   # e.g. 0.05: abstain below this
        preprocess: auto                       # auto: vectorised when it matches the processor; processor
        positive_prompts: ["a dashcam photo of road work", ...]
        negative_prompts: ["a dashcam photo of a clear road", ...]

Evidence detail: ``logit``, ``z_roadwork``, ``z_clear``, ``max_similarity``, ``top_prompt``.
"""

import logging
import math
import typing

import numpy as np
import pydantic

from natix_miner.experts import hf_common
from natix_miner.experts.base import Evidence, Expert

log = logging.getLogger("natix_miner.experts.clip_zeroshot")

POSITIVE_PROMPTS = [
    "a dashcam photo of road work",
    "a photo of a road construction site",
    "a road with traffic cones and construction barriers",
    "a street with a lane closed for roadworks",
    "construction workers in safety vests working on the road",
    "a road work ahead sign",
    "an excavator digging on a street",
]
NEGATIVE_PROMPTS = [
    "a dashcam photo of a clear road",
    "a photo of an empty street",
    "a highway with normal traffic",
    "a city street with parked cars",
    "a country road with no construction",
    "a residential street on a sunny day",
]
SIGLIP_TYPES = ("siglip", "siglip2")


def _features(out):
    """transformers 5 returns a ModelOutput whose pooler_output is the projected embedding."""
    return out if hasattr(out, "norm") else out.pooler_output


Prompt = typing.Annotated[str, pydantic.Field(pattern=r"\S")]


class Options(hf_common.HFOptions):
    """Options of the ``clip_zeroshot`` family (``natix-miner experts options clip_zeroshot``)."""

    mode: typing.Optional[typing.Literal["softmax", "sigmoid"]] = None
    """``softmax``: logit = (z_roadwork - z_clear) / temperature + bias; ``sigmoid``: z_roadwork /
    temperature + bias. None: sigmoid for SigLIP / SigLIP 2, softmax otherwise (CLIP)."""
    temperature: float = pydantic.Field(default=1.0, gt=0)
    """Divides the scaled similarity logit."""
    bias: float = 0.0
    """Added to the logit after the temperature."""
    aggregate: typing.Literal["mean", "max"] = "mean"
    """Score each prompt set by its normalised mean embedding, or by its best prompt."""
    min_similarity: typing.Optional[float] = None
    """Abstain when the best cosine similarity to any prompt is below this (not a road scene); None: never."""
    positive_prompts: typing.Optional[typing.List[Prompt]] = None
    """Roadwork prompts; None or empty: the built-in set (``POSITIVE_PROMPTS``)."""
    negative_prompts: typing.Optional[typing.List[Prompt]] = None
    """Clear-road prompts; None or empty: the built-in set (``NEGATIVE_PROMPTS``)."""


class ClipZeroShot(Expert):
    family = "clip_zeroshot"
    Options = Options

    def load(self, device: str) -> None:
        import torch
        from transformers import AutoModel, AutoProcessor

        from natix_miner.experts.dtypes import resolve_dtype

        o = self.opts
        ref = self.resolve_model()
        self.dtype = resolve_dtype(self.spec.dtype, device, self.Options)
        self.processor = hf_common.from_pretrained(AutoProcessor, ref, self.name)
        self.model = hf_common.from_pretrained(AutoModel, ref, self.name, dtype=self.dtype).eval().to(device)
        self.model_type = self.model.config.model_type
        if not hasattr(self.model, "get_text_features") or not hasattr(self.model, "get_image_features"):
            raise ValueError(f"expert {self.name}: {ref} ({self.model_type}) is not an image-text model")
        self.siglip = self.model_type in SIGLIP_TYPES
        self.mode = o.mode or ("sigmoid" if self.siglip else "softmax")
        self.aggregate = o.aggregate
        self.temperature = o.temperature
        self.bias = o.bias
        self.min_similarity = o.min_similarity
        self.positive = list(o.positive_prompts or POSITIVE_PROMPTS)
        self.negative = list(o.negative_prompts or NEGATIVE_PROMPTS)
        self.device = device
        self._torch = torch
        self.fast = hf_common.fast_pixels_for(o.preprocess, self.processor)
        with torch.inference_mode():
            self.scale = float(self.model.logit_scale.float().exp().item())
            self.logit_bias = float(self.model.logit_bias.float().item()) if hasattr(self.model, "logit_bias") else 0.0
            text = self.embed_text(self.positive + self.negative)  # (P, D) unit vectors
        n = len(self.positive)
        self.prompt_emb = text
        classes = torch.stack([text[:n].mean(0), text[n:].mean(0)])
        self.class_emb = classes / classes.norm(dim=-1, keepdim=True)
        log.info("%s: %s on %s (%s), %d+%d prompts, %s mode", self.name, type(self.model).__name__, device,
                 self.dtype, n, len(self.negative), self.mode)

    def embed_text(self, prompts: typing.List[str]):
        if self.siglip:  # SigLIP was trained on max_length padding; other padding shifts its embeddings
            max_len = int(getattr(self.model.config.text_config, "max_position_embeddings", 64))
            enc = self.processor(text=prompts, padding="max_length", max_length=max_len, truncation=True,
                                 return_tensors="pt")
        else:
            enc = self.processor(text=prompts, padding=True, truncation=True, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "position_ids")}
        f = _features(self.model.get_text_features(**enc)).float()
        return f / f.norm(dim=-1, keepdim=True)

    def embed_images(self, images):
        arrays = [getattr(im, "rgb", im) for im in images]
        if self.fast:  # verified at load to equal the processor on 224 px images
            from natix_miner.imaging.preprocess import to_batch

            size, mean, std = self.fast
            inputs = {"pixel_values": to_batch(arrays, size, mean, std, device=self.device, dtype=self.dtype)}
        else:
            # through the processor (the documented call), not its image_processor: a processor may set
            # defaults of its own (SigLIP 2's max_num_patches) that differ from the bare image processor's
            inputs = self.processor(images=arrays, return_tensors="pt")
            inputs = {k: (v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device))
                      for k, v in inputs.items()}
        f = _features(self.model.get_image_features(**inputs)).float()
        return f / f.norm(dim=-1, keepdim=True)

    def warmup(self) -> None:
        self.predict_batch([np.zeros((224, 224, 3), np.uint8)])

    def predict_batch(self, images) -> typing.List[Evidence]:
        if not images:
            return []
        n = len(self.positive)
        with self._torch.inference_mode():
            img = self.embed_images(images)
            sims = (img @ self.prompt_emb.T).cpu().numpy().astype(np.float64)  # (N, P)
            cls = (img @ self.class_emb.T).cpu().numpy().astype(np.float64)   # (N, 2)
        out = []
        for s, c in zip(sims, cls):
            if self.aggregate == "max":
                pos, neg = s[:n].max(), s[n:].max()
            else:
                pos, neg = c[0], c[1]
            z_pos = self.scale * pos + self.logit_bias
            z_neg = self.scale * neg + self.logit_bias
            if self.mode == "softmax":
                logit = (z_pos - z_neg) / self.temperature + self.bias
            else:
                logit = z_pos / self.temperature + self.bias
            p = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit))))
            best = int(np.argmax(s))
            detail = {"logit": float(logit), "z_roadwork": float(z_pos), "z_clear": float(z_neg),
                      "max_similarity": float(s[best]), "top_prompt": (self.positive + self.negative)[best]}
            abstain = self.min_similarity is not None and float(s[best]) < float(self.min_similarity)
            out.append(Evidence(p, abstain=abstain, detail=detail))
        return out

    def memory_bytes(self) -> int:
        return hf_common.module_bytes(self.model)
