"""The cascade engine: the only thing the miner layer calls, through the
:class:`~natix_miner.engine.client.EngineClient` protocol that :class:`Engine` implements
(``tests/engine/test_client.py`` holds it member by member).

``predict`` reads the image header (bounded, any format), checks the result cache (and joins an
identical request already in flight), decodes the pixels, then runs tier after tier: the experts of
a tier run concurrently, each through the least-loaded replica's micro-batcher, their evidence is
pooled with everything seen so far, and the image climbs to the next tier only while the consensus
stays inside the escalation band. Budgets are hard: an expert that is late is left behind (and
counts against its breaker), one that fails trips its breaker, and the answer is the best consensus
available, or the profile's fallback probability. The result is always a finite probability in
[0, 1], and ``predict`` never raises for bad input or broken experts.

Usage::

    engine = Engine.from_profile("demo-cpu")
    await engine.start()                      # loads, places (table in the log), starts batchers
    res = await engine.predict(jpeg_bytes, deadline=time.monotonic() + 8)
    print(res.probability, res.tiers_run, res.timings)
    engine.status()                           # breakers, queues, load status, cache, devices
    await engine.close()
"""

import asyncio
import collections
import functools
import logging
import math
import os
import sys
import time
import typing

from natix_miner.config import Profile, ProfileError, load_profile
from natix_miner.engine.batching import DaemonExecutor, MicroBatcher
from natix_miner.engine.breaker import Breaker
from natix_miner.engine.cache import ResultCache
from natix_miner.engine.consensus import Consensus
from natix_miner.engine.decodepool import DecodePool
from natix_miner.engine.placement import Placement, live_memory, load_order, measure_load
from natix_miner.engine.policy import CascadePolicy
from natix_miner.engine.pool import ExpertPool, ExpertTimeout, ExpertUnavailable, Replica
from natix_miner.engine.result import PredictResult, safe_probability
from natix_miner.experts import FAMILIES, create_expert, unknown_family
from natix_miner.experts.base import Evidence, Expert
from natix_miner.imaging.decode import DecodedImage, ImageError, b64decode_strict, probe
from natix_miner.schema import OptionsError

log = logging.getLogger("natix_miner.engine")

SAFETY_MARGIN_S = 0.05  # leave time to serialise the answer
Injected = typing.Union[Expert, typing.Sequence[Expert]]


class EngineNotReady(RuntimeError):
    pass


def check_profile(profile: Profile, injected: typing.Iterable[str] = ()) -> typing.List[str]:
    """What schema validation cannot see: unknown families, options a family refuses, and numbers
    made NaN or infinite after the profile was loaded.

    Each expert is constructed once without loading (constructors only parse options), so a bad
    option is reported before any model loads. Returns ``file: experts.N(name).key: problem`` lines.
    """
    skip = set(injected)
    where = profile.path or profile.name
    problems = profile.non_finite()  # NaN / inf set in code after loading (loading refuses them)
    for i, spec in enumerate(profile.experts):
        if spec.name in skip:
            continue
        if spec.family not in FAMILIES:
            problems.append(f"{where}: experts.{i}({spec.name}).family: {unknown_family(spec.family)}")
            continue
        try:
            create_expert(spec, profile)
        except OptionsError as exc:  # a family's typed Options / dtypes (experts/base.py): one line per key
            problems += [f"{where}: experts.{i}({spec.name}).{key}: {msg}" for key, msg in exc.problems]
        except (ValueError, TypeError, KeyError) as exc:  # option errors; import problems show at load
            problems.append(f"{where}: experts.{i}({spec.name}).options: {type(exc).__name__}: {exc}")
    return problems


