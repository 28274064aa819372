"""Fine-tune a classifier expert (timm or transformers) for the validator's reward.

Every training image goes through the validator's own augmentation (:mod:`natix_miner.synth.augment`,
a level drawn uniformly from 0..3 per image and epoch), an optional horizontal flip, and the JPEG
quality-75 round trip the miner will see, then the expert's own resize and normalisation. The
loss is class-weighted cross-entropy; mixed precision (bf16, or fp16 with a grad scaler) runs on
GPU; a tqdm bar shows loss and learning rate.

After every epoch the model is scored on a fixed, seeded augmented validation set (each image at
one level, levels balanced) and ``OUT/last.pt`` is written (model, optimiser, scaler, epoch,
history, torch RNG state; augmentation and data order derive from ``(seed, epoch, index)``), so a
resumed run continues exactly as an uninterrupted one would. The best epoch by the
reward proxy ``(0.5 * MCC + 0.5 * accuracy) ** 3`` is exported as an expert the engine loads
(``OUT/best.pth`` for timm, ``OUT/best/`` for transformers) with ``OUT/expert.yaml``, the
profile entry to paste. ``resume=True`` continues from ``OUT/last.pt`` at the next epoch.

Usage::

    from natix_miner.training.trainer import TrainConfig, train
    cfg = TrainConfig(model="tf_efficientnet_lite0", weights="package:efficientnet_lite0",
                      epochs=5, out="runs/lite0")
    result = train(cfg, train_samples, val_samples)       # samples: natix_miner.training.datasets.Sample
    result["best"]["reward_proxy"], result["expert"]
"""

import dataclasses
import json
import logging
import math
import time
import typing
from pathlib import Path

import numpy as np

from natix_miner.training.metrics import binary_metrics

log = logging.getLogger("natix_miner.training")


@dataclasses.dataclass
class TrainConfig:
    out: str = "runs/expert"
    family: str = "timm"  # timm | transformers (alias hf_classifier)
    model: str = "tf_efficientnet_lite0"  # timm architecture, or a transformers model directory
    weights: typing.Optional[str] = None  # timm: "package:efficientnet_lite0" or a file; None = random init
    name: typing.Optional[str] = None  # expert name in the exported profile entry
    image_size: typing.Optional[int] = None  # default: the model's own
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    label_smoothing: float = 0.0
    class_weighting: bool = True
    levels: typing.Tuple[int, ...] = (0, 1, 2, 3)  # validator levels drawn uniformly for training
    hflip: float = 0.5
    val_levels: typing.Tuple[int, ...] = (0, 1, 2, 3)
    amp: bool = True  # GPU only
    device: str = "auto"
    workers: int = 0
    seed: int = 0
    max_steps_per_epoch: typing.Optional[int] = None
    freeze_backbone: bool = False
    keep_epochs: bool = False  # also keep epoch_NNN.pt


class TrainingError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------
# models


