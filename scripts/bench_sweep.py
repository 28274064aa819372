"""Several benchmark settings in one process, most important first, for short GPU leases.

Each step is one call into ``natix_miner/benchmark.py`` (the same functions as ``natix-miner bench``);
the JSON report is rewritten after every step, so a run cut short still leaves what it measured,
and a step that fails records its error and the sweep goes on.

    python scripts/bench_sweep.py --out /tmp/sweep.json \\
        --steps ceiling,decode,bulk_hw,online_graphs,bulk_gpu,ceiling_compiled,bulk_hw_compiled

Steps: ``ceiling`` (eager forward, batch 256), ``decode`` (JPEG engines vs nvJPEG CUDA vs one CPU
thread, decode alone), ``bulk_hw`` / ``bulk_gpu`` (JPEG bytes -> probability, one replica process
per listed device, hardware / CUDA decoding), ``online_graphs`` (Engine.predict latency at 1, 10
and 64 concurrent requests with CUDA graphs, batches up to 64), ``online_eager`` (the same without
graphs), ``ceiling_compiled`` and ``bulk_hw_compiled`` (torch.compile, default mode).
"""

import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def decode_only(datas, device: str, batch: int) -> dict:
    """Decoding alone: the card's JPEG engines, nvJPEG's CUDA decoder, and one CPU thread."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from natix_miner.imaging import hwjpeg

    batches = [datas[i:i + batch] for i in range(0, len(datas), batch)]
    out = {"images": len(datas), "batch": batch, "hw_available": hwjpeg.available(device)}

    def rate(fn, n_img):
        fn()
        torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return n_img / (time.perf_counter() - t)

    if out["hw_available"]:
        out["hw_img_per_s"] = rate(lambda: [hwjpeg.decode_batch(b, device, 224) for b in batches], len(datas))
    tens = [[torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in b] for b in batches]
    out["nvjpeg_cuda_img_per_s"] = rate(
        lambda: [decode_jpeg(b, mode=ImageReadMode.RGB, device=device) for b in tens], len(datas))
    out["cpu_one_thread_img_per_s"] = rate(lambda: [decode_jpeg(t, mode=ImageReadMode.RGB) for t in tens[0]],
                                           len(tens[0]))
    return out


def main() -> int:
    import torch

    from natix_miner import benchmark as B
    from natix_miner.offline import enforce_offline

    enforce_offline()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="efficientnet_b0")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--devices", default="cuda:0")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--requests", type=int, default=320)
    ap.add_argument("--concurrency", default="1,10,64")
    ap.add_argument("--steps", default="ceiling,decode,bulk_hw,online_graphs,bulk_gpu")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    devices = a.devices.split(",")
    conc = [int(c) for c in a.concurrency.split(",")]
    report = {"card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "gpus": torch.cuda.device_count(), "torch": torch.__version__, "arch": a.arch, "dtype": a.dtype,
              "date": time.strftime("%Y-%m-%d %H:%M"), "devices": devices, "steps": {}}
    t = time.perf_counter()
    datas = B.make_jpegs(a.n)
    print(f"{a.n} JPEGs in {time.perf_counter() - t:.1f}s on {report['card']}", flush=True)

    def prof(decode="gpu", compile_=False, graphs=False, batch=a.batch):
        return B.bench_profile(a.arch, a.dtype, compile_, "default", batch, devices[0], decode, 8, graphs, 0.0)

    steps = {
        "ceiling": lambda: B.ceiling(prof(), devices[0], a.batch),
        "ceiling_compiled": lambda: B.ceiling(prof(compile_=True), devices[0], a.batch),
        "decode": lambda: decode_only(datas[:4096], devices[0], a.batch),
        "bulk_hw": lambda: B.bulk(prof("hw"), devices, datas, a.batch, 1, repeats=2),
        "bulk_gpu": lambda: B.bulk(prof("gpu"), devices, datas, a.batch, 1, repeats=2),
        "bulk_hw_compiled": lambda: B.bulk(prof("hw", compile_=True), devices, datas, a.batch, 1, repeats=2),
        "online_graphs": lambda: B.online(prof(graphs=True, batch=64), datas, conc, a.requests),
        "online_eager": lambda: B.online(prof(batch=64), datas, conc, a.requests),
    }
    for name in [s.strip() for s in a.steps.split(",") if s.strip()]:
        t = time.perf_counter()
        try:
            res = steps[name]()
        except Exception as exc:  # keep going: a short lease should still bring back the rest
            res = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
        report["steps"][name] = {"seconds": round(time.perf_counter() - t, 1), "result": res}
        print(f"[{name}] {json.dumps(report['steps'][name]['result'], default=str)[:1500]}", flush=True)
        with open(a.out, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
