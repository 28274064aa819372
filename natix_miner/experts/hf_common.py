"""Shared plumbing for the transformers-based families: options, offline-safe loading, images.

Usage (inside a family's ``load``)::

    from natix_miner.experts import hf_common
    from natix_miner.experts.dtypes import resolve_dtype
    dtype = resolve_dtype(self.spec.dtype, device, self.Options)  # fp32 on CPU, fp16/bf16 on CUDA
    model = hf_common.from_pretrained(AutoModel, self.resolve_model(), self.name, dtype=dtype)
    pil = hf_common.pil_images(images)                             # DecodedImage / ndarray -> PIL RGB
    fast = hf_common.fast_pixels_for(self.opts.preprocess, processor)  # vectorised when it matches
"""

import logging
import typing

import numpy as np

from natix_miner.experts.base import ExpertOptions
from natix_miner.models_store import ModelUnavailable, is_offline


class HFModelOptions(ExpertOptions):
    """The dtype rule of the transformers classifiers (``hf_classifier``, ``dino_head``,
    ``clip_zeroshot``): CUDA runs float16 / bfloat16 as asked, ``auto`` = bfloat16 where the card
    supports it, else float16; CPU runs float32; fp8 / int8 are refused (they used to run float16
    silently)."""

    dtypes: typing.ClassVar[typing.Tuple[str, ...]] = ("float32", "float16", "bfloat16", "auto")
    auto_dtype: typing.ClassVar[str] = "half"
    cpu_dtype: typing.ClassVar[str] = "float32"
    packages: typing.ClassVar[typing.Tuple[str, ...]] = ("transformers",)


Rgb = typing.Tuple[float, float, float]


class HFOptions(HFModelOptions):
    """:class:`HFModelOptions` plus the ``preprocess`` choice (``hf_classifier``, ``clip_zeroshot``)."""

    preprocess: typing.Literal["auto", "processor"] = "auto"
    """``auto``: one vectorised resize + normalise on the expert's device when it reproduces the
    checkpoint's image processor on 224 px probes (checked at load); ``processor``: always the processor."""


def from_pretrained(cls, ref: typing.Optional[str], expert: str, **kwargs):
    """``cls.from_pretrained(ref)`` with ``local_files_only`` when offline and a clear error."""
    if not ref:
        raise ModelUnavailable(f"expert {expert}: `model:` is required (a local directory, store name or hub id)")
    if is_offline():
        kwargs.setdefault("local_files_only", True)
    try:
        return cls.from_pretrained(ref, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"expert {expert}: cannot load {cls.__name__} from {ref}: {exc}") from exc


def pil_images(images: typing.Sequence) -> list:
    """DecodedImage, HWC uint8 arrays or PIL images -> a list of RGB PIL images."""
    from PIL import Image

    out = []
    for im in images:
        if isinstance(im, Image.Image):
            out.append(im.convert("RGB"))
        else:
            out.append(Image.fromarray(getattr(im, "rgb", im)))
    return out


def module_bytes(*modules) -> int:
    total = 0
    for m in modules:
        if m is None:
            continue
        for t in list(m.parameters()) + list(m.buffers()):
            total += t.numel() * t.element_size()
    return total


def fast_pixels_for(mode: str, processor):
    """The ``preprocess`` option (:class:`HFOptions`): ``auto`` uses :func:`fast_pixels` when it
    reproduces the processor, ``processor`` forces the processor."""
    return fast_pixels(processor) if mode == "auto" else None


def fast_pixels(processor, probe_size: int = 224) -> typing.Optional[typing.Tuple[int, tuple, tuple]]:
    """``(size, mean, std)`` for :func:`natix_miner.imaging.preprocess.to_batch` when it reproduces
    ``processor(images=...)["pixel_values"]`` on validator-sized (224 px square) images, else None.

    transformers' image processors work image by image on the CPU (tens of ms per image on a busy
    host); ``to_batch`` is one vectorised pass and can normalise on the GPU. The equivalence is not
    assumed from the config: it is checked on random probe images at load time.
    """
    from natix_miner.imaging.preprocess import to_batch

    ip = getattr(processor, "image_processor", processor)
    try:
        if getattr(ip, "do_rescale", True) and abs(float(ip.rescale_factor) - 1 / 255) > 1e-9:
            return None
        normalize = getattr(ip, "do_normalize", True)
        mean = tuple(float(v) for v in ip.image_mean) if normalize else (0.0, 0.0, 0.0)
        std = tuple(float(v) for v in ip.image_std) if normalize else (1.0, 1.0, 1.0)
        size = dict(ip.crop_size) if getattr(ip, "do_center_crop", False) else dict(ip.size)
        side = int(size.get("height") or size.get("shortest_edge"))
        if int(size.get("width", side)) != side:
            return None
        rng = np.random.default_rng(0)
        probe = [rng.integers(0, 256, (probe_size, probe_size, 3), dtype=np.uint8) for _ in range(2)]
        want = processor(images=probe, return_tensors="pt")["pixel_values"].float()
        got = to_batch(probe, side, mean, std)
    except Exception as exc:  # an unusual processor: keep using it as it is
        logging.getLogger("natix_miner.experts").debug("no fast preprocessing: %s", exc)
        return None
    if tuple(want.shape) != tuple(got.shape) or float((want - got).abs().max()) > 1e-3:
        return None
    return side, mean, std
