"""Distillation: label unlabelled images with a heavy profile, train a fast expert on those labels.

The teacher is a whole profile run to the end (every expert, VLM tier included, pooled by the
fitted consensus of its last tier), on the validator's level-0 view of each image. Only confident
answers become labels (``p >= high`` -> roadwork, ``p <= low`` -> none); the rest are left out
(they are what ``hard-examples`` is for). The labelled set is written as a folder (``roadwork/``,
``none/`` and ``labels.csv`` with the teacher's probability), which ``train`` reads like any other
data. A fast expert trained on it lets most images stop at tier 0.

Usage::

    natix-miner distill --teacher h100x2 --data data/unlabelled --out data/distilled \
        --train --arch tf_efficientnet_lite0 --weights package:efficientnet_lite0 --epochs 5

    from natix_miner.training.distill import pseudo_label
    summary = pseudo_label("h100x2", "data/unlabelled", "data/distilled", low=0.2, high=0.8)
"""

import asyncio
import csv
import typing
from pathlib import Path



async def _teacher(profile, views, progress: bool):
    from natix_miner.training.runner import ProfileRunner

    async with ProfileRunner(profile, progress=progress) as run:
        return await run.all_evidence(views, desc="teacher")


def pseudo_label(teacher, data: str, out: typing.Union[str, Path], low: float = 0.2, high: float = 0.8,
                 n: typing.Optional[int] = None, seed: int = 0, progress: bool = True, samples=None) -> dict:
    """Label ``data`` with the ``teacher`` profile; write the confident ones under ``out``."""
    from natix_miner.config import Profile, load_profile
    from natix_miner.training.datasets import load_samples
    from natix_miner.training.hard import level0_views, pooled_probability

    if not 0 <= low < 0.5 < high <= 1:
        raise ValueError("need 0 <= low < 0.5 < high <= 1")
    prof = teacher if isinstance(teacher, Profile) else load_profile(teacher)
    if samples is None:
        samples = load_samples(data, limit=n, seed=seed, progress=progress)
    views, kept = level0_views(samples)
    if not kept:
        raise ValueError(f"{data}: no readable image")
    ev = asyncio.run(_teacher(prof, views, progress))
    probs = pooled_probability(prof, ev, len(kept))
    out = Path(out)
    for sub in ("roadwork", "none"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    agree = total_known = 0
    for i, (s, p) in enumerate(zip(kept, probs)):
        if low < p < high:
            continue
        label = int(p >= high)
        data_bytes = s.bytes()
        ext = Path(s.path).suffix.lower() if s.path else ".png" if data_bytes[:4] == b"\x89PNG" else ".jpg"
        dst = out / ("roadwork" if label else "none") / f"{i:06d}{ext}"
        dst.write_bytes(data_bytes)
        rows.append({"path": str(dst.relative_to(out)), "label": label, "teacher_p": round(float(p), 6),
                     "origin": s.key, "source": s.source})
        if s.label is not None:
            total_known += 1
            agree += int(s.label == label)
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "teacher_p", "origin", "source"])
        w.writeheader()
        w.writerows(rows)
    return {"n": len(kept), "labelled": len(rows), "roadwork": sum(r["label"] for r in rows),
            "none": sum(1 - r["label"] for r in rows), "skipped_uncertain": len(kept) - len(rows),
            "teacher": prof.name, "out": str(out),
            "agreement_with_given_labels": (agree / total_known) if total_known else None}
