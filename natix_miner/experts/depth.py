"""Depth Anything as a size check for detections: a 3 m wide "cone" is not a cone.

Two uses, one module (family ``depth``):

* a **checker** that detector experts call with ``options.depth_check: <depth expert name or model
  path>``: each detection's score is multiplied by a plausibility factor in ``[min_factor, 1]``;
* a **standalone expert** that runs a detector of the same profile inside it
  (``options.detector: <expert name>``) and answers that detector's evidence after the check;
  without ``detector`` it abstains (its detail still reports the scale it recovered).

Profile entry::

    - name: depth_small
      family: depth
      model: models/depth-anything-v2-small          # any transformers depth-estimation dir / id
      options:
        detector: yolo_roadwork    # optional: run this detector inside, answer its checked evidence
        image_size: 518            # square input side, a multiple of the patch size (14)
        kind: relative             # relative | metric (default: from the model config)
        camera_height_m: 1.3       # dashcam above the road
        horizon: 0.5               # horizon row as a fraction of image height (level camera)
        hfov_deg: 80               # horizontal field of view (used by metric models only)
        size_tolerance: 1.5        # ranges below are widened by this factor each way
        sharpness: 3.0             # factor = exp(-sharpness * log-distance outside the range)
        min_factor: 0.05
        sizes: {cone: {width: [0.25, 0.4], height: [0.3, 1.0]}}   # overrides, metres

How physical size is measured (pinhole camera, ``f`` = focal length in pixels)::

    width_m = box_width_px * Z / f        height_m = box_height_px * Z / f

``Z`` is the median depth over the central part of the box.

* **Metric models** (Depth Anything V2 Metric, ``depth_estimation_type: metric``, ZoeDepth,
  DepthPro) give ``Z`` in metres; ``f = (W / 2) / tan(hfov / 2)`` needs the field of view.
* **Relative models** (Depth Anything V1/V2 default) give disparity only up to an unknown scale
  and shift: ``d = s / Z + t``. The scale comes from a **flat-road prior**: for a level camera
  at height ``h`` with the horizon at row ``v_h``, a road pixel at row ``v`` lies at
  ``1 / Z = (v - v_h) / (f h)``. A least-squares line through the row medians of ``d`` in the
  lower-central band of the image (``ground_rows``, ``ground_cols``) gives ``s`` and ``t``. Then
  ``Z = s / (d - t)`` and, because ``s`` scales with ``f``, ``width_m`` does **not** depend on
  the field of view: only on the camera height and the horizon row.

Assumptions, stated honestly: the road ahead is roughly flat and visible in the lower centre of
the frame; the camera is level at ``camera_height_m`` (cars ~1.2-1.5 m); the horizon row is
known to within ~10 % of the image height. When the fit fails (too few rows, non-positive
slope, poor fit ``r2 < min_fit_r2``: a wall ahead, a steep hill, a cropped sky-only image) the
scale is unknown and every factor is 1: the check never invents evidence. Estimates are
coarse (tens of percent), hence the wide ``size_tolerance``. Boxes cut by the image border
only have their upper bounds checked (their true extent is unknown). A detector that boxes a
whole row of barriers as one object needs a wider ``barrier`` width range.
"""

import dataclasses
import math
import typing

import numpy as np
import pydantic

from natix_miner.experts.base import Evidence, Expert, ExpertOptions
from natix_miner.experts.detection import DetectorConfigError, DetectorOptions, rgb_of
from natix_miner.schema import OptionsError, validate_options

# metres: (low, high); None = not checked. Ranges are for one object seen from any side.
DEFAULT_SIZES: typing.Dict[str, typing.Dict[str, typing.Optional[typing.Tuple[float, float]]]] = {
    "cone": {"width": (0.25, 0.4), "height": (0.3, 1.0)},
    "barrier": {"width": (0.8, 1.5), "height": (0.5, 1.5)},
    "sign": {"width": (0.4, 1.5), "height": None},  # the box may include the post
    "construction_vehicle": {"width": (1.5, 10.0), "height": (1.5, 5.0)},
    "worker": {"width": (0.3, 1.0), "height": (1.0, 2.2)},
}


