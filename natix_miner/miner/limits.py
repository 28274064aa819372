"""A request body size limit in front of the axon, checked before the body is read.

Usage::

    install_body_limit(axon.app, 16 * 1024 * 1024)
"""


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


def tune_server(axon, max_connections: int, keep_alive_s: float = 20.0) -> None:
    """uvicorn settings of an axon, before ``axon.start()``.

    ``max_connections``: open connections beyond it get 503 (idle sockets cannot pile up memory).
    ``keep_alive_s``: longer than aiohttp's 15 s client default, so a validator's dendrite always
    closes an idle connection first; with uvicorn's 5 s default a server-side close could race a
    reused connection and that request was lost ("Server disconnected").
    """
    axon.fast_config.limit_concurrency = max_connections
    axon.fast_config.timeout_keep_alive = keep_alive_s
