"""The miner's side of the cascade on Ray Serve: an :class:`~natix_miner.engine.client.EngineClient`.

``--engine.ray ADDRESS --engine.app NAME`` makes the miner answer through the Ray Serve application
that ``natix-miner engine serve`` deployed, instead of loading models. The Ray driver runs in a child
process (``python -m natix_miner.engine.ray_bridge``), never in the miner: a Ray driver whose cluster
dies exits with it, and the miner must keep answering. The two talk over a socket pair (length-
prefixed pickles); the child sends the application's status every ``probe_interval_s``.

The rules hold across the boundary: every :meth:`RayEngineClient.predict` returns a finite
probability in [0, 1], never exactly 0.5, before the deadline. While the cluster is unreachable (the
child exited, or sent nothing for ``stale_after_s``) the answer is the profile's fallback at once, the
readiness check ``engine`` fails with the reason, and the child is restarted with a growing pause
(up to ``max_backoff_s``) until the application answers again. This module imports neither ray nor torch.

Usage::

    client = RayEngineClient(profile, address="127.0.0.1:6379", app="natix")
    await client.start()                      # waits up to connect_timeout_s for the app, else raises
    res = await client.predict(jpeg_bytes, deadline=time.monotonic() + 8)
    client.status()["ray"]                    # {"connected": True, "reconnects": 0, ...}
    await client.close()
"""

import asyncio
import collections
import importlib.util
import logging
import math
import os
import pickle
import socket
import struct
import sys
import time
import typing

from natix_miner.engine.client import EngineUnavailable
from natix_miner.engine.result import PredictResult, safe_probability

if typing.TYPE_CHECKING:  # pragma: no cover
    from natix_miner.config import Profile

log = logging.getLogger("natix_miner.engine.ray")

MARGIN_S = 0.05  # kept back from the deadline for the hop through the child process
_HEADER = struct.Struct("!I")
LOST = "the ray bridge was lost"  # a pending request's error when its bridge went away


class RayUnavailable(EngineUnavailable):
    """The Ray Serve application could not be reached at start; the message names the fix."""