Fraction = typing.Annotated[float, pydantic.Field(ge=0, le=1)]
Range = typing.Tuple[pydantic.PositiveFloat, pydantic.PositiveFloat]


class CheckOptions(ExpertOptions):
    """The depth check's camera, size and curve settings: the ``depth`` family's options without
    ``detector``, and a detector's ``depth_options``. Dtype rule: a detector's (``auto`` = float16)."""

    dtypes: typing.ClassVar[typing.Tuple[str, ...]] = DetectorOptions.dtypes
    auto_dtype: typing.ClassVar[str] = DetectorOptions.auto_dtype
    cpu_dtype: typing.ClassVar[str] = DetectorOptions.cpu_dtype
    packages: typing.ClassVar[typing.Tuple[str, ...]] = ("transformers",)

    image_size: int = pydantic.Field(default=518, gt=0)
    """Square input side, a multiple of the model's patch size (14)."""
    kind: typing.Optional[typing.Literal["relative", "metric"]] = None
    """Relative (disparity up to scale and shift) or metric (metres) depth; None: from the model config."""
    camera_height_m: float = pydantic.Field(default=1.3, gt=0)
    """Dashcam height above the road (cars: ~1.2-1.5 m)."""
    horizon: float = pydantic.Field(default=0.5, gt=0, lt=1)
    """Horizon row as a fraction of the image height (level camera)."""
    hfov_deg: float = pydantic.Field(default=80.0, gt=1, lt=179)
    """Horizontal field of view (metric models only; the relative fit does not depend on it)."""
    ground_rows: typing.Tuple[Fraction, Fraction] = (0.65, 0.97)
    """Rows (fractions of the height) of the road band the scale is fitted on."""
    ground_cols: typing.Tuple[Fraction, Fraction] = (0.3, 0.7)
    """Columns (fractions of the width) of the road band."""
    min_fit_r2: float = 0.5
    """Below this fit quality the scale is unknown and every factor is 1."""
    min_rows: int = pydantic.Field(default=5, ge=2)
    """Fewest road rows the fit needs."""
    size_tolerance: float = pydantic.Field(default=1.5, ge=1)
    """Size ranges are widened by this factor each way."""
    sharpness: float = pydantic.Field(default=3.0, ge=0)
    """factor = exp(-sharpness * log-distance outside the range)."""
    min_factor: float = pydantic.Field(default=0.05, ge=0, le=1)
    """The factor never drops below this."""
    metric_scale: float = pydantic.Field(default=1.0, gt=0)
    """Metric models: depth values are multiplied by this (metres)."""
    sizes: typing.Dict[str, typing.Dict[typing.Literal["width", "height"], typing.Optional[Range]]] = \
        pydantic.Field(default_factory=dict)
    """Per roadwork class overrides of the size ranges in metres, e.g. ``{cone: {width: [0.25, 0.4]}}``
    (null: not checked); defaults: ``DEFAULT_SIZES``."""


class Options(CheckOptions):
    """Options of the ``depth`` family (``natix-miner experts options depth``)."""

    detector: typing.Optional[str] = None
    """A detector expert of this profile to run inside, answering its depth-checked evidence; None:
    the expert abstains (its detail still reports the recovered scale)."""


@dataclasses.dataclass
class Camera:
    camera_height_m: float = 1.3
    horizon: float = 0.5
    hfov_deg: float = 80.0
    ground_rows: typing.Tuple[float, float] = (0.65, 0.97)
    ground_cols: typing.Tuple[float, float] = (0.3, 0.7)
    min_fit_r2: float = 0.5
    min_rows: int = 5

    def focal_px(self, width: int) -> float:
        return (width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)


