"""Measured speed: the numbers behind ``docs/benchmarks.md``.

Sections (each a function, all driven by ``natix-miner bench`` / ``scripts/benchmark.py``):

* ``ceiling``  - bare forward of the fast expert on pre-made tensors (what the card can do);
* ``bulk``     - JPEG bytes -> probability through :class:`BulkPredictor` (nvJPEG, on-card
  preprocessing, compiled forward), on one device and on all devices;
* ``online``   - latency p50/p99 of :meth:`Engine.predict` at 1, 10 and 64 concurrent requests;
* ``axon``     - the same through a real axon and loopback dendrites, with the miner's own
  server-side time reported apart from the client's.

Usage::

    natix-miner bench --arch efficientnet_b0 --dtype bfloat16 --compile --n 20000 --sections ceiling,bulk
    natix-miner bench --profile demo-cpu --sections online,axon --json out.json
"""

import asyncio
import base64
import io
import json
import time
import typing

import numpy as np

from natix_miner.config import Profile, load_profile
from natix_miner.stats import percentile


def bench_profile(arch: str, dtype: str, compile_: bool, compile_mode: str, batch: int, device: str,
                  decode: str = "gpu", decode_threads: int = 8, cuda_graphs: bool = False,
                  max_wait_ms: float = 0.0, hw_share: float = 1.0) -> Profile:
    """A one-expert profile with random weights (speed does not depend on the weights)."""
    return Profile.model_validate({
        "name": f"bench-{arch}",
        "experts": [{"name": "fast", "family": "timm", "model": arch, "device": device, "dtype": dtype,
                     "max_batch": batch, "max_wait_ms": max_wait_ms,
                     "options": {"num_classes": 2, "compile": compile_, "compile_mode": compile_mode,
                                 "decode": decode, "decode_threads": decode_threads, "hw_share": hw_share,
                                 "cuda_graphs": cuda_graphs,
                                 "warmup_batches": [1 << k for k in range(batch.bit_length())
                                                    if (1 << k) <= batch]}}],
        "tiers": [{"name": "fast", "experts": ["fast"], "budget_s": 5.0}],
        "cache": {"max_entries": 0},
    })


