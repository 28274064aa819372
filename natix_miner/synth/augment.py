"""The live validator's challenge augmentation, reproduced step for step and seedable.

What a StreetVision validator does to an image before it reaches a miner (spec section 2):

* one level drawn uniformly from 0..3 (``numpy.random.random() <= cumulative``);
* level 0: RGB, centre crop to the short side's square, resize to 224 (PIL, bilinear);
* level 1: RGB, to tensor, rotate by an angle uniform in [-20, 20] degrees (black fill), random
  resized crop to 224x224 with area scale [0.2, 1.0] and aspect ratio 1:1 (bilinear, antialias);
  the flips are configured but never applied;
* level 2: level 1, then CS, CC, JPEG each at a level drawn from {0, 1} (0 = off);
* level 3: level 1, then CS, CC, JPEG, GNC, GB each at a level drawn from {0, 1, 2};
* every distortion converts the float tensor to BGR uint8 by truncation, applies the
  DeeperForensics operation with OpenCV, and converts back;
* the tensor becomes a PIL image (``mul(255).byte()``, truncation), is saved as JPEG with PIL's
  default quality (75) and sent as standard base64.

The rotation: the validator constructs ``RandomRotation(20, interpolation=BILINEAR)`` but its
``forward`` calls ``F.rotate(img, angle)`` without passing the interpolation, so the rotation that
reaches miners is nearest-neighbour. ``rotation_interpolation="nearest"`` (the default) replays
that; ``"bilinear"`` is what the constructor (and the spec's wording) names.

Usage::

    from natix_miner.synth.augment import ValidatorAugmenter
    aug = ValidatorAugmenter(seed=0)
    out = aug(pil_image)            # Augmented
    out.level, out.params           # 0..3, {"angle": ..., "crop": (i, j, h, w), "CS": 1, ...}
    out.image                       # PIL 224x224 RGB, exactly what is JPEG-encoded
    b64 = out.b64()                 # what goes into ImageSynapse.image
"""

import base64
import dataclasses
import io
import math
import typing

import numpy as np
from PIL import Image

TARGET_SIZE = 224
LEVEL_PROBS: typing.Tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
ROTATION_DEGREES = 20.0
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (1.0, 1.0)

# DeeperForensics parameters, severity 1..5 (index 0 is severity 1)
DISTORTION_PARAMS: typing.Dict[str, typing.Tuple[float, ...]] = {
    "CS": (0.4, 0.3, 0.2, 0.1, 0.0),          # saturation factor on Cb/Cr about 0.5
    "CC": (0.85, 0.725, 0.6, 0.475, 0.35),    # pixel multiplier
    "JPEG": (2, 3, 4, 5, 6),                  # down/up-sampling factor
    "GNC": (0.001, 0.002, 0.005, 0.01, 0.05), # Gaussian noise variance in YCbCr
    "GB": (7, 9, 13, 17, 21),                 # kernel size, sigma = kernel / 6
}
# level -> ordered (distortion, max severity drawn uniformly from 0..max)
LEVEL_DISTORTIONS: typing.Dict[int, typing.Tuple[typing.Tuple[str, int], ...]] = {
    0: (),
    1: (),
    2: (("CS", 1), ("CC", 1), ("JPEG", 1)),
    3: (("CS", 2), ("CC", 2), ("JPEG", 2), ("GNC", 2), ("GB", 2)),
}
_INTERP = ("nearest", "bilinear")


def distortion_parameter(name: str, severity: int) -> float:
    """The parameter of distortion ``name`` at severity 1..5."""
    if name not in DISTORTION_PARAMS:
        raise ValueError(f"unknown distortion {name!r}; known: {sorted(DISTORTION_PARAMS)}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    return DISTORTION_PARAMS[name][severity - 1]


# ------------------------------------------------------------------------------------------------
# DeeperForensics operations on HWC uint8 BGR arrays (the validator's representation)


def _bgr2ycbcr(bgr: np.ndarray) -> np.ndarray:
    import cv2

    ycrcb = cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2YCR_CB)
    out = ycrcb[:, :, (0, 2, 1)].astype(np.float32)
    out[:, :, 0] = (out[:, :, 0] * (235 - 16) + 16) / 255.0
    out[:, :, 1:] = (out[:, :, 1:] * (240 - 16) + 16) / 255.0
    return out


