"""One small HTTP server on ``--metrics.port``: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

* ``/healthz``: 200 while the process runs: ``{"status": "ok", "uptime_s": ..., "pid": ...}``.
* ``/readyz``: 200 when every check passes, else 503; the body names each check:
  ``{"ready": false, "checks": {"engine": {"ok": ...}, "axon": {...}, "vault": {...}}}``.
* ``/metrics``: the Prometheus text format.

It runs on its own threads (one that accepts and reads request heads, a few that answer), so a slow
scrape never touches the axon or the engine's event loop. Open connections are bounded
(``OpsServer.MAX_CONNECTIONS``; the oldest idle one is closed for a newcomer, and one is closed
when the process runs out of file descriptors), a request head must arrive within
``HEAD_TIMEOUT_S``, writes time out, every answer closes its connection; sheds are logged.

Usage::

    srv = OpsServer("0.0.0.0", 9100, render=metrics.render, health=hooks.health, ready=hooks.readiness)
    srv.start(); srv.port; srv.stop()
"""

import collections
import concurrent.futures
import errno
import http.server
import io
import json
import logging
import selectors
import socket
import threading
import time
import typing

log = logging.getLogger("natix_miner.ops.http")


class _Prebuffered:
    """A connection whose request head was already read by the server loop: what the stdlib
    handler reads comes from that buffer, what it writes goes to the socket."""

    def __init__(self, sock: socket.socket, head: bytes):
        self._sock, self._head = sock, head

    def makefile(self, mode: str, *args, **kwargs):
        return io.BytesIO(self._head) if "r" in mode else self._sock.makefile(mode, *args, **kwargs)

    def __getattr__(self, name):  # settimeout, sendall, setsockopt, getpeername, close ...
        return getattr(self._sock, name)


class BoundedHTTPServer:
    """An HTTP server for small GET endpoints that a flood of idle connections cannot exhaust.

    One thread accepts and reads request heads without blocking (a selector); a head that is
    complete goes to a pool of ``workers`` threads running ``handler_cls`` (a stdlib
    ``BaseHTTPRequestHandler``) with write timeouts; its connection is closed after the answer.
    At most ``max_connections`` are open: a newcomer closes the oldest one still waiting for its
    head, as does running out of file descriptors (EMFILE); a head that takes more than
    ``head_timeout_s`` or 8 KiB is dropped. Sheds are counted (:attr:`shed`) and logged at most
    every 5 s. Same interface as ``socketserver``: ``server_address``, ``serve_forever``,
    ``shutdown``, ``server_close``.

    Usage::

        srv = BoundedHTTPServer(("127.0.0.1", 0), Handler, max_connections=64)
        threading.Thread(target=srv.serve_forever, daemon=True).start(); ...; srv.shutdown(); srv.server_close()
    """

    MAX_HEAD = 8192

    def __init__(self, address, handler_cls, max_connections: int = 64, head_timeout_s: float = 5.0,
                 workers: int = 4):
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=128)  # OSError if taken
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.handler_cls = handler_cls
        self.max_connections, self.head_timeout_s = int(max_connections), float(head_timeout_s)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="natix-ops-http")
        self._waiting: "collections.OrderedDict[socket.socket, list]" = collections.OrderedDict()  # oldest first
        self._sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._done = threading.Event()
        self.shed: typing.Dict[str, int] = collections.Counter()
        self._logged_at, self._logged = 0.0, {}

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._sel.register(self.socket, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                for key, _ in self._sel.select(timeout=min(poll_interval, 0.25)):
                    if key.data is None:
                        self._accept()
                    else:
                        self._read(key.fileobj)
                self._expire()
        finally:
            for sock in list(self._waiting):
                self._drop(sock)
            self._sel.close()
            self._done.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._done.wait(5)

    def server_close(self) -> None:
        self.socket.close()
        self._pool.shutdown(wait=False)

    # -- internals ---------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(64):  # a burst at a time; the loop comes back for the rest
            try:
                sock, addr = self.socket.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) and self._waiting:
                    self._drop(next(iter(self._waiting)), "out_of_files")  # frees a descriptor for the next try
                    continue
                return
            if len(self._waiting) >= self.max_connections:
                self._drop(next(iter(self._waiting)), "idle_oldest")
            sock.setblocking(False)
            self._waiting[sock] = [time.monotonic() + self.head_timeout_s, b"", addr]
            self._sel.register(sock, selectors.EVENT_READ, True)

    def _read(self, sock: socket.socket) -> None:
        entry = self._waiting.get(sock)
        if entry is None:
            return
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        entry[1] += data
        if b"\r\n\r\n" in entry[1]:
            self._sel.unregister(sock)
            del self._waiting[sock]
            self._pool.submit(self._handle, sock, entry[1], entry[2])
        elif len(entry[1]) > self.MAX_HEAD:
            self._drop(sock, "head_too_large")

    def _handle(self, sock: socket.socket, head: bytes, addr) -> None:
        try:
            sock.setblocking(True)
            self.handler_cls(_Prebuffered(sock, head), addr, self)
        except Exception as exc:  # noqa: BLE001 - a client that went away, a write timeout
            log.debug("ops http: %s from %s", type(exc).__name__, addr)
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _expire(self) -> None:
        now = time.monotonic()
        while self._waiting:
            sock, entry = next(iter(self._waiting.items()))
            if entry[0] > now:  # deadlines are in arrival order
                break
            self._drop(sock, "head_timeout")

    def _drop(self, sock: socket.socket, reason: typing.Optional[str] = None) -> None:
        if self._waiting.pop(sock, None) is not None:
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        sock.close()
        if reason:
            self.shed[reason] += 1
            now = time.monotonic()
            if now - self._logged_at >= 5.0:
                since = {k: v - self._logged.get(k, 0) for k, v in self.shed.items() if v > self._logged.get(k, 0)}
                log.warning("metrics server shed connections since the last report: %s (%d open, cap %d)",
                            ", ".join(f"{k}={v}" for k, v in sorted(since.items())), len(self._waiting),
                            self.max_connections)
                self._logged_at, self._logged = now, dict(self.shed)