async def send_frame(writer: asyncio.StreamWriter, message: tuple) -> None:
    """One length-prefixed pickle (both ends are this package: the socket pair never leaves the host)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(data)) + data)
    await writer.drain()


async def read_frame(reader: asyncio.StreamReader) -> tuple:
    """The next message; ``asyncio.IncompleteReadError`` at end of stream."""
    (n,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(n))


class RayEngineClient:
    """Answers through a Ray Serve application (see the module docstring); implements ``EngineClient``."""

    def __init__(self, profile: "Profile", address: str, app: str = "natix", connect_timeout_s: float = 60.0,
                 probe_interval_s: float = 1.0, stale_after_s: float = 5.0, max_backoff_s: float = 5.0,
                 bridge: str = "natix_miner.engine.ray_bridge"):
        """``bridge``: the module run as the child (``python -m``); tests put a scripted one there."""
        self.profile = profile
        self.bridge = bridge
        self.address = address
        self.app = app
        self.connect_timeout_s = connect_timeout_s
        self.probe_interval_s = probe_interval_s
        self.stale_after_s = stale_after_s
        self.max_backoff_s = max_backoff_s
        self.started = False
        self.connected = False
        self.last_error: typing.Optional[str] = None
        self.reconnects = 0
        self.requests = 0
        self.answered = 0
        self.fallbacks: typing.Counter[str] = collections.Counter()
        self._remote: dict = {}  # the application's last status()
        self._last_seen = 0.0
        self._heard = False
        self._since = 0.0  # monotonic time of the last change of ``connected``
        self._pending: typing.Dict[int, asyncio.Future] = {}
        self._ids = 0
        self._writer: typing.Optional[asyncio.StreamWriter] = None
        self._proc: typing.Optional[asyncio.subprocess.Process] = None
        self._task: typing.Optional[asyncio.Task] = None
        self._first: typing.Optional[asyncio.Future] = None
        self._closing = False

    # -- EngineClient ------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Started, connected, and the application's engine reports ready."""
        return self.started and self.connected and bool(self._remote.get("ready"))

    async def start(self) -> None:
        """Start the bridge and wait (up to ``connect_timeout_s``) for the application's first status.
        Raises :class:`RayUnavailable` naming the fix when ray is missing or the app never answers."""
        if self.started:
            return
        if self.bridge.startswith("natix_miner.") and importlib.util.find_spec("ray") is None:
            raise RayUnavailable("--engine.ray needs Ray Serve in this environment: pip install -e '.[ray]'")
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._task = loop.create_task(self._supervise(), name="ray-bridge")
        try:
            await asyncio.wait_for(asyncio.shield(self._first), timeout=self.connect_timeout_s)
        except asyncio.TimeoutError:
            await self.close()
            raise RayUnavailable(self._unreachable(f"no answer within {self.connect_timeout_s:.0f} s")) from None
        if not self.connected:
            await self.close()
            raise RayUnavailable(self._unreachable(self.last_error or "the bridge exited"))
        self.started = True
        served = self._remote.get("profile")
        if served and served != self.profile.name:  # the deadline and fallback come from --profile
            log.warning("ray app %s serves profile %s but this miner runs with --profile %s (its deadline and "
                        "fallback); use the profile you deployed", self.app, served, self.profile.name)

    def _unreachable(self, why: str) -> str:
        return (f"Ray Serve application {self.app!r} at {self.address} is not reachable ({why}); start the "
                f"cluster (`ray start --head`), deploy the cascade (`natix-miner engine serve --profile "
                f"{self.profile.name} --ray {self.address} --app {self.app}`), or fix --engine.ray / "
                f"--engine.app (NATIX_ENGINE_RAY / NATIX_ENGINE_APP)")

    async def predict(self, image: typing.Union[bytes, str], deadline: typing.Optional[float] = None,
                      all_tiers: bool = False) -> PredictResult:
        """The application's answer, or the profile's fallback (``ray_unavailable``, ``ray_timeout``,
        ``ray_error:...``) before ``deadline`` (default and cap: now + ``profile.deadline_s``)."""
        t0 = time.perf_counter()
        now = time.monotonic()
        cap = now + self.profile.deadline_s
        deadline = cap if deadline is None or not math.isfinite(deadline) else min(deadline, cap)
        self.requests += 1
        left = deadline - now - MARGIN_S
        if not (self.started and self.connected) or self._writer is None:
            return self._finish(self._fallback("ray_unavailable", t0))
        if left <= 0:
            return self._finish(self._fallback("deadline", t0))
        self._ids += 1
        rid = self._ids
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await send_frame(self._writer, ("predict", rid, image, max(0.001, left - MARGIN_S), all_tiers))
            res, error = await asyncio.wait_for(fut, timeout=max(0.001, deadline - time.monotonic() - MARGIN_S))
        except asyncio.TimeoutError:
            return self._finish(self._fallback("ray_timeout", t0))
        except (OSError, ConnectionError, RuntimeError) as exc:  # the bridge went away mid-request
            return self._finish(self._fallback(f"ray_unavailable:{type(exc).__name__}", t0))
        finally:
            self._pending.pop(rid, None)
        if res is None:
            return self._finish(self._fallback("ray_unavailable" if error is LOST else f"ray_error:{error}", t0))
        res.probability = safe_probability(res.probability, self.profile.fallback_probability)
        res.timings["total"] = time.perf_counter() - t0
        return self._finish(res)

    def status(self) -> dict:
        """The application's last ``status()`` (its engine: experts, breakers, cache...), with ``ready``
        false and ``error`` set while the cluster is unreachable, and a ``ray`` section."""
        st = dict(self._remote)
        st.setdefault("profile", self.profile.name)
        st["ready"] = self.ready
        st["engine"] = "ray"
        st["ray"] = {"address": self.address, "app": self.app, "connected": self.connected,
                     "since_s": round(time.monotonic() - self._since, 1) if self._since else None,
                     "last_error": self.last_error, "reconnects": self.reconnects,
                     "requests": self.requests, "answered": self.answered,
                     "fallbacks": dict(self.fallbacks), "fallback_total": sum(self.fallbacks.values())}
        if self.started and not self.connected:
            st["error"] = f"ray engine unreachable: {self.last_error or 'connecting'}"
        return st

    def degraded_report(self) -> typing.List[str]:
        return list(self._remote.get("degraded") or [])

    async def close(self) -> None:
        self._closing = True
        self.started = False
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: BLE001 - closing
                pass
            self._task = None
        await self._stop_bridge()

    # -- internals ---------------------------------------------------------------------------
    def _fallback(self, reason: str, t0: float) -> PredictResult:
        return PredictResult(probability=safe_probability(self.profile.fallback_probability), fallback=True,
                             fallback_reason=reason, timings={"total": time.perf_counter() - t0})

    def _finish(self, res: PredictResult) -> PredictResult:
        self.answered += 1
        if res.fallback:
            self.fallbacks[(res.fallback_reason or "unknown").split(":")[0]] += 1
        return res

    def _set_connected(self, value: bool, why: typing.Optional[str] = None) -> None:
        if why:
            self.last_error = why
        if value == self.connected:
            return
        self.connected = value
        self._since = time.monotonic()
        if value:
            if self.started:
                self.reconnects += 1
                log.warning("ray engine %s at %s is back; answering from it again", self.app, self.address)
        elif self.started:
            log.error("ray engine %s at %s lost (%s); answering the fallback %.2f until it is back", self.app,
                      self.address, why, self.profile.fallback_probability)

    async def _supervise(self) -> None:
        """Keep one bridge running: start it, read it, restart it after a loss with a growing pause."""
        pause = 0.5
        while not self._closing:
            try:
                await self._run_bridge()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is a lost connection
                self._set_connected(False, f"{type(exc).__name__}: {exc}")
            await self._stop_bridge()
            if self._first is not None and not self._first.done():
                self._first.set_result(False)  # start() reports the first failure at once
            if self._closing:
                return
            await asyncio.sleep(pause)
            pause = min(self.max_backoff_s, pause * 2)
            if self.connected:
                pause = 0.5

    async def _run_bridge(self) -> None:
        parent, child = socket.socketpair()
        try:
            cmd = [sys.executable, "-m", self.bridge, "--fd", str(child.fileno()),
                   "--address", self.address, "--app", self.app, "--probe-interval", str(self.probe_interval_s)]
            self._proc = await asyncio.create_subprocess_exec(*cmd, pass_fds=(child.fileno(),),
                                                              stdin=asyncio.subprocess.DEVNULL,
                                                              stdout=asyncio.subprocess.DEVNULL,
                                                              env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        finally:
            child.close()
        reader, self._writer = await asyncio.open_connection(sock=parent)
        self._last_seen = time.monotonic()
        self._heard = False  # until the first status, the bridge has connect_timeout_s to reach the cluster
        watchdog = asyncio.get_running_loop().create_task(self._watch())
        try:
            while True:
                msg = await read_frame(reader)
                self._last_seen = time.monotonic()
                self._heard = True
                kind = msg[0]
                if kind == "result":
                    fut = self._pending.get(msg[1])
                    if fut is not None and not fut.done():
                        fut.set_result((msg[2], msg[3]))
                elif kind == "status":
                    self._remote = msg[1] or {}
                    self._set_connected(True)
                    self.last_error = None
                    if self._first is not None and not self._first.done():
                        self._first.set_result(True)
                elif kind == "error":
                    self._set_connected(False, msg[1])
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self._set_connected(False, self.last_error if not self.connected else "the ray bridge exited")
        finally:
            watchdog.cancel()

    async def _watch(self) -> None:
        """A bridge that sends nothing for ``stale_after_s`` (a hung cluster) counts as lost; before its
        first message it has ``connect_timeout_s`` (``ray.init`` on a loaded host takes seconds)."""
        while True:
            await asyncio.sleep(min(1.0, self.stale_after_s / 2))
            limit = self.stale_after_s if self._heard else self.connect_timeout_s
            if time.monotonic() - self._last_seen > limit:
                self._set_connected(False, f"no status from the cluster for {limit:.0f} s")
                if self._writer is not None:
                    self._writer.close()  # ends the reader loop
                return

    async def _stop_bridge(self) -> None:
        for fut in self._pending.values():  # answered with the fallback by predict()
            if not fut.done():
                fut.set_result((None, LOST))
        self._pending.clear()
        w, self._writer = self._writer, None
        if w is not None:
            w.close()  # end of stream: the bridge exits by itself
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            for stop in (None, proc.terminate, proc.kill):
                if stop is not None:
                    stop()
                try:
                    await asyncio.wait_for(proc.wait(), timeout=3.0)
                    break
                except asyncio.TimeoutError:
                    continue
