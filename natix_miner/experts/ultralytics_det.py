"""Ultralytics detectors (YOLO11, YOLO26, RT-DETR) as roadwork experts (family ``ultralytics``).

The model is a local file: a trained ``.pt``, an export ultralytics can run (``.onnx``,
``.engine``, ``_openvino_model/``...), or a model yaml shipped inside the ultralytics package
(``yolo11n.yaml``, ``yolo26n.yaml``, ``rtdetr-l.yaml``: random weights, for tests and speed
benchmarks). A missing ``*.pt`` is an error here: ultralytics would silently download it.

Profile entry::

    - name: yolo_roadwork
      family: ultralytics
      model: models/yolo11s-roadwork/best.pt
      dtype: float16                 # half precision on GPUs; CPU always float32
      max_batch: 32
      options:
        arch: auto                   # auto | yolo | rtdetr (auto: from the checkpoint / file name)
        imgsz: 640                   # inference size (multiple of 32)
        conf: 0.05                   # ultralytics' own pre-filter (aggregation has min_score)
        iou: 0.7
        max_det: 100
        classes:                     # roadwork class -> model class names or ids (detection.py)
          cone: [traffic_cone]
          barrier: [barrier, barricade]
          sign: [road_work_sign]
          construction_vehicle: [excavator, construction_vehicle]
          worker: [worker]
        min_score: 0.25
        depth_check: depth_small     # optional (depth.py)

With a COCO checkpoint only weak proxies exist (``person`` -> worker, ``truck`` ->
construction_vehicle, ``stop sign`` -> sign); fine-tuned roadwork classes are what make it useful.
"""

import os
import sys
import typing

import numpy as np
import pydantic

from natix_miner.experts.detection import ClosedSetOptions, DetectorConfigError, DetectorExpert, Detections, rgb_of


def resolve_ultralytics_model(path: str) -> str:
    """A local file/dir, or a yaml bundled in ultralytics; never a name that would trigger a download.

    A scaled name (``yolo11n.yaml``, ``yolo26s.yaml``) is accepted when its base yaml ships
    (``yolo11.yaml``: ultralytics reads the scale letter from the name itself) and is returned
    unchanged, so the scale is kept; ``rtdetr-l.yaml`` resolves to its file."""
    if os.path.exists(path):
        return path
    if path.endswith((".yaml", ".yml")) and os.sep not in path:
        import re

        from ultralytics.utils.checks import check_yaml

        try:
            return str(check_yaml(path))
        except FileNotFoundError:
            pass
        base = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", os.path.splitext(path)[0])  # ultralytics' own rule
        if base + ".yaml" != path:
            try:
                check_yaml(base + ".yaml")
                return path
            except FileNotFoundError:
                pass
    from natix_miner.models_store import ModelUnavailable

    raise ModelUnavailable(f"ultralytics: model {path!r} not found locally (this expert never downloads; "
                            "give a .pt/.onnx/.engine path or a yaml bundled with ultralytics)")


class Options(ClosedSetOptions):
    """Options of the ``ultralytics`` family (``natix-miner experts options ultralytics``). Dtypes:
    ultralytics runs float16 (``half``) or float32, so ``bfloat16`` (which ran float32) is refused."""

    dtypes: typing.ClassVar[typing.Tuple[str, ...]] = ("float32", "float16", "auto")
    packages: typing.ClassVar[typing.Tuple[str, ...]] = ("ultralytics",)

    arch: typing.Literal["auto", "yolo", "rtdetr"] = "auto"
    """Model class; ``auto``: RT-DETR when the checkpoint or file name says so, else YOLO."""
    imgsz: int = pydantic.Field(default=640, gt=0, multiple_of=32)
    """Inference size in pixels (a multiple of 32)."""
    conf: float = pydantic.Field(default=0.05, ge=0, le=1)
    """Ultralytics' own confidence pre-filter (the aggregation has ``min_score``)."""
    iou: float = pydantic.Field(default=0.7, gt=0, le=1)
    """Ultralytics' NMS IoU."""
    max_det: int = pydantic.Field(default=100, ge=1)
    """Detections kept per image."""


class UltralyticsDetector(DetectorExpert):
    family = "ultralytics"
    Options = Options

    def load_model(self, device: str) -> None:
        import torch

        from natix_miner.experts.dtypes import resolve_dtype

        if not self.spec.model:
            raise DetectorConfigError(f"{self.name}: family 'ultralytics' needs model: <path>")
        path = resolve_ultralytics_model(self.resolve_model())
        o = self.opts
        arch = o.arch
        threads = torch.get_num_threads()
        first_import = "ultralytics" not in sys.modules
        omp = os.environ.get("OMP_NUM_THREADS")
        from ultralytics import RTDETR, YOLO

        if first_import and omp is None:  # importing ultralytics sets it to 1 for every child process
            os.environ.pop("OMP_NUM_THREADS", None)
        if arch == "auto":
            arch = "rtdetr" if "rtdetr" in os.path.basename(path).lower() else "yolo"
        model = (RTDETR if arch == "rtdetr" else YOLO)(path)
        if arch == "yolo" and type(getattr(model, "model", None)).__name__ == "RTDETRDetectionModel":
            model = RTDETR(path)
        if model.task != "detect":
            raise DetectorConfigError(f"{self.name}: {path} is a {model.task!r} model, not a detector")
        self.yolo = model
        self.model = model.model if isinstance(model.model, torch.nn.Module) else None
        self.names = dict(model.names)
        self.half = resolve_dtype(self.spec.dtype, device, self.Options) == torch.float16
        self.udevice = device
        self.imgsz = o.imgsz
        self.conf = o.conf
        self.iou = o.iou
        self.max_det = o.max_det
        torch.set_num_threads(threads)

    def memory_bytes(self) -> int:
        """The predictor's (fused, possibly half-precision) copy once it exists, else the loaded model."""
        import torch

        backend = getattr(getattr(self.yolo, "predictor", None), "model", None)  # AutoBackend
        own = 0
        for model in (getattr(getattr(backend, "backend", None), "model", None), backend, self.model):
            if isinstance(model, torch.nn.Module):
                own = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
                if own:
                    break
        return own + (self.depth_checker.memory_bytes() if self.depth_checker is not None else 0)

    def warmup(self) -> None:
        self.detect([np.zeros((self.imgsz, self.imgsz, 3), np.uint8)])

    def detect(self, images) -> typing.List[Detections]:
        import torch

        if not len(images):
            return []
        rgbs = [rgb_of(im) for im in images]
        threads = torch.get_num_threads()
        cuda_dev = torch.cuda.current_device() if self.udevice.startswith("cuda") else None
        try:
            results = self.yolo.predict([np.ascontiguousarray(r[..., ::-1]) for r in rgbs], imgsz=self.imgsz,
                                        conf=self.conf, iou=self.iou, max_det=self.max_det, device=self.udevice,
                                        half=self.half, verbose=False)
        finally:  # ultralytics resets torch's thread count (CPU) and the thread's current CUDA device
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            if cuda_dev is not None and torch.cuda.current_device() != cuda_dev:
                torch.cuda.set_device(cuda_dev)
        out = []
        for res, rgb in zip(results, rgbs):
            b = res.boxes
            ids = b.cls.int().cpu().numpy() if len(b) else np.zeros(0, np.int64)
            out.append(Detections(b.xyxy.float().cpu().numpy(), b.conf.float().cpu().numpy(),
                                  [self.names.get(int(i), str(int(i))) for i in ids], ids, rgb.shape[:2]))
        return out