class Engine:
    def __init__(self, profile: Profile, experts: typing.Optional[typing.Mapping[str, Injected]] = None,
                 placement: typing.Optional[Placement] = None, decode_threads: typing.Optional[int] = None):
        """``experts``: ready-made instances by expert name (one, or one per replica) instead of
        building them from their family; ``placement``: a plan with a given device inventory;
        ``decode_threads``: image decoding threads (default: up to 8, one per core)."""
        self.profile = profile
        self.policy = CascadePolicy(profile)  # pooling, escalation, clamp (engine/policy.py)
        self.consensus = Consensus(profile.consensus)  # per-stage pooling for tools (cascade_bench)
        self.cache: ResultCache[PredictResult] = ResultCache(profile.cache.max_entries, profile.cache.ttl_s)
        self._injected: typing.Dict[str, typing.List[Expert]] = {
            k: ([v] if isinstance(v, Expert) else list(v)) for k, v in (experts or {}).items()}
        self.pools: typing.Dict[str, ExpertPool] = {}
        tiered = {e.name for e in profile.tiered_experts}
        self.load_status: typing.Dict[str, str] = {
            e.name: "pending" if e.name in tiered else "unused" for e in profile.experts}
        self.load_errors: typing.Dict[str, str] = {}
        self.missing: typing.List = []  # preflight.MissingModel of the last start
        self.placement = placement or Placement(profile.gpu_memory_fraction)
        # a decode still running at the deadline is abandoned and its thread replaced (status()["decode"])
        self._decode_pool = DecodePool(decode_threads or min(8, os.cpu_count() or 2), name="decode",
                                       stuck_after_s=max(1.0, profile.deadline_s))
        self.ready = False
        self.requests = 0
        self.answered = 0
        self.cache_hits = 0
        self.joined = 0  # requests that waited for an identical one in flight
        self.fallbacks: typing.Counter[str] = collections.Counter()
        self.tier_runs: typing.Counter[str] = collections.Counter()
        self.exits: typing.Counter[str] = collections.Counter()  # tier after which the cascade stopped

    @classmethod
    def from_profile(cls, name_or_path=None, **kwargs) -> "Engine":
        return cls(load_profile(name_or_path), **kwargs)

    @property
    def experts(self) -> typing.Dict[str, Expert]:
        """The first replica of every loaded expert."""
        return {name: pool.replicas[0].expert for name, pool in self.pools.items()}

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, strict: bool = False) -> None:
        """Load every expert replica (off the loop, largest first), place it, start its batcher.

        An unknown family or an option a family refuses is a profile error (raised, nothing
        loads). A replica that fails to load is left out; an expert with no replica left is marked
        ``failed`` and the engine serves from the rest, unless ``strict`` (then the first failure
        raises)."""
        problems = check_profile(self.profile, self._injected)
        if problems:
            raise ProfileError("\n".join(problems))
        absent = self._preflight(strict)  # models not on this machine fail their expert now, no hub wait
        loop = asyncio.get_running_loop()
        specs = [s for s in load_order(self.profile.tiered_experts) if s.name not in absent]
        bar = _progress(sum(len(s.replica_devices) for s in specs))
        loader = DaemonExecutor(1, name="loader")
        try:
            for spec in specs:
                try:
                    devices = self.placement.assign(spec)
                except Exception as exc:
                    self._load_failed(spec.name, exc, strict)
                    bar.update(len(spec.replica_devices))
                    continue
                replicas = []
                for i, device in enumerate(devices):
                    bar.set_description(f"loading {spec.name} on {device}")
                    try:
                        replicas.append(await self._load_replica(spec, i, device, loop, loader))
                    except Exception as exc:
                        self.placement.release(spec.name, i)
                        self.load_errors[spec.name] = f"{type(exc).__name__}: {exc}"
                        log.error("expert %s replica %d on %s failed to load: %s", spec.name, i, device, exc)
                        if strict:
                            raise
                    bar.update(1)
                if not replicas:
                    self._load_failed(spec.name, RuntimeError(self.load_errors.get(spec.name, "no replica")), False)
                    continue
                pool = ExpertPool(spec, replicas)
                pool.start()
                self.pools[spec.name] = pool
                # "degraded": serving, but with fewer replicas than asked (status shows which)
                self.load_status[spec.name] = "loaded" if len(replicas) == len(devices) else "degraded"
        finally:
            bar.close()
            loader.shutdown(wait=False)
        if not self.pools:
            log.error("no expert loaded; every answer will be the fallback %.2f", self.profile.fallback_probability)
        self.ready = True
        log.info("placement (profile %s):\n%s", self.profile.name, self.placement.table())

    async def _load_replica(self, spec, index: int, device: str, loop, loader) -> Replica:
        t0 = time.perf_counter()
        given = self._injected.get(spec.name)
        if given is not None:
            if len(given) != len(spec.replica_devices):
                raise ValueError(f"{len(given)} instances given for {len(spec.replica_devices)} replicas")
            expert = given[index]
        else:
            expert = create_expert(spec, self.profile)
        n = len(spec.replica_devices)
        batcher = MicroBatcher(expert, spec.max_batch, spec.max_wait_ms, spec.concurrency,
                               name=spec.name if n == 1 else f"{spec.name}[{index}]")
        try:
            nbytes = await loop.run_in_executor(loader, measure_load, device,
                                                functools.partial(expert.load, device))
            await expert.start_async()
            batcher.start()
            if expert.is_async:
                await loop.run_in_executor(loader, expert.warmup)
            else:
                await batcher.warmup()  # on the threads that will serve it
        except BaseException:
            await batcher.stop()
            try:
                await expert.close_async()  # give back what a half-loaded replica holds
            except Exception as exc:  # noqa: BLE001 - the load error is the one to report
                log.warning("closing half-loaded %s: %s", spec.name, exc)
            raise
        nbytes = nbytes or expert.memory_bytes()
        self.placement.record(spec.name, index, device, nbytes)
        b = self.profile.breaker
        breaker = Breaker(b.failures, b.cooldown_s, idle_probe_s=b.idle_probe_s)
        log.info("loaded expert %s (%s) replica %d on %s in %.1fs", spec.name, spec.family, index, device,
                 time.perf_counter() - t0)
        return Replica(expert, device, batcher, breaker, index)

    def _preflight(self, strict: bool) -> typing.Set[str]:
        """Mark every expert whose model is not present as failed, with the fix (one line per model;
        ``natix_miner/preflight.py``); ``strict`` raises the first. Returns the experts left out."""
        from natix_miner.preflight import missing_models
        from natix_miner.models_store import ModelUnavailable

        self.missing = missing_models(self.profile, skip=self._injected)
        for m in self.missing:
            log.error("model not present: %s", m.line())
            if strict:
                raise ModelUnavailable(m.line())
            self.load_errors[m.expert] = "; ".join(filter(None, [self.load_errors.get(m.expert), m.line()]))
            self.load_status[m.expert] = "failed"
        return {m.expert for m in self.missing}

    def empty_tiers(self) -> typing.Dict[str, typing.List[str]]:
        """Tiers with no loaded expert (tier -> its experts): a start in this state is degraded."""
        from natix_miner.preflight import empty_tiers

        return empty_tiers(self.profile, self.pools)

    def degraded_report(self) -> typing.List[str]:
        """One line per empty tier, then one per expert of it with its load error (empty: not degraded)."""
        from natix_miner.preflight import degraded_report

        return degraded_report(self.empty_tiers(), self.load_errors, {m.expert for m in self.missing})

    def _load_failed(self, name: str, exc: BaseException, strict: bool) -> None:
        self.load_status[name] = "failed"
        self.load_errors.setdefault(name, f"{type(exc).__name__}: {exc}")
        log.error("expert %s failed to load: %s", name, exc)
        if strict:
            raise exc

    async def close(self, join_timeout_s: float = 10.0) -> None:
        """Stop the batchers, close the experts (which frees a hung call), then wait up to
        ``join_timeout_s`` for model calls still on their threads (exiting while a thread runs
        native model code aborts the process)."""
        self.ready = False
        for pool in self.pools.values():
            await pool.stop()
        for pool in self.pools.values():
            for r in pool.replicas:
                try:
                    await r.expert.close_async()
                except Exception as exc:  # pragma: no cover - best effort
                    log.warning("closing %s: %s", r.expert.name, exc)
        end = time.monotonic() + join_timeout_s
        for pool in self.pools.values():
            if not await pool.join(max(0.0, end - time.monotonic())):
                log.warning("expert %s still busy after close; its thread is abandoned", pool.name)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # -- inference -------------------------------------------------------------------------
    def _finish(self, res: PredictResult) -> PredictResult:
        self.answered += 1
        if res.fallback:
            self.fallbacks[(res.fallback_reason or "unknown").split(":")[0]] += 1
        return res

    def _fallback(self, reason: str, t0: float, sha: typing.Optional[str] = None) -> PredictResult:
        return PredictResult(probability=safe_probability(self.profile.fallback_probability),
                             fallback=True, fallback_reason=reason, image_sha256=sha,
                             timings={"total": time.perf_counter() - t0})

    def _probe(self, image: typing.Union[bytes, str, DecodedImage]) -> DecodedImage:
        if isinstance(image, DecodedImage):
            return image
        if isinstance(image, str):
            image = b64decode_strict(image, max_bytes=self.profile.max_image_bytes)
        if not isinstance(image, (bytes, bytearray, memoryview)):
            raise ImageError("bad_input", f"expected bytes or base64 text, got {type(image).__name__}")
        image = bytes(image)
        if len(image) > self.profile.max_image_bytes:
            raise ImageError("too_large", f"{len(image)} bytes")
        return probe(image, max_pixels=self.profile.max_pixels)

    async def predict(self, image: typing.Union[bytes, str, DecodedImage],
                      deadline: typing.Optional[float] = None, all_tiers: bool = False) -> PredictResult:
        """Answer one image. ``image``: JPEG/PNG/... bytes, base64 text or a decoded image.
        ``deadline``: absolute ``time.monotonic()`` by which the answer must exist
        (default and cap: now + ``profile.deadline_s``). ``all_tiers``: run every tier whatever the
        consensus (debugging): a tier waits for all its experts up to the deadline less the later
        tiers' ``min_budget_s`` instead of its ``budget_s``; the cache is bypassed."""
        t0 = time.perf_counter()
        now = time.monotonic()
        cap = now + self.profile.deadline_s
        deadline = cap if deadline is None or not math.isfinite(deadline) else min(deadline, cap)
        self.requests += 1
        if not self.ready:
            return self._finish(self._fallback("engine_not_ready", t0))
        try:
            return self._finish(await self._predict(image, deadline, t0, all_tiers))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the answer must always exist
            log.exception("predict failed: %s", exc)
            return self._finish(self._fallback(f"internal_error:{type(exc).__name__}", t0))

    async def _off_loop(self, fn, deadline: float):
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._decode_pool, fn),
                                      timeout=max(0.001, deadline - time.monotonic()))

    async def _predict(self, image, deadline: float, t0: float, all_tiers: bool = False) -> PredictResult:
        try:
            img = await self._off_loop(functools.partial(self._probe, image), deadline)
        except ImageError as exc:
            return self._fallback(f"bad_image:{exc.reason}", t0)
        except asyncio.TimeoutError:
            return self._fallback("decode_timeout", t0)
        if all_tiers:  # a full run is not the answer the cache holds for this image
            return await self._decode_and_run(img, deadline, t0, all_tiers=True)
        key = img.sha256
        hit = self.cache.get(key)
        if hit is not None:
            self.cache_hits += 1
            return _as_cached(hit, t0)
        pending = self.cache.inflight(key)
        if pending is not None:
            self.joined += 1
            try:
                res = await asyncio.wait_for(asyncio.shield(pending), timeout=max(0.001, deadline - time.monotonic()))
                return _as_cached(res, t0)
            except asyncio.TimeoutError:
                return self._fallback("deadline", t0, key)
            except Exception as exc:
                return self._fallback(f"internal_error:{type(exc).__name__}", t0, key)
        fut = self.cache.begin(key)
        try:
            res = await self._decode_and_run(img, deadline, t0)
            if not res.fallback:
                self.cache.put(key, res)
            if not fut.done():
                fut.set_result(res)
            return res
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
                fut.exception()  # mark retrieved
            raise
        finally:
            self.cache.end(key, fut)

    async def _decode_and_run(self, img: DecodedImage, deadline: float, t0: float,
                              all_tiers: bool = False) -> PredictResult:
        try:
            await self._off_loop(lambda: img.rgb, deadline)
        except ImageError as exc:
            return self._fallback(f"bad_image:{exc.reason}", t0, img.sha256)
        except asyncio.TimeoutError:
            return self._fallback("decode_timeout", t0, img.sha256)
        t_dec = time.perf_counter() - t0
        res = await self._cascade(img, deadline, t0, all_tiers)
        res.timings["decode"] = t_dec
        return res

    @staticmethod
    async def _timed(pool: ExpertPool, img: DecodedImage, timeout: float,
                     count_timeout: bool) -> typing.Tuple[Evidence, float]:
        t = time.perf_counter()
        ev = await pool.call(img, timeout=timeout, count_timeout=count_timeout)
        return ev, time.perf_counter() - t

    async def _cascade(self, img: DecodedImage, deadline: float, t0: float, all_tiers: bool = False) -> PredictResult:
        res = PredictResult(probability=safe_probability(self.profile.fallback_probability),
                            image_sha256=img.sha256)
        p: typing.Optional[float] = None
        tasks: typing.Dict[str, asyncio.Task] = {}
        try:
            for i, tier in enumerate(self.profile.tiers):
                left = deadline - time.monotonic() - SAFETY_MARGIN_S
                if left <= 0 or left < tier.min_budget_s:
                    res.skipped[tier.name] = "no_time"
                    continue
                budget = min(tier.budget_s, left)
                if all_tiers:  # every answer matters, not speed: wait up to the deadline less later tiers' minimum
                    budget = max(budget, left - sum(t.min_budget_s for t in self.profile.tiers[i + 1:]))
                tasks = {}
                for name in tier.experts:
                    pool = self.pools.get(name)
                    if pool is None:
                        res.skipped[name] = self.load_status.get(name, "not_loaded")
                        continue
                    if not pool.available():
                        res.skipped[name] = "breaker_open"
                        continue
                    own = min(math.inf if all_tiers else tier.budget_s, pool.spec.timeout_s or math.inf)
                    timeout = min(own, budget)
                    tasks[name] = asyncio.ensure_future(self._timed(pool, img, timeout, timeout >= own - 1e-3))
                if not tasks:
                    res.skipped.setdefault(tier.name, "no_expert_available")
                    continue
                tt = time.perf_counter()
                self.tier_runs[tier.name] += 1
                res.tiers_run.append(tier.name)
                _, late = await asyncio.wait(tasks.values(), timeout=budget + 0.02)
                for t in late:  # pool.call has its own timeout; this is only a guard
                    t.cancel()
                for name, task in tasks.items():
                    if task in late:
                        res.skipped[name] = "timeout"
                        continue
                    exc = task.exception()
                    if exc is None:
                        ev, dt = task.result()
                        res.evidence[name] = ev
                        res.timings[f"expert:{name}"] = dt
                    elif isinstance(exc, ExpertTimeout):
                        res.skipped[name] = "timeout"
                    elif isinstance(exc, ExpertUnavailable):
                        res.skipped[name] = "breaker_open"
                    else:
                        res.skipped[name] = f"error:{type(exc).__name__}"
                        log.warning("expert %s failed: %s: %s", name, type(exc).__name__, exc)
                tasks = {}
                res.timings[f"tier:{tier.name}"] = time.perf_counter() - tt
                p, climb = self.policy.after_tier(i, res.evidence, p)  # pool, then escalate?
                if not climb and not all_tiers:
                    break
        finally:
            for t in tasks.values():  # cancelled mid-tier: leave nothing running on our behalf
                t.cancel()
        if p is None:
            res.fallback = True
            res.fallback_reason = "no_expert_answered"
            p = self.profile.fallback_probability
        elif res.tiers_run:
            self.exits[res.tiers_run[-1]] += 1
        res.probability = self.policy.answer(p)
        res.timings["total"] = time.perf_counter() - t0
        return res

    # -- introspection ---------------------------------------------------------------------
    def placement_table(self) -> str:
        return self.placement.table()

    def status(self) -> dict:
        """A JSON-ready snapshot for health endpoints and metrics (keys: docs/engine.md)."""
        experts = {}
        for spec in self.profile.tiered_experts:
            pool = self.pools.get(spec.name)
            entry = {"family": spec.family, "load": self.load_status.get(spec.name),
                     "breaker": pool.state if pool else Breaker.OPEN, "queue": pool.depth if pool else 0}
            if spec.name in self.load_errors:
                entry["load_error"] = self.load_errors[spec.name]
            if pool:
                entry["replicas_loaded"] = f"{len(pool.replicas)}/{len(spec.replica_devices)}"
                entry.update({k: v for k, v in pool.snapshot().items() if k not in entry})
            experts[spec.name] = entry
        devices = self.placement.devices()
        for dev, live in live_memory().items():
            devices.setdefault(dev, {}).update(live)
        total = self.cache.hits + self.cache.misses
        return {
            "ready": self.ready,
            "profile": self.profile.name,
            "requests": self.requests,
            "answered": self.answered,
            "fallbacks": dict(self.fallbacks),
            "fallback_total": sum(self.fallbacks.values()),
            "tiers": {t.name: {"runs": self.tier_runs[t.name], "exits": self.exits[t.name]}
                      for t in self.profile.tiers},
            "experts": experts,
            "cache": {"entries": len(self.cache), "max_entries": self.cache.max_entries,
                      "hits": self.cache.hits, "misses": self.cache.misses,
                      "hit_rate": self.cache.hits / total if total else 0.0,
                      "inflight": self.cache.inflight_count, "joined": self.joined},
            "devices": devices,
            "decode": self._decode_pool.status(),
            "empty_tiers": self.empty_tiers() if self.ready else {},  # non-empty: serving degraded
        }


def _as_cached(res: PredictResult, t0: float) -> PredictResult:
    return PredictResult(probability=res.probability, tiers_run=list(res.tiers_run), evidence=dict(res.evidence),
                         timings={"total": time.perf_counter() - t0}, fallback=res.fallback,
                         fallback_reason=res.fallback_reason, cached=True, skipped=dict(res.skipped),
                         image_sha256=res.image_sha256)


class _NoBar:
    def update(self, n=1):
        pass

    def set_description(self, s):
        pass

    def close(self):
        pass


def _progress(total: int):
    """A tqdm bar on a terminal (loading production models takes minutes), nothing in logs."""
    if not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="model", desc="loading experts")
