"""Result cache keyed by image hash, bounded in size and age, with in-flight de-duplication.

One challenge goes to 10 miners at once, and operators running several hotkeys share one engine:
the same bytes arrive concurrently. The first request computes; the others await its future.

Usage::

    cache = ResultCache(max_entries=4096, ttl_s=600)
    hit = cache.get(key)                 # value or None
    cache.put(key, value)
"""

import asyncio
import collections
import time
import typing

T = typing.TypeVar("T")


class ResultCache(typing.Generic[T]):
    def __init__(self, max_entries: int = 4096, ttl_s: float = 600.0, clock=time.monotonic):
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._data: "collections.OrderedDict[str, typing.Tuple[float, T]]" = collections.OrderedDict()
        self._inflight: typing.Dict[str, asyncio.Future] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> typing.Optional[T]:
        if self.max_entries <= 0:
            return None
        item = self._data.get(key)
        if item is None:
            self.misses += 1
            return None
        stamp, value = item
        if self._clock() - stamp > self.ttl_s:
            del self._data[key]
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: T) -> None:
        if self.max_entries <= 0:
            return
        now = self._clock()
        self._data[key] = (now, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
        while self._data:  # drop expired entries from the cold end
            stamp, _ = next(iter(self._data.values()))
            if now - stamp <= self.ttl_s:
                break
            self._data.popitem(last=False)

    # -- in-flight de-duplication ------------------------------------------------------------
    def inflight(self, key: str) -> typing.Optional[asyncio.Future]:
        return self._inflight.get(key)

    def begin(self, key: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        return fut

    def end(self, key: str, fut: asyncio.Future) -> None:
        if self._inflight.get(key) is fut:
            del self._inflight[key]

    @property
    def inflight_count(self) -> int:
        return len(self._inflight)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
