"""Requests per second through Ray Serve against the in-process engine, at the same concurrency.

Closed loop (``natix_miner.benchmark.closed_loop``): C clients send validator-like JPEGs (procedural
scenes, every request a different image, so no cache hit) back to back. Three ways to the same
profile: the in-process :class:`~natix_miner.engine.engine.Engine`, then a local Ray cluster with the
app deployed by ``natix-miner engine serve`` (once per ``--batching``: Ray Serve's ``@serve.batch``
and the engine's MicroBatcher), called as a miner does, through
:class:`~natix_miner.engine.ray_client.RayEngineClient`. Latencies through ``natix_miner.stats.percentile``.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_ray.py --profile demo-cpu --concurrency 8,32 \\
        --requests 128 --json docs/bench/2026-12-05-cpu-ray-serve-demo-cpu.json

``OMP_NUM_THREADS=1`` for both sides: Ray gives each replica one intra-op thread anyway, and on an
oversubscribed host torch's multi-threaded kernels collapse (EfficientNet-Lite0 3 s per image instead
of 0.3 s at a load average of 15 on 2 cores).
"""

import argparse
import asyncio
import collections
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
import typing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _row(kind: str, concurrency: int, lat, bad: int, wall: float, n: int, **extra) -> dict:
    from natix_miner.stats import percentile

    row = {"path": kind, "concurrency": concurrency, "requests": n, "req_per_s": round(n / wall, 2),
           "model_answers_per_s": round((n - bad) / wall, 2), "load_avg_1m": round(os.getloadavg()[0], 1),
           "p50_ms": round(1000 * percentile(lat, 50), 1), "p99_ms": round(1000 * percentile(lat, 99), 1),
           "fallbacks": bad, **extra}
    print(json.dumps(row), flush=True)
    return row


async def _measure(engine, kind: str, concurrencies, requests: int, **extra) -> list:
    from natix_miner.benchmark import closed_loop, make_jpegs

    rows = []
    for k, c in enumerate(concurrencies):
        n = max(requests, 4 * c)
        # every path gets the same images; within a path every request a new one (no cache hit)
        datas = make_jpegs(n, unique=n, seed=k + 1)

        reasons: typing.Counter[str] = collections.Counter()
        escalated = 0

        async def call(i: int) -> bool:
            nonlocal escalated
            res = await engine.predict(datas[i], time.monotonic() + 30)  # capped at the profile's deadline_s
            escalated += int(len(res.tiers_run) > 1)
            if res.fallback:
                reasons[(res.fallback_reason or "?").split(":")[0]] += 1
            return bool(res.fallback)

        await engine.predict(make_jpegs(1, unique=1, seed=999)[0])  # warm the path
        lat, bad, wall = await closed_loop(call, n, c)
        rows.append(_row(kind, c, lat, bad, wall, n, escalated=escalated, fallback_reasons=dict(reasons), **extra))
    # the path's own cost: images answered before (cache hits, no expert runs), one at a time
    lat, bad, wall = await closed_loop(lambda i: call(i % 20), 20, 1)
    rows.append(_row(f"{kind} (cached)", 1, lat, bad, wall, 20, **extra))
    return rows


async def in_process(profile, concurrencies, requests: int) -> list:
    from natix_miner.engine.engine import Engine

    engine = Engine(profile)
    await engine.start()
    try:
        return await _measure(engine, "in-process", concurrencies, requests)
    finally:
        await engine.close()


async def through_ray(profile, address: str, app: str, concurrencies, requests: int, batching: str):
    from natix_miner.engine.ray_client import RayEngineClient

    client = RayEngineClient(profile, address, app, connect_timeout_s=120)
    await client.start()
    try:
        return await _measure(client, "ray-serve", concurrencies, requests, batching=batching)
    finally:
        await client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="demo-cpu")
    p.add_argument("--concurrency", default="8,32", help="comma list of client counts")
    p.add_argument("--requests", type=int, default=160, help="requests per setting (at least 4 x concurrency)")
    p.add_argument("--batching", default="serve,engine", help="expert-deployment batching modes to measure")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    p.add_argument("--cpus-per-replica", type=float, default=0.5)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still ends its Ray cluster
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from natix_miner.config import load_profile
    from natix_miner.offline import apply_download_policy
    from tests.support.ray_cluster import LocalRayCluster

    apply_download_policy(False)
    profile = load_profile(args.profile)
    conc = [int(x) for x in args.concurrency.split(",")]
    rows = asyncio.run(in_process(profile, conc, args.requests))
    deploy_s = {}
    with LocalRayCluster(num_cpus=args.num_cpus) as cluster:
        for batching in args.batching.split(","):
            app = f"bench-{batching}"
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "natix_miner.cli", "engine", "serve", "--profile", args.profile,
                                "--ray", cluster.address, "--app", app, "--batching", batching,
                                "--cpus-per-replica", str(args.cpus_per_replica), "--ingress-cpus", "0.25"],
                               capture_output=True, text=True, cwd=ROOT)
            if r.returncode:
                sys.exit(f"engine serve failed: {r.stderr[-2000:]}")
            deploy_s[batching] = round(time.perf_counter() - t0, 1)
            rows += asyncio.run(through_ray(profile, cluster.address, app, conc, args.requests, batching))
            subprocess.run([sys.executable, "-c", "import ray, sys; from ray import serve; "
                            "ray.init(address=sys.argv[1], logging_level='ERROR'); serve.delete(sys.argv[2])",
                            cluster.address, app], capture_output=True, cwd=ROOT)  # free the cores for the next
    out = {"date": datetime.date.today().isoformat(), "host": platform.node(), "cpus": os.cpu_count(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "profile": args.profile, "ray_cluster_cpus": args.num_cpus, "deploy_seconds": deploy_s,
           "command": " ".join(["scripts/bench_ray.py"] + sys.argv[1:]), "rows": rows}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