class Classifier:
    """A trainable 2-class model with the preprocessing its expert family will apply."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        if cfg.family == "timm":
            self._build_timm()
        elif cfg.family in ("transformers", "hf_classifier"):
            self._build_transformers()
        else:
            raise TrainingError(f"unknown family {cfg.family!r} (timm or transformers)")

    def _build_timm(self) -> None:
        from natix_miner.experts.timm_classifier import build_timm

        self.module = build_timm(self.cfg.model, self.cfg.weights, num_classes=2)
        if not self._timm_head_in_weights():
            self._zero_head()
        pc = self.module.pretrained_cfg
        self.mean = tuple(pc.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(pc.get("std", (0.229, 0.224, 0.225)))
        self.size = int(self.cfg.image_size or pc.get("input_size", (3, 224, 224))[-1])
        self.head = list(self.module.get_classifier().parameters())

    def _timm_head_in_weights(self) -> bool:
        """Did the weights carry a 2-class head (a checkpoint of ours), or only a backbone?"""
        if not self.cfg.weights:
            return False
        from natix_miner.experts.timm_classifier import load_state_dict

        sd, by_position = load_state_dict(self.cfg.weights)
        if by_position:
            return False
        prefix = self.module.pretrained_cfg.get("classifier", "classifier")
        own = self.module.state_dict()
        keys = [k for k in own if k.startswith(prefix + ".")]
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        return bool(keys) and all(k in sd and tuple(sd[k].shape) == tuple(own[k].shape) for k in keys)

    def _zero_head(self) -> None:
        """A new head starts at zero: p = 0.5 everywhere, no huge first logits (timm's default head
        init scales with 1/sqrt(num_classes), far too large for two classes)."""
        import torch

        with torch.no_grad():
            for p in self.module.get_classifier().parameters():
                p.zero_()

    def _build_transformers(self) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        src = self.cfg.model
        self.module = AutoModelForImageClassification.from_pretrained(
            src, num_labels=2, id2label={0: "None", 1: "Roadwork"}, label2id={"None": 0, "Roadwork": 1},
            ignore_mismatched_sizes=True)
        try:
            proc = AutoImageProcessor.from_pretrained(src)
            self.mean = tuple(proc.image_mean)
            self.std = tuple(proc.image_std)
            size = getattr(proc, "size", {}) or {}
            default = size.get("height") or size.get("shortest_edge") or 224
        except (OSError, ValueError, AttributeError):
            self.mean, self.std, default = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224
            default = getattr(self.module.config, "image_size", default)
        self.size = int(self.cfg.image_size or default)
        self.head = list(self.module.classifier.parameters()) if hasattr(self.module, "classifier") else []

    def train_mode(self) -> None:
        """``train()``, except that a frozen backbone keeps its normalisation statistics."""
        import torch

        self.module.train()
        if self.cfg.freeze_backbone:
            for m in self.module.modules():
                if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)):
                    m.eval()

    def logits(self, x):
        out = self.module(x)
        return out.logits if hasattr(out, "logits") else out

    def trainable_parameters(self):
        head = {id(p) for p in self.head}
        if self.cfg.freeze_backbone and not head:
            raise TrainingError(f"{self.cfg.model}: no classifier head found to train alone")
        params = []
        for p in self.module.parameters():
            p.requires_grad_(id(p) in head or not self.cfg.freeze_backbone)
            if p.requires_grad:
                params.append(p)
        return params

    def export(self, out: Path) -> dict:
        """Write the weights the expert loads; return the profile entry."""
        name = self.cfg.name or Path(self.cfg.out).name.replace(" ", "_") or "trained"
        if self.cfg.family == "timm":
            import torch

            path = out / "best.pth"
            sd = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
            torch.save(sd, path)
            return {"name": name, "family": "timm", "model": self.cfg.model,
                    "options": {"weights": _profile_path(path), "num_classes": 2, "positive_index": 1,
                                "image_size": self.size, "mean": list(self.mean), "std": list(self.std)}}
        from transformers import ViTImageProcessor

        path = out / "best"
        self.module.save_pretrained(str(path))
        ViTImageProcessor(size={"height": self.size, "width": self.size}, image_mean=list(self.mean),
                          image_std=list(self.std), do_resize=True, do_normalize=True).save_pretrained(str(path))
        return {"name": name, "family": "hf_classifier", "model": _profile_path(path),
                "options": {"positive_label": "Roadwork"}}


def _profile_path(path: Path) -> str:
    """Relative to the repository when inside it (profiles resolve such paths), else absolute."""
    from natix_miner.config import REPO_ROOT

    p = path.resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


# ------------------------------------------------------------------------------------------------
# data


def _prepare(img, size: int, mean, std) -> np.ndarray:
    """JPEG bytes or PIL -> the expert's input (CHW float32), as ``imaging.preprocess.to_batch`` does."""
    from natix_miner.imaging.preprocess import resize_rgb

    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    x = resize_rgb(rgb, size, "squash").astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def challenge_view(sample, rng: np.random.Generator, level: int, hflip: bool = False):
    """What the miner receives for this image: validator augmentation at ``level``, JPEG q75, decoded."""
    import io

    from PIL import Image, ImageOps

    from natix_miner.synth.augment import augment

    img = sample.image()
    if hflip:
        img = ImageOps.mirror(img)
    aug = augment(img, rng, level=level)
    with Image.open(io.BytesIO(aug.jpeg())) as im:
        return im.convert("RGB")


