"""Safe image decoding: any format in, bounded memory, RGB out, or a clean :class:`ImageError`.

Validators send base64 JPEG, normally 224x224, but anything can arrive. The rules:

* base64 is checked strictly (``validate=True``) after stripping whitespace and a data-URL prefix;
* the encoded size is capped before decoding (``max_bytes``);
* the pixel count is read from the header and capped before any pixel is decoded (``max_pixels``),
  which stops decompression bombs; PIL's own bomb guard is kept as a second line;
* EXIF orientation is applied, palettes / alpha / CMYK / 16-bit / greyscale become 8-bit RGB,
  animated images use their first frame.

Usage::

    from natix_miner.imaging.decode import decode_base64, DecodedImage
    img = decode_base64(synapse.image)      # DecodedImage
    img.rgb.shape                            # (224, 224, 3) uint8
    img.sha256                               # cache key of the encoded bytes
"""

import base64
import binascii
import dataclasses
import hashlib
import io
import re
import typing
import warnings

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096
_DATA_URL = re.compile(r"^data:[^;,]*;base64,", re.IGNORECASE)
_WS = re.compile(r"\s+")


class ImageError(ValueError):
    """The input is not a usable image; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass
class DecodedImage:
    """Encoded bytes plus lazily decoded RGB pixels (H, W, 3) uint8."""

    data: bytes
    width: int
    height: int
    format: str
    _rgb: typing.Optional[np.ndarray] = dataclasses.field(default=None, repr=False)
    _sha: typing.Optional[str] = dataclasses.field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        if self._sha is None:
            self._sha = hashlib.sha256(self.data).hexdigest()
        return self._sha

    @property
    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = _decode_pixels(self.data)
        return self._rgb

    @property
    def is_jpeg(self) -> bool:
        return self.format == "JPEG"

    def pil(self) -> Image.Image:
        return Image.fromarray(self.rgb)


def b64decode_strict(text: typing.Union[str, bytes], max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Decode standard base64, tolerating whitespace, missing padding and a data-URL prefix."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise ImageError("bad_base64", "not ASCII") from None
    if not isinstance(text, str):
        raise ImageError("bad_base64", f"expected str, got {type(text).__name__}")
    if len(text) > (max_bytes * 4) // 3 + 1024:
        raise ImageError("too_large", f"{len(text)} base64 characters")
    text = _DATA_URL.sub("", text.strip())
    text = _WS.sub("", text)
    if not text:
        raise ImageError("empty", "no image data")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError("bad_base64", str(exc)) from None
    if not raw:
        raise ImageError("empty", "no image data")
    if len(raw) > max_bytes:
        raise ImageError("too_large", f"{len(raw)} bytes > {max_bytes}")
    return raw


def probe(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Read the header only: format and size, with the pixel cap enforced. No pixels decoded."""
    if not data:
        raise ImageError("empty", "no image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                fmt = im.format or "UNKNOWN"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_many_pixels", str(exc)) from None
    except Exception as exc:  # PIL raises many types for garbage
        raise ImageError("not_an_image", f"{type(exc).__name__}: {exc}") from None
    if w < 1 or h < 1:
        raise ImageError("empty", f"{w}x{h}")
    if w * h > max_pixels:
        raise ImageError("too_many_pixels", f"{w}x{h} > {max_pixels}")
    return DecodedImage(data=data, width=w, height=h, format=fmt)


def _decode_pixels(data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            try:
                im.seek(0)
            except EOFError:
                pass
            im = ImageOps.exif_transpose(im) if "exif" in im.info or hasattr(im, "getexif") else im
            rgb = _to_rgb(im)
            arr = np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError("corrupt", f"{type(exc).__name__}: {exc}") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError("corrupt", f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        im.load()
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 1.0
        scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0))
        arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (0, 0, 0))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return im.convert("RGB")


def decode_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, eager: bool = True) -> DecodedImage:
    """Probe, then (when ``eager``) decode pixels now so corrupt data fails here."""
    img = probe(data, max_pixels=max_pixels)
    if eager:
        _ = img.rgb
    return img


def decode_base64(text: typing.Union[str, bytes], max_bytes: int = DEFAULT_MAX_BYTES,
                  max_pixels: int = DEFAULT_MAX_PIXELS, eager: bool = True) -> DecodedImage:
    """Strict base64 then :func:`decode_bytes`."""
    return decode_bytes(b64decode_strict(text, max_bytes=max_bytes), max_pixels=max_pixels, eager=eager)


def encode_jpeg_base64(img: typing.Union[Image.Image, np.ndarray], quality: int = 75) -> str:
    """What the validator does last: RGB to JPEG (PIL quality 75) to standard base64."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")
