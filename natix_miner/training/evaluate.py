"""``natix-miner evaluate``: a profile (or several, side by side) on the validator's own challenges.

Each labelled image becomes a challenge exactly as a validator makes one
(:mod:`natix_miner.synth.augment`: level 0..3, rotation, resized crop, distortions, JPEG
quality 75). Levels are balanced within each label (after a seeded shuffle, the k-th image of a
label gets level ``k mod 4``) or,
with ``all_levels``, every image is sent at every level. The same JPEG bytes go to every profile,
through the real engine (``Engine.predict``: tiers, deadlines, consensus, fallbacks).

Reported per profile: MCC, accuracy, the reward proxy ``(0.5 MCC + 0.5 acc) ** 3``, the confusion
matrix, the MCC-best threshold (0.5 after calibration), ECE, log-loss, average precision; the
same per augmentation level and per source (real / synthetic); where the cascade stopped,
fallbacks and latency. PNG plots: reliability diagram, precision-recall curves, MCC against the
threshold.

Usage::

    natix-miner evaluate --profile demo-cpu --data procedural --n 200 --json eval.json --plots out/
    natix-miner evaluate --profile demo-cpu --compare configs/h100x1.yaml --data data/val

    from natix_miner.training.evaluate import evaluate_profiles
    report = evaluate_profiles(["demo-cpu"], "procedural", n=100)
"""

import asyncio
import dataclasses
import json
import typing
from pathlib import Path

import numpy as np

from natix_miner.stats import percentile
from natix_miner.training.metrics import binary_metrics, pr_curve, reliability_bins, round_like_validator, summarize

LEVELS = (0, 1, 2, 3)


@dataclasses.dataclass
class Challenge:
    key: str
    label: int
    source: str
    level: int
    jpeg: bytes
    params: dict


def make_challenges(samples, seed: int = 0, all_levels: bool = False,
                    levels: typing.Sequence[int] = LEVELS, progress: bool = True) -> typing.List[Challenge]:
    """The validator's augmentation applied to each sample (seeded: same seed, same bytes)."""
    from tqdm import tqdm

    from natix_miner.synth.augment import augment

    order = list(range(len(samples)))
    np.random.default_rng(seed).shuffle(order)
    out: typing.List[Challenge] = []
    per_label: typing.Dict[int, int] = {}
    for i in tqdm(order, desc="challenges", unit="img", disable=not progress, leave=False):
        s = samples[i]
        if s.label is None:
            raise ValueError(f"{s.key}: evaluation needs labelled images")
        rank = per_label.get(s.label, 0)  # levels balanced within each label
        per_label[s.label] = rank + 1
        img = s.image()
        todo = list(levels) if all_levels else [levels[rank % len(levels)]]
        for lv in todo:
            rng = np.random.default_rng([seed, i, lv])
            a = augment(img, rng, level=lv)
            out.append(Challenge(s.key, int(s.label), s.source, lv, a.jpeg(), a.params))
    return out


def _latency(values: typing.Sequence[float]) -> dict:
    """Milliseconds: nearest-rank percentiles (:func:`natix_miner.stats.percentile`) and the mean."""
    if not values:
        return {}
    a = np.asarray(values) * 1000
    return {"p50": percentile(a, 50), "p95": percentile(a, 95), "p99": percentile(a, 99), "mean": float(a.mean())}


def profile_report(challenges: typing.Sequence[Challenge], results) -> dict:
    """Metrics of one profile's results on the challenges (same order)."""
    y = np.array([c.label for c in challenges])
    p = np.array([r.probability for r in results], dtype=np.float64)
    lv = np.array([c.level for c in challenges])
    src = np.array([c.source for c in challenges])
    exits: typing.Dict[str, int] = {}
    for r in results:
        key = r.tiers_run[-1] if r.tiers_run else "none"
        exits[key] = exits.get(key, 0) + 1
    fallbacks: typing.Dict[str, int] = {}
    for r in results:
        if r.fallback:
            k = (r.fallback_reason or "unknown").split(":")[0]
            fallbacks[k] = fallbacks.get(k, 0) + 1
    return {
        "overall": summarize(y, p),
        "per_level": {int(k): binary_metrics(y[lv == k], p[lv == k]) for k in sorted(set(lv.tolist()))},
        "per_source": {str(k): binary_metrics(y[src == k], p[src == k]) for k in sorted(set(src.tolist()))},
        "exits": exits,
        "fallbacks": fallbacks,
        "latency_ms": _latency([r.timings.get("total", 0.0) for r in results if not r.cached]),
        "reliability": reliability_bins(y, p),
        "average_precision": pr_curve(y, p)["average_precision"],
    }