def make_jpegs(n: int, unique: int = 256, seed: int = 0, size: int = 224) -> typing.List[bytes]:
    """``n`` validator-like JPEGs (224x224, quality 75): procedural road scenes, repeated."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base: typing.List[bytes] = []
    try:
        from natix_miner.synth.scenes import render_scene  # type: ignore

        for i in range(unique):
            scene = render_scene(label=i % 2, seed=seed * 100003 + i, size=(size, size))
            buf = io.BytesIO()
            scene.image.convert("RGB").save(buf, "JPEG", quality=75)
            base.append(buf.getvalue())
    except Exception:  # scenes unavailable: smooth random images compress like photos
        for _ in range(unique):
            small = rng.integers(0, 255, (14, 14, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=75)
            base.append(buf.getvalue())
    return [base[i % unique] for i in range(n)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def ceiling(profile: Profile, device: str, batch: int, iters: int = 50) -> dict:
    """Bare forward of the tier-0 expert on a pre-made, pre-normalised batch on the device."""
    import torch

    from natix_miner.experts import create_expert

    spec = profile.expert(profile.tiers[0].experts[0]).model_copy(update={"device": device})
    e = create_expert(spec, profile)
    e.load(device)
    x = torch.randn(batch, 3, e.size, e.size, device=device).to(e.dtype)
    if e.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(5):
        e.logits(x)
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        e.logits(x)
    _sync(device)
    dt = time.perf_counter() - t
    return {"device": device, "batch": batch, "img_per_s": batch * iters / dt}


def bulk(profile: Profile, devices: typing.Sequence[str], datas: typing.Sequence[bytes], batch: int,
         workers: int = 2, repeats: int = 3) -> dict:
    from natix_miner.engine.bulk import BulkPredictor

    b = BulkPredictor(profile, devices, batch_size=batch, replicas_per_device=workers)
    b.load()
    b.predict(datas[: batch * len(devices) * workers * 4])  # warm every replica
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        p = b.predict(datas)
        dt = time.perf_counter() - t
        best = max(best, len(datas) / dt)
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    b.close()
    return {"devices": list(devices), "batch": batch, "replicas_per_device": workers, "n": len(datas),
            "img_per_s": best}


def _pct(xs: typing.Sequence[float], q: float) -> float:
    """``q`` as a fraction (0.99); nearest rank, 0.0 for no samples."""
    return percentile(xs, 100 * q) or 0.0


async def closed_loop(call: typing.Callable[[int], typing.Awaitable[bool]], n: int,
                      concurrency: int) -> typing.Tuple[typing.List[float], int, float]:
    """``concurrency`` clients issue requests 0..n-1 back to back; ``call(i)`` returns whether the
    answer was bad (or a fallback). Returns (latencies in seconds, bad count, wall seconds)."""
    lat: typing.List[float] = []
    bad = 0
    it = iter(range(n))

    async def client():
        nonlocal bad
        for i in it:
            t = time.perf_counter()
            failed = await call(i)  # not `bad += await ...`: that reads bad before the await and loses counts
            bad += int(failed)
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(concurrency)])
    return lat, bad, time.perf_counter() - t0


async def _online(profile: Profile, datas: typing.Sequence[bytes], concurrencies: typing.Sequence[int],
                  requests: int) -> typing.List[dict]:
    from natix_miner.engine import Engine

    engine = Engine(profile)
    await engine.start()  # loads, warms every batch bucket (and captures CUDA graphs) once
    rows = []
    try:
        for concurrency in concurrencies:
            n = max(requests, 4 * concurrency)

            async def call(i: int) -> bool:
                return bool((await engine.predict(datas[i % len(datas)])).fallback)

            lat, fallbacks, wall = await closed_loop(call, n, concurrency)
            rows.append({"concurrency": concurrency, "requests": n, "p50_ms": 1000 * _pct(lat, 0.5),
                         "p99_ms": 1000 * _pct(lat, 0.99), "img_per_s": n / wall, "fallbacks": fallbacks})
    finally:
        await engine.close()
    return rows


def online(profile: Profile, datas, concurrencies: typing.Sequence[int], requests: int) -> typing.List[dict]:
    """Latency of :meth:`Engine.predict` at each concurrency (one engine, loaded once)."""
    return asyncio.run(_online(profile, datas, concurrencies, requests))


def _axon_clients(wallet_path: str, wallet_name: str, info_fields: dict, b64: typing.List[str],
                  concurrency: int, requests: int) -> typing.Tuple[typing.List[float], int, float]:
    """Load generator, run in its own process so the dendrites' CPU cost stays off the miner."""
    import bittensor as bt

    from natix_miner.miner.local import loopback_dendrite
    from natix_miner.protocol import ImageSynapse

    vw = bt.Wallet(name=wallet_name, hotkey="default", path=wallet_path)
    info = bt.AxonInfo(**info_fields)

    async def run():
        d = loopback_dendrite(vw)

        async def call(i: int) -> bool:
            r = await d.forward(info, ImageSynapse(image=b64[i % len(b64)]), timeout=9, deserialize=False)
            return not (0.0 <= r.prediction <= 1.0) or r.axon.status_code != 200

        try:
            return await closed_loop(call, requests, concurrency)
        finally:
            await d.aclose_session()

    return asyncio.run(run())


