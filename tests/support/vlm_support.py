"""Shared by the VLM tests: tiny Qwen-VL checkpoints built once per test process, test images, specs.

Usage::

    from tests.support.vlm_support import tiny_vlm, jpeg_image, png_image, spec
    path = tiny_vlm("qwen2_vl")
"""

import atexit
import base64
import io
import shutil
import tempfile

import numpy as np
from PIL import Image

from natix_miner.config import ExpertSpec
from natix_miner.imaging.decode import decode_bytes, encode_jpeg_base64

_BUILT = {}
_ROOT = None


def tiny_vlm(arch: str = "qwen2_vl") -> str:
    """A tiny checkpoint directory of ``arch`` (built on first use, removed at exit)."""
    global _ROOT
    if arch not in _BUILT:
        from natix_miner.standins.tiny_vlm import build_tiny_vlm

        if _ROOT is None:
            _ROOT = tempfile.mkdtemp(prefix="natix-tiny-vlm-")
            atexit.register(shutil.rmtree, _ROOT, True)
        _BUILT[arch] = build_tiny_vlm(f"{_ROOT}/{arch}", arch=arch)
    return _BUILT[arch]


def jpeg_image(seed: int = 0, h: int = 224, w: int = 224):
    """A 224x224 JPEG as validators send it, decoded."""
    rgb = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8")
    return decode_bytes(base64.b64decode(encode_jpeg_base64(rgb)))


def png_image(seed: int = 1, h: int = 200, w: int = 300):
    rgb = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return decode_bytes(buf.getvalue())


def spec(family: str, model: str, name: str = "vlm", **options) -> ExpertSpec:
    return ExpertSpec(name=name, family=family, model=model, options=options)
