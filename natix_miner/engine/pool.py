"""One expert as a pool of data-parallel replicas, each with its own batcher and circuit breaker.

A request goes to the least-loaded replica (waiting + running requests; ties go to the replica
that has served fewest) whose breaker lets it through. One sick replica (a hung GPU, a crashing
engine) is opened on its own while the others keep serving; the expert is ``open`` only when every
replica is. The call's outcome (answer, error, timeout) is recorded on the replica that took it.

Usage::

    pool = ExpertPool(spec, [Replica(expert, "cuda:0", batcher, breaker, 0), ...])
    if pool.available():
        evidence = await pool.call(image, timeout=0.5)   # raises ExpertTimeout / the expert's error
"""

import asyncio
import dataclasses
import typing

from natix_miner.config import ExpertSpec
from natix_miner.engine.batching import MicroBatcher
from natix_miner.engine.breaker import Breaker
from natix_miner.experts.base import Evidence, Expert


class ExpertUnavailable(RuntimeError):
    """Every replica's breaker is open."""


class ExpertTimeout(TimeoutError):
    """The expert did not answer within its budget."""


@dataclasses.dataclass
class Replica:
    expert: Expert
    device: str
    batcher: MicroBatcher
    breaker: Breaker
    index: int = 0
    served: int = 0
    outstanding: int = 0  # calls routed here and not yet answered

    @property
    def load(self) -> int:
        """Requests on this replica: callers waiting, or (for a wedged replica whose callers gave
        up) what its batcher still holds."""
        return max(self.outstanding, self.batcher.load)

    def snapshot(self) -> dict:
        return {"index": self.index, "device": self.device, "breaker": self.breaker.snapshot(),
                "served": self.served, "outstanding": self.outstanding, **self.batcher.snapshot()}


class ExpertPool:
    def __init__(self, spec: ExpertSpec, replicas: typing.Sequence[Replica]):
        if not replicas:
            raise ValueError(f"expert {spec.name}: a pool needs at least one replica")
        self.spec = spec
        self.name = spec.name
        self.replicas = list(replicas)
        self.calls = 0
        self.answers = 0
        self.errors = 0
        self.timeouts = 0

    # -- routing -----------------------------------------------------------------------------
    def available(self) -> bool:
        """Could a request be placed now (without consuming a half-open probe)? An open replica with
        nothing in flight takes its probe early (``Breaker.idle_probe_s``)."""
        return any(r.breaker.state != Breaker.OPEN or (r.load == 0 and r.breaker.probe_due(idle=True))
                   for r in self.replicas)

    def pick(self) -> typing.Optional[Replica]:
        for r in sorted(self.replicas, key=lambda r: (r.load, r.served, r.index)):
            if r.breaker.allow(idle=r.load == 0):
                return r
        return None

    @property
    def state(self) -> str:
        states = {r.breaker.state for r in self.replicas}
        for s in (Breaker.CLOSED, Breaker.HALF_OPEN):
            if s in states:
                return s
        return Breaker.OPEN

    @property
    def depth(self) -> int:
        return sum(r.batcher.depth for r in self.replicas)

    # -- calls -------------------------------------------------------------------------------
    async def call(self, image, timeout: typing.Optional[float] = None,
                   count_timeout: bool = True) -> Evidence:
        """Run one image on the least-loaded open replica.

        ``count_timeout``: whether running out of ``timeout`` counts against the replica's breaker
        (False when the time was cut short by the request's overall deadline, not the expert).
        """
        r = self.pick()
        if r is None:
            raise ExpertUnavailable(f"{self.name}: every replica's breaker is open")
        self.calls += 1
        r.served += 1
        r.outstanding += 1
        try:
            if timeout is None:
                ev = await r.batcher.submit(image)
            else:
                ev = await asyncio.wait_for(r.batcher.submit(image), timeout=max(0.0, timeout))
        except asyncio.TimeoutError:
            self.timeouts += 1
            if count_timeout:
                r.breaker.record(False, f"timeout after {timeout:.3f}s")
            else:
                r.breaker.release()
            raise ExpertTimeout(f"{self.name} on {r.device}: no answer within {timeout:.3f}s") from None
        except asyncio.CancelledError:
            r.breaker.release()
            raise
        except Exception as exc:
            self.errors += 1
            r.breaker.record(False, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            r.outstanding -= 1
        r.breaker.record(True)
        self.answers += 1
        return ev

    # -- lifecycle / reporting ---------------------------------------------------------------
    def start(self) -> None:
        for r in self.replicas:
            r.batcher.start()

    async def stop(self) -> None:
        for r in self.replicas:
            await r.batcher.stop()

    async def join(self, timeout: float = 5.0) -> bool:
        ok = True
        for r in self.replicas:
            ok = await r.batcher.join(timeout) and ok
        return ok

    def snapshot(self) -> dict:
        return {"family": self.spec.family, "breaker": self.state, "queue": self.depth,
                "calls": self.calls, "answers": self.answers, "errors": self.errors, "timeouts": self.timeouts,
                "devices": [r.device for r in self.replicas],
                "replicas": [r.snapshot() for r in self.replicas]}
