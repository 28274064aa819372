"""Fine-tune an ultralytics detector (YOLO11 / YOLO26 / RT-DETR) on roadwork object boxes.

COCO annotations (:mod:`natix_miner.training.coco`, categories folded onto the detector experts'
five roadwork classes) become an ultralytics dataset; ultralytics trains it (its own
augmentation, AMP on GPU, checkpoints ``last.pt`` / ``best.pt``, ``resume``). The result is a
``best.pt`` the ``ultralytics`` expert family loads and ``OUT/expert.yaml``, its profile entry
with the class mapping already filled in.

Never pass a ``*.pt`` name that is not a local file: ultralytics would download it. Model yamls
shipped inside the package (``yolo11n.yaml``, ``yolo26n.yaml``, ``rtdetr-l.yaml``) start from random
weights; a local ``.pt`` (e.g. COCO-pretrained, copied onto the host) fine-tunes.

Usage::

    natix-miner train-detector --coco ann/instances.json --images ann/images --model yolo11n.yaml \
        --epochs 50 --imgsz 640 --out runs/yolo-roadwork

    from natix_miner.training.detector import DetectorConfig, train_detector
    res = train_detector(DetectorConfig(coco="ann.json", out="runs/det", epochs=1, imgsz=64))
    res["best"], res["metrics"], res["expert"]
"""

import dataclasses
import os
import sys
import typing
from pathlib import Path


@dataclasses.dataclass
class DetectorConfig:
    coco: str
    out: str = "runs/detector"
    images: typing.Optional[str] = None  # default: the annotation file's folder
    model: str = "yolo11n.yaml"  # a bundled yaml (random init) or a local .pt to fine-tune
    arch: str = "auto"  # auto | yolo | rtdetr
    epochs: int = 50
    imgsz: int = 640
    batch: int = 16
    device: str = "auto"
    workers: int = 0
    amp: bool = True
    seed: int = 0
    val_fraction: float = 0.2
    class_map: typing.Optional[typing.Dict[str, typing.Optional[str]]] = None
    resume: bool = False
    name: typing.Optional[str] = None
    extra: typing.Dict[str, typing.Any] = dataclasses.field(default_factory=dict)  # passed to .train()


class DetectorTrainingError(RuntimeError):
    pass


def _model(cfg: DetectorConfig, path: str):
    """Build the ultralytics model without letting it download or keep OMP_NUM_THREADS=1."""
    omp = os.environ.get("OMP_NUM_THREADS")
    first = "ultralytics" not in sys.modules
    from ultralytics import RTDETR, YOLO

    if first and omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    arch = cfg.arch.lower()
    if arch == "auto":
        arch = "rtdetr" if "rtdetr" in os.path.basename(path).lower() else "yolo"
    return (RTDETR if arch == "rtdetr" else YOLO)(path)


def resolve_model(model: str) -> str:
    """A local file, or a model yaml name ultralytics ships (``yolo11n.yaml``: the scale letter is
    folded into ``yolo11.yaml`` by ultralytics itself). Anything else would be a download: refused."""
    if os.path.exists(model):
        return model
    if model.endswith((".yaml", ".yml")) and os.sep not in model:
        import re

        import ultralytics

        base = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", Path(model).stem)  # ultralytics' own rule
        cfg_dir = Path(ultralytics.__file__).parent / "cfg" / "models"
        if any(cfg_dir.rglob(f"{base}.yaml")) or any(cfg_dir.rglob(Path(model).name)):
            return model
    raise DetectorTrainingError(f"ultralytics: model {model!r} is neither a local file nor a yaml shipped with "
                                "ultralytics (never downloaded; copy a .pt onto this host first)")


def train_detector(cfg: DetectorConfig) -> dict:
    """Convert the COCO data, train, and export; returns ``{"best", "last", "metrics", "expert", "data"}``."""
    import torch
    import yaml

    from natix_miner.training.coco import coco_to_yolo, load_coco

    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ds = load_coco(cfg.coco, images_dir=cfg.images, class_map=cfg.class_map)
    counts = ds.counts()
    if not any(counts.values()):
        raise DetectorTrainingError(f"{cfg.coco}: no box maps onto the roadwork classes {list(ds.classes)} "
                                    f"(dropped categories: {ds.dropped}); pass a class map")
    data_yaml = coco_to_yolo(ds, out / "dataset", val_fraction=cfg.val_fraction, seed=cfg.seed)
    device = cfg.device
    if device == "auto":
        device = "0" if torch.cuda.is_available() else "cpu"
    last = out / "train" / "weights" / "last.pt"
    threads = torch.get_num_threads()
    try:
        if cfg.resume:
            if not last.exists():
                raise DetectorTrainingError(f"nothing to resume: {last} does not exist")
            model = _model(cfg, str(last))
            model.train(resume=True)
        else:
            model = _model(cfg, resolve_model(cfg.model))
            if model.task != "detect":
                raise DetectorTrainingError(f"{cfg.model} is a {model.task!r} model, not a detector")
            model.train(data=str(data_yaml), epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch, device=device,
                        workers=cfg.workers, amp=cfg.amp and device != "cpu", seed=cfg.seed, project=str(out),
                        name="train", exist_ok=True, plots=False, verbose=False, **cfg.extra)
    finally:
        torch.set_num_threads(threads)  # ultralytics changes it on CPU
    trainer = model.trainer
    best = Path(getattr(trainer, "best", out / "train" / "weights" / "best.pt"))
    if not best.exists():
        best = last
    metrics = {k: float(v) for k, v in (getattr(trainer, "metrics", None) or {}).items()
               if isinstance(v, (int, float))}
    name = cfg.name or out.name.replace(" ", "_")
    from natix_miner.training.trainer import _profile_path

    expert = {"name": name, "family": "ultralytics", "model": _profile_path(best),
              "options": {"imgsz": cfg.imgsz, "classes": {c: [c] for c in ds.classes}, "min_score": 0.25}}
    (out / "expert.yaml").write_text("# paste under `experts:` in a profile (and name it in a tier)\n"
                                     + yaml.safe_dump([expert], sort_keys=False))
    return {"best": str(best), "last": str(last), "metrics": metrics, "expert": expert, "data": str(data_yaml),
            "boxes": counts, "dropped": ds.dropped}