def fit_ground_scale(disp: np.ndarray, cam: Camera) -> typing.Optional[typing.Dict[str, float]]:
    """Fit ``disp = s * (v - v_h) / (f h) + t`` on the road band; ``None`` when it is not credible."""
    h, w = disp.shape
    f = cam.focal_px(w)
    v_h = cam.horizon * h
    r0, r1 = int(cam.ground_rows[0] * h), int(math.ceil(cam.ground_rows[1] * h))
    c0, c1 = int(cam.ground_cols[0] * w), max(int(cam.ground_cols[0] * w) + 1, int(cam.ground_cols[1] * w))
    rows = np.arange(max(r0, int(v_h) + 1), min(r1, h))
    if len(rows) < cam.min_rows:
        return None
    d = np.median(disp[rows, c0:c1], axis=1).astype(np.float64)
    g = (rows + 0.5 - v_h) / (f * cam.camera_height_m)
    gm, dm = g.mean(), d.mean()
    var = ((g - gm) ** 2).sum()
    if var <= 0:
        return None
    s = float(((g - gm) * (d - dm)).sum() / var)
    t = float(dm - s * gm)
    resid = d - (s * g + t)
    tot = ((d - dm) ** 2).sum()
    r2 = float(1.0 - (resid ** 2).sum() / tot) if tot > 0 else 0.0
    if not (s > 0 and r2 >= cam.min_fit_r2):
        return None
    return {"s": s, "t": t, "r2": r2}


def box_depth(depth_or_disp: np.ndarray, box) -> float:
    """Median over the central half of the box (robust to background at the box edges)."""
    h, w = depth_or_disp.shape
    x1, y1, x2, y2 = [float(v) for v in box]
    cx0, cx1 = x1 + 0.25 * (x2 - x1), x2 - 0.25 * (x2 - x1)
    cy0, cy1 = y1 + 0.25 * (y2 - y1), y2 - 0.25 * (y2 - y1)
    i0, i1 = int(np.clip(math.floor(cy0), 0, h - 1)), int(np.clip(math.ceil(cy1), 1, h))
    j0, j1 = int(np.clip(math.floor(cx0), 0, w - 1)), int(np.clip(math.ceil(cx1), 1, w))
    patch = depth_or_disp[i0:max(i1, i0 + 1), j0:max(j1, j0 + 1)]
    return float(np.median(patch))


def range_factor(value: float, rng, tolerance: float, sharpness: float, floor: float,
                 check_low: bool = True) -> float:
    """1 inside ``[lo / tol, hi * tol]``; ``exp(-sharpness * |log distance|)`` outside, floored."""
    if rng is None or not math.isfinite(value) or value <= 0:
        return 1.0
    lo, hi = rng[0] / tolerance, rng[1] * tolerance
    if value > hi:
        excess = math.log(value / hi)
    elif check_low and value < lo:
        excess = math.log(lo / value)
    else:
        return 1.0
    return max(floor, math.exp(-sharpness * excess))


def check_options(options: typing.Union[CheckOptions, typing.Mapping[str, typing.Any], None]) -> CheckOptions:
    """Typed :class:`CheckOptions` from a mapping (``detector`` ignored); bad values raise
    :class:`DetectorConfigError` naming the key."""
    if isinstance(options, CheckOptions):
        return options
    try:
        return validate_options(CheckOptions, {k: v for k, v in dict(options or {}).items() if k != "detector"},
                                "depth")
    except OptionsError as exc:
        raise DetectorConfigError(f"depth: {exc}") from None


