"""The cascade engine: the only thing the miner layer calls.

``predict`` decodes (bounded, any format), checks the cache, then runs tier after tier: all
experts of a tier run concurrently through their micro-batchers, their evidence is pooled with
everything seen so far, and the image climbs to the next tier only while the consensus stays inside
the escalation band. A tier's budget and the overall deadline are hard: an expert that is late is
left behind, one that fails trips its breaker, and the answer is the best consensus available (or
the profile's fallback probability). The result is always a finite probability in [0, 1].

Usage::

    engine = Engine.from_profile("demo-cpu")
    await engine.start()
    res = await engine.predict(jpeg_bytes, deadline=time.monotonic() + 8)
    print(res.probability, res.tiers_run, res.timings)
    await engine.close()
"""

import asyncio
import concurrent.futures
import logging
import time
import typing

from natix_miner.config import Profile, load_profile
from natix_miner.engine.batching import MicroBatcher
from natix_miner.engine.breaker import Breaker
from natix_miner.engine.cache import ResultCache
from natix_miner.engine.consensus import Consensus
from natix_miner.engine.placement import Placement, measure_load
from natix_miner.engine.result import PredictResult, safe_probability
from natix_miner.experts import create_expert
from natix_miner.experts.base import Evidence, Expert
from natix_miner.imaging.decode import DecodedImage, ImageError, b64decode_strict, decode_bytes

log = logging.getLogger("natix_miner.engine")

SAFETY_MARGIN_S = 0.05  # leave time to serialise the answer


class EngineNotReady(RuntimeError):
    pass


