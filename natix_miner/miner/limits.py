"""HTTP limits of the axon: body size (checked before the body is read), open connections (per
peer address, in total, with room kept for validators), keep-alive, and deadlines for each
request's head (slow-loris) and body (slow bodies).

Usage::

    install_body_limit(axon.app, 16 * 1024 * 1024)
    governor = ConnectionGovernor(max_connections=512, max_per_peer=32, reserved=64, max_per_hotkey=32)
    tune_server(axon, max_connections=512, header_timeout_s=10, body_timeout_s=10, governor=governor)
    install_caller_context(axon.app)      # outermost: who is calling, for the verify fn and the forward
    ...
    signed_hotkey()   # inside a forward: the hotkey whose signature the axon verified (or None)
"""

import collections
import contextvars
import logging
import time
import typing

log = logging.getLogger("natix_miner.miner.limits")


def install_body_limit(app, max_bytes: int) -> None:
    """Reject requests whose declared or streamed body exceeds ``max_bytes`` with 413."""

    async def body_limit(inner, scope, receive, send):
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
            return await inner(scope, limited, send)
        except _TooLarge:
            return await _reject(send)

    _add_http_middleware(app, body_limit)


class _TooLarge(Exception):
    pass


def _add_http_middleware(app, handle) -> None:
    """Add an ASGI middleware that runs ``await handle(inner, scope, receive, send)`` for HTTP
    requests and passes everything else (lifespan) through. The last one added runs first."""

    class _Middleware:
        def __init__(self, app):  # starlette's add_middleware calls cls(app)
            self.inner = app

        async def __call__(self, scope, receive, send):
            if scope.get("type") != "http":
                return await self.inner(scope, receive, send)
            return await handle(self.inner, scope, receive, send)

    app.add_middleware(_Middleware)


async def _reject(send, status: int = 413, message: bytes = b"request body too large"):
    # JSON, so a bittensor dendrite reports axon.status_code=413 and the message (not a parse error)
    body = b'{"message": "' + message + b'"}'
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def tune_server(axon, max_connections: int, keep_alive_s: float = 20.0, header_timeout_s: float = 10.0,
                body_timeout_s: typing.Optional[float] = None,
                governor: typing.Optional["ConnectionGovernor"] = None) -> None:
    """uvicorn settings of an axon, before ``axon.start()``.

    ``max_connections``: uvicorn's own 503 limit when there is no governor (with one, the governor
    enforces it).
    ``keep_alive_s``: longer than aiohttp's 15 s client default, so a validator's dendrite always
    closes an idle connection first; with uvicorn's 5 s default a server-side close could race a
    reused connection and that request was lost ("Server disconnected").
    ``header_timeout_s``: a new connection, or a kept-alive one that starts another request, must
    deliver the whole request head within this time or is closed. uvicorn has no such timeout, so a
    client trickling header bytes (slow-loris) could hold connections until ``max_connections``
    and lock validators out; the blacklist cannot help, it needs the headers first.
    ``body_timeout_s``: once the head is in, the whole body must follow within this time or the
    connection is closed (a registered caller cannot hold connections with slow bodies).
    ``governor``: caps per peer address and in total, strangers shed first (:class:`ConnectionGovernor`).
    """
    # with a governor, it is the limit: uvicorn's own check also counts connections already closed
    # (shed) but not yet reaped, and answered validators 503 in that window
    axon.fast_config.limit_concurrency = None if governor is not None else max_connections
    axon.fast_config.timeout_keep_alive = keep_alive_s
    axon.fast_config.http = header_deadline_protocol(header_timeout_s, body_timeout_s, governor)


