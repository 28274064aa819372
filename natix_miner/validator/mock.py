"""The mock validator: the live validator's challenge loop against miners on loopback.

For each challenge: a label 0/1 with equal odds, real or synthetic 50/50, an image from the source,
the validator's augmentation (level 0..3, JPEG q75, base64), one ``ImageSynapse`` sent to every
target at once through a real bittensor dendrite signed by the validator's hotkey, a 9 s timeout,
then the validator's reward, per miner: history of 100, MCC(100), accuracy(10), the cube, the EMA.
``concurrency`` challenges can be in flight at once (load testing); scoring always happens in
challenge order, so a seeded run is reproducible whatever the timing.

Usage::

    mv = MockValidator(wallet, targets, ChallengeStream(open_source("procedural"), seed=0), seed=0)
    outcomes = asyncio.run(mv.run(n=200))          # list of Outcome
    report = build_report(outcomes, targets)       # natix_miner.validator.report
"""

import asyncio
import dataclasses
import math
import queue
import threading
import time
import typing

import numpy as np

from natix_miner.validator.reward import Scorer
from natix_miner.validator.targets import Target

TIMEOUT_S = 9.0
FALLBACK_VALUES = (0.49, 0.5, 0.4999)


@dataclasses.dataclass
class Prepared:
    index: int
    label: int
    synthetic: bool
    level: int
    b64: str
    origin: str
    aug: typing.Dict[str, typing.Any]


@dataclasses.dataclass
class Outcome:
    index: int
    miner: str
    label: int
    synthetic: bool
    level: int
    prediction: float
    status: str            # HTTP-like status from the dendrite ("200", "408", "503", ...)
    category: str          # answered | fallback | timeout | missing | invalid
    latency_ms: float
    reward: float = 0.0
    mcc_100: float = 0.0
    accuracy_10: float = 0.0
    ema: float = 0.0
    broken: bool = False
    origin: str = ""


def categorise(prediction: float, status: str, fallback_values=FALLBACK_VALUES) -> str:
    """How the validator would see this answer (fallback = a value that looks like a default)."""
    try:
        p = float(prediction)
    except (TypeError, ValueError):
        return "invalid"
    if p == -1.0:
        return "timeout" if status == "408" else "missing"
    if not math.isfinite(p) or p < 0.0 or p > 1.0:
        return "invalid"
    if any(abs(p - v) < 1e-9 for v in fallback_values):
        return "fallback"
    return "answered"