class SizeRules:
    """Camera + size ranges + the factor curve, from a depth expert's options."""

    def __init__(self, options: typing.Union[CheckOptions, typing.Mapping[str, typing.Any], None]):
        o = check_options(options)
        self.camera = Camera(**{f.name: getattr(o, f.name) for f in dataclasses.fields(Camera)})
        self.sizes = {k: dict(v) for k, v in DEFAULT_SIZES.items()}
        for cls, dims in o.sizes.items():
            for dim, rng in dims.items():
                if rng is not None and not rng[0] <= rng[1]:
                    raise DetectorConfigError(f"depth: sizes.{cls}.{dim}: expected [lo, hi] with 0 < lo <= hi")
                self.sizes.setdefault(cls, {"width": None, "height": None})[dim] = rng
        self.tolerance = o.size_tolerance
        self.sharpness = o.sharpness
        self.min_factor = o.min_factor
        self.metric_scale = o.metric_scale

    def check_image(self, depth_map: np.ndarray, kind: str, boxes: np.ndarray,
                    classes: typing.Sequence[str]) -> typing.Dict[str, typing.Any]:
        """Per-detection ``factor``, ``width_m``, ``height_m``, ``depth_m`` for one image."""
        h, w = depth_map.shape
        f = self.camera.focal_px(w)
        n = len(classes)
        out = {"factor": np.ones(n), "width_m": np.full(n, np.nan), "height_m": np.full(n, np.nan),
               "depth_m": np.full(n, np.nan)}
        if kind == "metric":
            fit, out["scale"] = None, "metric"
        else:
            fit = fit_ground_scale(depth_map, self.camera)
            out["scale"] = "ground_fit" if fit else "none"
            if fit:
                out["fit_r2"] = round(fit["r2"], 3)
            else:
                return out
        for i, (box, cls) in enumerate(zip(boxes, classes)):
            v = box_depth(depth_map, box)
            if kind == "metric":
                z = v * self.metric_scale
            else:
                z = fit["s"] / (v - fit["t"]) if v - fit["t"] > 1e-9 else float("nan")
            if not (math.isfinite(z) and z > 0):
                continue
            x1, y1, x2, y2 = [float(c) for c in box]
            wm, hm = (x2 - x1) * z / f, (y2 - y1) * z / f
            rules = self.sizes.get(cls, {})
            cut_x = x1 <= 1.0 or x2 >= w - 1.0
            cut_y = y1 <= 1.0 or y2 >= h - 1.0
            fw = range_factor(wm, rules.get("width"), self.tolerance, self.sharpness, self.min_factor, not cut_x)
            fh = range_factor(hm, rules.get("height"), self.tolerance, self.sharpness, self.min_factor, not cut_y)
            out["factor"][i] = min(fw, fh)
            out["width_m"][i], out["height_m"][i], out["depth_m"][i] = wm, hm, z
        return out


