"""Stage-by-stage timing of the bulk fast path on a GPU (decode, preprocess, forward, threads).

    python scripts/profile_fastpath.py --arch efficientnet_b0 --n 4096 --batch 256
"""

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from natix_miner.benchmark import bench_profile, make_jpegs
    from natix_miner.experts import create_expert
    from natix_miner.imaging.jpeg import to_model_batch

    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="efficientnet_b0")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    ngpu = torch.cuda.device_count()
    t = time.perf_counter()
    datas = make_jpegs(a.n)
    print(f"make_jpegs {a.n}: {time.perf_counter() - t:.1f}s, mean size {sum(map(len, datas)) / len(datas):.0f} B")
    batches = [datas[i:i + a.batch] for i in range(0, a.n, a.batch)]

    def timeit(name, fn, reps=1, n_img=a.n, dev="cuda:0"):
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / reps
        print(f"{name:<48} {dt * 1000:9.1f} ms  {n_img / dt:10.0f} img/s", flush=True)

    def frombuf():
        return [[torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in b] for b in batches]

    timeit("frombuffer (cpu)", frombuf)
    tens = frombuf()
    timeit("decode_jpeg list -> cuda:0", lambda: [decode_jpeg(b, mode=ImageReadMode.RGB, device="cuda:0") for b in tens])
    timeit("decode_jpeg list -> cpu", lambda: [decode_jpeg(b, mode=ImageReadMode.RGB) for b in tens[:2]],
           n_img=2 * a.batch)
    dec = [decode_jpeg(b, mode=ImageReadMode.RGB, device="cuda:0") for b in tens]
    timeit("to_model_batch (stack+normalise bf16 CL)",
           lambda: [to_model_batch(d, 224, (0.5,) * 3, (0.5,) * 3, torch.bfloat16) for d in dec])
    prof = bench_profile(a.arch, "bfloat16", a.compile, "max-autotune-no-cudagraphs", a.batch, "cuda:0")
    experts = {}
    for i in range(ngpu):
        dev = f"cuda:{i}"
        e = create_expert(prof.expert("fast").model_copy(update={"device": dev}), prof)
        e.load(dev)
        e.warmup()
        experts[dev] = e
    xs = [to_model_batch(d, 224, (0.5,) * 3, (0.5,) * 3, torch.bfloat16) for d in dec]
    e0 = experts["cuda:0"]
    timeit("forward only (pre-made batches)", lambda: [e0.logits(x) for x in xs])
    timeit("predict_encoded (decode+prep+fwd) 1 thread", lambda: [e0.predict_encoded(b).cpu() for b in batches])

    def threaded(devs, per_dev):
        def work(dev, part):
            with torch.cuda.stream(torch.cuda.Stream(device=dev)):
                for b in part:
                    experts[dev].predict_encoded(b).cpu()
        jobs = []
        k = len(devs) * per_dev
        for j in range(k):
            dev = devs[j % len(devs)]
            jobs.append(threading.Thread(target=work, args=(dev, batches[j::k])))
        for th in jobs:
            th.start()
        for th in jobs:
            th.join()

    timeit("1 thread, default stream, cuda:0", lambda: [e0.predict_encoded(b).cpu() for b in batches])
    timeit("decode only, 1 thread, alternating devices",
           lambda: [decode_jpeg(b, mode=ImageReadMode.RGB, device=f"cuda:{j % ngpu}") for j, b in enumerate(tens)])
    for devs in (["cuda:0"], [f"cuda:{i}" for i in range(ngpu)]):
        for per in (1, 2, 4):
            timeit(f"threads: {len(devs)} dev x {per}", lambda: threaded(devs, per))
    # one process per GPU: each has its own nvJPEG decoder
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    for k in sorted({1, ngpu}):
        q = ctx.Queue()
        procs = [ctx.Process(target=_proc, args=(f"cuda:{i}", a.arch, a.batch, a.n // k, q)) for i in range(k)]
        for p in procs:
            p.start()
        res = [q.get() for _ in procs]
        for p in procs:
            p.join()
        print(f"processes x{k}: {sum(r for r in res):.0f} img/s total ({', '.join(f'{r:.0f}' for r in res)})", flush=True)
    return 0


def _proc(dev, arch, batch, n, q):
    import torch

    from natix_miner.benchmark import bench_profile, make_jpegs
    from natix_miner.experts import create_expert

    datas = make_jpegs(n, unique=64)
    batches = [datas[i:i + batch] for i in range(0, n, batch)]
    prof = bench_profile(arch, "bfloat16", False, "default", batch, dev)
    e = create_expert(prof.expert("fast").model_copy(update={"device": dev}), prof)
    e.load(dev)
    e.warmup()
    for b in batches[:3]:
        e.predict_encoded(b).cpu()
    torch.cuda.synchronize(dev)
    t = time.perf_counter()
    for _ in range(2):
        for b in batches:
            e.predict_encoded(b).cpu()
    torch.cuda.synchronize(dev)
    q.put(2 * n / (time.perf_counter() - t))


if __name__ == "__main__":
    sys.exit(main())