async def _run_profile(profile, challenges, concurrency: int, progress: bool, allow_degraded: bool = True):
    from natix_miner.preflight import check_degraded
    from natix_miner.training.runner import ProfileRunner

    async with ProfileRunner(profile, concurrency=concurrency, progress=progress) as run:
        check_degraded(run.engine, allow_degraded)  # DegradedStart: a tier has no loadable expert
        return await run.predict([c.jpeg for c in challenges], desc=f"evaluate {profile.name}")


def _unique_names(profiles) -> typing.List[str]:
    names, seen = [], {}
    for prof in profiles:
        n = prof.name
        seen[n] = seen.get(n, 0) + 1
        names.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return names


def evaluate_profiles(profiles: typing.Sequence, data: str, n: typing.Optional[int] = None, seed: int = 0,
                      all_levels: bool = False, concurrency: int = 16, plots: typing.Optional[str] = None,
                      progress: bool = True, samples=None, allow_degraded: bool = True) -> dict:
    """Evaluate profiles (names, paths or ``Profile`` objects) on the same challenges.

    ``allow_degraded=False`` raises :class:`~natix_miner.preflight.DegradedStart` when a profile
    has a tier with no loadable expert (``natix-miner evaluate`` does, unless ``--allow-degraded``)."""
    from natix_miner.config import Profile, load_profile
    from natix_miner.training.datasets import label_counts, load_samples

    profs = [p if isinstance(p, Profile) else load_profile(p) for p in profiles]
    if not profs:
        raise ValueError("no profile to evaluate")
    if samples is None:
        samples = load_samples(data, limit=n, seed=seed, labelled=True, progress=progress)
    challenges = make_challenges(samples, seed=seed, all_levels=all_levels, progress=progress)
    names = _unique_names(profs)
    report: dict = {"data": str(data), "n": len(challenges), "images": len(samples), "seed": seed,
                    "labels": label_counts(samples), "all_levels": all_levels, "profiles": {}}
    series = {}
    y = np.array([c.label for c in challenges])
    for name, prof in zip(names, profs):
        results = asyncio.run(_run_profile(prof, challenges, concurrency, progress, allow_degraded))
        rep = profile_report(challenges, results)
        rep["profile_path"] = prof.path
        report["profiles"][name] = rep
        series[name] = (y, np.array([r.probability for r in results]))
    if len(profs) > 1:
        report["comparison"] = compare(series)
    if plots:
        from natix_miner.training.plots import pr_curves, reliability_diagram, threshold_curves

        d = Path(plots)
        report["plots"] = [str(reliability_diagram(series, d / "reliability.png")),
                           str(pr_curves(series, d / "pr_curve.png")),
                           str(threshold_curves(series, d / "mcc_threshold.png"))]
    return report


def _metrics_by(y, p, levels, sources) -> dict:
    """Overall (with the MCC-best threshold), per augmentation level and per source."""
    return {"overall": summarize(y, p),
            "per_level": {int(k): binary_metrics(y[levels == k], p[levels == k]) for k in sorted(set(levels.tolist()))},
            "per_source": {str(k): binary_metrics(y[sources == k], p[sources == k])
                           for k in sorted(set(sources.tolist()))}}