class MockValidator:
    def __init__(self, wallet, targets: typing.Sequence[Target], stream, seed: typing.Optional[int] = 0,
                 timeout: float = TIMEOUT_S, concurrency: int = 1, route: str = "image",
                 rotation_interpolation: str = "nearest", fallback_values=FALLBACK_VALUES,
                 prefetch: int = 64):
        from natix_miner.synth.augment import ValidatorAugmenter

        if route not in ("image", "extended", "both"):
            raise ValueError("route must be image, extended or both")
        self.wallet = wallet
        self.targets = list(targets)
        self.stream = stream
        self.augmenter = ValidatorAugmenter(seed=seed, rotation_interpolation=rotation_interpolation)
        self.timeout = float(timeout)
        self.concurrency = max(1, int(concurrency))
        self.route = route
        self.fallback_values = tuple(fallback_values)
        self.scorer = Scorer()
        self.outcomes: typing.List[Outcome] = []
        self.prefetch = max(1, int(prefetch))
        self._queue: typing.Optional[queue.Queue] = None
        self.dendrite = None

    # -- challenges -----------------------------------------------------------------------------
    def prepare_all(self, n: int) -> typing.Iterator[Prepared]:
        """Source image -> validator augmentation -> base64, in challenge order (blocking)."""
        for i, ch in enumerate(self.stream.take(n)):
            out = self.augmenter(ch.image)
            yield Prepared(i, ch.label, ch.synthetic, out.level, out.b64(), ch.origin, out.params)

    def start_preparing(self, n: int) -> None:
        """Render and augment challenges on a background thread (e.g. while a miner starts)."""
        if self._queue is not None:
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        self._queue = q

        def work():
            try:
                for prep in self.prepare_all(n):
                    q.put(prep)
            except BaseException as exc:  # noqa: BLE001 - handed to run()
                q.put(exc)
            q.put(None)

        threading.Thread(target=work, name="challenges", daemon=True).start()

    def _synapse(self, index: int, b64: str):
        from natix_miner.protocol import ExtendedImageSynapse, ImageSynapse

        extended = self.route == "extended" or (self.route == "both" and index % 2 == 1)
        return (ExtendedImageSynapse if extended else ImageSynapse)(image=b64)

    # -- querying -------------------------------------------------------------------------------
    async def _ask(self, target: Target, prep: Prepared):
        syn = self._synapse(prep.index, prep.b64)
        t0 = time.perf_counter()
        resp = await self.dendrite.call(target.axon_info(), syn, timeout=self.timeout, deserialize=False)
        latency = (time.perf_counter() - t0) * 1000.0
        status = str(getattr(resp.dendrite, "status_code", None) or "")
        return resp.prediction, status, latency

    async def query(self, prep: Prepared) -> typing.List[Outcome]:
        """One challenge to every target at once (like the validator's ``dendrite(axons=...)``)."""
        answers = await asyncio.gather(*(self._ask(t, prep) for t in self.targets))
        out = []
        for t, (pred, status, latency) in zip(self.targets, answers):
            out.append(Outcome(prep.index, t.name, prep.label, prep.synthetic, prep.level, float(pred), status,
                               categorise(pred, status, self.fallback_values), latency, origin=prep.origin))
        return out

    def score(self, outcomes: typing.List[Outcome]) -> None:
        for uid, o in enumerate(outcomes):
            q = self.scorer.score(uid, self.targets[uid].hotkey, o.prediction, o.label)
            o.reward, o.mcc_100, o.accuracy_10, o.ema, o.broken = q.reward, q.mcc_100, q.accuracy_10, q.ema, q.broken
            self.outcomes.append(o)

    async def wait_ready(self, prep: Prepared, timeout: float = 120.0) -> None:
        """Probe (unscored) until every target answers with HTTP 200."""
        deadline = time.monotonic() + timeout
        pending = list(self.targets)
        last = {}
        while pending and time.monotonic() < deadline:
            answers = await asyncio.gather(*(self._ask(t, prep) for t in pending))
            for t, (pred, status, _) in zip(list(pending), answers):
                last[t.name] = (status, pred)
                if status == "200":
                    pending.remove(t)
            if pending:
                await asyncio.sleep(1.0)
        if pending:
            raise RuntimeError("no answer from " + ", ".join(f"{t.name} ({t.address}): status {last.get(t.name)}"
                                                             for t in pending))

    async def run(self, n: int, progress: bool = True, warmup: bool = True) -> typing.List[Outcome]:
        from natix_miner.miner.local import loopback_dendrite

        if not self.targets:
            raise ValueError("no targets: give host:port:hotkey targets or --spawn-miner")
        self.start_preparing(n)
        self.dendrite = loopback_dendrite(self.wallet)
        loop = asyncio.get_running_loop()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="challenges", unit="ch", dynamic_ncols=True)
        try:
            if warmup:
                await self.wait_ready(await loop.run_in_executor(None, _probe_challenge))
            done: typing.Dict[int, typing.List[Outcome]] = {}
            next_to_score = 0
            sem = asyncio.Semaphore(self.concurrency)
            tasks = []

            async def one(prep: Prepared):
                nonlocal next_to_score
                try:
                    done[prep.index] = await self.query(prep)
                finally:
                    sem.release()
                while next_to_score in done:  # score in challenge order
                    self.score(done.pop(next_to_score))
                    next_to_score += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(self._postfix(), refresh=False)

            while True:
                await sem.acquire()
                prep = await loop.run_in_executor(None, self._queue.get)
                if isinstance(prep, BaseException):
                    raise prep
                if prep is None:
                    sem.release()
                    break
                tasks.append(asyncio.ensure_future(one(prep)))
            await asyncio.gather(*tasks)
        finally:
            if bar is not None:
                bar.close()
            await self.dendrite.aclose_session()
        return self.outcomes

    def _postfix(self) -> str:
        parts = []
        for uid, t in enumerate(self.targets):
            mine = [o for o in self.outcomes[-200 * len(self.targets):] if o.miner == t.name]
            if mine:
                parts.append(f"{t.name}: r={np.mean([o.reward for o in mine]):.2f} ema={self.scorer.ema.get(uid, 0):.2f}")
        return " | ".join(parts)


def _probe_challenge() -> Prepared:
    """A fixed procedural scene for the readiness probe (never scored)."""
    from natix_miner.synth.augment import augment
    from natix_miner.synth.scenes import render_scene

    out = augment(render_scene(1, 12345, size=(640, 360)).image, np.random.default_rng(0), level=0)
    return Prepared(-1, 1, False, 0, out.b64(), "probe", {})
