"""The production cascade, measured (issue 14 part 2): load, memory and latency of a whole profile.

One command loads a profile (``h100x1`` on one card, ``h100x2`` on two; stand-in weights of the real
architectures, :mod:`natix_miner.standins`) and measures, writing ``--out`` after every step so a run
cut short keeps what it measured:

* ``machine``: the cards (or the CPU), torch / transformers versions, UTC date, the command line;
* ``plan``: ``natix-miner profile plan``'s placement from the ``memory_gb`` hints of the profile as
  written (the visible cards, else ``--plan-gpus`` x ``--plan-gpu-gb``);
* ``load``: every replica's load time (load + warm-up) in load order, with the memory it added
  (``torch.cuda.memory_allocated`` of its card, the card's used memory, the process RSS) beside its
  hint, then per expert and in total; ``after_load``: memory per card and RSS once everything is up;
* ``steps``: one per concurrency and mode (every mode at the first concurrency first): ``natural`` (the profile's escalation bands) and
  ``all_tiers`` (every image through every tier, ``Engine.predict(all_tiers=True)``), each at every
  ``--concurrency``: end-to-end latency p50/p99 from a closed loop of clients
  (:func:`natix_miner.benchmark.closed_loop`), per-tier and per-expert latency p50/p99, counts of
  valid answers (a finite number in [0, 1]), fallbacks, answers inside the profile's deadline,
  the share of images that ran each tier and the escalation rate from each tier to the next,
  and the peak memory per card (``max_memory_allocated``) and RSS while the step ran.

The VLM tier: vLLM is a GPU server that cannot be installed on the lent machines, so
``--vlm-backend hf`` (``auto`` picks it when ``import vllm`` fails or on the CPU) runs every ``vllm``
expert through the transformers backend (family ``hf_vlm``, bfloat16 on a card, same architecture and
directory; :func:`natix_miner.standins.vllm_as_hf`) and the report's ``vlm`` entry says so.

Random stand-in weights keep the consensus near 0.5, so with the profile's bands nearly every image
climbs to the VLM tier. ``--escalation-share 0.3,0.1`` adds a ``calibrated`` mode: the bands after
each tier are set from the all-tiers run's stage consensus (quantiles) so that about 30% of images
reach the second tier and 10% the third, the mix the issue's natural-escalation target assumes; the
measured shares are reported, not assumed.

Usage::

    # one H200: build full-scale stand-ins on the card, then measure h100x1
    python scripts/bench_cascade.py --profile h100x1 --stand-ins /tmp/si-h100x1 --build-stand-ins --scale full \\
        --concurrency 1,10,64 --n 128 --escalation-share 0.3,0.1 --out $OUT/h100x1-cascade.json
    # this CPU box, tiny stand-ins (what CI runs)
    python scripts/bench_cascade.py --profile h100x2 --stand-ins /tmp/si --build-stand-ins --scale tiny \\
        --device cpu --concurrency 1,4 --n 8 --out /tmp/h100x2-cpu.json
"""

import argparse
import asyncio
import collections
import datetime
import json
import math
import os
import platform
import sys
import threading
import time
import typing
from pathlib import Path

from natix_miner.stats import percentile

MODES = ("natural", "all_tiers", "calibrated")
GiB = 1024 ** 3


class BenchError(RuntimeError):
    """An operator mistake; the message names the fix (printed as one ``error: ...`` line)."""