class ConnectionGovernor:
    """Who keeps a connection when there are too many: validators by signed hotkey, strangers last.

    A connection is *untrusted* until a request on it passes the blacklist and the signature check
    (:meth:`trust`, called by the verify fn); then it belongs to that hotkey. Rules, applied when a
    connection opens:

    * at most ``max_per_peer`` untrusted connections per peer address: a newcomer beyond it sheds
      that peer's oldest idle untrusted connection (or is closed when there is none);
    * at most ``max_connections - reserved`` untrusted connections in all (unless every one of them
      is mid-request), ``max_connections`` in all: a newcomer beyond either sheds the oldest idle untrusted connection of the address that
      holds the most untrusted ones, then (only at the hard cap) the oldest idle trusted one; with
      nothing idle to shed, it is closed;
    * a connection that is running a request is never shed; the ``reserved`` slots can only be
      filled by connections that turned trusted, so validators keep room strangers cannot take;
    * at most ``max_per_hotkey`` requests of one hotkey at once (:meth:`begin`), so one registered
      caller's slow bodies cannot fill the server either.

    *Idle* means waiting for a request head (fresh, or kept alive after a response). Every shed
    or refusal is counted in :attr:`shed` and logged (at most once every 5 s, with the counts).
    The governor lives on the axon's event loop, like the protocol objects that call it.

    Usage (``tune_server`` wires it; a protocol object ``conn`` has ``peer``, ``transport``)::

        gov = ConnectionGovernor(max_connections=512, max_per_peer=32, reserved=64, max_per_hotkey=32)
        if gov.opened(conn): ...   # False: conn was refused (closed)
        gov.busy(conn); gov.idle(conn); gov.trust(conn, hotkey); gov.closed(conn)
    """

    LOG_EVERY_S = 5.0
    GRACE_S = 1.0  # a lone fresh connection of an address is not shed before its head had this long

    def __init__(self, max_connections: int = 512, max_per_peer: int = 32, reserved: int = 64,
                 max_per_hotkey: int = 32, clock: typing.Callable[[], float] = time.monotonic):
        if max_connections < 1 or max_per_peer < 1 or max_per_hotkey < 1 or not 0 <= reserved < max_connections:
            raise ValueError("need max_connections, max_per_peer, max_per_hotkey >= 1 and 0 <= reserved < max_connections")
        self.max_connections, self.max_per_peer = int(max_connections), int(max_per_peer)
        self.reserved, self.max_per_hotkey = int(reserved), int(max_per_hotkey)
        self._clock = clock
        self.open = 0
        self.untrusted = 0
        self._peer: typing.Dict[str, int] = {}  # untrusted connections per peer address
        self._idle: "collections.OrderedDict[typing.Any, None]" = collections.OrderedDict()  # untrusted, oldest first
        self._idle_peer: typing.Dict[str, "collections.OrderedDict[typing.Any, None]"] = {}
        self._idle_trusted: "collections.OrderedDict[typing.Any, None]" = collections.OrderedDict()
        self.inflight: typing.Dict[str, int] = {}  # requests per signed hotkey
        self.shed: typing.Dict[str, int] = collections.Counter()
        self.peak_open = 0
        self._logged_at = 0.0
        self._logged: typing.Dict[str, int] = {}

    # -- connection life ----------------------------------------------------------------------
    def opened(self, conn) -> bool:
        """A connection arrived: make room by the rules above, or close it (returns False)."""
        peer = conn.peer
        if self._peer.get(peer, 0) >= self.max_per_peer:
            victim = next(iter(self._idle_peer.get(peer, ())), None)
            if victim is None:
                return self._refuse(conn, "per_peer")
            self._shed(victim, "per_peer")
        if self.untrusted >= self.max_connections - self.reserved or self.open >= self.max_connections:
            victim = self._heaviest_idle()
            if victim is None and self.open >= self.max_connections:
                victim = next(iter(self._idle_trusted), None)
            if victim is not None:
                self._shed(victim, "stranger_idle" if not victim._gov_trusted else "trusted_idle")
            elif self.open >= self.max_connections:
                return self._refuse(conn, "full")
            # else: every unverified connection is mid-request; the newcomer may be a validator, so it
            # takes a reserved slot for now (strangers' requests end in 403/401 and turn sheddable)
        conn._gov_open, conn._gov_trusted, conn._gov_hotkey = True, False, None
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        self.untrusted += 1
        self._peer[peer] = self._peer.get(peer, 0) + 1
        self.idle(conn)
        return True

    def busy(self, conn) -> None:
        """A request head arrived on ``conn``: it is running a request, not sheddable."""
        self._unidle(conn)

    def idle(self, conn) -> None:
        """``conn`` waits for a request head (new, or kept alive after a response)."""
        if not getattr(conn, "_gov_open", False):
            return
        self._unidle(conn)
        conn._gov_idle_at = self._clock()
        if conn._gov_trusted:
            self._idle_trusted[conn] = None
        else:
            self._idle[conn] = None
            self._idle_peer.setdefault(conn.peer, collections.OrderedDict())[conn] = None

    def trust(self, conn, hotkey: str) -> None:
        """A request on ``conn`` passed the blacklist and the signature check of ``hotkey``."""
        if not getattr(conn, "_gov_open", False) or conn._gov_trusted:
            if getattr(conn, "_gov_open", False):
                conn._gov_hotkey = hotkey
            return
        self._unidle(conn)
        conn._gov_trusted, conn._gov_hotkey = True, hotkey
        self.untrusted -= 1
        self._dec_peer(conn.peer)

    def closed(self, conn) -> None:
        """``conn`` is gone (idempotent)."""
        if not getattr(conn, "_gov_open", False):
            return
        conn._gov_open = False
        self._unidle(conn)
        self.open -= 1
        if not conn._gov_trusted:
            self.untrusted -= 1
            self._dec_peer(conn.peer)

    # -- requests per hotkey ------------------------------------------------------------------
    def begin(self, hotkey: str) -> bool:
        """Count a request of ``hotkey``; False (not counted) when it already has ``max_per_hotkey``."""
        n = self.inflight.get(hotkey, 0)
        if n >= self.max_per_hotkey:
            self.count("hotkey_busy")
            return False
        self.inflight[hotkey] = n + 1
        return True

    def end(self, hotkey: str) -> None:
        _decrement(self.inflight, hotkey)

    def snapshot(self) -> dict:
        return {"open": self.open, "untrusted": self.untrusted, "idle_untrusted": len(self._idle),
                "idle_trusted": len(self._idle_trusted), "peak_open": self.peak_open, "shed": dict(self.shed),
                "inflight_hotkeys": len(self.inflight)}

    # -- internals ----------------------------------------------------------------------------
    def _heaviest_idle(self):
        """The oldest idle untrusted connection of the address holding the most untrusted ones: a
        client reopening many sockets sheds its own, not a validator's fresh connection. An address
        with a single connection idle for less than ``GRACE_S`` is skipped: that is what a
        validator's new connection looks like before its head arrives, and the only idle one when
        every stranger's socket is mid-request."""
        best, most = None, 0
        now = self._clock()
        for peer, idle in self._idle_peer.items():
            n = self._peer.get(peer, 0)
            if not idle or n <= most:
                continue
            if n == 1 and now - next(iter(idle))._gov_idle_at < self.GRACE_S:
                continue
            best, most = idle, n
        return next(iter(best)) if best else None

    def _unidle(self, conn) -> None:
        self._idle.pop(conn, None)
        self._idle_trusted.pop(conn, None)
        per = self._idle_peer.get(conn.peer)
        if per is not None:
            per.pop(conn, None)
            if not per:
                del self._idle_peer[conn.peer]

    def _dec_peer(self, peer: str) -> None:
        _decrement(self._peer, peer)

    def _shed(self, conn, reason: str) -> None:
        self.closed(conn)
        self.count(reason)
        if not conn.transport.is_closing():
            conn.transport.close()

    def _refuse(self, conn, reason: str) -> bool:
        self.count("refused_" + reason)
        conn.transport.close()
        return False

    def count(self, reason: str) -> None:
        """Count a shed/refusal/timeout by ``reason``; log the counts at most every ``LOG_EVERY_S``."""
        self.shed[reason] += 1
        now = self._clock()
        if now - self._logged_at >= self.LOG_EVERY_S:
            since = {k: v - self._logged.get(k, 0) for k, v in self.shed.items() if v - self._logged.get(k, 0)}
            log.warning("axon closed or refused connections since the last report: %s; %d open, %d unverified",
                        ", ".join(f"{k}={v}" for k, v in sorted(since.items())), self.open, self.untrusted)
            self._logged_at, self._logged = now, dict(self.shed)


