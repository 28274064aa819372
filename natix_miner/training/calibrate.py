"""Calibration so that the validator's fixed 0.5 threshold is the best one for MCC.

The validator classifies with ``numpy.round(p)``; whatever threshold maximises MCC on held-out
data must therefore sit at 0.5. Three tools, all on logits ``z``:

* :func:`fit_temperature` - ``p = sigmoid((z + bias) / T)`` (Platt scaling written as the
  consensus' own ``bias`` and ``temperature``), then the bias is shifted so the MCC-best
  threshold maps to 0.5 (unless 0.5 is already within one standard error of the best MCC:
  :func:`threshold_to_move` never moves the threshold on noise);
* :func:`fit_isotonic` - a monotone piecewise-linear map of ``z`` (scikit-learn isotonic
  regression) whose outputs are remapped so the MCC-best threshold becomes 0.5;
* :func:`fit_consensus` - a profile's consensus weights and bias by logistic regression on its
  experts' logits (``z = bias + sum_i w_i * logit_i``; abstentions are NaN, i.e. absent), weights kept
  non-negative by default, bias shifted as above; one rule per tier (``stages``) on the experts
  the cascade has seen when it stops there, since the engine pools with that tier's rule.

:func:`write_consensus` stores the result beside the profile as ``<profile>.consensus.json``,
which :func:`natix_miner.config.load_profile` merges on load.

Usage::

    from natix_miner.training.calibrate import fit_consensus, write_consensus
    fit = fit_consensus(X, y, names, tiers=[("fast", ["a"]), ("heavy", ["b", "c"])])
    write_consensus(profile, fit, meta={"data": "data/val"})   # X: (n, experts) logits, y: 0/1
"""

import dataclasses
import datetime
import json
import math
import typing
from pathlib import Path

import numpy as np

from natix_miner.training.metrics import best_threshold

LOGIT_CLIP = 30.0


def sigmoid(z):
    z = np.clip(np.asarray(z, dtype=np.float64), -LOGIT_CLIP, LOGIT_CLIP)
    return 1.0 / (1.0 + np.exp(-z))


def logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


@dataclasses.dataclass
class Calibration:
    """A fitted map from a raw logit ``z`` to a probability."""

    method: str  # "temperature" | "isotonic" | "none"
    temperature: float = 1.0
    bias: float = 0.0
    iso_x: typing.Optional[typing.List[float]] = None  # knots in logit space
    iso_y: typing.Optional[typing.List[float]] = None  # probabilities at the knots
    threshold_before: typing.Optional[float] = None  # MCC-best threshold before the shift

    def __call__(self, z) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(z, self.iso_x, self.iso_y)
        return sigmoid((z + self.bias) / self.temperature)

    def to_dict(self) -> dict:
        d = {"method": self.method, "temperature": self.temperature, "bias": self.bias}
        if self.method == "isotonic":
            d["isotonic"] = {"x": self.iso_x, "y": self.iso_y}
        if self.threshold_before is not None:
            d["threshold_before"] = self.threshold_before
        return d


def _check(z, y) -> typing.Tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    if z.shape[0] != y.size:
        raise ValueError(f"{z.shape[0]} logits but {y.size} labels")
    if y.size < 4 or y.min() == y.max():
        raise ValueError("calibration needs labelled data with both classes (at least 4 images)")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinity")
    return z, y


def _logistic(X: np.ndarray, y: np.ndarray, l2: float, nonneg: bool,
              fit_bias: bool = True) -> typing.Tuple[np.ndarray, float]:
    """Binary logistic regression by L-BFGS-B (bounds give non-negative weights)."""
    from scipy.optimize import minimize

    n, k = X.shape
    yf = y.astype(np.float64)

    def loss(theta):
        w, b = theta[:k], (theta[k] if fit_bias else 0.0)
        z = X @ w + b
        # log(1 + e^z) - y z, stable
        lse = np.logaddexp(0.0, z)
        f = np.mean(lse - yf * z) + 0.5 * l2 * float(w @ w)
        r = (sigmoid(z) - yf) / n
        g = np.concatenate([X.T @ r + l2 * w, [r.sum()] if fit_bias else []])
        return f, g

    theta0 = np.concatenate([np.full(k, 1.0 / max(k, 1)), [0.0] if fit_bias else []])
    bounds = [(0.0, None) if nonneg else (None, None)] * k + ([(None, None)] if fit_bias else [])
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", bounds=bounds)
    w = res.x[:k]
    b = float(res.x[k]) if fit_bias else 0.0
    return w, b


