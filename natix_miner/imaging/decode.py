"""Safe image decoding: any usual format in, bounded memory, RGB out, or a clean :class:`ImageError`.

Validators send base64 JPEG, normally 224x224, but anything can arrive. The rules:

* base64 is checked strictly (``validate=True``) after stripping whitespace and a data-URL prefix;
  the text length is capped before anything is decoded (``max_bytes``);
* only raster formats a camera or a validator can produce are opened (:data:`ALLOWED_FORMATS`:
  JPEG/MPO, PNG/APNG, GIF, WebP, BMP, TIFF); PIL never tries its other ~40 parsers (EPS would
  even call Ghostscript);
* the pixel count is read from the header and capped before any pixel is decoded (``max_pixels``),
  which stops decompression bombs; it is checked again on the frame actually decoded;
* JPEG work is bounded before decoding: libjpeg walks every block of the image once per scan, so
  a progressive file with thousands of tiny scans cost one decode thread 35 s (1.7 MB, 30,000
  scans); more than :data:`MAX_JPEG_SCANS` scans, or more than :data:`MAX_SCAN_PIXELS` scans x
  pixels, is refused (``too_many_scans``) from the bytes, before any pixel is decoded. Ordinary
  progressive JPEGs have 6-10 scans;
* EXIF orientation is applied when it is valid and ignored when the EXIF block is broken;
  palettes / alpha / CMYK / LAB / 16-bit / 32-bit / float / greyscale become 8-bit RGB
  (NaN and inf in float TIFFs included); animated images use their first frame.

Every failure is an :class:`ImageError` with a short ``reason`` tag (``bad_base64``, ``empty``,
``too_large``, ``too_many_pixels``, ``too_many_scans``, ``unsupported_format``, ``not_an_image``,
``corrupt``); no other
exception type leaves this module for any input (``tests/reliability/test_decode.py`` holds this
with hypothesis). No global PIL state is changed and no warnings filter is touched, so decoding is
safe from several threads at once.

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
import sys
import typing

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096
MAX_JPEG_SCANS = 500  # libjpeg-turbo's advice for its scan limit; encoders write 6-10 (mozjpeg up to ~20)
MAX_SCAN_PIXELS = 1_500_000_000  # scans x pixels: ~90 scans of a 16 Mpx image, 500 of 224x224; < 1 s worst case
_SOS = b"\xff\xda"  # start of scan: never inside entropy-coded data (a 0xFF there is followed by 0x00 or RSTn)
ALLOWED_FORMATS: typing.Tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG covers MPO
_DATA_URL = re.compile(r"^data:[^;,]{0,100};base64,", re.IGNORECASE)
_WS = re.compile(r"\s+")
_ORIENTATION = 0x0112
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I", "I;32", "F")


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
    max_pixels: int = DEFAULT_MAX_PIXELS
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
            self._rgb = _decode_pixels(self.data, self.max_pixels)
        return self._rgb

    @property
    def is_jpeg(self) -> bool:
        return self.format in ("JPEG", "MPO")

    def pil(self) -> Image.Image:
        return Image.fromarray(self.rgb)


def b64decode_strict(text: typing.Union[str, bytes], max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Decode standard base64, tolerating whitespace, missing padding and a data-URL prefix."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        if len(text) > (max_bytes * 4) // 3 + 1024:
            raise ImageError("too_large", f"{len(text)} base64 characters")
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise ImageError("bad_base64", "not ASCII") from None
    if not isinstance(text, str):
        raise ImageError("bad_base64", f"expected str, got {type(text).__name__}")
    if len(text) > (max_bytes * 4) // 3 + 1024:
        raise ImageError("too_large", f"{len(text)} base64 characters")
    if not text.isascii():
        raise ImageError("bad_base64", "not ASCII")
    text = _DATA_URL.sub("", text.strip())
    text = _WS.sub("", text)
    if not text:
        raise ImageError("empty", "no image data")
    if len(text) % 4 == 1:
        raise ImageError("bad_base64", "impossible length")
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


def _pil_open():
    """PIL's own ``Image.open``. Importing ultralytics replaces it process-wide with a wrapper that,
    on an unidentified image, runs a requirements check (an install attempt) and imports pi_heif;
    hostile input must never reach that."""
    patches = sys.modules.get("ultralytics.utils.patches")
    return getattr(patches, "_image_open", None) or Image.open


def _open(data: bytes) -> Image.Image:
    """``Image.open`` restricted to :data:`ALLOWED_FORMATS`, every failure an :class:`ImageError`."""
    try:
        return _pil_open()(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", str(exc)) from None
    except Image.UnidentifiedImageError:
        raise ImageError("unsupported_format", _sniff(data)) from None
    except Exception as exc:  # PIL raises many types for garbage headers
        raise ImageError("not_an_image", f"{type(exc).__name__}: {exc}") from None


def _check_size(w: int, h: int, max_pixels: int) -> None:
    if w < 1 or h < 1:
        raise ImageError("empty", f"{w}x{h}")
    if w * h > max_pixels:
        raise ImageError("too_many_pixels", f"{w}x{h} > {max_pixels}")


def jpeg_scans(data: bytes) -> int:
    """Start-of-scan markers in the bytes (C speed: ~1 ms for 8 MB). Embedded JPEGs (an EXIF
    thumbnail) count too, which only errs on the safe side."""
    return data.count(_SOS)


def check_scan_work(data: bytes, width: int, height: int) -> None:
    """Refuse a JPEG whose scans would take unbounded time to decode (``too_many_scans``)."""
    scans = jpeg_scans(data)
    if scans > MAX_JPEG_SCANS or scans * width * height > MAX_SCAN_PIXELS:
        raise ImageError("too_many_scans", f"{scans} scans of {width}x{height} (limits: {MAX_JPEG_SCANS} scans, "
                                           f"{MAX_SCAN_PIXELS:.1e} scan-pixels)")


def _has_jpeg_scans(im: Image.Image) -> bool:
    """JPEG/MPO, or TIFF with JPEG-compressed strips (libjpeg decodes those too)."""
    return im.format in ("JPEG", "MPO") or str(im.info.get("compression", "")).endswith("jpeg")


def probe(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Read the header only: format and size, with the pixel and JPEG scan caps enforced. No
    pixels decoded."""
    if not data:
        raise ImageError("empty", "no image data")
    im = _open(data)
    try:
        w, h = im.size
        fmt = im.format or "UNKNOWN"
        scanned = _has_jpeg_scans(im)
    finally:
        im.close()
    _check_size(w, h, max_pixels)
    if scanned:
        check_scan_work(data, w, h)
    return DecodedImage(data=bytes(data), width=w, height=h, format=fmt, max_pixels=max_pixels)