def _decrement(counts: typing.Dict[str, int], key: str) -> None:
    """One less for ``key``; the entry goes at zero (the maps stay as small as what is open)."""
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


class Caller:
    """One request's caller, as far as the axon proved it: the connection it came on and, once the
    signature was verified, its hotkey. Set for each request by :func:`install_caller_context`."""

    __slots__ = ("conn", "hotkey", "counted", "governor")

    def __init__(self, conn, governor):
        self.conn, self.governor = conn, governor
        self.hotkey: typing.Optional[str] = None
        self.counted = False

    def verified(self, hotkey: str) -> bool:
        """The signature of ``hotkey`` checked out and the blacklist let it in: trust the connection
        and count the request against the hotkey's cap (False: over the cap, refuse it)."""
        self.hotkey = hotkey
        gov = self.governor
        if gov is None:
            return True
        if not self.counted:
            if not gov.begin(hotkey):
                return False
            self.counted = True
        if self.conn is not None:
            gov.trust(self.conn, hotkey)
        return True


CALLER: "contextvars.ContextVar[typing.Optional[Caller]]" = contextvars.ContextVar("natix_caller", default=None)


def signed_hotkey() -> typing.Optional[str]:
    """The hotkey whose signature the axon verified for the request being handled (None outside one).

    Header fields are covered by the signature, the JSON body's ``dendrite`` fields are not: use
    this, never ``synapse.dendrite.hotkey`` of a forward's synapse, for priority and accounting."""
    caller = CALLER.get()
    return caller.hotkey if caller is not None else None


