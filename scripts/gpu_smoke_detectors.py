"""GPU smoke check of the detector / open-vocabulary / depth families in every dtype.

Builds the tiny random-weight models of ``tests/support/tiny_detectors.py``, loads each family through an
expert spec on ``--device`` in float32, float16 and bfloat16, runs a batch and compares the
probabilities with float32 (they must agree roughly; random weights, so only plumbing is checked).
Families whose package is missing are reported and skipped.

Usage::

    python scripts/gpu_smoke_detectors.py --device cuda:0 [--families ultralytics,owlv2]
"""

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natix_miner.offline import enforce_offline  # noqa: E402

enforce_offline()

PROMPTS = {"cone": ["traffic cone"], "worker": ["worker in safety vest"]}


def build(family: str, d: Path):
    from tests import tiny_detectors as td

    if family == "ultralytics":
        return str(td.yolo_pt(d / "y11.pt", "yolo11n.yaml", boost=3)), {"imgsz": 160, "classes": {"cone": [3]}}
    if family == "ultralytics_rtdetr":
        return str(td.yolo_pt(d / "rtdetr-l.pt", "rtdetr-l.yaml", boost=3)), {"imgsz": 160, "classes": {"cone": [3]}}
    if family == "rfdetr":
        return str(td.rfdetr_checkpoint(d / "rf.pth", ["cone", "barrier"], boost=0)), {
            "resolution": 224, "classes": {"cone": ["cone"]}}
    if family.startswith("hf_detector"):
        kind = family.split(":")[1]
        return str(td.hf_detector(d / kind, kind, {0: "cone", 1: "barrier"})), {"classes": {"cone": ["cone"]}}
    if family == "grounding_dino":
        return str(td.grounding_dino(d / "gd")), {"prompts": PROMPTS, "conf": 0.0}
    if family == "owlv2":
        return str(td.owlv2(d / "owl")), {"prompts": PROMPTS, "conf": 0.0}
    if family == "sam3":
        return str(td.sam3(d / "sam3")), {"prompts": PROMPTS, "conf": 0.0}
    if family == "depth":
        det, opts = build("ultralytics", d)
        rel = td.depth_anything(d / "da", "metric", 20)
        return str(det), dict(opts, depth_check=str(rel), depth_options={"image_size": 112})
    raise ValueError(family)


def run(family: str, device: str, images, d: Path) -> dict:
    from natix_miner.config import ExpertSpec
    from natix_miner.experts import create_expert

    model, options = build(family, d)
    fam = family.split(":")[0].replace("_rtdetr", "")
    if fam == "depth":
        fam = "ultralytics"
    from natix_miner.experts.dtypes import check_dtype

    out = {}
    for dtype in [d for d in ("float32", "float16", "bfloat16") if check_dtype(d, fam) is None]:  # ultralytics: no bf16
        spec = ExpertSpec(name="smoke", family=fam, model=model, dtype=dtype, options=options)
        ex = create_expert(spec)
        t0 = time.perf_counter()
        ex.load(device)
        ex.warmup()
        load_s = time.perf_counter() - t0
        ev = ex.predict_batch(images)
        t0 = time.perf_counter()
        ev = ex.predict_batch(images)
        out[dtype] = {"p": [round(e.probability, 4) for e in ev], "boxes": [len(e.detail.get("boxes", [])) for e in ev],
                      "load_s": round(load_s, 2), "batch_ms": round(1000 * (time.perf_counter() - t0), 1),
                      "mem_mb": round(ex.memory_bytes() / 2 ** 20, 2),
                      "depth": ev[0].detail.get("depth", {}).get("scale")}
        ex.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--families", default="ultralytics,ultralytics_rtdetr,rfdetr,hf_detector:d_fine,"
                    "hf_detector:rt_detr_v2,hf_detector:rf_detr,grounding_dino,owlv2,sam3,depth")
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    from tests.support.tiny_detectors import decoded, scenes

    images = decoded(scenes(args.batch))
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fam in args.families.split(","):
            d = Path(tmp) / fam.replace(":", "_")
            os.makedirs(d, exist_ok=True)
            try:
                report[fam] = run(fam, args.device, images, d)
            except ModuleNotFoundError as exc:
                report[fam] = {"skipped": f"missing package {exc.name}"}
            except Exception as exc:  # report every family, not just the first failure
                report[fam] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=4)}
            print(fam, json.dumps(report[fam]), flush=True)
    bad = [k for k, v in report.items() if "error" in v]
    print("FAILED:" if bad else "OK", bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
