"""Binary metrics the way the validator counts them, plus what calibration needs.

The validator turns an answer into a class with ``numpy.round`` (0.5 -> 0), scores
``(0.5 * MCC + 0.5 * accuracy) ** 3`` and floors MCC at 0. Over a whole evaluation set the
same formula is the *reward proxy* used to pick checkpoints and compare profiles.

Usage::

    from natix_miner.training.metrics import binary_metrics, best_threshold
    m = binary_metrics(labels, probs)           # {"mcc", "accuracy", "reward_proxy", "confusion", ...}
    t, mcc = best_threshold(labels, probs)      # the threshold that maximises MCC
"""

import math
import typing

import numpy as np

ArrayLike = typing.Union[typing.Sequence[float], np.ndarray]


def as_arrays(labels: ArrayLike, probs: ArrayLike) -> typing.Tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.size}) and probabilities ({p.size}) differ in length")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y, p


def round_like_validator(probs: ArrayLike) -> np.ndarray:
    """``numpy.round`` of the clamped answer: exactly 0.5 is class 0 (round half to even)."""
    p = np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.0)
    return np.round(np.clip(p, 0.0, 1.0)).astype(np.int64)


def mcc_from_confusion(tn: int, fp: int, fn: int, tp: int) -> float:
    den = math.sqrt(float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn))
    if den == 0.0:
        return 0.0
    return float(tp * tn - fp * fn) / den


def reward_proxy(mcc: float, accuracy: float) -> float:
    """The validator's per-query reward formula applied to whole-set figures (MCC floored at 0)."""
    from natix_miner.validator.reward import query_reward  # the validator's own formula

    return query_reward(1.0, max(0.0, float(mcc)), float(accuracy))  # 1.0: an answered, in-range query


def confusion(labels: ArrayLike, preds: ArrayLike) -> typing.Dict[str, int]:
    y = np.asarray(labels, dtype=np.int64)
    q = np.asarray(preds, dtype=np.int64)
    return {"tn": int(((y == 0) & (q == 0)).sum()), "fp": int(((y == 0) & (q == 1)).sum()),
            "fn": int(((y == 1) & (q == 0)).sum()), "tp": int(((y == 1) & (q == 1)).sum())}


def binary_metrics(labels: ArrayLike, probs: ArrayLike, threshold: typing.Optional[float] = None) -> dict:
    """MCC, accuracy, reward proxy, confusion matrix, precision / recall, log-loss, Brier, ECE.

    ``threshold=None`` classifies like the validator (``numpy.round``); a number classifies
    ``p > threshold`` (for "what if" comparisons).
    """
    y, p = as_arrays(labels, probs)
    n = int(y.size)
    if n == 0:
        return {"n": 0, "mcc": 0.0, "accuracy": 0.0, "reward_proxy": 0.0,
                "confusion": {"tn": 0, "fp": 0, "fn": 0, "tp": 0}}
    q = round_like_validator(p) if threshold is None else (p > threshold).astype(np.int64)
    cm = confusion(y, q)
    mcc = mcc_from_confusion(cm["tn"], cm["fp"], cm["fn"], cm["tp"])
    acc = (cm["tn"] + cm["tp"]) / n
    pc = np.clip(np.nan_to_num(p, nan=0.5), 1e-7, 1 - 1e-7)
    out = {
        "n": n,
        "positives": int(y.sum()),
        "mcc": mcc,
        "accuracy": acc,
        "reward_proxy": reward_proxy(mcc, acc),
        "confusion": cm,
        "precision": cm["tp"] / (cm["tp"] + cm["fp"]) if cm["tp"] + cm["fp"] else 0.0,
        "recall": cm["tp"] / (cm["tp"] + cm["fn"]) if cm["tp"] + cm["fn"] else 0.0,
        "log_loss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
        "brier": float(np.mean((pc - y) ** 2)),
        "ece": expected_calibration_error(y, pc),
    }
    return out


def mcc_curve(labels: ArrayLike, probs: ArrayLike, grid: int = 199) -> typing.Tuple[np.ndarray, np.ndarray]:
    """MCC of ``p > t`` for ``t`` on a grid over (0, 1) (denser near the ends in logit space)."""
    y, p = as_arrays(labels, probs)
    z = np.linspace(-7.0, 7.0, grid)
    ts = 1.0 / (1.0 + np.exp(-z))
    order = np.argsort(p)
    ps, ys = p[order], y[order]
    pos_total = int(ys.sum())
    neg_total = int(ys.size - pos_total)
    cum_pos = np.concatenate([[0], np.cumsum(ys)])  # positives among the k lowest
    idx = np.searchsorted(ps, ts, side="right")  # how many p <= t (predicted 0)
    fn = cum_pos[idx]
    tn = idx - fn
    tp = pos_total - fn
    fp = neg_total - tn
    num = tp * tn - fp * fn
    den = np.sqrt((tp + fp).astype(float) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return ts, mcc


def best_threshold(labels: ArrayLike, probs: ArrayLike, smooth: int = 7) -> typing.Tuple[float, float]:
    """The threshold that maximises MCC, and that MCC.

    The curve is smoothed (moving average of ``smooth`` grid points in logit space) so that a
    small set does not pick a lucky spike; among equal maxima the middle one wins.
    """
    ts, mcc = mcc_curve(labels, probs)
    if smooth > 1:
        k = np.ones(smooth) / smooth
        padded = np.pad(mcc, smooth // 2, mode="edge")
        sm = np.convolve(padded, k, mode="valid")
    else:
        sm = mcc
    best = np.flatnonzero(sm >= sm.max() - 1e-12)
    i = int(best[len(best) // 2])
    return float(ts[i]), float(mcc[i])


def reliability_bins(labels: ArrayLike, probs: ArrayLike, bins: int = 10) -> typing.List[dict]:
    """Equal-width bins: mean predicted probability, observed positive rate, count."""
    y, p = as_arrays(labels, probs)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        c = int(m.sum())
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": c,
                    "mean_p": float(p[m].mean()) if c else None,
                    "frac_pos": float(y[m].mean()) if c else None})
    return out


def expected_calibration_error(labels: ArrayLike, probs: ArrayLike, bins: int = 10) -> float:
    y, p = as_arrays(labels, probs)
    if y.size == 0:
        return 0.0
    total = 0.0
    for b in reliability_bins(y, p, bins):
        if b["count"]:
            total += b["count"] * abs(b["mean_p"] - b["frac_pos"])
    return float(total / y.size)


def pr_curve(labels: ArrayLike, probs: ArrayLike) -> dict:
    """Precision-recall curve and average precision (scikit-learn)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, p = as_arrays(labels, probs)
    if y.size == 0 or y.min() == y.max():
        return {"precision": [], "recall": [], "average_precision": None}
    prec, rec, _ = precision_recall_curve(y, p)
    return {"precision": prec.tolist(), "recall": rec.tolist(),
            "average_precision": float(average_precision_score(y, p))}


def summarize(labels: ArrayLike, probs: ArrayLike) -> dict:
    """``binary_metrics`` plus the best threshold and its MCC (how far 0.5 is from optimal)."""
    y, p = as_arrays(labels, probs)
    m = binary_metrics(y, p)
    if y.size and 0 < y.sum() < y.size:
        t, tm = best_threshold(y, p)
        m["best_threshold"] = t
        m["mcc_at_best_threshold"] = tm
    return m