# -- machine and memory -------------------------------------------------------------------------------
def machine() -> dict:
    """What the run ran on: cards (name, memory), CPU model and cores, RAM, library versions."""
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    out = {"host": platform.node(), "cpu": cpu, "cpu_cores": os.cpu_count(),
           "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
           "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda, "gpus": []}
    try:  # MemTotal as read now (a lent machine's grows as memory is used)
        out["ram_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1)
    except (ValueError, OSError):  # pragma: no cover - not Linux
        pass
    from importlib import metadata

    for lib in ("transformers", "timm", "torchvision", "ultralytics", "rfdetr", "onnxruntime", "vllm"):
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:  # absent: the run says so
            out[lib] = None
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["gpus"].append({"device": f"cuda:{i}", "name": p.name, "total_gb": round(p.total_memory / GiB, 1)})
    out["card"] = out["gpus"][0]["name"] if out["gpus"] else f"cpu ({cpu})"
    return out


def _rss() -> int:
    """This process's resident memory in bytes (the soak test's reading)."""
    from natix_miner.soak import _RSS

    return int(_RSS.now_mb() * 1024 * 1024)


def memory() -> dict:
    """This process's RSS and, per card, what torch holds and what the whole card has in use (bytes)."""
    out: dict = {"rss_bytes": _rss()}
    import torch

    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            out[f"cuda:{i}"] = {"allocated_bytes": int(torch.cuda.memory_allocated(i)),
                                "max_allocated_bytes": int(torch.cuda.max_memory_allocated(i)),
                                "reserved_bytes": int(torch.cuda.memory_reserved(i)),
                                "used_bytes": int(total - free), "total_bytes": int(total)}
    return out


def _delta(after: dict, before: dict, device: str) -> dict:
    """Memory a load added: on its card (torch's allocations and the card's used memory) and in RSS."""
    out = {"rss_gb": round((after["rss_bytes"] - before["rss_bytes"]) / GiB, 3)}
    if device in after and device in before:
        out["allocated_gb"] = round((after[device]["allocated_bytes"] - before[device]["allocated_bytes"]) / GiB, 3)
        out["card_used_gb"] = round((after[device]["used_bytes"] - before[device]["used_bytes"]) / GiB, 3)
    return out


class PeakSampler:
    """Peak RSS (sampled every ``every_s``) and per-card ``max_memory_allocated`` over a ``with`` block.

        with PeakSampler() as peak:
            ...
        peak.result   # {"rss_peak_gb": ..., "cuda:0": {"max_allocated_gb": ..., "used_peak_gb": ...}}
    """

    def __init__(self, every_s: float = 0.05):
        self.every_s = every_s
        self.result: dict = {}
        self._stop = threading.Event()
        self._rss = 0
        self._used: typing.Dict[int, int] = {}

    def _sample(self) -> None:
        import torch

        self._rss = max(self._rss, _rss())
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                self._used[i] = max(self._used.get(i, 0), int(total - free))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> "PeakSampler":
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(i)
        self._sample()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        self._stop.set()
        self._thread.join()
        self._sample()
        self.result = {"rss_peak_gb": round(self._rss / GiB, 3)}
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                self.result[f"cuda:{i}"] = {"max_allocated_gb": round(torch.cuda.max_memory_allocated(i) / GiB, 3),
                                            "used_peak_gb": round(self._used.get(i, 0) / GiB, 3)}


def _gb(b: typing.Optional[float]) -> typing.Optional[float]:
    return None if b is None else round(b / GiB, 3)


def _ms(xs: typing.Sequence[float], q: float) -> typing.Optional[float]:
    """Nearest-rank percentile ``q`` (0-100) of seconds, in milliseconds; None for no samples."""
    v = percentile(xs, q)
    return None if v is None else round(1000.0 * v, 2)


# -- report -------------------------------------------------------------------------------------------
class Report:
    """The JSON report, rewritten (atomically) after every step."""

    def __init__(self, path: typing.Union[str, Path], data: dict):
        self.path = Path(path)
        self.data = data

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


# -- profile ------------------------------------------------------------------------------------------
def vlm_backend(choice: str, device: typing.Optional[str]) -> typing.Tuple[str, str]:
    """(``vllm`` or ``hf``, why) for ``--vlm-backend`` ``auto|vllm|hf``."""
    import importlib.util

    if choice == "hf":
        return "hf", "--vlm-backend hf"
    if device == "cpu":
        return "hf", "--device cpu: vLLM is a GPU engine here"
    if choice == "vllm":
        return "vllm", "--vlm-backend vllm"
    if importlib.util.find_spec("vllm") is None:
        return "hf", "vllm is not installed here (auto)"
    return "vllm", "vllm is installed (auto)"


def prepare_profile(name: str, stand_ins: typing.Optional[str], device: typing.Optional[str], backend: str,
                    hf_dtype: str):
    """The profile as the run loads it (stand-ins, device, VLM backend applied; result cache off: the
    validator never repeats an image) and the ``vlm`` entry of the report."""
    from natix_miner.config import Profile, load_profile
    from natix_miner.standins import vllm_as_hf

    written = load_profile(name, stand_ins=False, device=False)
    prof = load_profile(name, stand_ins=stand_ins or False, device=device or False)  # main resolved the env
    data = prof.model_dump(round_trip=True)
    data["path"] = prof.path
    if backend == "hf":
        where = "on the CPU" if device == "cpu" else "in this benchmark (--vlm-backend hf)"
        data["experts"] = [vllm_as_hf(e, dtype=None if device == "cpu" else hf_dtype, where=where)
                           for e in data["experts"]]
    data["cache"] = dict(data.get("cache") or {}, max_entries=0)
    prof = Profile.model_validate(data)
    vlm = {w.name: {"profile_family": w.family, "profile_dtype": w.dtype, "run_as": prof.expert(w.name).family,
                    "dtype": prof.expert(w.name).dtype}
           for w in written.experts if w.family in ("vllm", "hf_vlm")}
    return written, prof, vlm


def plan(written, gpus: typing.Optional[int], gpu_gb: float) -> dict:
    """``natix-miner profile plan`` on the profile as written: the visible cards, else ``gpus`` x ``gpu_gb``."""
    from natix_miner.engine.placement import Placement, PlacementError, detect_gpus

    found = detect_gpus()
    if found:
        inventory, source = {d: total for d, (total, _) in found.items()}, "visible cards"
    else:
        n = gpus if gpus is not None else max(1, len({d for e in written.tiered_experts for d in e.replica_devices
                                                      if d.startswith("cuda:")}))
        inventory, source = {f"cuda:{i}": int(gpu_gb * GiB) for i in range(n)}, f"{n} x {gpu_gb:g} GB (--plan-gpus)"
    p = Placement(written.gpu_memory_fraction, inventory=inventory, in_use={})
    error = None
    try:
        p.plan(written.tiered_experts)
    except PlacementError as exc:
        error = str(exc)
    per_device = {d: {"hint_gb": _gb(p.used[d]), "budget_gb": _gb(p.budget[d]), "total_gb": _gb(total)}
                  for d, total in p.gpus.items()}
    return {"inventory": source, "devices": per_device, "error": error, "table": p.table(),
            "replicas": [{"expert": r.expert, "replica": r.replica, "device": r.device, "hint_gb": _gb(r.bytes)}
                         for r in p.placed]}


def plan_vs_measured(planned: dict, after: dict, before: dict) -> typing.Dict[str, dict]:
    """Per card: the plan's hinted total beside what torch allocated and what the card had in use after
    load (less what was in use before it), in GB; empty on the CPU."""
    out = {}
    for d, row in planned["devices"].items():
        if d in after and d in before:
            used = (after[d]["used_bytes"] - before[d]["used_bytes"]) / GiB
            out[d] = {"hint_gb": row["hint_gb"], "allocated_gb": _gb(after[d]["allocated_bytes"]),
                      "used_gb": round(used, 3),
                      "used_over_hint": round(used / row["hint_gb"], 2) if row["hint_gb"] else None}
    return out


# -- the measured engine -------------------------------------------------------------------------------
def measured_engine(profile, on_load: typing.Callable[[dict], None]):
    """An :class:`~natix_miner.engine.Engine` whose every replica load is timed and its memory measured
    (``on_load(row)`` after each, in load order)."""
    from natix_miner.engine import Engine

    class MeasuredEngine(Engine):
        async def _load_replica(self, spec, index, device, loop, loader):
            before = memory()
            t0 = time.perf_counter()
            row = {"expert": spec.name, "family": spec.family, "replica": index, "device": device,
                   "hint_gb": spec.memory_gb}
            try:
                return await super()._load_replica(spec, index, device, loop, loader)
            except BaseException as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                row["load_s"] = round(time.perf_counter() - t0, 3)
                row["added"] = _delta(memory(), before, device)
                on_load(row)

    return MeasuredEngine(profile)


def load_summary(engine, rows: typing.List[dict], total_s: float) -> dict:
    """Per expert: load seconds (all replicas), hint vs measured memory (the engine's own per-replica
    figure on a card, RSS added on the CPU)."""
    measured = collections.defaultdict(int)
    largest = collections.defaultdict(int)  # the largest replica: what the per-replica memory_gb hint should cover
    for p in engine.placement.placed:
        if p.measured:
            measured[p.expert] += p.bytes
            largest[p.expert] = max(largest[p.expert], p.bytes)
    experts = {}
    for row in rows:
        e = experts.setdefault(row["expert"], {"family": row["family"], "replicas": 0, "load_s": 0.0,
                                               "devices": [], "hint_gb_per_replica": row["hint_gb"],
                                               "rss_added_gb": 0.0, "card_added_gb": 0.0})
        e["replicas"] += 1
        e["load_s"] = round(e["load_s"] + row["load_s"], 3)
        e["devices"].append(row["device"])
        e["rss_added_gb"] = round(e["rss_added_gb"] + row["added"]["rss_gb"], 3)
        e["card_added_gb"] = round(e["card_added_gb"] + max(row["added"].get("allocated_gb", 0.0),
                                                            row["added"].get("card_used_gb", 0.0)), 3)
        if "error" in row:
            e["error"] = row["error"]
    for name, e in experts.items():
        hint = (e["hint_gb_per_replica"] or 0.0) * e["replicas"]
        e["hint_gb"] = round(hint, 3)
        # the engine's own figure (its placement table): card memory the load took, or the weights on the CPU
        e["measured_gb"] = _gb(measured[name]) if measured.get(name) else None
        e["measured_gb_per_replica"] = _gb(largest[name]) if largest.get(name) else None
        got = e["measured_gb"]
        on_card = all(d.startswith("cuda") for d in e["devices"])  # hints are card memory
        e["measured_over_hint"] = round(got / hint, 2) if on_card and got is not None and hint > 0 else None
        e["status"] = engine.load_status.get(name)
    return {"total_s": round(total_s, 2), "experts": experts,
            "failed": {k: v for k, v in engine.load_errors.items()},
            "status": dict(engine.load_status)}


# -- one step: a closed loop at one concurrency -------------------------------------------------------
def valid(p: typing.Any) -> bool:
    """What the validator accepts: a finite number in [0, 1]."""
    return isinstance(p, float) and math.isfinite(p) and 0.0 <= p <= 1.0


def summarise(results: typing.Sequence[typing.Tuple[typing.Any, float]], profile, wall: float) -> dict:
    """Latency percentiles, answer counts, per-tier and per-expert figures of one step's results."""
    lat = [dt for _, dt in results]
    n = len(results)
    fallbacks = collections.Counter(r.fallback_reason.split(":")[0] for r, _ in results if r.fallback)
    tiers = {}
    for t in profile.tiers:
        xs = [r.timings[f"tier:{t.name}"] for r, _ in results if f"tier:{t.name}" in r.timings]
        tiers[t.name] = {"ran": len(xs), "share": round(len(xs) / n, 4) if n else 0.0,
                         "p50_ms": _ms(xs, 50), "p99_ms": _ms(xs, 99),
                         "skipped": dict(collections.Counter(r.skipped[t.name] for r, _ in results
                                                             if t.name in r.skipped))}
    escalation = {}
    for a, b in zip(profile.tiers, profile.tiers[1:]):
        ran = tiers[a.name]["ran"]
        escalation[f"{a.name}->{b.name}"] = round(tiers[b.name]["ran"] / ran, 4) if ran else None
    experts = {}
    for e in profile.tiered_experts:
        xs = [r.timings[f"expert:{e.name}"] for r, _ in results if f"expert:{e.name}" in r.timings]
        experts[e.name] = {"answered": len(xs), "p50_ms": _ms(xs, 50), "p99_ms": _ms(xs, 99),
                           "skipped": dict(collections.Counter(r.skipped[e.name] for r, _ in results
                                                               if e.name in r.skipped))}
    return {"requests": n, "wall_s": round(wall, 3), "img_per_s": round(n / wall, 3) if wall else None,
            "e2e": {"p50_ms": _ms(lat, 50), "p99_ms": _ms(lat, 99), "max_ms": _ms(lat, 100),
                    "mean_ms": round(1000 * sum(lat) / n, 2) if n else None},
            "answers": {"valid": sum(valid(r.probability) for r, _ in results),
                        "invalid": sum(not valid(r.probability) for r, _ in results),
                        "fallbacks": sum(fallbacks.values()), "fallback_reasons": dict(fallbacks),
                        "inside_deadline": sum(dt <= profile.deadline_s for _, dt in results),
                        "deadline_s": profile.deadline_s},
            "tiers": tiers, "escalation": escalation, "experts": experts}


async def run_step(engine, datas: typing.Sequence[bytes], concurrency: int, n: int, all_tiers: bool,
                   keep: typing.Optional[list] = None) -> dict:
    """``n`` requests from ``concurrency`` closed-loop clients through ``engine.predict``; the raw
    results are appended to ``keep`` (the calibrated mode reads the all-tiers ones)."""
    from natix_miner.benchmark import closed_loop

    results: typing.List[typing.Any] = [None] * n

    async def call(i: int) -> bool:
        t = time.perf_counter()
        res = await engine.predict(datas[i % len(datas)], all_tiers=all_tiers)
        results[i] = (res, time.perf_counter() - t)
        return not valid(res.probability)

    with PeakSampler() as peak:
        _, _, wall = await closed_loop(call, n, concurrency)
    done = [r for r in results if r is not None]
    if keep is not None:
        keep.extend(r for r, _ in done)
    row = summarise(done, engine.profile, wall)
    row["peak_memory"] = peak.result
    return row


# -- calibrated escalation ------------------------------------------------------------------------------
def stage_probabilities(results, engine) -> typing.List[typing.List[float]]:
    """For every tier but the last, the consensus an all-tiers result had after that tier (what the
    engine compares with the tier's band)."""
    out: typing.List[typing.List[float]] = []
    seen: typing.List[str] = []
    for tier in engine.profile.tiers[:-1]:
        seen += tier.experts
        ps = []
        for r in results:
            p = engine.consensus.combine({k: v for k, v in r.evidence.items() if k in seen}, stage=tier.name)
            if p is not None and math.isfinite(p):
                ps.append(p)
        out.append(ps)
    return out


def calibrated_bands(stages: typing.Sequence[typing.Sequence[float]], shares: typing.Sequence[float]) -> list:
    """(low, high) per tier so that about ``shares[i]`` of all images reach tier ``i + 1``: the central
    ``shares[i] / shares[i - 1]`` of the stage consensus stays inside the band (nearest-rank quantiles)."""
    bands = []
    prev = 1.0
    for ps, share in zip(stages, shares):
        keep = min(1.0, share / prev) if prev > 0 else 0.0
        prev = share
        if not ps or keep <= 0:
            bands.append((0.5, 0.5))
            continue
        lo_q, hi_q = 100 * (1 - keep) / 2, 100 * (1 + keep) / 2
        low = percentile(ps, lo_q) if lo_q > 0 else 0.0
        high = percentile(ps, hi_q) if hi_q < 100 else 1.0
        low = max(0.0, float(low) - 1e-9) if lo_q > 0 else 0.0  # the band is open: low < p < high
        high = min(1.0, float(high) + 1e-9) if hi_q < 100 else 1.0
        bands.append((low, max(low, high)))
    return bands


def with_bands(profile, bands):
    """``profile`` with tier ``i``'s escalation band set to ``bands[i]``."""
    from natix_miner.config import EscalationSpec

    tiers = [t.model_copy(update={"escalation": EscalationSpec(low=b[0], high=b[1])}) if i < len(bands) else t
             for i, (t, b) in enumerate(zip(profile.tiers, list(bands) + [None] * len(profile.tiers)))]
    return profile.model_copy(update={"tiers": tiers})


def plan_modes(modes: typing.Sequence[str], shares: typing.Optional[typing.Sequence[float]]) -> typing.List[str]:
    """The modes in the order they run: ``calibrated`` (added by ``--escalation-share``) last, after an
    ``all_tiers`` pass it reads its bands from. Raises :class:`BenchError` for calibrated without shares."""
    modes = list(modes)
    if shares and "calibrated" not in modes:
        modes.append("calibrated")
    if "calibrated" in modes:
        if not shares:
            raise BenchError("--modes calibrated needs --escalation-share S1,S2 (e.g. 0.3,0.1)")
        modes = [m for m in modes if m != "calibrated"]
        if "all_tiers" not in modes:
            modes.append("all_tiers")  # the bands are read off the all-tiers results
        modes.append("calibrated")
    return modes


# -- the command ---------------------------------------------------------------------------------------
def _csv(s: str, kind: type, ok: typing.Callable[[list], bool], what: str) -> list:
    """A comma-separated list of ``kind`` for argparse; ``ok`` checks it, ``what`` names a good one."""
    try:
        out = [kind(x) for x in s.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or not ok(out):
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
    return out


def _ints(s: str) -> typing.List[int]:
    return _csv(s, int, lambda xs: min(xs) >= 1, "comma-separated positive integers (1,10,64)")


def _shares(s: str) -> typing.List[float]:
    return _csv(s, float, lambda xs: all(0 < x <= 1 for x in xs) and all(b <= a for a, b in zip(xs, xs[1:])),
                "comma-separated non-increasing fractions in (0, 1] (0.3,0.1)")


def _modes(s: str) -> typing.List[str]:
    out = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in out if x not in MODES]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; got {s!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    from natix_miner.cli import DefaultsHelpFormatter  # "(default: X)" only where there is one

    ap = argparse.ArgumentParser(prog="bench_cascade.py", description=__doc__.split("\n\n")[0],
                                 epilog="Every flag: natix_miner/cascade_bench.py; docs/benchmarks.md",
                                 formatter_class=DefaultsHelpFormatter)
    ap.add_argument("--profile", required=True, help="profile name or path (h100x1, h100x2, ...)")
    ap.add_argument("--stand-ins", dest="stand_ins", default=None, metavar="DIR",
                    help="stand-in weights (natix-miner models stand-in); without it the profile's own models")
    ap.add_argument("--build-stand-ins", action="store_true",
                    help="write stand-ins into --stand-ins DIR first (kept when DIR already holds this profile "
                         "at --scale)")
    ap.add_argument("--scale", choices=["tiny", "full"], default="full", help="stand-in scale for --build-stand-ins")
    ap.add_argument("--build-only", action="store_true",
                    help="with --build-stand-ins: stop after building (a short call of its own on a lent machine)")
    ap.add_argument("--device", default=None, metavar="DEVICE",
                    help="every expert and replica on DEVICE (cpu, cuda:N); default: the profile's placement")
    ap.add_argument("--vlm-backend", choices=["auto", "vllm", "hf"], default="auto",
                    help="hf: the vllm family through transformers (hf_vlm); auto: hf when vllm is not installed")
    ap.add_argument("--hf-vlm-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                    help="dtype of vllm experts run through hf_vlm on a card")
    ap.add_argument("--concurrency", type=_ints, default="1,10,64", metavar="C1,C2", help="closed-loop clients per step")
    ap.add_argument("--n", type=int, default=128, help="requests per step (at least the concurrency)")
    ap.add_argument("--modes", type=_modes, default="natural,all_tiers", metavar="M1,M2",
                    help="natural (profile bands), all_tiers, calibrated (needs --escalation-share)")
    ap.add_argument("--escalation-share", type=_shares, default=None, metavar="S1,S2",
                    help="adds the calibrated mode: bands set so about S1 of images reach tier 2, S2 tier 3")
    ap.add_argument("--warmup", type=int, default=2, help="all-tiers requests before measuring (not counted)")
    ap.add_argument("--plan-gpus", type=int, default=None, help="plan on this many cards when none is visible")
    ap.add_argument("--plan-gpu-gb", type=float, default=141.0, help="card size for --plan-gpus (H200: 141)")
    ap.add_argument("--time-limit", type=float, default=None, metavar="S",
                    help="start no new step after S seconds (the report keeps what was measured)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="JSON report, rewritten after every step")
    return ap


def _build_stand_ins(args, report: Report) -> None:
    from natix_miner.config import load_profile
    from natix_miner.standins import MANIFEST, read_manifest
    from natix_miner.standins.build import build_profile

    written = load_profile(args.profile, stand_ins=False, device=False)
    root = Path(args.stand_ins)
    if (root / MANIFEST).is_file():
        m = read_manifest(root)
        if m.get("profile") == written.name and m.get("scale") == args.scale:
            report.data["stand_ins"] = {"dir": str(root.resolve()), "scale": args.scale, "built": False}
            return
    import torch

    dev = "cuda:0" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    t = time.perf_counter()
    build_profile(written, args.scale, root, device=dev)
    report.data["stand_ins"] = {"dir": str(root.resolve()), "scale": args.scale, "built": True, "built_on": dev,
                                "build_s": round(time.perf_counter() - t, 1)}
    report.save()


async def _measure(args, report: Report, t_start: float) -> None:
    from natix_miner.benchmark import make_jpegs

    data = report.data
    backend, why = vlm_backend(args.vlm_backend, args.device)
    written, prof, vlm = prepare_profile(args.profile, args.stand_ins, args.device, backend, args.hf_vlm_dtype)
    data["settings"] = {"stand_ins": args.stand_ins, "device": args.device, "concurrency": args.concurrency,
                        "n": args.n, "modes": plan_modes(args.modes, args.escalation_share),
                        "escalation_share": args.escalation_share, "warmup": args.warmup}
    data["profile"] = {"name": written.name, "path": written.path, "deadline_s": prof.deadline_s,
                       "tiers": [{"name": t.name, "experts": list(t.experts), "budget_s": t.budget_s} for t in prof.tiers],
                       "escalation": prof.escalation.model_dump()}
    data["vlm"] = {"backend": "hf_vlm (transformers)" if backend == "hf" else "vllm", "why": why, "experts": vlm}
    data["plan"] = plan(written, args.plan_gpus, args.plan_gpu_gb)
    rows: typing.List[dict] = []
    data["load"] = {"replicas": rows}

    def on_load(row: dict) -> None:
        rows.append(row)
        print(f"[load] {row['expert']}[{row['replica']}] on {row['device']}: {row['load_s']:.1f}s "
              f"{json.dumps(row['added'])}", flush=True)
        report.save()

    data["before_load"] = memory()
    engine = measured_engine(prof, on_load)
    t = time.perf_counter()
    await engine.start()
    try:
        data["load"].update(load_summary(engine, rows, time.perf_counter() - t))
        data["load"]["placement_table"] = engine.placement_table()
        data["after_load"] = memory()
        data["plan_vs_measured"] = plan_vs_measured(data["plan"], data["after_load"], data["before_load"])
        report.save()
        print(f"[load] {len(rows)} replicas in {data['load']['total_s']:.1f}s; failed: "
              f"{sorted(data['load']['failed']) or 'none'}", flush=True)
        datas = make_jpegs(max(args.n, max(args.concurrency)), unique=min(256, max(args.n, 16)), seed=args.seed)
        for i in range(args.warmup):
            await engine.predict(datas[i % len(datas)], all_tiers=True)
        modes = plan_modes(args.modes, args.escalation_share)
        steps = data.setdefault("steps", [])
        all_results: typing.List[typing.Any] = []
        base = engine.profile
        calibrated = None
        for c in args.concurrency:  # concurrency outermost: a run cut short has every mode at the first one
            for mode in modes:
                if args.time_limit is not None and time.perf_counter() - t_start > args.time_limit:
                    data["stopped"] = f"--time-limit {args.time_limit:g} s reached before {mode} at {c}"
                    report.save()
                    return
                if mode == "calibrated" and calibrated is None:  # bands from the all-tiers results so far
                    bands = calibrated_bands(stage_probabilities(all_results, engine), args.escalation_share)
                    calibrated = with_bands(base, bands)
                    data["calibration"] = {"target_shares": args.escalation_share,
                                           "bands": {t.name: list(b) for t, b in zip(base.tiers, bands)},
                                           "from_results": len(all_results)}
                engine.profile = calibrated if mode == "calibrated" else base  # read per request
                n = max(args.n, c)
                results: typing.List[typing.Any] = []
                step = await run_step(engine, datas, c, n, mode == "all_tiers", results)
                if mode == "all_tiers":
                    all_results += results
                step = {"mode": mode, "concurrency": c, **step}
                steps.append(step)
                report.save()
                print(f"[{mode}] concurrency={c} n={n} p50={step['e2e']['p50_ms']} ms p99={step['e2e']['p99_ms']} ms "
                      f"valid={step['answers']['valid']}/{n} in_deadline={step['answers']['inside_deadline']} "
                      f"fallbacks={step['answers']['fallbacks']} tiers={ {k: v['share'] for k, v in step['tiers'].items()} }",
                      flush=True)
        engine.profile = base
    finally:
        await engine.close()
        data["after_close"] = memory()
        report.save()


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    """Run the measurement; 0 when every answer was valid, 1 when one was not, 2 on an operator mistake."""
    args = build_parser().parse_args(argv)
    from natix_miner.config import ProfileError
    from natix_miner.offline import enforce_offline
    from natix_miner.standins import StandInError

    from natix_miner import envs

    enforce_offline()  # stand-ins and local weights only: never wait on a hub
    t_start = time.perf_counter()
    args.stand_ins = args.stand_ins or envs.get("NATIX_STAND_INS") or None  # as every command reads them
    args.device = args.device or envs.get("NATIX_DEVICE") or None
    try:
        if args.n < 1:
            raise BenchError("--n must be at least 1")
        if args.device is not None and args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
            raise BenchError(f"--device {args.device!r}: expected cpu, cuda or cuda:N")
        if args.build_stand_ins and not args.stand_ins:
            raise BenchError("--build-stand-ins needs --stand-ins DIR (where to write them)")
        if args.build_only and not args.build_stand_ins:
            raise BenchError("--build-only needs --build-stand-ins --stand-ins DIR")
        plan_modes(args.modes, args.escalation_share)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if not out.parent.is_dir():
        print(f"error: --out {out}: folder {out.parent} does not exist; create it or pick another path", file=sys.stderr)
        return 2
    report = Report(out, {"what": "production cascade (issue 14 part 2)",
                          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                          "command": " ".join([os.path.basename(sys.argv[0]) or "bench_cascade.py", *(
                              argv if argv is not None else sys.argv[1:])]),
                          "machine": machine()})
    try:
        report.save()
        if args.build_stand_ins:
            _build_stand_ins(args, report)
            if args.build_only:
                report.save()
                print(f"wrote {out} (stand-ins: {json.dumps(report.data['stand_ins'])})")
                return 0
        elif args.stand_ins:
            from natix_miner.standins import read_manifest

            read_manifest(args.stand_ins)
        asyncio.run(_measure(args, report, t_start))
    except (BenchError, ProfileError, StandInError, OSError) as exc:
        report.data["error"] = str(exc)
        try:
            report.save()
        except OSError:
            pass
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bad = sum(s["answers"]["invalid"] for s in report.data.get("steps", []))
    print(f"wrote {out} ({len(report.data.get('steps', []))} steps, {bad} invalid answers)")
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    from natix_miner.cli import quiet_progress

    quiet_progress()
    sys.exit(main())
