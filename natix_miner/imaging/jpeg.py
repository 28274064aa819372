"""Fast JPEG handling for the throughput path: batched decoding for the card.

``decode_batch`` decodes many JPEGs at once with nvJPEG through
``torchvision.io.decode_jpeg(list, device="cuda")`` and falls back to the CPU, image by image,
for anything nvJPEG refuses (progressive or CMYK files, corrupt data), so one bad image never
fails a batch. Files with more than one scan (progressive) always take the safe decoder
(``natix_miner.imaging.decode``), which bounds their work (``too_many_scans``) before decoding.

Usage::

    from natix_miner.imaging.jpeg import decode_batch, decode_batch_cpu
    imgs, bad = decode_batch([b1, b2], "cuda:0")    # list of uint8 (3, H, W) tensors on the GPU
"""

import typing


def _cpu_decode(data: bytes):
    import numpy as np
    import torch

    from natix_miner.imaging.decode import decode_bytes

    rgb = decode_bytes(data).rgb
    return torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)


def _multi_scan(data: bytes) -> bool:
    from natix_miner.imaging.decode import jpeg_scans

    return jpeg_scans(data) > 1


def decode_batch(datas: typing.Sequence[bytes], device: str = "cuda") -> typing.Tuple[list, typing.List[int]]:
    """Decode JPEGs to uint8 (3, H, W) tensors on ``device``; returns (tensors, indices that failed).

    A failed index holds ``None``. On CPU devices this is PIL through the safe decoder.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list = [None] * len(datas)
    bad: typing.List[int] = []
    if not str(device).startswith("cuda"):
        for i, d in enumerate(datas):
            try:
                out[i] = _cpu_decode(d)
            except Exception:
                bad.append(i)
        return out, bad
    multi = [i for i, d in enumerate(datas) if _multi_scan(d)]
    if multi:  # progressive: the safe decoder, which bounds the work, then the device
        rest = [i for i in range(len(datas)) if i not in set(multi)]
        for i in multi:
            try:
                out[i] = _cpu_decode(datas[i]).to(device)
            except Exception:
                bad.append(i)
        if rest:
            sub, sub_bad = decode_batch([datas[i] for i in rest], device)
            for j, i in enumerate(rest):
                out[i] = sub[j]
            bad.extend(rest[j] for j in sub_bad)
        return out, sorted(bad)
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        dec = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
        for i, t in enumerate(dec):
            out[i] = t
        return out, bad
    except RuntimeError:
        pass  # one bad apple: decode one by one so the rest still use the GPU
    for i, t in enumerate(tensors):
        try:
            out[i] = decode_jpeg(t, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            try:
                out[i] = _cpu_decode(datas[i]).to(device)
            except Exception:
                bad.append(i)
    return out, bad


_POOLS: dict = {}


def decode_batch_cpu(datas: typing.Sequence[bytes], size: int, threads: int = 8, pin: bool = True):
    """Decode JPEGs on CPU threads (libjpeg-turbo, GIL released) into one pinned uint8
    (N, 3, size, size) tensor; returns (tensor, indices that failed). Images of another size are
    resized on the CPU. Keeps the GPU's SMs for the model: nvJPEG decoding competes with it."""
    import concurrent.futures

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    n = len(datas)
    out = torch.empty((n, 3, size, size), dtype=torch.uint8, pin_memory=pin and torch.cuda.is_available())
    bad: typing.List[int] = []

    def one(i: int) -> None:
        try:
            if _multi_scan(datas[i]):
                raise RuntimeError("progressive: the safe decoder bounds its work")
            t = decode_jpeg(torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            try:
                t = _cpu_decode(datas[i])
            except Exception:
                bad.append(i)
                out[i].zero_()
                return
        out[i].copy_(resize_uint8(t, size))

    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="jpeg")
    list(pool.map(one, range(n)))
    return out, sorted(bad)


def resize_uint8(t, size: int):
    """uint8 (3, H, W) -> (3, size, size), bilinear with antialiasing; unchanged when already that size."""
    import torch
    import torch.nn.functional as F

    if tuple(t.shape[-2:]) == (size, size):
        return t
    x = F.interpolate(t[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


def normalise_uint8(x, mean, std, dtype, channels_last: bool = True):
    """uint8 (N, 3, H, W) on the device -> normalised ``dtype`` batch."""
    import torch

    dev = x.device
    m = torch.tensor(mean, device=dev, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=dev, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    x = ((x.float() - m) / s).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def to_model_batch(images: typing.Sequence, size: int, mean, std, dtype, channels_last: bool = True):
    """uint8 (3, H, W) tensors on one device -> normalised (N, 3, size, size) in ``dtype``.

    Same-size images (the validator's 224x224) are stacked with no resize at all.
    """
    import torch

    x = torch.stack([resize_uint8(t, size) for t in images])
    return normalise_uint8(x, mean, std, dtype, channels_last)
