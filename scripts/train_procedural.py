#!/usr/bin/env python
"""Train a small roadwork classifier on procedural scenes, calibrate it, and score it per level.

Reproducible and seeded: scenes for training (seed 1), checkpoint selection and calibration
(seed 2) and the held-out test (seed 3) never overlap. Every image goes through the validator's
augmentation during training; the test sends every held-out image at all four levels through the
real engine (a profile written next to the weights), so the figures are what a validator would
measure on procedural challenges.

    python scripts/train_procedural.py --out runs/procedural            # a few minutes on 2 CPU cores
    python scripts/train_procedural.py --out runs/procedural --train 2000 --epochs 6 --device cuda

Writes ``OUT/best.pth``, ``OUT/expert.yaml``, ``OUT/procedural.yaml`` (a one-expert profile),
``OUT/procedural.consensus.json`` (calibration) and ``OUT/report.json`` with MCC / accuracy /
reward per level, before and after calibration.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/procedural")
    ap.add_argument("--train", type=int, default=480, help="training scenes")
    ap.add_argument("--val", type=int, default=160, help="scenes for checkpoint choice and calibration")
    ap.add_argument("--test", type=int, default=200, help="held-out scenes (each sent at all 4 levels)")
    ap.add_argument("--long-side", type=int, default=448, help="render size of the scenes (long side)")
    ap.add_argument("--arch", default="tf_efficientnet_lite0")
    ap.add_argument("--weights", default="package:efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--freeze-backbone", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--render-workers", type=int, default=0, help="processes rendering scenes")
    args = ap.parse_args(argv)

    from natix_miner.offline import enforce_offline

    enforce_offline()
    import torch
    import yaml

    if args.threads:
        torch.set_num_threads(args.threads)
    from natix_miner.training.calibrate import calibrate_profile
    from natix_miner.training.datasets import from_procedural
    from natix_miner.training.evaluate import evaluate_profiles, format_evaluation, write_json
    from natix_miner.training.trainer import TrainConfig, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    w = args.render_workers
    tr = from_procedural(args.train, seed=1, long_side=args.long_side, progress=True, workers=w)
    va = from_procedural(args.val, seed=2, long_side=args.long_side, progress=True, workers=w)
    te = from_procedural(args.test, seed=3, long_side=args.long_side, progress=True, workers=w)
    t_render = time.time() - t0
    cfg = TrainConfig(out=str(out), model=args.arch, weights=args.weights, name="procedural",
                      image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=args.warmup_steps, freeze_backbone=args.freeze_backbone, device=args.device, seed=args.seed)
    t1 = time.time()
    res = train(cfg, tr, va, resume=args.resume)
    t_train = time.time() - t1
    expert = dict(res["expert"])
    expert["device"] = "cpu" if args.device == "auto" and not torch.cuda.is_available() else "auto"
    profile = {"name": "procedural", "description": "one classifier trained by scripts/train_procedural.py",
               "experts": [expert], "tiers": [{"name": "fast", "experts": [expert["name"]], "budget_s": 5.0}]}
    prof_path = out / "procedural.yaml"
    prof_path.write_text(yaml.safe_dump(profile, sort_keys=False))
    consensus = out / "procedural.consensus.json"
    if consensus.exists():
        consensus.unlink()
    before = evaluate_profiles([str(prof_path)], "procedural", samples=te, all_levels=True, seed=3)
    try:
        cal = calibrate_profile(str(prof_path), "procedural", samples=va, method="logistic", holdout=0.0,
                                all_levels=True, seed=2)["metrics"]
    except ValueError as exc:  # a model that learned nothing cannot be calibrated
        print(f"calibration skipped: {exc}")
        cal = {"skipped": str(exc)}
    after = evaluate_profiles([str(prof_path)], "procedural", samples=te, all_levels=True, seed=3,
                              plots=str(out / "plots"))
    print("before calibration:\n" + format_evaluation(before))
    print("after calibration:\n" + format_evaluation(after))
    a = after["profiles"]["procedural"]
    report = {
        "config": vars(args), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "seconds": {"render": round(t_render, 1), "train": round(t_train, 1), "total": round(time.time() - t0, 1)},
        "best_epoch": res["best_epoch"], "validation_at_best": res["best"],
        "test_mcc_per_level": {k: v["mcc"] for k, v in a["per_level"].items()},
        "test_accuracy_per_level": {k: v["accuracy"] for k, v in a["per_level"].items()},
        "test_overall": a["overall"], "test_per_source": a["per_source"],
        "test_before_calibration": before["profiles"]["procedural"]["overall"],
        "calibration": cal,
    }
    write_json(report, out / "report.json")
    lv = ", ".join(f"level {k}: MCC {v:.3f}" for k, v in report["test_mcc_per_level"].items())
    print(f"held-out procedural test ({len(te)} images x 4 levels): {lv}; "
          f"train {t_train:.0f}s, total {time.time() - t0:.0f}s -> {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