class Engine:
    def __init__(self, profile: Profile, experts: typing.Optional[typing.Dict[str, Expert]] = None):
        self.profile = profile
        self.consensus = Consensus(profile.consensus)
        self.cache: ResultCache[PredictResult] = ResultCache(profile.cache.max_entries, profile.cache.ttl_s)
        self.experts: typing.Dict[str, Expert] = dict(experts or {})
        self.batchers: typing.Dict[str, MicroBatcher] = {}
        self.breakers: typing.Dict[str, Breaker] = {
            e.name: Breaker(profile.breaker.failures, profile.breaker.cooldown_s) for e in profile.experts}
        self.load_status: typing.Dict[str, str] = {e.name: "pending" for e in profile.experts}
        self.placement = Placement(profile.gpu_memory_fraction)
        self._decode_pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
        self.ready = False
        self.requests = 0

    @classmethod
    def from_profile(cls, name_or_path=None) -> "Engine":
        return cls(load_profile(name_or_path))

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, strict: bool = False) -> None:
        """Load every expert (off the loop), place it, start its batcher.

        An expert that fails to load is marked ``failed`` and its breaker opened; the engine still
        serves from the rest unless ``strict`` (then the first failure raises).
        """
        loop = asyncio.get_running_loop()
        for spec in self.profile.experts:
            try:
                expert = self.experts.get(spec.name) or create_expert(spec, self.profile)
                device = self.placement.choose(spec)
                t0 = time.perf_counter()
                nbytes = await loop.run_in_executor(None, measure_load, device, lambda: expert.load(device))
                await expert.start_async()
                await loop.run_in_executor(None, expert.warmup)
                nbytes = nbytes or expert.memory_bytes()
                self.placement.record(spec.name, device, nbytes)
                self.experts[spec.name] = expert
                self.load_status[spec.name] = "loaded"
                log.info("loaded expert %s (%s) on %s in %.1fs", spec.name, spec.family, device,
                         time.perf_counter() - t0)
            except Exception as exc:
                self.load_status[spec.name] = "failed"
                br = self.breakers[spec.name]
                for _ in range(br.threshold):
                    br.record(False, f"load: {exc}")
                log.error("expert %s failed to load: %s", spec.name, exc)
                if strict:
                    raise
                continue
            b = MicroBatcher(expert, spec.max_batch, spec.max_wait_ms)
            b.start()
            self.batchers[spec.name] = b
        if not self.batchers:
            log.error("no expert loaded; every answer will be the fallback %.2f", self.profile.fallback_probability)
        self.ready = True
        log.info("placement:\n%s", self.placement.table())

    async def close(self) -> None:
        for b in self.batchers.values():
            await b.stop()
        for e in self.experts.values():
            try:
                await e.close_async()
            except Exception as exc:  # pragma: no cover - best effort
                log.warning("closing %s: %s", e.name, exc)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self.ready = False

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # -- inference -------------------------------------------------------------------------
    def _fallback(self, reason: str, t0: float, sha: typing.Optional[str] = None) -> PredictResult:
        return PredictResult(probability=safe_probability(self.profile.fallback_probability),
                             fallback=True, fallback_reason=reason, image_sha256=sha,
                             timings={"total": time.perf_counter() - t0})

    def _decode(self, image: typing.Union[bytes, str, DecodedImage]) -> DecodedImage:
        if isinstance(image, DecodedImage):
            return image
        if isinstance(image, str):
            image = b64decode_strict(image, max_bytes=self.profile.max_image_bytes)
        if len(image) > self.profile.max_image_bytes:
            raise ImageError("too_large", f"{len(image)} bytes")
        return decode_bytes(image, max_pixels=self.profile.max_pixels, eager=True)

    async def predict(self, image: typing.Union[bytes, str, DecodedImage],
                      deadline: typing.Optional[float] = None) -> PredictResult:
        """Answer one image. ``image``: JPEG/PNG/... bytes, base64 text or a decoded image.
        ``deadline``: absolute ``time.monotonic()`` by which the answer must exist
        (default: now + profile.deadline_s)."""
        t0 = time.perf_counter()
        now = time.monotonic()
        deadline = min(deadline if deadline is not None else now + self.profile.deadline_s,
                       now + self.profile.deadline_s)
        self.requests += 1
        if not self.ready:
            return self._fallback("engine_not_ready", t0)
        loop = asyncio.get_running_loop()
        try:
            img = await asyncio.wait_for(loop.run_in_executor(self._decode_pool, self._decode, image),
                                         timeout=max(0.001, deadline - time.monotonic()))
        except ImageError as exc:
            return self._fallback(f"bad_image:{exc.reason}", t0)
        except asyncio.TimeoutError:
            return self._fallback("decode_timeout", t0)
        except Exception as exc:  # never let input kill the answer
            return self._fallback(f"decode_error:{type(exc).__name__}", t0)
        t_dec = time.perf_counter() - t0
        key = img.sha256
        hit = self.cache.get(key)
        if hit is not None:
            return _as_cached(hit, t0)
        pending = self.cache.inflight(key)
        if pending is not None:
            try:
                res = await asyncio.wait_for(asyncio.shield(pending), timeout=max(0.001, deadline - time.monotonic()))
                return _as_cached(res, t0)
            except Exception:
                return self._fallback("deadline", t0, key)
        fut = self.cache.begin(key)
        try:
            res = await self._cascade(img, deadline, t0)
            res.timings["decode"] = t_dec
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

    async def _call_expert(self, name: str, img: DecodedImage,
                           timings: typing.Dict[str, float]) -> Evidence:
        t = time.perf_counter()
        try:
            return await self.batchers[name].submit(img)
        finally:
            timings[f"expert:{name}"] = time.perf_counter() - t

    async def _cascade(self, img: DecodedImage, deadline: float, t0: float) -> PredictResult:
        res = PredictResult(probability=safe_probability(self.profile.fallback_probability),
                            image_sha256=img.sha256)
        esc = self.profile.escalation
        p: typing.Optional[float] = None
        for tier in self.profile.tiers:
            left = deadline - time.monotonic() - SAFETY_MARGIN_S
            if left <= 0:
                res.skipped[tier.name] = "deadline"
                break
            budget = min(tier.budget_s, left)
            tasks: typing.Dict[str, asyncio.Task] = {}
            for name in tier.experts:
                if name not in self.batchers:
                    res.skipped[name] = self.load_status.get(name, "not_loaded")
                    continue
                if not self.breakers[name].allow():
                    res.skipped[name] = "breaker_open"
                    continue
                tasks[name] = asyncio.ensure_future(self._call_expert(name, img, res.timings))
            if not tasks:
                continue
            tt = time.perf_counter()
            done, late = await asyncio.wait(tasks.values(), timeout=budget)
            for t in late:
                t.cancel()
            res.tiers_run.append(tier.name)
            for name, task in tasks.items():
                br = self.breakers[name]
                if task in late:
                    res.skipped[name] = "timeout"
                    br.record(False, "timeout")
                    continue
                exc = task.exception()
                if exc is not None:
                    res.skipped[name] = f"error:{type(exc).__name__}"
                    br.record(False, f"{type(exc).__name__}: {exc}")
                    log.warning("expert %s failed: %s: %s", name, type(exc).__name__, exc)
                    continue
                br.record(True)
                res.evidence[name] = task.result()
            res.timings[f"tier:{tier.name}"] = time.perf_counter() - tt
            pooled = self.consensus.combine(res.evidence)
            if pooled is not None:
                p = pooled
            if p is not None and not (esc.low < p < esc.high):
                break
        if p is None:
            res.fallback = True
            res.fallback_reason = "no_expert_answered"
            p = self.profile.fallback_probability
        res.probability = safe_probability(p, self.profile.fallback_probability)
        res.timings["total"] = time.perf_counter() - t0
        return res

    # -- introspection ---------------------------------------------------------------------
    def status(self) -> dict:
        return {
            "ready": self.ready,
            "profile": self.profile.name,
            "experts": {
                name: {
                    "load": self.load_status.get(name),
                    "breaker": self.breakers[name].state,
                    "queue": self.batchers[name].depth if name in self.batchers else None,
                    "device": self.experts[name].device if name in self.experts else None,
                } for name in self.breakers},
            "cache": {"entries": len(self.cache), "hit_rate": self.cache.hit_rate},
            "requests": self.requests,
        }


def _as_cached(res: PredictResult, t0: float) -> PredictResult:
    out = PredictResult(probability=res.probability, tiers_run=list(res.tiers_run), evidence=dict(res.evidence),
                        timings={"total": time.perf_counter() - t0}, fallback=res.fallback,
                        fallback_reason=res.fallback_reason, cached=True, skipped=dict(res.skipped),
                        image_sha256=res.image_sha256)
    return out
