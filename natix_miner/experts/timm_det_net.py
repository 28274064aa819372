"""The network of the ``timm_det`` family: a CenterNet-style detector on a timm backbone (imports torch).

A pretrained classification backbone (``features_only``) gives stride 8, 16 and 32 maps; a light
FPN adds them top-down into one stride-8 map; three 3x3 heads predict per cell a centre heatmap per
class, the box size (log pixels) and the sub-cell centre offset (Zhou et al., "Objects as Points",
2019). No anchors and no NMS: a 3x3 max-pool keeps the heatmap's local peaks. Small roadwork
objects (a cone 6 px tall in a 224-px frame) sit on the stride-8 grid, which is why the head reads
stride 8 rather than 32.

Imported only where a model is built (the expert's ``load``, the trainer); the family module
:mod:`natix_miner.experts.timm_det` stays free of torch.

Usage::

    from natix_miner.experts.timm_det_net import CenterNet, decode, centernet_targets, centernet_loss
    net = CenterNet("tf_efficientnet_lite0", num_classes=5, backbone_weights="package:efficientnet_lite0")
    out = net(pixels)                                 # {"heatmap", "size", "offset"} at stride 8
    boxes, scores, ids = decode(out, max_det=50, conf=0.05)[0]   # xyxy in input pixels
"""

import math
import typing

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

STRIDE = 8
OUT_INDICES = (2, 3, 4)  # strides 8, 16, 32 of timm's features_only backbones
HEAT_PRIOR = 0.1  # initial heatmap probability (the focal loss's usual start)


def _conv_bn(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class CenterNet(nn.Module):
    """Backbone + top-down FPN to stride 8 + heatmap / size / offset heads.

    ``backbone_weights``: a classification checkpoint for the backbone (``package:efficientnet_lite0``,
    a .pth / .safetensors of the same architecture); None: random init (a trained detector's own
    state dict is loaded over it afterwards)."""

    def __init__(self, arch: str, num_classes: int, width: int = 64,
                 backbone_weights: typing.Optional[str] = None):
        super().__init__()
        import timm

        self.backbone = timm.create_model(arch, pretrained=False, features_only=True, out_indices=OUT_INDICES)
        if backbone_weights:
            from natix_miner.experts.timm_classifier import build_timm

            cls_sd = build_timm(arch, backbone_weights, 0).state_dict()
            own = self.backbone.state_dict()
            fit = {k: v for k, v in cls_sd.items() if k in own and own[k].shape == v.shape}
            if len(fit) < len(own) * 0.9:
                raise RuntimeError(f"{arch}: only {len(fit)}/{len(own)} backbone tensors found in {backbone_weights}")
            self.backbone.load_state_dict(fit, strict=False)
        chans = self.backbone.feature_info.channels()
        reductions = self.backbone.feature_info.reduction()
        if reductions[0] != STRIDE:
            raise RuntimeError(f"{arch}: the first feature map has stride {reductions[0]}, expected {STRIDE}")
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in chans)
        self.smooth = nn.Sequential(_conv_bn(width, width), _conv_bn(width, width))
        self.heatmap = nn.Conv2d(width, num_classes, 3, padding=1)
        self.size = nn.Conv2d(width, 2, 3, padding=1)
        self.offset = nn.Conv2d(width, 2, 3, padding=1)
        nn.init.constant_(self.heatmap.bias, -math.log((1 - HEAT_PRIOR) / HEAT_PRIOR))
        nn.init.normal_(self.heatmap.weight, std=0.01)
        cfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> typing.Dict[str, torch.Tensor]:
        feats = self.backbone(x)
        y = self.lateral[-1](feats[-1])
        for f, lat in zip(reversed(feats[:-1]), reversed(self.lateral[:-1])):
            y = F.interpolate(y, size=f.shape[-2:], mode="nearest") + lat(f)
        y = self.smooth(y)
        return {"heatmap": self.heatmap(y), "size": self.size(y), "offset": self.offset(y)}


