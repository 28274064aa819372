"""Memory of N hotkeys: one process with ``--hotkeys`` against N single-hotkey processes (docs/scaling.md).

Starts real miners (``neurons/miner.py --local``) on loopback, waits for ``/readyz``, sends every
challenge image to every hotkey through a real dendrite (a validator's challenge reaches several of
an operator's hotkeys), then reads the resident memory of each miner process and its children from
``/proc`` (RSS, and PSS, which splits shared library pages fairly between processes), and the
cascade runs (``natix_cascade_requests_total``: images computed, not answered from the cache) and
expert calls from ``/metrics`` (expert calls per run vary with the time left: a slower layout skips
late tiers). The two layouts run one after the other, never at once.

    python scripts/bench_hotkeys.py --profile demo-cpu --hotkeys 3 --images 20 \\
        --json docs/bench/2026-12-05-cpu-hotkeys-demo-cpu.json
    python scripts/bench_hotkeys.py --profile h100x2 --stand-ins /tmp/si --device cpu --hotkeys 3 --images 8 \\
        --json docs/bench/2026-12-05-cpu-hotkeys-h100x2-tiny.json      # after natix-miner models stand-in h100x2 --scale tiny --out /tmp/si
"""

import argparse
import asyncio
import base64
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ENTRY = os.path.join(ROOT, "neurons", "miner.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> typing.List[int]:
    """``pid`` and every descendant (from /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return out


def _kib(path: str, key: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(pids: typing.Sequence[int]) -> dict:
    """RSS and PSS (MiB) summed over ``pids`` and all their descendants."""
    every = sorted({p for pid in pids for p in _tree(pid)})
    rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in every) / 1024.0
    pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in every) / 1024.0
    return {"processes": len(every), "rss_mib": round(rss, 1), "pss_mib": round(pss, 1)}


def _metric_sum(url: str, name: str) -> float:
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url + "/metrics", timeout=10).text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


class Miners:
    """One miner process (``--hotkeys FILE``) or N of them; ``targets``: (name, port, ss58, metrics url)."""

    def __init__(self, args, layout: str, workdir: str, validator: str):
        self.args, self.layout, self.workdir, self.validator = args, layout, workdir, validator
        self.procs: typing.List[subprocess.Popen] = []
        self.metrics: typing.List[str] = []
        self.targets: typing.List[typing.Tuple[str, int, str, str]] = []
        self.ready_s = 0.0

    def _spawn(self, extra: typing.List[str], tag: str) -> str:
        port = _free_port()
        argv = [sys.executable, ENTRY, "--local", "--profile", self.args.profile, "--axon.ip", "127.0.0.1",
                "--metrics.port", str(port), "--blacklist.allowed_hotkeys", self.validator,
                "--wallet.path", os.path.join(self.workdir, "wallets"), *extra]
        if self.args.stand_ins:
            argv += ["--stand-ins", self.args.stand_ins]
        if self.args.device:
            argv += ["--device", self.args.device]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NATIX_")}
        log = open(os.path.join(self.workdir, f"{self.layout}-{tag}.log"), "w")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
        url = f"http://127.0.0.1:{port}"
        self.metrics.append(url)
        return url

    def start(self) -> None:
        t0 = time.monotonic()
        n = self.args.hotkeys
        if self.layout == "one_process":
            import yaml

            path = os.path.join(self.workdir, "hotkeys.yaml")
            with open(path, "w") as fh:
                yaml.safe_dump([{"name": f"hk{i + 1}", "wallet_name": f"bench{i + 1}", "wallet_hotkey": "default",
                                 "port": _free_port()} for i in range(n)], fh)
            self._spawn(["--hotkeys", path], "group")
        else:
            for i in range(n):
                self._spawn(["--axon.port", str(_free_port()), "--wallet.name", f"bench{i + 1}"], f"hk{i + 1}")
        for url in self.metrics:
            body = self._wait_ready(url, t0 + self.args.start_timeout)
            if "hotkeys" in body:  # a group: one entry per hotkey
                for name, h in sorted(body["hotkeys"].items()):
                    self.targets.append((name, int(h["axon"]["port"]), h["hotkey"], url))
            else:
                self.targets.append((f"hk{len(self.targets) + 1}", int(body["checks"]["axon"]["port"]),
                                     body["hotkey"], url))
        self.ready_s = round(time.monotonic() - t0, 1)

    def _wait_ready(self, url: str, deadline: float) -> dict:
        import requests

        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a miner exited with {p.returncode}; see {self.workdir}/{self.layout}-*.log")
            try:
                r = requests.get(url + "/readyz", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{url}/readyz not ready in time; see {self.workdir}/{self.layout}-*.log")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


async def _challenge(wallet, targets, images: typing.List[str], timeout: float) -> dict:
    """Every image to every hotkey at once (as a validator's challenge reaches several miners)."""
    from natix_miner.miner.local import axon_info, loopback_dendrite
    from natix_miner.protocol import ImageSynapse

    d = loopback_dendrite(wallet)
    codes: typing.Dict[str, int] = {}
    lat: typing.List[float] = []
    try:
        for image in images:
            async def one(port, hotkey):
                t = time.perf_counter()
                r = await d.forward(axon_info("127.0.0.1", port, hotkey), ImageSynapse(image=image), timeout=timeout,
                                    deserialize=False)
                lat.append(time.perf_counter() - t)
                return r.axon.status_code

            for code in await asyncio.gather(*(one(port, hk) for _, port, hk, _ in targets)):
                codes[str(code)] = codes.get(str(code), 0) + 1
    finally:
        await d.aclose_session()
    lat.sort()
    return {"status_codes": codes, "requests": len(lat), "p50_ms": round(1000 * lat[len(lat) // 2], 1),
            "max_ms": round(1000 * lat[-1], 1)}


def run_layout(args, layout: str, wallet, images: typing.List[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-hotkeys-{layout}-") as workdir:
        miners = Miners(args, layout, workdir, wallet.hotkey.ss58_address)
        try:
            miners.start()
            time.sleep(args.settle_s)
            idle = memory([p.pid for p in miners.procs])
            load = asyncio.run(_challenge(wallet, miners.targets, images, args.timeout))
            time.sleep(args.settle_s)
            served = memory([p.pid for p in miners.procs])
            runs = sum(_metric_sum(u, "natix_cascade_requests_total") for u in miners.metrics)
            calls = sum(_metric_sum(u, "natix_expert_duration_seconds_count") for u in miners.metrics)
            shared = sum(_metric_sum(u, "natix_cache_shared_hits_total") for u in miners.metrics)
        finally:
            miners.stop()
    out = {"layout": layout, "miner_processes": len(miners.procs), "hotkeys": len(miners.targets),
           "ready_s": miners.ready_s, "memory_ready": idle, "memory_after_queries": served, "queries": load,
           "cascade_runs": int(runs), "expert_calls": int(calls), "shared_cache_hits": int(shared)}
    print(json.dumps(out), flush=True)
    return out


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="demo-cpu", help="profile served by every miner (default: demo-cpu)")
    ap.add_argument("--hotkeys", type=int, default=3, help="hotkeys in each layout (default: 3)")
    ap.add_argument("--images", type=int, default=20, help="challenge images, each sent to every hotkey (default: 20)")
    ap.add_argument("--stand-ins", default=None, help="stand-in weights directory (natix-miner models stand-in)")
    ap.add_argument("--device", default=None, help="every expert on this device (e.g. cpu)")
    ap.add_argument("--layouts", default="one_process,separate", help="which layouts, in order (default: both)")
    ap.add_argument("--timeout", type=float, default=9.0, help="per-query timeout, seconds (validators: 9)")
    ap.add_argument("--settle-s", type=float, default=3.0, help="pause before each memory reading (default: 3)")
    ap.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for /readyz (default: 600)")
    ap.add_argument("--json", metavar="PATH", help="write the results here")
    args = ap.parse_args(argv)
    layouts = [x for x in args.layouts.split(",") if x]
    bad = [x for x in layouts if x not in ("one_process", "separate")]
    if bad or args.hotkeys < 1 or args.images < 1:
        ap.error(f"--layouts takes one_process and/or separate (got {bad}); --hotkeys and --images are >= 1")
    import numpy as np

    from natix_miner.imaging.decode import encode_jpeg_base64
    from natix_miner.miner.wallet import ephemeral_wallet

    rng = np.random.default_rng(0)
    images = [encode_jpeg_base64((rng.random((224, 224, 3)) * 255).astype("uint8")) for _ in range(args.images)]
    wallet = ephemeral_wallet("bench-validator", "default")
    results = [run_layout(args, layout, wallet, images) for layout in layouts]
    report = {"date": datetime.date.today().isoformat(), "host": platform.node(), "cpus": os.cpu_count(),
              "python": platform.python_version(), "profile": args.profile, "stand_ins": bool(args.stand_ins),
              "device": args.device, "images": args.images,
              "command": "python scripts/bench_hotkeys.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "results": results}
    by = {r["layout"]: r for r in results}
    if len(by) == 2:
        one, sep = by["one_process"]["memory_after_queries"], by["separate"]["memory_after_queries"]
        report["saved_mib"] = {k: round(sep[k] - one[k], 1) for k in ("rss_mib", "pss_mib")}
        report["ratio"] = {k: round(one[k] / sep[k], 3) for k in ("rss_mib", "pss_mib") if sep[k]}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "results"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
