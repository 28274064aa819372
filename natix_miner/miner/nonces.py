"""Request signatures and replay protection that survive a restart.

bittensor's default verify (``Axon.default_verify``, 9.x and 10.x) checks the signature of
``f"{nonce}.{dendrite.hotkey}.{axon.hotkey}.{dendrite.uuid}.{computed_body_hash}"`` and keeps the
last nonce per ``hotkey:uuid`` in memory only. Two holes: after a restart a captured request is
accepted again, and the freshness window is computed from unsigned header fields (``timeout``
widens it without bound; a ``bt_header_dendrite_version`` below 7.2 switches it off). With the
validators' synapses ``computed_body_hash`` covers no field, so a replay can even carry another
image.

:class:`ReplayGuard` verifies the same signed message, but:

* the window is fixed (``window_s``, from the config, never from a header): a nonce older than it,
  or more than ``max_future_s`` ahead, is refused whatever the headers say;
* every accepted ``(hotkey, uuid, nonce)`` is remembered until it leaves the window, and refused
  when seen again (out-of-order nonces of one dendrite are fine, repeats are not);
* the remembered nonces are appended to a file (0600) and read back at start, so a restart does
  not reopen the window.

The file is a text log, one ``hotkey uuid nonce`` line per accepted request, rewritten without the
expired lines when it grows past four times the live set.

Usage::

    guard = ReplayGuard("/var/lib/natix/nonces-5F....log", window_s=30)
    guard.verify(synapse, axon_hotkey)   # raises ReplayError / SignatureError, records on success
"""

import logging
import os
import threading
import time
import typing

log = logging.getLogger("natix_miner.miner.nonces")

NS = 1_000_000_000


class ReplayError(Exception):
    """The nonce is outside the window or was already used."""


class SignatureError(Exception):
    """Missing or wrong signature, or no dendrite information."""


class ReplayGuard:
    def __init__(self, path: typing.Optional[str], window_s: float = 30.0, max_future_s: float = 300.0,
                 clock_ns: typing.Callable[[], int] = time.time_ns):
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.path = path
        self.window_ns = int(window_s * NS)
        self.max_future_ns = int(max_future_s * NS)
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._seen: typing.Dict[typing.Tuple[str, str, int], None] = {}
        self._lines = 0
        self._since_expire = 0
        self._fh = None
        self.refused = 0
        if path:
            self._load()

    # -- public ------------------------------------------------------------------------------
    def verify(self, synapse, axon_hotkey: str) -> None:
        """Raise unless the request is signed by its ``dendrite.hotkey`` with a fresh, unused nonce."""
        from bittensor_wallet import Keypair

        d = synapse.dendrite
        if d is None or not d.hotkey:
            raise SignatureError("no dendrite hotkey")
        if d.nonce is None:
            raise ReplayError("missing nonce")
        if not d.signature:
            raise SignatureError("missing signature")
        nonce = int(d.nonce)
        now = self._clock_ns()
        if nonce < now - self.window_ns:
            self._refused()
            raise ReplayError(f"nonce is {(now - nonce) / NS:.1f}s old; the window is {self.window_ns / NS:.0f}s")
        if nonce > now + self.max_future_ns:
            self._refused()
            raise ReplayError(f"nonce is {(nonce - now) / NS:.0f}s in the future (check the caller's clock)")
        message = f"{nonce}.{d.hotkey}.{axon_hotkey}.{d.uuid}.{synapse.computed_body_hash}"
        try:
            ok = Keypair(ss58_address=d.hotkey).verify(message, d.signature)
        except Exception as exc:  # noqa: BLE001 - a malformed key or signature is a bad signature
            raise SignatureError(f"signature check failed ({type(exc).__name__})") from None
        if not ok:
            raise SignatureError("signature mismatch")
        key = (str(d.hotkey), str(d.uuid), nonce)
        with self._lock:
            if key in self._seen:
                self._refused()
                raise ReplayError("nonce already used")
            self._seen[key] = None
            self._append(key)
            self._expire(now)

    @property
    def live(self) -> int:
        return len(self._seen)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    # -- internals ---------------------------------------------------------------------------
    def _refused(self) -> None:
        self.refused += 1

    def _load(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
        now = self._clock_ns()
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) != 3:
                        continue  # a torn last line after a crash
                    try:
                        nonce = int(parts[2])
                    except ValueError:
                        continue
                    if nonce >= now - self.window_ns:
                        self._seen[(parts[0], parts[1], nonce)] = None
        self._rewrite()
        log.info("replay guard: %d nonces still in the %.0fs window from %s", len(self._seen),
                 self.window_ns / NS, self.path)

    def _open(self, mode: str, path: typing.Optional[str] = None):
        """``path`` (default: the nonce file) for writing, created and kept 0600."""
        fd = os.open(path or self.path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC), 0o600)
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, mode)

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        with self._open("w", tmp) as f:
            f.writelines(f"{h} {u} {n}\n" for h, u, n in self._seen)
        os.replace(tmp, self.path)
        if self._fh is not None:
            self._fh.close()
        self._fh = self._open("a")
        self._lines = len(self._seen)

    def _append(self, key) -> None:
        if self._fh is None:
            return
        try:
            self._fh.write(f"{key[0]} {key[1]} {key[2]}\n")
            self._fh.flush()  # in the OS's hands: survives a crash of this process
            self._lines += 1
        except OSError as exc:  # a full disk must not refuse validators; the memory copy still holds
            log.warning("replay guard: cannot write %s (%s); nonces kept in memory only", self.path, exc)
            self._fh = None

    def _expire(self, now: int) -> None:
        self._since_expire += 1
        if self._since_expire < 128:  # amortised: one sweep per 128 accepted requests
            return
        self._since_expire = 0
        cutoff = now - self.window_ns
        for key in [k for k in self._seen if k[2] < cutoff]:
            del self._seen[key]
        if self.path and self._fh is not None and self._lines > 4 * len(self._seen) + 1024:
            try:
                self._rewrite()
            except OSError as exc:
                log.warning("replay guard: cannot rewrite %s (%s)", self.path, exc)