def cross_fitted_alone(z, y, keys, fallback: float, seed: int = 0) -> np.ndarray:
    """One expert's own probability, temperature-calibrated on the other half of the images (two
    folds by image, so an image's levels stay together); no opinion -> ``fallback``."""
    from natix_miner.training.calibrate import calibrate_logits, sigmoid

    uniq = sorted(set(keys))
    fold_of = dict(zip(uniq, np.random.default_rng(seed).permutation(len(uniq)) % 2))
    fold = np.array([fold_of[k] for k in keys])
    present = ~np.isnan(z)
    p = np.full(len(z), float(fallback))
    for f in (0, 1):
        fit_idx, app_idx = present & (fold != f), present & (fold == f)
        try:
            cal = calibrate_logits(z[fit_idx], y[fit_idx], "temperature")
            p[app_idx] = cal(z[app_idx])
        except ValueError:  # too few or one class: the raw probability
            p[app_idx] = sigmoid(z[app_idx])
    return p


def error_overlap(wrong: typing.Mapping[str, np.ndarray], cascade_wrong: np.ndarray) -> dict:
    """How much the experts' mistakes (each alone, at 0.5) coincide: per expert its count, per pair how
    many both make, how many every expert makes (no consensus of these experts can fix those), and the
    cascade's own. ``{"n", "cascade", "experts": {name: k}, "pairs": {"a & b": k}, "all": k}``."""
    names = list(wrong)
    every = np.logical_and.reduce([wrong[n] for n in names]) if names else np.zeros(0, bool)
    return {"n": int(len(cascade_wrong)), "cascade": int(cascade_wrong.sum()),
            "experts": {n: int(wrong[n].sum()) for n in names},
            "pairs": {f"{a} & {b}": int((wrong[a] & wrong[b]).sum())
                      for i, a in enumerate(names) for b in names[i + 1:]},
            "all": int(every.sum())}


def evaluate_cascade_and_experts(profile, samples, seed: int = 0, all_levels: bool = False,
                                 concurrency: int = 16, progress: bool = True, plots=None) -> dict:
    """The cascade through the real engine against each expert alone and each tier, on the same challenges.

    ``cascade``: ``Engine.predict`` per challenge (what a validator gets, latency included).
    ``experts``: every expert on every challenge, its probability cross-fitted (:func:`cross_fitted_alone`).
    ``tiers``: the engine's escalation replayed on that evidence, stopping after each tier.
    ``gain_over_best_expert``: the cascade's MCC minus the best single expert's. ``plots`` (a folder):
    reliability, precision-recall, MCC-threshold and per-level PNGs of the cascade and each expert.

    Usage::

        rep = evaluate_cascade_and_experts("runs/demo/demo-cpu.yaml", test_samples, seed=3)
        rep["cascade"]["overall"]["mcc"], rep["best_expert"], rep["gain_over_best_expert"]
    """
    from natix_miner.config import Profile, load_profile
    from natix_miner.imaging.decode import decode_bytes
    from natix_miner.training.runner import ProfileRunner, logit_matrix, replay_cascade

    prof = profile if isinstance(profile, Profile) else load_profile(profile, stand_ins=False, device=False)
    challenges = make_challenges(samples, seed=seed, all_levels=all_levels, progress=progress)
    y = np.array([c.label for c in challenges])
    lv = np.array([c.level for c in challenges])
    src = np.array([c.source for c in challenges])

    async def run():
        async with ProfileRunner(prof, concurrency=concurrency, progress=progress) as r:
            results = await r.predict([c.jpeg for c in challenges], desc=f"cascade {prof.name}")
            views = [decode_bytes(c.jpeg) for c in challenges]
            return results, await r.all_evidence(views, desc="each expert"), r.expert_names

    results, evidence, names = asyncio.run(run())
    names = [n for n in names if n in evidence]
    X = logit_matrix(evidence, names, n=len(challenges))
    cascade = profile_report(challenges, results)
    p_cascade = np.array([r.probability for r in results], dtype=np.float64)
    keys = [c.key for c in challenges]
    experts, series, wrong = {}, {"cascade": (y, p_cascade)}, {}
    for j, name in enumerate(names):
        p = cross_fitted_alone(X[:, j], y, keys, prof.fallback_probability, seed)
        experts[name] = {**_metrics_by(y, p, lv, src), "answered": float(np.mean(~np.isnan(X[:, j])))}
        series[f"{name} alone"] = (y, p)
        wrong[name] = round_like_validator(p) != y
    tiers = {}
    for k, tier in enumerate(prof.tiers):
        trial = prof.model_copy(update={"tiers": prof.tiers[:k + 1]})
        p, _ = replay_cascade(trial, evidence, len(challenges))
        tiers[tier.name] = _metrics_by(y, p, lv, src)
    best = max(experts, key=lambda n: experts[n]["overall"]["mcc"]) if experts else None
    gain = cascade["overall"]["mcc"] - (experts[best]["overall"]["mcc"] if best else 0.0)
    rep = {"profile": prof.name, "profile_path": prof.path, "n": len(challenges), "images": len(samples),
           "seed": seed, "all_levels": all_levels, "concurrency": concurrency, "cascade": cascade,
           "experts": experts, "tiers": tiers, "best_expert": best, "gain_over_best_expert": float(gain),
           "errors": error_overlap(wrong, round_like_validator(p_cascade) != y)}
    if plots:
        from natix_miner.training.plots import level_bars, pr_curves, reliability_diagram, threshold_curves

        d = Path(plots)
        table = {"cascade": {k: v["mcc"] for k, v in cascade["per_level"].items()}}
        table.update({f"{n} alone": {k: v["mcc"] for k, v in e["per_level"].items()} for n, e in experts.items()})
        rep["plots"] = [str(reliability_diagram(series, d / "reliability.png")),
                        str(pr_curves(series, d / "pr_curve.png")),
                        str(threshold_curves(series, d / "mcc_threshold.png")),
                        str(level_bars(table, d / "mcc_per_level.png"))]
    return rep


