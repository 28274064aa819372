"""Shared plumbing for the transformers-based families: dtype choice, offline-safe loading, images.

Usage (inside a family's ``load``)::

    from natix_miner.experts import hf_common
    dtype = hf_common.torch_dtype(self.spec.dtype, device)        # fp32 on CPU, fp16/bf16 on CUDA
    model = hf_common.from_pretrained(AutoModel, self.resolve_model(), self.name, dtype=dtype)
    pil = hf_common.pil_images(images)                             # DecodedImage / ndarray -> PIL RGB
"""

import typing

from natix_miner.models_store import ModelUnavailable, is_offline


def torch_dtype(name: str, device: str):
    """``float16``/``bfloat16`` on CUDA; float32 on CPU (half precision is slow or unsupported there).

    ``auto`` picks bfloat16 where the card supports it, else float16. ``fp8``/``int8`` are the
    business of families that quantise; here they fall back to float16 on CUDA.
    """
    import torch

    if not str(device).startswith("cuda"):
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if name in ("float16", "fp8", "int8"):
        return torch.float16
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


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
