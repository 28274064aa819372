"""Turn decoded images into model-ready batches (CPU path; GPU experts may decode on the card).

Usage::

    from natix_miner.imaging.preprocess import to_batch
    x = to_batch(images, size=224, mean=(0.5,)*3, std=(0.5,)*3)   # torch float32 (N, 3, 224, 224)
"""

import typing

import numpy as np
from PIL import Image


def resize_rgb(rgb: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """``squash``: resize to size x size (validator images are already square 224);
    ``center``: centre-crop the short side first (the validator's level 0)."""
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    im = Image.fromarray(rgb)
    if mode == "center" and h != w:
        s = min(h, w)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
    return np.asarray(im.resize((size, size), Image.BILINEAR))


def to_batch(images: typing.Sequence, size: int = 224, mean=(0.485, 0.456, 0.406),
             std=(0.229, 0.224, 0.225), mode: str = "squash", device: str = "cpu", dtype=None,
             channels_last: bool = False):
    """Stack ``DecodedImage``s (or HWC uint8 arrays) into a normalised NCHW tensor."""
    import torch

    from natix_miner.imaging.jpeg import normalise_uint8

    arrs = [resize_rgb(getattr(im, "rgb", im), size, mode) for im in images]
    x = torch.from_numpy(np.stack(arrs)).to(device, non_blocking=True).permute(0, 3, 1, 2)
    return normalise_uint8(x, mean, std, dtype or torch.float32, channels_last)