class OpsServer:
    MAX_CONNECTIONS = 64  # open connections at once (see BoundedHTTPServer)
    HEAD_TIMEOUT_S = 5.0

    def __init__(self, host: str, port: int,
                 render: typing.Callable[[], typing.Tuple[bytes, str]],
                 health: typing.Callable[[], dict],
                 ready: typing.Callable[[], typing.Tuple[bool, dict]]):
        self.host, self._port = host, port
        self.render, self.health, self.ready = render, health, ready
        self._httpd: typing.Optional[BoundedHTTPServer] = None
        self._thread: typing.Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 5  # socket timeout for writing the answer (the head was read by the server loop)

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")  # one answer per connection (BoundedHTTPServer)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, code: int, obj: dict) -> None:
                self._send(code, json.dumps(obj, default=str).encode(), "application/json")

            def do_GET(self):  # noqa: N802 - stdlib naming
                path = self.path.split("?", 1)[0].rstrip("/") or "/"
                try:
                    if path == "/metrics":
                        body, ctype = server.render()
                        self._send(200, body, ctype)
                    elif path == "/healthz":
                        self._json(200, server.health())
                    elif path == "/readyz":
                        ok, body = server.ready()
                        self._json(200 if ok else 503, body)
                    elif path == "/":
                        self._json(200, {"endpoints": ["/metrics", "/healthz", "/readyz"]})
                    else:
                        self._json(404, {"error": f"no route {path}"})
                except Exception as exc:  # noqa: BLE001 - report, never crash the server
                    log.warning("ops endpoint %s failed: %s: %s", path, type(exc).__name__, exc)
                    self._json(500, {"error": type(exc).__name__})

            do_HEAD = do_GET

            def log_message(self, fmt, *args):  # quiet: scrapes every few seconds
                log.debug("ops http %s - %s", self.address_string(), fmt % args)

        return Handler

    def start(self) -> "OpsServer":
        self._httpd = BoundedHTTPServer((self.host, self._port), self._handler(), max_connections=self.MAX_CONNECTIONS,
                                        head_timeout_s=self.HEAD_TIMEOUT_S)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="natix-ops-http", daemon=True)
        self._thread.start()
        host, port = self._httpd.server_address[:2]
        log.info("metrics and health bound to %s:%d (/metrics /healthz /readyz%s)", host, port,
                 "; every interface" if host in ("0.0.0.0", "::") else "")
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
