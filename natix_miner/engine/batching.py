"""Per-expert dynamic micro-batching across concurrent requests.

Requests for one expert queue up; a worker takes the first, waits up to ``max_wait_ms`` for more
(up to ``max_batch``), then runs one blocking ``predict_batch`` on the expert's own thread (so the
event loop never blocks and a GPU sees one batch at a time per expert). Each request gets its own
future; a caller that gives up (deadline) simply stops waiting, and a request whose caller already
gave up is dropped before it costs model time.

Usage::

    b = MicroBatcher(expert, max_batch=64, max_wait_ms=2)
    b.start()
    evidence = await b.submit(decoded_image)
    await b.stop()
"""

import asyncio
import concurrent.futures
import time
import typing

from natix_miner.experts.base import Evidence, Expert


class BatchError(RuntimeError):
    pass


class MicroBatcher:
    def __init__(self, expert: Expert, max_batch: int = 16, max_wait_ms: float = 2.0,
                 max_queue: int = 4096):
        self.expert = expert
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, max_wait_ms / 1000.0)
        self.queue: "asyncio.Queue[typing.Tuple[typing.Any, asyncio.Future]]" = asyncio.Queue(max_queue)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"expert-{expert.name}")
        self._task: typing.Optional[asyncio.Task] = None
        self.batches = 0
        self.items = 0
        self.last_batch_s = 0.0
        self.busy = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.expert.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        while not self.queue.empty():
            _, fut = self.queue.get_nowait()
            if not fut.done():
                fut.set_exception(BatchError("engine stopped"))
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    async def submit(self, image) -> Evidence:
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((image, fut))
        except asyncio.QueueFull:
            raise BatchError(f"queue of {self.expert.name} is full") from None
        return await fut

    async def _collect(self) -> typing.List[typing.Tuple[typing.Any, asyncio.Future]]:
        first = await self.queue.get()
        batch = [first]
        end = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), timeout=left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            batch = [(img, fut) for img, fut in batch if not fut.done()]  # callers that gave up
            if not batch:
                continue
            images = [img for img, _ in batch]
            t0 = time.perf_counter()
            self.busy = True
            try:
                if self.expert.is_async:
                    out = await self.expert.predict_batch_async(images)
                else:
                    out = await loop.run_in_executor(self._pool, self.expert.predict_batch, images)
                if len(out) != len(images):
                    raise BatchError(f"{self.expert.name} returned {len(out)} results for {len(images)} images")
            except asyncio.CancelledError:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(BatchError("engine stopped"))
                raise
            except BaseException as exc:  # noqa: BLE001 - any model failure goes to the callers
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else BatchError(repr(exc)))
                continue
            finally:
                self.busy = False
                self.last_batch_s = time.perf_counter() - t0
            self.batches += 1
            self.items += len(images)
            for (_, fut), ev in zip(batch, out):
                if not fut.done():
                    fut.set_result(ev)
