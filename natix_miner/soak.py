"""Bounded-time soak: a real miner (axon + cascade) under open-loop load from loopback dendrites.

Many validators (throw-away wallets with log-normal stakes, a local metagraph) send requests at a
Poisson rate for ``seconds``: mostly valid 224x224 JPEGs (repeats included, as one challenge goes
to many miners), a fraction of hostile inputs from :mod:`natix_miner.synth.hostile`, optionally
with faults injected into tier 1 (the ``chaos`` family). Reported: requests, outcomes (answered,
fallback, shed, error), invalid or late answers, latency p50/p90/p99/max, peak and trend of the
miner process's RSS, admission and engine counters. The miner runs in its own process (as in
production), so the load generator does not share its CPU or its memory figures. The run passes
when every request got a valid answer within its timeout. Loopback only; nothing leaves the host.

Usage::

    natix-miner soak --seconds 60 --rate 20 --validators 16 --hostile 0.1 --fault raise --fault-rate 0.2
    python scripts/soak.py --seconds 10 --json soak.json          # exit code 1 if any answer was bad

Default cascade (``--profile`` overrides): tier 0 a tiny timm classifier (random weights, 64 px),
tier 1 the same behind ``chaos`` fault injection; every image climbs to tier 1.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import typing

from natix_miner.stats import percentile

TINY = {"family": "timm", "model": "mobilenetv3_small_050", "device": "cpu",
        "options": {"num_classes": 2, "image_size": 64}}


class SoakError(RuntimeError):
    """The soak cannot run (the miner refused to start); the message says why."""


@dataclasses.dataclass
class SoakConfig:
    seconds: float = 30.0
    rate: float = 10.0  # requests per second (Poisson arrivals)
    validators: int = 8
    timeout: float = 9.0  # the validators' timeout
    hostile: float = 0.1  # fraction of hostile images
    unique_images: int = 64  # pool of valid images (repeats hit the cache)
    profile: typing.Optional[str] = None
    fault: str = "ok"  # chaos mode of tier 1: ok|raise|oom|hang|slow|nan
    fault_rate: float = 0.2
    max_inflight: int = 32
    max_waiting: int = 128
    seed: int = 0
    json_path: typing.Optional[str] = None
    verbose: bool = False
    allow_degraded: bool = False  # serve a profile with a tier that has no loadable expert


def default_profile(workdir: str, mode_file: str, fault_rate: float):
    from natix_miner.config import Profile

    return Profile.model_validate({
        "name": "soak-cpu",
        "experts": [{"name": "fast", "max_batch": 16, "max_wait_ms": 3, **TINY},
                    {"name": "chaotic", "family": "chaos", "device": "cpu", "max_batch": 16, "max_wait_ms": 3,
                     "options": {"mode_file": mode_file, "rate": fault_rate, "hang_max_s": 5.0, "slow_s": 0.5,
                                 "inner": dict(TINY)}}],
        "tiers": [{"name": "fast", "experts": ["fast"], "budget_s": 3.0},
                  {"name": "deep", "experts": ["chaotic"], "budget_s": 1.5}],
        "escalation": {"low": 0.0, "high": 1.0},
        "breaker": {"failures": 3, "cooldown_s": 2.0},
        "deadline_s": 7.0,
    })


class _Recorder:
    """Miner hooks: per-outcome counts and the server-side time of each request."""

    def __init__(self):
        from natix_miner.miner.hooks import MinerHooks

        rec = self

        class Hooks(MinerHooks):
            def request(self, route, outcome, seconds, result=None, hotkey=None):
                with rec.lock:
                    rec.outcomes[outcome] = rec.outcomes.get(outcome, 0) + 1
                    reason = getattr(result, "fallback_reason", None)
                    if reason:
                        key = reason.split(":")[0]
                        rec.fallback_reasons[key] = rec.fallback_reasons.get(key, 0) + 1
                    rec.server_s.append(seconds)

            def blacklisted(self, route, reason, hotkey=None):
                with rec.lock:
                    rec.outcomes["blacklisted"] = rec.outcomes.get("blacklisted", 0) + 1

        self.lock = threading.Lock()
        self.outcomes: typing.Dict[str, int] = {}
        self.fallback_reasons: typing.Dict[str, int] = {}
        self.server_s: typing.List[float] = []
        self.hooks = Hooks()


class _RSS:
    """Samples this process's resident memory every ``every`` seconds on a thread."""

    def __init__(self, every: float = 0.25):
        self.samples: typing.List[typing.Tuple[float, float]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(every,), name="rss", daemon=True)

    @staticmethod
    def now_mb() -> float:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append((time.monotonic(), self.now_mb()))

    def __enter__(self):
        self.samples.append((time.monotonic(), self.now_mb()))
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(2)
        self.samples.append((time.monotonic(), self.now_mb()))

    def summary(self, t_start: float) -> dict:
        during = [mb for t, mb in self.samples if t >= t_start] or [self.samples[-1][1]]
        q = max(1, len(during) // 4)

        def median(xs):
            xs = sorted(xs)
            return xs[len(xs) // 2]

        early, late = median(during[q:2 * q] or during), median(during[-q:])  # after warm-up vs the end
        return {"start_mb": round(during[0], 1), "peak_mb": round(max(mb for _, mb in self.samples), 1),
                "end_mb": round(during[-1], 1), "growth_mb": round(late - early, 1), "samples": len(self.samples)}


def _pct(values: typing.Sequence[float], q: float) -> float:
    return percentile(values, q) or 0.0


def _images(n: int, seed: int) -> typing.List[str]:
    from PIL import Image

    from natix_miner.synth.hostile import b64, encode, scene

    return [b64(encode(Image.fromarray(scene(224, 224, seed=seed * 1000 + i)), "JPEG", quality=75)) for i in range(n)]


def _serve(conn, profile, mcfg, wallet_args: typing.Tuple[str, str, str]) -> None:  # pragma: no cover - child
    """The miner's own process (as in production): serve until told to stop, then report."""
    import logging
    import warnings

    from PIL import Image

    from natix_miner.offline import enforce_offline

    enforce_offline()
    os.environ.setdefault("BT_NO_PARSE_CLI_ARGS", "true")
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    logging.basicConfig(level=logging.ERROR, force=True)
    import bittensor as bt

    from natix_miner.engine import Engine
    from natix_miner.miner.local import MinerThread

    name, hotkey, path = wallet_args
    rec = _Recorder()
    engine = Engine(profile)
    t0 = time.monotonic()
    with _RSS() as rss, contextlib.ExitStack() as stack:
        try:
            m = stack.enter_context(MinerThread(mcfg, engine=engine, hooks=rec.hooks,
                                                wallet=bt.Wallet(name=name, hotkey=hotkey, path=path)))
        except RuntimeError as exc:  # a refused start (a degraded profile, ...): one line for the parent
            conn.send(("error", str(exc.__cause__ or exc)))
            conn.close()
            return
        conn.send(("ready", m.port, m.hotkey, m.miner.wallet.coldkeypub.ss58_address, time.monotonic() - t0))
        msg = conn.recv()  # ("stop", seconds since the load began)
        load_began = time.monotonic() - msg[1]
        admission = m.miner.admission.snapshot()
        status = engine.status()
    with rec.lock:
        conn.send({"outcomes": dict(rec.outcomes), "fallback_reasons": dict(rec.fallback_reasons),
                   "server_s": list(rec.server_s), "admission": admission, "rss": rss.summary(load_began),
                   "engine": {"fallbacks": status.get("fallbacks"), "cache": status.get("cache"),
                              "breakers": {k: {"state": v.get("breaker"), "errors": v.get("errors"),
                                               "timeouts": v.get("timeouts")}
                                           for k, v in (status.get("experts") or {}).items()}}})
    conn.close()
    os._exit(0)  # the miner has stopped; skip interpreter teardown (bittensor's log-queue thread dies noisily)


async def run_soak(cfg: SoakConfig) -> dict:
    """Run the soak and return the report (see the module docstring). The miner runs in its own
    process, so the load generator does not steal its CPU and the memory figures are the miner's."""
    import multiprocessing

    from natix_miner.config import MinerConfig, load_profile
    from natix_miner.synth.hostile import cases
    from natix_miner.miner.local import axon_info, loopback_dendrite
    from natix_miner.miner.wallet import ephemeral_wallet
    from natix_miner.protocol import ImageSynapse

    rng = random.Random(cfg.seed)
    work = tempfile.mkdtemp(prefix="natix-soak-")
    mode_file = os.path.join(work, "chaos-mode")
    with open(mode_file, "w") as fh:
        fh.write(cfg.fault)
    profile = load_profile(cfg.profile) if cfg.profile else default_profile(work, mode_file, cfg.fault_rate)
    vals = [(ephemeral_wallet(f"soak{i}", "hk", os.path.join(work, f"v{i}")), round(rng.lognormvariate(8, 1.5), 1))
            for i in range(cfg.validators)]
    mg = os.path.join(work, "metagraph.yaml")
    with open(mg, "w") as fh:
        for w, stake in vals:
            fh.write(f"- {{hotkey: {w.hotkey.ss58_address}, stake: {stake}, validator_permit: true}}\n")
    os.chmod(mg, 0o600)
    mcfg = MinerConfig.model_validate({
        "local": True, "local_metagraph": mg, "metrics": {"enabled": False}, "allow_degraded": cfg.allow_degraded,
        "axon": {"ip": "127.0.0.1", "port": 0, "max_inflight": cfg.max_inflight, "max_waiting": cfg.max_waiting}})
    ephemeral_wallet("soak-miner", "hk", os.path.join(work, "m"))
    valid_pool = _images(cfg.unique_images, cfg.seed)
    hostile_pool = [c.text for c in cases()]
    latencies: typing.List[float] = []
    bad: typing.Dict[str, int] = {"invalid": 0, "late": 0, "http_error": 0}
    sent = 0

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, profile, mcfg, ("soak-miner", "hk", os.path.join(work, "m"))),
                       name="soak-miner", daemon=True)
    proc.start()
    child.close()
    loop = asyncio.get_running_loop()
    try:
        if not await loop.run_in_executor(None, parent.poll, 900):
            raise RuntimeError("the miner did not start within 900 s")
        msg = parent.recv()
        if msg[0] == "error":
            raise SoakError(f"the miner did not start: {msg[1]}")
        _, port, hotkey, coldkey, load_s = msg
        info = axon_info("127.0.0.1", port, hotkey, coldkey)
        dendrites = [loopback_dendrite(w) for w, _ in vals]
        cap = max(64, int(cfg.rate * cfg.timeout * 4))
        outstanding: typing.Set[asyncio.Task] = set()

        async def one(d, image: str) -> None:
            t0 = time.monotonic()
            try:
                r = await d.forward(info, ImageSynapse(image=image), timeout=cfg.timeout, deserialize=False)
            except Exception:  # noqa: BLE001 - counted, never fatal to the soak
                bad["http_error"] += 1
                return
            took = time.monotonic() - t0
            latencies.append(took)
            p = r.prediction
            if r.axon.status_code != 200 or not isinstance(p, float) or not math.isfinite(p) or not 0 <= p <= 1:
                bad["invalid"] += 1
            if took > cfg.timeout:
                bad["late"] += 1

        t_start = time.monotonic()
        next_at = t_start
        try:
            while True:
                now = time.monotonic()
                if now - t_start >= cfg.seconds:
                    break
                if now < next_at:
                    await asyncio.sleep(min(next_at - now, 0.05))
                    continue
                next_at += rng.expovariate(cfg.rate)
                if len(outstanding) >= cap:
                    continue  # the client is saturated: skip this arrival (counted as not sent)
                image = rng.choice(hostile_pool) if rng.random() < cfg.hostile else rng.choice(valid_pool)
                task = asyncio.ensure_future(one(rng.choice(dendrites), image))
                outstanding.add(task)
                task.add_done_callback(outstanding.discard)
                sent += 1
            if outstanding:
                await asyncio.wait(outstanding, timeout=cfg.timeout + 5)
        finally:
            for d in dendrites:
                await d.aclose_session()
        duration = time.monotonic() - t_start
        parent.send(("stop", time.monotonic() - t_start))
        if not await loop.run_in_executor(None, parent.poll, 120):
            raise RuntimeError("the miner did not report within 120 s")
        served = parent.recv()
        await loop.run_in_executor(None, proc.join, 60)
        alive_at_end = proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
        with open(mode_file, "w") as fh:
            fh.write("ok")
        proc.join(10)
        shutil.rmtree(work, ignore_errors=True)  # keys, metagraph, chaos file: leave nothing in the temp dir
    n_ok = len(latencies) - bad["invalid"]
    report = {
        "config": dataclasses.asdict(cfg),
        "profile": profile.name,
        "load_s": round(load_s, 2),
        "duration_s": round(duration, 2),
        "sent": sent,
        "completed": len(latencies),
        "valid_answers": n_ok,
        "throughput_rps": round(len(latencies) / duration, 2) if duration else 0.0,
        "outcomes": dict(sorted(served["outcomes"].items())),
        "fallback_reasons": dict(sorted(served["fallback_reasons"].items())),
        **bad,
        "latency_s": {"p50": round(_pct(latencies, 50), 4), "p90": round(_pct(latencies, 90), 4),
                      "p99": round(_pct(latencies, 99), 4), "max": round(max(latencies, default=0.0), 4)},
        "server_s": {"p50": round(_pct(served["server_s"], 50), 4), "p99": round(_pct(served["server_s"], 99), 4)},
        "rss": served["rss"],
        "admission": served["admission"],
        "engine": served["engine"],
        "miner_exit_code": proc.exitcode,
    }
    report["ok"] = bool(sent) and alive_at_end and bad["invalid"] == 0 and bad["late"] == 0 \
        and bad["http_error"] == 0 and len(latencies) == sent
    return report