def _ycbcr2bgr(ycbcr: np.ndarray) -> np.ndarray:
    import cv2

    y = ycbcr.astype(np.float32)
    y[:, :, 0] = (y[:, :, 0] * 255.0 - 16) / (235 - 16)
    y[:, :, 1:] = (y[:, :, 1:] * 255.0 - 16) / (240 - 16)
    return cv2.cvtColor(y[:, :, (0, 2, 1)].astype(np.float32), cv2.COLOR_YCR_CB2BGR)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """numpy's float -> uint8 cast (truncation), with out-of-range values wrapped like the
    validator's platform would rather than raising a warning."""
    with np.errstate(invalid="ignore", over="ignore"):
        return a.astype(np.uint8)


def color_saturation(bgr: np.ndarray, factor: float) -> np.ndarray:
    ycbcr = _bgr2ycbcr(bgr)
    ycbcr[:, :, 1] = 0.5 + (ycbcr[:, :, 1] - 0.5) * factor
    ycbcr[:, :, 2] = 0.5 + (ycbcr[:, :, 2] - 0.5) * factor
    return _to_uint8(_ycbcr2bgr(ycbcr))


def color_contrast(bgr: np.ndarray, factor: float) -> np.ndarray:
    return _to_uint8(bgr.astype(np.float32) * factor)