def install_caller_context(app, governor: typing.Optional[ConnectionGovernor] = None,
                           routes: typing.Optional[typing.Container[str]] = None) -> None:
    """Outermost middleware: a :class:`Caller` per request (read by the verify fn and the forward),
    its hotkey's request slot freed when the response is done. A refused caller's connection is not
    closed at once (closing with its body unread would reset it before it reads the status); it
    turns idle and untrusted, the first the governor sheds.

    ``routes``: the synapse names served (the axon's ``forward_class_types``, read per request);
    any other path (FastAPI's ``/docs``, ``/openapi.json``...) gets 404 here, before bittensor's
    middleware logs an error for it."""

    async def caller_context(inner, scope, receive, send):
        if routes is not None and scope.get("path", "/").lstrip("/").split("/", 1)[0] not in routes:
            return await _reject(send, 404, b"no such synapse")
        caller = Caller(scope.get("natix.conn"), governor)
        token = CALLER.set(caller)
        try:
            return await inner(scope, receive, send)
        finally:
            CALLER.reset(token)
            if caller.counted:
                governor.end(caller.hotkey)

    _add_http_middleware(app, caller_context)


def header_deadline_protocol(timeout_s: float, body_timeout_s: typing.Optional[float] = None,
                             governor: typing.Optional[ConnectionGovernor] = None):
    """uvicorn's h11 HTTP protocol with a deadline on every request head and body, and connections
    admitted by ``governor`` (see :func:`tune_server`)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineH11(H11Protocol):
        header_timeout_s = float(timeout_s)
        body_deadline_s = float(body_timeout_s) if body_timeout_s else None

        def connection_made(self, transport) -> None:
            self._head_timer = None
            self._body_timer = None
            self._timed_cycle = None
            super().connection_made(transport)
            self.peer = self.client[0] if self.client else "?"
            if governor is not None and not governor.opened(self):
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first byte of another request on a kept-alive connection
            super().data_received(data)
            cycle = self.cycle
            if cycle is not None and cycle is not self._timed_cycle:
                self._timed_cycle = cycle  # the head is complete: the request is running
                self._disarm()
                cycle.scope["natix.conn"] = self  # read by the caller context (before the app runs)
                if governor is not None:
                    governor.busy(self)
                if cycle.more_body and self.body_deadline_s and not cycle.response_complete:
                    self._body_timer = self.loop.call_later(self.body_deadline_s, self._body_too_slow, cycle)
            if self._body_timer is not None and cycle is not None and not cycle.more_body:
                self._disarm_body()

        def on_response_complete(self) -> None:
            self._disarm_body()
            super().on_response_complete()
            if governor is not None and not self.transport.is_closing():
                governor.idle(self)

        def connection_lost(self, exc) -> None:
            self._disarm()
            self._disarm_body()
            if governor is not None:
                governor.closed(self)
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _disarm_body(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                if governor is not None:
                    governor.count("head_timeout")  # counted, logged every few seconds (not per socket)
                else:
                    log.warning("closed a connection from %s: no complete request head within %.1fs",
                                self.client, self.header_timeout_s)
                self.transport.close()

        def _body_too_slow(self, cycle) -> None:
            self._body_timer = None
            if cycle.more_body and not cycle.response_complete and not self.transport.is_closing():
                if governor is not None:
                    governor.count("body_timeout")
                else:
                    log.warning("closed a connection from %s: request body not complete within %.1fs",
                                self.client, self.body_deadline_s)
                self.transport.close()

    return HeaderDeadlineH11