class DepthChecker:
    """A transformers depth model + :class:`SizeRules`. ``check(images, mapped)`` -> per-image dicts."""

    def __init__(self, model: str, options: typing.Union[CheckOptions, typing.Mapping[str, typing.Any], None] = None,
                 dtype: str = "float32"):
        self.model_ref = model
        self.opts = check_options(options)
        self.rules = SizeRules(self.opts)
        self.spec_dtype = dtype
        self.model = None

    def load(self, device: str) -> "DepthChecker":
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForDepthEstimation

        from natix_miner.experts.dtypes import resolve_dtype

        self.dtype = resolve_dtype(self.spec_dtype, device, CheckOptions)
        try:
            config = AutoConfig.from_pretrained(self.model_ref)
            self.model = AutoModelForDepthEstimation.from_pretrained(self.model_ref, dtype=self.dtype)
        except OSError as exc:
            from natix_miner.models_store import ModelUnavailable

            raise ModelUnavailable(f"depth: cannot load {self.model_ref!r} from a local directory or the local "
                                   f"hub cache (offline): {exc}") from None
        self.model = self.model.eval().to(device)
        self.device = device
        kind = self.opts.kind or getattr(config, "depth_estimation_type", None)
        if kind is None:
            kind = "metric" if config.model_type in ("zoedepth", "depth_pro") else "relative"
        if kind not in ("relative", "metric"):
            raise DetectorConfigError(f"depth: kind must be relative or metric, got {kind!r}")
        self.kind = kind
        try:
            proc = AutoImageProcessor.from_pretrained(self.model_ref)
            mean, std = proc.image_mean, proc.image_std
        except (OSError, ValueError, AttributeError):
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        self.mean, self.std = tuple(mean), tuple(std)
        patch = int(getattr(config, "patch_size", 14) or 14)
        self.size = self.opts.image_size
        if self.size % patch:
            raise DetectorConfigError(f"depth: image_size {self.size} must be a multiple of the patch size {patch}")
        return self

    def memory_bytes(self) -> int:
        if self.model is None:
            return 0
        return sum(t.numel() * t.element_size() for t in list(self.model.parameters()) + list(self.model.buffers()))

    def depth_maps(self, images) -> typing.List[np.ndarray]:
        """One float32 map per image at its own resolution: disparity (relative) or metres (metric)."""
        import torch
        import torch.nn.functional as F

        from natix_miner.imaging.preprocess import to_batch

        rgbs = [rgb_of(im) for im in images]
        x = to_batch(rgbs, self.size, self.mean, self.std, device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            pred = self.model(pixel_values=x).predicted_depth
        if pred.dim() == 4:
            pred = pred[:, 0]
        maps = []
        for p, rgb in zip(pred.float(), rgbs):
            up = F.interpolate(p[None, None], size=rgb.shape[:2], mode="bilinear", align_corners=False)
            maps.append(up[0, 0].cpu().numpy())
        return maps

    def check(self, images, mapped) -> typing.List[typing.Dict[str, typing.Any]]:
        """``mapped``: per image ``(Detections, classes, unmapped)`` as built by DetectorExpert."""
        if not len(images):
            return []
        maps = self.depth_maps(images)
        return [self.rules.check_image(m, self.kind, det.boxes, classes)
                for m, (det, classes, _) in zip(maps, mapped)]

    def close(self) -> None:
        self.model = None


def _resolve(ref: str, profile) -> str:
    from pathlib import Path

    from natix_miner.models_store import resolve_model_ref

    base = Path(profile.path).parent if profile is not None and profile.path else None
    return resolve_model_ref(ref, base=base)


def checker_from_reference(ref: str, profile, extra_options, device: str) -> DepthChecker:
    """``ref`` names a ``depth`` expert of ``profile`` (its model and options are used) or is a model path."""
    options = {}
    dtype = "float32"
    spec = None
    if profile is not None:
        try:
            spec = profile.expert(ref)
        except KeyError:
            spec = None
    if spec is not None:
        if spec.family != "depth":
            raise DetectorConfigError(f"depth_check: expert {ref!r} is of family {spec.family!r}, not 'depth'")
        if not spec.model:
            raise DetectorConfigError(f"depth_check: expert {ref!r} has no model")
        model = _resolve(spec.model, profile)
        options = dict(spec.options)  # its ``detector`` is dropped by check_options
        dtype = spec.dtype
    else:
        model = _resolve(ref, profile)
    options.update(extra_options or {})
    return DepthChecker(model, options, dtype).load(device)


class DepthExpert(Expert):
    """Family ``depth``: the checker as an expert (see module docstring)."""

    family = "depth"
    Options = Options

    def load(self, device: str) -> None:
        from natix_miner.experts import create_expert
        from natix_miner.experts.detection import DetectorExpert

        if not self.spec.model:
            raise DetectorConfigError(f"{self.name}: family 'depth' needs model: <depth model dir or id>")
        model = self.resolve_model()
        self.checker = DepthChecker(model, check_options(self.opts.model_dump(exclude={"detector"})),
                                    self.spec.dtype).load(device)
        self.model = self.checker.model
        self.detector = None
        name = self.opts.detector
        if name:
            if self.profile is None:
                raise DetectorConfigError(f"{self.name}: options.detector needs the profile that defines {name!r}")
            try:
                dspec = self.profile.expert(name)
            except KeyError:
                raise DetectorConfigError(f"{self.name}: options.detector: no expert named {name!r}") from None
            dspec = dspec.model_copy(update={"options": {k: v for k, v in dspec.options.items() if k != "depth_check"}})
            det = create_expert(dspec, self.profile)
            if not isinstance(det, DetectorExpert):
                raise DetectorConfigError(f"{self.name}: options.detector: {name!r} (family {dspec.family!r}) "
                                          "is not a detector")
            det.load(device)
            self.detector = det
        self.device = device

    def memory_bytes(self) -> int:
        return self.checker.memory_bytes() + (self.detector.memory_bytes() if self.detector else 0)

    def predict_batch(self, images) -> typing.List[Evidence]:
        if self.detector is not None:
            return self.detector.evidence(images, self.detector.detect(images), checker=self.checker)
        out = []
        for m in self.checker.depth_maps(images):
            fit = None if self.checker.kind == "metric" else fit_ground_scale(m, self.checker.rules.camera)
            out.append(Evidence(0.5, abstain=True, detail={"kind": self.checker.kind, "ground_fit": fit}))
        return out

    def close(self) -> None:
        if getattr(self, "detector", None) is not None:
            self.detector.close()
        if getattr(self, "checker", None) is not None:
            self.checker.close()
        self.model = None
