"""JPEG decoding on the GPU's hardware JPEG engines (the NVJPG units of A100/H100/H200) via nvImageCodec.

nvJPEG's CUDA decoder (what ``torchvision.io.decode_jpeg(..., device="cuda")`` uses) runs on the
same SMs as the model, so decoding and the forward pass take turns. The hardware engines are
separate silicon: a batch decoded there overlaps the previous batch's forward almost for free.

Needs the optional wheel ``nvidia-nvimgcodec-cu13`` (or ``-cu12``, matching the CUDA of torch) and
``nvidia-nvjpeg``; ``pip install -e .[gpu]`` installs them. Without them, or on a card without
hardware JPEG engines, :func:`available` is False and callers keep nvJPEG's CUDA decoder.

Usage::

    from natix_miner.imaging import hwjpeg
    if hwjpeg.available("cuda:0"):
        x, bad = hwjpeg.decode_batch(list_of_jpeg_bytes, "cuda:0", size=224)
        # x: uint8 (N, 3, 224, 224) on cuda:0, channels_last strides; bad: indices decoded by nobody

``hw_share`` (0-1] sends that share of each batch to the hardware engines and the rest to nvJPEG's
CUDA decoder inside nvImageCodec (a hybrid split when the engines alone are the bottleneck).
Images the hardware refuses (CMYK, odd subsampling) fall through to the CUDA decoder, then to the
CPU; progressive files (more than one scan) go straight to the safe CPU decoder, which refuses scan
bombs before decoding.
"""

import threading
import typing

_LOCK = threading.Lock()
_DECODERS: typing.Dict[typing.Tuple[int, float], typing.Any] = {}
_PROBED: typing.Dict[int, bool] = {}


def _module():
    """``nvidia.nvimgcodec``, also when its ``nvidia/`` folder is not the first on ``sys.path`` (a
    ``pip --target`` or user-site install beside the CUDA wheels of torch)."""
    try:
        from nvidia import nvimgcodec  # optional GPU dependency
    except ImportError:
        import os
        import sys

        import nvidia

        extra = [os.path.join(p, "nvidia") for p in sys.path
                 if os.path.isdir(os.path.join(p, "nvidia", "nvimgcodec"))]
        if not extra:
            raise
        nvidia.__path__ = list(nvidia.__path__) + [e for e in extra if e not in nvidia.__path__]
        from nvidia import nvimgcodec
    return nvimgcodec


def _device_index(device: str) -> int:
    import torch

    d = torch.device(device)
    if d.type != "cuda":
        raise ValueError(f"hardware JPEG decoding needs a CUDA device, got {device!r}")
    return d.index if d.index is not None else torch.cuda.current_device()


def decoder(device: str, hw_share: float = 1.0):
    """The process's nvImageCodec decoder for ``device`` (created once, then reused)."""
    idx = _device_index(device)
    key = (idx, round(float(hw_share), 3))
    with _LOCK:
        dec = _DECODERS.get(key)
        if dec is None:
            nv = _module()
            backends = [nv.Backend(nv.BackendKind.HW_GPU_ONLY, load_hint=float(hw_share)),
                        nv.Backend(nv.BackendKind.GPU_ONLY)]
            dec = _DECODERS[key] = nv.Decoder(device_id=idx, backends=backends)
        return dec


def available(device: str) -> bool:
    """Is nvImageCodec installed and does this card's hardware engine decode a JPEG correctly?"""
    if not str(device).startswith("cuda"):
        return False
    try:
        idx = _device_index(device)
    except Exception:
        return False
    if idx in _PROBED:
        return _PROBED[idx]
    ok = False
    try:
        import io

        import numpy as np
        import torch
        from PIL import Image

        nv = _module()
        rgb = np.zeros((64, 64, 3), np.uint8)
        rgb[:, :32] = (200, 40, 30)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=90)
        only_hw = nv.Decoder(device_id=idx, backends=[nv.Backend(nv.BackendKind.HW_GPU_ONLY)])
        out = only_hw.decode([nv.CodeStream(buf.getvalue())], params=_params(nv))
        if out and out[0] is not None:
            t = torch.as_tensor(out[0], device=f"cuda:{idx}").cpu()
            ok = tuple(t.shape) == (64, 64, 3) and abs(int(t[10, 10, 0]) - 200) < 12
    except Exception:
        ok = False
    _PROBED[idx] = ok
    return ok


def _params(nv):
    return nv.DecodeParams(color_spec=nv.ColorSpec.SRGB, apply_exif_orientation=False)


def decode_batch(datas: typing.Sequence[bytes], device: str, size: int, hw_share: float = 1.0,
                 stream=None) -> typing.Tuple[typing.Any, typing.List[int]]:
    """Decode JPEGs into one uint8 (N, 3, size, size) tensor on ``device`` (channels_last strides).

    Work is queued on ``stream`` (default: the current stream of ``device``). Images of another
    size are resized on the card (bilinear, antialiased); an image nobody can decode is zeros and
    its index is returned in the second value.
    """
    import torch

    from natix_miner.imaging.jpeg import _cpu_decode, _multi_scan

    nv = _module()
    dev = torch.device(device)
    stream = stream or torch.cuda.current_stream(dev)
    dec = decoder(device, hw_share)
    streams, bad = [], []
    for i, d in enumerate(datas):
        if _multi_scan(d):  # progressive: the safe CPU decoder bounds its work (too_many_scans)
            streams.append(None)
            continue
        try:
            streams.append(nv.CodeStream(bytes(d)))
        except Exception:
            streams.append(None)
    idx = [i for i, s in enumerate(streams) if s is not None]
    images = dec.decode([streams[i] for i in idx], params=_params(nv), cuda_stream=stream.cuda_stream) if idx else []
    tensors: list = [None] * len(datas)
    with torch.cuda.stream(stream):
        for i, img in zip(idx, images):
            if img is None:
                continue
            t = torch.as_tensor(img, device=dev)
            if t.dim() == 3 and t.shape[-1] == 3:
                tensors[i] = t
        for i, t in enumerate(tensors):
            if t is None:
                try:
                    t = _cpu_decode(datas[i]).permute(1, 2, 0).to(dev)
                except Exception:
                    t = torch.zeros((size, size, 3), dtype=torch.uint8, device=dev)
                    bad.append(i)
            tensors[i] = _resize_hwc(t, size)
        out = torch.stack(tensors) if tensors else torch.empty((0, size, size, 3), dtype=torch.uint8, device=dev)
    return out.permute(0, 3, 1, 2), bad


def _resize_hwc(t, size: int):
    from natix_miner.imaging.jpeg import resize_uint8

    return resize_uint8(t.permute(2, 0, 1), size).permute(1, 2, 0)