class AugmentedDataset:
    """Torch-style dataset; draw ``(seed, epoch, index)`` makes every epoch reproducible."""

    def __init__(self, samples, size, mean, std, levels, hflip: float, seed: int, train: bool):
        self.samples = list(samples)
        self.size, self.mean, self.std = size, mean, std
        self.levels = tuple(levels)
        self.hflip = hflip
        self.seed = seed
        self.train = train
        self.epoch = 0
        # validation: every label spread evenly over the levels (the k-th image of a label gets
        # level k mod len(levels)), so per-level figures always see both classes
        seen: typing.Dict[typing.Any, int] = {}
        self.fixed_levels = []
        for s in self.samples:
            k = seen.get(s.label, 0)
            seen[s.label] = k + 1
            self.fixed_levels.append(self.levels[k % len(self.levels)])

    def __len__(self):
        return len(self.samples)

    def level_of(self, i: int, rng: np.random.Generator) -> int:
        if self.train:
            return int(self.levels[rng.integers(0, len(self.levels))])
        return int(self.fixed_levels[i])  # validation: balanced per label, fixed

    def view(self, i: int):
        """``(PIL view as the miner receives it, label, level)`` of image ``i`` this epoch."""
        s = self.samples[i]
        rng = np.random.default_rng([self.seed, self.epoch if self.train else 10_000, i])
        level = self.level_of(i, rng)
        flip = bool(self.train and rng.random() < self.hflip)
        return challenge_view(s, rng, level, flip), int(s.label), level

    def __getitem__(self, i: int):
        view, label, level = self.view(i)
        return _prepare(view, self.size, self.mean, self.std), label, level


def _collate(batch):
    import torch

    xs, ys, lv = zip(*batch)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys), torch.tensor(lv)


# ------------------------------------------------------------------------------------------------
# loop


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 1% of ``base``; a pure function of the step (resumable)."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def class_weights(labels: typing.Sequence[int]) -> typing.List[float]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=2).astype(np.float64)
    if (counts == 0).any():
        raise TrainingError(f"training data must contain both classes (counts: none={int(counts[0])}, "
                            f"roadwork={int(counts[1])})")
    return (counts.sum() / (2.0 * counts)).tolist()


