"""GPU smoke check of the transformers expert families in half precision.

Builds the tiny random-weight models the tests use (``tests/support/tiny_hf.py``), loads each through its
expert on the CPU in float32 and on ``cuda`` in float16 and bfloat16, and prints the largest
probability difference, the device, the dtype the weights really have and ``memory_bytes``. Exit 1
when a half-precision answer strays from float32 by more than ``--tol``.

    python scripts/gpu_smoke_experts.py            # needs a CUDA device
    python scripts/gpu_smoke_experts.py --tol 0.05
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tol", type=float, default=0.03)
    args = ap.parse_args()
    from natix_miner.offline import enforce_offline

    enforce_offline()
    import numpy as np
    import torch

    from natix_miner.config import ExpertSpec
    from natix_miner.experts import create_expert
    from natix_miner.experts.dino_head import save_head
    from tests import tiny_hf

    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    save_head(str(tmp / "head.npz"), rng.normal(size=64), 0.1, pooling="cls+mean")
    cases = [
        ("hf_classifier", tiny_hf.reference_vit(tmp / "vit"), {}),
        ("dino_head", tiny_hf.tiny_dinov2(tmp / "dinov2"), {"head": str(tmp / "head.npz")}),
        ("dino_head", tiny_hf.tiny_dinov3(tmp / "dinov3"), {"head": str(tmp / "head.npz")}),
        ("clip_zeroshot", tiny_hf.tiny_clip(tmp / "clip"), {}),
        ("clip_zeroshot", tiny_hf.tiny_siglip(tmp / "siglip"), {}),
        ("clip_zeroshot", tiny_hf.tiny_siglip2(tmp / "siglip2"), {}),
    ]
    images = tiny_hf.road_images(16, seed=1)
    failed = 0
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for family, model_dir, options in cases:
        ref = None
        for device, dtype in (("cpu", "float32"), ("cuda", "float16"), ("cuda", "bfloat16")):
            e = create_expert(ExpertSpec(name=family, family=family, model=str(model_dir), dtype=dtype,
                                         options=options))
            e.load(device)
            e.warmup()
            t0 = time.perf_counter()
            p = np.array([x.probability for x in e.predict_batch(images)])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) * 1000
            weight_dtype = next(e.model.parameters()).dtype
            diff = 0.0 if ref is None else float(np.abs(p - ref).max())
            ref = p if ref is None else ref
            bad = diff > args.tol or not np.all(np.isfinite(p))
            failed += bad
            print(f"{'FAIL' if bad else 'ok  '} {family:<14} {model_dir.name:<8} {device:<5} {dtype:<9} "
                  f"weights={str(weight_dtype):<15} max|dp|={diff:.4f} batch16={ms:7.1f} ms "
                  f"mem={e.memory_bytes() / 1e6:.2f} MB")
            e.close()
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