def normalise(images_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float, normalised."""
    x = images_uint8.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def decode(out: typing.Mapping[str, torch.Tensor], max_det: int = 50, conf: float = 0.05
           ) -> typing.List[typing.Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image ``(boxes xyxy in input pixels, scores, class ids)``: the heatmap's 3x3 local maxima
    scoring ``>= conf``, at most ``max_det``."""
    heat = torch.sigmoid(out["heatmap"].float())
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    b, k, h, w = peaks.shape
    scores, idx = peaks.reshape(b, -1).topk(min(max_det, k * h * w))
    cls = torch.div(idx, h * w, rounding_mode="floor")
    cell = idx % (h * w)
    ys, xs = torch.div(cell, w, rounding_mode="floor"), cell % w
    size = out["size"].float().reshape(b, 2, -1)
    offset = out["offset"].float().reshape(b, 2, -1)
    res = []
    for i in range(b):
        keep = scores[i] >= conf
        c = cell[i][keep]
        cx = (xs[i][keep].float() + offset[i, 0, c]) * STRIDE
        cy = (ys[i][keep].float() + offset[i, 1, c]) * STRIDE
        wh = size[i][:, c].clamp(max=10.0).exp()
        boxes = torch.stack([cx - wh[0] / 2, cy - wh[1] / 2, cx + wh[0] / 2, cy + wh[1] / 2], dim=1)
        res.append((boxes.cpu().numpy(), scores[i][keep].cpu().numpy(), cls[i][keep].cpu().numpy()))
    return res


def _radius(w: float, h: float, min_overlap: float = 0.7) -> float:
    """Gaussian radius (cells) of a ``w`` x ``h`` box (in cells): CornerNet's rule, simplified."""
    a, b = h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    return max(0.0, (a - math.sqrt(a * a - 4 * b)) / 4)


def centernet_targets(boxes: typing.Sequence[typing.Sequence[float]], classes: typing.Sequence[int],
                      num_classes: int, size: int) -> typing.Dict[str, np.ndarray]:
    """Training targets of one image of side ``size`` with ``boxes`` (xyxy, input pixels): gaussian
    heatmap ``(K, S, S)`` (S = size / 8), and per object its cell index, log size and offset."""
    s = size // STRIDE
    heat = np.zeros((num_classes, s, s), np.float32)
    ind, wh, off = [], [], []
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32)
    for (x0, y0, x1, y1), c in zip(boxes, classes):
        w, h = max(1.0, x1 - x0), max(1.0, y1 - y0)
        cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
        ix, iy = min(s - 1, max(0, int(cx))), min(s - 1, max(0, int(cy)))
        sigma = (2 * max(0.0, _radius(w / STRIDE, h / STRIDE)) + 1) / 6
        g = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma))
        np.maximum(heat[c], g, out=heat[c])
        heat[c, iy, ix] = 1.0
        ind.append(iy * s + ix)
        wh.append((math.log(w), math.log(h)))
        off.append((cx - ix, cy - iy))
    return {"heatmap": heat, "ind": np.asarray(ind, np.int64), "wh": np.asarray(wh, np.float32).reshape(-1, 2),
            "offset": np.asarray(off, np.float32).reshape(-1, 2)}


def centernet_loss(out: typing.Mapping[str, torch.Tensor], targets: typing.Sequence[typing.Mapping[str, np.ndarray]],
                   size_weight: float = 0.1) -> typing.Tuple[torch.Tensor, typing.Dict[str, float]]:
    """Focal loss on the heatmap (alpha 2, beta 4), L1 on log size and offset at the object centres,
    normalised by the number of objects. Returns ``(loss, {"heat", "size", "offset"})``."""
    dev = out["heatmap"].device
    gt = torch.from_numpy(np.stack([t["heatmap"] for t in targets])).to(dev)
    pred = torch.sigmoid(out["heatmap"].float()).clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float()
    neg_w = (1 - gt).pow(4)
    pos_loss = (torch.log(pred) * (1 - pred).pow(2) * pos).sum()
    neg_loss = (torch.log(1 - pred) * pred.pow(2) * neg_w * (1 - pos)).sum()
    n = pos.sum().clamp(min=1.0)
    heat = -(pos_loss + neg_loss) / n
    size_l = torch.zeros((), device=dev)
    off_l = torch.zeros((), device=dev)
    count = sum(len(t["ind"]) for t in targets)
    if count:
        b_idx = torch.cat([torch.full((len(t["ind"]),), i, dtype=torch.long) for i, t in enumerate(targets)]).to(dev)
        ind = torch.from_numpy(np.concatenate([t["ind"] for t in targets])).to(dev)
        wh = torch.from_numpy(np.concatenate([t["wh"] for t in targets])).to(dev)
        off = torch.from_numpy(np.concatenate([t["offset"] for t in targets])).to(dev)
        ps = out["size"].float().flatten(2)[b_idx, :, ind]
        po = out["offset"].float().flatten(2)[b_idx, :, ind]
        size_l = F.l1_loss(ps, wh, reduction="sum") / count
        off_l = F.l1_loss(po, off, reduction="sum") / count
    loss = heat + size_weight * size_l + off_l
    return loss, {"heat": float(heat.detach()), "size": float(size_l.detach()), "offset": float(off_l.detach())}