def jpeg_resample(bgr: np.ndarray, factor: int) -> np.ndarray:
    """Down-sample by ``factor`` and back (OpenCV bilinear), the "JPEG" distortion."""
    import cv2

    h, w = bgr.shape[:2]
    small = cv2.resize(bgr, (max(1, w // factor), max(1, h // factor)))
    return cv2.resize(small, (w, h))


def gaussian_noise_color(bgr: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
    ycbcr = _bgr2ycbcr(bgr) / 255
    noisy = (ycbcr + math.sqrt(variance) * rng.standard_normal(ycbcr.shape)) * 255
    return np.clip(_ycbcr2bgr(noisy), 0, 255).astype(np.uint8)


def gaussian_blur(bgr: np.ndarray, kernel: int) -> np.ndarray:
    import cv2

    k = int(kernel)
    return cv2.GaussianBlur(bgr, (k, k), k * 1.0 / 6)


def apply_distortion(bgr: np.ndarray, name: str, severity: int,
                     rng: typing.Optional[np.random.Generator] = None) -> np.ndarray:
    """One distortion at severity 1..5 on a BGR uint8 array (severity 0 returns the input)."""
    if severity == 0:
        return bgr
    param = distortion_parameter(name, severity)
    if name == "CS":
        return color_saturation(bgr, param)
    if name == "CC":
        return color_contrast(bgr, param)
    if name == "JPEG":
        return jpeg_resample(bgr, int(param))
    if name == "GNC":
        return gaussian_noise_color(bgr, param, rng if rng is not None else np.random.default_rng())
    return gaussian_blur(bgr, int(param))


def _distort_tensor(t, name: str, severity: int, rng: np.random.Generator):
    """The validator's wrapper: CHW float RGB -> HWC uint8 BGR (truncation) -> op -> back."""
    import torch

    if severity == 0:
        return t
    bgr = _to_uint8(t[[2, 1, 0], ...].permute(1, 2, 0).cpu().numpy() * 255)
    out = apply_distortion(bgr, name, severity, rng)
    return torch.from_numpy(out.astype(np.float32) / 255.0).permute(2, 0, 1)[[2, 1, 0], ...]


# ------------------------------------------------------------------------------------------------
# geometry


def random_resized_crop_params(height: int, width: int, rng: np.random.Generator,
                               scale=CROP_SCALE, ratio=CROP_RATIO) -> typing.Tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` (10 tries, then a central fallback),
    drawing from ``rng``. Returns ``(top, left, h, w)``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def base_transform(img: Image.Image, size: int = TARGET_SIZE):
    """Level 0: RGB, centre crop to the short side, resize; returns a CHW float tensor."""
    import torchvision.transforms.functional as F

    img = img.convert("RGB")
    img = F.center_crop(img, min(img.size))
    img = F.resize(img, size)
    return F.to_tensor(img)


def geometric_transform(img: Image.Image, angle: float, crop: typing.Tuple[int, int, int, int],
                        size: int = TARGET_SIZE, rotation_interpolation: str = "nearest"):
    """Level 1 geometry on a tensor: rotate (black fill, no expand), then resized crop."""
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    if rotation_interpolation not in _INTERP:
        raise ValueError(f"rotation_interpolation must be one of {_INTERP}")
    t = F.to_tensor(img.convert("RGB"))
    mode = InterpolationMode.NEAREST if rotation_interpolation == "nearest" else InterpolationMode.BILINEAR
    t = F.rotate(t, angle, interpolation=mode)
    i, j, h, w = crop
    return F.resized_crop(t, i, j, h, w, [size, size], InterpolationMode.BILINEAR, antialias=True)


# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Augmented:
    """One augmented challenge: the 224x224 PIL image, its level and the drawn parameters."""

    image: Image.Image
    level: int
    params: typing.Dict[str, typing.Any]

    def jpeg(self) -> bytes:
        """PIL JPEG with default settings (quality 75), as the validator saves it."""
        buf = io.BytesIO()
        self.image.save(buf, format="JPEG")
        return buf.getvalue()

    def b64(self) -> str:
        return base64.b64encode(self.jpeg()).decode("ascii")


def draw_level(rng: np.random.Generator, probs: typing.Sequence[float] = LEVEL_PROBS) -> int:
    """The validator's level choice: first level whose cumulative probability >= u."""
    if not math.isclose(sum(probs), 1.0, rel_tol=1e-9):
        raise ValueError("level probabilities must sum to 1")
    u = rng.random()
    cum = 0.0
    for level, p in enumerate(probs):
        cum += p
        if u <= cum:
            return level
    return len(probs) - 1


def augment(img: Image.Image, rng: np.random.Generator, level: typing.Optional[int] = None,
            size: int = TARGET_SIZE, rotation_interpolation: str = "nearest",
            probs: typing.Sequence[float] = LEVEL_PROBS) -> Augmented:
    """Apply the validator pipeline to one PIL image (any size, any mode)."""
    import torchvision.transforms.functional as F

    if not isinstance(img, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(img).__name__}")
    if level is None:
        level = draw_level(rng, probs)
    if level not in LEVEL_DISTORTIONS:
        raise ValueError(f"level must be 0..3, got {level}")
    params: typing.Dict[str, typing.Any] = {}
    if level == 0:
        t = base_transform(img, size)
    else:
        rgb = img.convert("RGB")
        angle = float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
        w, h = rgb.size
        crop = random_resized_crop_params(h, w, rng)
        params.update(angle=angle, crop=crop)
        t = geometric_transform(rgb, angle, crop, size, rotation_interpolation)
        for name, max_sev in LEVEL_DISTORTIONS[level]:
            sev = int(rng.integers(0, max_sev + 1))
            params[name] = sev
            t = _distort_tensor(t, name, sev, rng)
    return Augmented(image=F.to_pil_image(t), level=level, params=params)


class ValidatorAugmenter:
    """A seeded stream of validator augmentations (one generator for every random draw)."""

    def __init__(self, seed: typing.Optional[int] = None, rotation_interpolation: str = "nearest",
                 size: int = TARGET_SIZE, probs: typing.Sequence[float] = LEVEL_PROBS):
        if rotation_interpolation not in _INTERP:
            raise ValueError(f"rotation_interpolation must be one of {_INTERP}")
        self.rng = np.random.default_rng(seed)
        self.rotation_interpolation = rotation_interpolation
        self.size = size
        self.probs = tuple(probs)

    def __call__(self, img: Image.Image, level: typing.Optional[int] = None) -> Augmented:
        return augment(img, self.rng, level=level, size=self.size,
                       rotation_interpolation=self.rotation_interpolation, probs=self.probs)