def threshold_to_move(y, p) -> float:
    """The threshold that should become 0.5: the MCC-best one, unless 0.5 is already within one
    standard error of the best MCC (``(1 - MCC^2) / sqrt(n - 1)``); then 0.5 stays. A flat MCC curve
    on a small or weak set must not move the threshold on noise."""
    from natix_miner.training.metrics import binary_metrics

    y = np.asarray(y)
    t, best = best_threshold(y, p)
    at_half = binary_metrics(y, p)["mcc"]
    se = (1.0 - best ** 2) / math.sqrt(max(1, y.size - 1))
    return 0.5 if at_half >= best - se else t


def fit_temperature(z, y, shift: bool = True) -> Calibration:
    """Temperature and bias by maximum likelihood, then the bias shift that puts MCC's best at 0.5."""
    z, y = _check(z, y)
    w, b = _logistic(z.reshape(-1, 1), y, l2=0.0, nonneg=False)
    a = float(w[0])
    if a <= 1e-6:
        raise ValueError("the logits do not separate the classes (fitted slope <= 0): nothing to calibrate")
    cal = Calibration("temperature", temperature=1.0 / a, bias=b / a)
    if shift:
        t = threshold_to_move(y, cal(z))
        cal.threshold_before = t
        cal.bias -= cal.temperature * float(logit(t))
    return cal


def fit_isotonic(z, y, shift: bool = True, eps: float = 1e-3) -> Calibration:
    """Isotonic regression of the label on ``z``, stored as knots; the MCC-best threshold maps to 0.5."""
    from sklearn.isotonic import IsotonicRegression

    z, y = _check(z, y)
    iso = IsotonicRegression(y_min=eps, y_max=1 - eps, increasing=True, out_of_bounds="clip")
    iso.fit(z, y)
    xs = np.asarray(iso.X_thresholds_, dtype=np.float64)
    ys = np.asarray(iso.y_thresholds_, dtype=np.float64)
    cal = Calibration("isotonic", iso_x=xs.tolist(), iso_y=ys.tolist())
    if shift:
        t = threshold_to_move(y, cal(z))
        cal.threshold_before = t
        cal.iso_y = remap_threshold(ys, t).tolist()
    return cal


def remap_threshold(p, t: float) -> np.ndarray:
    """Monotone piecewise-linear map of [0, t] onto [0, 0.5] and [t, 1] onto [0.5, 1]."""
    p = np.asarray(p, dtype=np.float64)
    t = float(min(max(t, 1e-6), 1 - 1e-6))
    out = np.where(p <= t, 0.5 * p / t, 0.5 + 0.5 * (p - t) / (1 - t))
    # "p > t" was class 1 before; keep it strictly above 0.5 so numpy.round agrees
    out = np.where((p > t) & (out <= 0.5), np.nextafter(0.5, 1.0), out)
    return out


def calibrate_logits(z, y, method: str = "temperature", shift: bool = True) -> Calibration:
    if method == "temperature":
        return fit_temperature(z, y, shift=shift)
    if method == "isotonic":
        return fit_isotonic(z, y, shift=shift)
    raise ValueError(f"unknown calibration method {method!r} (temperature or isotonic)")


@dataclasses.dataclass
class StageFit:
    """One pooling rule (the keys of ``ConsensusStage``) and how it was obtained."""

    weights: typing.Dict[str, float]
    bias: float = 0.0
    normalize: bool = False
    temperature: float = 1.0
    calibration: typing.Optional[Calibration] = None  # isotonic knots live here

    def pooled_logit(self, X: np.ndarray, names: typing.Sequence[str]) -> np.ndarray:
        """The engine's pooling (:func:`natix_miner.engine.policy.pooled_logit`) on a logit matrix,
        before bias; 0 where nobody took part (abstentions and absent experts are NaN in ``X``)."""
        from natix_miner.engine.policy import pooled_logit

        return np.nan_to_num(pooled_logit(self.weights, self.normalize, names, X), nan=0.0)

    def probability(self, X: np.ndarray, names: typing.Sequence[str]) -> np.ndarray:
        z = self.pooled_logit(X, names)
        if self.calibration is not None and self.calibration.method == "isotonic":
            return self.calibration(z)
        return sigmoid((z + self.bias) / self.temperature)

    def rule(self) -> dict:
        d = {"weights": {k: round(float(v), 6) for k, v in self.weights.items()},
             "bias": round(float(self.bias), 6), "normalize": bool(self.normalize),
             "temperature": round(float(self.temperature), 6)}
        if self.calibration is not None and self.calibration.method == "isotonic":
            d["isotonic"] = {"x": list(self.calibration.iso_x), "y": list(self.calibration.iso_y)}
        return d