def axon(profile: Profile, datas, concurrency: int, requests: int) -> dict:
    """Real axon + loopback dendrites (in a separate process). Client latency includes the
    dendrite's own CPU cost (bittensor rebuilds JSON schemas per request); ``server_*`` is the
    miner's forward alone, measured inside the miner."""
    import multiprocessing
    import tempfile

    from natix_miner.config import MinerConfig
    from natix_miner.engine import Engine
    from natix_miner.miner.hooks import MinerHooks
    from natix_miner.miner.local import MinerThread
    from natix_miner.miner.wallet import ephemeral_wallet

    server: typing.List[float] = []

    class Timer(MinerHooks):
        def request(self, route, outcome, seconds, result=None, hotkey=None):
            server.append(seconds)

    wallet_root = tempfile.mkdtemp(prefix="bench-wallet-")
    vw = ephemeral_wallet("bench-validator", "default", wallet_root)
    # one client hotkey from one address at ``concurrency``: lift the per-hotkey and per-address caps
    axon_cfg = {"ip": "127.0.0.1", "port": 0, "max_workers": 64, "max_requests_per_hotkey": max(32, concurrency),
                "max_connections_per_peer": max(32, 2 * concurrency)}
    cfg = MinerConfig.model_validate({"local": True, "axon": axon_cfg,
                                      "blacklist": {"allowed_hotkeys": [vw.hotkey.ss58_address]},
                                      "metrics": {"enabled": False}})
    b64 = [base64.b64encode(d).decode() for d in datas[:256]]
    with MinerThread(cfg, engine=Engine(profile), hooks=Timer()) as m:
        info = m.info()
        fields = {"version": 1, "ip": info.ip, "port": info.port, "ip_type": 4, "hotkey": info.hotkey,
                  "coldkey": info.coldkey}
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            lat, bad, wall = pool.apply(_axon_clients, (wallet_root, "bench-validator", fields, b64,
                                                        concurrency, requests))
    return {"concurrency": concurrency, "requests": requests, "client_p50_ms": 1000 * _pct(lat, 0.5),
            "client_p99_ms": 1000 * _pct(lat, 0.99), "server_p50_ms": 1000 * _pct(server, 0.5),
            "server_p99_ms": 1000 * _pct(server, 0.99), "req_per_s": requests / wall, "invalid": bad}


def run(args) -> dict:
    """Run the requested sections; returns a JSON-able report (also printed as markdown)."""
    import torch

    devices = [d for d in (args.devices.split(",") if args.devices else [])] or (
        [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"])
    if args.profile:
        profile = load_profile(args.profile)
        if args.cache_off:
            profile = profile.model_copy(update={"cache": profile.cache.model_copy(update={"max_entries": 0})})
    else:
        profile = bench_profile(args.arch, args.dtype, args.compile, args.compile_mode, args.batch, devices[0],
                                args.decode, args.decode_threads, getattr(args, "cuda_graphs", False),
                                getattr(args, "max_wait_ms", 0.0), getattr(args, "hw_share", 1.0))
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    report: dict = {"card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                    "gpus": torch.cuda.device_count(), "torch": torch.__version__, "profile": profile.name,
                    "date": time.strftime("%Y-%m-%d"), "results": {}}
    datas = make_jpegs(args.n, seed=args.seed)
    res = report["results"]
    if "ceiling" in sections:
        res["ceiling"] = ceiling(profile, devices[0], args.batch)
        _print("ceiling", res["ceiling"])
    if "bulk" in sections:
        res["bulk_1"] = bulk(profile, devices[:1], datas, args.batch, args.workers)
        _print("bulk one device", res["bulk_1"])
        if "ceiling" in res:
            res["bulk_1"]["ratio_to_ceiling"] = res["bulk_1"]["img_per_s"] / res["ceiling"]["img_per_s"]
        if len(devices) > 1:
            res["bulk_all"] = bulk(profile, devices, datas, args.batch, args.workers)
            res["bulk_all"]["scaling"] = res["bulk_all"]["img_per_s"] / res["bulk_1"]["img_per_s"]
            _print("bulk all devices", res["bulk_all"])
    if "online" in sections:
        res["online"] = online(profile, datas, args.concurrency, args.requests)
        for r in res["online"]:
            _print("online", r)
    if "axon" in sections:
        res["axon"] = [axon(profile, datas, c, max(args.requests, 2 * c)) for c in args.concurrency]
        for r in res["axon"]:
            _print("axon", r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


def _print(name: str, row: dict) -> None:
    cells = ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
    print(f"[{name}] {cells}", flush=True)

