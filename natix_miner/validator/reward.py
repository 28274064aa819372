"""The StreetVision reward, exactly as a validator computes it (spec section 3).

Per validator and per miner UID, a history of the last 100 answers (reset when the UID's hotkey
changes). For each scored query::

    reward = (0.5 * MCC(last 100) + 0.5 * accuracy(last 10)) ** 3

with these rules, all taken from the validator's own code:

* a query with no answer (prediction still ``-1``) is stored in the history but skipped by the
  metrics, and scores 0;
* predictions are rounded with ``numpy.round`` (0.5 -> 0, 1.5 -> 2, -0.5 -> -0);
* MCC is floored at 0 and is 0 unless the window's labels hold both classes (sklearn's MCC is
  itself 0 when the predictions hold one class);
* a prediction outside [0, 1] scores 0 for that query (it still enters the history);
* the metrics are sklearn's ``accuracy/precision/recall/f1/matthews/roc_auc``; when any of them
  raises - a NaN, an infinity, a rounded value outside {0, 1} that makes the targets multiclass -
  every metric of that window is 0, for as long as the entry stays in the window;
* the validator keeps ``score = 0.05 * reward + 0.95 * score`` per UID (NaN rewards become 0).

The common case (every rounded prediction in {0, 1}) is computed with numpy; any other window goes
through sklearn itself, so its exceptions decide exactly as they do on a validator.

Usage::

    scorer = Scorer()
    q = scorer.score(uid=3, hotkey="5F...", prediction=0.91, label=1)
    q.reward, q.mcc_100, q.accuracy_10, q.broken, scorer.ema[3]
    window_metrics([0.9, 0.2, -1], [1, 0, 1])     # WindowMetrics(accuracy=1.0, mcc=1.0, n=2, ...)
"""

import collections
import dataclasses
import math
import typing

import numpy as np

HISTORY = 100
MCC_WINDOW = 100
ACCURACY_WINDOW = 10
REWARD_EXPONENT = 3.0
EMA_ALPHA = 0.05
NO_ANSWER = -1.0


@dataclasses.dataclass(frozen=True)
class WindowMetrics:
    accuracy: float = 0.0
    mcc: float = 0.0
    n: int = 0              # answered entries the metrics saw
    broken: bool = False    # the validator's metric code raised: everything is 0


def _is_no_answer(p) -> bool:
    try:
        return bool(p == NO_ANSWER)
    except Exception:  # noqa: BLE001
        return False


def binary_mcc(labels: np.ndarray, preds: np.ndarray) -> float:
    tp = float(np.sum((labels == 1) & (preds == 1)))
    tn = float(np.sum((labels == 0) & (preds == 0)))
    fp = float(np.sum((labels == 0) & (preds == 1)))
    fn = float(np.sum((labels == 1) & (preds == 0)))
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else (tp * tn - fp * fn) / denom


def _sklearn_metrics(labels: np.ndarray, probs: np.ndarray, rounded: np.ndarray) -> WindowMetrics:
    """The validator's exact code path (used only for windows the fast path cannot decide)."""
    import warnings

    from sklearn.metrics import (accuracy_score, f1_score, matthews_corrcoef, precision_score,
                                 recall_score, roc_auc_score)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            accuracy = accuracy_score(labels, rounded)
            precision_score(labels, rounded, zero_division=0)
            recall_score(labels, rounded, zero_division=0)
            f1_score(labels, rounded, zero_division=0)
            two = len(np.unique(labels)) > 1
            mcc = max(0, matthews_corrcoef(labels, rounded)) if two else 0.0
            if two:
                roc_auc_score(labels, probs)
    except Exception:  # noqa: BLE001 - the validator returns empty metrics on any error
        return WindowMetrics(n=len(labels), broken=True)
    return WindowMetrics(accuracy=float(accuracy), mcc=float(mcc), n=len(labels))