@dataclasses.dataclass
class ConsensusFit:
    """What goes into ``<profile>.consensus.json``: the default rule plus one rule per tier
    (``stages``), used when the cascade stops after that tier."""

    default: StageFit
    stages: typing.Dict[str, StageFit] = dataclasses.field(default_factory=dict)
    metrics: typing.Dict[str, typing.Any] = dataclasses.field(default_factory=dict)


def fit_logistic(X, y, names: typing.Sequence[str], l2: float = 1e-3, nonneg: bool = True,
                 shift: bool = True) -> StageFit:
    """Weights and bias of the log-odds pool by logistic regression on the experts' logits."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(f"logit matrix shape {X.shape} does not match {len(names)} experts")
    X, y = _check(np.nan_to_num(X, nan=0.0), y)  # an abstention adds nothing to the pool: logit 0
    w, b = _logistic(X, y, l2=l2, nonneg=nonneg)
    if not np.any(w > 1e-9):
        raise ValueError(f"no expert among {list(names)} separates the classes on this data")
    fit = StageFit(weights={n: float(wi) for n, wi in zip(names, w)}, bias=b, normalize=False)
    if shift:
        z = fit.pooled_logit(X, names) + fit.bias
        t = threshold_to_move(y, sigmoid(z))
        fit.bias -= float(logit(t))
        fit.calibration = Calibration("temperature", 1.0, fit.bias, threshold_before=t)
    return fit


def calibrate_rule(X, y, names: typing.Sequence[str], current, method: str = "temperature",
                   shift: bool = True) -> StageFit:
    """Keep a rule's weights (``current``: a ConsensusStage) and calibrate its pooled logit."""
    fit = StageFit(weights={n: float(current.weights.get(n, 1.0)) for n in names}, bias=0.0,
                   normalize=bool(current.normalize))
    z = fit.pooled_logit(np.asarray(X, dtype=np.float64), names)
    cal = calibrate_logits(z, y, method=method, shift=shift)
    fit.calibration = cal
    # an isotonic rule is applied by the engine as written; bias / temperature also get a
    # temperature fit (used by the bulk path's on-card pooling and as a readable summary)
    tcal = cal if method == "temperature" else fit_temperature(z, y, shift=shift)
    fit.bias, fit.temperature = tcal.bias, tcal.temperature
    return fit


def fit_consensus(X, y, names: typing.Sequence[str],
                  tiers: typing.Optional[typing.Sequence[typing.Tuple[str, typing.Sequence[str]]]] = None,
                  method: str = "logistic", current=None, **kw) -> ConsensusFit:
    """Fit the default rule on every expert, and one rule per tier on the experts up to that tier.

    ``method``: ``logistic`` (weights and bias), ``temperature`` or ``isotonic`` (keep the
    profile's weights, ``current`` = its ConsensusSpec, calibrate the pooled logit).
    """
    X = np.asarray(X, dtype=np.float64)
    names = list(names)

    def one(cols: typing.Sequence[str], rule) -> StageFit:
        idx = [names.index(c) for c in cols]
        sub = X[:, idx]
        if method == "logistic":
            return fit_logistic(sub, y, cols, **kw)
        return calibrate_rule(sub, y, cols, rule, method=method, shift=kw.get("shift", True))

    default = one(names, current)
    stages: typing.Dict[str, StageFit] = {}
    seen: typing.List[str] = []
    for i, (tier, experts) in enumerate(tiers or []):
        seen.extend(e for e in experts if e in names)
        if not seen:
            continue
        if i == len(tiers) - 1 and seen == names:
            stages[tier] = default
            continue
        rule = current.stages.get(tier, current) if current is not None else None
        stages[tier] = one(list(seen), rule)
    return ConsensusFit(default=default, stages=stages)