def format_soak(r: dict) -> str:
    """A soak report as text: traffic, outcomes, latency, memory, admission, verdict."""
    lat, rss = r["latency_s"], r["rss"]
    lines = [
        f"soak {r['profile']}: {r['duration_s']}s, {r['sent']} sent, {r['completed']} completed, "
        f"{r['throughput_rps']} req/s (models loaded in {r['load_s']}s)",
        f"  outcomes        {r['outcomes']}",
        f"  fallback reasons {r['fallback_reasons']}",
        f"  bad answers     invalid={r['invalid']} late={r['late']} http_error={r['http_error']}",
        f"  latency (s)     p50={lat['p50']} p90={lat['p90']} p99={lat['p99']} max={lat['max']} "
        f"(miner side p50={r['server_s']['p50']} p99={r['server_s']['p99']})",
        f"  miner memory    (MB) start={rss['start_mb']} peak={rss['peak_mb']} end={rss['end_mb']} "
        f"growth={rss['growth_mb']}",
        f"  admission       peak_inflight={r['admission']['peak_inflight']} peak_waiting="
        f"{r['admission']['peak_waiting']} refused={r['admission']['refused']}",
        f"  breakers        {r['engine']['breakers']}",
        f"  result          {'PASS' if r['ok'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SoakConfig()
    p.add_argument("--seconds", type=float, default=d.seconds, help="how long to send (bounded run)")
    p.add_argument("--rate", type=float, default=d.rate, help="requests per second (Poisson)")
    p.add_argument("--validators", type=int, default=d.validators, help="distinct validator hotkeys")
    p.add_argument("--timeout", type=float, default=d.timeout, help="the validators' timeout (s)")
    p.add_argument("--hostile", type=float, default=d.hostile, help="fraction of hostile images")
    p.add_argument("--unique-images", type=int, default=d.unique_images, help="pool of valid images")
    p.add_argument("--profile", default=None, help="profile name/path (default: a tiny 2-tier CPU cascade)")
    p.add_argument("--fault", default=d.fault, choices=["ok", "raise", "oom", "hang", "slow", "nan"],
                   help="fault injected into tier 1 of the default cascade")
    p.add_argument("--fault-rate", type=float, default=d.fault_rate, help="fraction of tier-1 batches that fail")
    p.add_argument("--max-inflight", type=int, default=d.max_inflight)
    p.add_argument("--max-waiting", type=int, default=d.max_waiting)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", dest="json_path", default=None, help="write the report here")
    p.add_argument("--verbose", action="store_true", help="miner logs at INFO")
    p.add_argument("--allow-downloads", action="store_true",
                   help="let missing models download (default: offline; NATIX_ALLOW_DOWNLOADS=1 too)")
    p.add_argument("--allow-degraded", action="store_true",
                   help="serve even when a tier of --profile has no loadable expert (default: refused)")
    from natix_miner.standins import add_arguments as stand_in_arguments

    stand_in_arguments(p)  # --stand-ins DIR, --device D (applied where the profile loads)


def add_parser(sub) -> None:
    p = sub.add_parser("soak", help="bounded loopback soak of a real miner (answers, fallbacks, p99, memory)")
    add_arguments(p)
    p.set_defaults(func=main_args)


def main_args(args) -> int:
    import logging

    from natix_miner.offline import apply_download_policy

    import warnings

    from PIL import Image

    apply_download_policy(getattr(args, "allow_downloads", False))
    from natix_miner.standins import apply_cli

    if apply_cli(args):
        return 2
    os.environ.setdefault("BT_NO_PARSE_CLI_ARGS", "true")
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the bombs are sent on purpose
    fields = {f.name for f in dataclasses.fields(SoakConfig)}
    cfg = SoakConfig(**{k: v for k, v in vars(args).items() if k in fields})
    logging.basicConfig(level=logging.INFO if cfg.verbose else logging.ERROR, force=True)
    try:
        report = asyncio.run(run_soak(cfg))
    except SoakError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_soak(report))
    if cfg.json_path:
        with open(cfg.json_path, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0 if report["ok"] else 1


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return main_args(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