def predict_dataset(clf: Classifier, ds: AugmentedDataset, device: str, batch_size: int,
                    amp_dtype=None, workers: int = 0) -> typing.Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(roadwork), labels and levels over a dataset (eval mode, no grad)."""
    import torch
    from torch.utils.data import DataLoader

    clf.module.eval()
    probs, labels, levels = [], [], []
    dl = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate)
    with torch.inference_mode():
        for x, y, lv in dl:
            x = x.to(device, non_blocking=True)
            with torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=amp_dtype is not None):
                z = clf.logits(x).float()
            probs.append(torch.softmax(z, dim=1)[:, 1].cpu().numpy())
            labels.append(y.numpy())
            levels.append(lv.numpy())
    if not probs:
        return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(levels)


def evaluate_split(probs, labels, levels) -> dict:
    m = binary_metrics(labels, probs)
    m["per_level"] = {int(lv): binary_metrics(labels[levels == lv], probs[levels == lv])
                      for lv in sorted(set(levels.tolist()))}
    return m


def _atomic_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def train(cfg: TrainConfig, train_samples, val_samples, resume: bool = False,
          on_epoch_end: typing.Optional[typing.Callable[[int, dict], None]] = None) -> dict:
    """Train; returns ``{"best": metrics, "best_epoch", "history", "expert", "out"}``."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    if last.exists() and not resume:
        raise TrainingError(f"{last} exists: pass resume=True (--resume) to continue, or choose another --out")
    if not train_samples:
        raise TrainingError("no training samples")
    if not val_samples:
        raise TrainingError("no validation samples")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    clf = Classifier(cfg)
    clf.module.to(device)
    if device.startswith("cuda"):
        clf.module.to(memory_format=torch.channels_last)
    params = clf.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp_dtype = None
    if cfg.amp and device.startswith("cuda"):
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    weights = class_weights([s.label for s in train_samples]) if cfg.class_weighting else [1.0, 1.0]
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, device=device),
                                        label_smoothing=cfg.label_smoothing)

    train_ds = AugmentedDataset(train_samples, clf.size, clf.mean, clf.std, cfg.levels, cfg.hflip, cfg.seed, True)
    val_ds = AugmentedDataset(val_samples, clf.size, clf.mean, clf.std, cfg.val_levels, 0.0, cfg.seed + 1, False)
    steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs

    start_epoch, step, history = 0, 0, []
    best: typing.Optional[dict] = None
    best_epoch = -1
    expert = None
    if resume and last.exists():
        ck = torch.load(last, map_location=device, weights_only=False)
        clf.module.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_epoch, step, history = ck["epoch"] + 1, ck["step"], ck["history"]
        if ck.get("torch_rng") is not None:  # dropout / drop-path draws continue as if never stopped
            torch.set_rng_state(ck["torch_rng"].cpu())
        if ck.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in ck["cuda_rng"]])
        best, best_epoch, expert = ck.get("best"), ck.get("best_epoch", -1), ck.get("expert")
        log.info("resumed from %s: epoch %d done, continuing at epoch %d", last, ck["epoch"], start_epoch)
        print(f"resumed from {last} at epoch {start_epoch + 1}/{cfg.epochs}", flush=True)

    cfg_dict = dataclasses.asdict(cfg)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        train_ds.epoch = epoch
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=g,
                        num_workers=cfg.workers, collate_fn=_collate, drop_last=len(train_ds) > cfg.batch_size,
                        pin_memory=device.startswith("cuda"), persistent_workers=False)
        clf.train_mode()
        bar = tqdm(dl, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        losses = []
        for i, (x, y, _) in enumerate(bar):
            if i >= steps_per_epoch:
                break
            lr = lr_at(step, total_steps, cfg.lr, cfg.warmup_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if device.startswith("cuda"):
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_fn(clf.logits(x).float(), y)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch + 1} step {i}: lower --lr")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{lr:.2e}")
        bar.close()
        probs, labels, levels = predict_dataset(clf, val_ds, device, cfg.batch_size * 2, amp_dtype, cfg.workers)
        val = evaluate_split(probs, labels, levels)
        rec = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None, "val": val,
               "seconds": round(time.time() - t0, 2), "step": step}
        history.append(rec)
        improved = best is None or val["reward_proxy"] > best["reward_proxy"] + 1e-12
        if improved:
            best, best_epoch = val, epoch + 1
            expert = clf.export(out)
            _write_expert_yaml(out, expert)
        state = {"model": clf.module.state_dict(), "optimizer": opt.state_dict(),
                 "scaler": scaler.state_dict() if scaler.is_enabled() else None, "epoch": epoch, "step": step,
                 "history": history, "best": best, "best_epoch": best_epoch, "expert": expert, "config": cfg_dict,
                 "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        _atomic_save(state, last)
        if cfg.keep_epochs:
            _atomic_save({"model": state["model"], "epoch": epoch}, out / f"epoch_{epoch + 1:03d}.pt")
        (out / "history.json").write_text(json.dumps({"config": cfg_dict, "history": history,
                                                      "best_epoch": best_epoch}, indent=1, default=str))
        lv = " ".join(f"L{k}={v['mcc']:.3f}" for k, v in val["per_level"].items())
        print(f"epoch {epoch + 1}/{cfg.epochs} loss {rec['train_loss'] or 0:.4f} val MCC {val['mcc']:.3f} "
              f"acc {val['accuracy']:.3f} reward {val['reward_proxy']:.3f} [{lv}]"
              f"{' *best*' if improved else ''} ({rec['seconds']:.0f}s)", flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, rec)
    return {"best": best, "best_epoch": best_epoch, "history": history, "expert": expert, "out": str(out)}


def _write_expert_yaml(out: Path, expert: dict) -> None:
    import yaml

    (out / "expert.yaml").write_text(
        "# paste under `experts:` in a profile (and name it in a tier)\n" + yaml.safe_dump([expert], sort_keys=False))
