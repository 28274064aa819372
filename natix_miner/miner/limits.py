"""HTTP limits of the axon: body size (checked before the body is read), open connections,
keep-alive, and a deadline for each request's headers (slow-loris).

Usage::

    install_body_limit(axon.app, 16 * 1024 * 1024)
    tune_server(axon, max_connections=512, header_timeout_s=10)
"""

import logging

log = logging.getLogger("natix_miner.miner.limits")


def install_body_limit(app, max_bytes: int) -> None:
    """Reject requests whose declared or streamed body exceeds ``max_bytes`` with 413."""

    class BodyLimit:
        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope.get("type") != "http":
                return await self.inner(scope, receive, send)
            for name, value in scope.get("headers", []):
                if name == b"content-length":
                    try:
                        if int(value) > max_bytes:
                            return await _reject(send)
                    except ValueError:
                        return await _reject(send, 400, b"bad content-length")
            seen = 0

            async def limited():
                nonlocal seen
                msg = await receive()
                if msg.get("type") == "http.request":
                    seen += len(msg.get("body", b""))
                    if seen > max_bytes:
                        raise _TooLarge()
                return msg

            try:
                return await self.inner(scope, limited, send)
            except _TooLarge:
                return await _reject(send)

    app.add_middleware(_factory(BodyLimit))


class _TooLarge(Exception):
    pass


def _factory(cls):
    # starlette's add_middleware takes a class called as cls(app, **kwargs)
    class _M:
        def __init__(self, app):
            self._impl = cls(app)

        async def __call__(self, scope, receive, send):
            await self._impl(scope, receive, send)

    return _M


async def _reject(send, status: int = 413, message: bytes = b"request body too large"):
    # JSON, so a bittensor dendrite reports axon.status_code=413 and the message (not a parse error)
    body = b'{"message": "' + message + b'"}'
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def tune_server(axon, max_connections: int, keep_alive_s: float = 20.0, header_timeout_s: float = 10.0) -> None:
    """uvicorn settings of an axon, before ``axon.start()``.

    ``max_connections``: open connections beyond it get 503 (idle sockets cannot pile up memory).
    ``keep_alive_s``: longer than aiohttp's 15 s client default, so a validator's dendrite always
    closes an idle connection first; with uvicorn's 5 s default a server-side close could race a
    reused connection and that request was lost ("Server disconnected").
    ``header_timeout_s``: a new connection, or a kept-alive one that starts another request, must
    deliver the whole request head within this time or is closed. uvicorn has no such timeout, so a
    client trickling header bytes (slow-loris) could hold connections until ``max_connections``
    and lock validators out; the blacklist cannot help, it needs the headers first.
    """
    axon.fast_config.limit_concurrency = max_connections
    axon.fast_config.timeout_keep_alive = keep_alive_s
    axon.fast_config.http = header_deadline_protocol(header_timeout_s)


def header_deadline_protocol(timeout_s: float):
    """uvicorn's h11 HTTP protocol with a deadline on every request head (see :func:`tune_server`)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineH11(H11Protocol):
        header_timeout_s = float(timeout_s)

        def connection_made(self, transport) -> None:
            self._head_timer = None
            self._timed_cycle = None
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first byte of another request on a kept-alive connection
            super().data_received(data)
            if self.cycle is not None and self.cycle is not self._timed_cycle:
                self._timed_cycle = self.cycle  # the head is complete: the request is running
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                log.warning("closed a connection from %s: no complete request head within %.1fs",
                            self.client, self.header_timeout_s)
                self.transport.close()

    return HeaderDeadlineH11
