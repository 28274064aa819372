"""Admission control: bounded concurrency, a bounded priority queue by stake, answers before deadlines.

bittensor's axon computes a priority per request but only uses it to order a no-op in a thread
pool (``Axon.priority`` submits ``lambda: priority`` and discards the result), so under overload
requests would simply pile up on the engine. This module is the real gate in front of the engine:

* at most ``max_inflight`` requests are inside the engine at once;
* up to ``max_waiting`` more wait in a queue ordered by priority (the caller's stake), FIFO among
  equals; when the queue is full, a newcomer with a higher priority evicts the lowest waiter,
  otherwise the newcomer is refused at once (backpressure, nothing grows without bound);
* a waiter that has not been admitted ``min_service_s`` before its deadline gives up, so the
  miner still answers (the fallback probability) in time instead of answering late or never.

Refusals raise :class:`Overloaded` (``reason``: ``queue_full`` | ``evicted`` | ``deadline``); the
neuron answers the profile's fallback probability for them. Everything runs on one event loop (the
engine's); it is not thread-safe and does not need to be.

Usage::

    gate = Admission(max_inflight=32, max_waiting=128)
    try:
        result = await gate.run(priority=stake, deadline=time.monotonic() + 8,
                                factory=lambda: engine.predict(image, deadline))
    except Overloaded as exc:
        answer_fallback(exc.reason)
"""

import asyncio
import dataclasses
import heapq
import itertools
import time
import typing

T = typing.TypeVar("T")


class Overloaded(RuntimeError):
    """Not admitted; ``reason``: ``queue_full`` | ``evicted`` | ``deadline``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass
class _Waiter:
    priority: float
    seq: int
    future: asyncio.Future
    gone: bool = False

    def key(self) -> typing.Tuple[float, int]:
        return (-self.priority, self.seq)

    def __lt__(self, other: "_Waiter") -> bool:
        return self.key() < other.key()


class Admission:
    def __init__(self, max_inflight: int = 32, max_waiting: int = 128, min_service_s: float = 0.25,
                 clock: typing.Callable[[], float] = time.monotonic):
        if max_inflight < 1 or max_waiting < 0:
            raise ValueError("max_inflight must be >= 1 and max_waiting >= 0")
        self.max_inflight = int(max_inflight)
        self.max_waiting = int(max_waiting)
        self.min_service_s = float(min_service_s)
        self._clock = clock
        self._heap: typing.List[_Waiter] = []
        self._seq = itertools.count()
        self.inflight = 0
        self.waiting = 0
        self.peak_inflight = 0
        self.peak_waiting = 0
        self.admitted = 0
        self.refused: typing.Dict[str, int] = {"queue_full": 0, "evicted": 0, "deadline": 0}

    # -- public ------------------------------------------------------------------------------
    async def run(self, priority: float, deadline: float, factory: typing.Callable[[], typing.Awaitable[T]]) -> T:
        """Wait for a slot (or raise :class:`Overloaded`), run ``factory()``, free the slot."""
        await self.acquire(priority, deadline)
        try:
            return await factory()
        finally:
            self.release()

    async def acquire(self, priority: float, deadline: float) -> None:
        if self.inflight < self.max_inflight and self.waiting == 0:
            self._admit()
            return
        wait_s = deadline - self.min_service_s - self._clock()
        if wait_s <= 0:
            self._refuse("deadline")
        if self.waiting >= self.max_waiting:
            lowest = self._lowest()
            if lowest is None or lowest.priority >= priority:
                self._refuse("queue_full", f"{self.waiting} waiting")
            self._drop(lowest)
            self.refused["evicted"] += 1
            lowest.future.set_exception(Overloaded("evicted", "a higher-priority caller took the place"))
        waiter = _Waiter(float(priority), next(self._seq), asyncio.get_running_loop().create_future())
        heapq.heappush(self._heap, waiter)
        self.waiting += 1
        self.peak_waiting = max(self.peak_waiting, self.waiting)
        try:
            done, _ = await asyncio.wait([waiter.future], timeout=wait_s)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if not done:
            self._abandon(waiter)
            self._refuse("deadline", f"not admitted within {wait_s:.2f}s")
        waiter.future.result()  # raises Overloaded("evicted") if we were pushed out

    def release(self) -> None:
        """A request left the engine: hand its slot to the highest-priority live waiter."""
        while self._heap:
            w = heapq.heappop(self._heap)
            if w.gone:
                continue
            w.gone = True
            self.waiting -= 1
            self.admitted += 1
            w.future.set_result(None)  # the slot passes over directly: inflight unchanged
            return
        self.inflight -= 1

    def snapshot(self) -> dict:
        return {"inflight": self.inflight, "waiting": self.waiting, "max_inflight": self.max_inflight,
                "max_waiting": self.max_waiting, "peak_inflight": self.peak_inflight,
                "peak_waiting": self.peak_waiting, "admitted": self.admitted, "refused": dict(self.refused)}

    # -- internals ---------------------------------------------------------------------------
    def _admit(self) -> None:
        self.inflight += 1
        self.admitted += 1
        self.peak_inflight = max(self.peak_inflight, self.inflight)

    def _refuse(self, reason: str, detail: str = "") -> typing.NoReturn:
        self.refused[reason] += 1
        raise Overloaded(reason, detail)

    def _lowest(self) -> typing.Optional[_Waiter]:
        live = [w for w in self._heap if not w.gone]
        return max(live, key=_Waiter.key) if live else None

    def _drop(self, waiter: _Waiter) -> None:
        waiter.gone = True
        self.waiting -= 1
        if len(self._heap) > 4 * self.max_waiting + 16:  # compact lazily deleted entries
            self._heap = [w for w in self._heap if not w.gone]
            heapq.heapify(self._heap)

    def _abandon(self, waiter: _Waiter) -> None:
        """The waiter timed out or was cancelled. If a slot was handed to it meanwhile, pass it on."""
        fut = waiter.future
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            self.release()  # it had been granted a slot it will never use
            return
        if not waiter.gone:
            self._drop(waiter)
        if not fut.done():
            fut.cancel()