def _decode_pixels(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    src = im = _open(data)
    try:
        try:
            im.seek(0)
        except EOFError:
            pass
        _check_size(im.size[0], im.size[1], max_pixels)
        if _has_jpeg_scans(im):
            check_scan_work(data, im.size[0], im.size[1])
        im = _exif_transpose(im)
        arr = np.asarray(_to_rgb(im), dtype=np.uint8)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("too_many_pixels", "out of memory while decoding") from None
    except Exception as exc:
        raise ImageError("corrupt", f"{type(exc).__name__}: {exc}") from None
    finally:
        src.close()
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] * arr.shape[1] > max_pixels:
        raise ImageError("corrupt", f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _exif_transpose(im: Image.Image) -> Image.Image:
    """Apply a valid EXIF orientation (2..8); a broken or hostile EXIF block is ignored."""
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
    except Exception:
        return im
    if not isinstance(orientation, int) or not 2 <= orientation <= 8:
        return im
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:
        return im


def _to_uint8(arr: np.ndarray, full_scale: typing.Optional[float] = None) -> np.ndarray:
    """High bit depth / float to 8 bits. ``full_scale`` is the value that maps to 255 (65535 for
    16-bit modes); without it: 1.0 for floats in [0, 1], 255 for small ranges, else 65535 or the max."""
    is_float = arr.dtype.kind == "f"
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo = min(float(arr.min()), 0.0) if arr.size else 0.0
    hi = float(arr.max()) if arr.size else 1.0
    if full_scale is None:
        if is_float and lo >= 0.0 and hi <= 1.0:
            full_scale = 1.0
        elif hi <= 255.0:
            full_scale = 255.0
        else:
            full_scale = 65535.0 if hi <= 65535.0 else hi
    arr = (arr - lo) * (255.0 / max(full_scale - lo, 1e-12))
    return np.clip(arr, 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        im.load()
        return im
    if mode in _HIGH_DEPTH:
        grey = _to_uint8(np.asarray(im), 65535.0 if mode.startswith("I;16") else None)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA") if mode not in ("La", "RGBa") else _via_numpy(im, alpha=True)
        bg = Image.new("RGB", rgba.size, (0, 0, 0))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    try:
        return im.convert("RGB")
    except (ValueError, OSError):
        return _via_numpy(im, alpha=False)


def _via_numpy(im: Image.Image, alpha: bool) -> Image.Image:
    """Modes PIL cannot convert directly: take the channels as numbers."""
    arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    colour = arr[:, :, :3] if arr.shape[2] >= 3 else np.repeat(arr[:, :, :1], 3, axis=2)
    colour = colour if colour.dtype == np.uint8 else _to_uint8(colour)
    if not alpha:
        return Image.fromarray(np.ascontiguousarray(colour), "RGB")
    a = arr[:, :, -1] if arr.shape[2] in (2, 4) else np.full(arr.shape[:2], 255, np.uint8)
    a = a if a.dtype == np.uint8 else _to_uint8(a)
    return Image.fromarray(np.ascontiguousarray(np.dstack([colour, a])), "RGBA")


_MAGIC = [(b"\xff\xd8\xff", "jpeg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"),
          (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"%!PS", "postscript"), (b"%PDF", "pdf"),
          (b"<", "markup/svg"), (b"\x00\x00\x01\x00", "ico")]


def _sniff(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp (unreadable)"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return f"{name} (unreadable or not allowed)"
    return f"unknown header {data[:8].hex()}"


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
