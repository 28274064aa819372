"""The ``timm_det`` family's trainer (``natix-miner train-detector --family timm_det``).

A plain PyTorch loop over the CenterNet of :mod:`natix_miner.experts.timm_det_net`: the backbone from
a classification checkpoint with its first ``freeze_blocks`` stages frozen (cheaper on a CPU, and
the low-level filters need no retraining), AdamW with linear warm-up then cosine decay, and every
epoch a fresh validator augmentation of every training image with its boxes moved along
(:func:`~natix_miner.training.detector_data.augment_with_boxes`) plus a horizontal flip, sent
through the JPEG the validator sends. The held-out images get one fixed augmentation each; the best
epoch is the one whose top heatmap peak separates roadwork frames from background best (MCC at the
best threshold), ties broken by held-out loss.

Writes ``OUT/train/best.pt`` (what :class:`~natix_miner.experts.timm_det.TimmDetector` loads:
architecture, classes, input size, float16 weights) and ``OUT/train/last.pt`` (weights, optimiser,
epoch: ``--resume`` continues from it).

Usage (through :func:`natix_miner.training.detector.train_detector`)::

    DetectorConfig(coco="ann.json", family="timm_det", model="tf_efficientnet_lite0", imgsz=224,
                   model_options={"init": "package:efficientnet_lite0"}, epochs=8, out="runs/effdet")
"""

import io
import math
import os
import random
import typing
from pathlib import Path

import numpy as np

DEFAULT_INIT = {"tf_efficientnet_lite0": "package:efficientnet_lite0"}
OPTION_KEYS = ("init", "width", "freeze_blocks", "warmup_steps")


class _Frames:
    """Training / held-out frames: the validator's augmentation, boxes moved, as uint8 arrays."""

    def __init__(self, images, classes: typing.Sequence[str], size: int):
        from PIL import Image

        self.items = []
        for im in images:
            with Image.open(im.path) as pil:
                pil = pil.convert("RGB")
                pil.load()
            self.items.append((pil, list(im.boxes)))
        self.classes = list(classes)
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def frame(self, i: int, rng: np.random.Generator, flip: bool, level: typing.Optional[int] = None):
        """``(uint8 HxWx3, targets, has_boxes)`` of item ``i`` through one validator augmentation."""
        from PIL import Image

        from natix_miner.experts.timm_det_net import centernet_targets
        from natix_miner.training.detector_data import augment_with_boxes

        pil, boxes = self.items[i]
        aug, moved = augment_with_boxes(pil, boxes, rng, level=level)
        with Image.open(io.BytesIO(aug.jpeg())) as served:  # the JPEG the validator sends
            img = served.convert("RGB")
        scale = self.size / img.width, self.size / img.height
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BILINEAR)
        arr = np.asarray(img, np.uint8)
        xyxy = [[b.x * scale[0], b.y * scale[1], (b.x + b.w) * scale[0], (b.y + b.h) * scale[1]] for b in moved]
        if flip:
            arr = arr[:, ::-1]
            xyxy = [[self.size - x1, y0, self.size - x0, y1] for x0, y0, x1, y1 in xyxy]
        cls = [self.classes.index(b.cls) if isinstance(b.cls, str) else int(b.cls) for b in moved]
        return np.ascontiguousarray(arr), centernet_targets(xyxy, cls, len(self.classes), self.size), bool(boxes)


def _freeze(net, blocks: int) -> None:
    """Freeze the stem and the first ``blocks`` stages of an EfficientNet-style backbone."""
    bb = net.backbone
    if not hasattr(bb, "blocks") or blocks <= 0:
        return
    for name in ("conv_stem", "bn1"):
        if hasattr(bb, name):
            getattr(bb, name).requires_grad_(False)
    for i, stage in enumerate(bb.blocks):
        if i < blocks:
            stage.requires_grad_(False)


def _frozen_eval(net) -> None:
    """Batch-norm layers of frozen stages keep their pretrained statistics."""
    import torch

    for m in net.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def _score(row: dict) -> typing.Tuple[float, float]:
    """How epochs rank: held-out top-peak MCC, ties broken by the lower held-out loss."""
    return row["val_peak_mcc"], -row["val_loss"]


def _mcc_best(scores: typing.Sequence[float], labels: typing.Sequence[int]) -> float:
    from natix_miner.training.metrics import mcc_curve

    if len(set(labels)) < 2:
        return 0.0
    return float(np.max(mcc_curve(list(labels), list(scores))[1]))


