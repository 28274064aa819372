"""Per-replica dynamic micro-batching across concurrent requests.

Requests for one expert replica queue up. When a batch slot is free (``concurrency`` batches may
be in flight; 1 for a plain GPU model), the worker takes the first waiting request, waits up to
``max_wait_ms`` for more (up to ``max_batch``), and runs one blocking ``predict_batch`` on the
replica's own daemon thread(s): the event loop never blocks, a hung model call can never block
process exit, and a GPU sees one batch at a time per replica. Async experts (vLLM) get their
``predict_batch_async`` awaited on the loop instead. Each request has its own future; a request
whose caller already gave up (deadline) is dropped before it costs model time.

Usage::

    b = MicroBatcher(expert, max_batch=64, max_wait_ms=2)
    b.start()                                   # inside the running loop
    evidence = await b.submit(decoded_image)
    b.load                                      # waiting + running requests (routing uses it)
    await b.stop()
"""

import asyncio
import concurrent.futures
import functools
import queue
import threading
import time
import typing

from natix_miner.experts.base import Evidence, Expert


class BatchError(RuntimeError):
    """The batcher could not run the request (queue full, stopped, bad model output)."""


class DaemonExecutor(concurrent.futures.Executor):
    """A fixed pool of daemon threads (unlike ``ThreadPoolExecutor``, never joined at exit)."""

    def __init__(self, workers: int = 1, name: str = "worker"):
        self._q: "queue.SimpleQueue" = queue.SimpleQueue()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for t in self._threads:
            t.start()

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        if self._closed:
            raise RuntimeError("executor is shut down")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._q.put((fut, fn, args, kwargs))
        return fut

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None or not self._run(*item):
                return

    def _run(self, fut, fn, args, kwargs) -> bool:
        """Run one submitted call into its future; returning False ends this thread."""
        if not fut.set_running_or_notify_cancel():
            return True
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter
            fut.set_exception(exc)
        return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 timeout: typing.Optional[float] = None) -> bool:
        """Stop the threads; with ``wait``, join them (up to ``timeout`` seconds in all).
        Returns whether every thread has finished."""
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in self._threads:
            self._q.put(None)
        if wait:
            end = None if timeout is None else time.monotonic() + timeout
            for t in self._threads:
                t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


Item = typing.Tuple[typing.Any, "asyncio.Future[Evidence]"]


def _coerce(value: typing.Any) -> Evidence:
    if isinstance(value, Evidence):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Evidence(float(value))
    raise BatchError(f"expected Evidence, got {type(value).__name__}")


