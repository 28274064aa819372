"""Run any expert in its own child process, supervised: a crash costs that expert, never the miner.

The parent keeps a socket pair to a child Python process (``python -m
natix_miner.experts.isolated``; a fresh interpreter, so the parent's ``__main__`` is never
re-imported and no CUDA state is inherited) that loads the ``inner`` expert and answers batches.
If the child dies (segfault, CUDA fatal error, OOM killer, ``kill -9``), calls fail fast with
:class:`EngineProcessDown`, so the engine's breaker opens and the other tiers keep answering; a
supervisor thread starts a new child (exponential back-off from ``restart_backoff_s`` to
``max_backoff_s``) and the breaker's next probe finds it healthy again. A call that outlives
``call_timeout_s`` kills the child (a wedged engine is treated as a dead one). This is also how a
VLM engine process is modelled in tests (``tests/reliability/test_faults.py``).

Every send and every receive has a deadline (the call's ``call_timeout_s``, waiting for the lock
included): a child that is stopped (SIGSTOP) or hung cannot block the parent. Before, one large
image to a stopped child blocked ``send`` forever while holding the lock, so no timeout fired and
the tier was lost until the child resumed. Now the call fails with :class:`EngineProcessDown`
within its timeout, the child is killed and the supervisor starts a new one.

Profile entry::

    - name: vlm_isolated
      family: isolated
      timeout_s: 5                       # per-call timeout (default 30 s)
      options:
        inner: {family: timm, model: test_efficientnet, options: {num_classes: 2}}
        threads: 1                       # torch threads in the child
        families: {}                     # plugin families to register in the child: {name: "module:Class"}
        restart_backoff_s: 1.0

Usage (direct)::

    expert = create_expert(spec, profile); expert.load("cpu")
    expert.pid; expert.restarts; expert.ready
"""

import logging
import multiprocessing.connection
import os
import pickle
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import typing

import pydantic

from natix_miner.experts.base import Evidence, Expert, WrapperOptions

log = logging.getLogger("natix_miner.experts.isolated")


class EngineProcessDown(RuntimeError):
    """The child process is down (dead, restarting or wedged)."""


class RemoteExpertError(RuntimeError):
    """The inner expert raised in the child; ``remote_type`` is its exception class name."""

    def __init__(self, remote_type: str, message: str):
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type


def _child_main(fd: int) -> None:  # pragma: no cover - runs in the child
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    conn = multiprocessing.connection.Connection(fd)
    try:
        inner, profile, device, threads, families = conn.recv()
        from natix_miner.config import ExpertSpec
        from natix_miner.experts import create_expert, register_family
        from natix_miner.imaging.decode import probe

        for family, target in families.items():  # plugin families the child must know
            register_family(family, target)

        if threads:
            import torch

            torch.set_num_threads(threads)
        expert = create_expert(ExpertSpec.model_validate(inner), profile)
        expert.load(device)
        expert.warmup()
        conn.send(("ready", os.getpid(), int(expert.memory_bytes())))
    except BaseException as exc:  # noqa: BLE001 - report, then exit
        try:
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if msg[0] == "stop":
            return
        try:
            images = [probe(data, max_pixels=max_pixels) for data, max_pixels in msg[1]]
            out = expert.predict_batch(images)
            reply = ("ok", [(float(e.probability), bool(e.abstain), dict(e.detail)) for e in out])
        except BaseException as exc:  # noqa: BLE001 - the parent turns it into an error
            reply = ("error", type(exc).__name__, str(exc)[:500])
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


