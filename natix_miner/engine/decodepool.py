"""The image decoding threads, watched: a decoder stuck past its time is replaced, and said so.

Decoding is bounded before it starts (``natix_miner.imaging.decode`` refuses bombs from their
headers), but a thread inside libjpeg/libpng cannot be stopped from Python if something still gets
through. So every call's start is recorded; a call still running ``stuck_after_s`` later is
*abandoned*: its thread is left to finish on its own (it exits when it returns) and a fresh thread
takes its place, so new images never queue behind it. At most ``max_replaced`` threads are
abandoned at once (each may hold memory); past that the pool reports ``ok: false`` (``/readyz``
turns 503) until they return. Checks run on every ``submit`` and every ``status`` call; there is
no timer thread.

Usage::

    pool = DecodePool(4, stuck_after_s=7.0)
    fut = pool.submit(decode, data)              # a concurrent.futures.Future
    await loop.run_in_executor(pool, fn)         # or through asyncio
    pool.status()  # {"ok": True, "threads": 4, "busy": 1, "stuck": 0, "abandoned": 0, "replaced": 0}
"""

import threading
import time
import typing

from natix_miner.engine.batching import DaemonExecutor


class DecodePool(DaemonExecutor):
    def __init__(self, workers: int = 2, name: str = "decode", stuck_after_s: float = 10.0,
                 max_replaced: typing.Optional[int] = None,
                 clock: typing.Callable[[], float] = time.monotonic):
        """``stuck_after_s``: a call running longer is abandoned (the engine uses its deadline);
        ``max_replaced``: abandoned threads at most at once (default: ``workers``)."""
        self.workers = max(1, workers)
        self.name = name
        self.stuck_after_s = float(stuck_after_s)
        self.max_replaced = self.workers if max_replaced is None else max(0, int(max_replaced))
        self._clock = clock
        self._lock = threading.Lock()
        self._busy: typing.Dict[int, float] = {}  # thread ident -> start of its current call
        self._abandoned: typing.Set[int] = set()
        self._spawned = 0
        self.replaced = 0
        super().__init__(self.workers, name)
        self._spawned = len(self._threads)

    def _run(self, fut, fn, args, kwargs) -> bool:
        me = threading.get_ident()
        with self._lock:
            self._busy[me] = self._clock()
        try:
            super()._run(fut, fn, args, kwargs)
        finally:
            with self._lock:
                self._busy.pop(me, None)
                abandoned = me in self._abandoned
                self._abandoned.discard(me)
        return not abandoned  # an abandoned thread's replacement already took its place

    def _spawn(self) -> None:
        t = threading.Thread(target=self._work, name=f"{self.name}-{self._spawned}", daemon=True)
        self._spawned += 1
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def check(self) -> None:
        """Abandon calls older than ``stuck_after_s`` and start their replacements (up to the cap)."""
        if self._closed:
            return
        now = self._clock()
        with self._lock:
            for ident, since in self._busy.items():
                if (ident not in self._abandoned and now - since > self.stuck_after_s
                        and len(self._abandoned) < self.max_replaced):
                    self._abandoned.add(ident)
                    self.replaced += 1
                    self._spawn()

    def submit(self, fn, /, *args, **kwargs):
        self.check()
        return super().submit(fn, *args, **kwargs)

    def status(self) -> dict:
        """``ok`` is false when every thread that should take new work is stuck."""
        self.check()
        now = self._clock()
        with self._lock:
            live = self.workers
            stuck = sum(1 for i, s in self._busy.items() if i not in self._abandoned and now - s > self.stuck_after_s)
            busy = sum(1 for i in self._busy if i not in self._abandoned)
            return {"ok": stuck < live, "threads": live, "busy": busy, "stuck": stuck,
                    "abandoned": len(self._abandoned), "replaced": self.replaced,
                    "stuck_after_s": self.stuck_after_s, "queued": self._q.qsize()}