class MicroBatcher:
    def __init__(self, expert: Expert, max_batch: int = 16, max_wait_ms: float = 2.0,
                 concurrency: int = 1, max_queue: int = 4096, name: typing.Optional[str] = None):
        self.expert = expert
        self.name = name or expert.name
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, max_wait_ms / 1000.0)
        self.concurrency = max(1, int(concurrency))
        self.max_queue = max_queue
        self.queue: typing.Optional[asyncio.Queue] = None
        self._slots: typing.Optional[asyncio.Semaphore] = None
        self._pool: typing.Optional[DaemonExecutor] = None
        self._task: typing.Optional[asyncio.Task] = None
        self._running: typing.Set[asyncio.Task] = set()
        self.running_items = 0
        self.batches = 0
        self.items = 0
        self.largest_batch = 0
        self.dropped = 0  # requests whose callers gave up before their batch started
        self.errors = 0  # batches that raised
        self.last_batch_s = 0.0
        self.busy_s = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is not None:
            return
        self.queue = asyncio.Queue(self.max_queue)
        self._slots = asyncio.Semaphore(self.concurrency)
        if not self.expert.is_async:
            self._pool = DaemonExecutor(self.concurrency, name=f"expert-{self.name}")
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def warmup(self) -> None:
        """Run the expert's ``warmup`` on this replica's own thread(s), so per-thread set-up (CUDA
        handles, thread pools, kernel caches) happens at start rather than on the first request."""
        if self.expert.is_async:
            return
        if self._pool is None:
            raise BatchError(f"batcher of {self.name} is not running")
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, self.expert.warmup) for _ in range(self.concurrency)))

    async def stop(self) -> None:
        """Cancel the worker and running batches, fail waiting requests, stop the threads
        (without waiting for a model call in progress: see :meth:`join`)."""
        tasks = [t for t in [self._task, *self._running] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except BaseException:  # noqa: BLE001 - stopping
                pass
        self._task = None
        if self.queue is not None:
            while not self.queue.empty():
                _, fut = self.queue.get_nowait()
                if not fut.done():
                    fut.set_exception(BatchError("engine stopped"))
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def join(self, timeout: float = 5.0) -> bool:
        """Wait (off the loop) until a model call still running on the threads has returned, so
        the process never exits with a thread inside native model code."""
        pool, self._pool = self._pool, None
        if pool is None:
            return True
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(pool.shutdown, True, timeout=timeout))

    # -- state -------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return self.queue.qsize() if self.queue is not None else 0

    @property
    def load(self) -> int:
        """Requests waiting plus requests inside running batches (a hung replica keeps this high)."""
        return self.depth + self.running_items

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def snapshot(self) -> dict:
        return {"queue": self.depth, "running": self.running_items, "batches": self.batches, "items": self.items,
                "mean_batch": round(self.items / self.batches, 2) if self.batches else 0.0,
                "largest_batch": self.largest_batch, "dropped": self.dropped, "errors": self.errors,
                "last_batch_ms": round(self.last_batch_s * 1000, 2), "busy_s": round(self.busy_s, 3)}

    # -- requests ----------------------------------------------------------------------------
    async def submit(self, image) -> Evidence:
        if self._task is None or self.queue is None:
            raise BatchError(f"batcher of {self.name} is not running")
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((image, fut))
        except asyncio.QueueFull:
            raise BatchError(f"queue of {self.name} is full ({self.max_queue})") from None
        return await fut

    async def _collect(self) -> typing.List[Item]:
        assert self.queue is not None
        batch = [await self.queue.get()]
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
        assert self._slots is not None
        while True:
            await self._slots.acquire()  # wait for a free slot first: the next batch fills meanwhile
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            live = [(img, fut) for img, fut in batch if not fut.done()]
            self.dropped += len(batch) - len(live)
            if not live:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run_batch(live))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_batch(self, batch: typing.List[Item]) -> None:
        assert self._slots is not None
        images = [img for img, _ in batch]
        self.running_items += len(images)
        t0 = time.perf_counter()
        try:
            if self.expert.is_async:
                out = await self.expert.predict_batch_async(images)
            else:
                out = await asyncio.get_running_loop().run_in_executor(self._pool, self.expert.predict_batch, images)
            out = list(out)
            if len(out) != len(images):
                raise BatchError(f"{self.name} returned {len(out)} results for {len(images)} images")
        except asyncio.CancelledError:
            _fail(batch, BatchError("engine stopped"))
            raise
        except BaseException as exc:  # noqa: BLE001 - any model failure goes to the callers
            self.errors += 1
            _fail(batch, exc if isinstance(exc, Exception) else BatchError(repr(exc)))
            return
        finally:
            dt = time.perf_counter() - t0
            self.last_batch_s = dt
            self.busy_s += dt
            self.running_items -= len(images)
            self._slots.release()
        self.batches += 1
        self.items += len(images)
        self.largest_batch = max(self.largest_batch, len(images))
        for (_, fut), value in zip(batch, out):
            if fut.done():
                continue
            try:
                fut.set_result(_coerce(value))
            except BatchError as exc:
                fut.set_exception(exc)


def _fail(batch: typing.List[Item], exc: BaseException) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(exc)
