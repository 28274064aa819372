"""A circuit breaker per expert replica: open after repeated failures, probe after a cool-down.

States: ``closed`` (normal) -> ``open`` after ``failures`` consecutive failures or timeouts ->
``half_open`` once ``cooldown_s`` has passed: exactly one probe request is let through ->
``closed`` when the probe succeeds, ``open`` again (a fresh cool-down) when it fails. A probe whose
caller vanished (cancelled, never recorded) is given up after another cool-down, so the breaker can
never stick half-open.

An *idle* caller (the pool passes ``idle=True`` when the replica has no call in flight or queued)
gets the probe after ``idle_probe_s`` (default ``min(1 s, cooldown_s)``) instead of the whole
cool-down: once a burst of timeouts is over, the next request finds out at once whether the expert
is healthy. Before this, a burst on a busy host tripped the only fast expert and an idle miner
answered the fallback 0.49 for the rest of the 30 s cool-down (19 requests in 21 s). A probe that
fails opens the breaker again, so a broken expert costs at most one call per ``idle_probe_s``.

Usage::

    b = Breaker(failures=3, cooldown_s=30)
    if b.allow(idle=nothing_in_flight):
        try: run(); b.record(ok=True)
        except Exception as e: b.record(ok=False, error=str(e))
"""

import time
import typing


class Breaker:
    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, failures: int = 3, cooldown_s: float = 30.0,
                 clock: typing.Callable[[], float] = time.monotonic, idle_probe_s: typing.Optional[float] = None):
        self.threshold = max(1, int(failures))
        self.cooldown_s = float(cooldown_s)
        self.idle_probe_s = min(1.0, self.cooldown_s) if idle_probe_s is None else float(idle_probe_s)
        self._clock = clock
        self._state = self.CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.total_failures = 0
        self.total_successes = 0
        self.opens = 0  # how many times it tripped
        self.probes = 0
        self.last_error: str = ""
        self._probe_started: typing.Optional[float] = None

    @property
    def state(self) -> str:
        """The state as of now (an open breaker past its cool-down reads ``half_open``)."""
        if self._state == self.OPEN and self._clock() - self.opened_at >= self.cooldown_s:
            return self.HALF_OPEN
        return self._state

    def probe_due(self, idle: bool = False) -> bool:
        """Would :meth:`allow` let a request through now (without handing out the probe)?"""
        if self._state == self.CLOSED:
            return True
        now = self._clock()
        if self._state == self.OPEN:
            return now - self.opened_at >= (self.idle_probe_s if idle else self.cooldown_s)
        return self._probe_started is None or now - self._probe_started >= self.cooldown_s

    def allow(self, idle: bool = False) -> bool:
        """May a request go through now? In ``half_open`` this hands out the single probe;
        ``idle``: nothing is in flight on this replica, so the probe is due after ``idle_probe_s``."""
        if self._state == self.CLOSED:
            return True
        now = self._clock()
        if self._state == self.OPEN:
            if now - self.opened_at < (self.idle_probe_s if idle else self.cooldown_s):
                return False
            self._state = self.HALF_OPEN
            self._probe_started = None
        if self._probe_started is not None and now - self._probe_started < self.cooldown_s:
            return False  # the probe is still out
        self._probe_started = now
        self.probes += 1
        return True

    def release(self) -> None:
        """The caller gave up without an outcome (cancelled): free the probe slot."""
        if self._state == self.HALF_OPEN:
            self._probe_started = None

    def record(self, ok: bool, error: str = "") -> None:
        if ok:
            self.total_successes += 1
            self._state = self.CLOSED
            self.consecutive = 0
            self._probe_started = None
            return
        self.total_failures += 1
        self.consecutive += 1
        self.last_error = error[:200]
        if self._state == self.HALF_OPEN or (self._state == self.CLOSED and self.consecutive >= self.threshold):
            self.trip()

    def trip(self, error: str = "") -> None:
        """Open now (also used when an expert fails to load)."""
        if error:
            self.last_error = error[:200]
        self._state = self.OPEN
        self.opened_at = self._clock()
        self._probe_started = None
        self.opens += 1

    def snapshot(self) -> dict:
        return {"state": self.state, "consecutive_failures": self.consecutive, "failures": self.total_failures,
                "successes": self.total_successes, "opens": self.opens, "probes": self.probes,
                "last_error": self.last_error}
