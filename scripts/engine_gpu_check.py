"""Check the cascade engine on real GPUs: measured placement, data-parallel replicas, status.

Builds a one-tier profile around a timm classifier (random weights, no download), starts the
engine with the expert on one card and then replicated on every visible card, prints the
placement table (memory measured at load), pushes distinct JPEGs through ``Engine.predict`` with
many requests in flight, and reports images per second, how the replicas shared the work, and the
status's device rows.

    python scripts/engine_gpu_check.py                      # vit_large_patch16_224, 3000 images
    python scripts/engine_gpu_check.py --arch convnext_base --images 5000 --inflight 512
"""

import argparse
import asyncio
import io
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def jpegs(n: int, size: int = 224):
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    rng = np.random.default_rng(0)
    out = []
    for _ in tqdm(range(n), desc="encoding test JPEGs", disable=not sys.stderr.isatty()):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=75)
        out.append(buf.getvalue())
    return out


def profile_for(arch: str, devices, max_batch: int, gpu_decode: bool = True, concurrency: int = 1):
    from natix_miner.config import Profile

    return Profile.model_validate({
        "name": f"gpu-check-{len(devices)}",
        "deadline_s": 9.0,
        "cache": {"max_entries": 0},
        "experts": [{"name": "cls", "family": "timm", "model": arch, "devices": list(devices), "dtype": "bfloat16",
                     "max_batch": max_batch, "max_wait_ms": 2, "concurrency": concurrency,
                     "options": {"num_classes": 2, "image_size": 224, "gpu_decode": gpu_decode}}],
        "tiers": [{"name": "fast", "experts": ["cls"], "budget_s": 8.0}],
    })


async def run(arch: str, devices, images, inflight: int, max_batch: int, gpu_decode: bool,
              concurrency: int = 1) -> dict:
    from natix_miner.engine import Engine

    engine = Engine(profile_for(arch, devices, max_batch, gpu_decode, concurrency))
    t0 = time.perf_counter()
    await engine.start(strict=True)
    load_s = time.perf_counter() - t0
    print(engine.placement_table(), flush=True)
    sem = asyncio.Semaphore(inflight)

    async def one(data):
        async with sem:
            return await engine.predict(data)

    await asyncio.gather(*(one(d) for d in images[:min(len(images), 4 * max_batch)]))  # warm-up
    for r in engine.pools["cls"].replicas:
        r.served = 0
        r.batcher.batches = r.batcher.items = 0
        r.batcher.busy_s = 0.0
    t = time.perf_counter()
    results = await asyncio.gather(*(one(d) for d in images))
    wall = time.perf_counter() - t
    st = engine.status()
    await engine.close()
    fallbacks = sum(r.fallback for r in results)
    reps = st["experts"]["cls"]["replicas"]
    out = {"devices": list(devices), "gpu_decode": gpu_decode, "concurrency": concurrency,
           "load_s": round(load_s, 2), "images": len(images),
           "images_per_s": round(len(images) / wall, 1), "fallbacks": fallbacks,
           "p50_total_ms": round(sorted(r.timings["total"] for r in results)[len(results) // 2] * 1000, 2),
           "replicas": [{"device": r["device"], "items": r["items"], "mean_batch": r["mean_batch"],
                         "busy_s": r["busy_s"], "wall_s": round(wall, 2)} for r in reps],
           "devices_status": {d: {k: v for k, v in row.items() if k != "experts"}
                              for d, row in st["devices"].items() if d.startswith("cuda")}}
    print(json.dumps(out, indent=1), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="vit_large_patch16_224")
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--inflight", type=int, default=512)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--gpu-decode", type=int, default=1, help="1: the timm expert decodes JPEGs on the card")
    ap.add_argument("--concurrency", type=int, default=1, help="batches in flight per replica")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    n = torch.cuda.device_count()
    if n == 0:
        print("no GPU visible", file=sys.stderr)
        return 2
    print(f"{n} GPU(s): {[torch.cuda.get_device_name(i) for i in range(n)]}, torch {torch.__version__}", flush=True)
    images = jpegs(args.images)
    gd = bool(args.gpu_decode)
    c = args.concurrency
    results = [asyncio.run(run(args.arch, ["cuda:0"], images, args.inflight, args.max_batch, gd, c))]
    if n > 1:
        results.append(asyncio.run(run(args.arch, [f"cuda:{i}" for i in range(n)], images, args.inflight,
                                       args.max_batch, gd, c)))
        print(f"speed-up with {n} replicas: {results[1]['images_per_s'] / results[0]['images_per_s']:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