class _Channel:
    """The parent's end of the socket pair: ``multiprocessing.connection``'s framing (what the
    child's ``Connection`` reads and writes) with a deadline on every send and receive; a
    timeout raises ``TimeoutError`` and leaves the stream unusable (the caller kills the child)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def send(self, obj: typing.Any, timeout: float) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        n = len(data)
        head = struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!i", -1) + struct.pack("!Q", n)
        deadline = time.monotonic() + timeout
        for part in (head, data):
            view = memoryview(part)
            while view:
                self.sock.settimeout(self._left(deadline))
                view = view[self.sock.send(view):]

    def poll(self, timeout: float) -> bool:
        return bool(select.select([self.sock], [], [], max(0.0, timeout))[0])

    def recv(self, timeout: float) -> typing.Any:
        deadline = time.monotonic() + timeout
        size, = struct.unpack("!i", self._exactly(4, deadline))
        if size == -1:
            size, = struct.unpack("!Q", self._exactly(8, deadline))
        return pickle.loads(self._exactly(size, deadline))

    def _exactly(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            self.sock.settimeout(self._left(deadline))
            chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError("the child closed its end")
            buf += chunk
        return bytes(buf)

    @staticmethod
    def _left(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left

    def close(self) -> None:
        self.sock.close()


class Options(WrapperOptions):
    """Options of the ``isolated`` family (``natix-miner experts options isolated``)."""

    threads: int = pydantic.Field(default=1, ge=0)
    """torch threads in the child (0: torch's default)."""
    families: typing.Dict[str, typing.Annotated[str, pydantic.Field(pattern=r"^[\w.]+:\w+$")]] = \
        pydantic.Field(default_factory=dict)
    """Plugin families to register in the child: ``{name: "module:Class"}``."""
    start_timeout_s: float = pydantic.Field(default=300.0, gt=0)
    """The child must load and warm up within this."""
    call_timeout_s: float = pydantic.Field(default=30.0, gt=0)
    """Per-call timeout when the entry has no ``timeout_s``; a late child is killed and restarted."""
    restart_backoff_s: float = pydantic.Field(default=1.0, gt=0)
    """First wait before restarting a dead child (doubles on each failed restart)."""
    max_backoff_s: float = pydantic.Field(default=30.0, gt=0)
    """Longest wait between restart attempts."""

    def plugin_families(self) -> typing.Mapping[str, str]:
        return self.families


class IsolatedExpert(Expert):
    family = "isolated"
    Options = Options

    def load(self, device: str) -> None:
        o = self.opts
        inner = dict(o.inner)
        inner.setdefault("name", f"{self.name}.inner")
        self.inner_spec = inner
        self.device = device
        self.threads = o.threads
        self.families = dict(o.families)  # {family: "module:Class"} to register
        self.start_timeout_s = o.start_timeout_s
        self.call_timeout_s = float(self.spec.timeout_s or o.call_timeout_s)
        self.backoff_s = o.restart_backoff_s
        self.max_backoff_s = o.max_backoff_s
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._proc = None
        self._conn = None
        self.ready = False
        self.restarts = 0
        self.deaths = 0
        self._bytes = 0
        proc, conn = self._spawn()
        self._install(proc, conn)
        self._supervisor = threading.Thread(target=self._supervise, name=f"supervise-{self.name}", daemon=True)
        self._supervisor.start()

    # -- child management ------------------------------------------------------------------
    def _spawn(self):
        ours, theirs = socket.socketpair()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
        proc = subprocess.Popen([sys.executable, "-m", "natix_miner.experts.isolated", str(theirs.fileno())],
                                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        parent = _Channel(ours)
        end = time.monotonic() + self.start_timeout_s
        try:
            parent.send((self.inner_spec, self.profile, self.device, self.threads, self.families), self.start_timeout_s)
            while time.monotonic() < end and not self._closing.is_set():
                if parent.poll(0.2):
                    msg = parent.recv(max(0.001, end - time.monotonic()))
                    if msg[0] == "ready":
                        self._bytes = msg[2]
                        return proc, parent
                    raise RuntimeError(f"isolated expert {self.name}: child failed to load: {msg[1]}")
                if proc.poll() is not None:
                    raise RuntimeError(f"isolated expert {self.name}: child exited with code {proc.returncode}")
            raise RuntimeError(f"isolated expert {self.name}: child not ready after {self.start_timeout_s:.0f}s")
        except BaseException:
            proc.kill()
            proc.wait(5)
            parent.close()
            raise

    def _install(self, proc, conn) -> None:
        with self._lock:
            self._proc, self._conn = proc, conn
            self.ready = True

    def _supervise(self) -> None:
        backoff = self.backoff_s
        while not self._closing.is_set():
            proc = self._proc
            try:
                proc.wait(0.5)
            except subprocess.TimeoutExpired:
                continue
            if self._closing.is_set():
                return
            with self._lock:
                self.ready = False
                self.deaths += 1
                if self._conn is not None:
                    self._conn.close()
            log.error("expert %s: child process %s died (exit code %s); restarting in %.1fs",
                      self.name, proc.pid, proc.returncode, backoff)
            while not self._closing.is_set():
                if self._closing.wait(backoff):
                    return
                try:
                    new_proc, conn = self._spawn()
                except Exception as exc:  # noqa: BLE001 - keep trying
                    backoff = min(self.max_backoff_s, backoff * 2)
                    log.error("expert %s: restart failed (%s); next try in %.1fs", self.name, exc, backoff)
                    continue
                self._install(new_proc, conn)
                self.restarts += 1
                backoff = self.backoff_s
                log.warning("expert %s: child restarted as pid %s", self.name, new_proc.pid)
                break

    @property
    def pid(self) -> typing.Optional[int]:
        return self._proc.pid if self._proc is not None else None

    # -- inference -------------------------------------------------------------------------
    def predict_batch(self, images) -> typing.List[Evidence]:
        """One batch in the child; the whole call (lock wait, send, answer) is bounded by
        ``call_timeout_s``. A stopped or hung child is killed (the supervisor restarts it)."""
        deadline = time.monotonic() + self.call_timeout_s
        if not self._lock.acquire(timeout=self.call_timeout_s):
            raise EngineProcessDown(f"{self.name}: engine process busy with a call for {self.call_timeout_s:.1f}s")
        try:
            proc, conn = self._proc, self._conn
            if not self.ready or proc is None or proc.poll() is not None:
                raise EngineProcessDown(f"{self.name}: engine process is down (restarting)")
            try:
                conn.send(("predict", [(img.data, img.max_pixels) for img in images]),
                          max(0.001, deadline - time.monotonic()))
                msg = conn.recv(max(0.001, deadline - time.monotonic()))
            except TimeoutError:
                self._kill(proc)  # stopped or wedged: the supervisor restarts it
                raise EngineProcessDown(f"{self.name}: no answer in {self.call_timeout_s:.1f}s "
                                        f"(child {proc.pid} stopped or hung); child killed") from None
            except (EOFError, OSError, pickle.UnpicklingError, struct.error) as exc:
                self._kill(proc)
                raise EngineProcessDown(f"{self.name}: engine process died ({type(exc).__name__})") from None
        finally:
            self._lock.release()
        if msg[0] == "error":
            raise RemoteExpertError(msg[1], msg[2])
        return [Evidence(p, abstain=a, detail=d) for p, a, d in msg[1]]

    def _kill(self, proc) -> None:
        """Called with the lock held: no call may use this child again."""
        self.ready = False
        try:
            proc.kill()  # SIGKILL also ends a stopped process
        except OSError:
            pass

    def memory_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        self._closing.set()
        locked = self._lock.acquire(timeout=self.call_timeout_s + 1.0)
        try:
            proc, conn = self._proc, self._conn
            self.ready = False
        finally:
            if locked:
                self._lock.release()
        if proc is None:
            return
        try:
            conn.send(("stop",), 1.0)
        except Exception:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        try:
            conn.close()
        except Exception:
            pass


if __name__ == "__main__":  # pragma: no cover - the child
    _child_main(int(sys.argv[1]))