def compare(series) -> dict:
    """Pairwise: how often two profiles disagree after rounding, and each one's wins."""
    names = list(series)
    out = {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            y, a = series[names[i]]
            _, b = series[names[j]]
            qa, qb = np.round(a).astype(int), np.round(b).astype(int)
            out[f"{names[i]} vs {names[j]}"] = {
                "disagree": int((qa != qb).sum()),
                f"only_{names[i]}_right": int(((qa == y) & (qb != y)).sum()),
                f"only_{names[j]}_right": int(((qb == y) & (qa != y)).sum()),
            }
    return out


def format_evaluation(report: dict) -> str:
    """An evaluation report as a text table: one row per profile (MCC, per augmentation level, latency),
    then confusion, exits and per-source scores."""
    lines = [f"data {report['data']}: {report['images']} images, {report['n']} challenges, labels {report['labels']}"]
    head = (f"{'profile':<22}{'MCC':>7}{'acc':>7}{'reward':>8}{'best_t':>8}{'ECE':>7}"
            + "".join(f"{'L' + str(k) + ' MCC':>9}" for k in LEVELS) + f"{'fallback':>9}{'p50 ms':>8}")
    lines.append(head)
    for name, r in report["profiles"].items():
        o = r["overall"]
        lv = "".join(f"{r['per_level'][k]['mcc']:>9.3f}" if k in r["per_level"] else f"{'-':>9}" for k in LEVELS)
        lines.append(f"{name:<22}{o['mcc']:>7.3f}{o['accuracy']:>7.3f}{o['reward_proxy']:>8.3f}"
                     f"{o.get('best_threshold', float('nan')):>8.3f}{o['ece']:>7.3f}{lv}"
                     f"{sum(r['fallbacks'].values()):>9d}{r['latency_ms'].get('p50', float('nan')):>8.1f}")
    for name, r in report["profiles"].items():
        cm = r["overall"]["confusion"]
        src = ", ".join(f"{k}: MCC {v['mcc']:.3f} acc {v['accuracy']:.3f} (n={v['n']})" for k, v in r["per_source"].items())
        lines.append(f"{name}: confusion [label none: {cm['tn']} right, {cm['fp']} wrong] "
                     f"[label roadwork: {cm['tp']} right, {cm['fn']} wrong]; exits {r['exits']}; {src}")
    for k, v in report.get("comparison", {}).items():
        lines.append(f"{k}: {v}")
    for p in report.get("plots", []):
        lines.append(f"plot: {p}")
    return "\n".join(lines)


def write_json(report: dict, path: typing.Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    return path
