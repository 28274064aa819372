"""An asyncio event loop on virtual time, for tests whose outcome must not depend on machine load.

Timers fire in order, but waiting for the next one costs no wall-clock time: when the loop would
sleep, the clock jumps to the next timer instead. Only for code that does no real I/O.

Usage::

    loop = VirtualClockLoop()
    try:
        result = loop.run_until_complete(main(clock=loop.time))
    finally:
        loop.close()
"""

import asyncio
import selectors


class _JumpingSelector:
    """Wraps the loop's selector: a wait of ``timeout`` seconds advances virtual time instead."""

    def __init__(self, real: selectors.BaseSelector, loop: "VirtualClockLoop"):
        self._real = real
        self._loop = loop

    def select(self, timeout=None):
        if timeout is None:
            raise RuntimeError("virtual-clock loop would block forever: nothing scheduled and nothing ready")
        if timeout > 0:
            self._loop.advance(timeout)
        return self._real.select(0)

    def __getattr__(self, name):
        return getattr(self._real, name)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self):
        super().__init__()
        self._virtual_now = 0.0
        self._selector = _JumpingSelector(self._selector, self)

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds
