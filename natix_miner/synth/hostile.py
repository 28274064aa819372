"""A catalogue of hostile and unusual images, built in memory, for tests, the soak run and docs.

Each :class:`Case` is what a validator (or an attacker with a validator permit) could put in
``synapse.image``: base64 text, plus what the miner must do with it: ``answer`` (decode and run
the models) or ``reject`` (a clean :class:`~natix_miner.imaging.decode.ImageError` with the given
reason, so the engine answers the fallback probability). Nothing here touches the network or disk.

Usage::

    from natix_miner.synth.hostile import cases, png_bomb
    for case in cases():
        print(case.name, case.expect, case.reason, len(case.text))
"""

import base64
import dataclasses
import functools
import io
import struct
import typing
import zlib

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    text: str  # what goes into synapse.image
    expect: str  # "answer" | "reject"
    reason: typing.Optional[str] = None  # ImageError.reason when rejected
    note: str = ""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def scene(w: int = 224, h: int = 224, seed: int = 0) -> np.ndarray:
    """A smooth RGB test picture (gradients plus noise) as uint8 (h, w, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255.0 / max(w - 1, 1), y * 255.0 / max(h - 1, 1), (x + y) % 256], axis=2)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_bomb(width: int = 30000, height: int = 30000, lie: bool = True) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels.

    ``lie=True``: a few hundred bytes, the IDAT holds one row (the classic header bomb).
    ``lie=False``: a real 1-bit image of that size, every row present (about 110 KB for 30000^2),
    which really inflates to width*height pixels if anything decodes it.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    rows = 1 if lie else height
    comp = zlib.compressobj(9)
    block_rows = 1024
    if rows <= block_rows:
        idat = comp.compress(row * rows) + comp.flush()
    else:  # after a full flush identical blocks compress identically: compress one, repeat it
        block = row * block_rows
        first = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
        unit = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
        n, rest = divmod(rows, block_rows)
        idat = first + unit * (n - 1) + comp.compress(row * rest) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_chunk_bomb(kind: bytes, inflated: int = 16 * 1024 * 1024) -> bytes:
    """A small valid PNG carrying a compressed ``iCCP`` / ``zTXt`` / ``iTXt`` chunk that inflates to
    ``inflated`` bytes (metadata bombs; PIL caps them at 1 MB and refuses the file)."""
    png = encode(Image.fromarray(scene(32, 32)), "PNG")
    blob = zlib.compress(b"\0" * inflated, 9)
    payload = {b"iCCP": b"icc\0\0", b"zTXt": b"Comment\0\0", b"iTXt": b"Comment\0\1\0\0\0"}[kind] + blob
    i = png.find(b"IDAT") - 4
    return png[:i] + _chunk(kind, payload) + png[i:]


def jpeg_header_bomb(width: int = 65000, height: int = 65000) -> bytes:
    """A tiny JPEG whose SOF0 marker claims ``width`` x ``height``."""
    data = bytearray(encode(Image.fromarray(scene(16, 16)), "JPEG"))
    i = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, i + 5, height, width)
    return bytes(data)


def with_exif_orientation(orientation: int, raw: typing.Optional[bytes] = None) -> bytes:
    """A 32x16 JPEG carrying EXIF orientation ``orientation`` (valid 1..8, anything else hostile),
    or the raw EXIF block ``raw`` as given."""
    im = Image.fromarray(scene(32, 16))
    if raw is not None:
        return encode(im, "JPEG", exif=raw)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", exif=exif.tobytes())


def animated(fmt: str, frames: int = 5) -> bytes:
    ims = [Image.fromarray(scene(64, 64, seed=i)) for i in range(frames)]
    if fmt == "GIF":
        ims = [im.convert("P") for im in ims]
    return encode(ims[0], fmt, save_all=True, append_images=ims[1:], duration=40, loop=0)


@functools.lru_cache(maxsize=1)
def cases() -> typing.Tuple[Case, ...]:
    """Every hostile / unusual input the miner is tested against (see docs/reliability.md)."""
    rgb = Image.fromarray(scene())
    jpeg = encode(rgb, "JPEG", quality=75)
    grey16 = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257))
    floats = np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0
    floats[0, :10] = np.nan
    floats[1, :10] = np.inf
    out = [
        Case("valid_jpeg_224", b64(jpeg), "answer", note="what validators send"),
        Case("data_url_prefix", "data:image/jpeg;base64," + b64(jpeg), "answer"),
        Case("base64_with_newlines", "\n".join(b64(jpeg)[i:i + 76] for i in range(0, len(b64(jpeg)), 76)), "answer"),
        Case("base64_missing_padding", b64(jpeg).rstrip("="), "answer"),
        Case("empty_string", "", "reject", "empty"),
        Case("whitespace_only", "  \n\t ", "reject", "empty"),
        Case("invalid_base64_chars", "!!!not*base64???", "reject", "bad_base64"),
        Case("base64_impossible_length", "QUJDR", "reject", "bad_base64"),
        Case("urlsafe_base64", b64(jpeg).replace("+", "-").replace("/", "_") + "-_", "reject", "bad_base64"),
        Case("non_ascii_text", "\u00e9\u00e8" * 10, "reject", "bad_base64"),
        Case("base64_of_text", b64(b"hello, this is not an image"), "reject", "unsupported_format"),
        Case("base64_of_zeros", b64(b"\x00" * 4096), "reject", "unsupported_format"),
        Case("base64_of_random", b64(np.random.default_rng(1).bytes(2048)), "reject", "unsupported_format"),
        Case("truncated_jpeg_half", b64(jpeg[: len(jpeg) // 2]), "reject", "corrupt"),
        Case("truncated_jpeg_header_only", b64(jpeg[:200]), "reject", "not_an_image"),
        Case("jpeg_magic_only", b64(b"\xff\xd8\xff"), "reject", "unsupported_format"),
        Case("svg_markup", b64(b"<svg xmlns='http://www.w3.org/2000/svg' width='9' height='9'/>"), "reject",
             "unsupported_format"),
        Case("postscript", b64(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"), "reject",
             "unsupported_format", note="EPS would call Ghostscript"),
        Case("ico_not_allowed", b64(encode(rgb.resize((32, 32)), "ICO")), "reject", "unsupported_format"),
        Case("png_rgb", b64(encode(rgb, "PNG")), "answer"),
        Case("gif_palette", b64(encode(rgb.convert("P"), "GIF")), "answer"),
        Case("webp", b64(encode(rgb, "WEBP")), "answer"),
        Case("bmp", b64(encode(rgb, "BMP")), "answer"),
        Case("tiff", b64(encode(rgb, "TIFF")), "answer"),
        Case("tiff_cmyk", b64(encode(rgb.convert("CMYK"), "TIFF")), "answer"),
        Case("jpeg_cmyk", b64(encode(rgb.convert("CMYK"), "JPEG")), "answer"),
        Case("tiff_lab", b64(encode(rgb.convert("LAB"), "TIFF")), "answer"),
        Case("png_16bit_grey", b64(encode(grey16, "PNG")), "answer"),
        Case("tiff_float_nan_inf", b64(encode(Image.fromarray(floats, "F"), "TIFF")), "answer"),
        Case("png_palette", b64(encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG")), "answer"),
        Case("png_palette_transparency", b64(encode(rgb.convert("P"), "PNG", transparency=0)), "answer"),
        Case("png_rgba", b64(encode(rgb.convert("RGBA"), "PNG")), "answer"),
        Case("png_la", b64(encode(rgb.convert("LA"), "PNG")), "answer"),
        Case("png_1bit", b64(encode(rgb.convert("1"), "PNG")), "answer"),
        Case("jpeg_greyscale", b64(encode(rgb.convert("L"), "JPEG")), "answer"),
        Case("gif_animated", b64(animated("GIF")), "answer"),
        Case("webp_animated", b64(animated("WEBP")), "answer"),
        Case("png_animated", b64(animated("PNG")), "answer"),
        Case("jpeg_1x1", b64(encode(Image.new("RGB", (1, 1), (200, 10, 10)), "JPEG")), "answer"),
        Case("png_1x1", b64(encode(Image.new("RGB", (1, 1)), "PNG")), "answer"),
        Case("jpeg_1x4000_strip", b64(encode(Image.new("RGB", (1, 4000), (9, 9, 9)), "JPEG")), "answer"),
        Case("jpeg_1024_raw_validator", b64(encode(Image.fromarray(scene(1024, 768)), "JPEG")), "answer",
             note="validator fallback when augmentation fails"),
        Case("png_bomb_header_30000", b64(png_bomb(30000, 30000, lie=True)), "reject", "too_many_pixels",
             note="a few hundred bytes claiming 900 Mpx"),
        Case("png_bomb_real_30000", b64(png_bomb(30000, 30000, lie=False)), "reject", "too_many_pixels",
             note="~110 KB that really inflates to 900 Mpx"),
        Case("png_bomb_below_pil_limit", b64(png_bomb(12000, 12000, lie=True)), "reject", "too_many_pixels",
             note="144 Mpx: under PIL's own guard, over ours"),
        Case("jpeg_header_bomb_65000", b64(jpeg_header_bomb()), "reject", "too_many_pixels"),
        Case("png_iccp_bomb", b64(png_chunk_bomb(b"iCCP")), "reject", "not_an_image",
             note="ICC profile inflating to 16 MB"),
        Case("png_ztxt_bomb", b64(png_chunk_bomb(b"zTXt")), "reject", "not_an_image",
             note="text chunk inflating to 16 MB"),
        Case("exif_orientation_6", b64(with_exif_orientation(6)), "answer"),
        Case("exif_orientation_invalid_9", b64(with_exif_orientation(9)), "answer"),
        Case("exif_orientation_65535", b64(with_exif_orientation(65535)), "answer"),
        Case("exif_truncated_ifd", b64(with_exif_orientation(0, raw=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff"
                                                               + b"\x00" * 20)), "answer"),
        Case("exif_garbage", b64(with_exif_orientation(0, raw=b"garbage" * 10)), "answer"),
        Case("exif_huge_offset", b64(with_exif_orientation(0, raw=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")), "answer"),
    ]
    return tuple(out)
