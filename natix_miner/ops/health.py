"""One small HTTP server on ``--metrics.port``: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

* ``/healthz``: 200 while the process runs: ``{"status": "ok", "uptime_s": ..., "pid": ...}``.
* ``/readyz``: 200 when every check passes, else 503; the body names each check:
  ``{"ready": false, "checks": {"engine": {"ok": ...}, "axon": {...}, "vault": {...}}}``.
* ``/metrics``: the Prometheus text format.

It runs on its own daemon threads (stdlib ``ThreadingHTTPServer``), so a slow scrape never touches
the axon or the engine's event loop.

Usage::

    srv = OpsServer("0.0.0.0", 9100, render=metrics.render, health=hooks.health, ready=hooks.readiness)
    srv.start(); srv.port; srv.stop()
"""

import http.server
import json
import logging
import threading
import typing

log = logging.getLogger("natix_miner.ops.http")


class OpsServer:
    def __init__(self, host: str, port: int,
                 render: typing.Callable[[], typing.Tuple[bytes, str]],
                 health: typing.Callable[[], dict],
                 ready: typing.Callable[[], typing.Tuple[bool, dict]]):
        self.host, self._port = host, port
        self.render, self.health, self.ready = render, health, ready
        self._httpd: typing.Optional[http.server.ThreadingHTTPServer] = None
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

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
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
        self._httpd = http.server.ThreadingHTTPServer((self.host, self._port), self._handler())
        self._httpd.daemon_threads = True
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