def train_timm_det(cfg, out: Path, train, held, classes) -> dict:
    """Train, keep the best epoch; returns ``{"best", "last", "metrics", "options", "data"}``."""
    import torch
    from tqdm import tqdm

    from natix_miner.experts.timm_det import save_checkpoint
    from natix_miner.experts.timm_det_net import CenterNet, centernet_loss, decode, normalise
    from natix_miner.training.detector import DetectorTrainingError, _device, _torch_device

    from natix_miner.schema import nearest

    for key in sorted(set(cfg.model_options) - set(OPTION_KEYS)):
        guess = nearest(key, OPTION_KEYS)
        raise DetectorTrainingError(f"timm_det: unknown --model-option {key}" + (f" (did you mean {guess}?)" if guess
                                                                                 else "")
                                    + f"; known: {', '.join(OPTION_KEYS)}")
    if cfg.model.endswith((".yaml", ".yml", ".pt", ".pth")):
        raise DetectorTrainingError(f"timm_det: --model is a timm architecture (tf_efficientnet_lite0), not "
                                    f"{cfg.model!r}; backbone weights go in --model-option init=...")
    if cfg.imgsz % 8:
        raise DetectorTrainingError(f"timm_det: --imgsz must be a multiple of 8, got {cfg.imgsz}")
    mo = cfg.model_options
    init = mo.get("init", DEFAULT_INIT.get(cfg.model))
    init = None if str(init).lower() in ("none", "") else init
    width, freeze = int(mo.get("width", 64)), int(mo.get("freeze_blocks", 2))
    warmup = int(mo.get("warmup_steps", 20))
    run = out / "train"
    run.mkdir(parents=True, exist_ok=True)
    last, best = run / "last.pt", run / "best.pt"
    if cfg.resume and not last.exists():
        raise DetectorTrainingError(f"nothing to resume: {last} does not exist (run without --resume)")
    device = _torch_device(_device(cfg.device, "timm_det"))
    torch.manual_seed(cfg.seed)
    try:
        net = CenterNet(cfg.model, len(classes), width=width, backbone_weights=None if cfg.resume else init)
    except (RuntimeError, FileNotFoundError) as exc:
        raise DetectorTrainingError(f"timm_det: {exc}") from None
    _freeze(net, freeze)
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr or 1e-3, weight_decay=1e-4)
    steps_per_epoch = max(1, math.ceil(len(train) / cfg.batch))
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / max(1, total)))))
    start, history = 0, []
    if cfg.resume:
        state = torch.load(last, map_location=device, weights_only=False)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = state["epoch"] + 1, state["history"]
    frames, held_frames = _Frames(train, classes, cfg.imgsz), _Frames(held, classes, cfg.imgsz)
    hrng = np.random.default_rng(cfg.seed + 7)
    fixed = [held_frames.frame(i, hrng, flip=False) for i in range(len(held_frames))]  # one fixed view each
    mean, std = net.mean, net.std
    for epoch in range(start, cfg.epochs):
        net.train()
        _frozen_eval(net)
        rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        order = list(range(len(frames)))
        random.Random(cfg.seed * 1000 + epoch).shuffle(order)
        losses = []
        bar = tqdm(range(0, len(order), cfg.batch), desc=f"timm_det epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   leave=False, disable=not getattr(cfg, "progress", True))
        for s in bar:
            batch = [frames.frame(i, rng, flip=bool(rng.random() < 0.5)) for i in order[s:s + cfg.batch]]
            x = normalise(torch.from_numpy(np.stack([b[0] for b in batch])).to(device), mean, std)
            loss, parts = centernet_loss(net(x), [b[1] for b in batch])
            if not torch.isfinite(loss):
                raise DetectorTrainingError(f"timm_det: the loss became {loss.item()} at epoch {epoch}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            sched.step()
            losses.append(float(loss.item()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        net.eval()
        val_losses, peaks, labels = [], [], []
        with torch.no_grad():
            for s in range(0, len(fixed), cfg.batch):
                chunk = fixed[s:s + cfg.batch]
                x = normalise(torch.from_numpy(np.stack([b[0] for b in chunk])).to(device), mean, std)
                o = net(x)
                val_losses.append(float(centernet_loss(o, [b[1] for b in chunk])[0]))
                for boxes, scores, _ in decode(o, max_det=1, conf=0.0):
                    peaks.append(float(scores[0]) if len(scores) else 0.0)
                labels += [int(b[2]) for b in chunk]
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "val_loss": float(np.mean(val_losses)) if val_losses else float("nan"),
               "val_peak_mcc": round(_mcc_best(peaks, labels), 4)}
        history.append(row)
        print(f"timm_det epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.3f}, held-out loss "
              f"{row['val_loss']:.3f}, top-peak MCC {row['val_peak_mcc']:.3f}", flush=True)
        if _score(row) > max(map(_score, history[:-1]), default=(-2.0, 0.0)) or not best.exists():  # first best wins
            save_checkpoint(net, best, cfg.model, classes, cfg.imgsz, width, init=init, epoch=row["epoch"],
                            held_out=row)
        tmp = last.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch, "history": history}, tmp)
        os.replace(tmp, last)  # a kill mid-write leaves the previous epoch's checkpoint
    if not best.exists():
        raise DetectorTrainingError(f"timm_det: nothing trained ({cfg.epochs} epochs already done in {last})")
    metrics = dict(history[-1]) if history else {}
    metrics["epochs_done"] = len(history)
    metrics["best_epoch"] = max(history, key=_score)["epoch"] if history else -1
    options = {"classes": {c: [c] for c in classes}, "min_score": 0.1}
    return {"best": best, "last": last, "metrics": metrics, "options": options, "data": None}