def write_consensus(profile, fit: ConsensusFit, meta: typing.Optional[dict] = None,
                    path: typing.Optional[typing.Union[str, Path]] = None) -> Path:
    """Write ``<profile>.consensus.json``: the keys config.py merges (``weights``, ``bias``,
    ``normalize``, ``temperature``, ``stages``) plus metadata (date, data, metrics, calibration)."""
    target = Path(path) if path else profile.consensus_file
    if target is None:
        raise ValueError("the profile has no file path; pass path=")
    doc = fit.default.rule()
    if fit.stages:
        doc["stages"] = {k: v.rule() for k, v in fit.stages.items()}
    for key in ("bias", "temperature"):
        vals = [doc[key]] + [v[key] for v in doc.get("stages", {}).values()]
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"refusing to write a non-finite {key}")
    cals = {"default": fit.default.calibration.to_dict()} if fit.default.calibration else {}
    cals.update({k: v.calibration.to_dict() for k, v in fit.stages.items() if v.calibration})
    if cals:
        doc["calibration"] = cals
    doc["profile"] = getattr(profile, "name", None)
    doc["fitted_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    doc.update(meta or {})
    if fit.metrics:
        doc["metrics"] = fit.metrics
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    tmp.replace(target)
    return target


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


# ------------------------------------------------------------------------------------------------
# the whole step: a profile's experts on labelled challenges -> <profile>.consensus.json


def _spec_from_fit(current, fit: ConsensusFit):
    """A ConsensusSpec with the fitted rules (for replaying the cascade with them)."""
    from natix_miner.config import ConsensusSpec

    doc = fit.default.rule()
    doc["stages"] = {k: v.rule() for k, v in fit.stages.items()}
    return ConsensusSpec.model_validate(doc)


def expert_calibrations(evidence, y) -> typing.Dict[str, dict]:
    """Detector experts report ``detail["raw"]``: fit their own ``options.calibration: {a, b}``."""
    from natix_miner.experts.detection import fit_calibration

    out = {}
    for name, col in evidence.items():
        idx = [i for i, ev in enumerate(col) if ev is not None and "raw" in (ev.detail or {})]
        if len(idx) < 4 or len({int(y[i]) for i in idx}) < 2:
            continue
        a, b = fit_calibration([col[i].detail["raw"] for i in idx], [int(y[i]) for i in idx])
        out[name] = {"a": round(float(a), 6), "b": round(float(b), 6), "n": len(idx)}
    return out


def calibrate_profile(profile, data: str, n: typing.Optional[int] = None, seed: int = 0,
                      method: str = "logistic", holdout: float = 0.25, all_levels: bool = False,
                      nonneg: bool = True, write: bool = True, progress: bool = True, samples=None,
                      keep_evidence: bool = False) -> dict:
    """Run every expert of ``profile`` on labelled challenges made from ``data``, fit the consensus
    (``method``: logistic | temperature | isotonic) on part of them, report the cascade's metrics
    before and after on the held-out rest, and write ``<profile>.consensus.json``.

    ``keep_evidence``: the result also holds ``evidence`` (expert -> [Evidence]) and ``labels`` of
    every challenge, for :func:`fit_escalation`."""
    import asyncio

    from natix_miner.config import Profile, load_profile
    from natix_miner.engine.consensus import Consensus
    from natix_miner.imaging.decode import decode_bytes
    from natix_miner.training.datasets import load_samples
    from natix_miner.training.evaluate import make_challenges
    from natix_miner.training.metrics import binary_metrics, summarize
    from natix_miner.training.runner import ProfileRunner, logit_matrix, replay_cascade

    if method not in ("logistic", "temperature", "isotonic"):
        raise ValueError(f"unknown method {method!r} (logistic, temperature or isotonic)")
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    if write and prof.consensus_file is not None:
        from natix_miner.resources import check_writable

        check_writable(prof.consensus_file, "the fitted consensus", prof.path)  # before the run, not after it
    if samples is None:
        samples = load_samples(data, limit=n, seed=seed, labelled=True, progress=progress)
    ch = make_challenges(samples, seed=seed, all_levels=all_levels, progress=progress)
    views = [decode_bytes(c.jpeg) for c in ch]
    y = np.array([c.label for c in ch])
    levels = np.array([c.level for c in ch])

    async def run():
        async with ProfileRunner(prof, progress=progress) as r:
            return await r.all_evidence(views, desc="experts"), r.expert_names

    evidence, names = asyncio.run(run())
    names = [nm for nm in names if nm in evidence]
    if not names:
        raise RuntimeError(f"no expert of {prof.name} could be loaded")
    X = logit_matrix(evidence, names, n=len(ch))
    # hold out whole images (all their levels), not single challenges
    keys = sorted({c.key for c in ch})
    rng = np.random.default_rng(seed)
    held = set(rng.choice(len(keys), size=int(round(len(keys) * holdout)), replace=False).tolist()) \
        if 0 < holdout < 1 and len(keys) >= 8 else set()
    held_keys = {keys[i] for i in held}
    test = np.array([c.key in held_keys for c in ch])
    fit_idx = np.flatnonzero(~test)
    test_idx = np.flatnonzero(test) if test.any() else fit_idx
    tiers = [(t.name, list(t.experts)) for t in prof.tiers]
    fit = fit_consensus(X[fit_idx], y[fit_idx], names, tiers=tiers, method=method, current=prof.consensus,
                        **({"nonneg": nonneg} if method == "logistic" else {}))
    sub_ev = {k: [v[i] for i in test_idx] for k, v in evidence.items()}
    before, runs_b = replay_cascade(prof, sub_ev, len(test_idx))
    after_cons = Consensus(_spec_from_fit(prof.consensus, fit))
    after, runs_a = replay_cascade(prof, sub_ev, len(test_idx), consensus=after_cons)
    if method == "isotonic":  # what the fitted knots give on the full pool (the engine needs support)
        after_iso = fit.default.probability(X[test_idx], names)
    yt, lt = y[test_idx], levels[test_idx]

    def per_level(p):
        return {int(k): binary_metrics(yt[lt == k], p[lt == k])["mcc"] for k in sorted(set(lt.tolist()))}

    fit.metrics = {
        "evaluated_on": "holdout" if test.any() else "training data (too few images to hold out)",
        "n_fit": int(len(fit_idx)), "n_eval": int(len(test_idx)),
        "before": summarize(yt, before), "after": summarize(yt, after),
        "mcc_per_level_before": per_level(before), "mcc_per_level_after": per_level(after),
        "tier0_exit_before": float(np.mean([len(r) == 1 for r in runs_b])),
        "tier0_exit_after": float(np.mean([len(r) == 1 for r in runs_a])),
    }
    if method == "isotonic":
        fit.metrics["after_isotonic_full_pool"] = summarize(yt, after_iso)
    for m in ("before", "after"):
        fit.metrics[m].pop("reliability", None)
    meta = {"method": method, "data": str(data), "n": int(len(ch)), "images": len(samples), "seed": seed,
            "experts": names, "levels": "all" if all_levels else "balanced"}
    det = expert_calibrations(evidence, y)
    if det:
        meta["expert_calibration"] = det
    path = write_consensus(prof, fit, meta=meta) if write else None
    out = {"path": str(path) if path else None, "fit": fit, "metrics": fit.metrics, "meta": meta}
    if keep_evidence:
        out.update(evidence=evidence, labels=y)
    return out


ESCALATION_LOWS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


def fit_escalation(profile, evidence: typing.Mapping[str, typing.Sequence[typing.Any]], labels,
                   tolerance: float = 0.005) -> dict:
    """The escalation band ``(low, 1 - low)`` that sends the fewest images past the first tier
    among those within ``tolerance`` MCC of the best band, replaying the engine's cascade (its own
    :class:`Consensus`, the profile's fitted rules) on precomputed evidence.

    Returns ``{"low", "high", "mcc", "escalated", "candidates": [...]}``; ``escalated`` is the share
    of images that went on past the first tier."""
    from natix_miner.config import EscalationSpec
    from natix_miner.training.metrics import binary_metrics
    from natix_miner.training.runner import replay_cascade

    y = np.asarray(labels)
    rows = []
    for low in ESCALATION_LOWS:
        band = EscalationSpec(low=low, high=round(1.0 - low, 6))
        trial = profile.model_copy(update={"escalation": band,
                                           "tiers": [t.model_copy(update={"escalation": None}) for t in profile.tiers]})
        p, runs = replay_cascade(trial, evidence, len(y))
        rows.append({"low": band.low, "high": band.high, "mcc": round(binary_metrics(y, p)["mcc"], 4),
                     "escalated": round(float(np.mean([len(r) > 1 for r in runs])), 4)})
    best = max(r["mcc"] for r in rows)
    pick = min((r for r in rows if r["mcc"] >= best - tolerance), key=lambda r: (r["escalated"], -r["mcc"]))
    return {**pick, "candidates": rows}
