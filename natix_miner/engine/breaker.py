"""A circuit breaker per expert: open after repeated failures, probe after a cool-down.

States: ``closed`` (normal) -> ``open`` after ``failures`` consecutive failures or timeouts ->
``half_open`` once ``cooldown_s`` has passed (one probe request is let through) -> ``closed`` on
success, ``open`` again on failure.

Usage::

    b = Breaker(failures=3, cooldown_s=30)
    if b.allow(): ...; b.record(ok=True)
"""

import time


class Breaker:
    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, failures: int = 3, cooldown_s: float = 30.0, clock=time.monotonic):
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.state = self.CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.total_failures = 0
        self.last_error: str = ""
        self._probe_in_flight = False

    def allow(self) -> bool:
        if self.state == self.CLOSED:
            return True
        if self.state == self.OPEN and self._clock() - self.opened_at >= self.cooldown_s:
            self.state = self.HALF_OPEN
            self._probe_in_flight = False
        if self.state == self.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record(self, ok: bool, error: str = "") -> None:
        if ok:
            self.state = self.CLOSED
            self.consecutive = 0
            self._probe_in_flight = False
            return
        self.total_failures += 1
        self.consecutive += 1
        self.last_error = error[:200]
        if self.state == self.HALF_OPEN or self.consecutive >= self.threshold:
            self.state = self.OPEN
            self.opened_at = self._clock()
            self._probe_in_flight = False
