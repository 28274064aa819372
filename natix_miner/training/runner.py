"""A profile's experts over many images, for calibration, evaluation and hard-example mining.

Two ways through the same loaded :class:`natix_miner.engine.Engine`:

* :meth:`ProfileRunner.predict` - the real cascade, ``Engine.predict`` on every image (deadlines,
  escalation, consensus, fallbacks: exactly what a validator would get), many in flight at once
  so the engine's micro-batchers fill;
* :meth:`ProfileRunner.all_evidence` - every expert on every image in batches, no escalation, no
  deadline: the full logit matrix calibration and disagreement need. :func:`replay_cascade`
  then replays the engine's cascade on it with the engine's own policy (``engine/policy.py``).

Usage::

    async with ProfileRunner(profile) as run:
        results = await run.predict(jpeg_bytes_list)          # [PredictResult]
        ev = await run.all_evidence(decoded_images)          # {expert: [Evidence | None]}
    X = logit_matrix(ev, names)                              # (n, experts), NaN = no opinion
"""

import asyncio
import logging
import typing

import numpy as np

log = logging.getLogger("natix_miner.training")


class ProfileRunner:
    def __init__(self, profile, concurrency: int = 32, progress: bool = True, engine=None):
        self.profile = profile
        self.concurrency = max(1, int(concurrency))
        self.progress = progress
        self.engine = engine
        self._own = engine is None

    async def __aenter__(self) -> "ProfileRunner":
        if self.engine is None:
            from natix_miner.engine import Engine

            self.engine = Engine(self.profile)
            await self.engine.start()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._own and self.engine is not None:
            await self.engine.close()

    @property
    def expert_names(self) -> typing.List[str]:
        """Experts in tier order (the order of the logit matrix's columns)."""
        return [n for t in self.profile.tiers for n in t.experts]

    @property
    def loaded(self) -> typing.Dict[str, typing.Any]:
        return dict(self.engine.experts)

    async def predict(self, images: typing.Sequence[bytes], desc: str = "predict") -> list:
        """``Engine.predict`` on every image, ``concurrency`` at a time, order kept."""
        from tqdm import tqdm

        sem = asyncio.Semaphore(self.concurrency)
        bar = tqdm(total=len(images), desc=desc, unit="img", disable=not self.progress, leave=False)

        async def one(data):
            async with sem:
                res = await self.engine.predict(data)
                bar.update(1)
                return res

        try:
            return list(await asyncio.gather(*(one(d) for d in images)))
        finally:
            bar.close()

    async def all_evidence(self, images: typing.Sequence, names: typing.Optional[typing.Sequence[str]] = None,
                           desc: str = "experts") -> typing.Dict[str, typing.List[typing.Any]]:
        """Every expert (``names``, default all loaded) on every decoded image; ``None`` where it failed."""
        from tqdm import tqdm

        loop = asyncio.get_running_loop()
        names = [n for n in (names or self.expert_names) if n in self.loaded]
        missing = [n for n in (names or self.expert_names) if n not in self.loaded]
        for n in missing:
            log.warning("expert %s is not loaded (%s): its column stays empty", n,
                        self.engine.load_status.get(n))
        out: typing.Dict[str, typing.List[typing.Any]] = {}
        total = sum(len(images) for _ in names)
        bar = tqdm(total=total, desc=desc, unit="img", disable=not self.progress, leave=False)
        try:
            for name in names:
                expert = self.loaded[name]
                bs = max(1, self.profile.expert(name).max_batch)
                col: typing.List[typing.Any] = []
                for i in range(0, len(images), bs):
                    batch = list(images[i:i + bs])
                    try:
                        if getattr(expert, "is_async", False):
                            ev = await expert.predict_batch_async(batch)
                        else:
                            ev = await loop.run_in_executor(None, expert.predict_batch, batch)
                        if len(ev) != len(batch):
                            raise RuntimeError(f"returned {len(ev)} answers for {len(batch)} images")
                    except Exception as exc:  # one bad batch must not lose the whole run
                        log.warning("expert %s failed on a batch of %d: %s: %s", name, len(batch),
                                    type(exc).__name__, exc)
                        ev = [None] * len(batch)
                    col.extend(ev)
                    bar.update(len(batch))
                out[name] = col
        finally:
            bar.close()
        return out


def logit_matrix(evidence: typing.Mapping[str, typing.Sequence[typing.Any]], names: typing.Sequence[str],
                 n: typing.Optional[int] = None) -> np.ndarray:
    """(n, len(names)) logits as the engine pools them (``Evidence.logit``); NaN = no opinion."""
    if n is None:
        n = max((len(v) for v in evidence.values()), default=0)
    from natix_miner.engine.policy import evidence_logit

    X = np.full((n, len(names)), np.nan)
    for j, name in enumerate(names):
        for i, ev in enumerate(evidence.get(name, [])):
            X[i, j] = evidence_logit(ev)
    return X


def replay_cascade(profile, evidence: typing.Mapping[str, typing.Sequence[typing.Any]], n: int,
                   consensus=None) -> typing.Tuple[np.ndarray, typing.List[typing.List[str]]]:
    """The engine's cascade replayed on precomputed evidence (no deadlines): the same
    :class:`~natix_miner.engine.policy.CascadePolicy` the engine and the bulk path use.

    ``evidence``: expert -> one Evidence per image (``None``: the expert failed on it), as
    :meth:`ProfileRunner.all_evidence` returns; an expert with no column was not loaded, and a
    tier none of whose experts is loaded is skipped, as the engine skips it. ``consensus``: a
    :class:`~natix_miner.engine.consensus.Consensus` to use instead of the profile's (a rule
    being fitted). Returns the probabilities and, per image, the tiers run.
    """
    from natix_miner.engine.policy import CascadePolicy, evidence_logit

    policy = CascadePolicy(profile, consensus=consensus.spec if consensus is not None else None)

    def tier_logits(i: int, rows: np.ndarray) -> typing.Dict[str, np.ndarray]:
        return {name: np.array([evidence_logit(evidence[name][r]) for r in rows], dtype=np.float64)
                for name in profile.tiers[i].experts if name in evidence}

    out = policy.cascade(n, tier_logits)
    return out.probabilities, [out.tiers_run(i) for i in range(n)]