def window_metrics(predictions: typing.Sequence[float], labels: typing.Sequence[int]) -> WindowMetrics:
    """Accuracy and MCC of one window, as ``MinerPerformanceTracker.get_metrics`` computes them."""
    keep = [i for i, p in enumerate(predictions) if not _is_no_answer(p)]
    if not keep:
        return WindowMetrics()
    probs = np.array([predictions[i] for i in keep], dtype=np.float64)
    y = np.array([labels[i] for i in keep])
    with np.errstate(invalid="ignore"):
        rounded = np.round(probs)
    clean = bool(np.all(np.isfinite(rounded)) and np.all((rounded == 0) | (rounded == 1))
                 and np.all((y == 0) | (y == 1)))
    if not clean:
        return _sklearn_metrics(y, probs, rounded)
    accuracy = float(np.mean(rounded == y))
    mcc = max(0.0, binary_mcc(y, rounded)) if len(np.unique(y)) > 1 else 0.0
    return WindowMetrics(accuracy=accuracy, mcc=mcc, n=len(y))


def in_range_penalty(prediction: float) -> float:
    """1.0 for a prediction in [0, 1], else 0.0 (NaN compares false both ways: 1.0)."""
    return 0.0 if (prediction < 0.0) or (prediction > 1.0) else 1.0


def query_reward(prediction: float, mcc_100: float, accuracy_10: float,
                 exponent: float = REWARD_EXPONENT) -> float:
    if _is_no_answer(prediction):
        return 0.0
    r = (0.5 * mcc_100 + 0.5 * accuracy_10) * in_range_penalty(prediction)
    return float(r ** exponent)


class PerformanceTracker:
    """Per-UID history of (prediction, label), ``HISTORY`` deep, reset on a hotkey change."""

    def __init__(self, history: int = HISTORY):
        self.history = history
        self.predictions: typing.Dict[int, collections.deque] = {}
        self.labels: typing.Dict[int, collections.deque] = {}
        self.hotkeys: typing.Dict[int, str] = {}

    def reset(self, uid: int, hotkey: str) -> None:
        self.predictions[uid] = collections.deque(maxlen=self.history)
        self.labels[uid] = collections.deque(maxlen=self.history)
        self.hotkeys[uid] = hotkey

    def update(self, uid: int, prediction: float, label: int, hotkey: str) -> None:
        if uid not in self.predictions or self.hotkeys.get(uid) != hotkey:
            self.reset(uid, hotkey)
        self.predictions[uid].append(prediction)
        self.labels[uid].append(int(label))

    def metrics(self, uid: int, window: typing.Optional[int] = None) -> WindowMetrics:
        if uid not in self.predictions:
            return WindowMetrics()
        preds, labels = list(self.predictions[uid]), list(self.labels[uid])
        if window is not None:
            window = min(window, len(preds))
            preds, labels = preds[-window:], labels[-window:]
        return window_metrics(preds, labels)


@dataclasses.dataclass(frozen=True)
class QueryScore:
    reward: float
    mcc_100: float
    accuracy_10: float
    broken: bool        # a window's metrics were zeroed by a NaN / out-of-range entry
    ema: float


class Scorer:
    """One validator's bookkeeping: tracker, per-query reward, EMA score per UID."""

    def __init__(self, history: int = HISTORY, alpha: float = EMA_ALPHA, exponent: float = REWARD_EXPONENT):
        self.tracker = PerformanceTracker(history)
        self.alpha = alpha
        self.exponent = exponent
        self.ema: typing.Dict[int, float] = {}

    def score(self, uid: int, hotkey: str, prediction: float, label: int) -> QueryScore:
        if uid in self.tracker.hotkeys and self.tracker.hotkeys[uid] != hotkey:
            self.ema[uid] = 0.0  # a replaced hotkey starts from zero
        self.tracker.update(uid, prediction, label, hotkey)
        m100 = self.tracker.metrics(uid, MCC_WINDOW)
        m10 = self.tracker.metrics(uid, ACCURACY_WINDOW)
        reward = query_reward(prediction, m100.mcc, m10.accuracy, self.exponent)
        if math.isnan(reward):
            reward = 0.0
        ema = self.alpha * reward + (1.0 - self.alpha) * self.ema.get(uid, 0.0)
        self.ema[uid] = ema
        return QueryScore(reward=reward, mcc_100=m100.mcc, accuracy_10=m10.accuracy,
                          broken=m100.broken or m10.broken, ema=ema)
