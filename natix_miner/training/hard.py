"""Hard-example mining: the images a profile is least sure about, exported for labelling.

Every expert of the profile runs on every image (the validator's level-0 view: centre crop,
224x224, JPEG 75). Scores per image:

* ``uncertainty`` = ``1 - |2p - 1|`` of the consensus over all experts (1 at p = 0.5);
* ``disagreement`` = spread of the experts' probabilities (max - min over those with an opinion);
* ``error`` = ``|p - label|`` when the image is labelled (high: a mistake, or a wrong label).

Ranked by ``hardness = uncertainty + disagreement + error``; the top ``k`` are exported as
``OUT/images/NNNN_<name>.<ext>`` (original bytes) plus ``OUT/hard_examples.csv``; when
``fiftyone`` is importable, also a persistent FiftyOne dataset with the prediction, the label and
the scores as fields (``fiftyone app`` then shows them for review).

Usage::

    natix-miner hard-examples --profile demo-cpu --data data/unlabelled --top 200 --out hard/
"""

import asyncio
import csv
import re
import typing
from pathlib import Path

import numpy as np


def score_examples(probs: np.ndarray, X_prob: np.ndarray, labels: typing.Sequence[typing.Optional[int]]) -> dict:
    """``probs``: consensus (n,); ``X_prob``: per-expert probabilities (n, k), NaN = no opinion."""
    p = np.asarray(probs, dtype=np.float64)
    unc = 1.0 - np.abs(2.0 * p - 1.0)
    with np.errstate(invalid="ignore"):
        spread = np.nanmax(X_prob, axis=1) - np.nanmin(X_prob, axis=1) if X_prob.shape[1] else np.zeros_like(p)
    spread = np.nan_to_num(spread, nan=0.0)
    err = np.array([abs(pi - y) if y is not None else 0.0 for pi, y in zip(p, labels)])
    return {"uncertainty": unc, "disagreement": spread, "error": err, "hardness": unc + spread + err}


def pooled_probability(profile, evidence, n: int) -> np.ndarray:
    """Consensus over every expert, with the last tier's rule (what a full cascade answers)."""
    from natix_miner.engine.consensus import Consensus

    cons = Consensus(profile.consensus)
    last = profile.tiers[-1].name
    out = np.empty(n)
    for i in range(n):
        p = cons.combine({k: v[i] for k, v in evidence.items() if v[i] is not None}, stage=last)
        out[i] = profile.fallback_probability if p is None else p
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-80:] or "image"


async def _evidence(profile, views, progress: bool):
    from natix_miner.training.runner import ProfileRunner

    async with ProfileRunner(profile, progress=progress) as run:
        ev = await run.all_evidence(views, desc="experts")
        return ev, run.expert_names


def mine(profile, data: str, out: typing.Union[str, Path], top: int = 100, n: typing.Optional[int] = None,
         seed: int = 0, progress: bool = True, fiftyone_name: typing.Optional[str] = None, samples=None) -> dict:
    """Rank ``data`` by hardness for ``profile``; export the ``top`` ones. Returns a summary."""
    from natix_miner.config import Profile, load_profile
    from natix_miner.training.datasets import load_samples
    from natix_miner.training.runner import logit_matrix

    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    if samples is None:
        samples = load_samples(data, limit=n, seed=seed, progress=progress)
    views, kept = level0_views(samples)
    if not kept:
        raise ValueError(f"{data}: no readable image")
    ev, names = asyncio.run(_evidence(prof, views, progress))
    X = logit_matrix(ev, names, n=len(kept))
    probs = pooled_probability(prof, ev, len(kept))
    with np.errstate(over="ignore"):
        Xp = 1.0 / (1.0 + np.exp(-X))
    scores = score_examples(probs, Xp, [s.label for s in kept])
    order = np.argsort(-scores["hardness"], kind="stable")[:top]

    out = Path(out)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for rank, i in enumerate(order.tolist(), start=1):
        s = kept[i]
        data_bytes = s.bytes()
        ext = Path(s.path).suffix.lower() if s.path else ".png" if data_bytes[:4] == b"\x89PNG" else ".jpg"
        dst = img_dir / f"{rank:04d}_{_safe(Path(s.key).stem if s.path else s.key)}{ext}"
        dst.write_bytes(data_bytes)
        row = {"rank": rank, "file": str(dst), "key": s.key, "source": s.source,
               "label": "" if s.label is None else s.label, "probability": round(float(probs[i]), 6)}
        for k in ("hardness", "uncertainty", "disagreement", "error"):
            row[k] = round(float(scores[k][i]), 6)
        for j, name in enumerate(names):
            row[f"p_{name}"] = "" if np.isnan(Xp[i, j]) else round(float(Xp[i, j]), 6)
        rows.append(row)
    csv_path = out / "hard_examples.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["rank"])
        w.writeheader()
        w.writerows(rows)
    summary = {"n": len(kept), "exported": len(rows), "csv": str(csv_path), "images": str(img_dir),
               "experts": names, "fiftyone": None}
    fo_name = export_fiftyone(rows, names, fiftyone_name or f"natix-hard-{prof.name}")
    summary["fiftyone"] = fo_name
    return summary


def fiftyone_dataset(dataset_name: str):
    """``(fiftyone module, a new empty persistent dataset of that name)`` (an older one is replaced), or
    ``None`` when fiftyone is not installed. Shared by the review exports (here and ``autolabel``)."""
    try:
        import fiftyone as fo
    except ImportError:
        return None
    if fo.dataset_exists(dataset_name):
        fo.delete_dataset(dataset_name)
    ds = fo.Dataset(dataset_name)
    ds.persistent = True
    return fo, ds


def export_fiftyone(rows: typing.Sequence[dict], names: typing.Sequence[str], dataset_name: str) -> typing.Optional[str]:
    """A persistent FiftyOne dataset of the exported rows, when fiftyone is installed; else ``None``."""
    made = fiftyone_dataset(dataset_name)
    if made is None:
        return None
    fo, ds = made
    samples = []
    for r in rows:
        p = float(r["probability"])
        s = fo.Sample(filepath=str(Path(r["file"]).resolve()), tags=["hard"])
        s["prediction"] = fo.Classification(label="roadwork" if p > 0.5 else "none", confidence=max(p, 1 - p))
        if r["label"] != "":
            s["ground_truth"] = fo.Classification(label="roadwork" if int(r["label"]) == 1 else "none")
        for k in ("rank", "probability", "hardness", "uncertainty", "disagreement", "error", "source", "key"):
            s[k] = r[k]
        for name in names:
            v = r.get(f"p_{name}")
            s[f"p_{name}"] = None if v == "" else float(v)
        samples.append(s)
    ds.add_samples(samples)
    return dataset_name


def level0_views(samples):
    """The validator's level-0 view (centre crop, 224, JPEG q75) of each readable sample, decoded;
    returns ``(views, samples_kept)`` (corrupt samples are skipped: `data validate` reports them)."""
    from natix_miner.synth.augment import augment
    from natix_miner.imaging.decode import decode_bytes

    views, kept = [], []
    for s in samples:
        try:
            img = s.image()
        except Exception:
            continue
        views.append(decode_bytes(augment(img, np.random.default_rng(0), level=0).jpeg()))
        kept.append(s)
    return views, kept
